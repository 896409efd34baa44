"""Attestation through tpm2-pytss ESAPI (with its default salted, encrypted sessions where it
uses them), checked by an independent verifier: tpm2-pytss parses TPMS_ATTEST, `cryptography`
verifies the signature with the public key ESAPI returned, hashlib recomputes every digest.
Nothing here calls ctpm's own code to check ctpm.
"""
import hashlib
import struct

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from ctpm.testing import with_esapi

tpm2_pytss = pytest.importorskip("tpm2_pytss")
from tpm2_pytss import ESYS_TR, TSS2_Exception  # noqa: E402
from tpm2_pytss.constants import (TPM2_ALG, TPM2_CC, TPM2_RC, TPM2_SE, TPM2_ST,  # noqa: E402
                                  TPMA_NV, TPMA_OBJECT, TPMA_SESSION)
from tpm2_pytss.types import (TPM2B_DATA, TPM2B_NV_PUBLIC, TPM2B_PUBLIC,  # noqa: E402
                              TPM2B_SENSITIVE_CREATE, TPML_CC, TPML_DIGEST_VALUES, TPML_PCR_SELECTION,
                              TPMS_ATTEST, TPMS_NV_PUBLIC, TPMT_HA, TPMT_SIG_SCHEME,
                              TPMT_SYM_DEF)

AK_ATTRS = (TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.FIXEDTPM
            | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN
            | TPMA_OBJECT.USERWITHAUTH)
KEY_ATTRS = (TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
             | TPMA_OBJECT.SENSITIVEDATAORIGIN | TPMA_OBJECT.USERWITHAUTH)
NULL_SCHEME = TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL)
HASHES = {TPM2_ALG.SHA1: hashes.SHA1, TPM2_ALG.SHA256: hashes.SHA256,
          TPM2_ALG.SHA384: hashes.SHA384}
HASHLIB = {TPM2_ALG.SHA1: hashlib.sha1, TPM2_ALG.SHA256: hashlib.sha256,
           TPM2_ALG.SHA384: hashlib.sha384}
GENERATED = 0xFF544347


def public_key(public):
    """The `cryptography` public key of a TPM2B_PUBLIC, built from its raw fields."""
    area = public.publicArea
    if area.type == TPM2_ALG.RSA:
        n = int.from_bytes(bytes(area.unique.rsa), "big")
        e = area.parameters.rsaDetail.exponent or 65537
        return rsa.RSAPublicNumbers(e, n).public_key()
    curve = {0x3: ec.SECP256R1(), 0x4: ec.SECP384R1()}[area.parameters.eccDetail.curveID]
    x = int.from_bytes(bytes(area.unique.ecc.x), "big")
    y = int.from_bytes(bytes(area.unique.ecc.y), "big")
    return ec.EllipticCurvePublicNumbers(x, y, curve).public_key()


def verify(public, attest_bytes: bytes, signature):
    """Raise InvalidSignature unless `signature` (TPMT_SIGNATURE) signs attest_bytes."""
    key = public_key(public)
    if signature.sigAlg == TPM2_ALG.RSASSA:
        alg = signature.signature.rsassa.hash
        key.verify(bytes(signature.signature.rsassa.sig), attest_bytes, padding.PKCS1v15(),
                   HASHES[alg]())
    elif signature.sigAlg == TPM2_ALG.RSAPSS:
        alg = signature.signature.rsapss.hash
        key.verify(bytes(signature.signature.rsapss.sig), attest_bytes,
                   padding.PSS(padding.MGF1(HASHES[alg]()), padding.PSS.AUTO), HASHES[alg]())
    else:
        sig = signature.signature.ecdsa
        der = utils.encode_dss_signature(int.from_bytes(bytes(sig.signatureR), "big"),
                                         int.from_bytes(bytes(sig.signatureS), "big"))
        key.verify(der, attest_bytes, ec.ECDSA(HASHES[sig.hash]()))


def parse(attest) -> TPMS_ATTEST:
    data = bytes(attest)
    parsed, used = TPMS_ATTEST.unmarshal(data)
    assert used == len(data)
    return parsed


