"""Part 3 §9: TPM2_Startup and TPM2_Shutdown."""
from ...errors import TpmError
from ...wire.constants import TPM_RC, TPM_SU
from ..subsystems import nv_indices
from ..subsystems import da


def startup(tpm, ctx, startup_type):
    """Part 3 §9.3: TPM Reset, Restart or Resume, depending on the last Shutdown."""
    if not tpm.nv_available:
        raise TpmError(TPM_RC.NV_UNAVAILABLE)
    kind = tpm.state.startup(startup_type, ctx.locality)
    nv_indices.startup(tpm.state, kind)


def shutdown(tpm, ctx, shutdown_type):
    """Part 3 §9.4: record an orderly shutdown (and, for STATE, what Resume restores)."""
    if not tpm.nv_available:
        raise TpmError(TPM_RC.NV_UNAVAILABLE)
    # after PCR_Allocate only Shutdown(CLEAR): the next Startup must be a TPM Reset
    if tpm.state.pcr_reconfig and shutdown_type == TPM_SU.STATE:
        raise TpmError(TPM_RC.TYPE, param=1)
    tpm.state.shutdown(shutdown_type)
    nv_indices.shutdown(tpm.state)
    da.shutdown(tpm.state)
