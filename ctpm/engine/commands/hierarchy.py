"""Part 3 §24: hierarchy commands (CreatePrimary is in object.py): HierarchyControl, Clear,
ClearControl, HierarchyChangeAuth, SetPrimaryPolicy, ChangePPS and ChangeEPS.

The owner, endorsement and lockout authValues and authPolicies live in the NV image; the
platform authValue and authPolicy are volatile and empty again after every TPM Reset or
Restart (Part 1 §13.3), as are the hierarchy enables (TPMA_STARTUP_CLEAR; phEnable is set
again even by a Resume).
"""
from ...errors import TpmError
from ...wire.constants import TPM_ALG, TPM_RC, TPM_RH
from ...wire.structures import HASH_SIZES
from ..subsystems import da, nv_indices
from ..subsystems.hierarchy import NV_AUTH, NV_POLICY, set_policy
from ..subsystems.persistent import to_nv

MAX_AUTH = 64       # the context-integrity digest size (SHA-512)


def _flush_hierarchy(state, hierarchy):
    """ObjectFlushHierarchy: the transient objects (and sequences) of a hierarchy are gone."""
    for handle in [h for h, o in state.objects.items() if o.hierarchy == hierarchy]:
        del state.objects[handle]


def _remove_persistent(state, hierarchy):
    for handle in [h for h, o in state.persistent.items() if o.hierarchy == hierarchy]:
        del state.persistent[handle]
    state.nv["persistent"] = {f"{h:08x}": to_nv(o) for h, o in sorted(state.persistent.items())}
    state.dirty = True


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
        state.nv[NV_AUTH[auth_handle]] = new_auth.hex()
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
    for key in NV_AUTH.values():
        nv[key] = ""
    for key in NV_POLICY.values():
        nv[key] = None
    state.sh_enable = state.eh_enable = True
    gone = (TPM_RH.OWNER, TPM_RH.ENDORSEMENT)
    for handle in [h for h, o in state.objects.items() if o.hierarchy in gone]:
        del state.objects[handle]
    for handle in [h for h, o in state.persistent.items() if o.hierarchy in gone]:
        del state.persistent[handle]
    nv["persistent"] = {f"{h:08x}": to_nv(o) for h, o in sorted(state.persistent.items())}
    nv_indices.clear_owner(state)
    da.clear(state)                 # DAPreInstall_Init: the manufacturer's DA values
    nv["reset_count"] = 0
    state.restart_count = 0
    state.reset_clock()
    state.pcr_counter = (state.pcr_counter + 1) & 0xFFFFFFFF
    state.pcr_auth = b""            # PCR_ClearAuth
    state.dirty = True


def clear_control(tpm, ctx, auth, disable):
    """Part 3 §24.7: lockout may only disable TPM2_Clear; platform may enable it again."""
    if not tpm.nv_available:
        raise TpmError(TPM_RC.NV_UNAVAILABLE)
    if auth == TPM_RH.LOCKOUT and not disable:
        raise TpmError(TPM_RC.AUTH_FAIL)
    tpm.state.nv["disable_clear"] = bool(disable)
    tpm.state.dirty = True


def hierarchy_control(tpm, ctx, auth_handle, enable, new_state):
    """Part 3 §24.5: platform may switch any enable; owner and endorsement may only turn
    their own hierarchy off (TPM_RC_AUTH_TYPE otherwise). Turning a hierarchy off flushes
    its transient objects."""
    state = tpm.state
    if enable in (TPM_RH.PLATFORM, TPM_RH.PLATFORM_NV):
        if auth_handle != TPM_RH.PLATFORM:
            raise TpmError(TPM_RC.AUTH_TYPE)
    elif enable == TPM_RH.OWNER:
        if auth_handle not in (TPM_RH.PLATFORM, TPM_RH.OWNER):
            raise TpmError(TPM_RC.AUTH_TYPE)
        if not state.sh_enable and new_state and auth_handle != TPM_RH.PLATFORM:
            raise TpmError(TPM_RC.AUTH_TYPE)
    elif enable == TPM_RH.ENDORSEMENT:
        if auth_handle not in (TPM_RH.PLATFORM, TPM_RH.ENDORSEMENT):
            raise TpmError(TPM_RC.AUTH_TYPE)
        if not state.eh_enable and new_state and auth_handle != TPM_RH.PLATFORM:
            raise TpmError(TPM_RC.AUTH_TYPE)
    else:                                   # TPM_RH_NULL (the interface type's "+")
        raise TpmError(TPM_RC.VALUE, param=1)
    attr = {TPM_RH.OWNER: "sh_enable", TPM_RH.ENDORSEMENT: "eh_enable",
            TPM_RH.PLATFORM: "ph_enable", TPM_RH.PLATFORM_NV: "ph_enable_nv"}[enable]
    select = bool(new_state)
    if getattr(state, attr) != select:
        setattr(state, attr, select)
        if not select and enable != TPM_RH.PLATFORM_NV:
            _flush_hierarchy(state, enable)
        state.clear_orderly()


def set_primary_policy(tpm, ctx, auth_handle, auth_policy, hash_alg):
    """Part 3 §24.9: the size of authPolicy must be that of hashAlg (0 for TPM_ALG_NULL)."""
    if len(auth_policy) != HASH_SIZES.get(hash_alg, 0):
        raise TpmError(TPM_RC.SIZE, param=1)
    if not tpm.nv_available:
        raise TpmError(TPM_RC.NV_UNAVAILABLE)
    set_policy(tpm.state, auth_handle, TPM_ALG(hash_alg), bytes(auth_policy))


def change_pps(tpm, ctx, auth_handle):
    """Part 3 §24.10: a new platform primary seed and phProof; platform objects (transient
    and persistent) are gone and platformPolicy is empty (platformAuth stays)."""
    if not tpm.nv_available:
        raise TpmError(TPM_RC.NV_UNAVAILABLE)
    state = tpm.state
    state.nv["pps"] = state.drbg.generate(64).hex()
    state.nv["ph_proof"] = state.drbg.generate(64).hex()
    set_policy(state, TPM_RH.PLATFORM, TPM_ALG.NULL, b"")
    state.nv["pcr_policy"] = None   # the PCR policies are re-initialized too
    _flush_hierarchy(state, TPM_RH.PLATFORM)
    _remove_persistent(state, TPM_RH.PLATFORM)


def change_eps(tpm, ctx, auth_handle):
    """Part 3 §24.11: a new endorsement primary seed and ehProof; endorsement objects are
    gone, endorsementAuth and endorsementPolicy empty, and the hierarchy enabled."""
    if not tpm.nv_available:
        raise TpmError(TPM_RC.NV_UNAVAILABLE)
    state = tpm.state
    nv = state.nv
    nv["eps"] = state.drbg.generate(64).hex()
    nv["eh_proof"] = state.drbg.generate(64).hex()
    state.eh_enable = True
    nv["endorsement_auth"] = ""
    set_policy(state, TPM_RH.ENDORSEMENT, TPM_ALG.NULL, b"")
    _flush_hierarchy(state, TPM_RH.ENDORSEMENT)
    _remove_persistent(state, TPM_RH.ENDORSEMENT)
    state.clear_orderly()
