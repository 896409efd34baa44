"""TPM_ECC_BN_P256, TPM2_Commit with ECDAA signing, TPM2_EC_Ephemeral and TPM2_ZGen_2Phase.

1. Through tpm2-pytss ESAPI against the in-process daemon: BN_P256 keys from CreatePrimary
   and Create, ECDSA on them; Commit + ECDAA signatures; EC_Ephemeral + ZGen_2Phase. The
   results are checked with the small elliptic-curve code below (not ctpm's): ECDSA verifies,
   an ECDAA signature (nonceK, s) with T = H(nonceK || digest) satisfies the relations the
   host of Part 1's ECDAA relies on, [s]G = E + [T]Q and [s]P2 = L + [T]K (E = [r]G or
   [r]P1, L = [r]P2, K = [d]P2); ZGen_2Phase's Z1, Z2 equal the other party's ECDH values.
2. Differential against swtpm (libtpms): the same keys loaded into both with LoadExternal
   give the same K of Commit, the same counters, the same Z1 of ZGen_2Phase and ECDH_ZGen
   points, the same ECC_Parameters, and the same response codes for bad input; ECDAA
   signatures made by swtpm satisfy the same relations.
"""
import hashlib
import secrets
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ctpm.testing import startup, with_esapi
from tests import weierstrass
from tests.peers import Pair, Swtpm, needs_swtpm
from tests.tpmcmd import b2, cmd, pw_session, rc, u16, u32

tpm2_pytss = pytest.importorskip("tpm2_pytss")
from tpm2_pytss import TSS2_Exception  # noqa: E402
from tpm2_pytss.constants import TPM2_ALG, TPM2_ECC, TPM2_RH, TPM2_ST, TPMA_OBJECT  # noqa: E402
from tpm2_pytss.types import (TPM2B_ECC_POINT, TPM2B_PUBLIC, TPMS_ECC_POINT,  # noqa: E402
                              TPMT_SIG_SCHEME, TPMT_TK_HASHCHECK)


# -- elliptic-curve checks outside ctpm (tests/weierstrass.py) ------------------------------

class Curve(weierstrass.Curve):
    """Adds what the ECDAA checks need."""

    def random_point_from(self, name_hash):
        """(s2, P2): P2.x = H(s2) mod p (Commit's rule), y the square root (p = 3 mod 4)."""
        while True:
            s2 = secrets.token_bytes(16)
            x = int.from_bytes(hashlib.new(name_hash, s2).digest(), "big") % self.p
            rhs = (x ** 3 + self.a * x + self.b) % self.p
            y = pow(rhs, (self.p + 1) // 4, self.p)
            if y * y % self.p == rhs:
                return s2, (x, y)


# BN_P256 (ISO/IEC 15946-5; y^2 = x^3 + 3, G = (1, 2))
BN = Curve(p=int("FFFFFFFFFFFCF0CD46E5F25EEE71A49F0CDC65FB12980A82D3292DDBAED33013", 16),
           a=0, b=3, g=(1, 2),
           n=int("FFFFFFFFFFFCF0CD46E5F25EEE71A49E0CDC65FB1299921AF62D536CD10B500D", 16),
           tpm_id=0x0010)
_g = ec.derive_private_key(1, ec.SECP256R1()).public_key().public_numbers()
P256 = Curve(p=2**256 - 2**224 + 2**192 + 2**96 - 1, a=-3,
             b=int("5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B", 16),
             g=(_g.x, _g.y),
             n=0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551, tpm_id=0x0003)


def test_bn_curve_is_what_it_claims():
    """G on the curve, [n]G = infinity, [n-1]G = -G: n is G's (prime) order."""
    import gmpy2
    assert BN.on_curve(BN.g) and gmpy2.is_prime(BN.p) and gmpy2.is_prime(BN.n)
    assert BN.mul(BN.n - 1, BN.g) == (1, BN.p - 2)
    assert BN.add(BN.mul(BN.n - 1, BN.g), BN.g) is None
    assert BN.p % 4 == 3


def ecdaa_t(hash_name, nonce_k: bytes, digest: bytes, n: int) -> int:
    return int.from_bytes(hashlib.new(hash_name, nonce_k + digest).digest(), "big") % n


def check_ecdaa(c, q, digest, nonce_k, s, e_pt, base=None, p2=None, k_pt=None, l_pt=None,
                hash_name="sha256"):
    """[s]base = E + [T]Q (base = G or P1, and Q then [d]base: pass it), and with P2:
    [s]P2 = L + [T]K."""
    t = ecdaa_t(hash_name, nonce_k, digest, c.n)
    base = base or c.g
    assert c.mul(s, base) == c.add(e_pt, c.mul(t, q))
    if p2 is not None:
        assert c.mul(s, p2) == c.add(l_pt, c.mul(t, k_pt))


# -- ESAPI --------------------------------------------------------------------------------

SIGN = (TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.SENSITIVEDATAORIGIN
        | TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT)
DECRYPT = (TPMA_OBJECT.DECRYPT | TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.SENSITIVEDATAORIGIN
           | TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT)
STORAGE = DECRYPT | TPMA_OBJECT.RESTRICTED


def bn_template(spec, attrs):
    public = TPM2B_PUBLIC.parse(spec, objectAttributes=attrs)
    public.publicArea.parameters.eccDetail.curveID = TPM2_ECC.BN_P256
    return public


def ecdaa_template(attrs=SIGN, curve=TPM2_ECC.BN_P256):
    public = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=attrs)
    d = public.publicArea.parameters.eccDetail
    d.curveID = curve
    d.scheme.scheme = TPM2_ALG.ECDAA
    d.scheme.details.ecdaa.hashAlg = TPM2_ALG.SHA256
    d.scheme.details.ecdaa.count = 0
    return public


