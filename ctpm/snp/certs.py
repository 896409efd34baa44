"""AMD's SEV-SNP certificates: the pinned roots, VCEK/VLEK parsing, the KDS, CRLs.

Chain: ARK (RSA-4096, self-signed) -> ASK (signs VCEKs) or ASVK (signs VLEKs) -> VEK (ECDSA
P-384, signs reports). Every certificate signature is RSASSA-PSS with SHA-384, MGF1-SHA-384 and
a 48-byte salt; `check_pss_algorithm` reads the AlgorithmIdentifier from the certificate's own
DER and accepts nothing else. Certificates are identified by subject and issuer, never by their
position in a bundle (AMD's KDS and other sources order them differently).

VCEKs and VLEKs have serial number 0, which RFC 5280 forbids: `cryptography` (pinned to a
range that still loads them) warns, and `load_cert` silences exactly that warning.
"""
import hashlib
import os
import warnings
from dataclasses import dataclass
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from .errors import SnpError
from .report import Product

# SHA-256 of each ARK's DER encoding: the only roots trusted unless a caller adds its own
ARK_SHA256 = {
    Product.MILAN: "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    Product.GENOA: "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    Product.TURIN: "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
}

OID_AMD = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION = OID_AMD + ".1"
OID_PRODUCT_NAME = OID_AMD + ".2"
OID_SPL = {"bl": OID_AMD + ".3.1", "tee": OID_AMD + ".3.2", "snp": OID_AMD + ".3.3",
           "spl_4": OID_AMD + ".3.4", "spl_5": OID_AMD + ".3.5", "spl_6": OID_AMD + ".3.6",
           "spl_7": OID_AMD + ".3.7", "ucode": OID_AMD + ".3.8", "fmc": OID_AMD + ".3.9"}
OID_HWID = OID_AMD + ".4"
OID_CSP_ID = OID_AMD + ".5"

KDS_BASE = "https://kdsintf.amd.com"
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(der(cert)).hexdigest()


def load_cert(data: bytes) -> x509.Certificate:
    """One certificate, PEM or DER (VCEKs/VLEKs with serial 0 included)."""
    certs = load_certs(data)
    if len(certs) != 1:
        raise SnpError("certificate", f"expected one certificate, found {len(certs)}")
    return certs[0]


def load_certs(data: bytes) -> list[x509.Certificate]:
    """A PEM bundle or a single DER certificate."""
    data = bytes(data)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*serial number.*")
        try:
            if b"-----BEGIN CERTIFICATE-----" in data:
                return x509.load_pem_x509_certificates(data)
            return [x509.load_der_x509_certificate(data)]
        except ValueError as e:
            raise SnpError("certificate", f"not an X.509 certificate: {e}") from None


