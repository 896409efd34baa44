"""The anchor: an SNP report whose REPORT_DATA binds a TPM's manifest (its EKs, its AK) to a
verifier's nonce, REPORT_DATA = SHA-512(nonce || manifest).

`Anchor` produces it (the identity + a report provider); `encode_evidence`/`decode_evidence`
are the layout of the evidence NV index; `verify_anchor` is the verifier's side.

Evidence index layout (big-endian, as TPM structures; docs/modes.md):
  "CTPMEVID" | u16 layout = 1 | u16 manifest version | u16 provider length |
  u16 nonce length | u32 report length | u32 certificate table length | u32 manifest length |
  provider (ASCII) | nonce | report | certificate table | manifest | zero padding
"""
import hmac
import struct
from dataclasses import dataclass

from .identity import MANIFEST_VERSIONS, Identity, name_of, report_data

EVIDENCE_MAGIC = b"CTPMEVID"
_HEAD = struct.Struct(">8sHHHHIII")
NONCE_SIZE = 64


class Anchor:
    """A TPM's identity and the report provider that vouches for it."""

    manifest_versions = MANIFEST_VERSIONS

    def __init__(self, identity: Identity, provider):
        self.identity = identity
        self.provider = provider

    def manifest(self, version: int) -> bytes:
        return self.identity.manifest(version)

    def attest(self, nonce: bytes, manifest_version: int = 1, *, vmpl: int | None = None):
        """(Evidence, manifest) for a 64-byte nonce. Blocks on the provider (device I/O):
        call it from a worker thread in async code."""
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"the nonce is {NONCE_SIZE} bytes, got {len(nonce)}")
        manifest = self.manifest(manifest_version)
        evidence = self.provider.report(report_data(nonce, manifest), vmpl=vmpl)
        return evidence, manifest


@dataclass(frozen=True)
class NvEvidence:
    """The content of the evidence NV index, decoded."""

    provider: str
    nonce: bytes
    report: bytes
    cert_table: bytes
    manifest: bytes
    manifest_version: int


def encode_evidence(nonce: bytes, evidence, manifest: bytes, manifest_version: int) -> bytes:
    provider = evidence.provider.encode("ascii")
    certs = evidence.cert_table or b""
    return (_HEAD.pack(EVIDENCE_MAGIC, 1, manifest_version, len(provider), len(nonce),
                       len(evidence.report), len(certs), len(manifest))
            + provider + nonce + evidence.report + certs + manifest)


def decode_evidence(blob: bytes) -> NvEvidence:
    """Read an evidence index's bytes (trailing zero padding allowed); ValueError if it is not
    one."""
    blob = bytes(blob)
    if len(blob) < _HEAD.size:
        raise ValueError("evidence is shorter than its header")
    magic, layout, mver, plen, nlen, rlen, clen, mlen = _HEAD.unpack_from(blob)
    if magic != EVIDENCE_MAGIC or layout != 1:
        raise ValueError("not ctpm evidence (magic or layout)")
    end = _HEAD.size + plen + nlen + rlen + clen + mlen
    if end > len(blob) or any(blob[end:]):
        raise ValueError("evidence lengths do not match its size")
    pos = _HEAD.size
    parts = []
    for n in (plen, nlen, rlen, clen, mlen):
        parts.append(blob[pos:pos + n])
        pos += n
    provider, nonce, report, certs, manifest = parts
    return NvEvidence(provider=provider.decode("ascii", "replace"), nonce=nonce,
                      report=report, cert_table=certs, manifest=manifest,
                      manifest_version=mver)


# --- the verifier's side ---------------------------------------------------------------------

ANCHOR_CHECKS = ("manifest", "ek_name", "ak_name", "activation", "ek_certificate", "nonce")


@dataclass(frozen=True)
class AnchoredIdentity:
    """What a verified anchor proves: this SNP-attested VM holds these keys."""

    snp: object                 # ctpm.snp.verify.Verified
    identity: Identity
    manifest_version: int

    @property
    def ek_name(self) -> bytes:
        return name_of(self.identity.ek_rsa)

    @property
    def ak_name(self) -> bytes | None:
        return name_of(self.identity.ak) if self.identity.ak else None


def _public_area(data: bytes) -> bytes:
    """A TPMT_PUBLIC, given as TPMT_PUBLIC or TPM2B_PUBLIC (what `tpm2_readpublic -o` writes)."""
    data = bytes(data)
    if len(data) >= 2 and struct.unpack(">H", data[:2])[0] == len(data) - 2:
        return data[2:]
    return data


