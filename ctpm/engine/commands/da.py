"""Part 3 §25: dictionary attack functions (the counters are engine/subsystems/da.py)."""
from ...errors import TpmError
from ...wire.constants import TPM_RC
from ..subsystems.da import set_value


def dictionary_attack_lock_reset(tpm, ctx, lock_handle):
    """Part 3 §25.2: failedTries := 0."""
    if not tpm.nv_available:
        raise TpmError(TPM_RC.NV_UNAVAILABLE)
    set_value(tpm.state, "failed_tries", 0)


def dictionary_attack_parameters(tpm, ctx, lock_handle, new_max_tries, new_recovery_time,
                                 lockout_recovery):
    """Part 3 §25.3: new maxTries, recoveryTime and lockoutRecovery (failedTries stays)."""
    if not tpm.nv_available:
        raise TpmError(TPM_RC.NV_UNAVAILABLE)
    state = tpm.state
    set_value(state, "max_tries", new_max_tries)
    set_value(state, "recovery_time", new_recovery_time)
    set_value(state, "lockout_recovery", lockout_recovery)
