"""Partial certificates for TPM2_CertifyX509, and the certificate they complete, written
with `cryptography` and a minimal DER walker (independent of ctpm's own DER code)."""
import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def der_elements(der: bytes):
    """The top-level (tag, whole element bytes) of a DER string."""
    out, i = [], 0
    while i < len(der):
        tag, n = der[i], der[i + 1]
        head = 2
        if n & 0x80:
            k = n & 0x7F
            n = int.from_bytes(der[i + 2:i + 2 + k], "big")
            head += k
        out.append((tag, der[i:i + head + n]))
        i += head + n
    return out


def body(element: bytes) -> bytes:
    n = element[1]
    head = 2 + (n & 0x7F if n & 0x80 else 0)
    return element[head:]


def tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes((n,))
    elif n < 0x100:
        length = bytes((0x81, n))
    else:
        length = bytes((0x82, n >> 8, n & 0xFF))
    return bytes((tag,)) + length + content


def partial_certificate(key_usage: x509.KeyUsage | None = None, extra_extensions=(),
                        with_signature_alg: bytes | None = None) -> bytes:
    """A partial TBSCertificate: [signature alg,] issuer, validity, subject, [3] extensions.

    The pieces come from a certificate `cryptography` builds with a throwaway key."""
    throwaway = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ctpm CA")]))
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "TPM key")]))
               .public_key(throwaway.public_key()).serial_number(1)
               .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=365)))
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    for ext in extra_extensions:
        builder = builder.add_extension(ext, critical=False)
    cert = builder.sign(throwaway, hashes.SHA256())
    tbs = der_elements(body(cert.tbs_certificate_bytes))
    # version, serial, signature, issuer, validity, subject, spki, [3] extensions
    issuer, validity, subject = tbs[3][1], tbs[4][1], tbs[5][1]
    extensions = b"".join(e for t, e in tbs if t == 0xA3)
    parts = (with_signature_alg or b"") + issuer + validity + subject + extensions
    return tlv(0x30, parts)


SIGNING_USAGE = x509.KeyUsage(digital_signature=True, content_commitment=False,
                              key_encipherment=False, data_encipherment=False,
                              key_agreement=False, key_cert_sign=False, crl_sign=False,
                              encipher_only=False, decipher_only=False)


def complete_certificate(partial: bytes, added: bytes, signature_der: bytes) -> x509.Certificate:
    """Put the TPM's addedToCertificate into the partial certificate (X.509 order) and wrap
    the signature: what a CA-side tool does after TPM2_CertifyX509."""
    given = der_elements(body(partial))
    added_parts = der_elements(body(added))
    version, serial = added_parts[0][1], added_parts[1][1]
    spki = added_parts[-1][1]
    sequences = [e for t, e in given if t == 0x30]
    extensions = [e for t, e in given if t == 0xA3][0]
    sig_alg = sequences[0] if len(sequences) == 4 else added_parts[2][1]
    issuer, validity, subject = sequences[-3:]
    tbs = tlv(0x30, version + serial + sig_alg + issuer + validity + subject + spki
              + extensions)
    cert = tlv(0x30, tbs + sig_alg + tlv(0x03, b"\0" + signature_der))
    return x509.load_der_x509_certificate(cert)
