"""Asymmetric key material from a byte stream (Part 1 §27.5 key derivation, reference
CryptRsaGenerateKey / TpmEcc_GenerateKeyPair) and conversions to `cryptography` keys.

A TPM makes a Primary Object's key as a deterministic function of its hierarchy's Primary
Seed and the template, and a derived object's key from its derivation parent's seed, by
feeding the key-generation algorithm from a seeded generator instead of the RNG. Here the
generator is `KdfDrbg`, and the generation functions read whatever they need from any
object with a `read(n) -> bytes` method: a `KdfDrbg` for derivation, or
`EntropyStream(os.urandom)` (the platform's entropy) for an ordinary object.

Sans-I/O and stateless: plain functions on ints and bytes; the only state is in the stream
object the caller owns. gmpy2 (GMP) does the prime search (imported where it is used: its
import is slow, crypto/ecmath.py).

What is and is not bit-compatible with the TCG reference implementation:

* `KdfDrbg` produces exactly the byte sequence of the reference's KDF-seeded generator
  (`DRBG_InstantiateSeededKdf` + `DRBG_Generate` on a `KDF_STATE`, used by TPM2_CreateLoaded
  for derived objects) for its first `size_bits` bits, and keeps counting beyond them where
  the reference stops. The reference seeds *primary* keys from a CTR_DRBG (AES) instead
  (`DRBG_InstantiateSeeded` in CreatePrimary); that is not reproduced - a Primary Object
  made here is deterministic, but not equal to the reference's.
* `ecc_private_from_stream` is the reference's algorithm (FIPS 186-4 B.4.1), so a derived
  ECC key equals the reference's when the stream does.
* `rsa_from_stream` follows the reference's candidate shaping but searches upwards with
  GMP's `next_prime` from each random start, where the reference (with RSA_KEY_SIEVE)
  runs its own sieve; the resulting primes differ from the reference's.
"""
import functools
import hmac
import struct
import types
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..wire.constants import TPM_ECC_CURVE
from . import ecmath
from .hashes import HASH_NAMES

TPM_MAX_DERIVATION_BITS = 8192   # Part 2, TPM_CONSTANTS32


class KdfDrbg:
    """An endless deterministic byte stream: KDFa in counter mode with a running counter.

    Block i (i = 1, 2, ... as a 32-bit big-endian counter) is

        HMAC_hash(seed, [i]_32 || label || 0x00 || context || [size_bits]_32)

    and the stream is block 1 || block 2 || ...; `read(n)` hands out the next n bytes, so
    the output does not depend on how the reads are split. This is SP 800-108 KDFa (Part 1
    §11.4.10.2, `kdf.kdfa`) with contextU = `context`, an empty contextV and
    L = `size_bits`, except that:

    * the 0x00 after the label is left out when the label already ends in 0x00 (the
      reference's CryptKDFa rule, so a caller may pass "LABEL\\0" or "LABEL"; `kdf.kdfa`
      always appends it);
    * the stream does not stop after `size_bits` bits. L stays `size_bits` in every block
      (the reference passes its limit, TPM_MAX_DERIVATION_BITS = 8192, as L and refuses to
      generate past it; an RSA prime search needs far more, so we simply go on).

    For the first `size_bits` bits the output therefore equals
    `kdf.kdfa(hash_alg, seed, label, context, b"", size_bits)` (label without its 0), and
    equals the reference's `DRBG_Generate` on a `DRBG_InstantiateSeededKdf(hash_alg,
    KDF1_SP800_108, seed, label, context, size_bits)` state.

    For a Primary Object the natural instantiation is seed = the hierarchy's Primary Seed,
    label = "Primary Object Creation" (the reference's PRIMARY_OBJECT_CREATION), context =
    the template's Name (nameAlg || H(TPMT_PUBLIC)) || the sensitive data of inSensitive -
    the same inputs the reference gives its DRBG - and hash_alg = the template's nameAlg.
    That choice belongs to the engine.
    """

    __slots__ = ("_seed", "_name", "_head", "_tail", "_counter", "_buf")

    def __init__(self, hash_alg, seed: bytes, label: bytes, context: bytes = b"",
                 size_bits: int = TPM_MAX_DERIVATION_BITS):
        self._name = HASH_NAMES[hash_alg]   # KeyError for an unsupported hash
        self._seed = bytes(seed)
        label = bytes(label)
        if not label.endswith(b"\0"):
            label += b"\0"
        self._tail = label + bytes(context) + struct.pack(">I", size_bits)
        self._counter = 0
        self._buf = b""

    def _block(self) -> bytes:
        self._counter += 1
        if self._counter > 0xFFFFFFFF:
            raise OverflowError("KDF counter exhausted")
        return hmac.digest(self._seed, struct.pack(">I", self._counter) + self._tail,
                           self._name)

    def read(self, n: int) -> bytes:
        buf = self._buf
        if len(buf) < n:
            parts = [buf]
            have = len(buf)
            while have < n:
                b = self._block()
                parts.append(b)
                have += len(b)
            buf = b"".join(parts)
        self._buf = buf[n:]
        return buf[:n]