def serial_number(cert: x509.Certificate) -> int:
    """The serial, read without cryptography's warning about VEKs' (non-RFC 5280) serial 0."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*serial number.*")
        return cert.serial_number


def common_name(name: x509.Name) -> str:
    cns = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else ""


def cert_role(cert: x509.Certificate) -> tuple[str, Product | None]:
    """('ark'|'ask'|'asvk'|'vcek'|'vlek'|'unknown', product) from the subject and issuer CNs.

    ARK-<P>, SEV-<P> (ASK), SEV-VLEK-<P> (ASVK), SEV-VCEK issued by SEV-<P>, SEV-VLEK issued
    by SEV-VLEK-<P>.
    """
    subject, issuer = common_name(cert.subject), common_name(cert.issuer)

    def product(name, prefix):
        try:
            return Product.parse(name[len(prefix):])
        except SnpError:
            return None
    if subject.startswith("ARK-"):
        return "ark", product(subject, "ARK-")
    if subject == "SEV-VCEK":
        return "vcek", product(issuer, "SEV-")
    if subject == "SEV-VLEK":
        return "vlek", product(issuer, "SEV-VLEK-")
    if subject.startswith("SEV-VLEK-"):
        return "asvk", product(subject, "SEV-VLEK-")
    if subject.startswith("SEV-"):
        return "ask", product(subject, "SEV-")
    return "unknown", None


@dataclass(frozen=True)
class AmdRoots:
    """ARK, ASK and ASVK of one product."""

    product: Product
    ark: x509.Certificate
    ask: x509.Certificate
    asvk: x509.Certificate


def builtin_roots(product: Product) -> AmdRoots:
    """AMD's certificates shipped with ctpm (copied from AMD's KDS via public repositories)."""
    base = resources.files("ctpm.snp") / "amd"
    name = product.value.lower()

    def read(kind):
        return load_cert((base / f"{name}_{kind}.pem").read_bytes())
    return AmdRoots(product, read("ark"), read("ask"), read("asvk"))


# --- the PSS AlgorithmIdentifier, read from the DER ------------------------------------------

_OID_RSASSA_PSS = bytes.fromhex("2a864886f70d01010a")
_OID_MGF1 = bytes.fromhex("2a864886f70d010108")
_OID_SHA384 = bytes.fromhex("608648016503040202")


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, value start, value end) of the DER element at `pos`."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    while start < end:
        tag, vs, ve = _tlv(data, start)
        out.append((tag, vs, ve))
        start = ve
    return out


def _is_sha384_alg(data: bytes, start: int, end: int) -> bool:
    """AlgorithmIdentifier { id-sha384, NULL or absent }."""
    kids = _children(data, start, end)
    if not kids or kids[0][0] != 0x06 or data[kids[0][1]:kids[0][2]] != _OID_SHA384:
        return False
    return len(kids) == 1 or (len(kids) == 2 and kids[1][0] == 0x05 and kids[1][1] == kids[1][2])


def _pss_alg_ok(data: bytes, start: int, end: int) -> bool:
    kids = _children(data, start, end)
    if len(kids) != 2 or kids[0][0] != 0x06 or data[kids[0][1]:kids[0][2]] != _OID_RSASSA_PSS:
        return False
    tag, ps, pe = kids[1]
    if tag != 0x30:
        return False
    params = {t: (s, e) for t, s, e in _children(data, ps, pe)}
    if set(params) - {0xA0, 0xA1, 0xA2, 0xA3} or not {0xA0, 0xA1, 0xA2} <= set(params):
        return False
    # [0] hashAlgorithm
    t, s, e = _tlv(data, params[0xA0][0])
    if t != 0x30 or not _is_sha384_alg(data, s, e):
        return False
    # [1] maskGenAlgorithm: { id-mgf1, { id-sha384 } }
    t, s, e = _tlv(data, params[0xA1][0])
    mgf = _children(data, s, e) if t == 0x30 else []
    if (len(mgf) != 2 or mgf[0][0] != 0x06 or data[mgf[0][1]:mgf[0][2]] != _OID_MGF1
            or mgf[1][0] != 0x30 or not _is_sha384_alg(data, mgf[1][1], mgf[1][2])):
        return False
    # [2] saltLength 48, [3] trailerField 1 (or absent: default 1)
    t, s, e = _tlv(data, params[0xA2][0])
    if t != 0x02 or int.from_bytes(data[s:e], "big") != 48:
        return False
    if 0xA3 in params:
        t, s, e = _tlv(data, params[0xA3][0])
        if t != 0x02 or int.from_bytes(data[s:e], "big") != 1:
            return False
    return True


def check_pss_algorithm(cert_der: bytes) -> bool:
    """Both signature AlgorithmIdentifiers of a certificate (the outer one and the one in the
    TBSCertificate) are RSASSA-PSS, SHA-384, MGF1-SHA-384, salt 48, trailer 1."""
    try:
        _, s, e = _tlv(cert_der, 0)
        kids = _children(cert_der, s, e)
        if len(kids) != 3:
            return False
        tbs_kids = _children(cert_der, kids[0][1], kids[0][2])
        inner = tbs_kids[2] if tbs_kids[0][0] == 0xA0 else tbs_kids[1]   # after version, serial
        for tag, vs, ve in (kids[1], inner):
            if tag != 0x30 or not _pss_alg_ok(cert_der, vs, ve):
                return False
        return True
    except ValueError:
        return False


def verify_signed_by(cert: x509.Certificate, issuer: x509.Certificate, check: str,
                     cert_der: bytes | None = None):
    """`issuer` signed `cert` with AMD's RSASSA-PSS parameters; else SnpError(check)."""
    what = f"{common_name(cert.subject)} by {common_name(issuer.subject)}"
    if cert.issuer != issuer.subject:
        raise SnpError(check, f"{common_name(cert.subject)} is issued by "
                              f"{common_name(cert.issuer)!r}, not {common_name(issuer.subject)!r}")
    if not check_pss_algorithm(cert_der if cert_der is not None else der(cert)):
        raise SnpError(check, f"{what}: signature algorithm is not RSASSA-PSS SHA-384 "
                              "MGF1-SHA-384 salt 48")
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size != 4096:
        raise SnpError(check, f"{common_name(issuer.subject)} key is not RSA-4096")
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes, PSS, hashes.SHA384())
    except InvalidSignature:
        raise SnpError(check, f"signature of {what} does not verify") from None


