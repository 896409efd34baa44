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
