"""A simulated AMD secure processor, for machines without SEV-SNP.

It keeps, in a directory of its own, an ARK -> ASK -> VCEK chain (and, on demand, ASVK ->
VLEK) made with AMD's algorithms, subjects and extensions for one product (RSA-4096 with
RSASSA-PSS SHA-384 salt 48, an ECDSA P-384 VEK with serial 0, the SPL/hwID extensions), and
signs reports laid out as the firmware lays them out (version 3 on Milan and Genoa, 5 on
Turin). The subjects carry OU "ctpm simulated AMD-SP" so that a person reading a certificate
sees what it is.

Nothing it signs is trusted by default: its ARK is not AMD's, so `ctpm.snp.verify` refuses its
reports (check `ark_pinned`) unless the caller adds this ARK to its `Trust`. Evidence made with
it says provider "simulated". The private keys lie unencrypted in the directory: it is a test
and development tool, never a root of trust.
"""
import datetime as dt
import json
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from . import certs as C
from .report import (GUID_ARK, GUID_ASK, GUID_VCEK, GUID_VLEK, SIGNED_SIZE, Product,
                     SigningKey, TcbVersion, build_cert_table, build_report)

OU = "ctpm simulated AMD-SP"
CPUID = {Product.MILAN: (0x19, 0x01, 0x01), Product.GENOA: (0x19, 0x11, 0x01),
         Product.TURIN: (0x1A, 0x02, 0x01)}
PRODUCT_NAME = {Product.MILAN: "Milan-B0", Product.GENOA: "Genoa-B1", Product.TURIN: "Turin-B0"}
DEFAULT_TCB = {Product.MILAN: dict(bl=4, tee=0, snp=24, ucode=219),
               Product.GENOA: dict(bl=10, tee=0, snp=23, ucode=84),
               Product.TURIN: dict(fmc=1, bl=1, tee=1, snp=4, ucode=81)}
DEFAULT_FIRMWARE = (1, 55, 29)
DEFAULT_POLICY = 0x30000            # SMT allowed, reserved bit 17, ABI 0.0
PLATFORM_INFO = 0x25                # SMT_EN, ECC_EN, ALIAS_CHECK_COMPLETE
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


def _name(cn: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, OU),
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
        x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def _der_int(v: int) -> bytes:
    body = v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big", signed=True)
    return bytes([0x02, len(body)]) + body


def _der_ia5(s: str) -> bytes:
    return bytes([0x16, len(s)]) + s.encode()


def _with_serial_zero(cert: x509.Certificate, issuer_key, sign) -> x509.Certificate:
    """AMD's VEKs have serial 0, which cryptography's builder refuses: build with serial 1,
    then rewrite that one byte of the TBSCertificate and sign it again (same lengths)."""
    der = bytearray(C.der(cert))
    tbs = bytearray(cert.tbs_certificate_bytes)
    serial_at = tbs.index(b"\xa0\x03\x02\x01\x02\x02\x01\x01") + 7
    tbs[serial_at] = 0
    signature = sign(bytes(tbs))
    tbs_at = der.index(cert.tbs_certificate_bytes)
    der[tbs_at:tbs_at + len(tbs)] = tbs
    sig_at = der.rindex(cert.signature)
    der[sig_at:sig_at + len(signature)] = signature
    return C.load_cert(bytes(der))


