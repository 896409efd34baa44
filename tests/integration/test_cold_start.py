"""The cold `ctpm run` of a TPM in memory prints its ready line once its sockets listen,
before trio and the engine are imported: a client that connects at once is answered when
they are loaded, and a SIGTERM at once is a clean stop (exit 0, socket files removed)."""
import signal
import socket
import struct
import subprocess

from ctpm.testing.process import command, environment

STARTUP = bytes.fromhex("80010000000c000001440000")


def cold(*args):
    proc = subprocess.Popen(command("run", *args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=environment())
    return proc, proc.stdout.readline().decode()


def test_first_command_right_after_the_ready_line(tmp_path):
    path = tmp_path / "t.sock"
    proc, line = cold("--swtpm", f"unix:{path}")
    try:
        assert line == f"ctpm: ready swtpm=unix:{path},{path}.ctrl\n"
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(str(path))
            s.sendall(STARTUP)
            assert s.recv(64) == bytes.fromhex("80010000000a00000000")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert not path.exists()


def test_stopped_before_the_engine_is_loaded(tmp_path):
    path = tmp_path / "t.sock"
    for signum in (signal.SIGTERM, signal.SIGINT):
        proc, line = cold("--swtpm", f"unix:{path}", "--log-level", "info")
        assert line.startswith("ctpm: ready swtpm=")
        proc.send_signal(signum)                # at once: trio is still being imported
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "Traceback" not in err.decode()
        assert not path.exists() and not (tmp_path / "t.sock.ctrl").exists()


def test_address_in_use_before_any_ready_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run(command("run", "--mssim", f"127.0.0.1:{port}"), capture_output=True,
                           text=True, env=environment(), timeout=60)
    assert r.returncode == 1 and r.stdout == "" and "cannot listen" in r.stderr


def test_state_directory_waits_for_the_store(tmp_path):
    """With a state directory the ready line comes after the state is opened, so a locked
    or damaged one is an error instead of a ready line."""
    first, line = cold("--mssim", "127.0.0.1:0", "--state", str(tmp_path / "st"))
    try:
        assert line.startswith("ctpm: ready mssim=")
        r = subprocess.run(command("run", "--mssim", "127.0.0.1:0", "--state",
                                   str(tmp_path / "st")), capture_output=True, text=True,
                           env=environment(), timeout=60)
        assert r.returncode == 1 and r.stdout == "" and "in use" in r.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
    assert first.returncode == 0
    struct.unpack(">I", (tmp_path / "st" / "nv.snap").read_bytes()[:4])