# --- VCEK / VLEK ------------------------------------------------------------------------------

def _der_integer(raw: bytes) -> int:
    tag, s, e = _tlv(raw, 0)
    if tag != 0x02 or e != len(raw):
        raise ValueError("not a DER INTEGER")
    return int.from_bytes(raw[s:e], "big", signed=True)


def _der_string(raw: bytes) -> str:
    try:
        tag, s, e = _tlv(raw, 0)
        if tag in (0x0C, 0x13, 0x16) and e == len(raw):     # UTF8, Printable, IA5
            return raw[s:e].decode("utf-8", "replace")
    except ValueError:
        pass
    return raw.decode("utf-8", "replace")


@dataclass(frozen=True)
class Vek:
    """A versioned endorsement key certificate (VCEK: chip-unique; VLEK: a cloud provider's)."""

    cert: x509.Certificate
    der: bytes
    kind: str                   # "vcek" or "vlek"
    product: Product | None     # from the issuer (SEV-<P> / SEV-VLEK-<P>)
    product_name: str | None    # the productName extension, e.g. "Milan-B0"
    struct_version: int | None
    spl: dict                   # "bl", "tee", "snp", "ucode", "fmc", "spl_4".."spl_7" -> int
    hwid: bytes | None          # 64 bytes (Milan, Genoa) or 8 (Turin); VLEKs have none
    csp_id: str | None          # VLEK only

    @classmethod
    def from_cert(cls, cert: x509.Certificate) -> "Vek":
        role, product = cert_role(cert)
        if role not in ("vcek", "vlek"):
            raise SnpError("vek_role", f"{common_name(cert.subject)!r} is not a VCEK or VLEK")
        ext = {}
        for e in cert.extensions:
            if e.oid.dotted_string.startswith(OID_AMD + "."):
                ext[e.oid.dotted_string] = getattr(e.value, "value", b"")
        try:
            spl = {k: _der_integer(ext[oid]) for k, oid in OID_SPL.items() if oid in ext}
            version = _der_integer(ext[OID_STRUCT_VERSION]) if OID_STRUCT_VERSION in ext else None
        except ValueError as err:
            raise SnpError("vek_extensions", f"malformed AMD extension: {err}") from None
        name = _der_string(ext[OID_PRODUCT_NAME]) if OID_PRODUCT_NAME in ext else None
        hwid = ext.get(OID_HWID)
        csp = _der_string(ext[OID_CSP_ID]) if OID_CSP_ID in ext else None
        return cls(cert=cert, der=der(cert), kind=role, product=product, product_name=name,
                   struct_version=version, spl=spl, hwid=hwid, csp_id=csp)

    @classmethod
    def load(cls, data: bytes) -> "Vek":
        return cls.from_cert(load_cert(data))


