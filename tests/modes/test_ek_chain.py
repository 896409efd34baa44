"""The TPM's EK certificate chain (NV 0x01C00100-0x01C001FF): passthrough carries it in the
manifest and a verifier with only the vendor's root accepts the EK certificate through it -
and refuses chains that do not hold (not a CA, expired, pathLenConstraint, another root)."""
import datetime
import os
import shutil
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ctpm import manufacture as m
from ctpm.modes.credential import (CredentialError, check_ek_certificate, public_key,
                                   split_certificates)
from ctpm.modes.identity import ek_rsa_template
from ctpm.testing.process import run_daemon
from tests.peers import SWTPM, retrying

pytestmark = [pytest.mark.skipif(SWTPM is None, reason="swtpm is not installed"),
              pytest.mark.skipif(shutil.which("tpm2_nvread") is None,
                                 reason="tpm2-tools not installed")]

ENDORSEMENT, EK_CERT, CHAIN = 0x4000000B, 0x01C00002, 0x01C00100
NOW = datetime.datetime.now(datetime.timezone.utc)


def ca(name, issuer=None, *, is_ca=True, path_length=None, days=3650, start=-1):
    """(key, certificate) of a CA named `name`, self-signed or issued by `issuer`."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer_key, signer_name = issuer if issuer else (key, None)
    cert = (x509.CertificateBuilder().subject_name(subject)
            .issuer_name(signer_name.subject if signer_name else subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW + datetime.timedelta(days=start))
            .not_valid_after(NOW + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=path_length if is_ca
                                                 else None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, is_ca, is_ca,
                                         False, False), critical=True)
            .sign(signer_key, hashes.SHA256()))
    return key, cert


def der(cert):
    from cryptography.hazmat.primitives.serialization import Encoding
    return cert.public_bytes(Encoding.DER)


def provision_chain(sw, issuer, chain: bytes, split: int):
    """A vendor's provisioning on the chip (swtpm, platform authorization): the RSA EK's
    certificate from `issuer` at 0x01C00002, `chain` (concatenated DER) over two indices,
    cut at `split` (the profile lets a certificate overflow into the next index)."""
    from ctpm.modes.tpmclient import RH_PLATFORM, TpmClient
    client = TpmClient(retrying(sw.execute))
    handle, ek, _ = client.create_primary(ENDORSEMENT, ek_rsa_template())
    client.flush(handle)
    attrs = (m.NV_PLATFORMCREATE | m.NV_AUTHREAD | m.NV_OWNERREAD | m.NV_PPREAD
             | m.NV_PPWRITE | m.NV_NO_DA)
    ek_der = m.ek_certificate(issuer, public_key(ek), "rsa", {})
    for index, data in ((EK_CERT, ek_der), (CHAIN, chain[:split]), (CHAIN + 1, chain[split:])):
        client.nv_define(RH_PLATFORM, index, attrs, len(data))
        for offset in range(0, len(data), 1024):
            client.nv_write(RH_PLATFORM, index, data[offset:offset + 1024], offset)
    sw.disconnect()
    return ek, ek_der


def test_chain_carried_and_checked_against_the_root(swtpm, sp, tmp_path):
    from ctpm.modes.anchor import decode_evidence, verify_anchor
    from ctpm.modes.identity import Identity
    from ctpm.snp.errors import SnpError
    from ctpm.snp.verify import Trust, Verifier

    root = ca("vendor root")
    middle = ca("vendor intermediate", root, path_length=1)
    issuing = ca("vendor EK issuing CA", middle, path_length=0)
    unrelated = ca("another product line", root)
    # in no particular order, with an unrelated certificate, one cut across the two indices
    chain = der(issuing[1]) + der(unrelated[1]) + der(middle[1])
    ek, ek_der = provision_chain(swtpm, issuing, chain, split=len(der(issuing[1])) + 100)

    swtpm.disconnect()
    with run_daemon("--mode", "passthrough", "--upstream", swtpm.tcti, "--mssim",
                    "127.0.0.1:0", "--anchor", "--snp-provider", "simulated",
                    "--snp-sim-dir", sp.directory, timeout=30) as d:
        nonce = os.urandom(64)
        (tmp_path / "nonce.bin").write_bytes(nonce)
        for args in (("tpm2_nvwrite", "0x01400002", "-C", "o", "-i", str(tmp_path / "nonce.bin")),
                     ("tpm2_nvread", "0x01400001", "-C", "o", "-o", str(tmp_path / "ev.bin"))):
            r = subprocess.run([args[0], "-T", d.tcti("mssim"), *args[1:]], capture_output=True,
                               timeout=60)
            assert r.returncode == 0, r.stderr.decode()
    ev = decode_evidence((tmp_path / "ev.bin").read_bytes())
    identity = Identity.from_manifest(ev.manifest, 1)
    certs = dict(identity.ek_certs)
    assert sorted(certs) == [EK_CERT, CHAIN, CHAIN + 1]
    assert certs[EK_CERT] == ek_der and certs[CHAIN] + certs[CHAIN + 1] == chain

    verifier = Verifier(Trust(extra_arks=(sp.ark,)))
    table = ev.cert_table or sp.cert_table()
    verify_anchor(ev.report, nonce, ev.manifest, 1, ek_public=ek, ek_cas=[root[1]],
                  verifier=verifier, cert_table=table)
    with pytest.raises(SnpError) as e:      # another vendor's root
        verify_anchor(ev.report, nonce, ev.manifest, 1, ek_cas=[ca("vendor root")[1]],
                      verifier=verifier, cert_table=table)
    assert e.value.check == "ek_certificate" and "through the TPM's chain" in str(e.value)


def test_chain_refusals():
    """What the walk refuses, each with its reason; the chain's certificates are never
    anchors themselves."""
    from ctpm.modes.identity import ek_ecc_template
    numbers = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    ek = (ek_ecc_template()[:-68] + b"\0\x20" + numbers.x.to_bytes(32, "big")
          + b"\0\x20" + numbers.y.to_bytes(32, "big"))       # an L-2 EK's TPMT_PUBLIC

    def ek_cert(issuer):
        return m.ek_certificate(issuer, public_key(ek), "ecc", {})

    root = ca("root")
    good = ca("issuing", root)
    assert check_ek_certificate(ek_cert(good), ek, [root[1]], intermediates=[der(good[1])])
    with pytest.raises(CredentialError, match="no CA given issued"):
        check_ek_certificate(ek_cert(good), ek, [root[1]])                 # chain missing
    with pytest.raises(CredentialError, match="no CA given issued"):
        check_ek_certificate(ek_cert(good), ek, [ca("root")[1]],
                             intermediates=[der(good[1])])      # a root of the same name
    not_ca = ca("leaf-like", root, is_ca=False)
    with pytest.raises(CredentialError, match="not a CA certificate"):
        check_ek_certificate(ek_cert(not_ca), ek, [root[1]], intermediates=[der(not_ca[1])])
    expired = ca("expired", root, days=-1, start=-10)
    with pytest.raises(CredentialError, match="outside its validity period"):
        check_ek_certificate(ek_cert(expired), ek, [root[1]], intermediates=[der(expired[1])])
    strict_root = ca("strict root", path_length=0)
    below = ca("below strict", strict_root)
    with pytest.raises(CredentialError, match="allows 0 intermediate"):
        check_ek_certificate(ek_cert(below), ek, [strict_root[1]],
                             intermediates=[der(below[1])])
    middle = ca("middle", root, path_length=0)
    deep = ca("deep", middle)
    with pytest.raises(CredentialError, match="allows 0 intermediate"):
        check_ek_certificate(ek_cert(deep), ek, [root[1]],
                             intermediates=[der(deep[1]), der(middle[1])])
    # a certificate the chain's CA did not sign, under its name
    impostor_key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(CredentialError, match="no CA given issued"):
        check_ek_certificate(ek_cert((impostor_key, good[1])), ek, [root[1]],
                             intermediates=[der(good[1])])


def test_split_certificates():
    a, b = der(ca("a")[1]), der(ca("b")[1])
    assert split_certificates(a + b) == [a, b]
    assert split_certificates(a + b + b"\xff" * 40) == [a, b]          # erased NV padding
    assert split_certificates(b"") == []
    with pytest.raises(CredentialError, match="truncated"):
        split_certificates(a + b[:-1])
    with pytest.raises(CredentialError, match="not DER"):
        split_certificates(a + b"\x02\x01\x00")
