"""Point arithmetic on the NIST prime curves, for what `cryptography` does not expose.

TPM2_ECDH_ZGen and ECDH_KeyGen return the whole point [d]Q (Part 3 §14.4-§14.5), and
ECSCHNORR verification needs [s]G - [r]Q (Part 1 / the reference's
TpmEcc_ValidateSignatureEcSchnorr). `cryptography` gives [k]G with both coordinates
(`derive_private_key`) but [k]Q only as an x-coordinate (ECDH). `mul` recovers y: of the two
square roots, the right one is the one for which (x, y) + Q has the x-coordinate of
[k + 1]Q - a second ECDH. The scalar multiplications stay in OpenSSL (constant time); Python
does one square root and one point addition on public values.

Points are affine `(x, y)` tuples of ints; `None` is the point at infinity. Every curve here
has prime order n and a field prime p = 3 (mod 4).

TPM_ECC_BN_P256 (the Barreto-Naehrig curve y^2 = x^3 + 3 of the ECDAA schemes, parameters
from the reference's EccConstantData.inl) is unknown to OpenSSL: its `cls` is None and its
point multiplications run here in Python with GMP integers (Jacobian coordinates, a
Montgomery ladder - the same sequence of operations for every scalar of a size, though the
integer arithmetic is not constant time; about 2 ms a multiplication). That curve is for
the anonymous schemes; its keys are less protected from timing than the NIST curves' keys.

TPM_ECC_SM2_P256 (GM/T 0003.5-2012's recommended curve, a = p - 3; the reference's
EccConstantData) is not in `cryptography` either and runs on the same Python arithmetic,
with the same caveat.

gmpy2 is imported where it is used, not with the module: its import costs ~30 ms (it reads
its package metadata with importlib.metadata), and `crypto.keys` and every engine start
import this module.
"""
import types
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric import ec

from ..wire.constants import TPM_ECC_CURVE


class Curve(NamedTuple):
    cls: type          # cryptography curve class (None: Python arithmetic, BN/SM2_P256)
    p: int             # field prime
    a: int
    b: int
    n: int             # order of G
    gx: int
    gy: int
    size: int          # bytes in a coordinate (and in n)


def _h(s: str) -> int:
    return int(s.replace(" ", ""), 16)


CURVES = types.MappingProxyType({
    TPM_ECC_CURVE.NIST_P256: Curve(
        ec.SECP256R1,
        p=_h("FFFFFFFF 00000001 00000000 00000000 00000000 FFFFFFFF FFFFFFFF FFFFFFFF"),
        a=_h("FFFFFFFF 00000001 00000000 00000000 00000000 FFFFFFFF FFFFFFFF FFFFFFFC"),
        b=_h("5AC635D8 AA3A93E7 B3EBBD55 769886BC 651D06B0 CC53B0F6 3BCE3C3E 27D2604B"),
        n=_h("FFFFFFFF 00000000 FFFFFFFF FFFFFFFF BCE6FAAD A7179E84 F3B9CAC2 FC632551"),
        gx=_h("6B17D1F2 E12C4247 F8BCE6E5 63A440F2 77037D81 2DEB33A0 F4A13945 D898C296"),
        gy=_h("4FE342E2 FE1A7F9B 8EE7EB4A 7C0F9E16 2BCE3357 6B315ECE CBB64068 37BF51F5"),
        size=32),
    TPM_ECC_CURVE.NIST_P384: Curve(
        ec.SECP384R1,
        p=_h("FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFE"
             "FFFFFFFF 00000000 00000000 FFFFFFFF"),
        a=_h("FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFE"
             "FFFFFFFF 00000000 00000000 FFFFFFFC"),
        b=_h("B3312FA7 E23EE7E4 988E056B E3F82D19 181D9C6E FE814112 0314088F 5013875A"
             "C656398D 8A2ED19D 2A85C8ED D3EC2AEF"),
        n=_h("FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF C7634D81 F4372DDF"
             "581A0DB2 48B0A77A ECEC196A CCC52973"),
        gx=_h("AA87CA22 BE8B0537 8EB1C71E F320AD74 6E1D3B62 8BA79B98 59F741E0 82542A38"
              "5502F25D BF55296C 3A545E38 72760AB7"),
        gy=_h("3617DE4A 96262C6F 5D9E98BF 9292DC29 F8F41DBD 289A147C E9DA3113 B5F0B8C0"
              "0A60B1CE 1D7E819D 7A431D7C 90EA0E5F"),
        size=48),
    TPM_ECC_CURVE.NIST_P521: Curve(
        ec.SECP521R1,
        p=(1 << 521) - 1,
        a=(1 << 521) - 4,
        b=_h("0051 953EB961 8E1C9A1F 929A21A0 B68540EE A2DA725B 99B315F3 B8B48991 8EF109E1"
             "56193951 EC7E937B 1652C0BD 3BB1BF07 3573DF88 3D2C34F1 EF451FD4 6B503F00"),
        n=_h("01FF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFA"
             "51868783 BF2F966B 7FCC0148 F709A5D0 3BB5C9B8 899C47AE BB6FB71E 91386409"),
        gx=_h("00C6 858E06B7 0404E9CD 9E3ECB66 2395B442 9C648139 053FB521 F828AF60 6B4D3DBA"
              "A14B5E77 EFE75928 FE1DC127 A2FFA8DE 3348B3C1 856A429B F97E7E31 C2E5BD66"),
        gy=_h("0118 39296A78 9A3BC004 5C8A5FB4 2C7D1BD9 98F54449 579B4468 17AFBD17 273E662C"
              "97EE7299 5EF42640 C550B901 3FAD0761 353C7086 A272C240 88BE9476 9FD16650"),
        size=66),
    TPM_ECC_CURVE.BN_P256: Curve(
        None,
        p=_h("FFFFFFFF FFFCF0CD 46E5F25E EE71A49F 0CDC65FB 12980A82 D3292DDB AED33013"),
        a=0,
        b=3,
        n=_h("FFFFFFFF FFFCF0CD 46E5F25E EE71A49E 0CDC65FB 1299921A F62D536C D10B500D"),
        gx=1,
        gy=2,
        size=32),
    TPM_ECC_CURVE.SM2_P256: Curve(
        None,
        p=_h("FFFFFFFE FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF 00000000 FFFFFFFF FFFFFFFF"),
        a=_h("FFFFFFFE FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF 00000000 FFFFFFFF FFFFFFFC"),
        b=_h("28E9FA9E 9D9F5E34 4D5A9E4B CF6509A7 F39789F5 15AB8F92 DDBCBD41 4D940E93"),
        n=_h("FFFFFFFE FFFFFFFF FFFFFFFF FFFFFFFF 7203DF6B 21C6052B 53BBF409 39D54123"),
        gx=_h("32C4AE2C 1F198119 5F990446 6A39C994 8FE30BBF F2660BE1 715A4589 334C74C7"),
        gy=_h("BC3736A2 F4F6779C 59BDCEE3 6B692153 D0A9877C C62A4740 02DF32E5 2139F0A0"),
        size=32),
})