class EntropyStream:
    """Adapts an entropy function (`os.urandom`, `Platform.entropy`) to `read(n)`."""

    __slots__ = ("read",)

    def __init__(self, entropy):
        self.read = entropy


# ---------------------------------------------------------------------------------- RSA

def _adjust_candidate(x: int, k: int) -> int:
    """The reference's RsaAdjustPrimeCandidate on a k-bit value: make it odd and map its top
    32 bits linearly onto [0xB5050000, 0xFFFFFFFF], so the candidate is >= 0xB505/0x10000 *
    2^k > sqrt(2)/2 * 2^k (FIPS 186-4 B.3.3 step 4.4) and a product of two such numbers has
    exactly 2k bits. (Setting the two top bits, as some implementations do, gives the same
    guarantee over a smaller range.)"""
    shift = k - 32
    msw = x >> shift
    adjusted = (msw >> 16) * 0x4AFB + (((msw & 0xFFFF) * 0x4AFB) >> 16) + 0xB5050000
    return (adjusted << shift) | (x & ((1 << shift) - 1)) | 1


@functools.cache
def _odd_primes(limit: int) -> tuple:
    """The odd primes below `limit` (computed at the first RSA key, not at every start)."""
    flags = bytearray([1]) * limit
    flags[0:2] = b"\0\0"
    for n in range(2, int(limit ** 0.5) + 1):
        if flags[n]:
            flags[n * n::n] = bytes(len(range(n * n, limit, n)))
    return tuple(n for n in range(3, limit) if flags[n])


_SIEVE_LIMIT = 1 << 14                      # sieve with the odd primes below it
_SIEVE_SPAN = 1024                          # odd candidates sieved at once (~3 prime gaps
                                            # at 1024 bits)


