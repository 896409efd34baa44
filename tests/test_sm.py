"""SM3_256, SM4, the SM2_P256 curve, and the TCG EK template H-5 (EK Credential Profile 2.x:
ECC SM2 P256, nameAlg SM3_256, SM4-128 CFB, authPolicy PolicyB for SM3_256).

Every expected value is computed here, not by ctpm: the GM/T known answers (SM3: GM/T
0004-2012 appendix A; SM4: GM/T 0002-2012 appendix A.1; the SM2 curve: GM/T 0003.5-2012),
curve arithmetic with tests/weierstrass.py, KDFa/KDFe/HMAC/CFB from their Part 1 formulas
(hashlib's SM3 and `cryptography`'s SM4 as the primitives), the EK policies from the EK
profile's construction, checked against its published digests. swtpm (libtpms) has the
SM2_P256 curve but neither SM3 nor SM4, so only the curve is compared with it.
"""
import hashlib
import secrets
import struct

import gmpy2
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ctpm.crypto import hashes as ctpm_hashes, symcipher
from ctpm.wire.constants import TPM_ALG
from tests import weierstrass
from tests.peers import Swtpm, needs_swtpm
from tests.test_objects import (RH_ENDORSEMENT, RH_NULL, RH_OWNER, create_primary,
                                sensitive_create, split_create, started)
from tests.tpmcmd import b2, cmd, params, pcr_select, pw_session, rc, u16, u32

try:
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:     # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB

SHA256, SM3, SM4, CFB_, ECB, NULL = 0x000B, 0x0012, 0x0013, 0x0043, 0x0044, 0x0010
ECC, KEYEDHASH, SYMCIPHER = 0x0023, 0x0008, 0x0025
ECDSA, ECDH, ECSCHNORR, ECMQV, SM2_SIG = 0x0018, 0x0019, 0x001C, 0x001D, 0x001B
SM2_P256, RH_PLATFORM = 0x0020, 0x4000000C
NULL_TICKET = u16(0x8024) + u32(RH_NULL) + u16(0)
PW = [pw_session()]

# TPMA_OBJECT bits
FIXEDTPM, FIXEDPARENT, SDO, USERWITHAUTH, ADMINWITHPOLICY = 0x2, 0x10, 0x20, 0x40, 0x80
RESTRICTED, DECRYPT, SIGN = 0x10000, 0x20000, 0x40000


# -- the SM2 curve (GM/T 0003.5-2012), independent of ctpm ------------------------------------

def _h(s):
    return int(s.replace(" ", ""), 16)


SM2 = weierstrass.Curve(
    p=_h("FFFFFFFE FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF 00000000 FFFFFFFF FFFFFFFF"),
    a=_h("FFFFFFFE FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF 00000000 FFFFFFFF FFFFFFFC"),
    b=_h("28E9FA9E 9D9F5E34 4D5A9E4B CF6509A7 F39789F5 15AB8F92 DDBCBD41 4D940E93"),
    g=(_h("32C4AE2C 1F198119 5F990446 6A39C994 8FE30BBF F2660BE1 715A4589 334C74C7"),
       _h("BC3736A2 F4F6779C 59BDCEE3 6B692153 D0A9877C C62A4740 02DF32E5 2139F0A0")),
    n=_h("FFFFFFFE FFFFFFFF FFFFFFFF FFFFFFFF 7203DF6B 21C6052B 53BBF409 39D54123"),
    tpm_id=SM2_P256)


def sm3(*parts):
    return hashlib.new("sm3", b"".join(parts)).digest()


def hmac_sm3(key, msg):
    """HMAC (RFC 2104) written out over SM3 (64-byte blocks)."""
    key = sm3(key) if len(key) > 64 else key
    key = key.ljust(64, b"\0")
    inner = sm3(bytes(k ^ 0x36 for k in key), msg)
    return sm3(bytes(k ^ 0x5C for k in key), inner)


def kdfa_sm3(key, label, u, v, bits):
    """KDFa (Part 1 §11.4.10.2) with HMAC-SM3."""
    out, i, size = b"", 1, (bits + 7) // 8
    while len(out) < size:
        out += hmac_sm3(key, u32(i) + label + b"\0" + u + v + u32(bits))
        i += 1
    out = bytearray(out[:size])
    if bits % 8:
        out[0] &= (1 << bits % 8) - 1
    return bytes(out)


