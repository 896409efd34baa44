"""HMAC sessions through tpm2-pytss ESAPI: ESAPI checks every response HMAC and decrypts
encrypted responses itself, so a wrong key, nonce or cipher in ctpm fails these tests."""
import hashlib

import pytest

from ctpm.testing import with_esapi

tpm2_pytss = pytest.importorskip("tpm2_pytss")
from tpm2_pytss import ESYS_TR, TSS2_Exception  # noqa: E402
from tpm2_pytss.constants import TPM2_ALG, TPM2_CAP, TPM2_RC, TPM2_SE, TPMA_SESSION  # noqa: E402
from tpm2_pytss.types import (TPM2B_MAX_BUFFER, TPM2B_SENSITIVE_DATA,  # noqa: E402
                              TPML_DIGEST_VALUES, TPML_PCR_SELECTION, TPMT_HA, TPMT_SYM_DEF)

AES128_CFB = TPMT_SYM_DEF(algorithm=TPM2_ALG.AES)
AES128_CFB.keyBits.aes = 128
AES128_CFB.mode.aes = TPM2_ALG.CFB
AES256_CFB = TPMT_SYM_DEF(algorithm=TPM2_ALG.AES)
AES256_CFB.keyBits.aes = 256
AES256_CFB.mode.aes = TPM2_ALG.CFB
XOR_SHA256 = TPMT_SYM_DEF(algorithm=TPM2_ALG.XOR)
XOR_SHA256.keyBits.exclusiveOr = TPM2_ALG.SHA256
NO_SYM = TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL)

BOTH_WAYS = (TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.DECRYPT | TPMA_SESSION.ENCRYPT)


def pcr(esapi, n, alg="sha256"):
    _, _, values = esapi.pcr_read(TPML_PCR_SELECTION.parse(f"{alg}:{n}"))
    return bytes(values[0])


@pytest.mark.parametrize("kind", ["mssim", "swtpm"])
@pytest.mark.parametrize("sym", [AES128_CFB, AES256_CFB, XOR_SHA256],
                         ids=["aes128cfb", "aes256cfb", "xor-sha256"])
@pytest.mark.parametrize("bind", [ESYS_TR.NONE, ESYS_TR.OWNER], ids=["unbound", "bound"])
@pytest.mark.parametrize("auth_hash", [TPM2_ALG.SHA256, TPM2_ALG.SHA1, TPM2_ALG.SHA384])
async def test_encrypted_hmac_session(ctpm_server, kind, sym, bind, auth_hash):
    def scenario(esapi):
        session = esapi.start_auth_session(ESYS_TR.NONE, bind, TPM2_SE.HMAC, sym, auth_hash)
        esapi.trsess_set_attributes(session, BOTH_WAYS)
        event = b"measured through an encrypted session"
        digests = esapi.pcr_event(ESYS_TR.PCR12, event, session1=session)
        randoms = [bytes(esapi.get_random(32, session1=session)) for _ in range(3)]
        out_hash, _ = esapi.hash(TPM2B_MAX_BUFFER(b"secret input"), TPM2_ALG.SHA256,
                                 ESYS_TR.OWNER, session1=session)
        esapi.stir_random(TPM2B_SENSITIVE_DATA(b"secret entropy"), session1=session)
        value = pcr(esapi, 12)
        esapi.flush_context(session)
        return digests, randoms, bytes(out_hash), value

    digests, randoms, out_hash, value = await with_esapi(ctpm_server, scenario, kind)
    event_sha256 = hashlib.sha256(b"measured through an encrypted session").digest()
    assert [bytes(d.digest.sha256) for d in digests if d.hashAlg == TPM2_ALG.SHA256] == [
        event_sha256]
    assert value == hashlib.sha256(bytes(32) + event_sha256).digest()
    assert len(set(randoms)) == 3 and all(len(r) == 32 for r in randoms)
    assert out_hash == hashlib.sha256(b"secret input").digest()


