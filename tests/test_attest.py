"""Attestation (Part 3 §18) and NV_Certify (§31.16): the same command bytes to ctpm and to
swtpm (libtpms). Both TPMs load the same external signing key, so everything in TPMS_ATTEST
but the clock and the obfuscated counters must be equal; each signature is verified with
`cryptography`, and every error case must give the same TPM_RC.
"""
import hashlib
import struct

import pytest
from cryptography.hazmat.primitives import hashes, serialization as se
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.peers import Pair, Swtpm, needs_swtpm
from tests.tpmcmd import b2, cmd, params, pcr_select, pw_session, rc, u16, u32

tpm2_pytss = pytest.importorskip("tpm2_pytss")
from tpm2_pytss.constants import TPMA_NV, TPMA_OBJECT  # noqa: E402
from tpm2_pytss.types import (TPM2B_PUBLIC, TPM2B_SENSITIVE, TPMS_ATTEST,  # noqa: E402
                              TPMT_ASYM_SCHEME, TPMT_SIGNATURE)

pytestmark = needs_swtpm

SHA1, SHA256, SHA512 = 0x04, 0x0B, 0x0D
RSASSA, RSAPSS, NULL = 0x14, 0x16, 0x10
RH_OWNER, RH_NULL, RH_ENDORSEMENT, RH_PLATFORM = 0x40000001, 0x40000007, 0x4000000B, 0x4000000C
CC = {"Certify": 0x148, "CertifyCreation": 0x14A, "Quote": 0x158,
      "GetSessionAuditDigest": 0x14D, "GetCommandAuditDigest": 0x133, "GetTime": 0x14C,
      "NV_Certify": 0x184, "LoadExternal": 0x167, "StartAuthSession": 0x176,
      "PCR_Extend": 0x182, "NV_DefineSpace": 0x12A, "NV_Write": 0x137}
RC_KEY, RC_SCHEME, RC_TICKET, RC_TYPE, RC_VALUE = 0x1C, 0x12, 0x20, 0x0A, 0x04
NV_INDEX = 0x01500100
PW = pw_session()


def fmt1(code, param=0, handle=0):
    """A format-one TPM_RC naming a parameter or a handle."""
    if param:
        return 0x080 | 0x040 | code | (param << 8)
    return 0x080 | code | (handle << 8)


SIGNER_KEY = rsa.generate_private_key(65537, 2048)


def external(key, attrs, scheme_alg=RSASSA) -> bytes:
    """LoadExternal body for `key` (private if it has one) in the NULL hierarchy."""
    scheme = TPMT_ASYM_SCHEME(scheme=scheme_alg)
    if scheme_alg != NULL:
        scheme.details.anySig.hashAlg = SHA256
    if isinstance(key, rsa.RSAPrivateKey):
        pem = key.private_bytes(se.Encoding.PEM, se.PrivateFormat.PKCS8, se.NoEncryption())
        sensitive = TPM2B_SENSITIVE.from_pem(pem).marshal()
        pub_pem = key.public_key().public_bytes(se.Encoding.PEM,
                                                se.PublicFormat.SubjectPublicKeyInfo)
    else:
        sensitive, pub_pem = u16(0), key.public_bytes(se.Encoding.PEM,
                                                      se.PublicFormat.SubjectPublicKeyInfo)
    public = TPM2B_PUBLIC.from_pem(pub_pem, objectAttributes=attrs, scheme=scheme)
    return sensitive + public.marshal() + u32(RH_NULL)


@pytest.fixture(scope="module")
def pair():
    peer = Swtpm()
    yield Pair(peer)
    peer.close()


def attest_and_signature(rsp):
    body = params(rsp)
    size = struct.unpack(">H", body[:2])[0]
    attest = body[2:2 + size]
    signature, used = TPMT_SIGNATURE.unmarshal(body[2 + size:])
    assert 2 + size + used == len(body)
    return attest, signature


