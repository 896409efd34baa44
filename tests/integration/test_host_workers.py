"""`ctpm host serve --workers N`: the instances in worker processes, the control plane in
the host process; clients see no difference (tpm2-pytss ESAPI and raw streams here), a dead
worker costs its own instances only and is started again, and nothing outlives the host."""
import json
import os
import signal
import socket
import struct
import subprocess
import time

import pytest

from ctpm.testing.process import command, environment, run_host, start

STARTUP = bytes.fromhex("80010000000c000001440000")
GET_RANDOM = bytes.fromhex("80010000000c0000017b0008")


def ctpm(ctl, *args, check=True):
    r = subprocess.run(command(*args, "--control", str(ctl)), capture_output=True, text=True,
                       env=environment(), timeout=60)
    if check and r.returncode:
        raise AssertionError(f"ctpm {' '.join(args)}: {r.returncode} {r.stderr}")
    return r


def transact(path, *commands):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        out = []
        for c in commands:
            s.sendall(c)
            head = s.recv(10, socket.MSG_WAITALL)
            out.append(head + s.recv(struct.unpack(">I", head[2:6])[0] - 10,
                                     socket.MSG_WAITALL))
        return out


def status(ctl):
    return json.loads(ctpm(ctl, "host", "status").stdout)


def test_instances_spread_over_workers(tmp_path):
    ctl = tmp_path / "host.sock"
    with run_host(ctl, "--workers", "2") as host:
        for i in range(4):
            ctpm(ctl, "host", "add", f"v{i}", "--swtpm", f"unix:{tmp_path}/v{i}.sock")
        r = ctpm(ctl, "host", "add", "m", "--mssim", "127.0.0.1:0", "--state",
                 str(tmp_path / "m"))
        port = int(r.stdout.split(":")[2].split(",")[0])
        st = status(ctl)
        pids = {w["pid"] for w in st["workers"]}
        assert len(pids) == 2 and host.pid not in pids
        assert sorted(w["instances"] for w in st["workers"]) == [2, 3]
        # the listening sockets are served by the workers, not by the host process
        for i in range(4):
            startup, rnd = transact(tmp_path / f"v{i}.sock", STARTUP, GET_RANDOM)
            assert startup[6:10] == b"\0\0\0\0" and len(rnd) == 20
        st = status(ctl)
        assert {i["name"]: i["commands"] for i in st["instances"]} == {
            "v0": 2, "v1": 2, "v2": 2, "v3": 2, "m": 0}
        # a real client on the mssim instance: its own TPM, the same handles as another's
        from tpm2_pytss import ESAPI, TCTILdr, TPM2B_PUBLIC
        from tpm2_pytss.constants import ESYS_TR
        with ESAPI(TCTILdr("mssim", f"host=127.0.0.1,port={port}")) as esapi:
            esapi.startup(0)
            handle = esapi.create_primary(None, TPM2B_PUBLIC.parse("ecc256"),
                                          ESYS_TR.OWNER)[0]
            assert esapi.tr_get_tpm_handle(handle) == 0x80000000
        # a client's SHUTDOWN stops that instance only (CMD_SHUTDOWN = 3 on the control channel)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(tmp_path / "v1.sock.ctrl"))
            s.sendall(struct.pack(">I", 3))
            assert s.recv(4) == b"\0\0\0\0"
        for _ in range(100):
            names = [i["name"] for i in status(ctl)["instances"]]
            if "v1" not in names:
                break
            time.sleep(0.05)
        assert names == ["v0", "v2", "v3", "m"]
        assert not (tmp_path / "v1.sock").exists()          # the host removed its files
        ctpm(ctl, "host", "remove", "m")
        assert (tmp_path / "m" / "nv.snap").exists()        # saved by its worker
        # the warm path through a worker
        d = start("--host", f"unix:{ctl}", "--swtpm", f"unix:{tmp_path}/w.sock",
                  free_ports=False)
        try:
            assert transact(tmp_path / "w.sock", STARTUP)[0][6:10] == b"\0\0\0\0"
            assert f"run-{d.proc.pid}" in [i["name"] for i in status(ctl)["instances"]]
        finally:
            assert d.stop() == 0
        r = ctpm(ctl, "host", "add", "bad", "--mode", "nope", "--swtpm",
                 f"unix:{tmp_path}/bad.sock", check=False)
        assert r.returncode == 1 and "'nope'" in r.stderr
        assert not (tmp_path / "bad.sock").exists()


def test_a_dead_worker_costs_its_instances_only(tmp_path):
    ctl = tmp_path / "host.sock"
    with run_host(ctl, "--workers", "2") as host:
        ctpm(ctl, "host", "add", "a", "--swtpm", f"unix:{tmp_path}/a.sock")
        ctpm(ctl, "host", "add", "b", "--swtpm", f"unix:{tmp_path}/b.sock")
        st = status(ctl)
        where = {i["name"]: i["worker"] for i in st["instances"]}
        assert sorted(where.values()) == [0, 1]
        victim = st["workers"][where["a"]]["pid"]
        os.kill(victim, signal.SIGKILL)
        for _ in range(200):
            st = status(ctl)
            if [i["name"] for i in st["instances"]] == ["b"] and all(
                    w["pid"] != victim and w["rss_kib"] for w in st["workers"]):
                break
            time.sleep(0.05)
        assert [i["name"] for i in st["instances"]] == ["b"]
        assert transact(tmp_path / "b.sock", STARTUP)[0][6:10] == b"\0\0\0\0"
        ctpm(ctl, "host", "add", "a", "--swtpm", f"unix:{tmp_path}/a.sock")   # again
        assert transact(tmp_path / "a.sock", STARTUP)[0][6:10] == b"\0\0\0\0"
        workers = [w["pid"] for w in status(ctl)["workers"]]
        host.stderr_file.seek(0)
        assert "exited with -9: its instances are gone" in host.stderr_file.read().decode()
    for pid in workers:                                 # nothing outlives the host
        with pytest.raises(ProcessLookupError):
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.05)


def test_instance_directory_with_workers(tmp_path):
    ctl, d = tmp_path / "host.sock", tmp_path / "instances"
    d.mkdir()
    (d / "a.toml").write_text(f'[listen]\nswtpm = "unix:{tmp_path}/a.sock"\n')
    (d / "b.toml").write_text(f'[listen]\nswtpm = "unix:{tmp_path}/b.sock"\n'
                              f'[state]\ndir = "{tmp_path}/b"\n')
    with run_host(ctl, "--dir", str(d), "--workers", "2") as host:
        st = status(ctl)
        assert sorted((i["name"], i["source"]) for i in st["instances"]) == [
            ("a", "dir"), ("b", "dir")]
        assert {i["worker"] for i in st["instances"]} == {0, 1}
        assert transact(tmp_path / "b.sock", STARTUP)[0][6:10] == b"\0\0\0\0"
        (d / "a.toml").unlink()
        host.send_signal(signal.SIGHUP)
        for _ in range(100):
            if [i["name"] for i in status(ctl)["instances"]] == ["b"]:
                break
            time.sleep(0.05)
        assert [i["name"] for i in status(ctl)["instances"]] == ["b"]
        assert not (tmp_path / "a.sock").exists()
    assert (tmp_path / "b" / "nv.snap").exists()            # the host's SIGTERM: saved