def create_primary(esapi, spec, attrs=AK_ATTRS, hierarchy=ESYS_TR.OWNER):
    handle, public, _, _, _ = esapi.create_primary(
        TPM2B_SENSITIVE_CREATE(), TPM2B_PUBLIC.parse(spec, objectAttributes=attrs),
        primary_handle=hierarchy)
    return handle, public


def ha(alg, data: bytes) -> TPMT_HA:
    value = TPMT_HA(hashAlg=alg)
    name = {TPM2_ALG.SHA1: "sha1", TPM2_ALG.SHA256: "sha256"}[alg]
    setattr(value.digest, name, hashlib.new(name, data).digest())
    return value


def pcr_values(esapi, selection: str):
    _, _, values = esapi.pcr_read(TPML_PCR_SELECTION.parse(selection))
    return b"".join(bytes(v) for v in values)


@pytest.mark.parametrize("spec,bank", [("rsa2048:rsassa-sha256:null", "sha256"),
                                       ("ecc256:ecdsa-sha256:null", "sha1"),
                                       ("ecc384:ecdsa-sha384:null", "sha256"),
                                       ("rsa2048:rsapss-sha256:null", "sha1")])
async def test_quote_verified_outside(ctpm_server, spec, bank):
    """tpm2_quote's flow: an AK quotes PCRs 0,1,7 of one bank; the verifier checks the
    signature, magic, nonce, and recomputes pcrDigest from PCR_Read values."""
    def scenario(esapi):
        ak, public = create_primary(esapi, spec)
        esapi.pcr_extend(ESYS_TR.PCR7, TPML_DIGEST_VALUES([ha(TPM2_ALG.SHA1, b"event"),
                                                           ha(TPM2_ALG.SHA256, b"event")]))
        selection = f"{bank}:0,1,7"
        quoted, signature = esapi.quote(ak, TPML_PCR_SELECTION.parse(selection),
                                        TPM2B_DATA(b"nonce-123"), NULL_SCHEME)
        return public, bytes(quoted), signature, pcr_values(esapi, selection)

    public, quoted, signature, pcrs = await with_esapi(ctpm_server, scenario)
    verify(public, quoted, signature)
    info = parse(quoted)
    assert info.magic == GENERATED and info.type == TPM2_ST.ATTEST_QUOTE
    assert bytes(info.extraData) == b"nonce-123"
    sig_hash = {TPM2_ALG.RSASSA: lambda s: s.rsassa.hash, TPM2_ALG.RSAPSS: lambda s: s.rsapss.hash,
                TPM2_ALG.ECDSA: lambda s: s.ecdsa.hash}[signature.sigAlg](signature.signature)
    assert bytes(info.attested.quote.pcrDigest) == HASHLIB[sig_hash](pcrs).digest()
    sel = info.attested.quote.pcrSelect
    assert sel.count == 1 and bytes(sel.pcrSelections[0].pcrSelect)[:3] == b"\x83\x00\x00"
    # a changed byte fails verification
    with pytest.raises(InvalidSignature):
        verify(public, quoted[:-1] + bytes([quoted[-1] ^ 1]), signature)


