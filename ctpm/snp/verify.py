"""Strict verification of an SEV-SNP attestation report: every check, in a fixed order, each
with a stable name (`CHECKS`, documented in docs/snp.md).

The first failing check raises `SnpError(check, message)`; success returns `Verified`, the
facts a relying party may use. Signatures are checked over the bytes received. AMD's ARKs are
pinned by SHA-256; any other root (the simulated AMD-SP's) is trusted only when the caller
passes it in `Trust(extra_arks=...)`, and the result says which root it was.

`Verifier` caches the chain checks per (ARK, ASK/ASVK, VEK, CRLs), so that a verifier service
checking many reports from one machine pays for one ECDSA P-384 verification per report.
"""
import hashlib
import hmac
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from . import certs as C
from .errors import SnpError
from .report import (SIGNATURE_ALGO_ECDSA_P384_SHA384, AttestationReport, GuestPolicy,
                     PolicyBit, Product, SigningKey, TcbVersion, parse_cert_table,
                     platform_info_names, CERT_GUID_NAMES)

CHECKS = (
    # the report's form and which keys must have signed it
    "report_size", "report_version", "signing_key", "mask_chip_key", "vek_missing",
    "vek_role", "product",
    # the certificate chain
    "ark_pinned", "ark_self_signed", "ask_signature", "vek_signature", "chain_validity",
    "vek_validity", "crl", "vek_key", "vek_tcb", "chip_id",
    # the report's own signature
    "signature_algo", "reserved", "report_signature",
    # the policy of the relying party
    "vmpl", "policy_reserved", "debug", "migration_agent", "smt", "required_policy",
    "min_tcb", "provisional_firmware", "min_firmware", "min_guest_svn", "measurement",
    "report_data", "host_data", "family_id", "image_id", "id_key", "author_key",
)

TCB_COMPONENTS = ("bl", "tee", "snp", "ucode", "fmc")


def _digests(values, size, what) -> frozenset:
    out = frozenset(bytes(v) for v in values)
    for v in out:
        if len(v) != size:
            raise ValueError(f"{what} must be {size} bytes, got {len(v)}")
    return out


@dataclass(frozen=True)
class Policy:
    """What the relying party accepts. The defaults are the strict ones: VMPL 0, no debug, no
    migration agent, no provisional firmware, now as the verification time."""

    vmpl: int | None = 0                    # expected VMPL; None accepts any
    measurements: frozenset = frozenset()   # allowed MEASUREMENTs (48 bytes); empty: any
    min_tcb: tuple = ()                     # (("bl", 4), ("snp", 22), ...) or a dict
    min_firmware: tuple | None = None       # (major, minor[, build]) of current and committed
    min_guest_svn: int = 0
    allow_debug: bool = False
    allow_migration_agent: bool = False
    allow_smt: bool = True
    required_policy_bits: int = 0           # POLICY bits that must be set
    allow_provisional_firmware: bool = False
    report_data: bytes | Callable[[bytes], bool] | None = None
    host_data: bytes | None = None
    family_id: bytes | None = None
    image_id: bytes | None = None
    id_key_digests: frozenset = frozenset()      # allowed ID_KEY_DIGESTs; empty: any
    author_key_digests: frozenset = frozenset()  # allowed AUTHOR_KEY_DIGESTs; empty: any
    allow_vlek: bool = True
    at: datetime | None = None              # verification time; None: now

    def __post_init__(self):
        put = object.__setattr__
        put(self, "measurements", _digests(self.measurements, 48, "a measurement"))
        put(self, "id_key_digests", _digests(self.id_key_digests, 48, "an ID key digest"))
        put(self, "author_key_digests",
            _digests(self.author_key_digests, 48, "an author key digest"))
        tcb = dict(self.min_tcb)
        unknown = set(tcb) - set(TCB_COMPONENTS)
        if unknown:
            raise ValueError(f"unknown TCB components {sorted(unknown)} "
                             f"(known: {', '.join(TCB_COMPONENTS)})")
        put(self, "min_tcb", tuple(sorted(tcb.items())))
        if isinstance(self.report_data, (bytes, bytearray)) and len(self.report_data) != 64:
            raise ValueError("report_data must be 64 bytes")
        if self.host_data is not None and len(self.host_data) != 32:
            raise ValueError("host_data must be 32 bytes")
        for name in ("family_id", "image_id"):
            v = getattr(self, name)
            if v is not None and len(v) != 16:
                raise ValueError(f"{name} must be 16 bytes")
        if self.at is not None and self.at.tzinfo is None:
            raise ValueError("the verification time needs a time zone")


