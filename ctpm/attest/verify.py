"""Verification of composite evidence: every check in a fixed order, each with a stable name
(`CHECKS`, docs/attestation.md), over the bytes received.

1. the document (`evidence_format`);
2. the SNP report: every check of ctpm.snp.verify with the policy's VMPL, measurements, TCB...,
   REPORT_DATA = SHA-512(nonce || manifest) (`report_data`), the manifest (`manifest`);
   with the policy's `require_activation`, the manifest's record that the TPM opened a
   credential for its EK and AK (`activation`); with `ek_ca`, an EK certificate in the
   manifest issued by one of those CAs for its EK (`ek_certificate`);
3. the AK: named by manifest v1, or (manifest v0, which names only the EK) certified in the
   same exchange by a key the verifier wrapped to the EK (`manifest_ak`, then the checks of
   ctpm.attest.akcert: `ak_certify_format` ... `ak_certify_name`);
4. the quote: TPMS_ATTEST magic (`quote_magic`) and type (`quote_type`), signature by that
   AK with an allowed scheme and hash (`quote_signature`), qualifiedSigner = Name(AK)
   (`qualified_signer`), extraData = SHA-256(nonce) in constant time (`nonce`), the PCR
   selection equal to the policy's (`pcr_selection`), the PCR values given hashing to the
   quoted pcrDigest (`pcr_digest`), clock/resetCount never going back for one AK (`clock`);
5. the event log replayed to the quoted PCRs it covers (`event_log`);
6. reference values: PCR values the policy pins (`reference_pcrs`).
"""
import hashlib
import hmac
import json
import threading
from dataclasses import dataclass, field

from ..snp.errors import SnpError
from . import evidence as E
from .eventlog import EventLogError, replay
from .tpm import (ALG_ECDSA, ALG_RSAPSS, ALG_RSASSA, TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE,
                  InvalidSignature, Quote, format_selection, name_of, parse_selection,
                  public_key, verify_signature)

CHECKS = ("evidence_format", "<ctpm.snp.verify.CHECKS>", "manifest", "activation",
          "ek_certificate", "manifest_ak",
          "quote_format", "quote_magic", "quote_type", "quote_signature", "qualified_signer",
          "nonce", "pcr_selection", "pcr_digest", "clock", "<ctpm.attest.channelkey.CHECKS>",
          "event_log", "reference_pcrs")


def _after(checks: tuple, name: str, added: tuple) -> tuple:
    i = checks.index(name) + 1
    return checks[:i] + added + checks[i:]


# added: manifest v0's AK certification (after manifest_ak), the IMA log (after event_log)
CHECKS = _after(CHECKS, "manifest_ak", ("ak_certify_format", "ak_attributes",
                                        "ak_certify_type", "ak_certify_signature",
                                        "ak_certify_signer", "ak_certify_nonce",
                                        "ak_certify_name"))
CHECKS = _after(CHECKS, "event_log", ("ima_log",))

DEFAULT_SCHEMES = frozenset({(ALG_ECDSA, "sha256"), (ALG_ECDSA, "sha384"),
                             (ALG_RSASSA, "sha256"), (ALG_RSASSA, "sha384"),
                             (ALG_RSAPSS, "sha256"), (ALG_RSAPSS, "sha384")})


class AttestError(SnpError):
    """Evidence refused; `check` names the rule it broke."""


@dataclass(frozen=True)
class AttestPolicy:
    """What the verifier accepts: the SNP policy and trust, the PCRs the quote must cover,
    reference values, the allowed quote schemes."""

    id: str = "ctpm-default"
    snp: object = None                      # ctpm.snp.verify.Policy (None: its defaults)
    trust: object = None                    # ctpm.snp.verify.Trust (None: AMD's roots only)
    pcrs: str = E.DEFAULT_PCRS
    reference: dict = field(default_factory=dict)   # {(bank, pcr): bytes}
    schemes: frozenset = DEFAULT_SCHEMES
    require_event_log: bool = False
    tee: object = None                      # the SNP policy for TEE evidence (docs/channel.md)
    require_activation: bool = False        # the passthrough mode's credential activation
    ek_cas: tuple | None = None             # CA certificates an EK certificate must chain to

    def __post_init__(self):
        object.__setattr__(self, "pcrs", format_selection(parse_selection(self.pcrs)))


