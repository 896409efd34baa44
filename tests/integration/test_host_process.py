"""`ctpm host serve` as a process: the control commands (`ctpm host add/list/status/remove/
reload`), the instance directory and SIGHUP, the warm `ctpm run --host` path (whose PID is
the one `ss -lntp` shows listening), and the resource manager driven by tpm2-tools without
tpm2-abrmd."""
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time

import pytest

from ctpm.testing.process import command, environment, run_host, start

TOOLS = shutil.which("tpm2_createprimary") is not None
needs_tools = pytest.mark.skipif(not TOOLS, reason="tpm2-tools are not installed")


def ctpm(*args, check=True, control=None):
    argv = command(*args) + (["--control", str(control)] if control else [])
    r = subprocess.run(argv, capture_output=True, text=True, env=environment(), timeout=60)
    if check and r.returncode:
        raise AssertionError(f"ctpm {' '.join(args)}: {r.returncode} {r.stderr}")
    return r


def mssim_port(ready: str) -> int:
    return int(re.search(r"mssim=127\.0\.0\.1:(\d+),", ready).group(1))


def tools(tcti, *args, check=True):
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=60,
                       env={**os.environ, "TPM2TOOLS_TCTI": tcti})
    if check and r.returncode:
        raise AssertionError(f"{args}: {r.stderr}")
    return r


def get_random(port) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        for c in (bytes.fromhex("80010000000c000001440000"),
                  bytes.fromhex("80010000000c0000017b0008")):
            s.sendall(struct.pack(">IBI", 8, 0, len(c)) + c)
            size = struct.unpack(">I", _exact(s, 4))[0]
            rsp = _exact(s, size + 4)[:size]
        return rsp


