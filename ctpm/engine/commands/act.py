"""Part 3 §33: TPM2_ACT_SetTimeout (the timers are engine/subsystems/act.py)."""
from ...errors import TpmError
from ...wire.constants import TPM_RC
from ..subsystems import act


def act_set_timeout(tpm, ctx, act_handle, start_timeout):
    """Part 3 §33.2: start (or restart, or stop) an ACT's countdown; 0xFFFFFFFF turns off the
    signal of an expired ACT and is refused (TPM_RC_VALUE) for one that is not signaled."""
    n = act.number(act_handle)
    if start_timeout == act.MAX and not act.signaled(tpm.state, n):
        raise TpmError(TPM_RC.VALUE, param=1)
    if tpm.state.nv["orderly"] is not None and not tpm.nv_available:
        raise TpmError(TPM_RC.NV_UNAVAILABLE)
    act.set_timeout(tpm.state, n, start_timeout)
