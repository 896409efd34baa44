"""Part 3 §11: TPM2_StartAuthSession (PolicyRestart, §11.2, is with the policy commands in
engine/commands/ea.py). The session itself and its per-command arithmetic are
engine/subsystems/sessions.py."""
from ...crypto import secret
from ...crypto.kdf import kdfa
from ...errors import TpmError
from ...wire.constants import TPM_ALG, TPM_RC, TPM_RH, TPM_SE, TPMA_OBJECT
from ...wire.structures import HASH_SIZES
from ..subsystems.keyuse import private_key
from ..subsystems.sessions import MIN_NONCE_SIZE, Session, bind_value


def start_auth_session(tpm, ctx, tpm_key, bind, nonce_caller, encrypted_salt, session_type,
                       symmetric, auth_hash):
    """Part 3 §11.1."""
    if not MIN_NONCE_SIZE <= len(nonce_caller) <= HASH_SIZES[auth_hash]:
        raise TpmError(TPM_RC.SIZE, param=1)
    salt = _salt(tpm, tpm_key, encrypted_salt)
    for h, index in ((bind, 2),):
        obj = tpm.state.objects.get(h)
        if obj is not None and obj.sensitive is None and obj.public.type != TPM_ALG.NULL:
            raise TpmError(TPM_RC.HANDLE, handle=index)     # a public-only object
    if symmetric.algorithm not in (TPM_ALG.NULL, TPM_ALG.XOR) and symmetric.mode != TPM_ALG.CFB:
        raise TpmError(TPM_RC.MODE, param=4)
    state = tpm.state
    handle = state.free_session_handle(session_type)
    size = HASH_SIZES[auth_hash]
    nonce_tpm = state.drbg.generate(len(nonce_caller))   # as long as the caller's (reference)
    bind_auth = b"" if bind == TPM_RH.NULL else tpm.entity_auth_value(bind).rstrip(b"\0")
    if bind != TPM_RH.NULL or salt:
        session_key = kdfa(auth_hash, bind_auth + salt, b"ATH", nonce_tpm, nonce_caller, size * 8)
    else:
        session_key = b""
    sym = None
    if symmetric.algorithm == TPM_ALG.XOR:      # keyBits is the hash; XOR has no mode
        sym = (int(symmetric.algorithm), int(symmetric.keyBits), None)
    elif symmetric.algorithm != TPM_ALG.NULL:
        sym = (int(symmetric.algorithm), int(symmetric.keyBits), int(symmetric.mode))
    state.sessions[handle] = Session(
        handle=handle, kind=session_type, auth_hash=auth_hash, symmetric=sym,
        session_key=session_key, nonce_tpm=nonce_tpm,
        bound=bind_value(tpm, bind) if bind != TPM_RH.NULL and session_type == TPM_SE.HMAC
        else None,
        policy_digest=b"\0" * size, start_time=state.time(),
        is_da_bound=bind != TPM_RH.NULL and not tpm.is_da_exempt(bind),
        is_lockout_bound=bind == TPM_RH.LOCKOUT)
    return (handle, nonce_tpm)


def _salt(tpm, tpm_key, encrypted_salt) -> bytes:
    """The salt a session is started with: encrypted to tpmKey (RSA-OAEP or ECC, label
    "SECRET"), or none with TPM_RH_NULL (Part 1 §19.6.12, the reference's order of checks)."""
    if tpm_key == TPM_RH.NULL:
        if encrypted_salt:
            raise TpmError(TPM_RC.VALUE, param=2)
        return b""
    key = tpm.state.object(tpm_key)
    if key.public.type not in (TPM_ALG.RSA, TPM_ALG.ECC):
        raise TpmError(TPM_RC.KEY, handle=1)
    if not encrypted_salt:
        raise TpmError(TPM_RC.VALUE, param=2)
    if key.sensitive is None:
        raise TpmError(TPM_RC.HANDLE, handle=1)
    if not key.attributes & TPMA_OBJECT.DECRYPT:
        raise TpmError(TPM_RC.ATTRIBUTES, handle=1)
    try:
        return secret.decrypt_seed(key.public, private_key(key), secret.LABEL_SECRET,
                                   encrypted_salt)
    except TpmError:
        raise TpmError(TPM_RC.VALUE, param=2) from None
