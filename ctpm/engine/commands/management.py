"""Part 3 §26: miscellaneous management functions - TPM2_PP_Commands and TPM2_SetAlgorithmSet.

Both need platformAuth; PP_Commands also physical presence (checked by the dispatcher, like
for any command on the list; engine/subsystems/physical_presence.py).
"""
from ...errors import TpmError
from ...wire.constants import TPM_RC
from ..subsystems import physical_presence


def pp_commands(tpm, ctx, auth, set_list, clear_list):
    """Part 3 §26.2: add commands to, and take commands off, the physical-presence list."""
    if not tpm.nv_available:
        raise TpmError(TPM_RC.NV_UNAVAILABLE)
    physical_presence.change(tpm.state, tpm.dispatcher.table, set_list, clear_list)


def set_algorithm_set(tpm, ctx, auth_handle, algorithm_set):
    """Part 3 §26.3: record the vendor-dependent algorithm set (TPM_PT_ALGORITHM_SET). ctpm
    has one set, so the value changes nothing else - as in the reference."""
    if not tpm.nv_available:
        raise TpmError(TPM_RC.NV_UNAVAILABLE)
    tpm.state.nv["algorithm_set"] = int(algorithm_set)
    tpm.state.dirty = True