def point_of(p2b):
    pt = p2b.point if hasattr(p2b, "point") else p2b
    return int.from_bytes(bytes(pt.x), "big"), int.from_bytes(bytes(pt.y), "big")


def ecc_point2b(c, pt):
    x, y = c.xy(pt)
    return TPM2B_ECC_POINT(TPMS_ECC_POINT(x=x, y=y))


def null_ticket():
    return TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.NULL)


def sig_scheme(alg, hash_alg=TPM2_ALG.SHA256, count=None):
    s = TPMT_SIG_SCHEME(scheme=alg)
    s.details.any.hashAlg = hash_alg
    if count is not None:
        s.details.ecdaa.count = count
    return s


def tpm_error(fn, *args):
    with pytest.raises(TSS2_Exception) as e:
        fn(*args)
    return e.value.rc


async def test_bn_p256_keys_and_ecdsa(ctpm_server):
    """CreatePrimary and Create of BN_P256 keys (a storage parent, an ECDSA child); the
    child's signature verifies with the independent code and with VerifySignature."""
    digest = hashlib.sha256(b"bn-256 ecdsa").digest()

    def scenario(esapi):
        parent, ppub, *_ = esapi.create_primary(
            None, bn_template("ecc256:null:aes128cfb", STORAGE))
        priv, pub, *_ = esapi.create(parent, None, bn_template("ecc256:ecdsa-sha256:null", SIGN))
        key = esapi.load(parent, priv, pub)
        sig = esapi.sign(key, digest, sig_scheme(TPM2_ALG.NULL, TPM2_ALG.NULL), null_ticket())
        esapi.verify_signature(key, digest, sig)
        prim, prim_pub, *_ = esapi.create_primary(
            None, bn_template("ecc256:ecdsa-sha256:null", SIGN))
        again, again_pub, *_ = esapi.create_primary(
            None, bn_template("ecc256:ecdsa-sha256:null", SIGN))
        sig2 = esapi.sign(prim, digest, sig_scheme(TPM2_ALG.NULL, TPM2_ALG.NULL), null_ticket())
        bad = bytearray(digest)
        bad[0] ^= 1
        verr = tpm_error(esapi.verify_signature, prim, bytes(bad), sig2)
        return ppub, pub, sig, prim_pub, again_pub, sig2, verr

    ppub, pub, sig, prim_pub, again_pub, sig2, verr = await with_esapi(ctpm_server, scenario)
    for p in (ppub, pub, prim_pub):
        assert p.publicArea.parameters.eccDetail.curveID == TPM2_ECC.BN_P256
        u = p.publicArea.unique.ecc
        assert len(bytes(u.x)) == len(bytes(u.y)) == 32
        assert BN.on_curve(point_of(u))
    assert point_of(prim_pub.publicArea.unique.ecc) == point_of(again_pub.publicArea.unique.ecc)
    for p, s in ((pub, sig), (prim_pub, sig2)):
        assert s.sigAlg == TPM2_ALG.ECDSA
        r = int.from_bytes(bytes(s.signature.ecdsa.signatureR), "big")
        sv = int.from_bytes(bytes(s.signature.ecdsa.signatureS), "big")
        assert BN.ecdsa_verify(point_of(p.publicArea.unique.ecc), digest, r, sv)
    assert verr & 0x7F == 0x5B      # TPM_RC_SIGNATURE (+ parameter number)


