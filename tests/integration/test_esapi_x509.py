"""TPM2_CertifyX509 through tpm2-pytss ESAPI: the partial certificate comes from
`cryptography` (or from tpm2-tools' tpm2_certifyX509certutil), the TPM's additions are put
into it, and the completed certificate must load in `cryptography`, carry the certified
key, and verify under the signing key; tbsDigest must be the digest of its TBSCertificate.
"""
import hashlib
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from ctpm.testing import with_esapi
from tests.integration.test_esapi_attest import KEY_ATTRS, create_primary, public_key
from tests.x509util import SIGNING_USAGE, complete_certificate, partial_certificate

tpm2_pytss = pytest.importorskip("tpm2_pytss")
from tpm2_pytss import TSS2_Exception  # noqa: E402
from tpm2_pytss.constants import TPM2_ALG, TPM2_RC  # noqa: E402
from tpm2_pytss.types import TPMT_SIG_SCHEME  # noqa: E402

NULL_SCHEME = TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL)


def signature_der(signature) -> bytes:
    if signature.sigAlg in (TPM2_ALG.RSASSA, TPM2_ALG.RSAPSS):
        return bytes(signature.signature.rsassa.sig)
    sig = signature.signature.ecdsa
    return utils.encode_dss_signature(int.from_bytes(bytes(sig.signatureR), "big"),
                                      int.from_bytes(bytes(sig.signatureS), "big"))


def check(cert: x509.Certificate, signer_public, subject_public, tbs_digest: bytes):
    key = public_key(signer_public)
    assert hashlib.sha256(cert.tbs_certificate_bytes).digest() == tbs_digest
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    elif cert.signature_algorithm_oid == x509.SignatureAlgorithmOID.RSASSA_PSS:
        key.verify(cert.signature, cert.tbs_certificate_bytes,
                   padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.AUTO),
                   hashes.SHA256())
    else:
        key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(),
                   hashes.SHA256())
    assert cert.public_key().public_numbers() == public_key(subject_public).public_numbers()
    assert cert.version == x509.Version.v3
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature


@pytest.mark.parametrize("signer_spec,subject_spec", [
    ("rsa2048:rsassa-sha256:null", "ecc256:ecdsa-sha256:null"),
    ("ecc256:ecdsa-sha256:null", "rsa2048:rsassa-sha256:null"),
    ("rsa2048:rsapss-sha256:null", "ecc384:ecdsa-sha384:null"),
])
async def test_certify_x509_makes_a_certificate(ctpm_server, signer_spec, subject_spec):
    partial = partial_certificate(SIGNING_USAGE)

    def scenario(esapi):
        signer, signer_public = create_primary(esapi, signer_spec)
        subject, subject_public = create_primary(esapi, subject_spec, attrs=KEY_ATTRS)
        added, tbs_digest, signature = esapi.certify_x509(subject, signer, partial, NULL_SCHEME)
        return signer_public, subject_public, bytes(added), bytes(tbs_digest), signature

    signer_public, subject_public, added, tbs_digest, signature = \
        await with_esapi(ctpm_server, scenario)
    cert = complete_certificate(partial, added, signature_der(signature))
    check(cert, signer_public, subject_public, tbs_digest)


async def test_certify_x509_refusals(ctpm_server):
    """keyUsage a key cannot honour, a missing keyUsage, a TPMA_OBJECT extension that is not
    the key's attributes."""
    wrong_usage = x509.KeyUsage(digital_signature=False, content_commitment=False,
                                key_encipherment=False, data_encipherment=True,
                                key_agreement=False, key_cert_sign=False, crl_sign=False,
                                encipher_only=False, decipher_only=False)
    tpma = x509.UnrecognizedExtension(x509.ObjectIdentifier("2.23.133.10.1.1.1"),
                                      bytes.fromhex("030500") + bytes(4))
    cases = {"usage": partial_certificate(wrong_usage), "none": partial_certificate(None),
             "tpma": partial_certificate(SIGNING_USAGE, [tpma])}

    def scenario(esapi):
        signer, _ = create_primary(esapi, "rsa2048:rsassa-sha256:null")
        subject, _ = create_primary(esapi, "ecc256:ecdsa-sha256:null", attrs=KEY_ATTRS)
        out = {}
        for name, partial in cases.items():
            with pytest.raises(TSS2_Exception) as e:
                esapi.certify_x509(subject, signer, partial, NULL_SCHEME)
            out[name] = e.value.rc
        return out

    out = await with_esapi(ctpm_server, scenario)
    assert out["usage"] == out["none"] == TPM2_RC.VALUE + TPM2_RC.P + TPM2_RC.RC3
    assert out["tpma"] == TPM2_RC.ATTRIBUTES + TPM2_RC.H + TPM2_RC.RC1


@pytest.mark.skipif(subprocess.run(["which", "tpm2_certifyX509certutil"],
                                   capture_output=True).returncode != 0,
                    reason="tpm2-tools is not installed")
async def test_partial_certificate_from_tpm2_tools(ctpm_server, tmp_path):
    """tpm2_certifyX509certutil writes the partial certificate a CA would send."""
    subprocess.run(["tpm2_certifyX509certutil", "-o", "partial.der", "-d", "365",
                    "-i", "C=US;O=ctpm CA", "-s", "C=US;O=TPM key"], cwd=tmp_path, check=True,
                   capture_output=True)
    partial = (tmp_path / "partial.der").read_bytes()

    def scenario(esapi):
        signer, signer_public = create_primary(esapi, "ecc256:ecdsa-sha256:null")
        subject, subject_public = create_primary(esapi, "rsa2048:rsassa-sha256:null",
                                                 attrs=KEY_ATTRS)
        added, tbs_digest, signature = esapi.certify_x509(subject, signer, partial, NULL_SCHEME)
        return signer_public, subject_public, bytes(added), bytes(tbs_digest), signature

    signer_public, subject_public, added, tbs_digest, signature = \
        await with_esapi(ctpm_server, scenario)
    cert = complete_certificate(partial, added, signature_der(signature))
    check(cert, signer_public, subject_public, tbs_digest)
    assert cert.issuer.rfc4514_string() == "O=ctpm CA,C=US"
