"""Protection of sensitive areas outside the TPM (Part 1 §23 "Protected Storage", reference
Object_spt.c: ProduceOuterWrap / UnwrapOuter, ComputeProtectionKeyParms,
ComputeOuterIntegrity, ComputeInnerIntegrity, SensitiveToPrivate / PrivateToSensitive,
SensitiveToDuplicate / DuplicateToSensitive, SecretToCredential / CredentialToSecret).

The outer wrap, as the reference computes it (all checked against Object_spt.c):

    symKey   = KDFa(hashAlg, seed, "STORAGE", name, "", symBits)      (ComputeProtectionKeyParms)
    encData  = SYM-symBits-CFB(symKey, IV).encrypt(data)       (SYM: the parent's AES or SM4)
    hmacKey  = KDFa(hashAlg, seed, "INTEGRITY", "", "", 8 * digestSize(hashAlg))
    outerHMAC = HMAC_hashAlg(hmacKey, [TPM2B_IV ||] encData || name)  (ComputeOuterIntegrity)
    blob     = TPM2B_DIGEST(outerHMAC) || [TPM2B_IV ||] encData        (ProduceOuterWrap)

* The labels are the reference's `TPM2B_STRING`s "STORAGE" and "INTEGRITY", whose size
  counts the terminating NUL; CryptKDFa then adds no second 0. That is `kdf.kdfa(...,
  b"STORAGE", ...)`, which appends the 0 itself.
* hashAlg is the *parent's* nameAlg (PrivateToSensitive: `parent->publicArea.nameAlg`; the
  object's own nameAlg only when there is no parent, i.e. the Temporary Objects under
  TPM_RH_NULL). The same hash is used for both KDFs and the HMAC. symBits is the parent's
  `parameters.asymDetail.symmetric.keyBits.sym` (the symmetric algorithm is the parent's too,
  `sym_alg`: AES or SM4, in CFB mode as Part 1 requires).
* `name` is the protected object's Name (nameAlg || digest), used as KDF context and
  appended to the HMAC input; the seed is the parent's `sensitive.seedValue` (or the
  decrypted inSymSeed of a duplication blob, or the credential seed).
* `data` is what the caller marshaled. For TPM2B_PRIVATE it is the TPM2B_SENSITIVE - the
  UINT16 size of the TPMT_SENSITIVE *is* inside the encryption (MarshalSensitive writes the
  size and then the structure; PrivateToSensitive checks it after decryption and answers
  TPM_RC_SENSITIVE on a mismatch - that check is the caller's, after `unprotect`). For a
  credential blob (TPMS_ID_OBJECT) it is the TPM2B_DIGEST credential; for a duplication
  blob it is the TPM2B_SENSITIVE, or the inner wrap of it (`inner_wrap`).
* The integrity is checked before anything is decrypted; the TPM2B_IV, when present, is
  covered by the HMAC.

Two layouts, which differ only in the IV:

* **With an IV** (`iv=` 16 random bytes / `with_iv=True`): the reference's TPM2B_PRIVATE of
  an object (SensitiveToPrivate calls ProduceOuterWrap with useIV = TRUE): a fresh random
  IV of the cipher's block size, stored as TPM2B_IV after the integrity.
* **Without** (the default, zero IV, nothing stored): the duplication outer wrap
  (Part 1 §23.3.2.3, SensitiveToDuplicate with seed = the decrypted inSymSeed under label
  "DUPLICATE") and the credential blob (SecretToCredential, seed under "IDENTITY") - the
  layout tpm2-pytss `utils.wrap`/`make_credential` produce.

A TPM2B_PRIVATE of a TPM's own object is only read back by the same TPM, so which layout the
engine uses for Create/Import output is its choice; the reference uses the IV, and without
one every private blob of an object encrypts with the same key stream (key and IV depend only
on the parent seed and the Name), so e.g. the two blobs of TPM2_ObjectChangeAuth would reveal
the XOR of the old and new authValues' first bytes. Use the IV for TPM2B_PRIVATE.

Errors are `ProtectionError`s (a `TpmError` carrying the reference's response code; the
engine adds the parameter number with `.located(param=n)` or re-raises as it likes).
"""
import hmac
import struct