@pytest.mark.parametrize("curve", [BN, P256], ids=["bn256", "p256"])
async def test_commit_and_ecdaa_sign(ctpm_server, curve):
    """Commit (with P1 and P2, and with neither) then Sign with ECDAA and the count; the
    signature satisfies the ECDAA relations; a count signs once; the key's ECDAA scheme
    needs an explicit inScheme (the count); VerifySignature refuses ECDAA."""
    digest = hashlib.sha256(b"ecdaa").digest()
    s2, p2 = curve.random_point_from("sha256")
    p1 = curve.mul(secrets.randbelow(curve.n - 1) + 1, curve.g)

    def scenario(esapi):
        key, pub, *_ = esapi.create_primary(None, ecdaa_template(curve=curve.tpm_id))
        k, l_, e, count = esapi.commit(key, ecc_point2b(curve, p1), s2, curve.xy(p2)[1])
        sig = esapi.sign(key, digest, sig_scheme(TPM2_ALG.ECDAA, count=count), null_ticket())
        reuse = tpm_error(esapi.sign, key, digest, sig_scheme(TPM2_ALG.ECDAA, count=count),
                          null_ticket())
        _k, _l, e0, count0 = esapi.commit(key, TPM2B_ECC_POINT(), b"", b"")
        sig0 = esapi.sign(key, digest, sig_scheme(TPM2_ALG.ECDAA, count=count0), null_ticket())
        null_scheme = tpm_error(esapi.sign, key, digest, sig_scheme(TPM2_ALG.NULL, TPM2_ALG.NULL),
                                null_ticket())
        verify = tpm_error(esapi.verify_signature, key, digest, sig)
        never = tpm_error(esapi.sign, key, digest, sig_scheme(TPM2_ALG.ECDAA, count=77),
                          null_ticket())
        return (pub, k, l_, e, count, sig, reuse, _k, _l, e0, count0, sig0, null_scheme, verify,
                never)

    (pub, k, l_, e, count, sig, reuse, k0, l0, e0, count0, sig0, null_scheme, verify,
     never) = await with_esapi(ctpm_server, scenario)
    q = point_of(pub.publicArea.unique.ecc)
    assert (count, count0) == (0, 1)
    assert sig.sigAlg == TPM2_ALG.ECDAA and sig.signature.ecdaa.hash == TPM2_ALG.SHA256
    nonce_k = bytes(sig.signature.ecdaa.signatureR)
    s = int.from_bytes(bytes(sig.signature.ecdaa.signatureS), "big")
    assert len(bytes(sig.signature.ecdaa.signatureS)) == 32
    assert nonce_k[0] != 0          # nonceK in as few bytes as it needs
    # E = [r]P1; with Q = [d]G, [d]P1 is unknown, so check the P2 relation and E's form
    k_pt, l_pt, e_pt = point_of(k), point_of(l_), point_of(e)
    assert all(curve.on_curve(pt) for pt in (k_pt, l_pt, e_pt))
    t = ecdaa_t("sha256", nonce_k, digest, curve.n)
    assert curve.mul(s, p2) == curve.add(l_pt, curve.mul(t, k_pt))
    # E and L share r: E = [r]P1, L = [r]P2; s - T d = r, [s]P1 - E = [T][d]P1 ... with
    # d unknown only [s]G = [r]G + [T]Q is checkable, and that needs E = [r]G: the second
    # commitment (no P1, no P2) gives exactly that
    assert (len(bytes(k0.point.x)), len(bytes(l0.point.x))) == (0, 0)
    nonce0 = bytes(sig0.signature.ecdaa.signatureR)
    s0 = int.from_bytes(bytes(sig0.signature.ecdaa.signatureS), "big")
    check_ecdaa(curve, q, digest, nonce0, s0, point_of(e0))
    assert reuse == 0x084               # TPM_RC_VALUE: the count was spent
    assert never == 0x084
    assert null_scheme == 0x2D2       # TPM_RC_SCHEME, parameter 2
    assert verify == 0x2D2            # TPM_RC_SCHEME, parameter 2


