"""More policy commands (Part 3 §23): PolicySigned, PolicyTicket, PolicyAuthorize,
PolicyLocality, PolicyCounterTimer, PolicyTemplate, PolicyPhysicalPresence. Trial digests
against the Part 3 formulas (hashlib), assertions signed outside the TPM (cryptography) by
LoadExternal'd keys, the PolicyAuthorize flow with a VerifySignature ticket (raw commands,
tpm2-tools), and the same command streams against swtpm."""
import struct

import pytest
from cryptography.hazmat.primitives import hashes as chashes
from cryptography.hazmat.primitives import serialization as se
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from tests.peers import Swtpm, needs_swtpm, retrying
from tests.test_objects import RH_OWNER, started
from tests.test_policy import (ZERO, H, P, S, _sealed_with_policy, _trial_digest, _unseal,
                               daemon, f_command_code, get_digest, needs_tools, ok,
                               start, SE_TRIAL, CC_Unseal)
from tests.tpmcmd import STARTUP_CLEAR, b2, cmd, params, rc, u16, u32

from tpm2_pytss.types import TPM2B_PUBLIC  # noqa: E402

__all__ = ["daemon"]        # the module fixture, shared with test_policy

CC = {"PolicySigned": 0x160, "PolicyTicket": 0x172, "PolicyAuthorize": 0x16A,
      "PolicyLocality": 0x16F, "PolicyCounterTimer": 0x16D, "PolicyTemplate": 0x190,
      "PolicyPhysicalPresence": 0x187, "PolicyRestart": 0x180, "PolicyCommandCode": 0x16C}
CC_LoadExternal, CC_VerifySignature, CC_Flush = 0x167, 0x177, 0x165
ST_AUTH_SIGNED, ST_VERIFIED = 0x8025, 0x8022
RH_NULL = 0x40000007


def pol(name, session, body=b""):
    return cmd(CC[name], body, handles=[session])


# -- the Part 3 formulas ------------------------------------------------------------------------

def f_signed(d, name, ref=b""):
    return H(H(d, u32(CC["PolicySigned"]), name), ref)


def f_authorize(key_name, ref=b""):
    return H(H(ZERO, u32(CC["PolicyAuthorize"]), key_name), ref)


def f_locality(d, loc):
    return H(d, u32(CC["PolicyLocality"]), bytes([loc]))


def f_counter_timer(d, operand, offset, op):
    return H(d, u32(CC["PolicyCounterTimer"]), H(operand, u16(offset), u16(op)))


def f_template(d, template_hash):
    return H(d, u32(CC["PolicyTemplate"]), template_hash)


def f_pp(d):
    return H(d, u32(CC["PolicyPhysicalPresence"]))


# -- external keys ------------------------------------------------------------------------------

class External:
    """A key outside the TPM: its TPM2B_PUBLIC, Name, and TPMT_SIGNATUREs over digests."""

    def __init__(self, key):
        self.key = key
        pem = key.public_key().public_bytes(se.Encoding.PEM, se.PublicFormat.SubjectPublicKeyInfo)
        pub = TPM2B_PUBLIC.from_pem(pem)
        self.public = pub.marshal()
        self.name = pub.publicArea.get_name().marshal()[2:]

    def sign(self, digest: bytes) -> bytes:
        pre = utils.Prehashed(chashes.SHA256())
        if isinstance(self.key, rsa.RSAPrivateKey):
            sig = self.key.sign(digest, padding.PKCS1v15(), pre)
            return u16(0x14) + u16(0x0B) + b2(sig)                 # RSASSA, SHA256
        r, s = utils.decode_dss_signature(self.key.sign(digest, ec.ECDSA(pre)))
        return u16(0x18) + u16(0x0B) + b2(r.to_bytes(32, "big")) + b2(s.to_bytes(32, "big"))


@pytest.fixture(scope="module")
def keys():
    return (External(rsa.generate_private_key(65537, 2048)),
            External(ec.generate_private_key(ec.SECP256R1())))


def load_external(execute, key, hierarchy=RH_NULL):
    r = execute(cmd(CC_LoadExternal, u16(0) + key.public + u32(hierarchy)))
    assert rc(r) == 0, hex(rc(r))
    return struct.unpack(">I", r[10:14])[0]