from ..errors import TpmError
from ..wire.constants import TPM_ALG, TPM_RC
from . import symcipher
from .hashes import HASH_NAMES
from .hashes import digest as _hash
from .kdf import kdfa

AES_BLOCK = symcipher.BLOCK      # AES and SM4 alike
_MAX_DIGEST = 64      # sizeof(TPMU_HA): the largest TPM2B_DIGEST the unmarshaler accepts
_U16 = struct.Struct(">H")


class ProtectionError(TpmError):
    """A protected blob could not be opened; `.rc` is the reference's code for it."""


class IntegrityError(ProtectionError):
    """The HMAC (outer) or hash (inner) does not match: TPM_RC_INTEGRITY."""

    def __init__(self, **locus):
        super().__init__(TPM_RC.INTEGRITY, **locus)


def _digest_size(hash_alg) -> int:
    return len(_hash(hash_alg, b""))


def _cfb(sym_alg, key: bytes, iv: bytes, data: bytes, encrypt: bool) -> bytes:
    return symcipher.cfb(sym_alg, key, iv, data, encrypt)


def _sym_key(hash_alg, seed: bytes, name: bytes, sym_bits: int, sym_alg) -> bytes:
    if sym_bits not in symcipher.KEY_BITS.get(sym_alg, ()):
        raise ValueError(f"unsupported symmetric key {sym_alg!r}/{sym_bits}")
    return kdfa(hash_alg, seed, b"STORAGE", name, b"", sym_bits)


def _outer_hmac(hash_alg, seed: bytes, covered: bytes, name: bytes) -> bytes:
    size = _digest_size(hash_alg)
    key = kdfa(hash_alg, seed, b"INTEGRITY", b"", b"", 8 * size)
    return hmac.new(key, covered + name, HASH_NAMES[hash_alg]).digest()


def _take_2b(blob: bytes, offset: int, max_size: int):
    """Unmarshal a TPM2B at offset as the reference does: TPM_RC_INSUFFICIENT if the size or
    the bytes are missing, TPM_RC_SIZE if the size is above the type's maximum."""
    if len(blob) - offset < 2:
        raise ProtectionError(TPM_RC.INSUFFICIENT)
    size = _U16.unpack_from(blob, offset)[0]
    if size > max_size:
        raise ProtectionError(TPM_RC.SIZE)
    end = offset + 2 + size
    if end > len(blob):
        raise ProtectionError(TPM_RC.INSUFFICIENT)
    return blob[offset + 2:end], end


def protect(sensitive: bytes, name: bytes, seed: bytes, name_alg, sym_bits: int = 128, *,
            iv: bytes | None = None, sym_alg=TPM_ALG.AES) -> bytes:
    """Outer-wrap `sensitive` (e.g. a marshaled TPM2B_SENSITIVE): returns the buffer of the
    TPM2B_PRIVATE / TPM2B_ID_OBJECT (without that structure's own size field):
    TPM2B_DIGEST(outerHMAC) || [TPM2B_IV(iv) ||] encSensitive.

    `name_alg` is the parent's nameAlg (the hash of both KDFs and the HMAC), `seed` the
    parent's seedValue (or the duplication / credential seed), `sym_alg` and `sym_bits` the
    parent's symmetric cipher (AES or SM4) and key size. With `iv` (16 bytes, from the
    platform's entropy) the reference's TPM2B_PRIVATE layout is produced; without it, the
    zero-IV layout of duplication and credential blobs (see the module docstring).
    """
    name, sensitive = bytes(name), bytes(sensitive)
    key = _sym_key(name_alg, seed, name, sym_bits, sym_alg)
    if iv is None:
        covered = _cfb(sym_alg, key, bytes(AES_BLOCK), sensitive, True)
    else:
        iv = bytes(iv)
        if len(iv) != AES_BLOCK:
            raise ValueError("the IV must be one AES block")
        covered = _U16.pack(AES_BLOCK) + iv + _cfb(sym_alg, key, iv, sensitive, True)
    mac = _outer_hmac(name_alg, seed, covered, name)
    return _U16.pack(len(mac)) + mac + covered