@pytest.mark.parametrize("curve", [BN, P256], ids=["bn256", "p256"])
async def test_ec_ephemeral_and_zgen_2phase(ctpm_server, curve):
    """EC_Ephemeral gives Qe = [r]G and a count; ZGen_2Phase with that count gives
    Z1 = [dsA]QsB and Z2 = [r]QeB, equal to B's [dsB]QsA and [deB]Qe; the count works once."""
    ds_b = secrets.randbelow(curve.n - 1) + 1
    de_b = secrets.randbelow(curve.n - 1) + 1
    qs_b, qe_b = curve.mul(ds_b, curve.g), curve.mul(de_b, curve.g)

    def scenario(esapi):
        public = TPM2B_PUBLIC.parse("ecc256:ecdh-sha256:null", objectAttributes=DECRYPT)
        public.publicArea.parameters.eccDetail.curveID = curve.tpm_id
        key, pub, *_ = esapi.create_primary(None, public)
        qe, count = esapi.ec_ephemeral(curve.tpm_id)
        qe2, count2 = esapi.ec_ephemeral(curve.tpm_id)
        z1, z2 = esapi.zgen_2_phase(key, ecc_point2b(curve, qs_b), ecc_point2b(curve, qe_b),
                                    TPM2_ALG.ECDH, count)
        again = tpm_error(esapi.zgen_2_phase, key, ecc_point2b(curve, qs_b),
                          ecc_point2b(curve, qe_b), TPM2_ALG.ECDH, count)
        z1b, z2b = esapi.zgen_2_phase(key, ecc_point2b(curve, qs_b), ecc_point2b(curve, qe_b),
                                      TPM2_ALG.ECDH, count2)
        return pub, qe, count, qe2, count2, z1, z2, again, z1b, z2b

    pub, qe, count, qe2, count2, z1, z2, again, z1b, z2b = await with_esapi(
        ctpm_server, scenario)
    assert count2 == (count + 1) & 0xFFFF
    qs_a = point_of(pub.publicArea.unique.ecc)
    assert point_of(z1) == point_of(z1b) == curve.mul(ds_b, qs_a)
    assert point_of(z2) == curve.mul(de_b, point_of(qe))
    assert point_of(z2b) == curve.mul(de_b, point_of(qe2))
    assert again == 0x4C4             # TPM_RC_VALUE, parameter 4 (counter)


# -- differential against swtpm -----------------------------------------------------------

SELFTEST = cmd(0x143, b"\x01")
STARTUP = cmd(0x144, u16(0))
SHUTDOWN = cmd(0x145, u16(0))
PW = [pw_session()]
RH_NULL = 0x40000007
RETRY = 0x922       # libtpms may ask to retry (TPM_RC_RETRY)
NULL_TICKET = u16(0x8024) + u32(RH_NULL) + u16(0)
SHA256 = 0x000B
ECDAA, ECDH, ECDSA, NULL = 0x001A, 0x0019, 0x0018, 0x0010


