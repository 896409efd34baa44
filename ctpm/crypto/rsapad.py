"""RSA paddings and primitives as the TPM applies them (PKCS #1 v2.2; reference CryptRsa.c).

The TPM's own rules differ from a general PKCS #1 library in what they refuse and with which
code, so the encodings are written out here: RSAES-PKCS1-v1_5 (RSAES) both ways (OpenSSL
answers a bad block with a random message - implicit rejection - where a TPM answers
TPM_RC_VALUE), RSAES-OAEP encoding with the label as given (TPM labels carry their
terminating zero; OpenSSL decodes), EMSA-PKCS1-v1_5 (RSASSA) and EMSA-PSS verification of
any salt length (OpenSSL signs, with the salt length the reference uses: the hash length, or
less if the modulus is too small). Failures raise `TpmError` with the reference's codes; the
caller adds the parameter number.

`public_op` / `private_op` are the raw RSAEP / RSADP on big-endian byte strings of the
modulus size. The private operation uses GMP's constant-time exponentiation (mpz_powm_sec)
with the CRT; OpenSSL does the signatures (`cryptography`), whose results are equal.
"""
import hashlib
import hmac

from ..errors import TpmError
from ..wire.constants import TPM_ALG, TPM_RC
from .hashes import HASH_NAMES

# DigestInfo prefixes (PKCS #1 v2.2 §9.2 note 1), the reference's MakeDerTag
DER_PREFIX = {
    TPM_ALG.SHA1: bytes.fromhex("3021300906052b0e03021a05000414"),
    TPM_ALG.SHA256: bytes.fromhex("3031300d060960864801650304020105000420"),
    TPM_ALG.SHA384: bytes.fromhex("3041300d060960864801650304020205000430"),
    TPM_ALG.SHA512: bytes.fromhex("3051300d060960864801650304020305000440"),
    # the TCG algorithm registry's SM3_256_DER (OID 1.2.156.197.1.401, as the reference and
    # libtpms); OpenSSL writes 1.2.156.10197.1.504, so RSASSA with SM3 is encoded here
    TPM_ALG.SM3_256: bytes.fromhex("3030300c06082a811c8145018311050004" "20"),
}


def _hlen(alg) -> int:
    return hashlib.new(HASH_NAMES[alg]).digest_size


def _hash(alg, data: bytes) -> bytes:
    return hashlib.new(HASH_NAMES[alg], data).digest()


