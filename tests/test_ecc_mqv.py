"""ECMQV in TPM2_ZGen_2Phase (Part 3 §14.7; SP 800-56A §5.7.2.3 "ECC MQV primitive", the
reference's C_2_2_MQV).

The Z of each TPM is checked against an MQV computed here (tests/weierstrass.py, the avf of
SP 800-56A written from its definition), with the test as party B; two ctpm instances agree
on Z as the two parties; outZ2 is empty (CryptEcc2PhaseKeyExchange). Error cases follow the
reference and are compared with swtpm - but only those refused before the computation:
libtpms' C_2_2_MQV never loads the curve order into its avf (bnN stays 0), divides by it and
enters failure mode, so swtpm cannot be the reference for an MQV result.
"""
import secrets
import struct

import pytest

from ctpm.testing import manufacture_test_tpm, startup, with_esapi
from tests.peers import Pair, Swtpm, needs_swtpm
from tests.test_ecdaa import (BN, P256, ec_ephemeral, handle_of, load_external, material,
                              parse_points, point_bytes, response_params, zgen2)
from tests.test_sm import SM2
from tests.tpmcmd import b2, cmd, params, pw_session, rc, u16, u32

SHA256, NULL, ECDH, ECDSA, ECMQV = 0x000B, 0x0010, 0x0019, 0x0018, 0x001D
DECRYPT_ATTRS = 0x00020040              # decrypt | userWithAuth
RC_SCHEME_P3, RC_ECC_POINT_P1, RC_ECC_POINT_P2 = 0x3D2, 0x1E7, 0x2E7
RC_VALUE_P4, RC_ATTRIBUTES_H1, RC_SCHEME_P2 = 0x4C4, 0x182, 0x2D2