def curve(curve_id) -> Curve:
    try:
        return CURVES[curve_id]
    except KeyError:
        raise ValueError(f"unsupported ECC curve {curve_id!r}") from None


def on_curve(c: Curve, x: int, y: int) -> bool:
    """Is (x, y) a point of the curve (coordinates reduced, equation holds)?"""
    p = c.p
    return 0 <= x < p and 0 <= y < p and (y * y - (x * x * x + c.a * x + c.b)) % p == 0


def negate(c: Curve, pt):
    return None if pt is None else (pt[0], (-pt[1]) % c.p)


def add(c: Curve, p1, p2):
    """p1 + p2 in affine coordinates (None = infinity)."""
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    p = c.p
    x1, y1 = p1
    x2, y2 = p2
    if x1 == x2:
        if (y1 + y2) % p == 0:
            return None
        lam = (3 * x1 * x1 + c.a) * pow(2 * y1, -1, p) % p
    else:
        lam = (y2 - y1) * pow(x2 - x1, -1, p) % p
    x3 = (lam * lam - x1 - x2) % p
    return x3, (lam * (x1 - x3) - y1) % p


def _jdouble(c: Curve, pt):
    x, y, z = pt
    if not y or not z:
        return (1, 1, 0)
    p = c.p
    yy = y * y % p
    s = 4 * x * yy % p
    m = 3 * x * x % p
    if c.a:
        m = (m + c.a * pow(z, 4, p)) % p
    x3 = (m * m - 2 * s) % p
    return x3, (m * (s - x3) - 8 * yy * yy) % p, 2 * y * z % p


def _jadd(c: Curve, p1, p2):
    if not p1[2]:
        return p2
    if not p2[2]:
        return p1
    p = c.p
    x1, y1, z1 = p1
    x2, y2, z2 = p2
    z1z1 = z1 * z1 % p
    z2z2 = z2 * z2 % p
    u1 = x1 * z2z2 % p
    u2 = x2 * z1z1 % p
    s1 = y1 * z2 * z2z2 % p
    s2 = y2 * z1 * z1z1 % p
    h = (u2 - u1) % p
    r = (s2 - s1) % p
    if not h:
        return _jdouble(c, p1) if not r else (1, 1, 0)
    hh = h * h % p
    hhh = h * hh % p
    v = u1 * hh % p
    x3 = (r * r - hhh - 2 * v) % p
    return x3, (r * (v - x3) - s1 * hhh) % p, z1 * z2 * h % p


