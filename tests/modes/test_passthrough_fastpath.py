"""Passthrough behind the swtpm data channel's fast path (a connection per command, as the
swtpm TCTI connects): the answer to a forwarded command is waited for in the fast path's
epoll set (quick ones) or in a task (slow ones, e.g. an RSA key generated upstream); either
way every client gets its own answer, in order, and clients that go away do no harm."""
import os
import socket
import struct
import subprocess
import sys
import threading

import pytest

from ctpm.testing.process import run_daemon
from tests.peers import SWTPM, TctiSwtpm, recv_response
from tests.tpmcmd import STARTUP_CLEAR, b2, cmd, pcr_select, pw_session, rc, u16, u32

pytestmark = pytest.mark.skipif(SWTPM is None,
                                reason="swtpm is not installed")

OWNER = 0x40000001
GET_RANDOM = cmd(0x17B, u16(16))
PCR_READ = cmd(0x17E, pcr_select((0x000B, [0, 1, 2])))
GET_CAPABILITY = u32(1)         # swtpm control channel


def rsa_primary() -> bytes:
    """CreatePrimary of an RSA-2048 storage key with fresh unique bytes: the upstream
    generates a new key (tens of milliseconds and more), longer than the fast path waits."""
    template = (u16(0x0001) + u16(0x000B) + u32(0x00030472) + u16(0)
                + u16(0x0006) + u16(128) + u16(0x0043) + u16(0x0010) + u16(2048) + u32(0)
                + b2(os.urandom(16)))
    return cmd(0x131, b2(u16(0) + u16(0)) + b2(template) + u16(0) + u32(0),
               handles=[OWNER], sessions=[pw_session()])


def flush(handle: int) -> bytes:
    return cmd(0x165, u32(handle))


@pytest.fixture
def daemon(tmp_path):
    sw = TctiSwtpm()
    assert rc(sw.execute(STARTUP_CLEAR)) == 0
    sw.disconnect()
    path = str(tmp_path / "ctpm")
    with run_daemon("--mode", "passthrough", "--upstream", sw.tcti, "--swtpm", f"unix:{path}",
                    timeout=30) as d:
        d.path = path
        yield d
    sw.close()