def signed_body(sig, nonce=b"", cp=b"", ref=b"", expiration=0):
    return b2(nonce) + b2(cp) + b2(ref) + struct.pack(">i", expiration) + sig


def a_hash(nonce=b"", cp=b"", ref=b"", expiration=0):
    return H(nonce, struct.pack(">i", expiration), cp, ref)


def verify(execute, handle, digest, sig):
    """VerifySignature: (rc, TPMT_TK_VERIFIED bytes)."""
    r = execute(cmd(CC_VerifySignature, b2(digest) + sig, handles=[handle]))
    return rc(r), (params(r) if rc(r) == 0 else b"")


# -- trial digests ------------------------------------------------------------------------------

def test_trial_digests_are_the_part3_formulas(keys):
    tpm = started(seed=b"policy-more")
    ex = tpm.execute
    rsa_key, _ = keys
    h = load_external(ex, rsa_key)
    t, _ = start(ex, SE_TRIAL)
    # PolicySigned: no signature checked in a trial session (any well-formed one)
    junk = u16(0x14) + u16(0x0B) + b2(b"\0" * 256)
    r = ex(cmd(CC["PolicySigned"], signed_body(junk, ref=b"ref"), handles=[h, t]))
    assert rc(r) == 0 and params(r) == b"\0\0" + u16(ST_AUTH_SIGNED) + u32(RH_NULL) + b"\0\0"
    d = f_signed(ZERO, rsa_key.name, b"ref")
    assert get_digest(ex, t) == d
    assert rc(ex(pol("PolicyLocality", t, b"\x03"))) == 0
    d = f_locality(d, 3)
    assert rc(ex(pol("PolicyCounterTimer", t, b2(b"\0\0\0\1") + u16(16) + u16(7)))) == 0
    d = f_counter_timer(d, b"\0\0\0\1", 16, 7)
    assert rc(ex(pol("PolicyPhysicalPresence", t))) == 0
    d = f_pp(d)
    assert rc(ex(pol("PolicyTemplate", t, b2(b"\x44" * 32)))) == 0
    d = f_template(d, b"\x44" * 32)
    assert get_digest(ex, t) == d
    # PolicyAuthorize starts over from zeros; no ticket checked in a trial session
    assert rc(ex(pol("PolicyAuthorize", t, b2(b"\x01" * 32) + b2(b"r") + b2(rsa_key.name)
                     + u16(ST_VERIFIED) + u32(RH_NULL) + b2(b"")))) == 0
    assert get_digest(ex, t) == f_authorize(rsa_key.name, b"r")
    # PolicyTicket needs a real session
    assert rc(ex(pol("PolicyTicket", t, b2(b"\0" * 8) + b2(b"") + b2(b"") + b2(rsa_key.name)
                     + u16(ST_AUTH_SIGNED) + u32(RH_NULL) + b2(b"")))) == 0x182


# -- PolicySigned / PolicyTicket: assertions signed outside the TPM -----------------------------

@pytest.mark.parametrize("which", [0, 1], ids=["rsa", "ecc"])
def test_policy_signed_authorizes_an_object(keys, which):
    key = keys[which]
    tpm = started(seed=b"signed")
    ex = tpm.execute
    h = load_external(ex, key)
    item = _sealed_with_policy(ex, f_signed(ZERO, key.name, b"ref"))
    s, nonce = start(ex)
    # a bad signature, another policyRef, a stale nonce
    bad = key.sign(a_hash(nonce=nonce, ref=b"other"))
    assert rc(ex(cmd(CC["PolicySigned"], signed_body(bad, nonce=nonce, ref=b"ref"),
                     handles=[h, s]))) == P(0x09B, 5)
    assert rc(ex(cmd(CC["PolicySigned"], signed_body(bad, nonce=b"\1" * 32, ref=b"ref"),
                     handles=[h, s]))) == P(0x08F, 1)
    good = key.sign(a_hash(nonce=nonce, ref=b"ref"))
    r = ex(cmd(CC["PolicySigned"], signed_body(good, nonce=nonce, ref=b"ref"), handles=[h, s]))
    assert rc(r) == 0, hex(rc(r))
    assert _unseal(ex, item, s) == (0, b2(b"sealed by policy"))
    # expiration < 0: a ticket (nonce empty: expires on a reset), good in another session
    sig = key.sign(a_hash(ref=b"ref", expiration=-100))
    r = ex(cmd(CC["PolicySigned"], signed_body(sig, ref=b"ref", expiration=-100),
               handles=[h, s]))
    assert rc(r) == 0, hex(rc(r))
    out = params(r)
    timeout = out[2:10]
    assert out[:2] == b"\0\x08" and timeout[0] & 0x80
    assert struct.unpack(">Q", timeout)[0] & ~(1 << 63) >= 100000
    ticket = out[10:]
    assert ticket[:6] == u16(ST_AUTH_SIGNED) + u32(RH_NULL) and len(ticket) == 8 + 32
    s2, _ = start(ex)
    body = b2(timeout) + b2(b"") + b2(b"ref") + b2(key.name)
    forged = ticket[:8] + bytes([ticket[8] ^ 1]) + ticket[9:]
    assert rc(ex(pol("PolicyTicket", s2, body + forged))) == P(0x0A0, 5)
    assert rc(ex(pol("PolicyTicket", s2, body + ticket))) == 0
    assert get_digest(ex, s2) == f_signed(ZERO, key.name, b"ref")
    assert _unseal(ex, item, s2) == (0, b2(b"sealed by policy"))
    # a timeout in the past
    stale = b2(struct.pack(">Q", 1 | 1 << 63)) + body[10:]
    assert rc(ex(pol("PolicyTicket", s2, stale + ticket))) == P(0x0A3, 1)


