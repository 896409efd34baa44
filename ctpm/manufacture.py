"""`ctpm manufacture --state DIR`: a TPM as a vendor ships it (what swtpm_setup with
swtpm_localca does): fresh seeds, the TCG RSA and ECC endorsement keys persistent at
0x81010001 / 0x81010002, their certificates - issued by a local CA, following the TCG EK
Credential Profile - in the NV indices 0x01c00002 / 0x01c0000a where tpm2_getekcertificate
and Keylime read them, optionally a TCG Platform Certificate (an attribute certificate) at
0x01c08000, those indices locked like swtpm_setup --lock-nvram.

Everything goes through `Tpm.execute` as TPM commands, as a provisioning tool would send
them; the certificates are built here with `cryptography`.
"""
import datetime
import os
import struct
import sys

from .state.errors import StoreError

RH_OWNER, RH_ENDORSEMENT, RH_PLATFORM = 0x40000001, 0x4000000B, 0x4000000C
EK_RSA_HANDLE, EK_ECC_HANDLE = 0x81010001, 0x81010002
EK_RSA_CERT_INDEX, EK_ECC_CERT_INDEX = 0x01C00002, 0x01C0000A
MAX_NV_CHUNK = 1024

# TCG EK Credential Profile 2.0, templates L-1 (RSA 2048) and L-2 (ECC NIST P-256):
# fixedTPM, fixedParent, sensitiveDataOrigin, adminWithPolicy, restricted, decrypt, with
# PolicyA (PolicySecret(TPM_RH_ENDORSEMENT)) and zeroed unique fields.
EK_ATTRIBUTES = 0x000300B2
POLICY_A_SHA256 = bytes.fromhex("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")

# TPMA_NV of the certificate indices, as swtpm_setup defines them (WRITEDEFINE: a write lock
# that lasts until the index is deleted).
NV_PPWRITE, NV_WRITEDEFINE, NV_PPREAD, NV_OWNERREAD = 0x1, 0x2000, 0x10000, 0x20000
NV_AUTHREAD, NV_NO_DA, NV_PLATFORMCREATE = 0x40000, 0x2000000, 0x40000000

OID_TPM_MANUFACTURER, OID_TPM_MODEL, OID_TPM_VERSION = "2.23.133.2.1", "2.23.133.2.2", \
    "2.23.133.2.3"
OID_TPM_SPECIFICATION = "2.23.133.2.16"
OID_EK_CERTIFICATE = "2.23.133.8.1"
OID_SUBJECT_DIRECTORY_ATTRIBUTES = "2.5.29.9"

# TCG Platform Attribute Credential Profile (Platform Certificate Profile v1.1)
PLATFORM_CERT_INDEX = 0x01C08000
OID_PLATFORM_SPECIFICATION = "2.23.133.2.17"       # tcg-at-tcgPlatformSpecification
OID_CREDENTIAL_SPECIFICATION = "2.23.133.2.23"     # tcg-at-tcgCredentialSpecification
OID_CREDENTIAL_TYPE = "2.23.133.2.25"              # tcg-at-tcgCredentialType
OID_PLATFORM_CERTIFICATE = "2.23.133.8.2"          # tcg-kp-PlatformAttributeCertificate
OID_PLATFORM_MANUFACTURER = "2.23.133.5.1.1"       # tcg-at-platformManufacturerStr
OID_PLATFORM_MODEL = "2.23.133.5.1.4"              # tcg-at-platformModel
OID_PLATFORM_VERSION = "2.23.133.5.1.5"            # tcg-at-platformVersion
OID_SUBJECT_ALT_NAME, OID_CERTIFICATE_POLICIES = "2.5.29.17", "2.5.29.32"
OID_AUTHORITY_KEY_ID, OID_ANY_POLICY, OID_USER_NOTICE = "2.5.29.35", "2.5.29.32.0", \
    "1.3.6.1.5.5.7.2.2"