def _exact(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise EOFError
        out += chunk
    return out


def test_control_commands(tmp_path):
    ctl = tmp_path / "host.sock"
    with run_host(ctl):
        r = ctpm("host", "add", "vm1", "--mssim", "127.0.0.1:0", "--state",
                 str(tmp_path / "vm1"), control=ctl)
        port = mssim_port(r.stdout)
        assert len(get_random(port)) == 20              # listening when `add` returned
        r = ctpm("host", "add", "vm1", "--mssim", "127.0.0.1:0", control=ctl, check=False)
        assert r.returncode == 1 and "exists" in r.stderr
        r = ctpm("host", "add", "vm2", "--mssim", "nope", control=ctl, check=False)
        assert r.returncode == 1 and "'nope' is not HOST:PORT" in r.stderr
        assert ctpm("host", "list", control=ctl).stdout.split("\t")[0] == "vm1"
        status = json.loads(ctpm("host", "status", "vm1", control=ctl).stdout)
        (vm1,) = status["instances"]
        assert vm1["commands"] == 2 and vm1["errors"] == 0 and vm1["last_use"]
        assert vm1["backend"]["state"] == str(tmp_path / "vm1")
        ctpm("host", "remove", "vm1", control=ctl)
        assert ctpm("host", "list", control=ctl).stdout == ""
        assert (tmp_path / "vm1" / "nv.snap").exists()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
    r = ctpm("host", "list", control=ctl, check=False)
    assert r.returncode == 1 and "cannot reach the host" in r.stderr


def test_instance_directory_and_sighup(tmp_path):
    ctl, d = tmp_path / "host.sock", tmp_path / "instances"
    d.mkdir()
    (d / "a.toml").write_text('[listen]\nmssim = "127.0.0.1:0"\n')
    (d / "bad.toml").write_text('[listen]\nmssim = "127.0.0.1:0"\n[tpm]\nmax_objects = 1\n')
    with run_host(ctl, "--dir", str(d)) as proc:
        assert [l.split("\t")[0] for l in ctpm("host", "list", control=ctl).stdout.splitlines()] == ["a"]
        (d / "b.toml").write_text(f'[listen]\nswtpm = "unix:{tmp_path}/b.sock"\n')
        (d / "a.toml").unlink()
        proc.send_signal(signal.SIGHUP)
        for _ in range(100):
            names = [l.split("\t")[0] for l in ctpm("host", "list", control=ctl).stdout.splitlines()]
            if names == ["b"]:
                break
            time.sleep(0.05)
        assert names == ["b"]
        r = json.loads(ctpm("host", "reload", control=ctl).stdout)
        assert "max_objects" in r["failed"]["bad"] and r["started"] == []
        proc.stderr_file.seek(0)
        log = proc.stderr_file.read().decode()
        assert "[a] ctpm.host: stopped" in log          # logs name the instance
        assert "instance bad not started: " in log


def test_warm_run_hands_its_sockets_to_the_host(tmp_path):
    ctl = tmp_path / "host.sock"
    with run_host(ctl) as host:
        os.environ["CTPM_HOST"] = ""        # the flag is what counts below
        d = start("--host", f"unix:{ctl}", "--mssim", "127.0.0.1:0", "--swtpm",
                  f"unix:{tmp_path}/w.sock")
        try:
            port = d.mssim_port
            # as harnesses check: the listening socket belongs to the `ctpm run` process
            ss = subprocess.run(["ss", "-lntpH", f"sport = :{port}"], capture_output=True,
                                text=True).stdout
            assert f"pid={d.proc.pid}," in ss, ss
            assert len(get_random(port)) == 20
            listed = ctpm("host", "list", control=ctl).stdout
            assert listed.startswith(f"run-{d.proc.pid}\twarm\t")
            assert d.stop() == 0                     # SIGTERM: instance stopped, NV saved
            assert ctpm("host", "list", control=ctl).stdout == ""
            assert not (tmp_path / "w.sock").exists()
            # a client's STOP (as QEMU's SHUTDOWN) ends the instance and the process
            d = start("--host", f"unix:{ctl}", "--mssim", "127.0.0.1:0")
            with socket.create_connection(("127.0.0.1", d.mssim_port)) as s:
                s.sendall(struct.pack(">I", 21))
            assert d.proc.wait(10) == 0
            assert host.poll() is None
        finally:
            os.environ.pop("CTPM_HOST", None)
            d.stop()
    r = subprocess.run(command("run", "--host", f"unix:{ctl}", "--mssim", "127.0.0.1:0"),
                       capture_output=True, text=True, env=environment(), timeout=30)
    assert r.returncode == 1 and "cannot reach the host" in r.stderr


@needs_tools
@pytest.mark.parametrize("rm", [True, False], ids=["resource-manager", "shared"])
def test_tool_invocations_and_object_slots(rm, tmp_path):
    """Tool invocations that never flush: with the RM each one's objects go when its
    connection ends, so 70 primaries fit in 64 slots; without it the slots fill up."""
    from ctpm.testing.process import run_daemon
    args = ("--mssim", "127.0.0.1:0") + (("--resource-manager",) if rm else ())
    with run_daemon(*args) as d:
        tcti = d.tcti("mssim")
        tools(tcti, "tpm2_startup", "-c")
        results = [tools(tcti, "tpm2_createprimary", "-C", "o", "-G", "ecc", "-c",
                         str(tmp_path / f"p{i}.ctx"), "-Q", check=False).returncode
                   for i in range(70)]
        if not rm:
            assert results[:64] == [0] * 64 and set(results[64:]) != {0}
            return
        assert results == [0] * 70
        assert tools(tcti, "tpm2_getcap", "handles-transient").stdout.strip() == ""
        # a whole key workflow across invocations, through saved context files
        ctx = lambda n: str(tmp_path / n)           # noqa: E731
        tools(tcti, "tpm2_createprimary", "-C", "o", "-c", ctx("prim.ctx"), "-Q")
        tools(tcti, "tpm2_create", "-C", ctx("prim.ctx"), "-u", ctx("k.pub"), "-r",
              ctx("k.priv"), "-Q")
        tools(tcti, "tpm2_load", "-C", ctx("prim.ctx"), "-u", ctx("k.pub"), "-r",
              ctx("k.priv"), "-c", ctx("k.ctx"), "-Q")
        (tmp_path / "msg").write_bytes(b"hello")
        tools(tcti, "tpm2_sign", "-c", ctx("k.ctx"), "-g", "sha256", "-o", ctx("sig"),
              ctx("msg"))
        tools(tcti, "tpm2_verifysignature", "-c", ctx("k.ctx"), "-g", "sha256", "-s",
              ctx("sig"), "-m", ctx("msg"))
        # a session saved by one invocation is used and flushed by the next ones
        tools(tcti, "tpm2_startauthsession", "-S", ctx("s.ctx"), "--policy-session")
        tools(tcti, "tpm2_policypcr", "-S", ctx("s.ctx"), "-l", "sha256:0", "-L", ctx("pol"))
        tools(tcti, "tpm2_flushcontext", ctx("s.ctx"))
        assert tools(tcti, "tpm2_getcap", "handles-saved-session").stdout.strip() == ""
