"""Secret sharing with an asymmetric key: a seed encrypted to a public key, and recovered
with the private key (Part 1 §11.4.10.3 KDFe, Annex B.10 (RSA) and C.6 (ECC) "secret
sharing"; the reference's CryptSecretEncrypt / CryptSecretDecrypt in CryptUtil.c).

What TPM2_MakeCredential / ActivateCredential ("IDENTITY"), Duplicate / Rewrap / Import
("DUPLICATE") and a salted TPM2_StartAuthSession ("SECRET") exchange:

* **RSA**: seed = digestSize(nameAlg) random bytes, encrypted with RSAES-OAEP, the label
  being the NUL-terminated string (b"IDENTITY\\0", ...). Encryption always uses OAEP with
  the key's nameAlg; decryption uses the key's own scheme when it has one (only OAEP works:
  RSAES or another scheme is TPM_RC_SCHEME), else OAEP with nameAlg.
* **ECC**: an ephemeral key pair (de, Qe) on the key's curve; Z = x([de]Qs) (the shared
  point's x-coordinate, as long as the field prime), and

      seed = KDFe(nameAlg, Z, label, x(Qe), x(Qs), 8 * digestSize(nameAlg))

  where the label includes its NUL, x(Qe) is the ephemeral point's x as it travels in the
  secret and x(Qs) the key's unique.ecc.x as stored. The secret is the marshaled
  TPMS_ECC_POINT Qe (not a TPM2B_ECC_POINT: no outer size).

Every function is sans-I/O: randomness comes from the caller (`random(n) -> bytes`, e.g.
the TPM's DRBG), keys as TPMT_PUBLIC Containers (ctpm.wire.objects) and `cryptography`
private keys. Failures raise `TpmError` with the reference's codes and no locus; the
command adds the parameter number.
"""
import hashlib
import struct

from cryptography.hazmat.primitives import hashes as chashes
from cryptography.hazmat.primitives.asymmetric import ec, padding

from ..errors import TpmError
from ..wire.constants import TPM_ALG, TPM_RC, TPMA_OBJECT
from . import keys, rsapad
from .hashes import HASH_NAMES

LABEL_IDENTITY = b"IDENTITY\0"      # MakeCredential / ActivateCredential
LABEL_DUPLICATE = b"DUPLICATE\0"    # Duplicate / Rewrap / Import
LABEL_SECRET = b"SECRET\0"          # StartAuthSession salt

# the hashes OpenSSL's OAEP takes; SM3_256 is encoded in rsapad instead
_CHASH = {TPM_ALG.SHA1: chashes.SHA1, TPM_ALG.SHA256: chashes.SHA256,
          TPM_ALG.SHA384: chashes.SHA384, TPM_ALG.SHA512: chashes.SHA512}
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
MAX_ECC_KEY_BYTES = 66              # TPM2B_ECC_PARAMETER's bound when unmarshaling


def digest_size(hash_alg) -> int:
    """Bytes in a digest of the hash; 0 for TPM_ALG_NULL (CryptHashGetDigestSize)."""
    name = HASH_NAMES.get(hash_alg)
    return hashlib.new(name).digest_size if name else 0


def kdfe(hash_alg, z: bytes, label: bytes, party_u: bytes, party_v: bytes, bits: int) -> bytes:
    """KDFe (Part 1 §11.4.10.3, SP 800-56A/C one-step KDF with a hash):

        K(i) = H([i]_32 || Z || label || PartyUInfo || PartyVInfo), i = 1, 2, ...

    concatenated and cut to ceil(bits/8) bytes. `label` is used as given: the TPM's labels
    carry their terminating NUL (b"DUPLICATE\\0"), and nothing is added (reference
    CryptKDFe). Unlike KDFa, the unused high bits of a partial first byte stay (the caller
    masks, as the reference says)."""
    name = HASH_NAMES[hash_alg]
    n = (bits + 7) // 8
    other = bytes(z) + bytes(label) + bytes(party_u) + bytes(party_v)
    out = bytearray()
    counter = 0
    while len(out) < n:
        counter += 1
        out += hashlib.new(name, _U32.pack(counter) + other).digest()
    return bytes(out[:n])


def _oaep(hash_alg, label: bytes):
    h = _CHASH[hash_alg]()
    return padding.OAEP(mgf=padding.MGF1(algorithm=h), algorithm=h, label=bytes(label))


def _check_label(label: bytes):
    # The reference refuses a label without its NUL (a programming error: TPM_RC_FAILURE).
    if not label or label[-1] != 0:
        raise TpmError(TPM_RC.FAILURE)


def _ecc_point(x: bytes, y: bytes) -> bytes:
    return _U16.pack(len(x)) + x + _U16.pack(len(y)) + y


def parse_ecc_point(buf: bytes):
    """TPMS_ECC_POINT from the start of `buf` as the reference unmarshals it: (x, y).
    TPM_RC_INSUFFICIENT if bytes are missing, TPM_RC_SIZE for a coordinate over
    MAX_ECC_KEY_BYTES; bytes after the point are ignored (CryptSecretDecrypt does)."""
    buf = bytes(buf)
    out, offset = [], 0
    for _ in range(2):
        if len(buf) - offset < 2:
            raise TpmError(TPM_RC.INSUFFICIENT)
        size = _U16.unpack_from(buf, offset)[0]
        if size > MAX_ECC_KEY_BYTES:
            raise TpmError(TPM_RC.SIZE)
        if len(buf) - offset - 2 < size:
            raise TpmError(TPM_RC.INSUFFICIENT)
        out.append(buf[offset + 2:offset + 2 + size])
        offset += 2 + size
    return tuple(out)


