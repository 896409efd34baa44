"""A Linux guest under QEMU uses ctpm as its TPM (`-tpmdev emulator`, the swtpm control
channel with the data channel passed as a file descriptor), through the TIS and the CRB
interface: SeaBIOS measures the boot into the TPM and writes an event log, the kernel's
tpm_tis/tpm_crb driver binds, IMA extends PCR 10, /dev/tpm0 answers. Checked against an
independent replay of the firmware's event log, and against the same boot with swtpm.
"""
import struct
import subprocess

import pytest

from ctpm.testing.process import run_daemon
from tests import guest
from tests.peers import SWTPM

pytestmark = [pytest.mark.guest,
              pytest.mark.skipif(guest.missing() is not None, reason=str(guest.missing()))]


def boot_with_ctpm(tmp_path, device="tpm-tis", state=None, extra=()):
    sock = tmp_path / "ctpm.sock"
    args = ["--swtpm", f"unix:{sock}"] + (["--state", str(state)] if state else [])
    with run_daemon(*args, *extra, timeout=30) as d:
        result = guest.boot(f"{sock}.ctrl", tmp_path, device)
        # QEMU's CMD_SHUTDOWN at exit stops the daemon, as it stops swtpm
        d.proc.wait(10)
        return result, d.proc.returncode


def check(result: guest.Boot):
    assert result.done, result.console[-3000:]
    assert result.version == "2"
    assert "Could not cleanly shutdown" not in result.stderr, result.stderr
    rsp = result.getrandom
    assert struct.unpack(">HII", rsp[:10]) == (0x8001, 28, 0) and rsp[10:12] == b"\0\x10"
    # the firmware's log, replayed here, gives the PCRs the guest reads
    replayed = guest.replay(result.event_log)
    assert replayed, "empty event log"
    for (bank, pcr), value in replayed.items():
        assert result.pcrs[bank, pcr] == value, (bank, pcr)
    # IMA measured the boot aggregate into PCR 10
    assert result.pcrs["sha256", 10] != bytes(32)


@pytest.fixture(scope="module")
def tis_boot(tmp_path_factory):
    return boot_with_ctpm(tmp_path_factory.mktemp("tis"))


def test_guest_ima_log_replays_to_pcr_10(tis_boot):
    """The guest kernel's own IMA log (binary and ASCII), replayed by the verifier's
    ctpm.attest.ima, gives the PCR 10 the guest reads from ctpm, in both banks."""
    from ctpm.attest.ima import replay
    result, _ = tis_boot
    assert result.ima_log, result.console[-2000:]
    values, entries = replay(result.ima_log, ("sha1", "sha256"))
    assert entries >= 1
    assert values == {("sha1", 10): result.pcrs["sha1", 10],
                      ("sha256", 10): result.pcrs["sha256", 10]}
    text_values, text_entries = replay(result.ima_text, ("sha1", "sha256"))
    assert text_entries == entries and text_values == {("sha1", 10): result.pcrs["sha1", 10]}


def test_guest_uses_ctpm_through_tis(tis_boot):
    result, returncode = tis_boot
    check(result)
    assert returncode == 0
    assert {pcr for _, pcr in guest.replay(result.event_log)} >= {0, 1, 7}


def test_guest_uses_ctpm_in_ephemeral_mode(tmp_path):
    """The ephemeral mode serves a QEMU guest as a host-side backend (its anchor then proves
    nothing about the guest, docs/modes.md): the boot, the event log and IMA work as in the
    standard mode, and the provisioned EK is there for the guest."""
    from ctpm.snp.simulator import SimulatedSP
    SimulatedSP(str(tmp_path / "sim"), "milan")
    result, returncode = boot_with_ctpm(tmp_path, extra=(
        "--mode", "ephemeral", "--snp-provider", "simulated", "--snp-sim-dir",
        str(tmp_path / "sim")))
    check(result)
    assert returncode == 0