# -- PolicyAuthorize: a policy approved by an external key --------------------------------------

def _authorize_codes(execute, key):
    """The PolicyAuthorize flow with its failures, as a list of outcomes."""
    out = []
    h = load_external(execute, key, RH_OWNER)
    approved = f_command_code(ZERO, CC_Unseal)
    item = _sealed_with_policy(execute, f_authorize(key.name, b"ref"))
    sig = key.sign(H(approved, b"ref"))
    code, ticket = verify(execute, h, H(approved, b"ref"), sig)
    out.append(code)
    assert ticket[:6] == u16(ST_VERIFIED) + u32(RH_OWNER)
    s, _ = start(execute)
    body = b2(approved) + b2(b"ref") + b2(key.name)
    out.append(rc(execute(pol("PolicyAuthorize", s, body + ticket))))       # VALUE: not yet
    out.append(rc(execute(pol("PolicyCommandCode", s, u32(CC_Unseal)))))
    bad = ticket[:8] + bytes([ticket[8] ^ 1]) + ticket[9:]
    out.append(rc(execute(pol("PolicyAuthorize", s, body + bad))))         # VALUE: ticket
    out.append(rc(execute(pol("PolicyAuthorize", s, b2(approved) + b2(b"ref") + b2(b"\0")
                              + ticket))))                                 # SIZE: keySign
    out.append(rc(execute(pol("PolicyAuthorize", s, b2(approved) + b2(b"ref")
                              + b2(b"\0\x99" + b"\0" * 32) + ticket))))    # HASH
    out.append(rc(execute(pol("PolicyAuthorize", s, b2(approved) + b2(b"ref")
                              + b2(key.name[:-1]) + ticket))))             # SIZE
    null_ticket = u16(ST_VERIFIED) + u32(RH_NULL) + b2(b"")
    out.append(rc(execute(pol("PolicyAuthorize", s, body + null_ticket))))  # VALUE
    out.append(rc(execute(pol("PolicyAuthorize", s, body + ticket))))
    out.append(get_digest(execute, s) == f_authorize(key.name, b"ref"))
    out.append(_unseal(execute, item, s))
    for x in (s, item, h):
        execute(cmd(CC_Flush, u32(x)))
    return out


def test_policy_authorize_with_a_verify_signature_ticket(keys):
    for key in keys:
        out = _authorize_codes(started(seed=b"authorize").execute, key)
        assert out == [0, P(0x084, 1), 0, P(0x084, 4), P(0x083, 3), P(0x083, 3), P(0x095, 3),
                       P(0x084, 4), 0, True, (0, b2(b"sealed by policy"))]


# -- PolicyLocality, PolicyCounterTimer, PolicyTemplate, PolicyPhysicalPresence -----------------