def comparable(attest: bytes):
    """Everything in a TPMS_ATTEST that two TPMs with the same key must agree on: all but
    clockInfo and firmwareVersion (the clock differs, the counters are obfuscated with each
    TPM's own shProof for a NULL-hierarchy signer). Read by hand: tpm2-pytss does not know
    TPM_ST_ATTEST_NV_DIGEST."""
    magic, kind = struct.unpack(">IH", attest[:6])
    off = 6
    fields = []
    for _ in range(2):                  # qualifiedSigner, extraData
        size = struct.unpack(">H", attest[off:off + 2])[0]
        fields.append(attest[off + 2:off + 2 + size])
        off += 2 + size
    attested = attest[off + 17 + 8:]
    if kind == 0x8019:                  # TPMS_TIME_ATTEST_INFO: only the counters and safe
        attested = attested[16:25]
    return magic, kind, *fields, attested


def verify_rsassa(attest: bytes, signature):
    assert signature.sigAlg == RSASSA
    SIGNER_KEY.public_key().verify(bytes(signature.signature.rsassa.sig), attest,
                                   padding.PKCS1v15(), hashes.SHA256())


def same_attest(pair, command, signed=True):
    ours, theirs = pair.same_rc(command)
    assert rc(ours) == 0, hex(rc(ours))
    (a1, s1), (a2, s2) = attest_and_signature(ours), attest_and_signature(theirs)
    assert comparable(a1) == comparable(a2)
    if signed:
        verify_rsassa(a1, s1)
        verify_rsassa(a2, s2)
    else:
        assert s1.sigAlg == s2.sigAlg == NULL
    return a1


def sig_scheme(alg=NULL, hash_alg=SHA256):
    return u16(alg) + (u16(hash_alg) if alg != NULL else b"")


@pytest.fixture(scope="module")
def keys(pair):
    sign_attrs = TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.USERWITHAUTH
    signer = pair.handles(cmd(CC["LoadExternal"], external(SIGNER_KEY, sign_attrs)))
    decrypt_only = pair.handles(cmd(CC["LoadExternal"], external(
        rsa.generate_private_key(65537, 2048), TPMA_OBJECT.DECRYPT | TPMA_OBJECT.USERWITHAUTH,
        NULL)))
    for pcr in (7, 16):
        pair.same_rc(cmd(CC["PCR_Extend"], u32(1) + u16(SHA256) + bytes([pcr]) * 32,
                      handles=[pcr], sessions=[PW]))
    return signer, decrypt_only


def each(pair_handles, build):
    """Run a command that names per-TPM handles: build(handle) for ctpm and for swtpm."""
    return build(pair_handles[0]), build(pair_handles[1])


def run_each(pair, commands):
    ours = pair.ctpm.execute(commands[0])
    theirs = pair.peer.execute(commands[1])
    assert rc(ours) == rc(theirs), (hex(rc(ours)), hex(rc(theirs)))
    return ours, theirs


def test_handles_match(keys):
    """Both TPMs give the same transient handles (so one command serves both)."""
    signer, decrypt_only = keys
    assert signer[0] == signer[1] and decrypt_only[0] == decrypt_only[1]


def test_quote(pair, keys):
    signer = keys[0][0]
    selection = pcr_select((SHA256, [0, 7, 16]), (SHA1, [7]))
    a = same_attest(pair, cmd(CC["Quote"], b2(b"nonce") + sig_scheme() + selection,
                              handles=[signer], sessions=[PW]))
    assert a.endswith(b2(hashlib.sha256(_pcrs(pair, selection)).digest()))
    # the scheme's hash digests the PCRs: SHA-256 scheme, SHA-1 bank
    same_attest(pair, cmd(CC["Quote"], b2(b"") + sig_scheme(RSASSA, SHA256)
                          + pcr_select((SHA1, [0, 1, 2, 3])), handles=[signer], sessions=[PW]))
    # no signer: no hash for the PCR digest (TPM_RC_SCHEME, inScheme)
    ours, _ = pair.same_rc(cmd(CC["Quote"], b2(b"") + sig_scheme() + selection,
                            handles=[RH_NULL], sessions=[PW]))
    assert rc(ours) == fmt1(RC_SCHEME, param=2)
    # a scheme the key does not have; a key that cannot sign
    ours, _ = pair.same_rc(cmd(CC["Quote"], b2(b"") + sig_scheme(RSAPSS) + selection,
                            handles=[signer], sessions=[PW]))
    assert rc(ours) == fmt1(RC_SCHEME, param=2)
    ours, _ = pair.same_rc(cmd(CC["Quote"], b2(b"") + sig_scheme() + selection,
                            handles=[keys[1][0]], sessions=[PW]))
    assert rc(ours) == fmt1(RC_KEY, handle=1)


