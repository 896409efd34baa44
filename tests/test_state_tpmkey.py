"""The state key sealed to a TPM (`--state-key-tpm TCTI`), with swtpm standing in for the
host's chip, reached through tpm2-tss's swtpm TCTI: sealed at init, unsealed at start, one
line when the PCRs changed or the TPM is unreachable or another one, and the documented
recovery (rekey to a file key, change the PCRs, rekey back to the TPM)."""
import os
import subprocess

import pytest

from ctpm.state.keys import StateKey
from ctpm.state.store import StoreError
from ctpm.testing.process import command, environment
from tests.peers import SWTPM
from tests.peers import TctiSwtpm as _TctiSwtpm
from tests.tpmcmd import STARTUP_CLEAR, cmd, pw_session, rc, u16, u32

from .test_state_store import fresh, reopen_value

pytestmark = pytest.mark.skipif(SWTPM is None, reason="swtpm is not installed")


class TctiSwtpm(_TctiSwtpm):
    """A started swtpm at the swtpm TCTI's path, whose PCRs the test extends."""

    def __init__(self):
        super().__init__()
        assert rc(self.execute(STARTUP_CLEAR)) == 0
        self.disconnect()

    def extend(self, pcr):
        body = u32(1) + u16(0x000B) + bytes(range(32))
        assert rc(self.execute(cmd(0x182, body, handles=[pcr], sessions=[pw_session()]))) == 0
        self.disconnect()


@pytest.fixture
def chip():
    sw = TctiSwtpm()
    yield sw
    sw.close()


def tpm_key(sw, state, pcrs=None):
    return StateKey.from_tpm(sw.tcti, pcrs, str(state))


def ctpm(*args):
    return subprocess.run(command(*args), capture_output=True, text=True, env=environment(),
                          timeout=60)


def test_sealed_at_init_unsealed_at_start(chip, tmp_path):
    state = tmp_path / "s"
    fresh(state, key=tpm_key(chip, state))
    sealed = (state / "state-key.tpm").read_text()
    assert '"pcrs": "sha256:7"' in sealed
    assert b"nv_indices" not in (state / "nv.journal").read_bytes()
    assert reopen_value(state, key=tpm_key(chip, state)) == b"33333333"
    out = ctpm("state", "check", "--state", str(state), "--state-key-tpm", chip.tcti)
    assert out.returncode == 0 and "intact" in out.stdout and "encrypted" in out.stdout
    # PCRs not in the selection may change
    chip.extend(8)
    assert reopen_value(state, key=tpm_key(chip, state)) == b"33333333"


def test_changed_pcrs_unreachable_tpm_and_another_tpm_are_one_line_errors(chip, tmp_path):
    state = tmp_path / "s"
    fresh(state, key=tpm_key(chip, state, "sha256:0,7"))
    with pytest.raises(StoreError, match="PCRs sha256:0,7 changed"):
        chip.extend(0)
        tpm_key(chip, state)
    out = ctpm("run", "--mssim", "127.0.0.1:0", "--state", str(state), "--state-key-tpm",
               chip.tcti)
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert out.stderr.startswith("ctpm: state error: TPM swtpm:path=") and \
        "refuses the state key: PCRs sha256:0,7 changed since it was sealed" in out.stderr
    out = ctpm("run", "--mssim", "127.0.0.1:0", "--state", str(state), "--state-key-tpm",
               f"swtpm:path={tmp_path}/nothing")
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert "is unreachable" in out.stderr
    other = TctiSwtpm()
    try:
        with pytest.raises(StoreError, match="does not load on TPM"):
            StateKey.from_tpm(other.tcti, None, str(state))
    finally:
        other.close()
    with pytest.raises(StoreError, match="sealed to PCRs sha256:0,7, not sha256:7"):
        StateKey.from_tpm(chip.tcti, "sha256:7", str(state))


def test_existing_state_without_a_sealed_key_is_refused(chip, tmp_path):
    fresh(tmp_path / "s")
    with pytest.raises(StoreError, match="has no sealed state key .* rekey"):
        tpm_key(chip, tmp_path / "s")
    assert not (tmp_path / "s" / "state-key.tpm").exists()


def test_recovery_rekey_to_a_file_key_then_back_to_the_tpm(chip, tmp_path):
    state = tmp_path / "s"
    fresh(state, key=tpm_key(chip, state))
    (tmp_path / "k").write_bytes(os.urandom(32))
    # before the planned change: move the state to a key file
    out = ctpm("state", "rekey", "--state", str(state), "--state-key-tpm", chip.tcti,
               "--new-state-key", str(tmp_path / "k"))
    assert out.returncode == 0, out.stderr
    assert not (state / "state-key.tpm").exists()
    chip.extend(7)                                     # e.g. a new boot configuration
    assert reopen_value(state, key=StateKey.from_file(str(tmp_path / "k"))) == b"33333333"
    # afterwards: back to the TPM, sealed against the new PCR values
    out = ctpm("state", "rekey", "--state", str(state), "--state-key", str(tmp_path / "k"),
               "--new-state-key-tpm", chip.tcti)
    assert out.returncode == 0, out.stderr
    assert not (state / "state-key.tpm.new").exists()
    assert reopen_value(state, key=tpm_key(chip, state)) == b"33333333"


def test_rekey_to_a_new_tpm_key_interrupted_before_its_rename(chip, tmp_path):
    """The state is under the new key, state-key.tpm still the old one: the next start
    finds the new one in state-key.tpm.new and adopts it."""
    state = tmp_path / "s"
    fresh(state, key=tpm_key(chip, state))
    old = (state / "state-key.tpm").read_bytes()
    out = ctpm("state", "rekey", "--state", str(state), "--state-key-tpm", chip.tcti,
               "--new-state-key-tpm", chip.tcti)
    assert out.returncode == 0, out.stderr
    os.replace(state / "state-key.tpm", state / "state-key.tpm.new")
    (state / "state-key.tpm").write_bytes(old)
    assert reopen_value(state, key=tpm_key(chip, state)) == b"33333333"
    assert not (state / "state-key.tpm.new").exists()
    assert (state / "state-key.tpm").read_bytes() != old