def _misc_codes(execute, keys):
    out = []
    item = _sealed_with_policy(execute, f_locality(ZERO, 0x08))           # locality 3 only
    s, _ = start(execute)
    out.append(rc(execute(pol("PolicyLocality", s, b"\0"))))              # RANGE
    out.append(rc(execute(pol("PolicyLocality", s, b"\x18"))))
    out.append(rc(execute(pol("PolicyLocality", s, b"\x40"))))             # RANGE: extended
    out.append(rc(execute(pol("PolicyLocality", s, b"\x03"))))             # RANGE: no overlap
    out.append(get_digest(execute, s).hex())
    out.append(rc(execute(pol("PolicyRestart", s))))
    out.append(rc(execute(pol("PolicyLocality", s, b"\x08"))))
    out.append(_unseal(execute, item, s))                                 # LOCALITY at 0
    r = execute(cmd(CC_Unseal, handles=[item], sessions=[
        struct.pack(">I", s) + b2(b"\x22" * 32) + b"\x01" + b2(b"")]), 3)
    out.append(rc(r))
    out.append(rc(execute(pol("PolicyLocality", s, b"\x10"))))            # locality 4 only
    r = execute(cmd(CC_Unseal, handles=[item], sessions=[
        struct.pack(">I", s) + b2(b"\x22" * 32) + b"\x01" + b2(b"")]), 4)
    out.append(rc(r))                                                     # POLICY_FAIL
    out.append(rc(execute(pol("PolicyRestart", s))))
    # PolicyCounterTimer: offsets into TPMS_TIME_INFO (25 bytes)
    for body in (b2(b"\0" * 4) + u16(26) + u16(0),                        # VALUE: offset
                 b2(b"\0" * 8) + u16(20) + u16(0),                        # RANGE
                 b2(b"\0" * 4) + u16(0) + u16(0x0C),                      # VALUE: operation
                 b2(b"\xff" * 8) + u16(8) + u16(5),                       # clock < max
                 b2(b"\0" * 4) + u16(16) + u16(0),                        # POLICY: resetCount is 1
                 b2(b"\0" * 4) + u16(20) + u16(1),                        # POLICY: restart 0
                 b2(b"\x01") + u16(24) + u16(0x0B),                       # POLICY: safe is set
                 b2(b"\x80" + b"\0" * 7) + u16(0) + u16(2),               # signed time > min
                 b2(b"\0" * 8) + u16(0) + u16(9)):                        # POLICY: time <= 0
        out.append(rc(execute(pol("PolicyCounterTimer", s, body))))
    out.append(get_digest(execute, s).hex())
    out.append(rc(execute(pol("PolicyRestart", s))))
    # PolicyTemplate and the cpHash-like conditions
    out.append(rc(execute(pol("PolicyTemplate", s, b2(b"\x01" * 20)))))   # SIZE
    out.append(rc(execute(pol("PolicyTemplate", s, b2(b"\x01" * 32)))))
    out.append(rc(execute(pol("PolicyTemplate", s, b2(b"\x01" * 32)))))   # the same: fine
    out.append(rc(execute(pol("PolicyTemplate", s, b2(b"\x02" * 32)))))   # VALUE
    out.append(rc(execute(cmd(0x16E, b2(b"\x01" * 32), handles=[s]))))    # PolicyCpHash: CPHASH
    out.append(rc(execute(cmd(0x170, b2(b"\x01" * 32), handles=[s]))))    # PolicyNameHash
    out.append(get_digest(execute, s).hex())
    out.append(rc(execute(pol("PolicyRestart", s))))
    # PolicyPhysicalPresence: no physical presence asserted
    pp_item = _sealed_with_policy(execute, f_pp(ZERO))
    out.append(rc(execute(pol("PolicyPhysicalPresence", s))))
    out.append(_unseal(execute, pp_item, s))                              # PP
    # PolicySigned error codes
    key = keys[1]
    h = load_external(execute, key)
    out.append(rc(execute(pol("PolicyRestart", s))))
    sig = key.sign(a_hash())
    out.append(rc(execute(cmd(CC["PolicySigned"], signed_body(sig, cp=b"\1" * 20),
                              handles=[h, s]))))                          # SIZE cpHashA
    out.append(rc(execute(cmd(CC["PolicySigned"], signed_body(sig, expiration=5),
                              handles=[h, s]))))                          # SIGNATURE
    execute(cmd(CC_Flush, u32(pp_item)))
    out.append(rc(execute(cmd(CC["PolicySigned"], signed_body(sig), handles=[pp_item, s]))))
    out.append(rc(execute(cmd(CC["PolicySigned"], signed_body(sig), handles=[h, s]))))
    out.append(get_digest(execute, s).hex())
    out.append(rc(execute(pol("PolicyTicket", s, b2(b"\0" * 7) + b2(b"") + b2(b"")
                              + b2(key.name) + u16(ST_AUTH_SIGNED) + u32(RH_NULL)
                              + b2(b"")))))                               # SIZE timeout
    out.append(rc(execute(pol("PolicyTicket", s, b2(b"\0" * 8) + b2(b"") + b2(b"")
                              + b2(key.name) + u16(ST_VERIFIED) + u32(RH_NULL)
                              + b2(b"")))))                               # TAG
    out.append(rc(execute(pol("PolicyTicket", s, b2(b"\0" * 8) + b2(b"") + b2(b"")
                              + b2(key.name) + u16(ST_AUTH_SIGNED) + u32(RH_NULL)
                              + b2(b"")))))                               # TICKET
    for x in (s, item, h):
        execute(cmd(CC_Flush, u32(x)))
    return out


