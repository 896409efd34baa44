"""vtpm_proxy: the kernel's TPM driver talking to ctpm. The protocol is tested over a
SOCK_SEQPACKET pair, which keeps message boundaries as the proxy's anonymous file does; the
real device is used where the machine has /dev/vtpmx (module tpm_vtpm_proxy)."""
import os
import shutil
import socket
import struct
import subprocess

import pytest
import trio

from ctpm.backend import EngineBackend
from ctpm.engine.tpm import Tpm
from ctpm.transport import vtpm_proxy as vp
from tests.tpmcmd import STARTUP_CLEAR, cmd, rc


def test_ioctl_layout_matches_the_uapi_header():
    assert vp.VTPM_PROXY_IOC_NEW_DEV == 0xC014A100
    assert vp.VtpmProxyNewDev.fd.offset == 8 and vp.VtpmProxyNewDev.minor.offset == 16


def test_create_device_reports_a_missing_module(tmp_path):
    with pytest.raises(vp.VtpmProxyError, match="tpm_vtpm_proxy"):
        vp.create_device(str(tmp_path / "vtpmx"))

    seen = []

    def fake_ioctl(fd, request, arg):
        seen.append((request, arg.flags))
        arg.fd, arg.tpm_num = 42, 3
    (tmp_path / "vtpmx").write_bytes(b"")
    assert vp.create_device(str(tmp_path / "vtpmx"), ioctl=fake_ioctl) == (42, 3)
    assert seen == [(0xC014A100, vp.VTPM_PROXY_FLAG_TPM2)]


async def test_commands_and_locality_over_the_fd():
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    backend = EngineBackend(Tpm.manufacture(seed=b"vtpm-proxy test"))
    kernel_side = trio.socket.from_stdlib_socket(kernel)

    async def ask(command):
        await kernel_side.send(command)
        return await kernel_side.recv(4096)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(vp.serve_fd, backend, os.dup(ours.fileno()))
        ours.close()
        set_locality = struct.pack(">HII", 0x8001, 11, vp.CC_SET_LOCALITY)
        assert rc(await ask(set_locality + b"\x00")) == 0
        assert rc(await ask(set_locality + b"\x09")) == 0x1C4      # locality 9: refused
        assert rc(await ask(STARTUP_CLEAR)) == 0                   # powered on by serve_fd
        rsp = await ask(cmd(0x17B, struct.pack(">H", 8)))          # GetRandom(8)
        assert rc(rsp) == 0 and len(rsp) == 20
        # PCR_Reset of PCR 16 at locality 0 works; PCR 20 needs locality 2 (PC Client)
        assert rc(await ask(set_locality + b"\x02")) == 0
        pcr_reset = cmd(0x13D, handles=[20], sessions=[
            struct.pack(">IHBH", 0x40000009, 0, 1, 0)])
        assert rc(await ask(pcr_reset)) == 0
        assert rc(await ask(set_locality + b"\x00")) == 0
        assert rc(await ask(pcr_reset)) != 0
        kernel.close()          # the device goes away: the server ends by itself
    assert backend.powered


@pytest.mark.skipif(not os.path.exists(vp.VTPMX) or os.geteuid() != 0
                    or shutil.which("tpm2_getrandom") is None,
                    reason="no /dev/vtpmx here (module tpm_vtpm_proxy not loaded, or not root)")
def test_the_kernel_uses_ctpm_as_its_tpm():
    from ctpm.testing.process import run_daemon
    with run_daemon("--vtpm-proxy") as d:
        device = d.ready_line.split("vtpm-proxy=")[1].split(",")[1].split()[0]
        r = subprocess.run(["tpm2_getrandom", "-T", f"device:{device}", "--hex", "8"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