def _pcrs(pair, selection: bytes) -> bytes:
    r = pair.ctpm.execute(cmd(0x17E, selection))
    body = r[10:]
    count = struct.unpack(">I", body[4:8])[0]
    off = 8 + count * 6
    n = struct.unpack(">I", body[off:off + 4])[0]
    off += 4
    out = b""
    for _ in range(n):
        size = struct.unpack(">H", body[off:off + 2])[0]
        out += body[off + 2:off + 2 + size]
        off += 2 + size
    theirs = pair.peer.execute(cmd(0x17E, selection))
    assert theirs[14:] == r[14:]         # same PCR values (the update counters may differ)
    return out


def test_certify(pair, keys):
    signer = keys[0][0]
    a = same_attest(pair, cmd(CC["Certify"], b2(b"qd") + sig_scheme(),
                              handles=[signer, signer], sessions=[PW, PW]))
    assert TPMS_ATTEST.unmarshal(a)[0].attested.certify.name.name  # non-empty Name
    same_attest(pair, cmd(CC["Certify"], b2(b"") + sig_scheme(),
                          handles=[signer, RH_NULL], sessions=[PW, PW]), signed=False)
    ours, _ = pair.same_rc(cmd(CC["Certify"], b2(b"") + sig_scheme(RSAPSS),
                            handles=[signer, signer], sessions=[PW, PW]))
    assert rc(ours) == fmt1(RC_SCHEME, param=2)
    ours, _ = pair.same_rc(cmd(CC["Certify"], b2(b"") + sig_scheme(),
                            handles=[signer, keys[1][0]], sessions=[PW, PW]))
    assert rc(ours) == fmt1(RC_KEY, handle=2)


def test_certify_creation_needs_the_ticket(pair, keys):
    signer = keys[0][0]
    for ticket in (u16(0x8021) + u32(RH_NULL) + b2(b""),
                   u16(0x8021) + u32(RH_OWNER) + b2(bytes(64))):
        ours, _ = pair.same_rc(cmd(CC["CertifyCreation"],
                                b2(b"") + b2(bytes(32)) + sig_scheme() + ticket,
                                handles=[signer, signer], sessions=[PW]))
        assert rc(ours) == fmt1(RC_TICKET, param=4)


def test_get_time_and_command_audit(pair, keys):
    signer = keys[0][0]
    for code in ("GetTime", "GetCommandAuditDigest"):
        a = same_attest(pair, cmd(CC[code], b2(b"x") + sig_scheme(),
                                  handles=[RH_ENDORSEMENT, RH_NULL], sessions=[PW, PW]),
                        signed=False)
        assert TPMS_ATTEST.unmarshal(a)[0].qualifiedSigner.name == u32(RH_NULL)
        ours, _ = pair.same_rc(cmd(CC[code], b2(b"x") + sig_scheme(),
                                handles=[RH_OWNER, signer], sessions=[PW, PW]))
        assert rc(ours) == fmt1(RC_VALUE, handle=1)
    a = same_attest(pair, cmd(CC["GetCommandAuditDigest"], b2(b"") + sig_scheme(),
                              handles=[RH_ENDORSEMENT, signer], sessions=[PW, PW]))


def test_session_audit_digest_refusals(pair, keys):
    """A session that never audited is TPM_RC_TYPE; a policy session is not a
    TPMI_SH_HMAC (TPM_RC_VALUE)."""
    signer = keys[0][0]
    for kind in (0x00, 0x01):           # HMAC, POLICY
        start = cmd(CC["StartAuthSession"], u32(RH_NULL) + u32(RH_NULL) + b2(b"\x11" * 16)
                    + b2(b"") + bytes([kind]) + u16(NULL) + u16(SHA256))
        session = pair.handles(start)
        assert session[0] == session[1]
        ours, _ = pair.same_rc(cmd(CC["GetSessionAuditDigest"], b2(b"") + sig_scheme(),
                                handles=[RH_ENDORSEMENT, signer, session[0]],
                                sessions=[PW, PW]))
        assert rc(ours) == (fmt1(RC_TYPE, handle=3) if kind == 0 else fmt1(RC_VALUE, handle=3))
        pair.same_rc(cmd(0x165, u32(session[0])))


