"""The hierarchies' authValues and authPolicies (the Part 3 §24 commands that change them are
engine/commands/hierarchy.py).

The owner, endorsement and lockout authValues and authPolicies live in the NV image; the
platform authValue and authPolicy are volatile (TpmState.platform_auth, platform_policy).
"""
from ...wire.constants import TPM_ALG, TPM_RH
from . import act

# where the NV image keeps them
NV_AUTH = {TPM_RH.OWNER: "owner_auth", TPM_RH.ENDORSEMENT: "endorsement_auth",
           TPM_RH.LOCKOUT: "lockout_auth"}
NV_POLICY = {TPM_RH.OWNER: "owner_policy", TPM_RH.ENDORSEMENT: "endorsement_policy",
             TPM_RH.LOCKOUT: "lockout_policy"}
# the permanent handles with an authPolicy, in handle order (TPM_CAP_AUTH_POLICIES)
POLICY_HANDLES = (TPM_RH.OWNER, TPM_RH.LOCKOUT, TPM_RH.ENDORSEMENT, TPM_RH.PLATFORM)


def hierarchy_auth(state, handle) -> bytes:
    """The authValue of a permanent handle (an ACT's is platformAuth, as the reference's)."""
    if handle == TPM_RH.PLATFORM or act.number(handle) is not None:
        return state.platform_auth
    key = NV_AUTH.get(handle)
    return bytes.fromhex(state.nv.get(key, "")) if key else b""


def hierarchy_policy(state, handle):
    """(hashAlg, authPolicy) of a hierarchy (the reference's EntityGetAuthPolicy);
    (TPM_ALG_NULL, b"") when none was set."""
    if handle == TPM_RH.PLATFORM:
        return state.platform_policy
    if act.number(handle) is not None:
        return act.policy(state, act.number(handle))
    key = NV_POLICY.get(handle)
    if key is None or not state.nv.get(key):
        return TPM_ALG.NULL, b""
    alg, digest = state.nv[key]
    return TPM_ALG(alg), bytes.fromhex(digest)


def set_policy(state, handle, alg, digest):
    if handle == TPM_RH.PLATFORM:
        state.platform_policy = (alg, digest)
        state.clear_orderly()
    elif act.number(handle) is not None:
        act.set_policy(state, act.number(handle), alg, digest)
    else:
        state.nv[NV_POLICY[handle]] = [int(alg), digest.hex()] if alg != TPM_ALG.NULL else None
        state.dirty = True
