"""Deterministic key generation (ctpm.crypto.keys): the KDF stream, RSA and ECC keys."""
import hashlib
import hmac
import math
import os
import statistics
import struct
import time

import gmpy2
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from tpm2_pytss.internal.crypto import _kdfa as pytss_kdfa

from ctpm.crypto import kdf
from ctpm.crypto.keys import (ECC_CURVES, TPM_MAX_DERIVATION_BITS, EntropyStream, KdfDrbg,
                              _adjust_candidate, ecc_coordinate_size, ecc_curve_of,
                              ecc_private_bytes, ecc_private_from_stream, ecc_private_key,
                              ecc_private_value, ecc_public_key, ecc_public_xy,
                              rsa_exponent_ok, rsa_from_stream, rsa_numbers,
                              rsa_private_from_prime, rsa_private_key, rsa_public_key)
from ctpm.wire.constants import TPM_ALG, TPM_ECC_CURVE

SHA1, SHA256, SHA384, SHA512 = TPM_ALG.SHA1, TPM_ALG.SHA256, TPM_ALG.SHA384, TPM_ALG.SHA512
P256, P384, P521 = TPM_ECC_CURVE.NIST_P256, TPM_ECC_CURVE.NIST_P384, TPM_ECC_CURVE.NIST_P521
SEED = bytes(range(32))
LABEL = b"Primary Object Creation"


def drbg(seed=SEED, label=LABEL, context=b"template name", alg=SHA256):
    return KdfDrbg(alg, seed, label, context)


class Counting:
    """A stream that counts what is read from it."""

    def __init__(self, inner):
        self.inner, self.taken = inner, 0

    def read(self, n):
        self.taken += n
        return self.inner.read(n)


class Constant:
    def __init__(self, byte):
        self.byte = byte

    def read(self, n):
        return bytes([self.byte]) * n


# ------------------------------------------------------------------------------- KdfDrbg

@pytest.mark.parametrize("alg", [SHA1, SHA256, SHA384, SHA512])
def test_stream_is_kdfa_with_running_counter(alg):
    # The first TPM_MAX_DERIVATION_BITS bits are KDFa(hash, seed, label, context, "", 8192),
    # checked against our kdfa and against tpm2-pytss' (cryptography's KBKDFHMAC).
    n = TPM_MAX_DERIVATION_BITS // 8
    out = drbg(alg=alg).read(n)
    assert out == kdf.kdfa(alg, SEED, LABEL, b"template name", b"", TPM_MAX_DERIVATION_BITS)
    assert out == pytss_kdfa(alg, SEED, LABEL, b"template name", b"", TPM_MAX_DERIVATION_BITS)


def test_stream_blocks_by_hand_beyond_the_limit():
    name = "sha256"
    s = drbg()
    data = s.read(32 * 40)          # 40 blocks: well past 8192 bits, never refused
    for i in range(40):
        block = hmac.new(SEED, struct.pack(">I", i + 1) + LABEL + b"\0" + b"template name"
                         + struct.pack(">I", 8192), name).digest()
        assert data[32 * i:32 * i + 32] == block


def test_stream_does_not_depend_on_read_sizes():
    whole = drbg().read(1000)
    s = drbg()
    parts = b"".join(s.read(k) for k in (0, 1, 7, 31, 32, 33, 64, 100, 1, 0, 731))
    assert parts == whole


def test_stream_label_terminator_and_inputs():
    with_zero = KdfDrbg(SHA256, SEED, b"L\0", b"c").read(64)
    assert with_zero == KdfDrbg(SHA256, SEED, b"L", b"c").read(64)
    # An empty label still gets its 0x00 (reference CryptKDFa).
    assert KdfDrbg(SHA256, SEED, b"", b"c").read(32) == hmac.new(
        SEED, b"\0\0\0\1" + b"\0" + b"c" + struct.pack(">I", 8192), "sha256").digest()
    base = drbg().read(64)
    assert drbg().read(64) == base
    assert drbg(seed=SEED[::-1]).read(64) != base
    assert drbg(label=b"other").read(64) != base
    assert drbg(context=b"other").read(64) != base
    assert drbg(alg=SHA384).read(64) != base
    assert KdfDrbg(SHA256, SEED, LABEL, b"template name", 256).read(64) != base
    assert KdfDrbg(TPM_ALG.SM3_256, SEED, LABEL).read(64) != base      # SM3 is a hash here
    with pytest.raises(KeyError):
        KdfDrbg(TPM_ALG.SHA3_256, SEED, LABEL)


