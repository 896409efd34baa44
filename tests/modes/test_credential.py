"""ctpm.modes.credential without a TPM: the EK certificate check's refusals (another key,
another CA, a forged signature, outside the validity period) and the verifier's own reading
of TPMT_PUBLIC against the engine's parser. (Credentials opened by a real TPM:
tests/modes/test_passthrough.py, against swtpm.)"""
import datetime
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ctpm import manufacture as m
from ctpm.modes.credential import CredentialError, check_ek_certificate, public_key
from ctpm.modes.identity import ek_ecc_template, ek_rsa_template


def rsa_ek(key):
    n = key.public_key().public_numbers().n.to_bytes(256, "big")
    t = ek_rsa_template()
    return t[:-258] + struct.pack(">H", 256) + n


def ecc_ek(key):
    nums = key.public_key().public_numbers()
    t = ek_ecc_template()
    return (t[:-68] + struct.pack(">H", 32) + nums.x.to_bytes(32, "big")
            + struct.pack(">H", 32) + nums.y.to_bytes(32, "big"))


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return m.load_or_create_ca(ca_dir=str(tmp_path_factory.mktemp("ca")))


def test_public_key_matches_the_engine_reading():
    from ctpm.crypto import keys
    from ctpm.wire.objects import TPMT_PUBLIC
    r = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    e = ec.generate_private_key(ec.SECP256R1())
    assert public_key(rsa_ek(r)).public_numbers() == r.public_key().public_numbers()
    assert public_key(ecc_ek(e)).public_numbers() == e.public_key().public_numbers()
    p = TPMT_PUBLIC.parse(ecc_ek(e))
    assert keys.ecc_public_key(p.parameters.curveID, p.unique.x, p.unique.y).public_numbers() \
        == public_key(ecc_ek(e)).public_numbers()


def test_certificate_refusals(ca, tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ek = rsa_ek(key)
    der = m.ek_certificate(ca, key.public_key(), "rsa", {})
    assert check_ek_certificate(der, ek, [ca[1]]) is not None
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(CredentialError, match="another key"):
        check_ek_certificate(der, rsa_ek(other_key), [ca[1]])
    other = m.load_or_create_ca(ca_dir=str(tmp_path / "other"))
    with pytest.raises(CredentialError, match="no CA given issued"):
        check_ek_certificate(der, ek, [other[1]])
    # same subject as the CA, another key: the signature does not verify
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    now = datetime.datetime.now(datetime.timezone.utc)
    impostor = (x509.CertificateBuilder().subject_name(ca[1].subject)
                .issuer_name(ca[1].subject).public_key(other[0].public_key())
                .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(1))
                .sign(other[0], hashes.SHA256()))
    with pytest.raises(CredentialError, match="no CA given issued"):
        check_ek_certificate(der, ek, [impostor])
    with pytest.raises(CredentialError, match="validity"):
        check_ek_certificate(der, ek, [ca[1]], now=now + datetime.timedelta(days=3651 + 365))
    with pytest.raises(CredentialError, match="not DER"):
        check_ek_certificate(b"\x30\x03abc", ek, [ca[1]])