def load_policy(path: str) -> AttestPolicy:
    """A policy from TOML (docs/attestation.md); ValueError with one line on a mistake."""
    import tomllib

    from ..snp import certs as C
    from ..snp.verify import Trust
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: {e}") from None
    unknown = set(doc) - {"id", "snp", "tpm", "tee"}
    if unknown:
        raise ValueError(f"{path}: unknown key {sorted(unknown)[0]!r}")
    snp = dict(doc.get("snp", {}))
    tpm = dict(doc.get("tpm", {}))
    arks = []
    for ark_path in snp.pop("trust_ark", []):
        try:
            with open(ark_path, "rb") as f:
                arks.extend(C.load_certs(f.read()))
        except (OSError, SnpError) as e:
            raise ValueError(f"{path}: [snp] trust_ark {ark_path!r}: {e}") from None
    snp_policy = _snp_policy(path, "snp", snp)
    tee_section = dict(doc.get("tee", {}))
    if tee_section.pop("trust_ark", None):
        raise ValueError(f"{path}: [tee] trust_ark: the ARKs are [snp]'s, for both")
    tee_policy = _snp_policy(path, "tee", tee_section) if "tee" in doc else None
    reference = {}
    for bank, values in tpm.pop("reference", {}).items():
        for pcr, value in values.items():
            try:
                reference[bank.lower(), int(pcr)] = bytes.fromhex(value)
            except (ValueError, TypeError):
                raise ValueError(f"{path}: [tpm.reference] {bank}.{pcr} is not hex") from None
    cas = None
    if "ek_ca" in tpm:
        from ..modes.credential import load_ca_bundle
        cas = []
        for ca_path in tpm.pop("ek_ca"):
            try:
                cas.extend(load_ca_bundle(ca_path))
            except (OSError, ValueError) as e:
                raise ValueError(f"{path}: [tpm] ek_ca {ca_path!r}: {e}") from None
        cas = tuple(cas)
    extra = set(tpm) - {"pcrs", "require_event_log", "require_activation"}
    if extra:
        raise ValueError(f"{path}: [tpm]: unknown key {sorted(extra)[0]!r}")
    try:
        return AttestPolicy(id=str(doc.get("id", "ctpm-default")), snp=snp_policy,
                            trust=Trust(extra_arks=tuple(arks)),
                            pcrs=tpm.get("pcrs", E.DEFAULT_PCRS), reference=reference,
                            require_event_log=bool(tpm.get("require_event_log", False)),
                            tee=tee_policy,
                            require_activation=bool(tpm.get("require_activation", False)),
                            ek_cas=cas)
    except ValueError as e:
        raise ValueError(f"{path}: [tpm] pcrs: {e}") from None


