"""The appraisal policy file (`ctpm verify --policy`, `ctpm verifier serve --policy`): the
example of docs/attestation.md loads as it reads, and a mistake is one line naming the key."""
import datetime
import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ctpm.attest.verify import load_policy

DOC = Path(__file__).resolve().parents[2] / "docs" / "attestation.md"


def self_signed_pem(name: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def documented_policy(tmp_path) -> str:
    """docs/attestation.md's policy with its placeholders filled in."""
    text = DOC.read_text()
    example = re.search(r"## Policy \(TOML\)\n\n```toml\n(.*?)```", text, re.S).group(1)
    ark, ek_ca = tmp_path / "ark.pem", tmp_path / "ek-ca.pem"
    ark.write_bytes(self_signed_pem("ARK"))
    ek_ca.write_bytes(self_signed_pem("EK CA"))
    return (example.replace("<96 hex>", "ab" * 48).replace("<64 hex>", "cd" * 32)
            .replace("/etc/ctpm/sim-ark.pem", str(ark))
            .replace("/etc/ctpm/tpm-vendor-ek-ca.pem", str(ek_ca)))


def write(tmp_path, text) -> str:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return str(path)


def test_documented_example_loads(tmp_path):
    policy = load_policy(write(tmp_path, documented_policy(tmp_path)))
    assert policy.id == "prod-web-v3"
    assert policy.snp.vmpl == 0 and policy.snp.measurements == {bytes.fromhex("ab" * 48)}
    assert dict(policy.snp.min_tcb) == {"bl": 4, "snp": 22, "ucode": 219}
    assert len(policy.trust.extra_arks) == 1 and len(policy.ek_cas) == 1
    assert policy.pcrs == "sha256:0,1,2,3,4,5,6,7"
    assert policy.require_event_log and policy.require_activation
    assert policy.reference == {("sha256", 7): bytes.fromhex("cd" * 32)}
    assert policy.tee.measurements == {bytes.fromhex("ab" * 48)}


@pytest.mark.parametrize("text, message", [
    ('[snp]\nallow_debugg = true\n', r"\[snp\]: unknown key 'allow_debugg'"),
    ('[tee]\nmeasurment = []\n', r"\[tee\]: unknown key 'measurment'"),
    ('[tpm]\npcr = "sha256:0"\n', r"\[tpm\]: unknown key 'pcr'"),
    ('[snpp]\n', r"unknown key 'snpp'"),
    ('[tee]\ntrust_ark = ["x.pem"]\n', r"\[tee\] trust_ark: the ARKs are \[snp\]'s"),
    ('[snp]\nvmpl = "two"\n', r"\[snp\] vmpl: 'two' is not valid"),
])
def test_mistakes_are_one_line_naming_the_key(tmp_path, text, message):
    with pytest.raises(ValueError, match=message) as e:
        load_policy(write(tmp_path, text))
    assert "\n" not in str(e.value) and "__init__" not in str(e.value)