async def test_obfuscation_follows_the_hierarchy(ctpm_server):
    """Endorsement-hierarchy signers report the real resetCount/restartCount/firmware
    version; owner-hierarchy signers obfuscated ones, stable for one key, different between
    keys. GetTime's inner clockInfo is always the real one."""
    def scenario(esapi):
        ek_like, _ = create_primary(esapi, "rsa2048:rsassa-sha256:null",
                                    hierarchy=ESYS_TR.ENDORSEMENT)
        owner1, _ = create_primary(esapi, "rsa2048:rsassa-sha256:null")
        owner2, _ = create_primary(esapi, "ecc256:ecdsa-sha256:null")
        out = {}
        for name, key in (("eh", ek_like), ("sh1", owner1), ("sh2", owner2)):
            runs = []
            for _ in range(2):
                info, _sig = esapi.get_time(key, TPM2B_DATA(b""), NULL_SCHEME,
                                            privacy_admin_handle=ESYS_TR.ENDORSEMENT)
                runs.append(parse(info))
            out[name] = runs
        return out, esapi.read_clock()

    out, clock = await with_esapi(ctpm_server, scenario)

    def counters(a):
        return (a.clockInfo.resetCount, a.clockInfo.restartCount, a.firmwareVersion)

    real = (clock.clockInfo.resetCount, clock.clockInfo.restartCount)
    eh = out["eh"][0]
    assert counters(eh)[:2] == real
    assert counters(eh) == (eh.attested.time.time.clockInfo.resetCount,
                            eh.attested.time.time.clockInfo.restartCount,
                            eh.attested.time.firmwareVersion)
    for name in ("sh1", "sh2"):
        a, b = out[name]
        assert counters(a) == counters(b)              # stable for one signer
        assert counters(a)[:2] != real                 # but not the real values
        inner = a.attested.time
        assert (inner.time.clockInfo.resetCount, inner.time.clockInfo.restartCount) == real
        assert inner.firmwareVersion == eh.firmwareVersion
    assert counters(out["sh1"][0]) != counters(out["sh2"][0])
    assert out["eh"][1].clockInfo.clock >= eh.clockInfo.clock


async def test_certify_and_certify_creation(ctpm_server):
    """Certify: the signer vouches for a loaded key's Name and qualified Name (computed here
    from the parent's Name); CertifyCreation checks the creation ticket."""
    def scenario(esapi):
        ak, ak_public = create_primary(esapi, "ecc256:ecdsa-sha256:null")
        parent, _ = create_primary(
            esapi, "rsa2048:null:aes128cfb",
            attrs=(TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.DECRYPT | TPMA_OBJECT.FIXEDTPM
                   | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN
                   | TPMA_OBJECT.USERWITHAUTH))
        priv, pub, creation_data, creation_hash, ticket = esapi.create(
            parent, TPM2B_SENSITIVE_CREATE(),
            TPM2B_PUBLIC.parse("rsa2048:rsassa-sha256:null", objectAttributes=KEY_ATTRS))
        key = esapi.load(parent, priv, pub)
        certify_info, certify_sig = esapi.certify(key, ak, TPM2B_DATA(b"q"), NULL_SCHEME)
        creation_info, creation_sig = esapi.certify_creation(
            ak, key, TPM2B_DATA(b"c"), creation_hash, NULL_SCHEME, ticket)
        bad_ticket = ticket
        bad_ticket.digest = bytes(32)
        with pytest.raises(TSS2_Exception) as bad:
            esapi.certify_creation(ak, key, TPM2B_DATA(b""), creation_hash, NULL_SCHEME,
                                   bad_ticket)
        names = (bytes(esapi.tr_get_name(key)), bytes(esapi.tr_get_name(parent)))
        return (ak_public, bytes(certify_info), certify_sig, bytes(creation_info),
                creation_sig, bytes(creation_hash), names, bad.value.rc)

    (ak_public, certify_info, certify_sig, creation_info, creation_sig, creation_hash,
     (key_name, parent_name), bad_rc) = await with_esapi(ctpm_server, scenario)
    verify(ak_public, certify_info, certify_sig)
    verify(ak_public, creation_info, creation_sig)
    info = parse(certify_info)
    assert info.type == TPM2_ST.ATTEST_CERTIFY and bytes(info.extraData) == b"q"
    assert bytes(info.attested.certify.name) == key_name
    # QN(parent) of a primary = nameAlg || H(owner handle || parent Name)
    parent_qn = b"\x00\x0b" + hashlib.sha256(struct.pack(">I", 0x40000001)
                                             + parent_name).digest()
    key_qn = b"\x00\x0b" + hashlib.sha256(parent_qn + key_name).digest()
    assert bytes(info.attested.certify.qualifiedName) == key_qn
    creation = parse(creation_info)
    assert creation.type == TPM2_ST.ATTEST_CREATION
    assert bytes(creation.attested.creation.objectName) == key_name
    assert bytes(creation.attested.creation.creationHash) == creation_hash
    assert bad_rc == TPM2_RC.TICKET + TPM2_RC.P + TPM2_RC.RC4     # creationTicket