@pytest.fixture(scope="module")
def swtpm():
    peer = Swtpm()
    yield peer
    peer.close()


def material(c, d, scheme: bytes, attrs=0x00040040):
    """LoadExternal's TPM2B_SENSITIVE and TPM2B_PUBLIC of the private scalar d."""
    x, y = c.xy(c.mul(d, c.g))
    public = (u16(0x0023) + u16(SHA256) + u32(attrs) + b2(b"") + u16(NULL) + scheme
              + u16(c.tpm_id) + u16(NULL) + b2(x) + b2(y))
    sensitive = u16(0x0023) + b2(b"") + b2(b"") + b2(d.to_bytes(c.size, "big"))
    return b2(sensitive), b2(public)


def load_external(sensitive, public):
    return cmd(0x167, sensitive + public + u32(RH_NULL))


def commit(handle, p1: bytes, s2: bytes, y2: bytes):
    return cmd(0x18B, b2(p1) + b2(s2) + b2(y2), handles=[handle], sessions=PW)


def point_bytes(c, pt):
    x, y = c.xy(pt)
    return b2(x) + b2(y)


def ecdaa_sign(handle, digest, count, hash_alg=SHA256):
    return cmd(0x15D, b2(digest) + u16(ECDAA) + u16(hash_alg) + u16(count) + NULL_TICKET,
               handles=[handle], sessions=PW)


def zgen2(handle, qs: bytes, qe: bytes, scheme: int, counter: int):
    return cmd(0x18D, b2(qs) + b2(qe) + u16(scheme) + u16(counter), handles=[handle],
               sessions=PW)


def ec_ephemeral(curve_id):
    return cmd(0x18E, u16(curve_id))


def parse_points(body: bytes, count: int):
    """count TPM2B_ECC_POINTs from the start of body; (points, rest)."""
    out = []
    for _ in range(count):
        size = struct.unpack(">H", body[:2])[0]
        inner, body = body[2:2 + size], body[2 + size:]
        xs = struct.unpack(">H", inner[:2])[0]
        x = inner[2:2 + xs]
        ys = struct.unpack(">H", inner[2 + xs:4 + xs])[0]
        y = inner[4 + xs:4 + xs + ys]
        out.append((int.from_bytes(x, "big"), int.from_bytes(y, "big")) if xs else None)
    return out, body


def response_params(rsp: bytes) -> bytes:
    """The parameter area of a response with sessions (parameterSize first)."""
    size = struct.unpack(">I", rsp[10:14])[0]
    return rsp[14:14 + size]


def handle_of(rsp):
    return struct.unpack(">I", rsp[10:14])[0]


@needs_swtpm
@pytest.mark.swtpm
def test_differential_bn_p256(swtpm):
    """ECC_Parameters, LoadExternal of a BN_P256 key, ECDH_ZGen, ECDSA across both TPMs."""
    pair = Pair(swtpm)
    pair.same(cmd(0x178, u16(BN.tpm_id)), "ECC_Parameters(BN_P256)")
    d = secrets.randbelow(BN.n - 1) + 1
    sens, pub = material(BN, d, u16(NULL), attrs=0x00020040 | 0x00040000)   # decrypt|sign
    h = handle_of(pair.same(load_external(sens, pub), "LoadExternal BN"))
    peer_pt = BN.mul(secrets.randbelow(BN.n - 1) + 1, BN.g)
    out = pair.same(cmd(0x154, b2(point_bytes(BN, peer_pt)), handles=[h], sessions=PW),
                    "ECDH_ZGen BN")
    (z,), _ = parse_points(response_params(out), 1)
    assert z == BN.mul(d, peer_pt)
    pair.same_rc(cmd(0x154, b2(b2(b"\x01") + b2(b"\x01")), handles=[h], sessions=PW),
                 "ECDH_ZGen off curve")
    # ECDSA signatures of each verify in the other and with the code above
    digest = hashlib.sha256(b"x").digest()
    sign = cmd(0x15D, b2(digest) + u16(ECDSA) + u16(SHA256) + NULL_TICKET, handles=[h],
               sessions=PW)
    for rsp in pair.run(sign):
        assert rc(rsp) == 0
        body = response_params(rsp)[4:]          # sigAlg, hash
        rs = struct.unpack(">H", body[:2])[0]
        r = int.from_bytes(body[2:2 + rs], "big")
        s = int.from_bytes(body[4 + rs:], "big")
        assert BN.ecdsa_verify(BN.mul(d, BN.g), digest, r, s)
        sig = response_params(rsp)
        pair.same(cmd(0x177, b2(digest) + sig, handles=[h]), "VerifySignature BN ECDSA")