def test_nv_certify(pair, keys):
    signer = keys[0][0]
    attrs = TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.AUTHREAD | TPMA_NV.AUTHWRITE
    public = u32(NV_INDEX) + u16(SHA256) + u32(attrs) + b2(b"") + u16(100)
    pair.same_rc(cmd(CC["NV_DefineSpace"], b2(b"") + b2(public), handles=[RH_OWNER],
                  sessions=[PW]))

    def certify(size, offset, auth=RH_OWNER, sign=signer, scheme=sig_scheme()):
        return cmd(CC["NV_Certify"], b2(b"qd") + scheme + u16(size) + u16(offset),
                   handles=[sign, auth, NV_INDEX], sessions=[PW, PW])

    ours, _ = pair.same_rc(certify(4, 0))
    assert rc(ours) == 0x14A                       # TPM_RC_NV_UNINITIALIZED
    pair.same_rc(cmd(CC["NV_Write"], b2(bytes(range(100))) + u16(0),
                  handles=[RH_OWNER, NV_INDEX], sessions=[PW]))
    a = same_attest(pair, certify(20, 10))
    assert a.endswith(u16(10) + b2(bytes(range(10, 30))))
    same_attest(pair, certify(100, 0, auth=NV_INDEX))
    same_attest(pair, certify(5, 95, sign=RH_NULL), signed=False)
    # size 0 and offset 0: a digest of the whole index (TPM_ST_ATTEST_NV_DIGEST)
    a = same_attest(pair, certify(0, 0))
    assert a.endswith(b2(hashlib.sha256(bytes(range(100))).digest()))
    for size, offset, want in ((1, 100, 0x146), (90, 20, 0x146)):   # TPM_RC_NV_RANGE
        ours, _ = pair.same_rc(certify(size, offset))
        assert rc(ours) == want
    ours, _ = pair.same_rc(certify(4, 0, auth=RH_PLATFORM))
    assert rc(ours) == 0x149                       # TPM_RC_NV_AUTHORIZATION
    ours, _ = pair.same_rc(certify(4, 0, scheme=sig_scheme(RSAPSS)))
    assert rc(ours) == fmt1(RC_SCHEME, param=2)


# -- CertifyX509 --------------------------------------------------------------------------------

SUBJECT_KEY = rsa.generate_private_key(65537, 2048)


def certify_x509(subject, signer, partial, reserved=b"", scheme=None):
    return cmd(0x197, b2(reserved) + (scheme or sig_scheme()) + b2(partial),
               handles=[subject, signer], sessions=[PW, PW])


def raw_extension(oid: str, value: bytes):
    from cryptography import x509
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value)