@pytest.mark.skipif(SWTPM is None, reason="swtpm is not installed")
@pytest.mark.parametrize("pcr_writes", [True, False], ids=["pcr-writes", "default-guard"])
def test_guest_uses_passthrough(tmp_path, pcr_writes):
    """ctpm passthrough as QEMU's TPM backend in front of a 'hardware' TPM (swtpm): the
    guest's driver binds in full (it reads the command list the guard filters and
    TPM_PT_TOTAL_COMMANDS, which must agree, or Linux puts the TPM in 'field failure mode'),
    and what the guest reads is the upstream's. The firmware's TPM2_Startup gets the
    started chip's TPM_RC_INITIALIZE, so SeaBIOS measures nothing (as with QEMU's own
    passthrough backend; docs/modes.md); the kernel's IMA extends PCR 10 on the upstream
    where PCR writes are allowed, and nothing is extended with the default guard."""
    from tests.peers import TctiSwtpm
    from tests.tpmcmd import cmd, pcr_select, rc
    sw = TctiSwtpm()
    config = tmp_path / "ctpm.toml"
    config.write_text(f"[passthrough]\npcr_writes = {str(pcr_writes).lower()}\n")
    try:
        result, returncode = boot_with_ctpm(tmp_path, extra=(
            "--mode", "passthrough", "--upstream", sw.tcti, "--config", str(config)))
        assert result.done, result.console[-3000:]
        assert result.version == "2"
        assert rc(result.getrandom) == 0 and len(result.getrandom) == 28
        assert returncode == 0
        for pcr in (0, 7, 10):      # read on the upstream directly: the guest's values
            rsp = sw.execute(cmd(0x17E, pcr_select((0x000B, [pcr]))))
            assert rc(rsp) == 0
            assert rsp[-32:] == result.pcrs["sha256", pcr], pcr
        assert result.event_log == b""
        assert all(v == bytes(len(v)) for (_, pcr), v in result.pcrs.items() if pcr != 10)
        assert (result.pcrs["sha256", 10] != bytes(32)) is pcr_writes
    finally:
        sw.close()


def test_guest_uses_ctpm_through_crb(tmp_path):
    result, returncode = boot_with_ctpm(tmp_path, "tpm-crb")
    check(result)
    assert returncode == 0


@pytest.mark.skipif(SWTPM is None, reason="swtpm is not installed")
def test_same_measurements_as_swtpm(tis_boot, tmp_path):
    """The same guest booted with swtpm: every PCR the guest reads is the same."""
    ctrl = tmp_path / "swtpm.ctrl"
    proc = subprocess.Popen([SWTPM, "socket", "--tpm2", "--tpmstate", f"dir={tmp_path}",
                             "--ctrl", f"type=unixio,path={ctrl}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(500):
            if ctrl.exists():
                break
            subprocess.run(["sleep", "0.01"])
        theirs = guest.boot(str(ctrl), tmp_path)
    finally:
        proc.terminate()
        proc.wait(10)
    assert theirs.done, theirs.console[-3000:]
    ours, _ = tis_boot
    assert ours.pcrs == theirs.pcrs
    assert ours.event_log == theirs.event_log


def test_live_migration(tmp_path):
    """QEMU migrates a running guest to a second QEMU with a second ctpm (its own state
    directory): the guest's TPM goes on there - PCR 16, extended before the migration, reads
    the same after it, and /dev/tpm0 keeps answering."""
    a, b = tmp_path / "a.sock", tmp_path / "b.sock"
    with run_daemon("--swtpm", f"unix:{a}", "--state", str(tmp_path / "a")) as da, \
            run_daemon("--swtpm", f"unix:{b}", "--state", str(tmp_path / "b")) as db:
        first, second, status = guest.boot_and_migrate(f"{a}.ctrl", f"{b}.ctrl", tmp_path)
        db.proc.wait(10)
        da.proc.wait(10)
    assert status == "completed", first.stderr
    assert second.done, second.console[-3000:] + second.stderr
    assert second.after["sha256", 16] == guest.EXTENDED_16
    assert second.after["sha256", 10] == first.pcrs["sha256", 10]
    rsp = second.getrandom
    assert struct.unpack(">HII", rsp[:10]) == (0x8001, 28, 0)
    assert "Could not cleanly shutdown" not in second.stderr


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "workers"])
def test_guest_on_an_instance_of_a_host(tmp_path, workers):
    """The same boot with the TPM served by one instance of a `ctpm host` (in the host
    process, or in one of its workers); QEMU's SHUTDOWN at exit stops that instance only."""
    import time

    from ctpm.testing.process import run_host
    from tests.integration.test_host_process import ctpm, get_random, mssim_port

    ctl, sock = tmp_path / "host.sock", tmp_path / "vm.sock"
    with run_host(ctl, "--workers", str(workers)) as host:
        ctpm("host", "add", "vm", "--swtpm", f"unix:{sock}", "--state", str(tmp_path / "vm"),
             control=ctl)
        other = mssim_port(ctpm("host", "add", "other", "--mssim", "127.0.0.1:0",
                                control=ctl).stdout)
        result = guest.boot(f"{sock}.ctrl", tmp_path, "tpm-tis")
        check(result)
        for _ in range(100):
            names = [l.split("\t")[0] for l in ctpm("host", "list", control=ctl).stdout.splitlines()]
            if names == ["other"]:
                break
            time.sleep(0.05)
        assert names == ["other"]
        assert len(get_random(other)) == 20 and host.poll() is None
        assert (tmp_path / "vm" / "nv.snap").exists()