USER_NOTICE = "TCG Trusted Platform Endorsement"   # the profile's fixed userNotice text
PLATFORM_CLASS_PC_CLIENT = b"\x00\x00\x00\x01"
PLATFORM_SPEC_VERSION = (1, 5, 0)                  # TCG PC Client platform specification
CREDENTIAL_SPEC_VERSION = (1, 1, 19)               # Platform Certificate Profile v1.1 r19
SIGNATURE_ALGORITHMS = {                           # (hash, signer kind) -> AlgorithmIdentifier
    ("sha256", "rsa"): "1.2.840.113549.1.1.11", ("sha384", "rsa"): "1.2.840.113549.1.1.12",
    ("sha512", "rsa"): "1.2.840.113549.1.1.13", ("sha256", "ec"): "1.2.840.10045.4.3.2",
    ("sha384", "ec"): "1.2.840.10045.4.3.3", ("sha512", "ec"): "1.2.840.10045.4.3.4",
}


class ManufactureError(Exception):
    """One line for the user."""


def _u16(v):
    return struct.pack(">H", v)


def _u32(v):
    return struct.pack(">I", v)


def _b2(b):
    return _u16(len(b)) + b


def _pw(password=b""):
    area = _u32(0x40000009) + _u16(0) + b"\x01" + _b2(password)
    return _u32(len(area)) + area


def _cmd(code, handles=(), body=b"", auth=True):
    payload = b"".join(_u32(h) for h in handles) + (_pw() if auth else b"") + body
    return struct.pack(">HII", 0x8002 if auth else 0x8001, 10 + len(payload), code) + payload


class _Client:
    def __init__(self, tpm):
        self.tpm = tpm

    def __call__(self, code, handles=(), body=b"", auth=True, what=""):
        rsp = self.tpm.execute(_cmd(code, handles, body, auth))
        rc = struct.unpack_from(">I", rsp, 6)[0]
        if rc:
            raise ManufactureError(f"{what or hex(code)} failed: TPM_RC {rc:#x}")
        return rsp


def ek_template(kind: str) -> bytes:
    sym = _u16(0x0006) + _u16(128) + _u16(0x0043)           # AES-128-CFB
    head = _u16(0x0001 if kind == "rsa" else 0x0023) + _u16(0x000B) + _u32(EK_ATTRIBUTES) \
        + _b2(POLICY_A_SHA256) + sym + _u16(0x0010)
    if kind == "rsa":
        return head + _u16(2048) + _u32(0) + _b2(bytes(256))
    return head + _u16(0x0003) + _u16(0x0010) + _b2(bytes(32)) + _b2(bytes(32))