def _py_mul(c: Curve, k: int, q):
    """[k]Q in Python (Montgomery ladder over the order's bit length)."""
    k %= c.n
    if not k or q is None:
        return None
    import gmpy2
    one, zero = gmpy2.mpz(1), gmpy2.mpz(0)
    r0, r1 = (one, one, zero), (gmpy2.mpz(q[0]), gmpy2.mpz(q[1]), one)
    for i in reversed(range(c.n.bit_length())):
        if (k >> i) & 1:
            r0, r1 = _jadd(c, r0, r1), _jdouble(c, r1)
        else:
            r0, r1 = _jdouble(c, r0), _jadd(c, r0, r1)
    x, y, z = r0
    if not z:
        return None
    p = c.p
    zi = pow(int(z), -1, p)
    zi2 = zi * zi % p
    return int(x) * zi2 % p, int(y) * zi2 * zi % p


def mul_base(c: Curve, k: int):
    """[k]G for 1 <= k < n, both coordinates (OpenSSL)."""
    if c.cls is None:
        return _py_mul(c, k, (c.gx, c.gy))
    pub = ec.derive_private_key(k, c.cls()).public_key().public_numbers()
    return pub.x, pub.y


def _ecdh_x(c: Curve, k: int, peer, key=None) -> int:
    if key is None:
        key = ec.derive_private_key(k, c.cls())
    return int.from_bytes(key.exchange(ec.ECDH(), peer), "big")


def mul(c: Curve, k: int, q, peer=None, key=None):
    """[k]Q for 1 <= k < n and Q on the curve, both coordinates.

    `peer` may pass Q as a `cryptography` public key already made (it validates Q), `key`
    k as a `cryptography` private key already made (the caller vouches it is k). OpenSSL
    gives the x of [k]Q and of [k+1]Q; y is the square root that puts Q on the chord
    between them (p = 3 mod 4 on these curves).
    """
    if c.cls is None:
        return _py_mul(c, k, q)
    n, p = c.n, c.p
    k %= n
    if k == 0:
        return None
    qx, qy = q
    if k == 1:
        return q
    if k == n - 1:
        return qx, (-qy) % p
    if peer is None:
        peer = ec.EllipticCurvePublicNumbers(qx, qy, c.cls()).public_key()
    x1 = _ecdh_x(c, k, peer, key)
    x2 = _ecdh_x(c, k + 1, peer)
    import gmpy2
    mp = gmpy2.mpz(p)
    y = int(gmpy2.powmod((x1 * x1 * x1 + c.a * x1 + c.b) % p, (p + 1) // 4, mp))
    # k is not +-1, so x1 != qx: the chord through (x1, y) and Q is well defined.
    lam = (y - qy) * int(gmpy2.invert((x1 - qx) % p, mp)) % p
    if (lam * lam - x1 - qx) % p != x2:
        y = p - y
    return x1, y



def mul_add(c: Curve, u1: int, u2: int, q):
    """[u1]G + [u2]Q (either scalar may be 0 mod n)."""
    r1 = mul_base(c, u1 % c.n) if u1 % c.n else None
    r2 = mul(c, u2, q) if u2 % c.n else None
    return add(c, r1, r2)


def avf(c: Curve, x: int) -> int:
    """The associate value function of ECC MQV (SP 800-56A §5.7.2.3): with
    f = ceil(ceil(log2 n) / 2), 2^f + (x mod 2^f) - half the bits of the x-coordinate."""
    f = (c.n.bit_length() + 1) // 2
    return (x & ((1 << f) - 1)) | (1 << f)


def mqv(c: Curve, ds: int, de: int, qs_peer, qe_peer):
    """The ECC MQV primitive (SP 800-56A §5.7.2.3, the reference's C_2_2_MQV) for the party
    with static and ephemeral scalars ds, de and the peer's public points:

        implicitsig = (de + avf(Qe) * ds) mod n,  Qe = [de]G
        P = [h * implicitsig](QeB + [avf(QeB)]QsB)

    Both parties get the same P; None if it is the point at infinity (every curve here has
    cofactor h = 1)."""
    qe = mul_base(c, de)
    t = (de + avf(c, qe[0]) * ds) % c.n
    s = add(c, qe_peer, mul(c, avf(c, qe_peer[0]), qs_peer))
    if s is None or not t:
        return None
    return mul(c, t, s)


def to_bytes(v: int, size: int) -> bytes:
    return v.to_bytes(size, "big")


__all__ = ["Curve", "CURVES", "curve", "on_curve", "negate", "add", "mul_base", "mul",
           "mul_add", "avf", "mqv", "to_bytes"]