def next_prime(x):
    """The first probable prime > x, as `gmpy2.next_prime(x)` finds it, in short steps.

    GMP's next_prime holds the GIL for its whole search (tens of ms for a 1024-bit prime):
    run in a worker thread, it would stall the event loop (every other TPM of a `ctpm host`)
    that long. Here the candidates are sieved in Python with the odd primes below 2^14, and
    each survivor is tested with one short GMP call at a time - a base-2 strong
    probable-prime test, then a strong Lucas test: the Baillie-PSW criterion GMP applies (it
    adds one Miller-Rabin round with a random base, which no known BPSW pseudoprime would
    survive either), so the same prime comes out (tests/test_crypto_keys.py compares).
    """
    import gmpy2
    x = gmpy2.mpz(x)
    if x < 1 << 28:
        return gmpy2.next_prime(x)
    base = x + 1 if x % 2 == 0 else x + 2
    span = _SIEVE_SPAN
    while True:
        composite = bytearray(span)             # composite[i]: base + 2i has a small factor
        for p in _odd_primes(_SIEVE_LIMIT):
            # base + 2i = 0 (mod p)  <=>  i = -base * 2^-1 (mod p)
            i = (-int(base % p) * ((p + 1) >> 1)) % p
            if i < span:
                composite[i::p] = b"\1" * ((span - 1 - i) // p + 1)
        i = composite.find(0)
        while i >= 0:
            c = base + 2 * i
            if gmpy2.is_strong_prp(c, 2) and gmpy2.is_strong_selfridge_prp(c):
                return c
            i = composite.find(0, i + 1)
        base += 2 * span


def _rsa_prime(stream, k: int, e: int):
    """A k-bit probable prime p with gcd(e, p - 1) = 1, from the stream.

    Each attempt reads k/8 bytes, shapes them with `_adjust_candidate` and takes the first
    prime >= the candidate (GMP mpz_nextprime: a sieve, then Baillie-PSW plus one
    Miller-Rabin round with a GMP-chosen base - stronger than the 5 (k < 1536) or 4
    random-base Miller-Rabin rounds FIPS 186-4 Table C.3 and the reference ask for), moving
    on to following primes while gcd(e, p - 1) != 1. A prime that overflowed k bits (only
    possible for a candidate a prime gap away from 2^k) is dropped and a new candidate read.
    """
    import gmpy2
    nbytes = k // 8
    while True:
        x = _adjust_candidate(int.from_bytes(stream.read(nbytes), "big"), k)
        p = next_prime(gmpy2.mpz(x - 1))
        while gmpy2.gcd(p - 1, e) != 1:
            p = next_prime(p)
        if p.bit_length() == k:
            return p


def rsa_from_stream(stream, bits: int, exponent: int = 65537):
    """An RSA key of exactly `bits` bits from the stream: `(n, e, p, q, d)`, p > q.

    The process (after the reference's CryptRsaGenerateKey, with FIPS 186-4 B.3.3 bounds):
    the first prime found is q, then primes p are drawn until |p - q| > 2^(bits/2 - 100)
    (the reference only asks 2^100) and d = e^-1 mod lcm(p - 1, q - 1) > 2^(bits/2); failing
    either, only p is redrawn. Finally p and q are ordered p > q, as the reference's
    ComputePrivateExponent does (qInv = q^-1 mod p is then what `cryptography` calls iqmp).

    `bits` must be a multiple of 16 and at least 512; `exponent` odd and > 1. The TPM's own
    rules (exponent 0 meaning 65537, a non-zero exponent prime and >= 65537, key sizes the
    TPM supports) are the caller's: see `rsa_exponent_ok`. The result is a mathematical
    function of the stream's bytes (each prime is the smallest suitable prime >= its
    candidate), so it does not change with the GMP version - unless a composite passes
    Baillie-PSW, of which no example is known. A Primary Object's key thus survives upgrades.
    """
    import gmpy2
    if bits % 16 or bits < 512:
        raise ValueError("RSA key size must be a multiple of 16 and at least 512 bits")
    e = int(exponent)
    if e < 3 or not e & 1:
        raise ValueError("RSA public exponent must be odd and greater than 1")
    k = bits // 2
    min_diff = gmpy2.mpz(1) << (k - 100)
    min_d = gmpy2.mpz(1) << k
    q = _rsa_prime(stream, k, e)
    while True:
        p = _rsa_prime(stream, k, e)
        if abs(p - q) <= min_diff:
            continue
        d = gmpy2.invert(e, gmpy2.lcm(p - 1, q - 1))
        if d <= min_d:
            continue
        break
    if p < q:
        p, q = q, p
    n = p * q
    assert n.bit_length() == bits
    return int(n), e, int(p), int(q), int(d)


def rsa_exponent_ok(exponent: int) -> bool:
    """Whether a TPMS_RSA_PARMS.exponent is acceptable as the reference decides: 0 (meaning
    65537) or a prime >= 65537 (it fits a UINT32 by construction). Otherwise TPM_RC_RANGE."""
    import gmpy2
    return exponent == 0 or (65537 <= exponent <= 0xFFFFFFFF and bool(gmpy2.is_prime(exponent)))


def rsa_private_from_prime(n: int, e: int, p: int):
    """Rebuild `(n, e, p, q, d)` (p > q) from the public modulus and one prime, as TPM2_Load
    does with the prime kept in TPMT_SENSITIVE. ValueError if p does not divide n (the
    engine's TPM_RC_BINDING) or e is not invertible mod lcm(p - 1, q - 1)."""
    import gmpy2
    n, e, p = int(n), int(e), int(p)
    if p <= 1 or p >= n or n % p:
        raise ValueError("prime does not divide the modulus")
    q = n // p
    if q <= 1:
        raise ValueError("prime does not divide the modulus")
    try:
        d = int(gmpy2.invert(e, gmpy2.lcm(p - 1, q - 1)))
    except ZeroDivisionError:
        raise ValueError("public exponent not invertible") from None
    if p < q:
        p, q = q, p
    return n, e, p, q, d


def rsa_private_key(n: int, e: int, p: int, q: int, d: int, *,
                    check: bool = False) -> rsa.RSAPrivateKey:
    """A `cryptography` RSA private key with its CRT values (dP, dQ, qInv).

    With check=False OpenSSL's key validation is skipped (it costs milliseconds and our own
    keys are right by construction); pass check=True for key material from outside, and
    expect ValueError when it is inconsistent.
    """
    import gmpy2
    p, q, d = int(p), int(q), int(d)
    numbers = rsa.RSAPrivateNumbers(
        p=p, q=q, d=d, dmp1=d % (p - 1), dmq1=d % (q - 1),
        iqmp=int(gmpy2.invert(q, p)),
        public_numbers=rsa.RSAPublicNumbers(int(e), int(n)))
    return numbers.private_key(unsafe_skip_rsa_key_validation=not check)


def rsa_public_key(n: int, e: int) -> rsa.RSAPublicKey:
    """A `cryptography` RSA public key (e as a number: map a TPM exponent of 0 to 65537)."""
    return rsa.RSAPublicNumbers(int(e), int(n)).public_key()


def rsa_numbers(key):
    """`(n, e, p, q, d)` of a `cryptography` RSA private key, p > q; or `(n, e)` of a
    public key. For the TPM structures: unique.rsa = n as `bits`/8 big-endian bytes,
    parameters.rsaDetail.exponent = e (0 if the engine stores 65537 as the default),
    sensitive.rsa = p as `bits`/16 bytes."""
    if isinstance(key, rsa.RSAPublicKey):
        pub = key.public_numbers()
        return pub.n, pub.e
    priv = key.private_numbers()
    p, q = priv.p, priv.q
    if p < q:
        p, q = q, p
    return priv.public_numbers.n, priv.public_numbers.e, p, q, priv.d


# ---------------------------------------------------------------------------------- ECC

class _Curve(NamedTuple):
    """A curve: its `cryptography` class (None: not in OpenSSL, keys are `EccSoftPrivateKey`),
    coordinate size in bytes and order n."""
    cls: type
    size: int
    order: int


ECC_CURVES = types.MappingProxyType({
    TPM_ECC_CURVE.NIST_P256: _Curve(
        cls=ec.SECP256R1, size=32,
        order=0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551),
    TPM_ECC_CURVE.NIST_P384: _Curve(
        cls=ec.SECP384R1, size=48,
        order=int("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF"
                  "581A0DB248B0A77AECEC196ACCC52973", 16)),
    TPM_ECC_CURVE.NIST_P521: _Curve(
        cls=ec.SECP521R1, size=66,
        order=int("01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"
                  "FA51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409",
                  16)),
    TPM_ECC_CURVE.BN_P256: _Curve(
        cls=None, size=32, order=ecmath.CURVES[TPM_ECC_CURVE.BN_P256].n),
    TPM_ECC_CURVE.SM2_P256: _Curve(
        cls=None, size=32, order=ecmath.CURVES[TPM_ECC_CURVE.SM2_P256].n),
})
"""TPM_ECC_CURVE -> curve data, for the curves implemented here (read-only)."""

_CURVE_BY_NAME = types.MappingProxyType({c.cls.name: cid for cid, c in ECC_CURVES.items()
                                         if c.cls is not None})


class _SoftCurve(NamedTuple):
    name: str
    curve_id: int


class _SoftNumbers(NamedTuple):
    x: int
    y: int


class _SoftPrivateNumbers(NamedTuple):
    private_value: int


class EccSoftPublicKey:
    """A public point on a curve OpenSSL does not know (BN_P256, SM2_P256), with the few
    methods of a `cryptography` EC public key that ctpm uses (`public_numbers`, `curve`)."""

    __slots__ = ("curve", "_xy")

    def __init__(self, curve_id, x: int, y: int):
        self.curve = _SoftCurve(TPM_ECC_CURVE(curve_id).name, int(curve_id))
        self._xy = _SoftNumbers(int(x), int(y))

    def public_numbers(self):
        return self._xy


class EccSoftPrivateKey:
    """A private scalar on a curve OpenSSL does not know, with the methods of a
    `cryptography` EC private key ctpm uses (`private_numbers`, `public_key`, `exchange`
    for ECDH: the x-coordinate of [d]Q, big-endian, the coordinate size)."""

    __slots__ = ("curve", "_d", "_pub")

    def __init__(self, curve_id, d: int):
        c = ecmath.curve(curve_id)
        if not 0 < d < c.n:
            raise ValueError("private scalar out of range")
        self.curve = _SoftCurve(TPM_ECC_CURVE(curve_id).name, int(curve_id))
        self._d = int(d)
        self._pub = EccSoftPublicKey(curve_id, *ecmath.mul_base(c, d))

    def private_numbers(self):
        return _SoftPrivateNumbers(self._d)

    def public_key(self):
        return self._pub

    def exchange(self, algorithm, peer) -> bytes:
        c = ecmath.curve(self.curve.curve_id)
        if getattr(peer, "curve", None) != self.curve:
            raise ValueError("peer key on another curve")
        q = peer.public_numbers()
        z = ecmath.mul(c, self._d, (q.x, q.y))
        if z is None:
            raise ValueError("ECDH result is the point at infinity")
        return z[0].to_bytes(c.size, "big")


def _curve(curve) -> _Curve:
    try:
        return ECC_CURVES[curve]
    except KeyError:
        raise ValueError(f"unsupported ECC curve {curve!r}") from None


def ecc_coordinate_size(curve) -> int:
    """Bytes in a coordinate (and in the private scalar as the TPM stores it): 32/48/66."""
    return _curve(curve).size


def ecc_private_from_stream(stream, curve) -> int:
    """A private scalar 1 <= d < n for a TPM_ECC_CURVE, from the stream.

    The reference's TpmEcc_GenPrivateScalar (FIPS 186-4 B.4.1, "extra random bits"): read
    ceil(bits(n)/8) + 8 bytes (40/56/74 for P-256/384/521), take them as a big-endian
    integer c and return d = (c mod (n - 1)) + 1. No retry is ever needed; the 64 extra bits
    make the bias negligible. One read, so it consumes a fixed number of stream bytes.
    """
    c = _curve(curve)
    nbytes = (c.order.bit_length() + 7) // 8 + 8
    return int.from_bytes(stream.read(nbytes), "big") % (c.order - 1) + 1


def ecc_private_key(curve, d: int) -> ec.EllipticCurvePrivateKey:
    """A `cryptography` private key for d on a TPM_ECC_CURVE (ValueError unless 1 <= d < n);
    an `EccSoftPrivateKey` on a curve OpenSSL does not have."""
    cls = _curve(curve).cls
    if cls is None:
        return EccSoftPrivateKey(curve, int(d))
    return ec.derive_private_key(int(d), cls())


def ecc_public_key(curve, x, y) -> ec.EllipticCurvePublicKey:
    """A `cryptography` public key from the coordinates (ints or big-endian bytes of any
    length). ValueError if the point is not on the curve (the engine's TPM_RC_ECC_POINT)."""
    if isinstance(x, (bytes, bytearray)):
        x = int.from_bytes(x, "big")
    if isinstance(y, (bytes, bytearray)):
        y = int.from_bytes(y, "big")
    cls = _curve(curve).cls
    if cls is None:
        if not ecmath.on_curve(ecmath.curve(curve), x, y):
            raise ValueError("point not on the curve")
        return EccSoftPublicKey(curve, x, y)
    return ec.EllipticCurvePublicNumbers(x, y, cls()).public_key()


def ecc_curve_of(key):
    """The TPM_ECC_CURVE of a `cryptography` EC key (ValueError for other curves)."""
    if isinstance(key, (EccSoftPrivateKey, EccSoftPublicKey)):
        return key.curve.curve_id
    try:
        return _CURVE_BY_NAME[key.curve.name]
    except KeyError:
        raise ValueError(f"unsupported ECC curve {key.curve.name}") from None


def ecc_public_xy(key):
    """The public point of a `cryptography` EC key (private or public) as fixed-length
    big-endian (x, y) - each the curve's coordinate size, as TPMS_ECC_POINT carries them
    (the reference's TpmEcc_PointTo2B pads to the size of the field prime)."""
    if isinstance(key, (ec.EllipticCurvePrivateKey, EccSoftPrivateKey)):
        key = key.public_key()
    size = ecc_coordinate_size(ecc_curve_of(key))
    pub = key.public_numbers()
    return pub.x.to_bytes(size, "big"), pub.y.to_bytes(size, "big")


def ecc_private_bytes(curve, d: int) -> bytes:
    """d as TPMT_SENSITIVE.sensitive.ecc carries it: big-endian, padded to the coordinate
    size (the reference pads to the size of unique.ecc.x)."""
    return int(d).to_bytes(ecc_coordinate_size(curve), "big")


def ecc_private_value(key: ec.EllipticCurvePrivateKey):
    """`(curve, d)` of a `cryptography` EC private key."""
    return ecc_curve_of(key), key.private_numbers().private_value


def int_to_bytes(value: int, size: int) -> bytes:
    """Big-endian `value` in exactly `size` bytes (e.g. n in keyBits/8, p in keyBits/16)."""
    return int(value).to_bytes(size, "big")


__all__ = [
    "TPM_MAX_DERIVATION_BITS", "KdfDrbg", "EntropyStream", "rsa_from_stream", "rsa_exponent_ok",
    "rsa_private_from_prime", "rsa_private_key", "rsa_public_key", "rsa_numbers",
    "ECC_CURVES", "EccSoftPrivateKey", "EccSoftPublicKey", "ecc_coordinate_size",
    "ecc_private_from_stream", "ecc_private_key",
    "ecc_public_key", "ecc_curve_of", "ecc_public_xy", "ecc_private_bytes",
    "ecc_private_value", "int_to_bytes",
]
