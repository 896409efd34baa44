"""Part 3 §21: TPM2_SetCommandCodeAuditStatus (the audit digests are engine/subsystems/audit.py;
GetCommandAuditDigest and GetSessionAuditDigest are attestation, engine/commands/attest.py)."""
from ...errors import TpmError
from ...wire.constants import TPM_ALG, TPM_CC, TPM_RC
from ..subsystems.audit import ALG_CHANGED, audit_commands, audit_hash_alg


def set_command_code_audit_status(tpm, ctx, auth, audit_alg, set_list, clear_list):
    """Part 3 §21.2."""
    state = tpm.state
    if audit_alg != TPM_ALG.NULL and audit_alg != audit_hash_alg(state):
        if set_list or clear_list:
            raise TpmError(TPM_RC.VALUE, param=1)
        state.nv["audit_hash_alg"] = int(audit_alg)
        state.command_audit_digest = ALG_CHANGED
        state.dirty = True
        return
    codes = set(audit_commands(state))
    before = set(codes)
    implemented = tpm.dispatcher.table
    for cc in set_list:
        if cc in implemented and cc != TPM_CC.Shutdown:
            codes.add(int(cc))
    for cc in clear_list:
        if cc in implemented and cc != TPM_CC.SetCommandCodeAuditStatus:
            codes.discard(int(cc))
    if codes != before:
        state.nv["audit_commands"] = sorted(codes)
        state.dirty = True