async def test_session_and_command_audit_digests(ctpm_server):
    """GetSessionAuditDigest after one audited GetRandom: the digest is
    H(0 || cpHash || rpHash), recomputed here; GetCommandAuditDigest reports the audited
    command list and a digest that a signed report starts over."""
    def scenario(esapi):
        signer, public = create_primary(esapi, "rsa2048:rsassa-sha256:null",
                                        hierarchy=ESYS_TR.ENDORSEMENT)
        session = esapi.start_auth_session(
            ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.HMAC,
            TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256)
        esapi.trsess_set_attributes(session, TPMA_SESSION.AUDIT | TPMA_SESSION.CONTINUESESSION)
        random = bytes(esapi.get_random(16, session1=session))
        audit_info, audit_sig = esapi.get_session_audit_digest(
            signer, session, TPM2B_DATA(b"s"), NULL_SCHEME,
            privacy_admin_handle=ESYS_TR.ENDORSEMENT)
        esapi.set_command_code_audit_status(TPM2_ALG.NULL, TPML_CC([TPM2_CC.GetRandom]),
                                            TPML_CC([]), auth=ESYS_TR.OWNER)
        esapi.get_random(8)
        first, first_sig = esapi.get_command_audit_digest(
            signer, TPM2B_DATA(b""), NULL_SCHEME, privacy_handle=ESYS_TR.ENDORSEMENT)
        second, _ = esapi.get_command_audit_digest(
            signer, TPM2B_DATA(b""), NULL_SCHEME, privacy_handle=ESYS_TR.ENDORSEMENT)
        return (public, random, bytes(audit_info), audit_sig, bytes(first), first_sig,
                bytes(second))

    (public, random, audit_info, audit_sig, first, first_sig, second) = \
        await with_esapi(ctpm_server, scenario)
    verify(public, audit_info, audit_sig)
    verify(public, first, first_sig)
    info = parse(audit_info)
    assert info.type == TPM2_ST.ATTEST_SESSION_AUDIT
    cp = hashlib.sha256(struct.pack(">IH", TPM2_CC.GetRandom, 16)).digest()
    rp = hashlib.sha256(struct.pack(">IIH", 0, TPM2_CC.GetRandom, 16) + random).digest()
    assert bytes(info.attested.sessionAudit.sessionDigest) == \
        hashlib.sha256(bytes(32) + cp + rp).digest()
    assert info.attested.sessionAudit.exclusiveSession == 1
    cmd_audit = parse(first).attested.commandAudit
    codes = sorted([TPM2_CC.SetCommandCodeAuditStatus, TPM2_CC.GetRandom])
    assert cmd_audit.digestAlg == TPM2_ALG.SHA512
    assert bytes(cmd_audit.commandDigest) == hashlib.sha512(
        b"".join(struct.pack(">I", c) for c in codes)).digest()
    assert len(bytes(cmd_audit.auditDigest)) == 64 and cmd_audit.auditCounter >= 1
    # the signed report reset the digest: the second sees no audited command since
    assert bytes(parse(second).attested.commandAudit.auditDigest) == b""