def kdfe_sm3(z, label, u, v, bits):
    """KDFe (Part 1 §11.4.10.3) with SM3; the label carries its NUL."""
    out, i = b"", 1
    while len(out) * 8 < bits:
        out += sm3(u32(i), z, label, u, v)
        i += 1
    return out[:bits // 8]


def sm4_cfb(key, iv, data, encrypt=True):
    c = Cipher(algorithms.SM4(key), CFB(iv))
    ctx = c.encryptor() if encrypt else c.decryptor()
    return ctx.update(data) + ctx.finalize()


def sm2_ok(c, q, digest, r, s):
    """SM2 verification (GM/T 0003.2-2012 §7.1, B1-B7) of a digest e."""
    n = c.n
    t = (r + s) % n
    if not (0 < r < n and 0 < s < n) or not t:
        return False
    pt = c.add(c.mul(s, c.g), c.mul(t, q))
    return pt is not None and (int.from_bytes(digest, "big") + pt[0]) % n == r


def ecdsa_ok(c, q, digest, r, s):
    return c.ecdsa_verify(q, digest, r, s)


# -- known answers --------------------------------------------------------------------------

SM3_KAT = [(b"abc", "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"),
           (b"abcd" * 16, "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732")]
SM4_KEY = bytes.fromhex("0123456789abcdeffedcba9876543210")
SM4_CIPHER = bytes.fromhex("681edf34d206965e86b3e94f536e4246")      # E(key, key)


@pytest.mark.parametrize("message, expected", SM3_KAT, ids=["abc", "abcd*16"])
def test_sm3_known_answers(message, expected):
    """GM/T 0004-2012 A.1/A.2 through ctpm's hash table and through TPM2_Hash."""
    assert ctpm_hashes.digest(TPM_ALG.SM3_256, message).hex() == expected
    tpm = started(seed=b"sm3")
    r = tpm.execute(cmd(0x17D, b2(message) + u16(SM3) + u32(RH_OWNER)))
    assert rc(r) == 0, hex(rc(r))
    assert params(r)[:34] == b2(bytes.fromhex(expected))


def test_sm4_known_answer_and_encrypt_decrypt():
    """GM/T 0002-2012 A.1 through ctpm's cipher table and TPM2_EncryptDecrypt2 with an SM4
    SYMCIPHER key (the key given as inSensitive.data); CFB against `cryptography`; a
    192-bit SM4 key is TPM_RC_VALUE (TPMI_SM4_KEY_BITS)."""
    enc = Cipher(symcipher.algorithm(TPM_ALG.SM4, SM4_KEY), modes.ECB()).encryptor()
    assert enc.update(SM4_KEY) + enc.finalize() == SM4_CIPHER
    tpm = started(seed=b"sm4")
    attrs = FIXEDTPM | FIXEDPARENT | USERWITHAUTH | DECRYPT | SIGN
    tmpl = b2(u16(SYMCIPHER) + u16(SM3) + u32(attrs) + b2(b"") + u16(SM4) + u16(128)
              + u16(NULL) + b2(b""))
    r = tpm.execute(create_primary(RH_OWNER, tmpl, sensitive_create(data=SM4_KEY)))
    assert rc(r) == 0, hex(rc(r))
    key = struct.unpack(">I", r[10:14])[0]

    def ed2(data, decrypt, mode, iv):
        rsp = tpm.execute(cmd(0x193, b2(data) + bytes([decrypt]) + u16(mode) + b2(iv),
                              handles=[key], sessions=PW))
        assert rc(rsp) == 0, hex(rc(rsp))
        body = params(rsp)
        n = struct.unpack(">H", body[:2])[0]
        return body[2:2 + n], body[4 + n:]

    assert ed2(SM4_KEY, 0, ECB, b"")[0] == SM4_CIPHER
    assert ed2(SM4_CIPHER, 1, ECB, b"")[0] == SM4_KEY
    iv, data = bytes(range(16)), b"SM4 in CFB mode, 37 bytes long......"
    out, iv_out = ed2(data, 0, CFB_, iv)
    assert out == sm4_cfb(SM4_KEY, iv, data)
    assert ed2(out, 1, CFB_, iv)[0] == data
    bad = b2(u16(SYMCIPHER) + u16(SM3) + u32(attrs) + b2(b"") + u16(SM4) + u16(192)
             + u16(NULL) + b2(b""))
    assert rc(tpm.execute(create_primary(RH_OWNER, bad, sensitive_create(data=SM4_KEY)))) \
        == 0x2C4       # TPM_RC_VALUE, parameter 2


def test_hmac_sm3_and_kdfa_against_the_formulas():
    """TPM2_HMAC with an SM3 keyed-hash key (key given as data) against RFC 2104 written out
    here; ctpm's KDFa with SM3 against Part 1's formula."""
    from ctpm.crypto.kdf import kdfa
    for bits in (256, 300):
        assert kdfa(TPM_ALG.SM3_256, b"k", b"LABEL", b"u", b"v", bits) \
            == kdfa_sm3(b"k", b"LABEL", b"u", b"v", bits)
    tpm = started(seed=b"hmac-sm3")
    attrs = FIXEDTPM | FIXEDPARENT | USERWITHAUTH | SIGN
    tmpl = b2(u16(KEYEDHASH) + u16(SM3) + u32(attrs) + b2(b"") + u16(0x0005) + u16(SM3)
              + b2(b""))
    r = tpm.execute(create_primary(RH_OWNER, tmpl, sensitive_create(data=b"secret key")))
    assert rc(r) == 0, hex(rc(r))
    h = struct.unpack(">I", r[10:14])[0]
    r = tpm.execute(cmd(0x155, b2(b"message") + u16(NULL), handles=[h], sessions=PW))
    assert rc(r) == 0, hex(rc(r))
    assert params(r) == b2(hmac_sm3(b"secret key", b"message"))


def test_sm2_curve_is_what_it_claims():
    """G on the curve, p and n prime, [n]G = O and [n-1]G = -G (independent arithmetic);
    TPM2_ECC_Parameters gives these values and the curve's KDF1_SP800_56A/SM3_256."""
    assert SM2.on_curve(SM2.g) and gmpy2.is_prime(SM2.p) and gmpy2.is_prime(SM2.n)
    assert SM2.a == SM2.p - 3
    minus_g = SM2.mul(SM2.n - 1, SM2.g)
    assert minus_g == (SM2.g[0], SM2.p - SM2.g[1])
    assert SM2.add(minus_g, SM2.g) is None
    tpm = started(seed=b"sm2 params")
    r = tpm.execute(cmd(0x178, u16(SM2_P256)))
    assert rc(r) == 0, hex(rc(r))
    x, y = SM2.xy(SM2.g)
    assert params(r) == (u16(SM2_P256) + u16(256) + u16(0x0020) + u16(SM3) + u16(NULL)
                         + b2(SM2.p.to_bytes(32, "big")) + b2(SM2.a.to_bytes(32, "big"))
                         + b2(SM2.b.to_bytes(32, "big")) + b2(x) + b2(y)
                         + b2(SM2.n.to_bytes(32, "big")) + b2(b"\x01"))


def test_sm2_signature_known_answer():
    """GM/T 0003.2-2012 appendix A.2 (the reference's _SM2_SIGN_DEBUG values): ctpm's SM2
    signing with the standard's example curve, key, e and k gives its r and s, and they
    verify (ctpm, and the verification written here)."""
    from ctpm.crypto import ecmath, sm2
    example = dict(
        p=_h("8542D69E 4C044F18 E8B92435 BF6FF7DE 45728391 5C45517D 722EDB8B 08F1DFC3"),
        a=_h("787968B4 FA32C3FD 2417842E 73BBFEFF 2F3C848B 6831D7E0 EC65228B 3937E498"),
        b=_h("63E4C6D3 B23B0C84 9CF84241 484BFE48 F61D59A5 B16BA06E 6E12D1DA 27C5249A"),
        n=_h("8542D69E 4C044F18 E8B92435 BF6FF7DD 29772063 0485628D 5AE74EE7 C32E79B7"))
    g = (_h("421DEBD6 1B62EAB6 746434EB C3CC315E 32220B3B ADD50BDC 4C4E6C14 7FEDD43D"),
         _h("0680512B CBB42C07 D47349D2 153B70C4 E5D7FDFC BFA36EA1 A85841B9 E46E09A2"))
    d = _h("128B2FA8 BD433C6C 068C8D80 3DFF7979 2A519A55 171B1B65 0C23661D 15897263")
    e = bytes.fromhex("B524F552CD82B8B028476E005C377FB19A87E6FC682D48BB5D42E3D9B9EFFE76")
    k = _h("6CB28D99 385C175C 94F94E93 4817663F C176D925 DD72B727 260DBAAE 1FB2F96F")
    r = _h("40F1EC59 F793D9F4 9E09DCEF 49130D41 94F79FB1 EED2CAA5 5BACDB49 C4E755D1")
    s = _h("6FC6DAC3 2C5D5CF1 0C77DFB2 0F7C2EB6 67A45787 2FB09EC5 6327A67E C7DEEBE7")
    ours = ecmath.Curve(None, gx=g[0], gy=g[1], size=32, **example)
    assert sm2.sign_with(ours, d, e, k) == (r, s)
    theirs = weierstrass.Curve(g=g, tpm_id=0, **example)
    q = theirs.mul(d, g)
    assert sm2.verify(ours, q, e, r, s) and sm2_ok(theirs, q, e, r, s)
    assert not sm2.verify(ours, q, e, r, s + 1)


# -- GetCapability stays truthful -------------------------------------------------------------

def _capability(tpm, cap, prop=0, count=256):
    r = tpm.execute(cmd(0x17A, u32(cap) + u32(prop) + u32(count)))
    assert rc(r) == 0, hex(rc(r))
    return params(r)[5:]        # after moreData and capability


def test_capabilities_list_sm3_sm4_sm2_but_no_sm3_pcr_bank():
    """ALGS: SM3_256 (hash), SM4 (symmetric), ECMQV (asymmetric method) - the reference's
    TPMA_ALGORITHM values - and SM2 as a signature only (no SM2 key exchange: not a method);
    ECC_CURVES: SM2_P256; PCRS: four banks, no
    SM3; PCR_Allocate of an SM3 bank is refused (allocationSuccess NO); PCR_Event and
    PCR_Read ignore SM3."""
    tpm = started(seed=b"sm caps")
    body = _capability(tpm, 0)
    count = struct.unpack(">I", body[:4])[0]
    algs = dict(struct.unpack(">HI", body[4 + 6 * i:10 + 6 * i]) for i in range(count))
    assert algs[SM3] == 0x4 and algs[SM4] == 0x2 and algs[ECMQV] == 0x401
    assert algs[SM2_SIG] == 0x101                      # asymmetric | signing
    body = _capability(tpm, 8)
    curves = struct.unpack(">%dH" % struct.unpack(">I", body[:4])[0], body[4:])
    assert SM2_P256 in curves
    body = _capability(tpm, 5)
    banks = [struct.unpack(">H", body[4 + 6 * i:6 + 6 * i])[0]
             for i in range(struct.unpack(">I", body[:4])[0])]
    assert banks == [0x0004, 0x000B, 0x000C, 0x000D]
    r = tpm.execute(cmd(0x12B, pcr_select((SM3, list(range(24)))), handles=[RH_PLATFORM],
                        sessions=PW))
    assert rc(r) == 0 and params(r)[0] == 0          # allocationSuccess NO
    r = tpm.execute(cmd(0x13C, b2(b"event"), handles=[16], sessions=PW))
    assert rc(r) == 0 and struct.unpack(">I", params(r)[:4])[0] == 4
    r = tpm.execute(cmd(0x17E, pcr_select((SM3, [0, 1]))))
    assert rc(r) == 0 and params(r)[4:] == u32(1) + u16(SM3) + b"\x03\0\0\0" + u32(0)


# -- parameter encryption with SM4, an SM3 session ---------------------------------------------

def test_sm4_parameter_encryption_in_an_sm3_session():
    """An unbound, unsalted HMAC session (authHash SM3_256, SM4-128-CFB): TPM2_Hash with
    its data encrypted and its outHash encrypted back, the HMACs, keys and keystreams
    computed here (Part 1 §19.6, §21.3)."""
    tpm = started(seed=b"sm4 session")
    nonce_caller = b"\x5a" * 16
    r = tpm.execute(cmd(0x176, b2(nonce_caller) + b2(b"") + b"\0" + u16(SM4) + u16(128)
                        + u16(CFB_) + u16(SM3), handles=[RH_NULL, RH_NULL]))
    assert rc(r) == 0, hex(rc(r))
    handle = struct.unpack(">I", r[10:14])[0]
    nonce_tpm = r[16:16 + 16]
    session_key = b""                  # unbound and unsalted; Hash authorizes no handle
    data = b"parameter encryption with SM4"
    nonce_caller = b"\xa5" * 16
    mask = kdfa_sm3(session_key, b"CFB", nonce_caller, nonce_tpm, 256)
    enc = sm4_cfb(mask[:16], mask[16:], data)
    body = b2(enc) + u16(SM3) + u32(RH_NULL)
    attrs = 0x01 | 0x20 | 0x40         # continueSession, decrypt, encrypt
    cp = sm3(u32(0x17D), body)
    mac = hmac_sm3(session_key, cp + nonce_caller + nonce_tpm + bytes([attrs]))
    session = u32(handle) + b2(nonce_caller) + bytes([attrs]) + b2(mac)
    r = tpm.execute(cmd(0x17D, body, sessions=[session]))
    assert rc(r) == 0, hex(rc(r))
    out = params(r)
    auth = r[14 + len(out):]
    new_nonce = auth[2:18]
    rp = sm3(u32(0), u32(0x17D), out)
    assert auth[19:] == b2(hmac_sm3(session_key, rp + new_nonce + nonce_caller
                                    + bytes([attrs])))
    mask = kdfa_sm3(session_key, b"CFB", new_nonce, nonce_caller, 256)
    assert out[:2] == u16(32)
    assert sm4_cfb(mask[:16], mask[16:], out[2:34], encrypt=False) == sm3(data)


# -- the EK policy for SM3_256 ----------------------------------------------------------------

# EK Credential Profile 2.x (as go-tpm's ek templates carry them): PolicyA, PolicyC, PolicyB
POLICY = {
    SHA256: ("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa",
             "3767e2edd43ff45a3a7e1eaefcef78643dca964632e7aad82c673a30d8633fde",
             "ca3d0a99a2b93906f7a3342414efcfb3a385d44cd1fd459089d19b5071c0b7a0"),
    SM3: ("c67f7d35f66f3bec13c89fe898921c651b0cb5a38a92690a62a43c0012e4fb8b",
          "2d4e81578c3531d9bd1cdd7d02ba298d5699a3e39fc3551bfeffcf132b49e11d",
          "167860a35f2c5c3567f9c927ac56c032f3b3a6462f8d037998e7a10f77fa454a"),
}
POLICY_INDEX = {SHA256: 0x01C07F01, SM3: 0x01C07F04}


def _h_alg(alg, *parts):
    return hashlib.new({SHA256: "sha256", SM3: "sm3"}[alg], b"".join(parts)).digest()


def policy_c(alg):
    """PolicyAuthorizeNV of the EK profile's policy index (its TPMS_NV_PUBLIC: policyWrite,
    writeAll, ppRead, ownerRead, authRead, policyRead, noDA, written; authPolicy PolicyA;
    34 bytes of data): H(0...0 || TPM_CC_PolicyAuthorizeNV || nvIndexName)."""
    attrs = (1 << 3) | (1 << 12) | (1 << 16) | (1 << 17) | (1 << 18) | (1 << 19) | (1 << 25) \
        | (1 << 29)
    policy_a = bytes.fromhex(POLICY[alg][0])
    nv_public = u32(POLICY_INDEX[alg]) + u16(alg) + u32(attrs) + b2(policy_a) + u16(34)
    name = u16(alg) + _h_alg(alg, nv_public)
    return _h_alg(alg, bytes(32), u32(0x192), name)


def start_session(tpm, se, alg=SM3):
    r = tpm.execute(cmd(0x176, b2(b"\x11" * 16) + b2(b"") + bytes([se]) + u16(NULL) + u16(alg),
                        handles=[RH_NULL, RH_NULL]))
    assert rc(r) == 0, hex(rc(r))
    return struct.unpack(">I", r[10:14])[0]


def policy_b(tpm, session):
    """PolicySecret(TPM_RH_ENDORSEMENT) and PolicyOR(PolicyA, PolicyC): the EK's PolicyB."""
    r = tpm.execute(cmd(0x151, b2(b"") + b2(b"") + b2(b"") + u32(0),
                        handles=[RH_ENDORSEMENT, session], sessions=PW))
    assert rc(r) == 0, hex(rc(r))
    a = get_digest(tpm, session)
    r = tpm.execute(cmd(0x171, u32(2) + b2(a) + b2(policy_c(SM3)), handles=[session]))
    assert rc(r) == 0, hex(rc(r))
    return a, get_digest(tpm, session)


def get_digest(tpm, session):
    r = tpm.execute(cmd(0x189, handles=[session]))
    assert rc(r) == 0, hex(rc(r))
    return params(r)[2:]


@pytest.mark.parametrize("alg", [SHA256, SM3], ids=["sha256", "sm3"])
def test_ek_policies_from_their_construction(alg):
    """PolicyC from the policy index's public area matches the profile for SHA-256 and
    SM3_256; a trial session with authHash SM3_256 running PolicySecret(endorsement) gives
    PolicyA and PolicyOR(PolicyA, PolicyC) PolicyB - the H-5 template's authPolicy."""
    assert policy_c(alg).hex() == POLICY[alg][1]
    policy_a = _h_alg(alg, _h_alg(alg, bytes(32), u32(0x151), u32(RH_ENDORSEMENT)))
    assert policy_a.hex() == POLICY[alg][0]
    assert _h_alg(alg, bytes(32), u32(0x171), policy_a, policy_c(alg)).hex() == POLICY[alg][2]
    if alg == SM3:
        tpm = started(seed=b"ek policy")
        a, b = policy_b(tpm, start_session(tpm, 3))
        assert (a.hex(), b.hex()) == POLICY[SM3][::2]


# -- the H-5 EK --------------------------------------------------------------------------------

H5_ATTRS = FIXEDTPM | FIXEDPARENT | SDO | USERWITHAUTH | ADMINWITHPOLICY | RESTRICTED | DECRYPT
H5 = (u16(ECC) + u16(SM3) + u32(H5_ATTRS) + b2(bytes.fromhex(POLICY[SM3][2]))
      + u16(SM4) + u16(128) + u16(CFB_) + u16(NULL) + u16(SM2_P256) + u16(NULL)
      + b2(b"") + b2(b""))


def ecc_template(attrs, scheme=u16(NULL), name_alg=SM3, sym=u16(NULL)):
    return b2(u16(ECC) + u16(name_alg) + u32(attrs) + b2(b"") + sym + scheme + u16(SM2_P256)
              + u16(NULL) + b2(b"") + b2(b""))


def handle_params(rsp):
    """(handle, parameters) of a response with one handle and sessions."""
    size = struct.unpack(">I", rsp[14:18])[0]
    return struct.unpack(">I", rsp[10:14])[0], rsp[18:18 + size]


def _take2b(buf, at):
    n = struct.unpack(">H", buf[at:at + 2])[0]
    return buf[at + 2:at + 2 + n], at + 2 + n


def create_h5(tpm):
    """(handle, TPMT_PUBLIC bytes, Name) of CreatePrimary(endorsement, H-5)."""
    r = tpm.execute(create_primary(RH_ENDORSEMENT, b2(H5)))
    assert rc(r) == 0, hex(rc(r))
    handle, body = handle_params(r)
    public, at = _take2b(body, 0)
    for _ in range(2):                   # creationData, creationHash
        _, at = _take2b(body, at)
    _, at = _take2b(body, at + 6)        # the creation ticket
    name, _ = _take2b(body, at)
    return handle, public, name


def point_of_public(public):
    """unique.ecc of an SM2_P256 public area (x and y, 32 bytes each, at its end)."""
    x, at = _take2b(public, len(public) - 68)
    y, _ = _take2b(public, at)
    return int.from_bytes(x, "big"), int.from_bytes(y, "big")


def test_h5_ek_is_deterministic_with_the_right_name():
    """CreatePrimary with H-5: the same key from the same seed (and twice in a TPM), another
    from another seed; the public area is the template with a point of the SM2 curve; the
    Name is SM3_256 || SM3(TPMT_PUBLIC)."""
    a, b, other = started(seed=b"h5"), started(seed=b"h5"), started(seed=b"h5 other")
    ha, pub, name = create_h5(a)
    assert create_h5(b)[1:] == (pub, name) and create_h5(a)[1:] == (pub, name)
    assert create_h5(other)[1] != pub
    assert name == u16(SM3) + sm3(pub)
    assert pub[:-68] == H5[:-4]
    assert SM2.on_curve(point_of_public(pub))
    r = a.execute(cmd(0x173, handles=[ha]))           # ReadPublic: the same Name
    assert rc(r) == 0 and _take2b(params(r), len(pub) + 2)[0] == name


def make_credential(ek_public, credential, object_name):
    """MakeCredential written here (Part 1 §24, C.6): an ephemeral SM2 key, KDFe-SM3 seed,
    SM4-128-CFB with KDFa-SM3 "STORAGE", HMAC-SM3 with "INTEGRITY"."""
    q = point_of_public(ek_public)
    de = secrets.randbelow(SM2.n - 1) + 1
    qe = SM2.mul(de, SM2.g)
    z = SM2.mul(de, q)[0].to_bytes(32, "big")
    qx, qy = SM2.xy(qe)
    seed = kdfe_sm3(z, b"IDENTITY\0", qx, q[0].to_bytes(32, "big"), 256)
    sym_key = kdfa_sm3(seed, b"STORAGE", object_name, b"", 128)
    enc = sm4_cfb(sym_key, bytes(16), b2(credential))
    hmac_key = kdfa_sm3(seed, b"INTEGRITY", b"", b"", 256)
    outer = hmac_sm3(hmac_key, enc + object_name)
    return b2(b2(outer) + enc), b2(b2(qx) + b2(qy))


def test_h5_children_signing_ecdh_and_credential_activation():
    """Under the H-5 EK: an SM2-curve signing key and an ECDH key (Create, Load); ECDSA-SM3,
    ECSCHNORR-SM3 and SM2-SM3 signatures verify here and in the TPM; ECDH_ZGen equals [d]P computed
    here; a sealed SM3 object unseals. A credential made here (not by the TPM) for the
    signing key activates with the EK authorized by an SM3 policy session (PolicyB)."""
    tpm = started(seed=b"h5 children")
    ek, ek_pub, ek_name = create_h5(tpm)
    sign_attrs = FIXEDTPM | FIXEDPARENT | SDO | USERWITHAUTH | SIGN
    keys = {}
    for what, tmpl in (("sign", ecc_template(sign_attrs)),        # scheme chosen at Sign
                       ("ecdh", ecc_template(sign_attrs ^ SIGN | DECRYPT,
                                             u16(ECDH) + u16(SM3))),
                       ("seal", b2(u16(KEYEDHASH) + u16(SM3) + u32(FIXEDTPM | FIXEDPARENT
                                                                   | USERWITHAUTH)
                                   + b2(b"") + u16(NULL) + b2(b"")))):
        sens = sensitive_create(data=b"sealed under H-5") if what == "seal" else None
        r = tpm.execute(cmd(0x153, (sens or sensitive_create()) + tmpl + b2(b"") + u32(0),
                            handles=[ek], sessions=PW))
        assert rc(r) == 0, (what, hex(rc(r)))
        private, public = split_create(r)
        r = tpm.execute(cmd(0x157, private + public, handles=[ek], sessions=PW))
        assert rc(r) == 0, (what, hex(rc(r)))
        handle, body = handle_params(r)
        keys[what] = handle, public[2:], _take2b(body, 0)[0]
    h, public, name = keys["sign"]
    assert name == u16(SM3) + sm3(public)
    q = point_of_public(public)
    digest = sm3(b"signed with an SM2-curve key")
    for scheme in (ECDSA, ECSCHNORR, SM2_SIG):
        r = tpm.execute(cmd(0x15D, b2(digest) + u16(scheme) + u16(SM3) + NULL_TICKET,
                            handles=[h], sessions=PW))
        assert rc(r) == 0, hex(rc(r))
        sig = params(r)
        assert sig[:4] == u16(scheme) + u16(SM3)
        rr, at = _take2b(sig, 4)
        ss, _ = _take2b(sig, at)
        r_, s_ = int.from_bytes(rr, "big"), int.from_bytes(ss, "big")
        if scheme == ECDSA:
            assert ecdsa_ok(SM2, q, digest, r_, s_)
        elif scheme == SM2_SIG:
            assert sm2_ok(SM2, q, digest, r_, s_)
        else:       # E = [s]G - [r]Q, r = SM3(E.x || digest)
            e = SM2.add(SM2.mul(s_, SM2.g), SM2.mul(-r_ % SM2.n, q))
            assert int.from_bytes(sm3(e[0].to_bytes(32, "big"), digest), "big") == r_
        assert rc(tpm.execute(cmd(0x177, b2(digest) + sig, handles=[h]))) == 0
    h_dh, public_dh, _ = keys["ecdh"]
    k = secrets.randbelow(SM2.n - 1) + 1
    r = tpm.execute(cmd(0x154, b2(b"".join(b2(v) for v in SM2.xy(SM2.mul(k, SM2.g)))),
                        handles=[h_dh], sessions=PW))
    assert rc(r) == 0, hex(rc(r))
    zx, at = _take2b(params(r), 2)
    zy, _ = _take2b(params(r), at)
    assert (zx, zy) == SM2.xy(SM2.mul(k, point_of_public(public_dh)))
    r = tpm.execute(cmd(0x15E, handles=[keys["seal"][0]], sessions=PW))
    assert rc(r) == 0 and params(r) == b2(b"sealed under H-5")
    # the credential, and the EK (keyHandle, USER role) authorized by an SM3 policy session
    credential = b"an SM credential"
    blob, secret = make_credential(ek_pub, credential, name)
    session = start_session(tpm, 1)
    assert policy_b(tpm, session)[1].hex() == POLICY[SM3][2]
    policy_auth = u32(session) + b2(b"") + b"\x01" + b2(b"")
    r = tpm.execute(cmd(0x147, blob + secret, handles=[h, ek],
                        sessions=[pw_session(), policy_auth]))
    assert rc(r) == 0, hex(rc(r))
    assert params(r) == b2(credential)
    # a credential for another Name does not open
    blob, secret = make_credential(ek_pub, credential, ek_name)
    session = start_session(tpm, 1)
    policy_b(tpm, session)
    policy_auth = u32(session) + b2(b"") + b"\x01" + b2(b"")
    r = tpm.execute(cmd(0x147, blob + secret, handles=[h, ek],
                        sessions=[pw_session(), policy_auth]))
    assert rc(r) == 0x1DF      # TPM_RC_INTEGRITY, parameter 1


def test_rsa_with_sm3_uses_the_registry_digest_info():
    """RSASSA-SM3 signs the TCG registry's DigestInfo (SM3_256_DER, as the reference);
    RSA-OAEP with SM3 round-trips (OpenSSL's OAEP has no SM3: ctpm encodes it)."""
    tpm = started(seed=b"rsa sm3")
    attrs = FIXEDTPM | FIXEDPARENT | SDO | USERWITHAUTH | SIGN | DECRYPT
    tmpl = b2(u16(0x0001) + u16(SM3) + u32(attrs) + b2(b"") + u16(NULL) + u16(NULL)
              + u16(1024) + u32(0) + b2(b""))
    r = tpm.execute(create_primary(RH_OWNER, tmpl))
    assert rc(r) == 0, hex(rc(r))
    h, body = handle_params(r)
    public, _ = _take2b(body, 0)
    n = int.from_bytes(_take2b(public, len(public) - 130)[0], "big")
    digest = sm3(b"rsa")
    r = tpm.execute(cmd(0x15D, b2(digest) + u16(0x0014) + u16(SM3) + NULL_TICKET,
                        handles=[h], sessions=PW))
    assert rc(r) == 0, hex(rc(r))
    sig = _take2b(params(r), 4)[0]
    em = pow(int.from_bytes(sig, "big"), 65537, n).to_bytes(128, "big")
    der = bytes.fromhex("3030300c06082a811c814501831105000420")
    assert em == b"\0\x01" + b"\xff" * (128 - 3 - len(der) - 32) + b"\0" + der + digest
    assert rc(tpm.execute(cmd(0x177, b2(digest) + params(r), handles=[h]))) == 0
    oaep = u16(0x0017) + u16(SM3)
    r = tpm.execute(cmd(0x174, b2(b"secret") + oaep + b2(b"label\0"), handles=[h]))
    assert rc(r) == 0, hex(rc(r))
    r = tpm.execute(cmd(0x159, params(r) + oaep + b2(b"label\0"), handles=[h], sessions=PW))
    assert rc(r) == 0 and params(r) == b2(b"secret")


# -- tpm2-pytss ESAPI ------------------------------------------------------------------------

tpm2_pytss = pytest.importorskip("tpm2_pytss")
from tpm2_pytss import ESYS_TR  # noqa: E402
from tpm2_pytss.constants import TPM2_ALG, TPM2_ECC, TPM2_SE, TPMA_SESSION  # noqa: E402
from tpm2_pytss.types import (TPM2B_DIGEST, TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE,  # noqa: E402
                              TPML_DIGEST, TPMS_SENSITIVE_CREATE, TPMT_SYM_DEF)

from ctpm.testing import with_esapi  # noqa: E402


async def test_h5_through_esapi(ctpm_server):
    """tpm2-pytss: CreatePrimary(endorsement, H-5), the Name ESAPI computes with SM3; Create
    and Load of an SM2-curve child; an SM3 policy session reaching PolicyB; MakeCredential
    by the TPM for the child and ActivateCredential with the EK (keyHandle, USER role) in
    the policy session; a sealed object created and unsealed through an SM3 HMAC session
    bound to the EK, parameters encrypted. (tpm2-tss 3.2 has no SM4 parameter encryption,
    so that is tested with raw commands above.)"""
    def scenario(esapi):
        pub = TPM2B_PUBLIC.parse("ecc256:null:aes128cfb", objectAttributes=H5_ATTRS)
        pa = pub.publicArea
        pa.nameAlg = TPM2_ALG.SM3_256
        pa.authPolicy = bytes.fromhex(POLICY[SM3][2])
        pa.parameters.eccDetail.curveID = TPM2_ECC.SM2_P256
        sym = pa.parameters.eccDetail.symmetric
        sym.algorithm, sym.keyBits.sym, sym.mode.sym = TPM2_ALG.SM4, 128, TPM2_ALG.CFB
        ek, ek_pub, *_ = esapi.create_primary(None, pub, primary_handle=ESYS_TR.ENDORSEMENT)
        name = bytes(esapi.tr_get_name(ek))
        child = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256:null",
                                   objectAttributes=FIXEDTPM | FIXEDPARENT | SDO
                                   | USERWITHAUTH | SIGN)
        child.publicArea.nameAlg = TPM2_ALG.SM3_256
        child.publicArea.parameters.eccDetail.curveID = TPM2_ECC.SM2_P256
        private, public, *_ = esapi.create(ek, None, child)
        key = esapi.load(ek, private, public)
        none = TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL)
        session = esapi.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, none,
                                           TPM2_ALG.SM3_256)
        esapi.policy_secret(ESYS_TR.ENDORSEMENT, session)
        esapi.policy_or(session, TPML_DIGEST([bytes.fromhex(POLICY[SM3][0]), policy_c(SM3)]))
        digest = bytes(esapi.policy_get_digest(session))
        # an HMAC session with authHash SM3_256 (tpm2-tss computes the HMACs and KDFa with
        # its own SM3), AES parameter encryption both ways, bound to the EK
        aes = TPMT_SYM_DEF(algorithm=TPM2_ALG.AES)
        aes.keyBits.aes, aes.mode.aes = 128, TPM2_ALG.CFB
        hmac_session = esapi.start_auth_session(ESYS_TR.NONE, ek, TPM2_SE.HMAC, aes,
                                                TPM2_ALG.SM3_256)
        esapi.trsess_set_attributes(hmac_session, TPMA_SESSION.CONTINUESESSION
                                    | TPMA_SESSION.DECRYPT | TPMA_SESSION.ENCRYPT)
        sealed = TPM2B_PUBLIC.parse("keyedhash", objectAttributes=FIXEDTPM | FIXEDPARENT
                                    | USERWITHAUTH)
        sealed.publicArea.nameAlg = TPM2_ALG.SM3_256
        private, public_s, *_ = esapi.create(
            ek, TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(data=b"sealed, SM3 session")),
            sealed, session1=hmac_session)
        unsealed = bytes(esapi.unseal(esapi.load(ek, private, public_s),
                                      session1=hmac_session))
        key_name = bytes(esapi.tr_get_name(key))
        blob, secret = esapi.make_credential(ek, TPM2B_DIGEST(b"esapi credential"), key_name)
        got = esapi.activate_credential(key, ek, blob, secret, session1=ESYS_TR.PASSWORD,
                                        session2=session)
        return (bytes(ek_pub.marshal())[2:], name, bytes(public.marshal())[2:], key_name,
                digest, bytes(got), unsealed)

    public, name, key_public, key_name, digest, got, unsealed = await with_esapi(ctpm_server,
                                                                                scenario)
    assert unsealed == b"sealed, SM3 session"
    assert name == u16(SM3) + sm3(public)
    assert key_name == u16(SM3) + sm3(key_public)
    assert digest.hex() == POLICY[SM3][2]
    assert got == b"esapi credential"
    assert SM2.on_curve(point_of_public(public))