@needs_swtpm
@pytest.mark.swtpm
@pytest.mark.parametrize("curve", [BN, P256], ids=["bn256", "p256"])
def test_differential_commit_ecdaa(swtpm, curve):
    """Commit with the same key in both: the same K, the same counters, ECDAA signatures
    from both satisfying the relations, the same codes for the same bad inputs."""
    pair = Pair(swtpm)
    d = secrets.randbelow(curve.n - 1) + 1
    sens, pub = material(curve, d, u16(ECDAA) + u16(SHA256) + u16(0))
    h = handle_of(pair.same(load_external(sens, pub), "LoadExternal ECDAA key"))
    digest = hashlib.sha256(b"ecdaa differential").digest()
    s2, p2 = curve.random_point_from("sha256")
    y2 = curve.xy(p2)[1]
    p1 = curve.mul(secrets.randbelow(curve.n - 1) + 1, curve.g)
    ours, theirs = pair.run(commit(h, point_bytes(curve, p1), s2, y2))
    assert rc(ours) == rc(theirs) == 0
    results = []
    for rsp in (ours, theirs):
        (k_pt, l_pt, e_pt), rest = parse_points(response_params(rsp), 3)
        assert k_pt == curve.mul(d, p2)
        results.append((k_pt, l_pt, e_pt, struct.unpack(">H", rest)[0]))
    assert results[0][0] == results[1][0] and results[0][3] == results[1][3] == 0
    # ECDAA signatures: each TPM's with its own r
    for (k_pt, l_pt, e_pt, count), execute in zip(results, (pair.ctpm.execute,
                                                            pair.execute_peer)):
        rsp = execute(ecdaa_sign(h, digest, count))
        assert rc(rsp) == 0, hex(rc(rsp))
        body = response_params(rsp)
        assert struct.unpack(">HH", body[:4]) == (ECDAA, SHA256)
        ns = struct.unpack(">H", body[4:6])[0]
        nonce_k = body[6:6 + ns]
        s = int.from_bytes(body[8 + ns:], "big")
        assert len(body) - 8 - ns == curve.size
        t = ecdaa_t("sha256", nonce_k, digest, curve.n)
        assert curve.mul(s, p2) == curve.add(l_pt, curve.mul(t, k_pt))
        assert curve.mul(s, p1) == curve.add(e_pt, curve.mul(t, curve.mul(d, p1)))
        r = (s - t * d) % curve.n                 # what r must have been
        assert e_pt == curve.mul(r, p1) and l_pt == curve.mul(r, p2)
        # the count is spent; VerifySignature refuses ECDAA
        pair_rsp = execute(ecdaa_sign(h, digest, count))
        assert rc(pair_rsp) != 0
        sig = body
        verify = execute(cmd(0x177, b2(digest) + sig, handles=[h]))
        results.append((rc(pair_rsp), rc(verify)))
    assert results[2] == results[3], [hex(v) for v in results[2] + results[3]]
    # a commitment without points: E = [r]G, counters 1 in both
    ours, theirs = pair.run(commit(h, b"\0\0\0\0", b"", b""))
    for rsp in (ours, theirs):
        assert rc(rsp) == 0
        (k_pt, l_pt, e_pt), rest = parse_points(response_params(rsp), 3)
        assert k_pt is None and l_pt is None and struct.unpack(">H", rest)[0] == 1
        assert curve.on_curve(e_pt)
    # bad input, the same codes
    off = point_bytes(curve, (1, 1)) if curve is not BN else b2(b"\x02") + b2(b"\x02")
    pair.same_rc(commit(h, off, b"", b""), "P1 off the curve")
    pair.same_rc(commit(h, b"\0\0\0\0", s2, b""), "s2 without y2")
    pair.same_rc(commit(h, b"\0\0\0\0", b"", y2), "y2 without s2")
    bad_y = ((p2[1] + 1) % curve.p).to_bytes(curve.size, "big")
    pair.same_rc(commit(h, b"\0\0\0\0", s2, bad_y), "P2 off the curve")
    pair.same_rc(ecdaa_sign(h, digest, 5), "never committed")
    pair.same_rc(ecdaa_sign(h, digest, 1 + 128), "count of another epoch")
    pair.same_rc(ecdaa_sign(h, digest[:20], 1), "digest size")
    pair.same_rc(cmd(0x15D, b2(digest) + u16(NULL) + NULL_TICKET, handles=[h], sessions=PW),
                 "split scheme without count")
    # an ECDSA key cannot Commit
    sens2, pub2 = material(curve, d, u16(ECDSA) + u16(SHA256))
    h2 = handle_of(pair.same(load_external(sens2, pub2), "LoadExternal ECDSA"))
    pair.same_rc(commit(h2, b"\0\0\0\0", b"", b""), "not an anonymous scheme")
    pair.same_rc(ecdaa_sign(h2, digest, 1), "ECDAA with an ECDSA key")
    # the count 1 still signs (after all those failures)
    for execute in (pair.ctpm.execute, pair.execute_peer):
        assert rc(execute(ecdaa_sign(h, digest, 1))) == 0


