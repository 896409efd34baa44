"""Authorization sessions (TPM2_StartAuthSession is engine/commands/session.py): the session
and the arithmetic of Part 1 §19 (HMACs, nonces, parameter encryption) that the dispatcher applies to a command.

Implemented: HMAC sessions, unbound or bound, unsalted; parameter encryption with AES-CFB,
SM4-CFB and XOR in both directions; policy and trial sessions as objects (their policy
commands are in engine/commands/ea.py); salted sessions; audit sessions (engine/subsystems/audit.py).
"""
import hmac
from dataclasses import dataclass

from ...crypto import hashes, symcipher
from ...crypto.kdf import kdfa
from ...wire.constants import TPM_ALG, TPM_HT
from ...wire.structures import HASH_SIZES

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
    is_parameters_hash: bool = False  # cp_hash holds a PolicyParameters pHash
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
