"""`ctpm manufacture`: then the real tpm2_getekcertificate reads the EK certificates from NV,
openssl verifies them against the CA, and they certify the keys the TPM holds persistent."""
import datetime
import os
import shutil
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

from ctpm.manufacture import tpm_specification_attributes
from ctpm.testing.process import command, environment, run_daemon

pytestmark = pytest.mark.skipif(not (shutil.which("tpm2_getekcertificate")
                                     and shutil.which("openssl")),
                                reason="tpm2-tools and openssl needed")


def ctpm(*args):
    return subprocess.run(command(*args), capture_output=True, text=True, env=environment(),
                          timeout=60)


def tool(tcti, *args, check=True):
    return subprocess.run(list(args), capture_output=True, text=True, check=check,
                          env=dict(os.environ, TPM2TOOLS_TCTI=tcti), timeout=30)


def check_ek_certificates(tmp_path, state, ca_pem):
    with run_daemon("--mssim", "127.0.0.1:0", "--state", str(state)) as d:
        tcti = d.tcti()
        tool(tcti, "tpm2_startup", "-c")
        rsa_der, ecc_der = tmp_path / "rsa.der", tmp_path / "ecc.der"
        tool(tcti, "tpm2_getekcertificate", "-o", str(rsa_der), "-o", str(ecc_der))
        for handle, der in (("0x81010001", rsa_der), ("0x81010002", ecc_der)):
            pem = der.with_suffix(".pem")
            subprocess.run(["openssl", "x509", "-inform", "der", "-in", str(der), "-out",
                            str(pem)], check=True)
            out = subprocess.run(["openssl", "verify", "-CAfile", str(ca_pem), str(pem)],
                                 capture_output=True, text=True)
            assert out.returncode == 0 and out.stdout.strip().endswith(": OK"), out
            key_pem = tmp_path / f"{handle}.pem"
            tool(tcti, "tpm2_readpublic", "-c", handle, "-f", "pem", "-o", str(key_pem))
            cert = x509.load_der_x509_certificate(der.read_bytes())
            tpm_key = serialization.load_pem_public_key(key_pem.read_bytes())
            spki = serialization.PublicFormat.SubjectPublicKeyInfo
            assert (cert.public_key().public_bytes(serialization.Encoding.DER, spki)
                    == tpm_key.public_bytes(serialization.Encoding.DER, spki))
            check_profile(cert, ecc=handle.endswith("2"))
        # locked like swtpm_setup --lock-nvram: even the platform cannot write
        out = tool(tcti, "tpm2_nvwrite", "-C", "p", "-i", str(rsa_der), "0x01c00002",
                   check=False)
        assert out.returncode != 0 and "0x148" in out.stderr        # TPM_RC_NV_LOCKED
        public = tool(tcti, "tpm2_nvreadpublic", "0x01c0000a").stdout
        assert "writelocked" in public and "platformcreate" in public


def check_profile(cert, *, ecc):
    """TCG EK Credential Profile: empty subject, critical SAN naming the TPM, CA:false,
    key usage by key type, the EK certificate EKU, TPMSpecification attributes."""
    assert len(cert.subject) == 0
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    (name,) = san.value.get_values_for_type(x509.DirectoryName)
    oids = {a.oid.dotted_string: a.value for a in name}
    assert oids["2.23.133.2.1"] == "id:4354504D"              # "CTPM"
    assert set(oids) == {"2.23.133.2.1", "2.23.133.2.2", "2.23.133.2.3"}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert (usage.key_agreement, usage.key_encipherment) == ((True, False) if ecc
                                                             else (False, True))
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ObjectIdentifier("2.23.133.8.1") in eku
    sda = cert.extensions.get_extension_for_oid(ObjectIdentifier("2.5.29.9")).value
    assert b"\x06\x05\x67\x81\x05\x02\x10" in sda.value       # tcg-at-tpmSpecification
    assert b"\x0c\x032.0" in sda.value


def test_manufacture_with_local_ca_then_getekcertificate_and_openssl_verify(tmp_path):
    state = tmp_path / "tpm"
    out = ctpm("manufacture", "--state", str(state))
    assert out.returncode == 0, out.stderr
    ca = state / "localca" / "ca.pem"
    assert oct((state / "localca" / "ca.key").stat().st_mode & 0o777) == "0o600"
    check_ek_certificates(tmp_path, state, ca)
    again = ctpm("manufacture", "--state", str(state))
    assert again.returncode == 1 and again.stderr.count("\n") == 1
    assert "already holds a TPM state (--overwrite" in again.stderr


def test_manufacture_with_a_given_ca_encrypted_state(tmp_path):
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test EK CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA384()))
    (tmp_path / "ca.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (tmp_path / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "state.key").write_bytes(os.urandom(32))
    state = tmp_path / "tpm"
    out = ctpm("manufacture", "--state", str(state), "--ca-key", str(tmp_path / "ca.key"),
               "--ca-cert", str(tmp_path / "ca.pem"), "--state-key", str(tmp_path / "state.key"))
    assert out.returncode == 0, out.stderr
    assert not (state / "localca").exists()
    journal = (state / "nv.journal").read_bytes()
    assert b"test EK CA".hex().encode() not in journal and b"nv_indices" not in journal
    # the daemon needs the key; then everything is as with the local CA
    with run_daemon("--mssim", "127.0.0.1:0", "--state", str(state), "--state-key",
                    str(tmp_path / "state.key")) as d:
        tool(d.tcti(), "tpm2_startup", "-c")
        out = tool(d.tcti(), "tpm2_getekcertificate", "-o", str(tmp_path / "r.der"), "-o",
                   str(tmp_path / "e.der"))
    for der in ("r.der", "e.der"):
        c = x509.load_der_x509_certificate((tmp_path / der).read_bytes())
        key.public_key().verify(c.signature, c.tbs_certificate_bytes,
                                ec.ECDSA(c.signature_hash_algorithm))
        assert c.issuer == name


def test_tpm_specification_der():
    assert tpm_specification_attributes(0, 164).hex() == (
        "3019" "3017" "06056781050210" "310e" "300c" "0c03322e30" "020100" "020200a4")
