"""The warm `ctpm run --host` as harnesses start it: the common case goes through
ctpm/host/warmlite.py (no trio, no argparse, no engine, not even the `socket` module), the
rest through the full path (warm.py); both hand their sockets to the host and behave alike."""
import os
import socket
import struct
import subprocess
import sys

import pytest

from ctpm.testing.process import command, environment, run_host, start

STARTUP = bytes.fromhex("80010000000c000001440000")
GET_RANDOM = bytes.fromhex("80010000000c0000017b0008")


def swtpm_transact(path, *commands):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        out = []
        for c in commands:
            s.sendall(c)
            head = _exact(s, 10)
            out.append(head + _exact(s, struct.unpack(">I", head[2:6])[0] - 10))
        return out


def _exact(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise EOFError
        out += chunk
    return out


def run(*args, **kw):
    return subprocess.run(command("run", *args), capture_output=True, text=True,
                          env=environment(), timeout=60, **kw)


@pytest.fixture
def host(tmp_path):
    ctl = tmp_path / "host.sock"
    with run_host(ctl) as proc:
        proc.control = ctl
        yield proc


def test_lite_and_full_paths_serve_alike(host, tmp_path):
    conf = tmp_path / "full.toml"
    conf.write_text(f'[listen]\nswtpm = ["unix:{tmp_path}/full.sock"]\n')
    lite = start("--host", f"unix:{host.control}", "--swtpm", f"unix:{tmp_path}/lite.sock",
                 free_ports=False)
    full = start("--host", f"unix:{host.control}", "--config", str(conf), free_ports=False)
    try:
        for d, name in ((lite, "lite"), (full, "full")):
            path = f"{tmp_path}/{name}.sock"
            assert d.ready_line == f"ctpm: ready swtpm=unix:{path},{path}.ctrl"
            startup, rnd = swtpm_transact(path, STARTUP, GET_RANDOM)
            assert startup[6:10] == b"\0\0\0\0" and rnd[6:10] == b"\0\0\0\0"
            assert len(rnd) == 20
        # the two instances are separate TPMs: the second Startup of each is refused
        for name in ("lite", "full"):
            (again,) = swtpm_transact(f"{tmp_path}/{name}.sock", STARTUP)
            assert struct.unpack(">I", again[6:10])[0] == 0x100      # TPM_RC_INITIALIZE
        assert lite.stop() == 0 and full.stop() == 0
        assert not any(p.name.endswith(".sock") and p.name != "host.sock"
                       for p in tmp_path.iterdir())
    finally:
        lite.stop()
        full.stop()


def test_lite_path_imports_nothing_heavy(host, tmp_path):
    """What a harness waits for at every start: the modules this process imports."""
    argv = [sys.executable, "-X", "importtime", "-m", "ctpm", "run", "--host",
            f"unix:{host.control}", "--mssim", "127.0.0.1:0"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=environment())
    line = proc.stdout.readline().decode()
    assert line.startswith("ctpm: ready mssim=127.0.0.1:")
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    imported = {ln.split("|")[2].strip() for ln in err.decode().splitlines()
                if ln.startswith("import time:") and ln.count("|") == 2}
    assert "ctpm.host.warmlite" in imported
    for heavy in ("trio", "argparse", "json", "socket", "ctpm.config", "ctpm.engine.tpm",
                  "dataclasses", "enum"):
        assert heavy not in imported, heavy


def test_lite_path_errors(host, tmp_path):
    r = run("--host", f"unix:{host.control}", "--swtpm", f"unix:{tmp_path}/a.sock",
            "--mode", "bogus")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("ctpm: config error: --mode: 'bogus'"), r.stderr
    assert not (tmp_path / "a.sock").exists()               # its sockets are gone
    with socket.socket(socket.AF_UNIX) as busy:
        busy.bind(str(tmp_path / "b.sock"))
        busy.listen()
        r = run("--host", f"unix:{host.control}", "--swtpm", f"unix:{tmp_path}/b.sock")
        assert r.returncode == 1 and "a server is running there" in r.stderr, r.stderr
    r = run("--host", f"unix:{tmp_path}/nohost.sock", "--swtpm", f"unix:{tmp_path}/c.sock")
    assert r.returncode == 1 and "cannot reach the host" in r.stderr
    assert not (tmp_path / "c.sock").exists()
    # a state directory in use by a running instance: the host says so, one line
    d = start("--host", f"unix:{host.control}", "--swtpm", f"unix:{tmp_path}/d.sock",
              "--state", str(tmp_path / "st"), free_ports=False)
    try:
        r = run("--host", f"unix:{host.control}", "--swtpm", f"unix:{tmp_path}/e.sock",
                "--state", str(tmp_path / "st"))
        assert r.returncode == 1 and r.stderr.startswith("ctpm: the host refused:"), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    finally:
        assert d.stop() == 0
    assert (tmp_path / "st" / "nv.snap").exists()           # saved before it exited


def test_environment_variable_names_the_host(host, tmp_path):
    env = {**environment(), "CTPM_HOST": f"unix:{host.control}"}
    proc = subprocess.Popen(command("run", "--swtpm", f"unix:{tmp_path}/v.sock"),
                            stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline().decode().startswith("ctpm: ready swtpm=unix:")
        listed = subprocess.run(command("host", "list", "--control", str(host.control)),
                                capture_output=True, text=True, env=environment()).stdout
        assert listed.startswith(f"run-{proc.pid}\twarm\t")
    finally:
        proc.send_signal(2)                     # SIGINT: as SIGTERM
        assert proc.wait(30) == 0
        proc.stdout.close()


def test_lite_path_tcp_pairs(host):
    """Loopback TCP listeners of the lite path: port 0 picks an adjacent pair; IPv6 too."""
    families = [("127.0.0.1", socket.AF_INET)]
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        families.append(("[::1]", socket.AF_INET6))
    except OSError:
        pass
    for shown, family in families:
        d = start("--host", f"unix:{host.control}", "--mssim", f"{shown}:0", free_ports=False)
        try:
            listening = d.ready_line.split("mssim=")[1]
            assert listening.startswith(shown + ":")
            port, platform = (int(p) for p in listening[len(shown) + 1:].split(","))
            assert platform == port + 1
            with socket.socket(family) as s:
                s.settimeout(10)
                s.connect((shown.strip("[]"), port))
                s.sendall(struct.pack(">IBI", 8, 0, len(STARTUP)) + STARTUP)
                size = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))[0]
                assert s.recv(size + 4, socket.MSG_WAITALL)[6:10] == b"\0\0\0\0"
        finally:
            assert d.stop() == 0
