"""Part 3 §9: TPM2_Startup and TPM2_Shutdown."""
from ..errors import TpmError
from ..wire.constants import TPM_RC
from . import nv


def startup(tpm, ctx, startup_type):
    """Part 3 §9.3: TPM Reset, Restart or Resume, depending on the last Shutdown."""
    if not tpm.nv_available:
        raise TpmError(TPM_RC.NV_UNAVAILABLE)
    kind = tpm.state.startup(startup_type, ctx.locality)
    if kind != "resume":
        nv.startup(tpm.state, kind)


def shutdown(tpm, ctx, shutdown_type):
    """Part 3 §9.4: record an orderly shutdown (and, for STATE, what Resume restores)."""
    if not tpm.nv_available:
        raise TpmError(TPM_RC.NV_UNAVAILABLE)
    tpm.state.shutdown(shutdown_type)