@dataclass(frozen=True)
class Trust:
    """The roots a verifier accepts: AMD's pinned ARKs, plus `extra_arks` the caller chose to
    trust (for example a simulated AMD-SP's ARK in a test environment)."""

    extra_arks: tuple = ()

    def root_kind(self, ark, product: Product) -> str | None:
        fp = C.fingerprint(ark)
        if fp == C.ARK_SHA256[product]:
            return "amd"
        for extra in self.extra_arks:
            if C.fingerprint(extra) == fp:
                return "trusted:" + fp
        return None


@dataclass(frozen=True)
class Verified:
    """A report that passed every check, and what it says."""

    report: AttestationReport
    product: Product
    root: str                   # "amd", or "trusted:<sha256>" for a caller-trusted ARK
    signing_key: str            # "vcek" or "vlek"
    vek_sha256: str
    reported_tcb: TcbVersion
    current_tcb: TcbVersion
    committed_tcb: TcbVersion
    launch_tcb: TcbVersion
    chip_id_masked: bool

    @property
    def measurement(self) -> bytes:
        return self.report.measurement

    @property
    def report_data(self) -> bytes:
        return self.report.report_data

    @property
    def host_data(self) -> bytes:
        return self.report.host_data

    @property
    def vmpl(self) -> int:
        return self.report.vmpl

    @property
    def chip_id(self) -> bytes:
        return self.report.chip_id

    def summary(self) -> dict:
        r = self.report
        return {
            "product": self.product.value, "version": r.version, "root": self.root,
            "signing_key": self.signing_key, "vek_sha256": self.vek_sha256,
            "vmpl": r.vmpl, "guest_svn": r.guest_svn,
            "policy": {"value": f"{r.policy:#x}",
                       "abi": f"{r.guest_policy.abi_major}.{r.guest_policy.abi_minor}",
                       "bits": r.guest_policy.names()},
            "platform_info": platform_info_names(r.platform_info),
            "reported_tcb": self.reported_tcb.components(),
            "current_tcb": self.current_tcb.components(),
            "committed_tcb": self.committed_tcb.components(),
            "launch_tcb": self.launch_tcb.components(),
            "current_firmware": "%d.%d.%d" % r.current_firmware,
            "committed_firmware": "%d.%d.%d" % r.committed_firmware,
            "measurement": r.measurement.hex(), "report_data": r.report_data.hex(),
            "host_data": r.host_data.hex(), "family_id": r.family_id.hex(),
            "image_id": r.image_id.hex(), "id_key_digest": r.id_key_digest.hex(),
            "author_key_digest": r.author_key_digest.hex(), "chip_id": r.chip_id.hex(),
            "chip_id_masked": self.chip_id_masked, "report_id": r.report_id.hex(),
        }


@dataclass
class _Chain:
    ark: object
    inter: object               # ASK or ASVK
    vek: C.Vek
    root: str