def verify_anchor(report: bytes, nonce: bytes, manifest: bytes, manifest_version: int, *,
                  ek_public: bytes | None = None, ak_public: bytes | None = None,
                  require_activation: bool = False, ek_cas=None,
                  verifier=None, policy=None, **snp_kwargs) -> AnchoredIdentity:
    """Check an anchor: the whole SNP verification with REPORT_DATA required to be
    SHA-512(nonce || manifest); the manifest well formed; the EK the TPM presents
    (`ek_public`, by Name) equal to the manifest's; with manifest v1 the AK too.
    `require_activation`: the manifest records that the TPM opened a credential made for
    its EK and AK (the passthrough mode's record; what it proves: docs/modes.md).
    `ek_cas` (`cryptography` certificates): the manifest carries a certificate for its RSA
    EK (the one the activation used), and every EK certificate it carries (RSA 0x01C00002,
    ECC 0x01C0000A) certifies its EK and was issued by one of them, directly or through
    the TPM's EK certificate chain (0x01C00100-0x01C001FF) the manifest carries.
    Raises SnpError naming the check (the SNP checks, or one of ANCHOR_CHECKS)."""
    from dataclasses import replace

    from ..snp.errors import SnpError
    from ..snp.verify import Policy, Verifier

    if len(nonce) != NONCE_SIZE:
        raise SnpError("nonce", f"the nonce is {NONCE_SIZE} bytes, got {len(nonce)}")
    policy = replace(policy or Policy(), report_data=report_data(nonce, manifest))
    snp = (verifier or Verifier()).verify(report, policy=policy, **snp_kwargs)
    try:
        identity = Identity.from_manifest(manifest, manifest_version)
        ek_name = name_of(identity.ek_rsa)
    except (ValueError, struct.error) as e:
        raise SnpError("manifest", str(e)) from None
    if ek_public is not None:
        try:
            presented = name_of(_public_area(ek_public))
        except (ValueError, struct.error) as e:
            raise SnpError("ek_name", f"the EK given is unusable: {e}") from None
        if not hmac.compare_digest(presented, ek_name):
            raise SnpError("ek_name", f"the TPM's EK {presented.hex()[:20]}... is not the "
                                      f"EK the report binds ({ek_name.hex()[:20]}...)")
    if ak_public is not None:
        if identity.ak is None:
            raise SnpError("ak_name", f"manifest v{manifest_version} names no AK")
        try:
            presented = name_of(_public_area(ak_public))
        except (ValueError, struct.error) as e:
            raise SnpError("ak_name", f"the AK given is unusable: {e}") from None
        if not hmac.compare_digest(presented, name_of(identity.ak)):
            raise SnpError("ak_name", "the AK given is not the AK the report binds")
    if require_activation and not identity.activated():
        raise SnpError("activation", "the manifest records no credential activation of its "
                                     "AK against its EK")
    if ek_cas is not None:
        from .credential import (ECC_EK_CERT_INDEX, EK_CHAIN_FIRST, EK_CHAIN_LAST,
                                 RSA_EK_CERT_INDEX, CredentialError, check_ek_certificate,
                                 split_certificates)
        certs = dict(identity.ek_certs)
        try:
            chain = split_certificates(b"".join(
                certs[i] for i in sorted(certs) if EK_CHAIN_FIRST <= i <= EK_CHAIN_LAST))
        except CredentialError as e:
            raise SnpError("ek_certificate", str(e)) from None
        if RSA_EK_CERT_INDEX not in certs:
            raise SnpError("ek_certificate", "the manifest carries no certificate for its RSA "
                                             "EK (NV 0x01C00002)")
        for index, key in ((RSA_EK_CERT_INDEX, identity.ek_rsa),
                           (ECC_EK_CERT_INDEX, identity.ek_ecc)):
            if index not in certs:
                continue
            if key is None:
                raise SnpError("ek_certificate", f"a certificate from {index:#010x} but no "
                                                 "ECC EK in the manifest")
            try:
                check_ek_certificate(certs[index], key, list(ek_cas), intermediates=chain)
            except CredentialError as e:
                raise SnpError("ek_certificate", f"{index:#010x}: {e}") from None
    return AnchoredIdentity(snp=snp, identity=identity, manifest_version=manifest_version)
