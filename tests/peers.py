"""swtpm as the reference peer for differential tests: same bytes in, compare bytes out.

swtpm listens on unix sockets in a temporary directory, so no TCP port can collide with
other processes on the machine.
"""
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time

import pytest

from tests.tpmcmd import SHUTDOWN_CLEAR, STARTUP_CLEAR, cmd, rc

SWTPM = shutil.which("swtpm")
needs_swtpm = pytest.mark.skipif(SWTPM is None, reason="swtpm is not installed")


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed")
        buf += chunk
    return buf


def recv_response(sock):
    hdr = _recv_exact(sock, 10)
    size = struct.unpack(">I", hdr[2:6])[0]
    return hdr + _recv_exact(sock, size - 10)


class Swtpm:
    """A swtpm process (TPM 2.0, fresh state) driven over its unix data and control sockets."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="ctpm-swtpm-")
        self.data_path = os.path.join(self.dir, "data")
        self.ctrl_path = os.path.join(self.dir, "ctrl")
        self._spawn()
        self.sock = None

    def _spawn(self):
        self.proc = subprocess.Popen(
            [SWTPM, "socket", "--tpm2", "--tpmstate", f"dir={self.dir}",
             "--server", f"type=unixio,path={self.data_path}",
             "--ctrl", f"type=unixio,path={self.ctrl_path}",
             "--flags", "not-need-init", "--log", f"file={self.dir}/log,level=0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not (os.path.exists(self.data_path) and os.path.exists(self.ctrl_path)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("swtpm did not start")
            time.sleep(0.01)

    def restart(self):
        """Kill swtpm as a power cut would (SIGKILL: it saves nothing) and start it again on
        the same state directory: what it kept is what it had written to its NV files."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.proc.kill()
        self.proc.wait(5)
        for path in (self.data_path, self.ctrl_path):
            if os.path.exists(path):
                os.unlink(path)
        self._spawn()

    @staticmethod
    def _open(path):
        """Connect, retrying while swtpm has bound its socket but not yet listens on it."""
        deadline = time.monotonic() + 10
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            try:
                s.connect(path)
                return s
            except ConnectionRefusedError:
                s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)

    def _connect(self):
        if self.sock is None:
            self.sock = self._open(self.data_path)
        return self.sock

    def execute(self, cmd: bytes, locality: int = 0) -> bytes:
        if locality:
            self.ctrl(5, bytes([locality]))
        sock = self._connect()
        sock.sendall(cmd)
        try:
            return recv_response(sock)
        finally:
            if locality:
                self.ctrl(5, b"\0")

    def init(self):
        """CMD_INIT on the control channel: _TPM_Init (a power cycle); the data connection
        is opened again for the next command."""
        self.ctrl(2, struct.pack(">I", 0))
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def ctrl(self, code: int, body: bytes = b"") -> bytes:
        with self._open(self.ctrl_path) as c:
            c.sendall(struct.pack(">I", code) + body)
            return c.recv(4096)

    def close(self):
        if self.sock is not None:
            self.sock.close()
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)



class TctiSwtpm(Swtpm):
    """swtpm where tpm2-tss's swtpm TCTI looks for it: data on PATH, control on PATH.ctrl."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="ctpm-swtpm-")
        self.data_path = os.path.join(self.dir, "tpm")
        self.ctrl_path = self.data_path + ".ctrl"
        self._spawn()
        self.sock = None

    @property
    def tcti(self):
        return f"swtpm:path={self.data_path}"

    def disconnect(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

RETRY = 0x922       # TPM_RC_RETRY: libtpms asks for it (DA flag written, RSA key prepared)


def retrying(execute):
    """`execute` that sends a command again while the TPM answers TPM_RC_RETRY, as a TSS
    does. libtpms asks for it after writing its DA-used flag (the first DA-protected
    authorization after Startup) and when a command's first use of an algorithm ran that
    algorithm's self-test; ctpm never does."""
    def run(command, *args, **kwargs):
        r = execute(command, *args, **kwargs)
        while rc(r) == RETRY:
            r = execute(command, *args, **kwargs)
        return r
    return run


class Pair:
    """ctpm (in process, started) and swtpm (after an orderly TPM Reset), fed the same
    commands. swtpm's TPM_RC_RETRY is answered by sending the command again, as a TSS does.

    The orderly shutdown before the reset matters: a TPM Reset without one counts as a
    failed authorization once DA was used (Part 1 §19.8.6), and a few lock swtpm out."""

    def __init__(self, peer, ctpm=None):
        from ctpm.testing import manufacture_test_tpm, startup

        self.ctpm = ctpm if ctpm is not None else startup(manufacture_test_tpm())
        self.peer = peer
        selftest = cmd(0x143, b"\x01")
        peer.execute(SHUTDOWN_CLEAR)
        peer.init()
        for c in (STARTUP_CLEAR, selftest):
            peer.execute(c)
        self.ctpm.execute(selftest)

    def execute_peer(self, command):
        return retrying(self.peer.execute)(command)

    def run(self, command):
        """(ctpm's response, swtpm's response)."""
        return self.ctpm.execute(command), self.execute_peer(command)

    def same(self, command, what=""):
        """Both answer with the same bytes; ctpm's response."""
        ours, theirs = self.run(command)
        assert (hex(rc(ours)), ours) == (hex(rc(theirs)), theirs), what
        return ours

    def same_rc(self, command, what=""):
        """Both answer with the same TPM_RC; both responses."""
        ours, theirs = self.run(command)
        assert hex(rc(ours)) == hex(rc(theirs)), what
        return ours, theirs

    def handles(self, command, what=""):
        """A command that must succeed in both and return a handle: (ctpm's, swtpm's)."""
        ours, theirs = self.same_rc(command, what)
        assert rc(ours) == 0, (hex(rc(ours)), what)
        return struct.unpack(">I", ours[10:14])[0], struct.unpack(">I", theirs[10:14])[0]

    def deviates(self, command, what, ours_rc, theirs_rc):
        """A known difference: ctpm answers what the reference TPM does, swtpm not."""
        ours, theirs = self.run(command)
        assert (hex(rc(ours)), hex(rc(theirs))) == (hex(ours_rc), hex(theirs_rc)), what
        return ours