class SimulatedSP:
    """One simulated AMD-SP: its product, chip, TCB, firmware version and key chain."""

    def __init__(self, directory: str, product: Product | str | None = None, *,
                 create: bool = True):
        """Open the simulated AMD-SP kept in `directory`, or make one there (a Milan unless
        `product` says otherwise; RSA-4096 key generation takes a few seconds once)."""
        self.directory = os.path.abspath(directory)
        cfg_path = os.path.join(self.directory, "sp.json")
        if isinstance(product, str):
            product = Product.parse(product)
        if create:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        elif not os.path.exists(cfg_path):
            raise FileNotFoundError(f"{self.directory} holds no simulated AMD-SP (sp.json)")
        self._lock_depth = 0
        with self._locked():      # two processes opening a new directory make one chain
            self._open(cfg_path, product, create)

    def _locked(self):
        """An exclusive flock on DIR/.lock, reentrant within this object."""
        import contextlib
        import fcntl

        @contextlib.contextmanager
        def held():
            if self._lock_depth:
                self._lock_depth += 1
                try:
                    yield
                finally:
                    self._lock_depth -= 1
                return
            fd = os.open(os.path.join(self.directory, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._lock_depth = 1
                yield
            finally:
                self._lock_depth = 0
                os.close(fd)
        return held()

    def _open(self, cfg_path, product, create):
        if os.path.exists(cfg_path):
            with open(cfg_path) as f:
                cfg = json.load(f)
            self.product = Product.parse(cfg["product"])
            if product is not None and product is not self.product:
                raise ValueError(f"{self.directory} simulates a {self.product.value}, "
                                 f"not a {product.value}")
        elif not create:
            raise FileNotFoundError(f"{self.directory} holds no simulated AMD-SP (sp.json)")
        else:
            self.product = product or Product.MILAN
            cfg = {"product": self.product.value, "chip_id": self._new_chip_id().hex(),
                   "tcb": DEFAULT_TCB[self.product], "firmware": list(DEFAULT_FIRMWARE)}
            self._write(cfg_path, json.dumps(cfg, indent=1).encode())
        self.chip_id = bytes.fromhex(cfg["chip_id"])
        self.tcb = dict(cfg["tcb"])
        self.firmware = tuple(cfg["firmware"])
        self.ark_key, self.ark = self._root()
        self.ask_key, self.ask = self._intermediate("ask", f"SEV-{self.product.value}", 1)
        self.vcek_key, self.vcek = self._vek("vcek")

    # --- keys and certificates ------------------------------------------------------------

    def _new_chip_id(self) -> bytes:
        chip = os.urandom(64)
        return chip[:8] + bytes(56) if self.product is Product.TURIN else chip

    def _write(self, path, data: bytes):
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def _load(self, name):
        key_path = os.path.join(self.directory, name + ".key")
        cert_path = os.path.join(self.directory, name + ".pem")
        if os.path.exists(key_path) and os.path.exists(cert_path):
            with open(key_path, "rb") as f:
                key = serialization.load_pem_private_key(f.read(), None)
            with open(cert_path, "rb") as f:
                return key, C.load_cert(f.read())
        return None

    def _save(self, name, key, cert):
        self._write(os.path.join(self.directory, name + ".key"), key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        self._write(os.path.join(self.directory, name + ".pem"),
                    cert.public_bytes(serialization.Encoding.PEM))

    def _ca_builder(self, subject, issuer, serial, key, years):
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                .serial_number(serial).public_key(key.public_key())
                .not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=365 * years))
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                             False, False), critical=True)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False))

    def _root(self):
        found = self._load("ark")
        if found:
            return found
        key = rsa.generate_private_key(65537, 4096)
        name = _name(f"ARK-{self.product.value}")
        serial = {Product.MILAN: 0x10000, Product.GENOA: 0x20000, Product.TURIN: 0x30000}
        cert = self._ca_builder(name, name, serial[self.product], key, 25).sign(
            key, hashes.SHA384(), rsa_padding=PSS)
        self._save("ark", key, cert)
        return key, cert

    def _intermediate(self, name, cn, serial_low):
        found = self._load(name)
        if found:
            return found
        key = rsa.generate_private_key(65537, 4096)
        serial = self.ark.serial_number + serial_low
        cert = self._ca_builder(_name(cn), self.ark.subject, serial, key, 25).sign(
            self.ark_key, hashes.SHA384(), rsa_padding=PSS)
        self._save(name, key, cert)
        return key, cert

    def _vek(self, kind):
        tcb = TcbVersion.encode(self.product, **self._tcb_args(self.tcb)).hex()
        name = f"{kind}-{tcb}"
        found = self._load(name)
        if found:
            return found
        key = ec.generate_private_key(ec.SECP384R1())
        if kind == "vcek":
            issuer_key, issuer = self.ask_key, self.ask
        else:
            issuer_key, issuer = self.asvk()
        cert = self.issue_vek(kind=kind, key=key, issuer=(issuer_key, issuer))
        self._save(name, key, cert)
        return key, cert

    @staticmethod
    def _tcb_args(tcb):
        names = {"bl": "bootloader", "tee": "tee", "snp": "snp", "ucode": "microcode",
                 "fmc": "fmc"}
        return {names[k]: v for k, v in tcb.items()}

    def asvk(self):
        """The ASVK (signs VLEKs), made the first time a VLEK is wanted."""
        with self._locked():
            return self._intermediate("asvk", f"SEV-VLEK-{self.product.value}", 0x101)

    def vlek(self):
        """(private key, certificate) of this machine's simulated VLEK at the current TCB."""
        with self._locked():
            return self._vek("vlek")

    def issue_vek(self, *, kind="vcek", key=None, issuer=None, tcb=None, hwid=None,
                  not_before=None, not_after=None, product_name=None, csp_id=None,
                  rsa_padding=PSS, hash_alg=None, extra_extensions=()):
        """A VCEK/VLEK certificate; the arguments exist so that tests can make wrong ones."""
        key = key or ec.generate_private_key(ec.SECP384R1())
        if issuer is None:
            issuer = (self.ask_key, self.ask) if kind == "vcek" else self.asvk()
        issuer_key, issuer_cert = issuer
        tcb = dict(self.tcb if tcb is None else tcb)
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        builder = (x509.CertificateBuilder()
                   .subject_name(_name("SEV-VCEK" if kind == "vcek" else "SEV-VLEK"))
                   .issuer_name(issuer_cert.subject).serial_number(1)
                   .public_key(key.public_key())
                   .not_valid_before(not_before or now - dt.timedelta(days=1))
                   .not_valid_after(not_after or now + dt.timedelta(days=365 * 7)))
        ext = [(C.OID_STRUCT_VERSION, _der_int(1 if self.product is Product.TURIN else 0)),
               (C.OID_PRODUCT_NAME, _der_ia5(product_name or (
                   PRODUCT_NAME[self.product] if kind == "vcek" else self.product.value)))]
        order = ["bl", "tee", "spl_4", "spl_5", "spl_6", "spl_7", "snp", "ucode", "fmc"]
        for comp in order:
            if comp in tcb or comp.startswith("spl_"):
                ext.append((C.OID_SPL[comp], _der_int(tcb.get(comp, 0))))
        if kind == "vcek":
            hw = self.chip_id if hwid is None else hwid
            if self.product is Product.TURIN and hwid is None:
                hw = self.chip_id[:8]
            ext.append((C.OID_HWID, hw))
        elif csp_id or kind == "vlek":
            ext.append((C.OID_CSP_ID, _der_ia5(csp_id or "CN=ctpm-simulated-csp")))
        for oid, value in list(ext) + list(extra_extensions):
            builder = builder.add_extension(
                x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False)
        h = hash_alg or hashes.SHA384()
        cert = builder.sign(issuer_key, h, rsa_padding=rsa_padding)
        return _with_serial_zero(cert, issuer_key,
                                 lambda tbs: issuer_key.sign(tbs, rsa_padding, h))

    # --- reports ---------------------------------------------------------------------------

    def report_fields(self, report_data: bytes, *, vmpl: int = 0, signing_key: str = "vcek",
                      **fields) -> dict:
        """The fields the firmware would put in a report for this request."""
        if len(report_data) != 64:
            raise ValueError("REPORT_DATA is 64 bytes")
        tcb = TcbVersion.encode(self.product, **self._tcb_args(self.tcb))
        major, minor, build = self.firmware
        family, model, stepping = CPUID[self.product]
        key_info = (SigningKey.VCEK if signing_key == "vcek" else SigningKey.VLEK) << 2
        values = dict(
            version=5 if self.product is Product.TURIN else 3, guest_svn=0,
            policy=DEFAULT_POLICY, vmpl=vmpl, signature_algo=1, current_tcb=tcb,
            platform_info=PLATFORM_INFO, key_info=key_info, report_data=bytes(report_data),
            report_id=os.urandom(32), reported_tcb=tcb, cpuid_fam_id=family,
            cpuid_mod_id=model, cpuid_step=stepping,
            chip_id=self.chip_id if signing_key == "vcek" else bytes(64),
            committed_tcb=tcb, current_build=build, current_minor=minor, current_major=major,
            committed_build=build, committed_minor=minor, committed_major=major,
            launch_tcb=tcb)
        if self.product is Product.TURIN:
            values.update(launch_mit_vector=0x3F, current_mit_vector=0x3F)
        values.update(fields)
        return values

    def report(self, report_data: bytes, *, vmpl: int = 0, signing_key: str = "vcek",
               **fields) -> bytes:
        """A signed report, as MSG_REPORT_RSP would carry it. `fields` override any field
        (measurement=, host_data=, policy=, family_id=, image_id=, ...)."""
        raw = build_report(**self.report_fields(report_data, vmpl=vmpl,
                                                signing_key=signing_key, **fields))
        return self.sign(raw, signing_key)

    def sign(self, raw: bytes, signing_key: str = "vcek", *, key=None) -> bytes:
        """Put a signature over raw[:0x2A0] into the report (tests craft reports with it)."""
        key = key or (self.vcek_key if signing_key == "vcek" else self.vlek()[0])
        der_sig = key.sign(bytes(raw[:SIGNED_SIZE]), ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der_sig)
        return (bytes(raw[:SIGNED_SIZE]) + r.to_bytes(72, "little") + s.to_bytes(72, "little")
                + bytes(raw[SIGNED_SIZE + 144:]))

    def cert_table(self, signing_key: str = "vcek") -> bytes:
        """The extended report's certificate table: VEK, ASK (or ASVK), ARK."""
        if signing_key == "vcek":
            entries = {GUID_VCEK: C.der(self.vcek), GUID_ASK: C.der(self.ask)}
        else:
            entries = {GUID_VLEK: C.der(self.vlek()[1]), GUID_ASK: C.der(self.asvk()[1])}
        entries[GUID_ARK] = C.der(self.ark)
        return build_cert_table(entries)

    def chain_pem(self, signing_key: str = "vcek") -> bytes:
        """ASK (or ASVK) then ARK, PEM: what AMD's KDS serves as cert_chain."""
        inter = self.ask if signing_key == "vcek" else self.asvk()[1]
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (inter, self.ark))

    def ark_pem(self) -> bytes:
        return self.ark.public_bytes(serialization.Encoding.PEM)

    def crl(self, revoked=(), *, last_update=None, next_update=None, signer=None) -> bytes:
        """An ARK CRL (DER) revoking the given serial numbers."""
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.ark.subject)
                   .last_update(last_update or now - dt.timedelta(days=1))
                   .next_update(next_update or now + dt.timedelta(days=30)))
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial)
                .revocation_date(now - dt.timedelta(hours=1)).build())
        crl = builder.sign(signer or self.ark_key, hashes.SHA384(), rsa_padding=PSS)
        return crl.public_bytes(serialization.Encoding.DER)


class SimulatedProvider:
    """The `ReportProvider` of a `SimulatedSP`: its evidence says provider "simulated"."""

    name = "simulated"

    def __init__(self, sp: SimulatedSP, **fields):
        self.sp = sp
        self.fields = fields        # fixed report fields: measurement=, host_data=, policy=...

    def report(self, report_data: bytes, *, vmpl: int | None = None, service=None):
        from .evidence import Evidence
        if len(report_data) != 64:
            raise ValueError(f"REPORT_DATA must be 64 bytes, got {len(report_data)}")
        report = self.sp.report(report_data, vmpl=0 if vmpl is None else vmpl, **self.fields)
        return Evidence(report=report, cert_table=self.sp.cert_table(), provider=self.name)
