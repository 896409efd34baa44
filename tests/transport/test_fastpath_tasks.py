"""Connections the fast path handed to a task for one slow command come back to it; what
the fast path then does on the task's behalf still completes (a subprocess daemon with
durable state: answers to NV changes are held until the change is on disk)."""
import socket
import struct
import time

from ctpm.testing.process import run_daemon
from tests.modes.test_passthrough_fastpath import flush, rsa_primary
from tests.tpmcmd import STARTUP_CLEAR, b2, cmd, pw_session, rc, u32

ENDORSEMENT = 0x4000000B


def frame(command: bytes) -> bytes:
    return u32(8) + b"\0" + u32(len(command)) + command


def framed_response(sock) -> bytes:
    def exact(n):
        out = b""
        while len(out) < n:
            chunk = sock.recv(n - len(out))
            assert chunk, "closed"
            out += chunk
        return out
    size = struct.unpack(">I", exact(4))[0]
    response = exact(size)
    assert exact(4) == bytes(4)
    return response


def test_nv_change_behind_a_slow_command_in_one_write(tmp_path):
    """An RSA key made in the worker thread (its connection goes to a task) and, in the same
    write, a command that changes NV: the task answers the first, hands the connection back
    and the fast path runs the second on the task's behalf; that answer, held until the
    change is durable, must still go out (no pass of the epoll set would release it)."""
    with run_daemon("--mssim", "127.0.0.1:0", "--state", str(tmp_path / "state"),
                    timeout=30) as d:
        _, host, port, _ = d.endpoint("mssim")
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(frame(STARTUP_CLEAR))
            assert rc(framed_response(s)) == 0
            for auth in (b"one", b"two"):
                old = b"" if auth == b"one" else b"one"
                t0 = time.monotonic()
                s.sendall(frame(rsa_primary()) + frame(cmd(
                    0x129, b2(auth), handles=[ENDORSEMENT], sessions=[pw_session(old)])))
                key = framed_response(s)
                changed = framed_response(s)
                assert (auth, rc(key), rc(changed)) == (auth, 0, 0)
                assert time.monotonic() - t0 < 5
                s.sendall(frame(flush(struct.unpack(">I", key[10:14])[0])))
                assert rc(framed_response(s)) == 0


def test_long_upstream_wait_taken_up_by_a_task(tmp_path):
    """A passthrough command whose upstream never answers, reached over mssim right after a
    command a task served (the TCTI loader's upstream has no descriptor the fast path can
    watch): the fast path takes the second one up on the task's behalf and parks it in the
    set, which must still give up on it at `[passthrough] timeout` (TPM_RC_FAILURE), though
    the set's watcher was asleep in trio when the wait began."""
    import os
    import signal
    from tests.peers import TctiSwtpm
    sw = TctiSwtpm()
    config = tmp_path / "ctpm.toml"
    config.write_text("[passthrough]\ntimeout = 1.5\ntcti_loader = true\n")
    try:
        with run_daemon("--mode", "passthrough", "--upstream", sw.tcti, "--mssim",
                        "127.0.0.1:0", "--config", str(config), timeout=30) as d:
            _, host, port, _ = d.endpoint("mssim")
            with socket.create_connection((host, port), timeout=10) as s:
                key = rsa_primary()
                getrandom = cmd(0x17B, b"\0\x08")
                s.sendall(frame(key))
                created = framed_response(s)
                assert rc(created) == 0
                os.kill(sw.proc.pid, signal.SIGSTOP)
                try:
                    t0 = time.monotonic()
                    s.sendall(frame(getrandom))
                    assert rc(framed_response(s)) == 0x101
                    assert 1.4 < time.monotonic() - t0 < 5
                finally:
                    os.kill(sw.proc.pid, signal.SIGCONT)
                s.sendall(frame(getrandom))
                assert rc(framed_response(s)) == 0
    finally:
        sw.close()
