"""An instance in svsm mode served by `ctpm host`: added at runtime and through the warm
`ctpm run --host`, reached by the guest-side SVSM client (as Linux's tpm_svsm) and by
tpm2-tools through `ctpm svsm-bridge`."""
import shutil
import struct
import subprocess

import pytest

from ctpm.svsm.client import SvsmClient
from ctpm.testing.process import command, environment, run_host, start

from .conftest import run_bridge

STARTUP = bytes.fromhex("80010000000c000001440000")
GET_RANDOM = bytes.fromhex("80010000000c0000017b0010")


def rc(response):
    return struct.unpack(">I", response[6:10])[0]


def test_svsm_instances_in_a_host(sp, tmp_path):
    ctl = tmp_path / "host.sock"
    sim = ["--mode", "svsm", "--snp-provider", "simulated", "--snp-sim-dir", sp.directory]
    with run_host(ctl):
        r = subprocess.run(command("host", "add", "s1", "--svsm", f"unix:{tmp_path}/s1.sock",
                                   *sim, "--control", str(ctl)),
                           capture_output=True, text=True, env=environment(), timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == f"ctpm: ready svsm=unix:{tmp_path}/s1.sock"
        warm = start("--host", f"unix:{ctl}", "--svsm", f"unix:{tmp_path}/s2.sock", *sim,
                     free_ports=False, timeout=120)
        try:
            assert warm.ready_line == f"ctpm: ready svsm=unix:{tmp_path}/s2.sock"
            for name in ("s1", "s2"):
                with SvsmClient(f"{tmp_path}/{name}.sock") as guest:
                    assert guest.probe()
                    # each instance's own boot: the guest's Startup is its first command
                    assert rc(guest.send_command(STARTUP)) == 0
                    assert rc(guest.send_command(STARTUP)) == 0x100     # INITIALIZE
                    rsp = guest.send_command(GET_RANDOM)
                    assert rc(rsp) == 0 and len(rsp) == 12 + 16
            if shutil.which("tpm2_nvreadpublic"):
                bridge = run_bridge(f"{tmp_path}/s2.sock")
                try:
                    out = subprocess.run(["tpm2_nvreadpublic", "-T", bridge.tcti()],
                                         capture_output=True, text=True, timeout=60)
                    assert out.returncode == 0, out.stderr
                    assert "0x1400001" in out.stdout        # the evidence index
                finally:
                    bridge.stop()
                    bridge.proc.stdout.close()
                    bridge._stderr.close()
            listed = subprocess.run(command("host", "list", "--control", str(ctl)),
                                    capture_output=True, text=True, env=environment()).stdout
            assert [ln.split("\t")[0] for ln in listed.splitlines()] == [
                "s1", f"run-{warm.proc.pid}"]
        finally:
            assert warm.stop() == 0
        r = subprocess.run(command("host", "add", "s3", "--svsm", f"unix:{tmp_path}/s3.sock",
                                   "--control", str(ctl)),
                           capture_output=True, text=True, env=environment(), timeout=60)
        assert r.returncode == 1 and "SVSM sockets need --mode svsm" in r.stderr