def mgf1(alg, seed: bytes, length: int) -> bytes:
    name = HASH_NAMES[alg]
    out = bytearray()
    counter = 0
    while len(out) < length:
        out += hashlib.new(name, seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return bytes(out[:length])


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


# -- raw operations ---------------------------------------------------------------------

def public_op(n: int, e: int, data: bytes, k: int) -> bytes:
    """RSAEP/RSAVP1: data^e mod n, `k` bytes. TPM_RC_SIZE if data >= n (ModExpB)."""
    import gmpy2
    m = int.from_bytes(data, "big")
    if m >= n:
        raise TpmError(TPM_RC.SIZE)
    return int(gmpy2.powmod(m, e, n)).to_bytes(k, "big")


class PrivateKey:
    """The CRT form of an RSA private key, for RSADP."""

    __slots__ = ("n", "e", "p", "q", "dp", "dq", "qinv", "k")

    def __init__(self, numbers):
        """`numbers`: a `cryptography` RSAPrivateNumbers."""
        import gmpy2
        self.n = gmpy2.mpz(numbers.public_numbers.n)
        self.e = numbers.public_numbers.e
        self.p = gmpy2.mpz(numbers.p)
        self.q = gmpy2.mpz(numbers.q)
        self.dp = gmpy2.mpz(numbers.dmp1)
        self.dq = gmpy2.mpz(numbers.dmq1)
        self.qinv = gmpy2.mpz(numbers.iqmp)
        self.k = (int(self.n).bit_length() + 7) // 8

    def op(self, data: bytes) -> bytes:
        """RSADP/RSASP1 on `k` bytes; TPM_RC_SIZE if the value is not below n (RSADP)."""
        import gmpy2
        c = gmpy2.mpz(int.from_bytes(data, "big"))
        if c >= self.n:
            raise TpmError(TPM_RC.SIZE)
        m1 = gmpy2.powmod_sec(c % self.p, self.dp, self.p)
        m2 = gmpy2.powmod_sec(c % self.q, self.dq, self.q)
        h = (self.qinv * (m1 - m2)) % self.p
        m = m2 + h * self.q
        # a fault in the CRT computation must not leak a prime (Boneh-DeMillo-Lipton)
        if gmpy2.powmod(m, self.e, self.n) != c:
            raise TpmError(TPM_RC.FAILURE)
        return int(m).to_bytes(self.k, "big")


# -- RSAES-PKCS1-v1_5 -----------------------------------------------------------------------

def rsaes_encode(message: bytes, k: int, random) -> bytes:
    """EME-PKCS1-v1_5: 00 02 PS 00 M with PS non-zero random bytes. TPM_RC_VALUE if M is
    longer than k - 11. `random(n)` gives random bytes."""
    if len(message) > k - 11:
        raise TpmError(TPM_RC.VALUE)
    need = k - len(message) - 3
    ps = b""
    while len(ps) < need:
        ps += random(need - len(ps) + 8).replace(b"\0", b"")
    return b"\0\x02" + ps[:need] + b"\0" + message


def rsaes_decode(em: bytes) -> bytes:
    """TPM_RC_VALUE unless em is 00 02, at least 8 non-zero bytes, 00, message."""
    fail = len(em) < 11 or em[0] != 0 or em[1] != 2
    sep = em.find(b"\0", 2)
    if sep < 0 or sep - 2 < 8 or fail:
        raise TpmError(TPM_RC.VALUE)
    return em[sep + 1:]


# -- RSAES-OAEP ----------------------------------------------------------------------------

def oaep_encode(alg, label: bytes, message: bytes, k: int, random) -> bytes:
    """EME-OAEP (PKCS #1 v2.2 §7.1.1) with MGF1 and `alg` for both hashes.

    TPM_RC_HASH if the key is too small for the hash, TPM_RC_VALUE if the message is too
    long (the reference's OaepEncode)."""
    hlen = _hlen(alg)
    if k < 2 * hlen + 2:
        raise TpmError(TPM_RC.HASH)
    if len(message) > k - 2 * hlen - 2:
        raise TpmError(TPM_RC.VALUE)
    db = _hash(alg, label) + bytes(k - len(message) - 2 * hlen - 2) + b"\x01" + message
    seed = random(hlen)
    masked_db = _xor(db, mgf1(alg, seed, k - hlen - 1))
    masked_seed = _xor(seed, mgf1(alg, masked_db, hlen))
    return b"\0" + masked_seed + masked_db


def oaep_decode(alg, label: bytes, em: bytes) -> bytes:
    """EME-OAEP decoding (the reference's OaepDecode), for the hashes OpenSSL's OAEP does not
    take (SM3_256); TPM_RC_VALUE for any defect, decided once at the end."""
    hlen = _hlen(alg)
    k = len(em)
    if k < 2 * hlen + 2:
        raise TpmError(TPM_RC.VALUE)
    masked_seed, masked_db = em[1:1 + hlen], em[1 + hlen:]
    seed = _xor(masked_seed, mgf1(alg, masked_db, hlen))
    db = _xor(masked_db, mgf1(alg, seed, k - hlen - 1))
    bad = em[0] != 0
    bad |= not hmac.compare_digest(db[:hlen], _hash(alg, label))
    rest = db[hlen:]
    start = len(rest) - len(rest.lstrip(b"\0"))
    bad |= start >= len(rest) or rest[start] != 1
    if bad:
        raise TpmError(TPM_RC.VALUE)
    return rest[start + 1:]


# -- signatures ----------------------------------------------------------------------------

def pss_salt_size(hlen: int, k: int) -> int:
    """The reference's CryptRsaPssSaltSize: the hash length, or the most that fits."""
    return max(0, min(hlen, k - hlen - 2))


def rsassa_encode(alg, digest: bytes, k: int) -> bytes:
    """EMSA-PKCS1-v1_5 of a digest (RSASSA_Encode): TPM_RC_SCHEME for a hash without a
    DigestInfo, TPM_RC_VALUE for a digest of the wrong size, TPM_RC_SIZE if it does not fit
    with 8 bytes of padding."""
    der = DER_PREFIX.get(alg)
    if der is None:
        raise TpmError(TPM_RC.SCHEME)
    if len(digest) != _hlen(alg):
        raise TpmError(TPM_RC.VALUE)
    fill = k - len(der) - len(digest) - 3
    if fill < 8:
        raise TpmError(TPM_RC.SIZE)
    return b"\0\x01" + b"\xff" * fill + b"\0" + der + digest


def rsassa_verify(alg, digest: bytes, em: bytes) -> bool:
    try:
        expected = rsassa_encode(alg, digest, len(em))
    except TpmError:
        return False
    return hmac.compare_digest(expected, em)


def pss_verify(alg, digest: bytes, em: bytes) -> bool:
    """EMSA-PSS-VERIFY for a modulus of 8k bits (emLen = k, the top bit of EM clear) with
    the salt length recovered from the block, as the reference's PssDecode: any salt."""
    hlen = _hlen(alg)
    k = len(em)
    if k < hlen + 2 or em[0] & 0x80 or em[-1] != 0xBC:
        return False
    mlen = k - hlen - 1
    masked_db, h = em[:mlen], em[mlen:mlen + hlen]
    db = bytearray(_xor(masked_db, mgf1(alg, h, mlen)))
    db[0] &= 0x7F
    one = len(db) - len(bytes(db).lstrip(b"\0"))
    if one >= len(db) or db[one] != 1:
        return False
    salt = bytes(db[one + 1:])
    return hmac.compare_digest(h, _hash(alg, bytes(8) + digest + salt))


__all__ = ["DER_PREFIX", "mgf1", "public_op", "PrivateKey", "rsaes_encode", "rsaes_decode",
           "oaep_encode", "oaep_decode", "pss_salt_size", "rsassa_encode", "rsassa_verify",
           "pss_verify"]
