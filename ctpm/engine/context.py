"""Part 3 §28: context management."""
from ..errors import TpmError
from ..wire.constants import TPM_RC


def flush_context(tpm, ctx, flush_handle):
    """Part 3 §28.4: a loaded session or transient object is gone."""
    state = tpm.state
    if state.sessions.pop(flush_handle, None) is None and \
            state.objects.pop(flush_handle, None) is None:
        raise TpmError(TPM_RC.HANDLE, param=1)