@needs_swtpm
@pytest.mark.swtpm
@pytest.mark.parametrize("curve", [BN, P256], ids=["bn256", "p256"])
def test_differential_ec_ephemeral_zgen_2phase(swtpm, curve):
    """EC_Ephemeral counters agree; ZGen_2Phase with the same key gives the same Z1 in both
    and each TPM's Z2 matches its own Qe; the same codes for bad input."""
    pair = Pair(swtpm)
    d = secrets.randbelow(curve.n - 1) + 1
    sens, pub = material(curve, d, u16(ECDH) + u16(SHA256), attrs=0x00020040)   # decrypt
    h = handle_of(pair.same(load_external(sens, pub), "LoadExternal ECDH key"))
    ds_b = secrets.randbelow(curve.n - 1) + 1
    de_b = secrets.randbelow(curve.n - 1) + 1
    qs_b, qe_b = curve.mul(ds_b, curve.g), curve.mul(de_b, curve.g)
    ours, theirs = pair.run(ec_ephemeral(curve.tpm_id))
    qes = []
    for rsp in (ours, theirs):
        assert rc(rsp) == 0
        (qe,), rest = parse_points(rsp[10:], 1)
        assert curve.on_curve(qe) and struct.unpack(">H", rest)[0] == 0
        qes.append(qe)
    ours, theirs = pair.run(zgen2(h, point_bytes(curve, qs_b), point_bytes(curve, qe_b), ECDH, 0))
    zs = []
    for rsp, qe in zip((ours, theirs), qes):
        assert rc(rsp) == 0
        (z1, z2), _ = parse_points(response_params(rsp), 2)
        assert z1 == curve.mul(ds_b, curve.mul(d, curve.g)) == curve.mul(d, qs_b)
        assert z2 == curve.mul(de_b, qe)
        zs.append(response_params(rsp)[:2 + 4 + 2 * curve.size])
    assert zs[0] == zs[1]                  # Z1 byte for byte
    qs, qe = point_bytes(curve, qs_b), point_bytes(curve, qe_b)
    pair.same_rc(zgen2(h, qs, qe, ECDH, 0), "count used")
    pair.same_rc(zgen2(h, qs, qe, ECDH, 9), "count never committed")
    pair.same_rc(zgen2(h, b2(b"\x01") + b2(b"\x01"), qe, ECDH, 0), "QsB off curve")
    pair.same_rc(zgen2(h, qs, b2(b"\x01") + b2(b"\x01"), ECDH, 0), "QeB off curve")
    pair.same_rc(zgen2(h, qs, qe, NULL, 0), "scheme NULL")
    pair.same_rc(zgen2(h, qs, qe, ECDSA, 0), "scheme ECDSA")
    pair.same_rc(zgen2(h, qs, qe, 0x001D, 0), "scheme ECMQV")
    pair.same_rc(ec_ephemeral(0x0099), "EC_Ephemeral of no curve")
    # a signing key (not decrypt)
    sens2, pub2 = material(curve, d, u16(ECDSA) + u16(SHA256))
    h2 = handle_of(pair.same(load_external(sens2, pub2), "LoadExternal ECDSA"))
    pair.same_rc(zgen2(h2, qs, qe, ECDH, 1), "not a decryption key")
    # a NULL-scheme decryption key takes the input scheme
    sens3, pub3 = material(curve, d, u16(NULL), attrs=0x00020040)
    h3 = handle_of(pair.same(load_external(sens3, pub3), "LoadExternal NULL scheme"))
    ours, theirs = pair.run(ec_ephemeral(curve.tpm_id))
    assert rc(ours) == rc(theirs) == 0 and ours[-2:] == theirs[-2:] == u16(1)
    ours, theirs = pair.run(zgen2(h3, qs, qe, ECDH, 1))
    assert rc(ours) == rc(theirs) == 0
    assert response_params(ours)[:70] == response_params(theirs)[:70]