def call(path, *commands, close_early=False):
    """`commands` in one write on a new connection; their responses (none if closed early)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(60)
        s.connect(path)
        s.sendall(b"".join(commands))
        if close_early:
            return []
        return [recv_response(s) for _ in commands]


def test_quick_and_slow_commands_one_connection_each(daemon):
    for _ in range(20):
        (r,) = call(daemon.path, GET_RANDOM)
        assert rc(r) == 0 and struct.unpack(">H", r[10:12])[0] == 16
        (r,) = call(daemon.path, PCR_READ)
        assert rc(r) == 0
    (r,) = call(daemon.path, rsa_primary())             # waited for in a task
    assert rc(r) == 0, hex(rc(r))
    handle = struct.unpack(">I", r[10:14])[0]
    (r,) = call(daemon.path, flush(handle))
    assert rc(r) == 0
    (r,) = call(daemon.path, GET_RANDOM)                  # and the fast path goes on
    assert rc(r) == 0


def test_pipelined_commands_are_answered_in_order(daemon):
    for first in (rsa_primary(), GET_RANDOM):
        a, b, c = call(daemon.path, first, PCR_READ, GET_RANDOM)
        assert rc(a) == rc(b) == rc(c) == 0
        assert len(c) == 10 + 2 + 16                      # GetRandom(16)
        assert len(b) != len(c)                           # PCR_Read's answer, not another's
        if first != GET_RANDOM:
            (r,) = call(daemon.path, flush(struct.unpack(">I", a[10:14])[0]))
            assert rc(r) == 0


def test_clients_that_leave_while_upstream_works_do_no_harm(daemon):
    call(daemon.path, rsa_primary(), close_early=True)
    for _ in range(50):
        call(daemon.path, GET_RANDOM, close_early=True)
    for _ in range(5):
        (r,) = call(daemon.path, GET_RANDOM)
        assert rc(r) == 0
    assert daemon.proc.poll() is None


def test_other_connections_while_a_command_is_in_flight(daemon):
    """A second client arrives while the first one's key is being generated upstream: it
    waits its turn (one upstream) and gets its own answer."""
    results = {}

    def slow():
        results["slow"] = call(daemon.path, rsa_primary())[0]
    t = threading.Thread(target=slow)
    t.start()
    quick = [call(daemon.path, GET_RANDOM)[0] for _ in range(10)]
    t.join(60)
    assert rc(results["slow"]) == 0
    assert all(rc(r) == 0 and len(r) == 28 for r in quick)
    (r,) = call(daemon.path, flush(struct.unpack(">I", results["slow"][10:14])[0]))
    assert rc(r) == 0


def test_a_connection_kept_open_between_commands(daemon):
    """A client that keeps its connection (QEMU, a TCTI that does not reconnect) and sends
    its next command at once, within the fast path's linger after an answer, or long after
    it (the connection waiting in the epoll set by then): every command is answered, in
    order, and the connection stays usable."""
    import time
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(daemon.path)
        for gap in (0, 0, 0.0001, 0.001, 0.02, 0, 0.05, 0):
            time.sleep(gap)
            s.sendall(PCR_READ)
            assert rc(recv_response(s)) == 0
        s.sendall(rsa_primary())            # slow upstream: the answer from a task
        r = recv_response(s)
        assert rc(r) == 0
        s.sendall(flush(struct.unpack(">I", r[10:14])[0]))
        assert rc(recv_response(s)) == 0
        s.sendall(GET_RANDOM)
        assert len(recv_response(s)) == 28


def test_upstream_that_never_answers(tmp_path):
    """The upstream stops with a command in flight: the swtpm client gets TPM_RC_FAILURE at
    the `[passthrough] timeout` (the fast path's set gives up on it), the event loop serves
    the control channel meanwhile, and service resumes on a new upstream connection."""
    import signal
    import time
    sw = TctiSwtpm()
    assert rc(sw.execute(STARTUP_CLEAR)) == 0
    sw.disconnect()
    config = tmp_path / "ctpm.toml"
    config.write_text("[passthrough]\ntimeout = 1.5\n")
    path = str(tmp_path / "ctpm")
    try:
        with run_daemon("--mode", "passthrough", "--upstream", sw.tcti, "--swtpm",
                        f"unix:{path}", "--config", str(config), timeout=30) as d:
            (r,) = call(path, GET_RANDOM)
            assert rc(r) == 0
            os.kill(sw.proc.pid, signal.SIGSTOP)
            try:
                result = {}

                def hung():
                    t0 = time.monotonic()
                    result["rc"] = rc(call(path, GET_RANDOM)[0])
                    result["waited"] = time.monotonic() - t0
                def cpu():      # the daemon's user + system time, s
                    with open(f"/proc/{d.proc.pid}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
                t = threading.Thread(target=hung)
                t.start()
                time.sleep(0.3)
                before = cpu()
                time.sleep(0.5)
                assert cpu() - before < 0.2     # waiting costs no CPU (no spinning loop)
                t0 = time.monotonic()
                with socket.socket(socket.AF_UNIX) as c:    # the loop is not held
                    c.settimeout(10)
                    c.connect(path + ".ctrl")
                    c.sendall(GET_CAPABILITY)
                    assert struct.unpack(">I", c.recv(8)[:4])[0] == 0
                assert time.monotonic() - t0 < 0.5
                t.join(10)
                assert result["rc"] == 0x101            # TPM_RC_FAILURE: outcome unknown
                assert 1.4 < result["waited"] < 5
            finally:
                os.kill(sw.proc.pid, signal.SIGCONT)
            (r,) = call(path, GET_RANDOM)
            assert rc(r) == 0 and len(r) == 28
            assert d.proc.poll() is None
    finally:
        sw.close()


def test_same_bytes_over_mssim_do_not_take_the_parked_answer(tmp_path):
    """A command parked by the fast path (the upstream stopped, so it is surely in flight)
    and the same bytes from an mssim client meanwhile: the mssim command waits its turn
    instead of taking the answer the fast path claimed; each client gets an answer of its
    own once the upstream is back."""
    import signal
    import time
    sw = TctiSwtpm()
    assert rc(sw.execute(STARTUP_CLEAR)) == 0
    sw.disconnect()
    path = str(tmp_path / "ctpm")
    try:
        with run_daemon("--mode", "passthrough", "--upstream", sw.tcti, "--swtpm",
                        f"unix:{path}", "--mssim", "127.0.0.1:0", timeout=30) as d:
            from tpm2_pytss import TCTILdr
            mssim = TCTILdr.parse(d.tcti("mssim"))
            results = {}

            def fast():
                results["fast"] = call(path, GET_RANDOM)[0]
            os.kill(sw.proc.pid, signal.SIGSTOP)
            try:
                t = threading.Thread(target=fast)
                t.start()
                time.sleep(0.3)                 # parked: in the set, claimed
                mssim.transmit(GET_RANDOM)
                time.sleep(0.3)
            finally:
                os.kill(sw.proc.pid, signal.SIGCONT)
            other = bytes(mssim.receive(4096, 30000))
            t.join(30)
            mssim.close()
            assert rc(results["fast"]) == 0 and len(results["fast"]) == 28
            assert rc(other) == 0 and len(other) == 28
            assert results["fast"][12:] != other[12:]
            assert d.proc.poll() is None
    finally:
        sw.close()


def test_malformed_command_still_gets_its_rc(daemon):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(daemon.path)
        s.sendall(struct.pack(">HII", 0x8001, 6, 0x17B))         # size below a header
        assert rc(recv_response(s)) == 0x142                     # TPM_RC_COMMAND_SIZE
    (r,) = call(daemon.path, GET_RANDOM)
    assert rc(r) == 0


def test_control_channel_is_served_while_clients_keep_the_data_channel_busy(tmp_path):
    """The fast path lingers on its own epoll set while clients keep coming; the loop's other
    tasks (here the control channel) still get their turns."""
    path = str(tmp_path / "ctpm")
    with run_daemon("--swtpm", f"unix:{path}", timeout=30) as d:
        (r,) = call(path, STARTUP_CLEAR)
        assert rc(r) == 0
        # separate processes: one Python client alone leaves gaps the loop notices
        hammer = ("import socket, sys\n"
                  "n = 0\n"
                  "while True:\n"
                  "    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
                  f"    s.sendall({GET_RANDOM!r}); s.recv(100); s.close(); n += 1\n"
                  "    if n == 100: print('busy', flush=True)\n")
        clients = [subprocess.Popen([sys.executable, "-c", hammer, path], stdout=subprocess.PIPE)
                   for _ in range(3)]
        try:
            for p in clients:
                assert p.stdout.readline() == b"busy\n"
            for _ in range(20):
                with socket.socket(socket.AF_UNIX) as c:
                    c.settimeout(10)
                    c.connect(path + ".ctrl")
                    c.sendall(GET_CAPABILITY)
                    assert struct.unpack(">I", c.recv(8)[:4])[0] == 0
            assert all(p.poll() is None for p in clients)     # still served, too
        finally:
            for p in clients:
                p.kill()
                p.wait()
                p.stdout.close()
        assert d.proc.poll() is None


def test_same_command_from_many_clients_at_once(daemon):
    """Identical commands (same bytes) from concurrent clients: each gets an answer of its
    own while one of them is in flight, none waits out the timeout."""
    answers = []

    def client():
        for _ in range(30):
            answers.append(call(daemon.path, GET_RANDOM)[0])
    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == 120
    assert all(rc(r) == 0 and len(r) == 28 for r in answers)
    assert len({r[12:] for r in answers}) == 120          # 120 different random strings
