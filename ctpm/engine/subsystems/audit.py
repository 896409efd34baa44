"""Audit: Part 1 §35 command audit and session audit (the reference's CommandAudit.c,
SessionProcess.c; TPM2_SetCommandCodeAuditStatus is engine/commands/audit.py).

Session audit: an HMAC session used with the audit attribute extends its own
auditDigest := H_authHash(auditDigest || cpHash || rpHash) after each successful command;
the first use or auditReset starts the digest over and makes the session the exclusive
audit session (`state.exclusive_audit_session`), which any other command that may carry
sessions takes away. Command audit: commands in the NV list `audit_commands` extend
`state.command_audit_digest` with the audit hash; starting a new digest increments the NV
audit counter. The digests are read by GetSessionAuditDigest / GetCommandAuditDigest.
"""
from ...crypto import hashes
from ...wire.constants import TPM_CC, TPMA_SESSION
from ...wire.structures import HASH_SIZES

# the reference's CONTEXT_INTEGRITY_HASH_ALG: the strongest implemented hash
DEFAULT_AUDIT_HASH = max(HASH_SIZES, key=lambda a: HASH_SIZES[a])
# marks the command that changed the audit hash: no audit, the digest starts over after it
ALG_CHANGED = None


def audit_commands(state) -> list:
    return state.nv.get("audit_commands", [int(TPM_CC.SetCommandCodeAuditStatus)])


def audit_hash_alg(state) -> int:
    return state.nv.get("audit_hash_alg", int(DEFAULT_AUDIT_HASH))


def audit_counter(state) -> int:
    return state.nv.get("audit_counter", 0)


def is_audited(state, code: int) -> bool:
    return code in audit_commands(state)


def _extend(alg, digest, cp, rp):
    return hashes.digest(alg, digest + cp + rp)


def update(tpm, ctx, session_allowed: bool, rp_of):
    """After a successful command, before the response HMACs (the reference's
    UpdateAuditSessionStatus then CommandAudit). Changes the audit session's response
    attributes (auditExclusive reports exclusivity)."""
    state = tpm.state
    audit_handle = None
    for e in ctx.sessions:
        session = e.session
        if session is None or not e.attrs & TPMA_SESSION.AUDIT:
            continue
        audit_handle = session.handle
        if not session.is_audit or e.attrs & TPMA_SESSION.AUDITRESET:
            session.is_audit = True
            session.bound = None           # an audit session is not bound
            session.audit_digest = b"\0" * session.digest_size
            state.exclusive_audit_session = audit_handle
        elif state.exclusive_audit_session != audit_handle:
            state.exclusive_audit_session = None
        if state.exclusive_audit_session == audit_handle:
            e.attrs |= TPMA_SESSION.AUDITEXCLUSIVE
        else:
            e.attrs &= ~TPMA_SESSION.AUDITEXCLUSIVE
        alg = session.auth_hash
        session.audit_digest = _extend(alg, session.audit_digest, ctx.cp_of(alg), rp_of(alg))
    if audit_handle is None and session_allowed:
        state.exclusive_audit_session = None
    if is_audited(state, ctx.code):
        if state.command_audit_digest is ALG_CHANGED:
            state.command_audit_digest = b""
            return
        alg = audit_hash_alg(state)
        if not state.command_audit_digest:
            state.command_audit_digest = b"\0" * HASH_SIZES[alg]
            state.nv["audit_counter"] = audit_counter(state) + 1
            state.dirty = True
        state.command_audit_digest = _extend(alg, state.command_audit_digest, ctx.cp_of(alg),
                                             rp_of(alg))