async def test_nv_certify(ctpm_server):
    """NV_Certify of a range (TPM_ST_ATTEST_NV with the bytes) and of the whole index
    (TPM_ST_ATTEST_NV_DIGEST, hashed with the scheme's hash)."""
    def scenario(esapi):
        signer, public = create_primary(esapi, "ecc256:ecdsa-sha256:null")
        nv_public = TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(
            nvIndex=0x01500020, nameAlg=TPM2_ALG.SHA256,
            attributes=TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.AUTHREAD
            | TPMA_NV.AUTHWRITE, dataSize=64))
        index = esapi.nv_define_space(b"", nv_public)
        esapi.nv_write(index, bytes(range(64)), 0)
        ranged, ranged_sig = esapi.nv_certify(signer, index, TPM2B_DATA(b"n"), NULL_SCHEME,
                                              16, 8, auth_handle=ESYS_TR.OWNER)
        whole, whole_sig = esapi.nv_certify(signer, index, TPM2B_DATA(b""), NULL_SCHEME, 0, 0,
                                            auth_handle=ESYS_TR.OWNER)
        with pytest.raises(TSS2_Exception) as past:
            esapi.nv_certify(signer, index, TPM2B_DATA(b""), NULL_SCHEME, 60, 8,
                             auth_handle=ESYS_TR.OWNER)
        name = bytes(esapi.tr_get_name(index))
        esapi.nv_undefine_space(index)
        return (public, name, bytes(ranged), ranged_sig, bytes(whole), whole_sig,
                past.value.rc)

    public, name, ranged, ranged_sig, whole, whole_sig, past_rc = \
        await with_esapi(ctpm_server, scenario)
    verify(public, ranged, ranged_sig)
    verify(public, whole, whole_sig)
    r = parse(ranged)
    assert r.type == TPM2_ST.ATTEST_NV
    assert bytes(r.attested.nv.indexName) == name and r.attested.nv.offset == 8
    assert bytes(r.attested.nv.nvContents) == bytes(range(8, 24))
    # TPM_ST_ATTEST_NV_DIGEST is newer than tpm2-pytss' TPMS_ATTEST: read it by hand
    assert struct.unpack(">IH", whole[:6]) == (GENERATED, 0x801C)
    assert whole.endswith(struct.pack(">H", len(name)) + name + struct.pack(">H", 32)
                          + hashlib.sha256(bytes(range(64))).digest())
    assert past_rc == TPM2_RC.NV_RANGE


async def test_attestation_in_encrypted_sessions(ctpm_server):
    """ESAPI the way applications use it: a salted HMAC session (salt encrypted to an EK-like
    key) with AES-CFB parameter encryption both ways authorizes the signer; ESAPI checks every
    response HMAC and decrypts the TPMS_ATTEST, which still verifies outside the TPM."""
    from tpm2_pytss.types import TPMT_SYM_DEF

    def scenario(esapi):
        salt_key, _ = create_primary(esapi, "rsa2048:null:aes128cfb",
                                     attrs=(TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.DECRYPT
                                            | TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
                                            | TPMA_OBJECT.SENSITIVEDATAORIGIN
                                            | TPMA_OBJECT.USERWITHAUTH),
                                     hierarchy=ESYS_TR.ENDORSEMENT)
        ak, ak_public = create_primary(esapi, "ecc256:ecdsa-sha256:null")
        sym = TPMT_SYM_DEF(algorithm=TPM2_ALG.AES)
        sym.keyBits.aes = 128
        sym.mode.aes = TPM2_ALG.CFB
        session = esapi.start_auth_session(salt_key, ESYS_TR.NONE, TPM2_SE.HMAC, sym,
                                           TPM2_ALG.SHA256)
        esapi.trsess_set_attributes(session, TPMA_SESSION.CONTINUESESSION
                                    | TPMA_SESSION.DECRYPT | TPMA_SESSION.ENCRYPT)
        quoted, quote_sig = esapi.quote(ak, TPML_PCR_SELECTION.parse("sha256:0,7"),
                                        TPM2B_DATA(b"secret nonce"), NULL_SCHEME,
                                        session1=session)
        certified, certify_sig = esapi.certify(ak, ak, TPM2B_DATA(b"q"), NULL_SCHEME,
                                               session1=session, session2=ESYS_TR.PASSWORD)
        values = pcr_values(esapi, "sha256:0,7")
        esapi.flush_context(session)
        return ak_public, bytes(quoted), quote_sig, bytes(certified), certify_sig, values

    ak_public, quoted, quote_sig, certified, certify_sig, values = \
        await with_esapi(ctpm_server, scenario)
    verify(ak_public, quoted, quote_sig)
    verify(ak_public, certified, certify_sig)
    info = parse(quoted)
    assert bytes(info.extraData) == b"secret nonce"
    assert bytes(info.attested.quote.pcrDigest) == hashlib.sha256(values).digest()
    assert parse(certified).type == TPM2_ST.ATTEST_CERTIFY