@pytest.mark.parametrize("kind", ["mssim", "swtpm"])
async def test_hmac_session_without_encryption_and_flush(ctpm_server, kind):
    def scenario(esapi):
        session = esapi.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.HMAC, NO_SYM,
                                           TPM2_ALG.SHA256)
        ha = TPMT_HA(hashAlg=TPM2_ALG.SHA256)
        ha.digest.sha256 = b"\x05" * 32
        esapi.pcr_extend(ESYS_TR.PCR13, TPML_DIGEST_VALUES([ha]), session1=session)
        _, loaded = esapi.get_capability(TPM2_CAP.HANDLES, 0x02000000, 10)
        handles = list(loaded.data.handles)
        # Without continueSession the session ends with the command.
        esapi.trsess_set_attributes(session, 0)
        esapi.pcr_extend(ESYS_TR.PCR13, TPML_DIGEST_VALUES([ha]), session1=session)
        _, after = esapi.get_capability(TPM2_CAP.HANDLES, 0x02000000, 10)
        return handles, list(after.data.handles), pcr(esapi, 13)

    handles, after, value = await with_esapi(ctpm_server, scenario, kind)
    assert len(handles) == 1 and handles[0] >> 24 == 0x02 and after == []
    once = hashlib.sha256(bytes(32) + b"\x05" * 32).digest()
    assert value == hashlib.sha256(once + b"\x05" * 32).digest()


@pytest.mark.parametrize("kind", ["mssim"])
async def test_session_errors_through_esapi(ctpm_server, kind):
    def scenario(esapi):
        codes = []
        session = esapi.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.HMAC, NO_SYM,
                                           TPM2_ALG.SHA256)
        esapi.trsess_set_attributes(session, TPMA_SESSION.CONTINUESESSION
                                    | TPMA_SESSION.ENCRYPT)
        try:
            esapi.get_random(8, session1=session)      # encrypt with symmetric NULL
        except TSS2_Exception as e:
            codes.append(e.rc)
        esapi.flush_context(session)
        try:
            esapi.flush_context(session)
        except TSS2_Exception as e:
            codes.append(e.rc)
        return codes

    codes = await with_esapi(ctpm_server, scenario, kind)
    assert codes[0] == TPM2_RC.SYMMETRIC + TPM2_RC.S + TPM2_RC.RC1    # encrypt, symmetric NULL
    assert codes[1] == 0x70018     # ESAPI itself: TSS2_ESYS_RC_BAD_TR, the session is gone


@pytest.mark.parametrize("kind", ["mssim", "swtpm"])
@pytest.mark.parametrize("key", ["rsa2048:aes128cfb", "ecc256:aes128cfb", "ecc384:aes256cfb"])
async def test_salted_session(ctpm_server, kind, key):
    """A salt encrypted to a loaded key (RSA-OAEP or ECC): ESAPI derives the session key from
    it and checks every response HMAC, so a wrong salt or KDF here fails the calls."""
    from tpm2_pytss.types import TPM2B_SENSITIVE_CREATE

    def scenario(esapi):
        primary = esapi.create_primary(TPM2B_SENSITIVE_CREATE(), key)[0]
        session = esapi.start_auth_session(primary, ESYS_TR.NONE, TPM2_SE.HMAC, AES128_CFB,
                                           TPM2_ALG.SHA256)
        esapi.trsess_set_attributes(session, BOTH_WAYS)
        randoms = {bytes(esapi.get_random(16, session1=session)) for _ in range(3)}
        digests = esapi.pcr_event(ESYS_TR.PCR15, b"salted", session1=session)
        esapi.flush_context(session)
        esapi.flush_context(primary)
        return randoms, digests

    randoms, digests = await with_esapi(ctpm_server, scenario, kind)
    assert len(randoms) == 3
    assert any(bytes(d.digest.sha256) == hashlib.sha256(b"salted").digest() for d in digests)
