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


# -- the platform certificate: an attribute certificate, parsed here against RFC 5755 and the
# TCG Platform Attribute Credential Profile (cryptography and openssl 3.0 cannot read one) --

def tlvs(der: bytes):
    """[(tag, content, whole element)] of the DER elements one after another in `der`."""
    out, i = [], 0
    while i < len(der):
        tag, n, head = der[i], der[i + 1], 2
        if n & 0x80:
            k = n & 0x7F
            assert 1 <= k <= 3 and der[i + 2] != 0, "DER: minimal length"
            n, head = int.from_bytes(der[i + 2:i + 2 + k], "big"), 2 + k
            assert n >= 0x80, "DER: minimal length"
        assert i + head + n <= len(der), "DER: element runs past its parent"
        out.append((tag, der[i + head:i + head + n], der[i:i + head + n]))
        i += head + n
    return out


def one(der: bytes, tag: int) -> bytes:
    (got,) = tlvs(der)
    assert got[0] == tag, (hex(got[0]), hex(tag))
    return got[1]


def oid(content: bytes) -> str:
    parts, v = [content[0] // 40, content[0] % 40], 0
    for b in content[1:]:
        v = v << 7 | b & 0x7F
        if not b & 0x80:
            parts.append(v)
            v = 0
    return ".".join(map(str, parts))


def _name(der: bytes) -> dict:
    """{oid: value} of a Name's attributes (all RDNs)."""
    out = {}
    for tag, rdn, _ in tlvs(one(der, 0x30)):
        assert tag == 0x31
        for _, atv, _ in tlvs(rdn):
            (_, o, _), (_, value, _) = tlvs(atv)
            out[oid(o)] = value.decode()
    return out


def check_platform_certificate(der: bytes, ca_cert: x509.Certificate, ek: x509.Certificate):
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    (info_tag, info, info_der), (_, alg, _), (sig_tag, sig, _) = tlvs(one(der, 0x30))
    assert info_tag == 0x30 and sig_tag == 0x03 and sig[0] == 0
    (version, holder, issuer, alg_inner, serial, validity, attributes, extensions) = \
        tlvs(info)
    assert version[0] == 0x02 and version[1] == b"\x01"          # v2
    assert alg_inner[1] == alg                        # the same algorithm inside and out
    # Holder: baseCertificateID [0] IssuerSerial = the EK certificate's issuer and serial
    base = one(holder[1], 0xA0)
    (_, gn, _), (itag, number, _) = tlvs(base)
    assert _name(one(gn, 0xA4)) == {a.oid.dotted_string: a.value for a in ek.issuer}
    assert itag == 0x02 and int.from_bytes(number, "big") == ek.serial_number
    # Issuer: v2Form [0] with the CA's name
    assert issuer[0] == 0xA0
    assert _name(one(one(issuer[1], 0x30), 0xA4)) == \
        {a.oid.dotted_string: a.value for a in ca_cert.subject}
    assert serial[0] == 0x02 and serial[1][0] < 0x80
    (nb_tag, nb, _), (na_tag, na, _) = tlvs(validity[1])
    assert nb_tag == na_tag == 0x18 and na == b"99991231235959Z"
    found = {}
    for _, attribute, _ in tlvs(attributes[1]):
        (_, o, _), (set_tag, values, _) = tlvs(attribute)
        assert set_tag == 0x31
        found[oid(o)] = values
    spec = tlvs(one(found["2.23.133.2.17"], 0x30))              # tcgPlatformSpecification
    assert spec[0][0] == 0x30 and spec[1][0] == 0x04 and spec[1][1] == b"\0\0\0\1"
    assert [x[1] for x in tlvs(one(found["2.23.133.2.23"], 0x30))] == [b"\1", b"\1", b"\x13"]
    assert oid(one(one(found["2.23.133.2.25"], 0x30), 0x06)) == "2.23.133.8.2"
    assert extensions[0] == 0x30
    ext = {}
    for _, e, _ in tlvs(extensions[1]):
        parts = tlvs(e)
        ext[oid(parts[0][1])] = (len(parts) == 3 and parts[1][2] == b"\x01\x01\xff",
                                 parts[-1][1])
    critical, san = ext["2.5.29.17"]
    platform = _name(one(one(san, 0x30), 0xA4))
    assert critical and platform == {"2.23.133.5.1.1": "ACME", "2.23.133.5.1.4": "vm-9",
                                     "2.23.133.5.1.5": "7.1"}
    assert "TCG Trusted Platform Endorsement".encode() in ext["2.5.29.32"][1]
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert one(one(ext["2.5.29.35"][1], 0x30), 0x80) == ski
    # the signature over the DER of AttributeCertificateInfo, by the CA
    assert oid(tlvs(alg)[0][1]) == "1.2.840.113549.1.1.11"     # sha256WithRSAEncryption
    key = ca_cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    key.verify(sig[1:], info_der, padding.PKCS1v15(), hashes.SHA256())


def test_manufacture_with_a_platform_certificate(tmp_path):
    from cryptography.exceptions import InvalidSignature
    state = tmp_path / "tpm"
    out = ctpm("manufacture", "--state", str(state), "--platform-cert",
               "--platform-manufacturer", "ACME", "--platform-model", "vm-9",
               "--platform-version", "7.1")
    assert out.returncode == 0, out.stderr
    ca = x509.load_pem_x509_certificate((state / "localca" / "ca.pem").read_bytes())
    with run_daemon("--mssim", "127.0.0.1:0", "--state", str(state)) as d:
        tcti = d.tcti()
        tool(tcti, "tpm2_startup", "-c")
        public = tool(tcti, "tpm2_nvreadpublic", "0x01c08000").stdout
        assert "platformcreate" in public and "writelocked" in public
        tool(tcti, "tpm2_nvread", "-C", "o", "-o", str(tmp_path / "platform.der"),
             "0x01c08000")
        tool(tcti, "tpm2_getekcertificate", "-o", str(tmp_path / "rsa.der"), "-o",
             str(tmp_path / "ecc.der"))
    der = (tmp_path / "platform.der").read_bytes()
    ek = x509.load_der_x509_certificate((tmp_path / "rsa.der").read_bytes())
    check_platform_certificate(der, ca, ek)
    # well-formed DER for openssl too
    parsed = subprocess.run(["openssl", "asn1parse", "-inform", "DER", "-in",
                             str(tmp_path / "platform.der")], capture_output=True, text=True)
    assert parsed.returncode == 0 and ":2.23.133.8.2" in parsed.stdout
    # one changed byte in the signed part: the signature no longer verifies
    i = der.index(b"\x18\x0f") + 2 + 13                  # notBefore's last second digit
    other = b"1" if der[i:i + 1] != b"1" else b"2"
    with pytest.raises(InvalidSignature):
        check_platform_certificate(der[:i] + other + der[i + 1:], ca, ek)