# ----------------------------------------------------------------------------------- RSA

def _independent_probable_prime(x, rounds=20):
    """Miller-Rabin with Python ints and fixed bases - not gmpy2."""
    if x % 2 == 0:
        return False
    d, s = x - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71)[:rounds]:
        y = pow(a, d, x)
        if y in (1, x - 1):
            continue
        for _ in range(s - 1):
            y = y * y % x
            if y == x - 1:
                break
        else:
            return False
    return True


def check_rsa(key, bits, e=65537):
    n, e_, p, q, d = key
    assert e_ == e
    assert all(type(v) is int for v in key)
    assert n == p * q and n.bit_length() == bits
    assert p > q and p.bit_length() == q.bit_length() == bits // 2
    assert _independent_probable_prime(p) and _independent_probable_prime(q)
    assert math.gcd(e, p - 1) == 1 and math.gcd(e, q - 1) == 1
    assert p - q > 2 ** (bits // 2 - 100)
    lam = math.lcm(p - 1, q - 1)
    assert e * d % lam == 1 and d > 2 ** (bits // 2)
    for m in (2, 0x1234567890ABCDEF, n - 2):
        assert pow(pow(m, e, n), d, n) == m
    # Both primes start with the reference's >= 0xB505 prefix, so n has exactly `bits` bits.
    assert q >> (bits // 2 - 16) >= 0xB505


def test_rsa_2048_valid_and_usable():
    key = rsa_from_stream(drbg(), 2048)
    check_rsa(key, 2048)
    priv = rsa_private_key(*key, check=True)       # OpenSSL's RSA_check_key agrees
    assert priv.key_size == 2048
    msg = b"ctpm"
    for pad in (padding.PKCS1v15(),
                padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.MAX_LENGTH)):
        sig = priv.sign(msg, pad, hashes.SHA256())
        rsa_public_key(key[0], key[1]).verify(sig, msg, pad, hashes.SHA256())
        with pytest.raises(InvalidSignature):
            priv.public_key().verify(sig, msg + b"!", pad, hashes.SHA256())
    oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
    assert rsa_private_key(*key).decrypt(priv.public_key().encrypt(msg, oaep), oaep) == msg
    # Back to numbers, and from n, e and either prime (what TPM2_Load has).
    assert rsa_numbers(priv) == key
    assert rsa_numbers(priv.public_key()) == (key[0], key[1])
    n, e, p, q, _ = key
    assert rsa_private_from_prime(n, e, p) == key
    assert rsa_private_from_prime(n, e, q) == key


def test_rsa_private_from_prime_refuses_a_wrong_prime():
    n, e, p, q, _ = rsa_from_stream(drbg(), 1024)
    for bad in (p + 2, 1, n, 0, n + p):
        with pytest.raises(ValueError):
            rsa_private_from_prime(n, e, bad)
    with pytest.raises(ValueError):      # n, e and p inconsistent in OpenSSL's eyes
        rsa_private_key(n, e, p, q, 12345, check=True)


def test_rsa_deterministic():
    a = rsa_from_stream(drbg(), 2048)
    assert rsa_from_stream(drbg(), 2048) == a
    assert rsa_from_stream(drbg(seed=b"\x01" + SEED[1:]), 2048) != a
    assert rsa_from_stream(drbg(context=b"another template"), 2048) != a
    # Same stream, other size: a different key of the other size.
    b = rsa_from_stream(drbg(), 1024)
    assert b[0].bit_length() == 1024 and b[0] != a[0]


@pytest.mark.parametrize("bits", [512, 1024, 1536, 3072])
def test_rsa_sizes(bits):
    for i in range(3):
        check_rsa(rsa_from_stream(drbg(context=bytes([i])), bits), bits)


@pytest.mark.parametrize("e", [3, 17, 65537, 65539, 0xFFFFFFFB])
def test_rsa_exponents(e):
    key = rsa_from_stream(drbg(), 1024, e)
    check_rsa(key, 1024, e)


def test_rsa_argument_checks():
    for bits in (0, 256, 1000, 2049):
        with pytest.raises(ValueError):
            rsa_from_stream(drbg(), bits)
    for e in (0, 1, 2, 65536):
        with pytest.raises(ValueError):
            rsa_from_stream(drbg(), 1024, e)
    assert rsa_exponent_ok(0) and rsa_exponent_ok(65537) and rsa_exponent_ok(65539)
    assert not rsa_exponent_ok(3) and not rsa_exponent_ok(65541)   # small / 65541 = 3*5*17*257
    assert not rsa_exponent_ok(1 << 32 | 15)


def test_candidate_adjustment_bounds():
    k = 1024
    lo = _adjust_candidate(0, k)
    hi = _adjust_candidate((1 << k) - 1, k)
    assert lo >> (k - 32) == 0xB5050000 and lo & 1
    assert hi == (1 << k) - 1
    assert (lo * lo).bit_length() == 2 * k        # the smallest candidates still give 2k bits


def test_rsa_prime_overflowing_k_bits_is_dropped():
    from ctpm.crypto.keys import _rsa_prime

    class FirstAllOnes:          # the first candidate is 2^k - 1: its next prime has k+1 bits
        def __init__(self):
            self.reads, self.rest = 0, drbg()

        def read(self, n):
            self.reads += 1
            return b"\xff" * n if self.reads == 1 else self.rest.read(n)

    s = FirstAllOnes()
    p = _rsa_prime(s, 256, 65537)
    assert p.bit_length() == 256 and s.reads == 2 and gmpy2.next_prime((1 << 256) - 2) > 1 << 256


def test_rsa_from_entropy_stream():
    key = rsa_from_stream(EntropyStream(os.urandom), 1024)
    check_rsa(key, 1024)
    assert rsa_from_stream(EntropyStream(os.urandom), 1024) != key


def _time(fn, count):
    times = []
    for i in range(count):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    return statistics.mean(times), max(times)


def test_rsa_timing(capsys):
    seeds = [hashlib.sha256(bytes([i])).digest() for i in range(20)]
    mean2, max2 = _time(lambda i: rsa_from_stream(drbg(seed=seeds[i]), 2048), 20)
    mean3, max3 = _time(lambda i: rsa_from_stream(drbg(seed=seeds[i]), 3072), 8)
    mean_e, max_e = _time(lambda i: ecc_private_key(
        P256, ecc_private_from_stream(drbg(seed=seeds[i]), P256)), 20)
    with capsys.disabled():
        print(f"\nRSA-2048: mean {mean2 * 1e3:.1f} ms, max {max2 * 1e3:.1f} ms (20 keys); "
              f"RSA-3072: mean {mean3 * 1e3:.1f} ms, max {max3 * 1e3:.1f} ms (8 keys); "
              f"P-256 key: mean {mean_e * 1e3:.3f} ms")
    assert mean2 < 1.0


# ----------------------------------------------------------------------------------- ECC

# Field prime p and coefficient b (a = -3) of the NIST curves, for an on-curve check that does
# not go through OpenSSL; G's x to check the orders in ctpm.crypto.keys.
CURVE_PB = {
    P256: (2**256 - 2**224 + 2**192 + 2**96 - 1,
           0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B,
           0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296),
    P384: (2**384 - 2**128 - 2**96 + 2**32 - 1,
           int("B3312FA7E23EE7E4988E056BE3F82D19181D9C6EFE8141120314088F5013875A"
               "C656398D8A2ED19D2A85C8EDD3EC2AEF", 16),
           int("AA87CA22BE8B05378EB1C71EF320AD746E1D3B628BA79B9859F741E082542A38"
               "5502F25DBF55296C3A545E3872760AB7", 16)),
    P521: (2**521 - 1,
           int("0051953EB9618E1C9A1F929A21A0B68540EEA2DA725B99B315F3B8B489918EF1"
               "09E156193951EC7E937B1652C0BD3BB1BF073573DF883D2C34F1EF451FD46B50"
               "3F00", 16),
           int("00C6858E06B70404E9CD9E3ECB662395B4429C648139053FB521F828AF606B4D"
               "3DBAA14B5E77EFE75928FE1DC127A2FFA8DE3348B3C1856A429BF97E7E31C2E5"
               "BD66", 16)),
}


def on_curve(curve, x, y):
    p, b, _ = CURVE_PB[curve]
    return 0 <= x < p and 0 <= y < p and (y * y - (x * x * x - 3 * x + b)) % p == 0


@pytest.mark.parametrize("curve,size,nbytes", [(P256, 32, 40), (P384, 48, 56), (P521, 66, 74)])
def test_ecc_keys(curve, size, nbytes):
    order = ECC_CURVES[curve].order
    assert ecc_coordinate_size(curve) == size
    for i in range(20):
        s = Counting(drbg(context=bytes([i])))
        d = ecc_private_from_stream(s, curve)
        assert s.taken == nbytes                 # one read: ceil(bits(n)/8) + 8 bytes
        assert 1 <= d < order
        # FIPS 186-4 B.4.1 from the same bytes, computed here
        c = int.from_bytes(drbg(context=bytes([i])).read(nbytes), "big")
        assert d == c % (order - 1) + 1
        key = ecc_private_key(curve, d)
        assert ecc_curve_of(key) == curve and ecc_private_value(key) == (curve, d)
        x, y = ecc_public_xy(key)
        assert len(x) == len(y) == size and ecc_public_xy(key.public_key()) == (x, y)
        assert on_curve(curve, int.from_bytes(x, "big"), int.from_bytes(y, "big"))
        pub = ecc_public_key(curve, x, y)
        assert pub.public_numbers() == key.public_key().public_numbers()
        assert len(ecc_private_bytes(curve, d)) == size
        assert int.from_bytes(ecc_private_bytes(curve, d), "big") == d
    sig = key.sign(b"ctpm", ec.ECDSA(hashes.SHA256()))
    ecc_public_key(curve, int.from_bytes(x, "big"), int.from_bytes(y, "big")).verify(
        sig, b"ctpm", ec.ECDSA(hashes.SHA256()))


@pytest.mark.parametrize("curve", [P256, P384, P521])
def test_ecc_extremes_and_orders(curve):
    order = ECC_CURVES[curve].order
    assert ecc_private_from_stream(Constant(0), curve) == 1
    assert 1 <= ecc_private_from_stream(Constant(0xFF), curve) < order
    # (n-1)G = -G: same x as G, so n is the order of G (n is prime).
    gx = CURVE_PB[curve][2]
    x, y = ecc_public_xy(ecc_private_key(curve, order - 1))
    assert int.from_bytes(x, "big") == gx
    assert int.from_bytes(ecc_public_xy(ecc_private_key(curve, 1))[0], "big") == gx
    with pytest.raises(ValueError):
        ecc_private_key(curve, order)
    with pytest.raises(ValueError):
        ecc_private_key(curve, 0)
    with pytest.raises(ValueError):       # off the curve: the engine's TPM_RC_ECC_POINT
        ecc_public_key(curve, gx, 1)


def test_ecc_deterministic_and_unsupported():
    a = ecc_private_from_stream(drbg(), P256)
    assert ecc_private_from_stream(drbg(), P256) == a
    assert ecc_private_from_stream(drbg(seed=SEED[::-1]), P256) != a
    assert ecc_private_from_stream(drbg(), P384) != a
    assert 0 < ecc_private_from_stream(drbg(), TPM_ECC_CURVE.BN_P256) < ECC_CURVES[
        TPM_ECC_CURVE.BN_P256].order
    assert 0 < ecc_private_from_stream(drbg(), TPM_ECC_CURVE.SM2_P256) < ECC_CURVES[
        TPM_ECC_CURVE.SM2_P256].order
    for curve in (TPM_ECC_CURVE.BN_P638, TPM_ECC_CURVE.NIST_P192, 0x99):
        with pytest.raises(ValueError):
            ecc_private_from_stream(drbg(), curve)
    with pytest.raises(ValueError):
        ecc_curve_of(ec.generate_private_key(ec.SECP256K1()))


def test_next_prime_in_short_steps_finds_gmps_prime():
    """keys.next_prime (sieve + BPSW in short GMP calls, so a worker thread lets the event
    loop run) must give exactly GMP's next_prime: primary keys depend on it."""
    import os

    import gmpy2

    from ctpm.crypto.keys import next_prime

    starts = list(range(0, 2000)) + [(1 << 28) + i for i in range(-50, 2000)]
    starts += [int.from_bytes(os.urandom(n), "big") for n in (8, 32, 64, 128, 192) for _ in range(8)]
    for x in starts:
        assert next_prime(x) == gmpy2.next_prime(x), x
