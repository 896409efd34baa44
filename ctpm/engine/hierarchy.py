"""Part 3 §24: hierarchy commands (CreatePrimary is in object.py): HierarchyChangeAuth,
Clear and ClearControl.

The owner, endorsement and lockout authValues live in the NV image; the platform authValue
is volatile and empty again after every TPM Reset or Restart (Part 1 §13.3).
"""
from ..errors import TpmError
from ..wire.constants import TPM_RC, TPM_RH
from .persistent import to_nv

_NV_AUTH = {TPM_RH.OWNER: "owner_auth", TPM_RH.ENDORSEMENT: "endorsement_auth",
            TPM_RH.LOCKOUT: "lockout_auth"}
MAX_AUTH = 64       # the context-integrity digest size (SHA-512)


def hierarchy_auth(state, handle) -> bytes:
    if handle == TPM_RH.PLATFORM:
        return state.platform_auth
    key = _NV_AUTH.get(handle)
    return bytes.fromhex(state.nv.get(key, "")) if key else b""


def hierarchy_change_auth(tpm, ctx, auth_handle, new_auth):
    """Part 3 §24.8."""
    if not tpm.nv_available:
        raise TpmError(TPM_RC.NV_UNAVAILABLE)
    new_auth = new_auth.rstrip(b"\0")
    if len(new_auth) > MAX_AUTH:
        raise TpmError(TPM_RC.SIZE, param=1)
    state = tpm.state
    if auth_handle == TPM_RH.PLATFORM:
        state.platform_auth = new_auth
    else:
        state.nv[_NV_AUTH[auth_handle]] = new_auth.hex()
        state.dirty = True


def clear(tpm, ctx, auth_handle):
    """Part 3 §24.6: a new storage primary seed and proofs; owner and endorsement objects
    (transient and persistent) are gone; owner, endorsement and lockout auths empty; the
    clock and the reset/restart counters start over."""
    if not tpm.nv_available:
        raise TpmError(TPM_RC.NV_UNAVAILABLE)
    state = tpm.state
    nv = state.nv
    if nv.get("disable_clear"):
        raise TpmError(TPM_RC.DISABLED)
    for key, size in (("sps", 64), ("sh_proof", 64), ("eh_proof", 64)):
        nv[key] = state.drbg.generate(size).hex()
    for key in _NV_AUTH.values():
        nv[key] = ""
    gone = (TPM_RH.OWNER, TPM_RH.ENDORSEMENT)
    for handle in [h for h, o in state.objects.items() if o.hierarchy in gone]:
        del state.objects[handle]
    for handle in [h for h, o in state.persistent.items() if o.hierarchy in gone]:
        del state.persistent[handle]
    nv["persistent"] = {f"{h:08x}": to_nv(o) for h, o in sorted(state.persistent.items())}
    nv["reset_count"] = 0
    state.restart_count = 0
    state.reset_clock()
    state.pcr_counter = (state.pcr_counter + 1) & 0xFFFFFFFF
    state.dirty = True


def clear_control(tpm, ctx, auth, disable):
    """Part 3 §24.7: lockout may only disable TPM2_Clear; platform may enable it again."""
    if not tpm.nv_available:
        raise TpmError(TPM_RC.NV_UNAVAILABLE)
    if auth == TPM_RH.LOCKOUT and not disable:
        raise TpmError(TPM_RC.AUTH_FAIL)
    tpm.state.nv["disable_clear"] = bool(disable)
    tpm.state.dirty = True
