"""Passthrough's `device:` upstream (what /dev/tpmrm0 is in production), with swtpm as the
chip behind a character device: a pseudo-terminal in raw mode whose other side carries
the bytes to swtpm. The device path is the same code as for /dev/tpmrm0 (open, write the
command, read the answer); a pty may also hand the answer over in pieces, which the
kernel's TPM devices never do - ctpm waits for the rest."""
import os
import select
import shutil
import struct
import subprocess
import threading
import time
import tty

import pytest

from ctpm.testing.process import run_daemon
from tests.peers import SWTPM, TctiSwtpm
from tests.tpmcmd import STARTUP_CLEAR, rc

pytestmark = [pytest.mark.skipif(SWTPM is None, reason="swtpm is not installed"),
              pytest.mark.skipif(shutil.which("tpm2_getrandom") is None,
                                 reason="tpm2-tools not installed")]


class PtyDevice:
    """A character device at `self.path` answering TPM commands with swtpm's answers. Each
    answer goes out in two writes (the first 7 bytes, then the rest, 2 ms apart) so the
    reader sees it in pieces; `self.garble` makes the next answer a broken one."""

    def __init__(self, sw):
        self.sw = sw
        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        os.close(slave)             # the termios settings stay with the terminal
        self.garble = None
        self.codes = []             # command codes that reached the device
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        buf = b""
        while not self._stop:
            if not select.select([self.master], [], [], 0.1)[0]:
                continue
            try:
                buf += os.read(self.master, 65536)
            except OSError:                 # no one has the slave open right now
                buf = b""
                continue
            while len(buf) >= 10 and len(buf) >= struct.unpack(">I", buf[2:6])[0]:
                size = struct.unpack(">I", buf[2:6])[0]
                command, buf = buf[:size], buf[size:]
                rsp = self.sw.execute(command)
                self.codes.append(struct.unpack(">I", command[6:10])[0])
                if self.garble:
                    # one write each, nothing left over for the next opener (a pty keeps
                    # unread bytes across close and open, the kernel's devices do not):
                    # a header announcing 1 MiB / an answer whose last 4 bytes never come
                    os.write(self.master, {"malformed": b"\x80\x01\x00\x10\x00\x00",
                                           "unfinished": bytes.fromhex("8001 0000000e 00000000")
                                           }[self.garble])
                    self.garble = None
                    continue
                os.write(self.master, rsp[:7])
                time.sleep(0.002)               # the reader sees the first piece alone
                os.write(self.master, rsp[7:])

    def close(self):
        self._stop = True
        self._thread.join()
        os.close(self.master)


@pytest.fixture
def device():
    sw = TctiSwtpm()
    assert rc(sw.execute(STARTUP_CLEAR)) == 0
    dev = PtyDevice(sw)
    yield dev
    dev.close()
    sw.close()


def tool(tcti, *args):
    return subprocess.run([args[0], "-T", tcti, *args[1:]], capture_output=True, timeout=60)


def test_device_upstream(device, tmp_path):
    with run_daemon("--mode", "passthrough", "--upstream", f"device:{device.path}",
                    "--mssim", "127.0.0.1:0", timeout=30) as d:
        tcti = d.tcti("mssim")
        r = tool(tcti, "tpm2_getrandom", "--hex", "32")
        assert r.returncode == 0 and len(r.stdout.strip()) == 64, r.stderr
        # an RSA primary: a response of about a kilobyte, in pieces
        r = tool(tcti, "tpm2_createprimary", "-C", "o", "-G", "rsa2048", "-c",
                 str(tmp_path / "primary.ctx"))
        assert r.returncode == 0, r.stderr
        r = tool(tcti, "tpm2_pcrread", "sha256:0,1,2")
        assert r.returncode == 0 and b"sha256" in r.stdout, r.stderr
        r = tool(tcti, "tpm2_clear", "-c", "p")             # the guard's, never forwarded
        assert r.returncode != 0 and 0x126 not in device.codes       # TPM_CC_Clear
        assert 0x17B in device.codes and 0x131 in device.codes      # GetRandom, CreatePrimary

        # a malformed or unfinished answer from the device: the guest gets an error (the
        # unfinished one after ctpm's 2 s wait for the rest), ctpm reopens the device and
        # serves the next command
        for garble in ("malformed", "unfinished"):
            device.garble = garble
            r = tool(tcti, "tpm2_getrandom", "--hex", "8")
            assert r.returncode != 0, garble
            r = tool(tcti, "tpm2_getrandom", "--hex", "8")
            assert r.returncode == 0, (garble, r.stderr)