def test_locality_counter_timer_template_pp(keys):
    out = _misc_codes(started(seed=b"misc").execute, keys)
    assert out[:4] == [P(0x08D, 1), 0, P(0x08D, 1), P(0x08D, 1)]
    assert out[4] == f_locality(ZERO, 0x18).hex()
    assert out[7] == (0x907, None) and out[8] == 0 and out[10] == S(0x09D)
    assert out[12:21] == [P(0x084, 2), 0x08D, P(0x084, 3), 0, 0x126, 0x126, 0x126, 0, 0x126]
    assert out[23:29] == [P(0x095, 1), 0, 0, P(0x084, 1), 0x151, 0x151]
    assert out[32] == (S(0x090), None)
    assert out[34:38] == [P(0x095, 2), P(0x09B, 5), 0x910, 0]
    assert out[39:] == [P(0x095, 1), P(0x097, 5), P(0x0A0, 5)]


@needs_swtpm
@pytest.mark.swtpm
def test_policy_more_as_swtpm(keys):
    sw = Swtpm()
    try:
        assert rc(sw.execute(STARTUP_CLEAR)) == 0
        sw_execute = retrying(sw.execute)
        ours = _misc_codes(started(seed=b"diff").execute, keys)
        theirs = _misc_codes(sw_execute, keys)
        assert [str(x) for x in ours] == [str(x) for x in theirs]
        for key in keys:
            assert _authorize_codes(started(seed=b"diff").execute, key) == \
                _authorize_codes(sw_execute, key)
        # trial digests
        for ex in (started(seed=b"diff").execute, sw_execute):
            h = load_external(ex, keys[0])
            junk = u16(0x14) + u16(0x0B) + b2(b"\0" * 256)
            d = _trial_digest(ex, lambda t: cmd(CC["PolicySigned"], signed_body(junk, ref=b"x"),
                                                handles=[h, t]),
                              lambda t: pol("PolicyLocality", t, b"\x21"),
                              lambda t: pol("PolicyCounterTimer", t, b2(b"\1") + u16(24)
                                            + u16(0xA)),
                              lambda t: pol("PolicyPhysicalPresence", t),
                              lambda t: pol("PolicyTemplate", t, b2(b"\x07" * 32)))
            want = f_template(f_pp(f_counter_timer(f_locality(
                f_signed(ZERO, keys[0].name, b"x"), 0x21), b"\1", 24, 0xA)), b"\x07" * 32)
            assert d == want
            ex(cmd(CC_Flush, u32(h)))
    finally:
        sw.close()


# -- tpm2-tools --------------------------------------------------------------------------------