# --- AMD's Key Distribution Service -------------------------------------------------------------

def kds_vcek_url(product: Product, chip_id: bytes, tcb) -> str:
    """Where AMD's KDS serves the VCEK of this chip at this TCB (`tcb`: a TcbVersion)."""
    hwid = chip_id[:8] if product is Product.TURIN else chip_id
    query = f"blSPL={tcb.bootloader}&teeSPL={tcb.tee}&snpSPL={tcb.snp}&ucodeSPL={tcb.microcode}"
    if product is Product.TURIN:
        query = f"fmcSPL={tcb.fmc}&" + query
    return f"{KDS_BASE}/vcek/v1/{product.value}/{hwid.hex()}?{query}"


def kds_chain_url(product: Product, kind: str = "vcek") -> str:
    """ASK (or ASVK for kind='vlek') and ARK, PEM."""
    return f"{KDS_BASE}/{kind}/v1/{product.value}/cert_chain"


def kds_crl_url(product: Product, kind: str = "vcek") -> str:
    return f"{KDS_BASE}/{kind}/v1/{product.value}/crl"


def fetch(url: str, cache_dir: str, *, timeout: float = 30.0) -> bytes:
    """GET `url` once into `cache_dir` (the file name is the URL's SHA-256) and return it.

    Only called when the user asks (`--fetch`): verification itself never touches the network.
    """
    import urllib.request
    os.makedirs(cache_dir, mode=0o700, exist_ok=True)
    path = os.path.join(cache_dir, hashlib.sha256(url.encode()).hexdigest()[:32])
    if os.path.exists(path):
        with open(path, "rb") as f:
            return f.read()
    with urllib.request.urlopen(url, timeout=timeout) as rsp:   # noqa: S310 (https only)
        body = rsp.read()
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(body)
    os.replace(tmp, path)
    return body


# --- CRLs -------------------------------------------------------------------------------------

def load_crl(data: bytes) -> x509.CertificateRevocationList:
    data = bytes(data)
    try:
        if b"-----BEGIN X509 CRL-----" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as e:
        raise SnpError("crl", f"not an X.509 CRL: {e}") from None


def check_crl(crl: x509.CertificateRevocationList, ark: x509.Certificate, certs, at):
    """The CRL is the ARK's (signed with its key, PSS/SHA-384), current at `at`, and revokes
    none of `certs` (the ASK/ASVK and the VEK)."""
    if crl.issuer != ark.subject:
        raise SnpError("crl", f"CRL issued by {common_name(crl.issuer)!r}, not by the ARK")
    key = ark.public_key()
    try:
        key.verify(crl.signature, crl.tbs_certlist_bytes, PSS, hashes.SHA384())
    except (InvalidSignature, TypeError, ValueError):
        raise SnpError("crl", "CRL signature does not verify with the ARK") from None
    if crl.last_update_utc > at or (crl.next_update_utc is not None
                                    and crl.next_update_utc < at):
        raise SnpError("crl", f"CRL valid {crl.last_update_utc:%Y-%m-%d} .. "
                              f"{crl.next_update_utc:%Y-%m-%d}, not at {at:%Y-%m-%d %H:%M}")
    for cert in certs:      # the ARK's CRL lists what the ARK issued (ASKs, ASVKs)
        if cert.issuer != crl.issuer:
            continue
        serial = serial_number(cert)
        revoked = crl.get_revoked_certificate_by_serial_number(serial)
        if revoked is not None:
            raise SnpError("crl", f"{common_name(cert.subject)} (serial {serial:#x})"
                                  f" is revoked since {revoked.revocation_date_utc:%Y-%m-%d}")


def is_p384(cert: x509.Certificate) -> bool:
    key = cert.public_key()
    return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP384R1)