def encrypt_seed(public, label: bytes, random):
    """A fresh seed for `public` (a TPMT_PUBLIC of an RSA or ECC decryption key) and its
    encrypted form: `(seed, secret)` - the TPM2B_ENCRYPTED_SECRET's buffer.

    TPM_RC_ATTRIBUTES if the key is not a decryption key, TPM_RC_KEY if an ECC key's public
    point is not on its curve; the reference's checks, in its order. `random(n)` supplies
    the seed (RSA) or the ephemeral key (ECC); the OAEP padding's own random seed comes from
    the operating system (through `cryptography`). A key with nameAlg TPM_ALG_NULL (public
    only, TPM2_LoadExternal) has no hash for the scheme: TPM_RC_VALUE, as swtpm answers for
    RSA (for ECC, libtpms goes on with an empty seed and an empty HMAC - not reproduced)."""
    _check_label(label)
    name_alg = public.nameAlg
    size = digest_size(name_alg)
    if not public.objectAttributes & TPMA_OBJECT.DECRYPT:
        raise TpmError(TPM_RC.ATTRIBUTES)
    if not size:        # a public key loaded without a nameAlg: no OAEP / KDFe hash
        raise TpmError(TPM_RC.VALUE)
    p = public.parameters
    if public.type == TPM_ALG.RSA:
        seed = bytes(random(size))
        n = int.from_bytes(public.unique, "big")
        if name_alg not in _CHASH:
            k = len(public.unique)
            block = rsapad.oaep_encode(name_alg, label, seed, k, random)
            return seed, rsapad.public_op(n, p.exponent or 65537, block, k)
        key = keys.rsa_public_key(n, p.exponent or 65537)
        try:
            secret = key.encrypt(seed, _oaep(name_alg, label))
        except ValueError:          # the key is too small for OAEP with this hash
            raise TpmError(TPM_RC.VALUE) from None
        return seed, secret
    if public.type == TPM_ALG.ECC:
        curve = p.curveID
        try:
            peer = keys.ecc_public_key(curve, public.unique.x, public.unique.y)
        except ValueError:
            raise TpmError(TPM_RC.KEY) from None
        d = keys.ecc_private_from_stream(keys.EntropyStream(random), curve)
        ephemeral = keys.ecc_private_key(curve, d)
        qx, qy = keys.ecc_public_xy(ephemeral)
        z = ephemeral.exchange(ec.ECDH(), peer)
        seed = kdfe(name_alg, z, label, qx, public.unique.x, 8 * size)
        return seed, _ecc_point(qx, qy)
    raise TpmError(TPM_RC.FAILURE)      # the reference's FAIL(): callers check the type


def decrypt_seed(public, private_key, label: bytes, secret: bytes) -> bytes:
    """Recover the seed of `encrypt_seed` with the key's private half (`private_key`, the
    object's `cryptography` key).

    RSA: TPM_RC_SCHEME for a key scheme other than NULL or OAEP; TPM_RC_SIZE if the secret
    is not as long as the modulus or not below it; TPM_RC_VALUE if the OAEP padding or label
    is wrong or the seed is longer than the scheme's digest. ECC: TPM_RC_INSUFFICIENT /
    TPM_RC_SIZE if the point does not unmarshal, TPM_RC_ECC_POINT if it is not on the curve.
    """
    _check_label(label)
    secret = bytes(secret)
    name_alg = public.nameAlg
    p = public.parameters
    if public.type == TPM_ALG.RSA:
        scheme = p.scheme.scheme
        if scheme == TPM_ALG.NULL:
            hash_alg = name_alg
        elif scheme == TPM_ALG.OAEP:
            hash_alg = p.scheme.details.hashAlg
        else:
            raise TpmError(TPM_RC.SCHEME)
        if hash_alg not in HASH_NAMES:
            raise TpmError(TPM_RC.SCHEME)
        modulus = bytes(public.unique)
        if len(secret) != len(modulus) or secret >= modulus:
            raise TpmError(TPM_RC.SIZE)
        if hash_alg not in _CHASH:
            block = rsapad.PrivateKey(private_key.private_numbers()).op(secret)
            seed = rsapad.oaep_decode(hash_alg, label, block)
        else:
            try:
                seed = private_key.decrypt(secret, _oaep(hash_alg, label))
            except ValueError:
                raise TpmError(TPM_RC.VALUE) from None
        if len(seed) > digest_size(hash_alg):
            raise TpmError(TPM_RC.VALUE)
        return seed
    if public.type == TPM_ALG.ECC:
        x, y = parse_ecc_point(secret)
        try:
            peer = keys.ecc_public_key(p.curveID, x, y)
        except ValueError:
            raise TpmError(TPM_RC.ECC_POINT) from None
        z = private_key.exchange(ec.ECDH(), peer)
        return kdfe(name_alg, z, label, x, public.unique.x, 8 * digest_size(name_alg))
    raise TpmError(TPM_RC.FAILURE)


__all__ = ["LABEL_IDENTITY", "LABEL_DUPLICATE", "LABEL_SECRET", "kdfe", "encrypt_seed",
           "decrypt_seed", "parse_ecc_point", "digest_size"]
