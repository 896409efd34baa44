"""The commit mechanism of the split (two-phase) ECC schemes (TPM2_Commit, Part 3 §19, is
engine/commands/ephemeral.py).

ECDAA signing (TPM2_Sign with the ECDAA scheme), TPM2_EC_Ephemeral and TPM2_ZGen_2Phase
share one secret random value r per commitment, as the reference makes it
(CryptEccMain.c CryptGenerateR / CryptCommit / CryptEndCommit):

* a 64-bit commit counter and a 128-bit commit array, with a 64-byte commit nonce, all
  reset on TPM Reset (the reference's gr.commitCounter / commitArray / commitNonce);
* r = KDFa(SHA-512 (the context integrity hash), commitNonce, "ECDAA Commit", key Name or
  nothing, the 64-bit counter value, bits of n), drawn again while r >= n or its upper half
  is zero;
* committing (Commit, EC_Ephemeral) sets the array bit of the counter's low 7 bits and
  returns the counter's low 16 bits, then increments the counter; using the count (Sign
  with ECDAA, ZGen_2Phase) needs that bit set and the count's upper 9 bits to be those of
  the counter when it was committed (so a count is at most 128 commitments old), and clears
  the bit on success - a count is used once.

The commit values live with the volatile state and are made again after a TPM Reset (the
reference also saves them with an orderly shutdown; here a restart in a new process begins
with a fresh nonce and an empty array, so outstanding counts become unusable - never
reusable).
"""
import hmac
import struct

from ...crypto import ecmath, keys
from ...crypto.hashes import digest as hash_digest
from ...errors import TpmError
from ...wire.constants import TPM_RC
from . import keyuse

COMMIT_ARRAY_BITS = 128                 # sizeof(gr.commitArray) * 8
COMMIT_INDEX_MASK = COMMIT_ARRAY_BITS - 1
COMMIT_NONCE_SIZE = 64                  # sizeof(TPM2B_NONCE buffer)
_COMMIT_LABEL = b"ECDAA Commit\0"       # COMMIT_STRING; CryptKDFa adds the 0
_U64 = (1 << 64) - 1


class _CommitState:
    __slots__ = ("reset_count", "nonce", "counter", "array")

    def __init__(self, reset_count, nonce):
        self.reset_count = reset_count
        self.nonce = nonce
        self.counter = 0
        self.array = 0


def commit_state(tpm) -> _CommitState:
    """The commit values of this TPM Reset cycle (made on first use after a Reset)."""
    state = tpm.state
    reset_count = state.nv.get("reset_count")
    cs = getattr(state, "ecdaa_commit", None)
    if cs is None or cs.reset_count != reset_count:
        cs = state.ecdaa_commit = _CommitState(
            reset_count, bytes(state.drbg.generate(COMMIT_NONCE_SIZE)))
    return cs


def saved(state):
    """The commit values for Shutdown(STATE) (they belong to gr, the state-reset data that a
    TPM Restart and a Resume keep), or None if nothing was committed this cycle."""
    cs = getattr(state, "ecdaa_commit", None)
    if cs is None:
        return None
    return [cs.reset_count, cs.nonce.hex(), cs.counter, cs.array]


def restore(state, data):
    """Startup after Shutdown(STATE): the commit values as they were saved."""
    if data is None:
        state.ecdaa_commit = None
        return
    cs = state.ecdaa_commit = _CommitState(data[0], bytes.fromhex(data[1]))
    cs.counter, cs.array = data[2], data[3]


def generate_r(tpm, curve_id, name: bytes = b"", count=None):
    """CryptGenerateR: r for a new commitment (count None) or for the commitment `count`;
    None if the count is not committed (or too old)."""
    cs = commit_state(tpm)
    c = ecmath.curve(curve_id)
    current = cs.counter
    if count is not None:
        if not (cs.array >> (count & COMMIT_INDEX_MASK)) & 1:
            return None
        if (count & COMMIT_INDEX_MASK) >= (current & COMMIT_INDEX_MASK):
            current = (current - COMMIT_ARRAY_BITS) & _U64
        if (current & 0xFFFF & ~COMMIT_INDEX_MASK) != (count & ~COMMIT_INDEX_MASK):
            return None
        current = (current & ~0xFFFF & _U64) | count
    n = c.n
    nsize = (n.bit_length() + 7) // 8
    tail = _COMMIT_LABEL + bytes(name) + struct.pack(">QI", current, nsize * 8)
    iteration = 1
    while iteration < 1000000:
        blocks = []
        have = 0
        while have < nsize:
            iteration += 1
            b = hmac.digest(cs.nonce, struct.pack(">I", iteration) + tail, "sha512")
            blocks.append(b)
            have += len(b)
        raw = b"".join(blocks)[:nsize]
        r = int.from_bytes(raw, "big")
        if r >= n:
            continue
        if any(raw[:nsize // 2 + 1]):
            return r
    return None


def commit(tpm) -> int:
    """CryptCommit: mark the current count used-able and return its low 16 bits."""
    cs = commit_state(tpm)
    old = cs.counter & 0xFFFF
    cs.counter = (cs.counter + 1) & _U64
    cs.array |= 1 << (old & COMMIT_INDEX_MASK)
    return old


def end_commit(tpm, count: int):
    """CryptEndCommit: the commitment `count` is spent."""
    cs = commit_state(tpm)
    cs.array &= ~(1 << (count & COMMIT_INDEX_MASK))


def sign_ecdaa(tpm, obj, scheme, digest: bytes):
    """TpmEcc_SignEcdaa: with r of the commitment `count`, a random nonceK (0 < nonceK < n),
    T = H(nonceK || digest) (nonceK in as few bytes as it needs), s = r + T * d (mod n).
    The signature is (nonceK, s). TPM_RC_VALUE if the count is not committed."""
    details = scheme.details
    curve_id = obj.public.parameters.curveID
    c = keyuse.ecc_curve(obj)
    r = generate_r(tpm, curve_id, obj.name, details.count)
    if r is None:
        raise TpmError(TPM_RC.VALUE)
    d = keyuse.ecc_scalar(obj)
    stream = keys.EntropyStream(tpm.state.drbg.generate)
    while True:
        k = keys.ecc_private_from_stream(stream, curve_id)
        nonce_k = k.to_bytes((k.bit_length() + 7) // 8, "big")
        t = int.from_bytes(hash_digest(details.hashAlg, nonce_k + digest), "big") % c.n
        if not t:
            continue
        s = (r + t * d) % c.n
        if s:
            break
    end_commit(tpm, details.count)
    return nonce_k, s.to_bytes((c.n.bit_length() + 7) // 8, "big")


__all__ = ["COMMIT_ARRAY_BITS", "commit_state", "saved", "restore", "generate_r", "commit",
           "end_commit", "sign_ecdaa"]