def avf(c, x):
    """SP 800-56A: xQm = x mod 2^ceil(f/2), avf = xQm + 2^ceil(f/2), f = ceil(log2 n)."""
    half = -(-(c.n - 1).bit_length() // 2)
    return x % (1 << half) + (1 << half)


def mqv(c, ds, de, qs_peer, qe_peer):
    """Z (the point) of the party with static/ephemeral scalars ds, de (cofactor 1)."""
    qe = c.mul(de, c.g)
    implicit_sig = (de + avf(c, qe[0]) * ds) % c.n
    return c.mul(implicit_sig, c.add(qe_peer, c.mul(avf(c, qe_peer[0]), qs_peer)))


def tpm_with_key(seed, c, d, scheme=u16(ECMQV) + u16(SHA256), attrs=DECRYPT_ATTRS):
    tpm = startup(manufacture_test_tpm(seed))
    sens, pub = material(c, d, scheme, attrs=attrs)
    r = tpm.execute(load_external(sens, pub))
    assert rc(r) == 0, hex(rc(r))
    return tpm, handle_of(r)


def ephemeral(tpm, c):
    r = tpm.execute(ec_ephemeral(c.tpm_id))
    assert rc(r) == 0, hex(rc(r))
    (q,), rest = parse_points(r[10:], 1)
    return q, struct.unpack(">H", rest)[0]


def zgen(tpm, h, qs, qe, counter, scheme=ECMQV, c=None):
    r = tpm.execute(zgen2(h, point_bytes(c, qs), point_bytes(c, qe), scheme, counter))
    assert rc(r) == 0, hex(rc(r))
    body = response_params(r)
    (z1, z2), rest = parse_points(body, 2)
    assert rest == b"" and body.endswith(u16(4) + u16(0) + u16(0))     # outZ2: x, y empty
    return z1


@pytest.mark.parametrize("c", [P256, BN, SM2], ids=["p256", "bn256", "sm2"])
def test_mqv_matches_the_formula_and_both_parties_agree(c):
    """ctpm as party A against the test as party B (its Z from the formula), then two ctpm
    instances as A and B: the same point on both sides, a count used once."""
    ds_a, ds_b = (secrets.randbelow(c.n - 1) + 1 for _ in range(2))
    qs_a, qs_b = c.mul(ds_a, c.g), c.mul(ds_b, c.g)
    a, ha = tpm_with_key(b"mqv party A", c, ds_a)
    qe_a, count = ephemeral(a, c)
    de_b = secrets.randbelow(c.n - 1) + 1
    qe_b = c.mul(de_b, c.g)
    z = zgen(a, ha, qs_b, qe_b, count, c=c)
    assert z == mqv(c, ds_b, de_b, qs_a, qe_a) and c.on_curve(z)
    again = a.execute(zgen2(ha, point_bytes(c, qs_b), point_bytes(c, qe_b), ECMQV, count))
    assert rc(again) == RC_VALUE_P4                     # the count is spent
    # two TPMs
    b, hb = tpm_with_key(b"mqv party B", c, ds_b, scheme=u16(NULL))   # takes inScheme
    qe_a, count_a = ephemeral(a, c)
    qe_b, count_b = ephemeral(b, c)
    z_a = zgen(a, ha, qs_b, qe_b, count_a, c=c)
    z_b = zgen(b, hb, qs_a, qe_a, count_b, c=c)
    assert z_a == z_b


def test_mqv_errors():
    """The reference's codes: a key whose scheme is ECDH asked for ECMQV and the reverse
    (TPM_RC_SCHEME, inScheme), NULL on both (SCHEME); points off keyA's curve - one of
    another curve - (TPM_RC_ECC_POINT, inQsB/inQeB); an uncommitted count (TPM_RC_VALUE,
    counter); a signing or restricted key (TPM_RC_ATTRIBUTES, keyA); ECMQV as a signing
    key's scheme (TPM_RC_SCHEME at LoadExternal) and in TPM2_Sign (TPMI_ALG_SIG_SCHEME)."""
    c = P256
    d = secrets.randbelow(c.n - 1) + 1
    tpm, h_mqv = tpm_with_key(b"mqv errors", c, d)
    sens, pub = material(c, d, u16(ECDH) + u16(SHA256), attrs=DECRYPT_ATTRS)
    h_ecdh = handle_of(tpm.execute(load_external(sens, pub)))
    sens, pub = material(c, d, u16(NULL), attrs=DECRYPT_ATTRS)
    h_null = handle_of(tpm.execute(load_external(sens, pub)))
    qs, qe = point_bytes(c, c.mul(5, c.g)), point_bytes(c, c.mul(7, c.g))
    _q, count = ephemeral(tpm, c)
    off = b2(b"\x01") + b2(b"\x01")
    other = point_bytes(SM2, SM2.g)                  # a point, but of another curve
    cases = [
        (zgen2(h_ecdh, qs, qe, ECMQV, count), RC_SCHEME_P3),
        (zgen2(h_mqv, qs, qe, ECDH, count), RC_SCHEME_P3),
        (zgen2(h_null, qs, qe, NULL, count), RC_SCHEME_P3),
        (zgen2(h_mqv, off, qe, ECMQV, count), RC_ECC_POINT_P1),
        (zgen2(h_mqv, qs, off, ECMQV, count), RC_ECC_POINT_P2),
        (zgen2(h_mqv, other, qe, ECMQV, count), RC_ECC_POINT_P1),
        (zgen2(h_mqv, qs, qe, ECMQV, count + 1), RC_VALUE_P4),
        (zgen2(h_mqv, qs, qe, 0x001B, count), RC_SCHEME_P3),        # SM2: not here
    ]
    for command, expected in cases:
        assert hex(rc(tpm.execute(command))) == hex(expected)
    sens, pub = material(c, d, u16(ECMQV) + u16(SHA256), attrs=0x00040040)   # sign key
    assert rc(tpm.execute(load_external(sens, pub))) == 0x2D2    # SCHEME, inPublic
    sens, pub = material(c, d, u16(ECDSA) + u16(SHA256), attrs=0x00040040)
    h_sign = handle_of(tpm.execute(load_external(sens, pub)))
    assert rc(tpm.execute(zgen2(h_sign, qs, qe, ECMQV, count))) == RC_ATTRIBUTES_H1
    sign = cmd(0x15D, b2(bytes(32)) + u16(ECMQV) + u16(SHA256) + u16(0x8024) + u32(0x40000007)
               + u16(0), handles=[h_sign], sessions=[pw_session()])
    assert rc(tpm.execute(sign)) == RC_SCHEME_P2
    # the commitment survived all of that
    assert zgen(tpm, h_mqv, c.mul(5, c.g), c.mul(7, c.g), count, c=c) is not None


def test_mqv_is_advertised_and_accepted():
    """GetCapability(ALGS) reports ECMQV as asymmetric | method, as libtpms does (0x401);
    TestParms and CreatePrimary take an ECMQV decryption key."""
    tpm = startup(manufacture_test_tpm(b"mqv caps"))
    r = tpm.execute(cmd(0x17A, u32(0) + u32(ECMQV) + u32(1)))
    assert rc(r) == 0 and params(r)[5:] == u32(1) + u16(ECMQV) + u32(0x401)
    parms = u16(0x0023) + u16(NULL) + u16(ECMQV) + u16(SHA256) + u16(0x0003) + u16(NULL)
    assert rc(tpm.execute(cmd(0x18A, parms))) == 0
    tmpl = b2(u16(0x0023) + u16(SHA256) + u32(0x00020072) + b2(b"") + parms[2:] + b2(b"")
              + b2(b""))
    r = tpm.execute(cmd(0x131, b2(b2(b"") + b2(b"")) + tmpl + b2(b"") + u32(0),
                        handles=[0x40000001], sessions=[pw_session()]))
    assert rc(r) == 0, hex(rc(r))


@needs_swtpm
@pytest.mark.swtpm
def test_mqv_refusals_as_swtpm():
    """The refusals that come before the computation, against swtpm: LoadExternal of ECMQV
    keys, GetCapability of ECMQV, TestParms, and ZGen_2Phase's scheme, point, count and
    attribute checks give the same codes. (A successful ECMQV exchange sends libtpms into
    failure mode, see the module docstring: it is not sent.)"""
    peer = Swtpm()
    try:
        pair = Pair(peer)
        c = P256
        d = secrets.randbelow(c.n - 1) + 1
        pair.same(cmd(0x17A, u32(0) + u32(ECMQV) + u32(1)), "GetCapability ECMQV")
        parms = u16(0x0023) + u16(NULL) + u16(ECMQV) + u16(SHA256) + u16(0x0003) + u16(NULL)
        pair.same(cmd(0x18A, parms), "TestParms ECMQV")
        sens, pub = material(c, d, u16(ECMQV) + u16(SHA256), attrs=DECRYPT_ATTRS)
        h_mqv = handle_of(pair.same(load_external(sens, pub), "LoadExternal ECMQV key"))
        sens, pub = material(c, d, u16(ECDH) + u16(SHA256), attrs=DECRYPT_ATTRS)
        h_ecdh = handle_of(pair.same(load_external(sens, pub), "LoadExternal ECDH key"))
        sens, pub = material(c, d, u16(ECMQV) + u16(SHA256), attrs=0x00040040)
        pair.same_rc(load_external(sens, pub), "LoadExternal ECMQV signing key")
        sens, pub = material(c, d, u16(ECDSA) + u16(SHA256), attrs=0x00040040)
        h_sign = handle_of(pair.same(load_external(sens, pub), "LoadExternal ECDSA key"))
        ours, theirs = pair.run(ec_ephemeral(c.tpm_id))
        assert rc(ours) == rc(theirs) == 0 and ours[-2:] == theirs[-2:]
        count = struct.unpack(">H", ours[-2:])[0]
        qs, qe = point_bytes(c, c.mul(5, c.g)), point_bytes(c, c.mul(7, c.g))
        off = b2(b"\x01") + b2(b"\x01")
        for command, what in (
                (zgen2(h_ecdh, qs, qe, ECMQV, count), "ECDH key, ECMQV asked"),
                (zgen2(h_mqv, qs, qe, ECDH, count), "ECMQV key, ECDH asked"),
                (zgen2(h_mqv, qs, qe, NULL, count + 1), "NULL asked, key ECMQV, no count"),
                (zgen2(h_mqv, off, qe, ECMQV, count), "QsB off the curve"),
                (zgen2(h_mqv, qs, off, ECMQV, count), "QeB off the curve"),
                (zgen2(h_mqv, point_bytes(SM2, SM2.g), qe, ECMQV, count), "QsB of SM2"),
                (zgen2(h_mqv, qs, qe, ECMQV, count + 1), "count not committed"),
                (zgen2(h_sign, qs, qe, ECMQV, count), "a signing key")):
            pair.same(command, what)
        pair.same(cmd(0x143, b"\0"), "SelfTest: neither is in failure mode")
    finally:
        peer.close()


# -- tpm2-pytss ESAPI ------------------------------------------------------------------------

tpm2_pytss = pytest.importorskip("tpm2_pytss")
from tpm2_pytss.constants import TPM2_ALG, TPM2_ECC, TPMA_OBJECT  # noqa: E402
from tpm2_pytss.types import TPM2B_ECC_POINT, TPM2B_PUBLIC, TPMS_ECC_POINT  # noqa: E402


@pytest.mark.parametrize("c", [P256, SM2], ids=["p256", "sm2"])
async def test_mqv_through_esapi(ctpm_server, c):
    """tpm2-pytss: CreatePrimary of an ECMQV decryption key, EC_Ephemeral, ZGen_2Phase with
    ECMQV; Z is the test's (party B) MQV value, outZ2 is empty."""
    ds_b, de_b = (secrets.randbelow(c.n - 1) + 1 for _ in range(2))
    qs_b, qe_b = c.mul(ds_b, c.g), c.mul(de_b, c.g)

    def point2b(pt):
        x, y = c.xy(pt)
        return TPM2B_ECC_POINT(TPMS_ECC_POINT(x=x, y=y))

    def xy(pt):
        pt = pt.point if hasattr(pt, "point") else pt      # TPM2B_ECC_POINT or TPMS_
        return int.from_bytes(bytes(pt.x), "big"), int.from_bytes(bytes(pt.y), "big")

    def scenario(esapi):
        tmpl = TPM2B_PUBLIC.parse("ecc256:ecdh-sha256:null", objectAttributes=(
            TPMA_OBJECT.DECRYPT | TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.SENSITIVEDATAORIGIN
            | TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT))
        detail = tmpl.publicArea.parameters.eccDetail
        detail.scheme.scheme = TPM2_ALG.ECMQV
        detail.curveID = TPM2_ECC(c.tpm_id)
        key, pub, *_ = esapi.create_primary(None, tmpl)
        qe_a, counter = esapi.ec_ephemeral(TPM2_ECC(c.tpm_id))
        z1, z2 = esapi.zgen_2_phase(key, point2b(qs_b), point2b(qe_b), TPM2_ALG.ECMQV, counter)
        return (xy(pub.publicArea.unique.ecc), xy(qe_a), xy(z1), bytes(z2.point.x),
                bytes(z2.point.y))

    qs_a, qe_a, z1, z2x, z2y = await with_esapi(ctpm_server, scenario)
    assert z1 == mqv(c, ds_b, de_b, qs_a, qe_a)
    assert z2x == z2y == b""