def test_certify_x509(pair, keys):
    """The same key pair in both TPMs: the same addedToCertificate, tbsDigest and (RSASSA
    is deterministic) signature; the same answer to every malformed partial certificate."""
    from tests.x509util import SIGNING_USAGE, partial_certificate, tlv
    signer = keys[0][0]
    subject = pair.handles(cmd(CC["LoadExternal"], external(
        SUBJECT_KEY, TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.USERWITHAUTH)))[0]
    good = partial_certificate(SIGNING_USAGE)
    ours, theirs = pair.same_rc(certify_x509(subject, signer, good))
    assert rc(ours) == 0 and params(ours) == params(theirs)
    # the caller names the signature algorithm (four SEQUENCEs)
    sha256_rsa = tlv(0x30, bytes.fromhex("06092a864886f70d01010b0500"))
    ours, theirs = pair.same_rc(certify_x509(
        subject, signer, partial_certificate(SIGNING_USAGE, with_signature_alg=sha256_rsa)))
    assert rc(ours) == 0 and params(ours) == params(theirs)
    seqs_and_ext = good[2 + (good[1] & 0x7F if good[1] & 0x80 else 0):]
    bad_usage = raw_extension("2.5.29.15", bytes.fromhex("0303058040"))     # reserved bit
    wrong_tpma = raw_extension("2.23.133.10.1.1.1", bytes.fromhex("030500") + bytes(4))
    right_tpma = raw_extension("2.23.133.10.1.1.1", bytes.fromhex("030500")
                               + u32(TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.USERWITHAUTH))
    cases = [
        (good, b"x", fmt1(0x15, param=1)),                               # reserved: SIZE
        (b"", b"", fmt1(RC_VALUE, param=3)),
        (good[:-1], b"", fmt1(0x15, param=3)),                           # truncated: SIZE
        (good + b"\0", b"", fmt1(0x15, param=3)),                        # trailing byte
        (tlv(0x31, seqs_and_ext), b"", fmt1(0x15, param=3)),             # a SET
        (tlv(0x30, seqs_and_ext + b"\x02\x01\x01"), b"", fmt1(RC_VALUE, param=3)),
        (tlv(0x30, seqs_and_ext[:-len(seqs_and_ext) // 4]), b"", None),  # cut mid-element
        (partial_certificate(None), b"", fmt1(RC_VALUE, param=3)),       # no keyUsage
        (partial_certificate(SIGNING_USAGE, [right_tpma]), b"", 0),
    ]
    for partial, reserved, want in cases:
        ours, _ = pair.same_rc(certify_x509(subject, signer, partial, reserved))
        if want is not None:
            assert rc(ours) == want, (hex(rc(ours)), partial.hex())
    # keyUsage bits past decipherOnly: TPM_RC_RESERVED_BITS in the current reference;
    # libtpms 0.9 (swtpm 0.7) predates that check and accepts them, so only ctpm is asked
    r = pair.ctpm.execute(certify_x509(subject, signer, partial_certificate(None, [bad_usage])))
    assert rc(r) == fmt1(0x21, param=3)
    # libtpms 0.9 numbers CertifyX509's handles the other way round (RC_CertifyX509_
    # signHandle was H1, objectHandle H2; the current reference has objectHandle H1, as on
    # the wire): the same error, the other handle number.
    swap = {fmt1(0x02, handle=1): fmt1(0x02, handle=2), fmt1(RC_SCHEME, handle=2):
            fmt1(RC_SCHEME, handle=1)}
    # a TPMA_OBJECT extension that is not the key's attributes: TPM_RC_ATTRIBUTES (object)
    ours, theirs = pair.run(certify_x509(
        subject, signer, partial_certificate(SIGNING_USAGE, [wrong_tpma])))
    assert rc(ours) == fmt1(0x02, handle=1) and rc(theirs) == swap[rc(ours)]
    # a scheme X.509 has no identifier for, with no algorithm given: TPM_RC_SCHEME (sign key)
    # (libtpms holds three objects: the subject makes room for an ECC key, which
    # certifies itself)
    pair.same_rc(cmd(0x165, u32(subject)))
    ecc = pair.handles(cmd(CC["LoadExternal"], external_ecc()))[0]
    ours, theirs = pair.run(certify_x509(ecc, ecc, good, scheme=u16(0x1C) + u16(SHA256)))
    assert rc(ours) == fmt1(RC_SCHEME, handle=2) and rc(theirs) == swap[rc(ours)]
    # no signing key at all (the reference has no answer; swtpm is not asked)
    r = pair.ctpm.execute(certify_x509(ecc, RH_NULL, good))
    assert rc(r) == fmt1(RC_KEY, handle=2)
    pair.same_rc(cmd(0x165, u32(ecc)))


def external_ecc() -> bytes:
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(se.Encoding.PEM, se.PrivateFormat.PKCS8, se.NoEncryption())
    sensitive = TPM2B_SENSITIVE.from_pem(pem).marshal()
    pub_pem = key.public_key().public_bytes(se.Encoding.PEM,
                                            se.PublicFormat.SubjectPublicKeyInfo)
    public = TPM2B_PUBLIC.from_pem(pub_pem, objectAttributes=TPMA_OBJECT.SIGN_ENCRYPT
                                   | TPMA_OBJECT.USERWITHAUTH)
    return sensitive + public.marshal() + u32(RH_NULL)


def test_anonymous_ecdaa_quote(pair):
    """An ECDAA quote (after Commit) names no signer and carries no extraData: the
    qualifying data goes into the signed digest instead. Both TPMs agree on all of it."""
    from tests.test_ecdaa import ECDAA, P256, commit, handle_of, load_external, material
    d = 0x1234567890ABCDEF
    sens, pub = material(P256, d, u16(ECDAA) + u16(SHA256) + u16(0))
    h = handle_of(pair.same(load_external(sens, pub), "LoadExternal ECDAA"))
    ours, theirs = pair.same_rc(commit(h, b"\0\0\0\0", b"", b""))
    assert rc(ours) == 0
    scheme = u16(ECDAA) + u16(SHA256) + u16(0)          # commit count 0
    quote = cmd(CC["Quote"], b2(b"nonce") + scheme + pcr_select((SHA256, [0])),
                handles=[h], sessions=[PW])
    ours, theirs = pair.same_rc(quote)
    assert rc(ours) == 0
    a1, a2 = attest_and_signature(ours)[0], attest_and_signature(theirs)[0]
    assert comparable(a1) == comparable(a2)
    magic, kind, signer, extra, _ = comparable(a1)
    assert (kind, signer, extra) == (0x8018, b"", b"")
    # the count is spent
    ours, _ = pair.same_rc(quote)
    assert rc(ours) != 0
    pair.same(cmd(0x165, u32(h)))


def test_malformed_attestation_commands_get_a_response_code(caplog):
    """Mutated Quote, Certify, GetTime, NV_Certify and CertifyX509 commands (the last with its
    DER partial certificate) never reach the engine's internal-error path."""
    import random

    from ctpm.engine.tpm import Tpm
    from tests.x509util import SIGNING_USAGE, partial_certificate
    tpm = Tpm.manufacture(seed=b"fuzz-attest")
    tpm.execute(cmd(0x144, u16(0)))
    key = struct.unpack(">I", tpm.execute(cmd(CC["LoadExternal"], external(
        SIGNER_KEY, TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.USERWITHAUTH)))[10:14])[0]
    public = u32(NV_INDEX) + u16(SHA256) + u32(0x00060006) + b2(b"") + u16(32)
    tpm.execute(cmd(CC["NV_DefineSpace"], b2(b"") + b2(public), handles=[RH_OWNER],
                    sessions=[PW]))
    tpm.execute(cmd(CC["NV_Write"], b2(bytes(32)) + u16(0), handles=[RH_OWNER, NV_INDEX],
                    sessions=[PW]))
    seeds = [cmd(CC["Quote"], b2(b"n") + sig_scheme() + pcr_select((SHA256, [0, 7])),
                 handles=[key], sessions=[PW]),
             cmd(CC["Certify"], b2(b"q") + sig_scheme(), handles=[key, key], sessions=[PW, PW]),
             cmd(CC["GetTime"], b2(b"") + sig_scheme(), handles=[RH_ENDORSEMENT, key],
                 sessions=[PW, PW]),
             cmd(CC["NV_Certify"], b2(b"") + sig_scheme() + u16(8) + u16(4),
                 handles=[key, RH_OWNER, NV_INDEX], sessions=[PW, PW]),
             certify_x509(key, key, partial_certificate(SIGNING_USAGE))]
    for seed in seeds:
        assert rc(tpm.execute(seed)) == 0, hex(rc(tpm.execute(seed)))
    rng = random.Random(11)
    with caplog.at_level("ERROR", logger="ctpm.engine"):
        for _ in range(3000):
            c = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 3)):
                pos = rng.randrange(14, len(c))
                op = rng.random()
                if op < 0.6:
                    c[pos] = rng.randrange(256)
                elif op < 0.8:
                    del c[pos]
                else:
                    c.insert(pos, rng.randrange(256))
            c[2:6] = struct.pack(">I", len(c))
            r = tpm.execute(bytes(c))
            assert len(r) >= 10 and struct.unpack(">I", r[2:6])[0] == len(r)
            assert rc(r) != 0x101, bytes(c).hex()              # TPM_RC_FAILURE
            for h in [h for h in tpm.state.objects if h != key]:
                del tpm.state.objects[h]
    assert not [r for r in caplog.records if r.name == "ctpm.engine"], caplog.text[:2000]
