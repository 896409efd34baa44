"""Authorization sessions: Part 3 §11.1 TPM2_StartAuthSession and the session arithmetic of
Part 1 §19 (HMACs, nonces, parameter encryption) that the dispatcher applies to a command.

Implemented: HMAC sessions, unbound or bound, unsalted; parameter encryption with AES-CFB,
SM4-CFB and XOR in both directions; policy and trial sessions as objects (their policy
commands are in engine/commands/ea.py); salted sessions; audit sessions (engine/subsystems/audit.py).
"""
import hmac
from dataclasses import dataclass

from ...crypto import hashes, secret, symcipher
from ...crypto.kdf import kdfa
from ...errors import TpmError
from ...wire.constants import TPM_ALG, TPM_HT, TPM_RC, TPM_RH, TPM_SE, TPMA_OBJECT
from ...wire.structures import HASH_SIZES
from .keyuse import private_key

MIN_NONCE_SIZE = 16


@dataclass
class Session:
    handle: int
    kind: int                     # TPM_SE
    auth_hash: int
    symmetric: tuple | None       # (algorithm, key bits or XOR hash, mode) or None
    session_key: bytes
    nonce_tpm: bytes
    bound: bytes | None           # Name || authValue of the bind entity (Part 1 §19.6.10)
    policy_digest: bytes
    # policy session conditions (engine/commands/ea.py; the reference's SESSION u1/attributes)
    command_code: int = 0         # PolicyCommandCode / PolicyDuplicationSelect, 0: any
    cp_hash: bytes = b""          # cpHash or nameHash, as the two flags say
    is_cp_hash: bool = False
    is_name_hash: bool = False
    is_auth_value_needed: bool = False    # PolicyAuthValue
    is_password_needed: bool = False      # PolicyPassword
    pcr_counter: int = 0          # pcrUpdateCounter when PolicyPCR ran, 0: no PCR policy
    timeout: int = 0              # TPM time (ms) after which the policy fails, 0: none
    start_time: int = 0           # TPM time of the start (or last reset) of the policy
    command_locality: int = 0     # PolicyLocality: TPMA_LOCALITY the command must come from
    is_pp_required: bool = False  # PolicyPhysicalPresence
    is_template_hash: bool = False    # cp_hash holds a PolicyTemplate templateHash
    check_nv_written: bool = False    # PolicyNvWritten: the index's TPMA_NV_WRITTEN ...
    nv_written_state: bool = False    # ... must be this
    # bound to a DA-protected entity (to lockoutAuth): every use checks the lockout, and a
    # failed HMAC counts (SessionProcess.c's isDaBound / isLockoutBound); kept by PolicyRestart
    is_da_bound: bool = False
    is_lockout_bound: bool = False
    # session audit (engine/subsystems/audit.py; the reference's isAudit and u2.auditDigest)
    is_audit: bool = False
    audit_digest: bytes = b""

    @property
    def digest_size(self):
        return HASH_SIZES[self.auth_hash]


def bind_value(tpm, handle: int) -> bytes:
    """What a bound session remembers of its entity: Name and authValue together, so that a
    changed authValue unbinds it (Part 1 §19.6.10)."""
    return tpm.entity_name(handle) + tpm.entity_auth_value(handle).rstrip(b"\0")


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
    if symmetric.algorithm != TPM_ALG.NULL:
        sym = (symmetric.algorithm, symmetric.keyBits, symmetric.get("mode"))
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


# --- the per-command arithmetic, used by the dispatcher -----------------------------------

def command_hmac(session, key: bytes, cp_hash: bytes, nonce_caller: bytes, attrs: int,
                 extra_nonces=()) -> bytes:
    """authHMAC of a command (Part 1 §19.6.5)."""
    msg = cp_hash + nonce_caller + session.nonce_tpm + b"".join(extra_nonces) + bytes((attrs,))
    return hmac.new(key, msg, hashes.HASH_NAMES[session.auth_hash]).digest()


def response_hmac(session, key: bytes, rp_hash: bytes, nonce_caller: bytes, attrs: int) -> bytes:
    msg = rp_hash + session.nonce_tpm + nonce_caller + bytes((attrs,))
    return hmac.new(key, msg, hashes.HASH_NAMES[session.auth_hash]).digest()


def cp_hash(alg, code: int, names, params: bytes) -> bytes:
    return hashes.digest(alg, code.to_bytes(4, "big") + b"".join(names) + params)


def rp_hash(alg, code: int, params: bytes) -> bytes:
    return hashes.digest(alg, b"\0\0\0\0" + code.to_bytes(4, "big") + params)


def crypt_parameter(session, key: bytes, nonce_newer: bytes, nonce_older: bytes,
                    data: bytes, encrypt: bool) -> bytes:
    """Parameter encryption (Part 1 §21): XOR obfuscation or a block cipher in CFB mode."""
    alg, bits, _mode = session.symmetric
    if alg == TPM_ALG.XOR:
        mask = kdfa(session.auth_hash, key, b"XOR", nonce_newer, nonce_older, len(data) * 8)
        return bytes(a ^ b for a, b in zip(data, mask))
    material = kdfa(session.auth_hash, key, b"CFB", nonce_newer, nonce_older, bits + 128)
    return symcipher.cfb(alg, material[:bits // 8], material[bits // 8:], data, encrypt)


def is_session_handle(handle: int) -> bool:
    return handle >> 24 in (TPM_HT.HMAC_SESSION, TPM_HT.POLICY_SESSION)