# -- swtpm: the SM2 curve (it has no SM3, no SM4) -----------------------------------------------

@needs_swtpm
@pytest.mark.swtpm
def test_sm2_curve_against_swtpm():
    """swtpm reports SM2_P256 and the SM2 signature but neither SM3_256 nor SM4 (so H-5
    cannot be compared): the same ECC_Parameters (byte for byte, the KDF1_SP800_56A/SM3_256
    included), the same Name and ECDH_ZGen for an SM2 key loaded in both, ECDSA and SM2
    signatures of each verified by the other and here."""
    from tests.peers import Pair
    from tests.test_ecdaa import handle_of, material, response_params
    peer = Swtpm()
    try:
        pair = Pair(peer)
        r = pair.execute_peer(cmd(0x17A, u32(0) + u32(0) + u32(256)))
        body = params(r)[5:]
        algs = {struct.unpack(">H", body[4 + 6 * i:6 + 6 * i])[0]
                for i in range(struct.unpack(">I", body[:4])[0])}
        assert SM3 not in algs and SM4 not in algs
        pair.same(cmd(0x178, u16(SM2_P256)), "ECC_Parameters(SM2_P256)")   # KDF: SM3 too
        d = secrets.randbelow(SM2.n - 1) + 1
        sens, pub = material(SM2, d, u16(NULL), attrs=0x00020040 | 0x00040000)
        h = handle_of(pair.same(load_external(sens, pub), "LoadExternal SM2"))
        k = secrets.randbelow(SM2.n - 1) + 1
        pt = b2(b"".join(b2(v) for v in SM2.xy(SM2.mul(k, SM2.g))))
        pair.same(cmd(0x154, pt, handles=[h], sessions=PW), "ECDH_ZGen SM2")
        digest = hashlib.sha256(b"sm2 curve").digest()
        q = SM2.mul(d, SM2.g)
        for scheme, check in ((ECDSA, ecdsa_ok), (SM2_SIG, sm2_ok)):
            sign = cmd(0x15D, b2(digest) + u16(scheme) + u16(SHA256) + NULL_TICKET,
                       handles=[h], sessions=PW)
            for rsp in pair.run(sign):
                assert rc(rsp) == 0, hex(rc(rsp))
                sig = response_params(rsp)
                rr, at = _take2b(sig, 4)
                assert check(SM2, q, digest, int.from_bytes(rr, "big"),
                             int.from_bytes(_take2b(sig, at)[0], "big"))
                pair.same(cmd(0x177, b2(digest) + sig, handles=[h]),
                          f"VerifySignature of an SM2-curve {scheme:#x} signature")
            bad = bytes([digest[0] ^ 1]) + digest[1:]
            pair.same_rc(cmd(0x177, b2(bad) + sig, handles=[h]), "a wrong digest")
    finally:
        peer.close()


def load_external(sensitive, public):
    return cmd(0x167, sensitive + public + u32(RH_NULL))