def _snp_policy(path: str, section: str, values: dict):
    """A ctpm.snp.verify.Policy from an [snp]-shaped TOML table."""
    import dataclasses

    from ..snp.verify import Policy
    hexes = {"measurements": 48, "id_key_digests": 48, "author_key_digests": 48}
    known = {f.name for f in dataclasses.fields(Policy)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"{path}: [{section}]: unknown key {key!r}")
        try:
            if key in hexes:
                kwargs[key] = [bytes.fromhex(v) for v in value]
            elif key in ("report_data", "host_data", "family_id", "image_id"):
                kwargs[key] = bytes.fromhex(value)
            elif key == "vmpl":
                kwargs[key] = None if value == "any" else int(value)
            elif key == "min_firmware":
                kwargs[key] = tuple(int(x) for x in str(value).split("."))
            else:
                kwargs[key] = value
        except (ValueError, TypeError):
            raise ValueError(f"{path}: [{section}] {key}: {value!r} is not valid") from None
    try:
        return Policy(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: [{section}]: {e}") from None


class ClockHistory:
    """The last (resetCount, restartCount, clock) seen per AK: a quote from the past (a
    replayed or rolled-back TPM) is refused. Thread-safe; in memory."""

    def __init__(self):
        self._seen = {}
        self._lock = threading.Lock()

    def check(self, ak_name: bytes, quote: Quote):
        now = (quote.reset_count, quote.restart_count, quote.clock)
        with self._lock:
            last = self._seen.get(ak_name)
            if last is not None and (now[0] < last[0] or (now[0] == last[0] and (
                    now[2] < last[2]))):
                raise AttestError("clock", f"the TPM's clock went back (resetCount "
                                           f"{now[0]} clock {now[2]} after {last[0]}/{last[2]})")
            self._seen[ak_name] = now


@dataclass(frozen=True)
class Appraisal:
    """Evidence that passed every check, and what it proves."""

    snp: object                 # ctpm.snp.verify.Verified
    ek_name: bytes
    ak_name: bytes
    manifest_version: int
    provider: str
    quote: Quote
    pcrs: dict                  # {bank: {pcr: bytes}}
    pcr_digest: bytes
    policy_id: str
    instance_uuid: str | None
    event_log_replayed: tuple   # (bank, pcr) the log accounted for
    confirmed_key: dict | None = None   # the channel key K as a JWK (docs/channel.md)
    ak_certified: bool = False  # manifest v0: the AK certified by a key wrapped to the EK
    ima_log_replayed: tuple = ()    # (bank, pcr) the IMA log accounted for
    ima_log_entries: int = 0

    def claims(self) -> dict:
        s = self.snp
        return {
            "policy_id": self.policy_id,
            "instance_uuid": self.instance_uuid,
            "confirmed_key": self.confirmed_key,
            "snp": {"product": s.product.value, "root": s.root, "provider": self.provider,
                    "vmpl": s.vmpl, "measurement": s.measurement.hex(),
                    "host_data": s.host_data.hex(), "reported_tcb": s.reported_tcb.components(),
                    "chip_id_masked": s.chip_id_masked, "report_version": s.report.version,
                    "policy": f"{s.report.policy:#x}", "signing_key": s.signing_key},
            "vtpm": {"ek_name": self.ek_name.hex(), "ak_name": self.ak_name.hex(),
                     "manifest_version": self.manifest_version,
                     "ak_binding": "ek-certify" if self.ak_certified else "manifest",
                     "pcr_selection": format_selection(self.quote.selection),
                     "pcr_digest": self.pcr_digest.hex(),
                     "pcrs": {b: {str(i): v.hex() for i, v in sorted(p.items())}
                              for b, p in self.pcrs.items()},
                     "clock": {"clock": self.quote.clock, "reset_count": self.quote.reset_count,
                               "restart_count": self.quote.restart_count,
                               "safe": bool(self.quote.safe)},
                     "event_log_pcrs": [f"{b}:{p}" for b, p in self.event_log_replayed],
                     "ima_log": {"pcrs": [f"{b}:{p}" for b, p in self.ima_log_replayed],
                                 "entries": self.ima_log_entries}
                     if self.ima_log_replayed else None},
        }


def verify_evidence(doc, nonce: bytes, policy: AttestPolicy | None = None, *, verifier=None,
                    history: ClockHistory | None = None, certifier=None) -> Appraisal:
    """Check composite evidence for `nonce` (see the module docstring). Raises AttestError
    (or SnpError, a superclass, from the SNP checks) naming the failed check. `certifier`
    (ctpm.attest.akcert.Certifier): the one that made the challenge's AK-certification key,
    needed for manifest v0."""
    from ..modes.anchor import verify_anchor
    from ..snp.verify import Verifier

    policy = policy or AttestPolicy()
    if isinstance(doc, (bytes, str)):
        try:
            doc = json.loads(doc)
        except ValueError as e:
            raise AttestError("evidence_format", f"not JSON: {e}") from None
    try:
        p = E.parts(doc)
        meta = json.loads(p["meta"])
        version = meta["manifest_version"]
        pcr_values = {bank: {int(i): bytes.fromhex(v) for i, v in values.items()}
                      for bank, values in json.loads(p["pcrs"]).items()}
        if meta.get("version") != 1 or version not in (0, 1):
            raise ValueError("meta: version must be 1 and manifest_version 0 or 1")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise AttestError("evidence_format", str(e)) from None

    # the SNP part and the manifest it binds
    verifier = verifier or Verifier(policy.trust)
    anchored = verify_anchor(p["snp-report"], nonce, p["manifest"], version,
                             verifier=verifier, policy=policy.snp,
                             require_activation=policy.require_activation,
                             ek_cas=policy.ek_cas, cert_table=p.get("snp-certs"))
    ak = anchored.identity.ak
    certified = False
    if ak is None:
        ak = _certified_ak(p, nonce, anchored.identity.ek_rsa, certifier)
        certified = True
    ak_name = name_of(ak)

    quote, quoted = _verify_quote(p["tpm-quote"], p["tpm-signature"], pcr_values, ak, nonce,
                                  policy)
    if history is not None:
        history.check(ak_name, quote)

    confirmed = None
    if "channel-key" in p:
        from .channelkey import verify_channel_key
        confirmed = verify_channel_key(p["channel-key"], p["channel-key-certify"],
                                       p["channel-key-signature"], ak=ak,
                                       ak_qualified_name=qualified_name(ak_name), nonce=nonce,
                                       schemes=policy.schemes)

    # the event log
    replayed = ()
    if "event-log" in p:
        try:
            log_values = replay(p["event-log"])
        except EventLogError as e:
            raise AttestError("event_log", str(e)) from None
        covered = sorted(k for k in log_values if k in quoted)
        for k in covered:
            if log_values[k] != quoted[k]:
                raise AttestError("event_log", f"the event log replays {k[0]}:{k[1]} to "
                                               f"{log_values[k].hex()[:16]}..., the quote says "
                                               f"{quoted[k].hex()[:16]}...")
        replayed = tuple(covered)
    elif policy.require_event_log:
        raise AttestError("event_log", "the policy needs an event log; the evidence has none")

    ima_replayed, ima_entries = _replay_ima(p["ima-log"], quoted) if "ima-log" in p \
        else ((), 0)

    for (bank, pcr), want in sorted(policy.reference.items()):
        got = quoted.get((bank, pcr))
        if got is None:
            raise AttestError("reference_pcrs", f"{bank}:{pcr} has a reference value but is "
                                                "not quoted")
        if not hmac.compare_digest(got, want):
            raise AttestError("reference_pcrs", f"{bank}:{pcr} is {got.hex()[:16]}..., the "
                                                f"reference is {want.hex()[:16]}...")
    return Appraisal(snp=anchored.snp, ek_name=anchored.ek_name, ak_name=ak_name,
                     manifest_version=version, provider=str(meta.get("provider", "")),
                     quote=quote, pcrs={b: dict(v) for b, v in pcr_values.items()},
                     pcr_digest=quote.pcr_digest, policy_id=policy.id,
                     instance_uuid=meta.get("instance_uuid"), event_log_replayed=replayed,
                     confirmed_key=confirmed, ak_certified=certified,
                     ima_log_replayed=ima_replayed, ima_log_entries=ima_entries)


def _replay_ima(log: bytes, quoted: dict) -> tuple:
    """The IMA log replayed to the quoted PCRs it extends (`ima_log`): ((bank, pcr), ...),
    entries. A log whose PCR is not quoted in a bank it can be replayed to is refused: it
    would be carried unchecked."""
    from .ima import ImaLogError, replay as replay_ima
    banks = sorted({bank for bank, _ in quoted})
    try:
        values, entries = replay_ima(log, banks)
    except ImaLogError as e:
        raise AttestError("ima_log", str(e)) from None
    covered = sorted(k for k in values if k in quoted)
    if not covered:
        raise AttestError("ima_log", "the IMA log extends PCR(s) "
                                     f"{sorted({k[1] for k in values}) or '(none)'} in "
                                     f"{banks}, none of which is quoted (quote sha256:10)")
    for k in covered:
        if not hmac.compare_digest(values[k], quoted[k]):
            raise AttestError("ima_log", f"the IMA log replays {k[0]}:{k[1]} to "
                                         f"{values[k].hex()[:16]}..., the quote says "
                                         f"{quoted[k].hex()[:16]}...")
    return tuple(covered), entries


def _certified_ak(p: dict, nonce: bytes, ek_public: bytes, certifier) -> bytes:
    """Manifest v0: the AK from the evidence, certified by the key `certifier` wrapped to
    the report's EK for this nonce (ctpm.attest.akcert); its TPMT_PUBLIC."""
    from .akcert import CertifyError
    members = ("ak-public", "ak-certify", "ak-certify-signature")
    if certifier is None:
        raise AttestError("manifest_ak", "the manifest names no AK and this verifier made no "
                                         "AK-certification key (manifest v0 needs the "
                                         "challenge to carry the EK)")
    if not all(m in p for m in members):
        raise AttestError("manifest_ak", "the manifest names no AK and the evidence carries no "
                                         "AK certification (ak-public, ak-certify, "
                                         "ak-certify-signature)")
    try:
        certifier.check(nonce=nonce, ek_public=ek_public, ak_public=p["ak-public"],
                        attest=p["ak-certify"], signature=p["ak-certify-signature"])
    except CertifyError as e:
        raise AttestError(e.check, e.message) from None
    return p["ak-public"]


def _verify_quote(quote_bytes: bytes, signature: bytes, pcr_values: dict, ak: bytes,
                  nonce: bytes, policy):
    """The quote's checks (quote_format ... pcr_digest); (Quote, {(bank, pcr): value})."""
    ak_name = name_of(ak)
    try:
        quote = Quote.parse(quote_bytes)
        key, _, _, _ = public_key(ak)
    except (ValueError, IndexError) as e:
        raise AttestError("quote_format", f"the quote or the AK is malformed: {e}") from None
    if quote.magic != TPM_GENERATED_VALUE:
        raise AttestError("quote_magic", f"magic {quote.magic:#x} is not TPM_GENERATED_VALUE "
                                         "(the TPM did not make this structure)")
    if quote.type != TPM_ST_ATTEST_QUOTE:
        raise AttestError("quote_type", f"type {quote.type:#x} is not TPM_ST_ATTEST_QUOTE")
    try:
        verify_signature(key, signature, quote_bytes, set(policy.schemes))
    except ValueError as e:
        raise AttestError("quote_signature", str(e)) from None
    except InvalidSignature:
        raise AttestError("quote_signature", "the quote's signature does not verify with the "
                                             "manifest's AK") from None
    if not hmac.compare_digest(quote.qualified_signer, qualified_name(ak_name)):
        raise AttestError("qualified_signer", "qualifiedSigner is not the Qualified Name of "
                                              "the manifest's AK (a primary key of the "
                                              "endorsement hierarchy)")
    if not hmac.compare_digest(quote.extra_data, E.qualifying_data(nonce)):
        raise AttestError("nonce", "the quote's extraData is not SHA-256(nonce)")
    if format_selection(quote.selection) != policy.pcrs:
        raise AttestError("pcr_selection", f"the quote covers {format_selection(quote.selection)}"
                                           f", the policy asks for {policy.pcrs}")
    h = hashlib.new(_quote_hash(signature))
    for bank, pcrs in quote.selection:
        for pcr in pcrs:
            value = pcr_values.get(bank, {}).get(pcr)
            if value is None or len(value) != hashlib.new(bank).digest_size:
                raise AttestError("pcr_digest", f"no {bank} value for PCR {pcr}")
            h.update(value)
    if not hmac.compare_digest(h.digest(), quote.pcr_digest):
        raise AttestError("pcr_digest", "the PCR values given do not hash to the quoted "
                                        "pcrDigest (changed after the quote?)")
    quoted = {(b, i): pcr_values[b][i] for b, pcrs in quote.selection for i in pcrs}
    return quote, quoted


def qualified_name(ak_name: bytes, parent: bytes = (0x4000000B).to_bytes(4, "big")) -> bytes:
    """QN of a primary key (Part 1 §16.6): nameAlg || H(QN(hierarchy) || Name), the
    hierarchy's QN being its handle; ctpm's AK is a primary of the endorsement hierarchy."""
    from .tpm import HASHES
    alg = int.from_bytes(ak_name[:2], "big")
    return ak_name[:2] + hashlib.new(HASHES[alg], parent + ak_name).digest()


def _quote_hash(signature: bytes) -> str:
    """The quote's pcrDigest uses the signing scheme's hash (Part 3 §18.4)."""
    from .tpm import HASHES
    return HASHES.get(int.from_bytes(signature[2:4], "big"), "sha256")