def unprotect(private: bytes, name: bytes, seed: bytes, name_alg, sym_bits: int = 128, *,
              with_iv: bool = False, sym_alg=TPM_ALG.AES) -> bytes:
    """Check and remove an outer wrap made by `protect` (UnwrapOuter); returns the decrypted
    bytes (e.g. the TPM2B_SENSITIVE, whose size prefix the caller still has to check).

    Raises `ProtectionError` with the reference's codes, in its order: the leading
    TPM2B_DIGEST does not unmarshal (TPM_RC_INSUFFICIENT / TPM_RC_SIZE); the HMAC differs,
    including a digest of the wrong size (`IntegrityError`, TPM_RC_INTEGRITY); with_iv and the
    TPM2B_IV does not unmarshal (INSUFFICIENT / SIZE) or is not one block (TPM_RC_VALUE).
    """
    private, name = bytes(private), bytes(name)
    mac, offset = _take_2b(private, 0, _MAX_DIGEST)
    covered = private[offset:]
    if not hmac.compare_digest(mac, _outer_hmac(name_alg, seed, covered, name)):
        raise IntegrityError()
    key = _sym_key(name_alg, seed, name, sym_bits, sym_alg)
    if with_iv:
        iv, offset = _take_2b(covered, 0, AES_BLOCK)
        if len(iv) != AES_BLOCK:
            raise ProtectionError(TPM_RC.VALUE)
        return _cfb(sym_alg, key, iv, covered[offset:], False)
    return _cfb(sym_alg, key, bytes(AES_BLOCK), covered, False)


def inner_wrap(sensitive: bytes, name: bytes, name_alg, sym_key: bytes,
               sym_alg=TPM_ALG.AES) -> bytes:
    """The duplication inner wrap (Part 1 §23.3.2.2, ProduceInnerIntegrity + encryption in
    SensitiveToDuplicate): AES-CFB(sym_key, zero IV) over TPM2B_DIGEST(H_nameAlg(sensitive ||
    name)) || sensitive, where `name_alg` is the *object's* nameAlg and `sym_key` the
    encryptionKey (16/24/32 bytes for the key size of symmetricAlg, AES or SM4)."""
    sensitive, name = bytes(sensitive), bytes(name)
    integrity = _hash(name_alg, sensitive + name)
    plain = _U16.pack(len(integrity)) + integrity + sensitive
    return _cfb(sym_alg, bytes(sym_key), bytes(AES_BLOCK), plain, True)


def inner_unwrap(blob: bytes, name: bytes, name_alg, sym_key: bytes,
                 sym_alg=TPM_ALG.AES) -> bytes:
    """Decrypt and check an inner wrap (DuplicateToSensitive + CheckInnerIntegrity); returns
    the sensitive bytes. ProtectionError INSUFFICIENT / SIZE if the decrypted integrity does
    not unmarshal, IntegrityError if it differs."""
    plain = _cfb(sym_alg, bytes(sym_key), bytes(AES_BLOCK), bytes(blob), False)
    integrity, offset = _take_2b(plain, 0, _MAX_DIGEST)
    sensitive = plain[offset:]
    if not hmac.compare_digest(integrity, _hash(name_alg, sensitive + bytes(name))):
        raise IntegrityError()
    return sensitive


__all__ = ["ProtectionError", "IntegrityError", "protect", "unprotect", "inner_wrap",
           "inner_unwrap", "AES_BLOCK"]