def _public_key(tpmt: bytes, kind: str):
    """The cryptography public key of a TPMT_PUBLIC made from `ek_template(kind)`."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    pos = 8
    pos += 2 + struct.unpack_from(">H", tpmt, pos)[0]        # authPolicy
    pos += 6 + 2                                              # symmetric, scheme
    if kind == "rsa":
        _bits, exponent = struct.unpack_from(">HI", tpmt, pos)
        pos += 6
        n = struct.unpack_from(">H", tpmt, pos)[0]
        modulus = int.from_bytes(tpmt[pos + 2:pos + 2 + n], "big")
        return rsa.RSAPublicNumbers(exponent or 65537, modulus).public_key()
    pos += 4                                                  # curve, kdf
    nx = struct.unpack_from(">H", tpmt, pos)[0]
    x = int.from_bytes(tpmt[pos + 2:pos + 2 + nx], "big")
    pos += 2 + nx
    ny = struct.unpack_from(">H", tpmt, pos)[0]
    y = int.from_bytes(tpmt[pos + 2:pos + 2 + ny], "big")
    return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()


def _properties(client) -> dict:
    """TPM_PT_FIXED properties 0x100.. (manufacturer, level, revision, firmware, ...)."""
    rsp = client(0x17A, body=_u32(6) + _u32(0x100) + _u32(64), auth=False,
                 what="GetCapability")
    count = struct.unpack_from(">I", rsp, 15)[0]
    return {p: v for p, v in (struct.unpack_from(">II", rsp, 19 + 8 * i) for i in range(count))}


# -- a minimal DER writer for the one extension cryptography does not build ----------------

def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def _der_oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytes([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        body += bytes(reversed(chunk))
    return _der(0x06, body)


def _der_int(v: int) -> bytes:
    return _der(0x02, v.to_bytes(v.bit_length() // 8 + 1, "big"))


def _der_time(t: datetime.datetime) -> bytes:
    return _der(0x18, t.strftime("%Y%m%d%H%M%SZ").encode())


def _der_utf8(s: str) -> bytes:
    return _der(0x0C, s.encode())


def _version(v) -> bytes:
    return _der(0x30, b"".join(_der_int(x) for x in v))


def _attribute(oid: str, value: bytes) -> bytes:
    return _der(0x30, _der_oid(oid) + _der(0x31, value))


def _extension(oid: str, value: bytes, critical=False) -> bytes:
    return _der(0x30, _der_oid(oid) + (b"\x01\x01\xff" if critical else b"")
                + _der(0x04, value))


def _general_names_dn(name_der: bytes) -> bytes:
    """GeneralNames holding one directoryName ([4], explicit: Name is a CHOICE)."""
    return _der(0x30, _der(0xA4, name_der))


def tpm_specification_attributes(level: int, revision: int) -> bytes:
    """SubjectDirectoryAttributes holding TPMSpecification {family "2.0", level, revision}."""
    spec = _der(0x30, _der(0x0C, b"2.0") + _der_int(level) + _der_int(revision))
    attribute = _der(0x30, _der_oid(OID_TPM_SPECIFICATION) + _der(0x31, spec))
    return _der(0x30, attribute)


# -- the CA ----------------------------------------------------------------------------------

def load_or_create_ca(ca_key=None, ca_cert=None, ca_dir=None):
    """(private key, certificate): given as PEM files, or kept in `ca_dir` (created there,
    RSA-2048, ten years, on first use)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID
    if (ca_key is None) != (ca_cert is None):
        raise ManufactureError("--ca-key and --ca-cert go together")
    if ca_key is None:
        ca_key, ca_cert = os.path.join(ca_dir, "ca.key"), os.path.join(ca_dir, "ca.pem")
        if not os.path.exists(ca_key):
            os.makedirs(ca_dir, mode=0o700, exist_ok=True)
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ctpm local EK CA")])
            now = datetime.datetime.now(datetime.timezone.utc)
            cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                    .public_key(key.public_key()).serial_number(x509.random_serial_number())
                    .not_valid_before(now - datetime.timedelta(minutes=5))
                    .not_valid_after(now + datetime.timedelta(days=3650))
                    .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                    .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                                 False, False), critical=True)
                    .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                                   critical=False)
                    .sign(key, hashes.SHA256()))
            fd = os.open(ca_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
            with open(ca_cert, "wb") as f:
                f.write(cert.public_bytes(serialization.Encoding.PEM))
    try:
        with open(ca_key, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        with open(ca_cert, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError, TypeError) as e:
        raise ManufactureError(f"cannot use the CA ({ca_key}, {ca_cert}): {e}") from None
    return key, cert


def ek_certificate(ca, public_key, kind: str, props: dict) -> bytes:
    """DER of an EK certificate as the TCG EK Credential Profile describes it: empty
    subject, critical subjectAltName with the TPM's manufacturer, model and version, the TPM
    specification in subjectDirectoryAttributes, the EK certificate EKU."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ObjectIdentifier as Oid
    ca_key, ca_cert = ca
    manufacturer = props.get(0x105, 0)
    model = b"".join(_u32(props.get(p, 0)) for p in (0x106, 0x107)).rstrip(b"\0")
    version = (props.get(0x10B, 0) << 32) | props.get(0x10C, 0)
    san = x509.DirectoryName(x509.Name([x509.RelativeDistinguishedName([
        x509.NameAttribute(Oid(OID_TPM_MANUFACTURER), f"id:{manufacturer:08X}"),
        x509.NameAttribute(Oid(OID_TPM_MODEL), model.decode("ascii", "replace") or "ctpm"),
        x509.NameAttribute(Oid(OID_TPM_VERSION), f"id:{version >> 32:08X}"),
    ])]))
    usage = dict(digital_signature=False, content_commitment=False, key_encipherment=False,
                 data_encipherment=False, key_agreement=False, key_cert_sign=False,
                 crl_sign=False, encipher_only=False, decipher_only=False)
    usage["key_encipherment" if kind == "rsa" else "key_agreement"] = True
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([]))
               .issuer_name(ca_cert.subject)
               .public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               # RFC 5280 §4.1.2.5: no well-defined expiration date
               .not_valid_after(datetime.datetime(9999, 12, 31, 23, 59, 59,
                                                  tzinfo=datetime.timezone.utc))
               .add_extension(x509.SubjectAlternativeName([san]), critical=True)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(**usage), critical=True)
               .add_extension(x509.ExtendedKeyUsage([Oid(OID_EK_CERTIFICATE)]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False)
               .add_extension(x509.UnrecognizedExtension(
                   Oid(OID_SUBJECT_DIRECTORY_ATTRIBUTES),
                   tpm_specification_attributes(props.get(0x101, 0), props.get(0x102, 0))),
                   critical=False))
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.DER)


def platform_certificate(ca, ek_cert_der: bytes, *, manufacturer="ctpm",
                         model="ctpm virtual platform", version=None) -> bytes:
    """DER of a TCG Platform Certificate: an RFC 5755 attribute certificate (v2) as the TCG
    Platform Attribute Credential Profile describes it, signed by the CA.

    Holder: the EK certificate (baseCertificateID: its issuer and serial number). Issuer:
    v2Form with the CA's name. Attributes: tcgPlatformSpecification (PC Client class),
    tcgCredentialSpecification, tcgCredentialType = PlatformAttributeCertificate.
    Extensions: a critical subjectAltName with the platform's manufacturer, model and
    version, certificatePolicies with the profile's userNotice, authorityKeyIdentifier.
    `cryptography` cannot build attribute certificates, so the DER is written here and the
    TBS part signed with the CA key.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from . import __version__
    ca_key, ca_cert = ca
    ek = x509.load_der_x509_certificate(ek_cert_der)
    if isinstance(ca_key, rsa.RSAPrivateKey):
        kind, hash_name = "rsa", "sha256"
    elif isinstance(ca_key, ec.EllipticCurvePrivateKey):
        kind = "ec"
        hash_name = {"secp384r1": "sha384", "secp521r1": "sha512"}.get(ca_key.curve.name,
                                                                         "sha256")
    else:
        raise ManufactureError("the CA key must be RSA or ECDSA to sign a platform certificate")
    algorithm = _der(0x30, _der_oid(SIGNATURE_ALGORITHMS[hash_name, kind])
                     + (b"\x05\x00" if kind == "rsa" else b""))
    holder = _der(0x30, _der(0xA0, _general_names_dn(ek.issuer.public_bytes())
                             + _der_int(ek.serial_number)))
    issuer = _der(0xA0, _general_names_dn(ca_cert.subject.public_bytes()))
    now = datetime.datetime.now(datetime.timezone.utc)
    validity = _der(0x30, _der_time(now - datetime.timedelta(minutes=5))
                    + _der_time(datetime.datetime(9999, 12, 31, 23, 59, 59)))
    attributes = _der(0x30, _attribute(OID_PLATFORM_SPECIFICATION, _der(
        0x30, _version(PLATFORM_SPEC_VERSION) + _der(0x04, PLATFORM_CLASS_PC_CLIENT)))
        + _attribute(OID_CREDENTIAL_SPECIFICATION, _version(CREDENTIAL_SPEC_VERSION))
        + _attribute(OID_CREDENTIAL_TYPE, _der(0x30, _der_oid(OID_PLATFORM_CERTIFICATE))))
    platform = _der(0x30, _der(0x31, b"".join(
        _der(0x30, _der_oid(oid) + _der_utf8(value))
        for oid, value in ((OID_PLATFORM_MANUFACTURER, manufacturer),
                           (OID_PLATFORM_MODEL, model),
                           (OID_PLATFORM_VERSION, version or __version__)))))
    policies = _der(0x30, _der(0x30, _der_oid(OID_ANY_POLICY) + _der(0x30, _der(
        0x30, _der_oid(OID_USER_NOTICE) + _der(0x30, _der_utf8(USER_NOTICE))))))
    key_id = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    extensions = _der(0x30, _extension(OID_SUBJECT_ALT_NAME, _general_names_dn(platform),
                                       critical=True)
                      + _extension(OID_CERTIFICATE_POLICIES, policies)
                      + _extension(OID_AUTHORITY_KEY_ID,
                                   _der(0x30, _der(0x80, key_id.key_identifier))))
    serial = int.from_bytes(os.urandom(16), "big") >> 1 | 1
    info = _der(0x30, _der_int(1) + holder + issuer + algorithm + _der_int(serial) + validity
                + attributes + extensions)
    digest = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(),
              "sha512": hashes.SHA512()}[hash_name]
    signature = (ca_key.sign(info, padding.PKCS1v15(), digest) if kind == "rsa"
                 else ca_key.sign(info, ec.ECDSA(digest)))
    return _der(0x30, info + algorithm + _der(0x03, b"\0" + signature))


# -- the provisioning ------------------------------------------------------------------------

def _write_certificate(client, index, cert, lock_nvram):
    """A platform-created index holding `cert`, readable by owner and auth, write-locked
    until deleted (with lock_nvram), as swtpm_setup defines them."""
    attrs = (NV_PLATFORMCREATE | NV_AUTHREAD | NV_OWNERREAD | NV_PPREAD | NV_PPWRITE
             | NV_NO_DA | (NV_WRITEDEFINE if lock_nvram else 0))
    nv_public = _u32(index) + _u16(0x000B) + _u32(attrs) + _b2(b"") + _u16(len(cert))
    client(0x12A, [RH_PLATFORM], _b2(b"") + _b2(nv_public), what="NV_DefineSpace")
    for offset in range(0, len(cert), MAX_NV_CHUNK):
        client(0x137, [RH_PLATFORM, index],
               _b2(cert[offset:offset + MAX_NV_CHUNK]) + _u16(offset), what="NV_Write")
    if lock_nvram:
        client(0x138, [RH_PLATFORM, index], what="NV_WriteLock")


def provision(tpm, ca, *, rsa=True, ecc=True, lock_nvram=True, certificates=True,
              create_eks=True, platform_cert=False, platform=None):
    """Startup, EKs made persistent, certificates written (and locked), the platform
    certificate (holder: the first EK certificate), orderly Shutdown."""
    client = _Client(tpm)
    ek_certs = []
    client(0x144, body=_u16(0), auth=False, what="Startup")
    props = _properties(client)
    kinds = [k for k, on in (("rsa", rsa), ("ecc", ecc)) if on and create_eks]
    for kind in kinds:
        template = ek_template(kind)
        rsp = client(0x131, [RH_ENDORSEMENT], _b2(_u16(0) + _u16(0)) + _b2(template)
                     + _b2(b"") + _u32(0), what=f"CreatePrimary ({kind.upper()} EK)")
        handle = struct.unpack_from(">I", rsp, 10)[0]
        size = struct.unpack_from(">H", rsp, 18)[0]
        public = rsp[20:20 + size]
        persistent = EK_RSA_HANDLE if kind == "rsa" else EK_ECC_HANDLE
        client(0x120, [RH_OWNER, handle], _u32(persistent), what="EvictControl")
        client(0x165, body=_u32(handle), auth=False, what="FlushContext")
        if not certificates:
            continue
        cert = ek_certificate(ca, _public_key(public, kind), kind, props)
        _write_certificate(client, EK_RSA_CERT_INDEX if kind == "rsa" else EK_ECC_CERT_INDEX,
                           cert, lock_nvram)
        ek_certs.append(cert)
    if platform_cert:
        if not ek_certs:
            raise ManufactureError("a platform certificate needs an EK certificate")
        _write_certificate(client, PLATFORM_CERT_INDEX,
                           platform_certificate(ca, ek_certs[0], **(platform or {})),
                           lock_nvram)
    client(0x145, body=_u16(0), auth=False, what="Shutdown")


STATE_FILES = ("nv.snap", "nv.journal", "nv.bin", "nv.bin.migrated")


def manufacture(state_dir, *, key=None, ca_key=None, ca_cert=None, ca_dir=None,
                overwrite=False, rsa=True, ecc=True, lock_nvram=True, certificates=True,
                create_eks=True, platform_cert=False, platform=None):
    """Create a provisioned TPM state in `state_dir`; returns the CA certificate's path or
    None. ManufactureError / StoreError with one line on failure."""
    from .engine.tpm import Tpm
    from .platform import Platform
    from .state.journal import DirStore
    if any(os.path.exists(os.path.join(state_dir, f)) for f in STATE_FILES):
        if not overwrite:
            raise ManufactureError(f"{state_dir} already holds a TPM state (--overwrite to "
                                   f"replace it)")
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    ca = None
    if certificates:
        ca = load_or_create_ca(ca_key, ca_cert, ca_dir or os.path.join(state_dir, "localca"))
    store = DirStore(state_dir, key=key)
    try:
        if overwrite:
            for f in STATE_FILES:
                try:
                    os.unlink(os.path.join(state_dir, f))
                except FileNotFoundError:
                    pass
        tpm = Tpm.manufacture(Platform(store))
        provision(tpm, ca, rsa=rsa, ecc=ecc, lock_nvram=lock_nvram, certificates=certificates,
                  create_eks=create_eks, platform_cert=platform_cert, platform=platform)
    finally:
        store.close()
    if certificates and ca_cert is None:
        return os.path.join(ca_dir or os.path.join(state_dir, "localca"), "ca.pem")
    return ca_cert


def register(commands):
    from .state.admin import add_key_options
    p = commands.add_parser("manufacture", help="create a provisioned TPM state (EKs, EK "
                                                "certificates from a local CA)")
    p.add_argument("--state", metavar="DIR", required=True)
    add_key_options(p)
    p.add_argument("--ca-key", metavar="PEM", help="the CA's private key (with --ca-cert)")
    p.add_argument("--ca-cert", metavar="PEM", help="the CA's certificate (with --ca-key)")
    p.add_argument("--ca-dir", metavar="DIR",
                   help="where the local CA is kept or created (default: DIR/localca)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing state")
    p.add_argument("--no-ecc", action="store_true", help="no ECC EK")
    p.add_argument("--no-rsa", action="store_true", help="no RSA EK")
    p.add_argument("--no-ek-cert", action="store_true", help="EKs without certificates")
    p.add_argument("--no-lock-nvram", action="store_true",
                   help="leave the certificate indices writable")
    p.add_argument("--platform-cert", action="store_true",
                   help="also a TCG platform certificate (attribute certificate) at NV "
                        "0x01c08000, its holder the EK certificate")
    p.add_argument("--platform-manufacturer", metavar="S", default="ctpm")
    p.add_argument("--platform-model", metavar="S", default="ctpm virtual platform")
    p.add_argument("--platform-version", metavar="S", help="default: ctpm's version")
    p.set_defaults(main=main)


def main(args) -> int:
    from .state.admin import key_from
    try:
        ca = manufacture(args.state, key=key_from(args), ca_key=args.ca_key,
                         ca_cert=args.ca_cert, ca_dir=args.ca_dir, overwrite=args.overwrite,
                         rsa=not args.no_rsa, ecc=not args.no_ecc,
                         lock_nvram=not args.no_lock_nvram, certificates=not args.no_ek_cert,
                         platform_cert=args.platform_cert,
                         platform=dict(manufacturer=args.platform_manufacturer,
                                       model=args.platform_model,
                                       version=args.platform_version))
    except (ManufactureError, StoreError) as e:
        print(f"ctpm: manufacture: {e}", file=sys.stderr)
        return 1
    print(f"ctpm: manufactured {args.state}" + (f" (EK certificates issued by {ca})" if ca
                                                 else ""))
    return 0