class Verifier:
    """Verifies reports against a `Trust`; keeps a small cache of checked chains."""

    def __init__(self, trust: Trust | None = None, *, cache_size: int = 256):
        self.trust = trust or Trust()
        self._cache_size = cache_size
        self._chains: OrderedDict = OrderedDict()     # key -> _Chain whose signatures verified
        self._veks: OrderedDict = OrderedDict()       # VEK DER -> C.Vek
        self._builtin: dict = {}                      # Product -> (AmdRoots, DERs)
        self._loaded: OrderedDict = OrderedDict()     # bytes -> [(cert, DER, role)]

    def _load(self, item) -> list:
        """Certificates given as bytes (PEM/DER) or objects, with their DER and role."""
        if not isinstance(item, (bytes, bytearray)):
            return [(item, C.der(item), C.cert_role(item)[0])]
        blob = bytes(item)
        found = self._loaded.get(blob)
        if found is None:
            found = [(c, C.der(c), C.cert_role(c)[0]) for c in C.load_certs(blob)]
            self._remember(self._loaded, blob, found)
        return found

    def _roots(self, prod):
        found = self._builtin.get(prod)
        if found is None:
            roots = C.builtin_roots(prod)
            found = self._builtin[prod] = (roots, {"ark": C.der(roots.ark), "ask": C.der(
                roots.ask), "asvk": C.der(roots.asvk)})
        return found

    def verify(self, report: bytes, *, vek=None, chain=(), cert_table: bytes | None = None,
               product: Product | str | None = None, crls=(),
               policy: Policy | None = None) -> Verified:
        """Check `report` (the bytes received). `vek`: the VCEK/VLEK (bytes, certificate or
        Vek); `chain`: certificates (bytes or certificates: ARK, ASK/ASVK, any order; AMD's
        own are used where absent); `cert_table`: an extended report's certificate table, used
        for what `vek`/`chain` do not give; `product`: needed for a v2 report whose VEK is not
        given either; `crls`: ARK CRLs to apply."""
        policy = policy or Policy()
        at = policy.at or datetime.now(timezone.utc)
        rpt = AttestationReport.parse(report)

        # which key must have signed it
        key = rpt.key
        if key.signing_key not in (SigningKey.VCEK, SigningKey.VLEK):
            raise SnpError("signing_key", f"key-info SIGNING_KEY is {key.signing_key_name}: "
                                          "the report is not signed")
        kind = "vcek" if key.signing_key == SigningKey.VCEK else "vlek"
        if key.mask_chip_key:
            raise SnpError("mask_chip_key", "MASK_CHIP_KEY is set: the firmware did not sign "
                                            "the report (the signature is zero)")
        if kind == "vlek" and not policy.allow_vlek:
            raise SnpError("signing_key", "the report is VLEK-signed and the policy wants a VCEK")

        table = {}
        if cert_table:
            table = {CERT_GUID_NAMES.get(g, str(g)): blob
                     for g, blob in parse_cert_table(cert_table).items()}
        vek = self._vek(vek if vek is not None else table.get(kind))
        if vek is None:
            raise SnpError("vek_missing", f"no {kind.upper()} given (--vek, or a certificate "
                                          "table that holds one)")
        if vek.kind != kind:
            raise SnpError("vek_role", f"the report says it is {kind.upper()}-signed, the "
                                       f"certificate given is a {vek.kind.upper()}")

        prod = self._product(rpt, vek, product)
        chain = self._chain(prod, vek, chain, table)
        self._check_validity(chain, at)
        if crls:
            self._check_crls(chain, crls, at)
        if not C.is_p384(vek.cert):
            raise SnpError("vek_key", "the VEK's key is not ECDSA P-384")
        reported = rpt.tcb("reported", prod)
        self._check_vek_tcb(vek, reported, prod)
        masked = not any(rpt.chip_id)
        if kind == "vcek" and not masked:
            hwid = vek.hwid or b""
            if not hwid or hwid.ljust(64, b"\0") != rpt.chip_id:
                raise SnpError("chip_id", f"VCEK hwID {hwid[:8].hex()}... does not match the "
                                          f"report's CHIP_ID {rpt.chip_id[:8].hex()}...")

        if rpt.signature_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384:
            raise SnpError("signature_algo", f"SIGNATURE_ALGO is {rpt.signature_algo}, not 1 "
                                             "(ECDSA P-384 with SHA-384)")
        bad = rpt.reserved_violations()
        if bad:
            raise SnpError("reserved", "reserved fields are not zero: " + ", ".join(bad))
        r, s = rpt.signature_rs
        try:
            vek.cert.public_key().verify(encode_dss_signature(r, s), rpt.signed_bytes,
                                         ec.ECDSA(hashes.SHA384()))
        except InvalidSignature:
            raise SnpError("report_signature", "the report's signature does not verify with "
                                               "the VEK") from None

        self._check_policy(rpt, policy, prod, reported)
        return Verified(report=rpt, product=prod, root=chain.root, signing_key=kind,
                        vek_sha256=hashlib.sha256(vek.der).hexdigest(), reported_tcb=reported,
                        current_tcb=rpt.tcb("current", prod),
                        committed_tcb=rpt.tcb("committed", prod),
                        launch_tcb=rpt.tcb("launch", prod), chip_id_masked=masked)

    # --- pieces ----------------------------------------------------------------------------

    def _vek(self, value) -> C.Vek | None:
        if value is None or isinstance(value, C.Vek):
            return value
        if not isinstance(value, (bytes, bytearray)):
            value = C.der(value)
        value = bytes(value)
        vek = self._veks.get(value)
        if vek is None:
            try:
                vek = C.Vek.load(value)
            except SnpError as e:
                if e.check == "certificate":
                    raise SnpError("vek_role", e.message) from None
                raise
            self._remember(self._veks, value, vek)
        return vek

    def _remember(self, cache, key, value):
        cache[key] = value
        if len(cache) > self._cache_size:
            cache.popitem(last=False)

    def _product(self, rpt, vek, given) -> Product:
        if isinstance(given, str):
            given = Product.parse(given)
        from_cpuid = rpt.cpuid_product
        if rpt.version >= 3 and from_cpuid is None:
            raise SnpError("product", "CPUID family %#x model %#x is no known SEV-SNP product"
                           % rpt.cpuid[:2])
        prod = from_cpuid or given or vek.product
        if prod is None:
            raise SnpError("product", "a v2 report does not name its product: give it "
                                      "(--product) or a VEK whose issuer names it")
        for source, other in (("--product", given), ("the VEK's issuer", vek.product)):
            if other is not None and other is not prod:
                raise SnpError("product", f"the report is from a {prod.value}, {source} says "
                                          f"{other.value}")
        return prod

    def _chain(self, prod, vek, given, table) -> _Chain:
        certs = []
        for item in given:
            certs.extend(self._load(item))
        for name in ("ask", "ark"):
            if name in table:
                certs.extend(self._load(table[name]))
        arks = [(c, d) for c, d, role in certs if role == "ark"]
        want = "ask" if vek.kind == "vcek" else "asvk"
        inters = [(c, d) for c, d, role in certs if role == want]
        builtin, builtin_der = self._roots(prod)
        ark, ark_der = arks[0] if arks else (builtin.ark, builtin_der["ark"])
        inter, inter_der = inters[0] if inters else (getattr(builtin, want), builtin_der[want])
        key = (ark_der, inter_der, vek.der)         # whole DERs: their signatures too
        cached = self._chains.get(key)
        if cached is not None:
            self._chains.move_to_end(key)
            return cached

        root = self.trust.root_kind(ark, prod)
        if root is None:
            raise SnpError("ark_pinned", f"the ARK given (SHA-256 {C.fingerprint(ark)}) is "
                                         f"not AMD's {prod.value} ARK nor a trusted root")
        if C.cert_role(ark)[1] is not prod:
            raise SnpError("ark_pinned", f"the ARK is {C.common_name(ark.subject)!r}, the "
                                         f"report is from a {prod.value}")
        C.verify_signed_by(ark, ark, "ark_self_signed")
        C.verify_signed_by(inter, ark, "ask_signature")
        C.verify_signed_by(vek.cert, inter, "vek_signature", vek.der)
        chain = _Chain(ark=ark, inter=inter, vek=vek, root=root)
        self._remember(self._chains, key, chain)
        return chain

    @staticmethod
    def _check_validity(chain, at):
        for cert, check in ((chain.ark, "chain_validity"), (chain.inter, "chain_validity"),
                            (chain.vek.cert, "vek_validity")):
            if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
                raise SnpError(check, f"{C.common_name(cert.subject)} is valid "
                                      f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} .. "
                                      f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not at "
                                      f"{at:%Y-%m-%d %H:%M} UTC")

    @staticmethod
    def _check_crls(chain, crls, at):
        for crl in crls:
            if not hasattr(crl, "tbs_certlist_bytes"):
                crl = C.load_crl(crl)
            C.check_crl(crl, chain.ark, (chain.inter, chain.vek.cert), at)

    @staticmethod
    def _check_vek_tcb(vek, reported: TcbVersion, prod):
        want = reported.components()
        missing = [k for k in want if k not in vek.spl]
        if missing:
            raise SnpError("vek_tcb", f"the VEK has no {', '.join(missing)} SPL extension")
        diff = [f"{k} {vek.spl[k]} != {v}" for k, v in want.items() if vek.spl[k] != v]
        if diff:
            raise SnpError("vek_tcb", "the VEK's TCB is not the report's REPORTED_TCB ("
                                      + ", ".join(diff) + ")")

    @staticmethod
    def _check_policy(rpt, policy: Policy, prod, reported: TcbVersion):
        if policy.vmpl is not None and rpt.vmpl != policy.vmpl:
            raise SnpError("vmpl", f"VMPL is {rpt.vmpl}, expected {policy.vmpl}")
        gp: GuestPolicy = rpt.guest_policy
        if not gp.has(PolicyBit.RESERVED_1) or gp.unknown_bits:
            raise SnpError("policy_reserved", f"POLICY {rpt.policy:#x}: bit 17 must be 1 and "
                                              "bits 63:26 zero")
        if gp.has(PolicyBit.DEBUG) and not policy.allow_debug:
            raise SnpError("debug", "the guest policy allows debugging (the hypervisor can read "
                                    "and change guest memory)")
        if gp.has(PolicyBit.MIGRATE_MA) and not policy.allow_migration_agent:
            raise SnpError("migration_agent", "the guest policy allows a migration agent")
        if gp.has(PolicyBit.SMT) and not policy.allow_smt:
            raise SnpError("smt", "the guest policy allows SMT")
        missing = policy.required_policy_bits & ~rpt.policy
        if missing:
            names = [b.name for b in PolicyBit if missing >> b & 1] or [f"{missing:#x}"]
            raise SnpError("required_policy", "POLICY lacks " + ", ".join(names))
        have = reported.components()
        for name, minimum in policy.min_tcb:
            if name not in have:
                if minimum:
                    raise SnpError("min_tcb", f"a {prod.value} TCB has no {name} component")
                continue
            if have[name] < minimum:
                raise SnpError("min_tcb", f"REPORTED_TCB {name} is {have[name]}, the policy "
                                          f"needs at least {minimum}")
        if (rpt.current_tcb != rpt.committed_tcb
                or rpt.current_firmware != rpt.committed_firmware):
            if not policy.allow_provisional_firmware:
                raise SnpError("provisional_firmware",
                               "the firmware is provisional: current TCB %s / version %d.%d.%d, "
                               "committed TCB %s / version %d.%d.%d"
                               % (rpt.tcb("current", prod), *rpt.current_firmware,
                                  rpt.tcb("committed", prod), *rpt.committed_firmware))
        if policy.min_firmware is not None:
            need = tuple(policy.min_firmware)
            for which, version in (("current", rpt.current_firmware),
                                   ("committed", rpt.committed_firmware)):
                if version[:len(need)] < need:
                    raise SnpError("min_firmware", f"{which} firmware "
                                   f"{'.'.join(map(str, version))} is older than "
                                   f"{'.'.join(map(str, need))}")
        if rpt.guest_svn < policy.min_guest_svn:
            raise SnpError("min_guest_svn", f"GUEST_SVN {rpt.guest_svn} < {policy.min_guest_svn}")
        if policy.measurements and not any(hmac.compare_digest(m, rpt.measurement)
                                           for m in policy.measurements):
            raise SnpError("measurement", f"MEASUREMENT {rpt.measurement.hex()} is not allowed")
        if policy.report_data is not None:
            if callable(policy.report_data):
                ok = bool(policy.report_data(rpt.report_data))
            else:
                ok = hmac.compare_digest(bytes(policy.report_data), rpt.report_data)
            if not ok:
                raise SnpError("report_data", "REPORT_DATA is not the expected value")
        if policy.host_data is not None and not hmac.compare_digest(policy.host_data,
                                                                     rpt.host_data):
            raise SnpError("host_data", f"HOST_DATA {rpt.host_data.hex()} is not the expected "
                                        "value")
        for name in ("family_id", "image_id"):
            want = getattr(policy, name)
            if want is not None and bytes(want) != getattr(rpt, name):
                raise SnpError(name, f"{name.upper()} {getattr(rpt, name).hex()} is not "
                                     f"{bytes(want).hex()}")
        if policy.id_key_digests and rpt.id_key_digest not in policy.id_key_digests:
            raise SnpError("id_key", f"ID_KEY_DIGEST {rpt.id_key_digest.hex()[:24]}... is not "
                                     "allowed")
        if policy.author_key_digests:
            if not rpt.key.author_key_en:
                raise SnpError("author_key", "no author key signed the ID block "
                                             "(AUTHOR_KEY_EN is 0)")
            if rpt.author_key_digest not in policy.author_key_digests:
                raise SnpError("author_key", "AUTHOR_KEY_DIGEST "
                                             f"{rpt.author_key_digest.hex()[:24]}... is not "
                                             "allowed")


def verify_report(report: bytes, **kwargs) -> Verified:
    """One-shot verification with AMD's roots only (or `trust=`); see `Verifier.verify`."""
    trust = kwargs.pop("trust", None)
    return Verifier(trust).verify(report, **kwargs)