@needs_swtpm
@pytest.mark.swtpm
def test_commitments_survive_shutdown_state(swtpm, tmp_path):
    """The commit counter, array and nonce are state-reset data: a commitment made before
    Shutdown(STATE) still signs after Resume or a TPM Restart - also when the daemon is
    restarted on its state directory in between - and the counter goes on; after a TPM
    Reset the count is refused. The same answers from swtpm."""
    from ctpm.engine.tpm import Tpm
    from ctpm.platform import Platform
    from ctpm.state.store import DirStore

    def restarted():
        return Tpm.manufacture(Platform(DirStore(tmp_path)), seed=b"ecdaa-restart")

    pair = Pair(swtpm, startup(restarted()))
    curve = P256
    d = secrets.randbelow(curve.n - 1) + 1
    sens, pub = material(curve, d, u16(ECDAA) + u16(SHA256) + u16(0))
    digest = hashlib.sha256(b"kept commitment").digest()
    transient = 0x80000000

    def cycle(shutdown_type, startup_type):
        pair.same_rc(cmd(0x145, u16(shutdown_type)), "Shutdown")
        pair.ctpm.power_off()
        pair.ctpm = restarted()                       # a new process on the same state
        pair.peer.init()
        pair.same_rc(cmd(0x144, u16(startup_type)), "Startup")

    counts = []
    for shutdown_type, startup_type, signs in ((1, 1, True), (1, 0, True), (0, 0, False)):
        h = handle_of(pair.same(load_external(sens, pub), "LoadExternal"))
        assert h == transient
        ours, theirs = pair.run(commit(h, b"\0\0\0\0", b"", b""))
        assert rc(ours) == rc(theirs) == 0
        count = struct.unpack(">H", response_params(ours)[-2:])[0]
        assert count == struct.unpack(">H", response_params(theirs)[-2:])[0]
        counts.append(count)
        if shutdown_type == 1:        # objects do not survive Shutdown(STATE)+Startup(CLEAR)
            pair.same_rc(cmd(0x165, u32(h)), "FlushContext")
        cycle(shutdown_type, startup_type)
        if startup_type == 1:
            pair.same_rc(cmd(0x165, u32(h)), "FlushContext after Resume")
        h = handle_of(pair.same(load_external(sens, pub), "LoadExternal again"))
        ours, theirs = pair.same_rc(ecdaa_sign(h, digest, count), "sign with the old count")
        assert (rc(ours) == 0) == signs, hex(rc(ours))
        pair.same_rc(cmd(0x165, u32(h)), "FlushContext")
    assert counts == [0, 1, 2]