@needs_tools
@pytest.mark.tools
def test_tools_policy_authorize_and_signed(daemon, tmp_path, keys):
    t = daemon.tcti("mssim")
    key = keys[0]
    (tmp_path / "key.pem").write_bytes(key.key.private_bytes(
        se.Encoding.PEM, se.PrivateFormat.TraditionalOpenSSL, se.NoEncryption()))
    (tmp_path / "pub.pem").write_bytes(key.key.public_key().public_bytes(
        se.Encoding.PEM, se.PublicFormat.SubjectPublicKeyInfo))

    def run(*args):
        return ok(args[0], "-T", t, *args[1:], cwd=tmp_path)

    run("tpm2_loadexternal", "-C", "o", "-G", "rsa", "-u", "pub.pem", "-c", "k.ctx",
        "-n", "k.name")
    name = (tmp_path / "k.name").read_bytes()        # (its own attributes: another Name)
    # the approved policy: PolicyCommandCode(Unseal), computed in a trial session
    run("tpm2_startauthsession", "-S", "s.ctx")
    run("tpm2_policycommandcode", "-S", "s.ctx", "-L", "approved.dat", "TPM2_CC_Unseal")
    run("tpm2_flushcontext", "s.ctx")
    approved = (tmp_path / "approved.dat").read_bytes()
    assert approved == f_command_code(ZERO, CC_Unseal)
    run("tpm2_startauthsession", "-S", "s.ctx")
    run("tpm2_policyauthorize", "-S", "s.ctx", "-L", "auth.dat", "-i", "approved.dat",
        "-n", "k.name")
    run("tpm2_flushcontext", "s.ctx")
    assert (tmp_path / "auth.dat").read_bytes() == f_authorize(name)
    # an object sealed under that policy
    run("tpm2_createprimary", "-C", "o", "-c", "prim.ctx")
    (tmp_path / "secret.dat").write_bytes(b"authorized")
    run("tpm2_create", "-C", "prim.ctx", "-L", "auth.dat", "-i", "secret.dat",
        "-u", "o.pub", "-r", "o.priv")
    run("tpm2_load", "-C", "prim.ctx", "-u", "o.pub", "-r", "o.priv", "-c", "o.ctx")
    # the key owner signs the approved policy; the TPM checks it and issues a ticket
    (tmp_path / "approved.sig").write_bytes(key.key.sign(
        approved, padding.PKCS1v15(), chashes.SHA256()))
    run("tpm2_verifysignature", "-c", "k.ctx", "-g", "sha256", "-m", "approved.dat",
        "-s", "approved.sig", "-f", "rsassa", "-t", "v.tkt")
    run("tpm2_startauthsession", "--policy-session", "-S", "s.ctx")
    run("tpm2_policycommandcode", "-S", "s.ctx", "TPM2_CC_Unseal")
    run("tpm2_policyauthorize", "-S", "s.ctx", "-i", "approved.dat", "-n", "k.name",
        "-t", "v.tkt")
    assert run("tpm2_unseal", "-p", "session:s.ctx", "-c", "o.ctx").encode() == b"authorized"
    run("tpm2_flushcontext", "s.ctx")
    # PolicySigned: a signature made outside the TPM over
    # aHash = H(nonceTPM || expiration || cpHashA || policyRef) = H(0x00000000)
    (tmp_path / "signed.sig").write_bytes(key.key.sign(
        b"\0\0\0\0", padding.PKCS1v15(), chashes.SHA256()))
    run("tpm2_startauthsession", "-S", "s.ctx")
    run("tpm2_policysigned", "-S", "s.ctx", "-c", "k.ctx", "-g", "sha256", "-s", "signed.sig",
        "-f", "rsassa", "-L", "signed.dat")
    run("tpm2_flushcontext", "s.ctx")
    assert (tmp_path / "signed.dat").read_bytes() == f_signed(ZERO, name)
    run("tpm2_create", "-C", "prim.ctx", "-L", "signed.dat", "-i", "secret.dat",
        "-u", "o2.pub", "-r", "o2.priv")
    run("tpm2_load", "-C", "prim.ctx", "-u", "o2.pub", "-r", "o2.priv", "-c", "o2.ctx")
    run("tpm2_startauthsession", "--policy-session", "-S", "s.ctx")
    run("tpm2_policysigned", "-S", "s.ctx", "-c", "k.ctx", "-g", "sha256", "-s", "signed.sig",
        "-f", "rsassa")
    assert run("tpm2_unseal", "-p", "session:s.ctx", "-c", "o2.ctx").encode() == b"authorized"
    run("tpm2_flushcontext", "s.ctx")
    # PolicyLocality in a trial session
    run("tpm2_startauthsession", "-S", "s.ctx")
    run("tpm2_policylocality", "-S", "s.ctx", "-L", "loc.dat", "three")
    run("tpm2_flushcontext", "s.ctx")
    assert (tmp_path / "loc.dat").read_bytes() == f_locality(ZERO, 0x08)
