"""The identity an anchored TPM proves: its EKs and AK, and the manifests that carry them.

Templates (marshalled TPMT_PUBLIC, big-endian as every TPM structure):
* EK L-1 (RSA-2048) and L-2 (ECC P-256) of the TCG EK Credential Profile: attributes
  0x000300B2 (fixedTPM, fixedParent, sensitiveDataOrigin, adminWithPolicy, restricted,
  decrypt), PolicySecret(TPM_RH_ENDORSEMENT) as authPolicy, AES-128-CFB, zero-filled unique.
  `tpm2_createek` and coconut-svsm make exactly these keys.
* The AK: a restricted signing key, primary in the endorsement hierarchy (so that it is new
  whenever the EPS is), attributes 0x00050072 (fixedTPM, fixedParent, sensitiveDataOrigin,
  userWithAuth, restricted, sign), no authPolicy; ECC P-256 with ECDSA-SHA256 (default) or
  RSA-2048 with RSASSA-SHA256; zero-filled unique.

Persistent handles: EKs at 0x81010001 (RSA) and 0x81010002 (ECC), TCG's EK handles; the AK at
0x81020000, the handle the TCG device-identity specification reserves for the IAK.

Manifests (what REPORT_DATA = SHA-512(nonce || manifest) binds):
* version 0: the marshalled TPMT_PUBLIC of the RSA EK, nothing else, as coconut-svsm's vTPM
  service manifest (go-tpm-tools' verify_svsm reads it that way);
* version 1 (ctpm's own): "CTPMMANI" | u16 version = 1 | u16 count | count entries of
  (u32 persistent handle | u16 role: 1 EK, 2 AK | u16 size | TPMT_PUBLIC). A verifier learns
  the AK from the report itself, without a MakeCredential round trip. The passthrough mode
  adds role 3 (the EK certificate, DER, under the NV index it was read from; the contents
  of the EK certificate chain indices 0x01C00100-0x01C001FF the same way, each as read:
  concatenated DER certificates, possibly split across indices) and role 4
  (under the AK's handle: EK Name || AK Name, present only when the TPM opened a credential
  made for that EK and AK); readers that do not know a role skip it.
"""
import hashlib
import struct
from dataclasses import dataclass

EK_RSA_HANDLE = 0x81010001
EK_ECC_HANDLE = 0x81010002
AK_HANDLE = 0x81020000

EK_ATTRIBUTES = 0x000300B2
AK_ATTRIBUTES = 0x00050072
# PolicySecret(TPM_RH_ENDORSEMENT), SHA-256 (TCG EK Credential Profile, policy A)
EK_POLICY = bytes.fromhex("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")

ALG_RSA, ALG_ECC, ALG_SHA256, ALG_AES, ALG_CFB, ALG_NULL = 0x1, 0x23, 0xB, 0x6, 0x43, 0x10
ALG_ECDSA, ALG_RSASSA = 0x18, 0x14
ECC_NIST_P256 = 0x3
_AES128_CFB = struct.pack(">HHH", ALG_AES, 128, ALG_CFB)
_NO_SYM = struct.pack(">H", ALG_NULL)


def _b2(b: bytes) -> bytes:
    return struct.pack(">H", len(b)) + b


def ek_rsa_template() -> bytes:
    """TCG EK template L-1."""
    return (struct.pack(">HHI", ALG_RSA, ALG_SHA256, EK_ATTRIBUTES) + _b2(EK_POLICY)
            + _AES128_CFB + struct.pack(">HHI", ALG_NULL, 2048, 0) + _b2(bytes(256)))


def ek_ecc_template() -> bytes:
    """TCG EK template L-2."""
    return (struct.pack(">HHI", ALG_ECC, ALG_SHA256, EK_ATTRIBUTES) + _b2(EK_POLICY)
            + _AES128_CFB + struct.pack(">HHH", ALG_NULL, ECC_NIST_P256, ALG_NULL)
            + _b2(bytes(32)) + _b2(bytes(32)))


def ak_template(kind: str = "ecc") -> bytes:
    """The AK: 'ecc' (P-256, ECDSA-SHA256) or 'rsa' (2048, RSASSA-SHA256)."""
    head = struct.pack(">HHI", ALG_ECC if kind == "ecc" else ALG_RSA, ALG_SHA256,
                       AK_ATTRIBUTES) + _b2(b"")
    if kind == "ecc":
        return (head + _NO_SYM + struct.pack(">HHHH", ALG_ECDSA, ALG_SHA256, ECC_NIST_P256,
                                             ALG_NULL) + _b2(bytes(32)) + _b2(bytes(32)))
    if kind == "rsa":
        return (head + _NO_SYM + struct.pack(">HHHI", ALG_RSASSA, ALG_SHA256, 2048, 0)
                + _b2(bytes(256)))
    raise ValueError(f"AK kind {kind!r}: 'ecc' or 'rsa'")


def name_of(public: bytes) -> bytes:
    """The Name of a SHA-256 object: nameAlg || SHA-256(TPMT_PUBLIC)."""
    name_alg = struct.unpack(">H", public[2:4])[0]
    if name_alg != ALG_SHA256:
        raise ValueError(f"nameAlg {name_alg:#x}: only SHA-256 objects here")
    return struct.pack(">H", ALG_SHA256) + hashlib.sha256(public).digest()


ROLE_EK, ROLE_AK, ROLE_EK_CERT, ROLE_ACTIVATION = 1, 2, 3, 4
MANIFEST_MAGIC = b"CTPMMANI"
MANIFEST_VERSIONS = (0, 1)


@dataclass(frozen=True)
class Identity:
    """The public areas (marshalled TPMT_PUBLIC) a TPM's anchor names."""

    ek_rsa: bytes
    ek_ecc: bytes | None = None
    ak: bytes | None = None
    ek_certs: tuple = ()            # ((NV index, DER), ...) read from the TPM (passthrough)
    activation: bytes | None = None     # EK Name || AK Name the TPM opened a credential for

    def activated(self) -> bool:
        """Whether the manifest records that this AK was activated against this RSA EK."""
        return (self.ak is not None and self.activation is not None
                and self.activation == name_of(self.ek_rsa) + name_of(self.ak))

    def manifest(self, version: int) -> bytes:
        if version == 0:
            return self.ek_rsa
        if version == 1:
            entries = [(EK_RSA_HANDLE, ROLE_EK, self.ek_rsa)]
            if self.ek_ecc is not None:
                entries.append((EK_ECC_HANDLE, ROLE_EK, self.ek_ecc))
            if self.ak is not None:
                entries.append((AK_HANDLE, ROLE_AK, self.ak))
            entries += [(index, ROLE_EK_CERT, der) for index, der in self.ek_certs]
            if self.activation is not None:
                entries.append((AK_HANDLE, ROLE_ACTIVATION, self.activation))
            out = MANIFEST_MAGIC + struct.pack(">HH", 1, len(entries))
            for handle, role, public in entries:
                out += struct.pack(">IHH", handle, role, len(public)) + public
            return out
        raise ValueError(f"manifest version {version}: ctpm has versions 0 and 1")

    @classmethod
    def from_manifest(cls, data: bytes, version: int) -> "Identity":
        """Read a manifest back (raises ValueError on anything malformed)."""
        data = bytes(data)
        if version == 0:
            return cls(ek_rsa=data)
        if version != 1:
            raise ValueError(f"manifest version {version} is unknown")
        if data[:8] != MANIFEST_MAGIC or len(data) < 12:
            raise ValueError("not a ctpm manifest v1 (magic)")
        layout, count = struct.unpack(">HH", data[8:12])
        if layout != 1:
            raise ValueError(f"manifest layout {layout} is unknown")
        pos, found, certs = 12, {}, []
        for _ in range(count):
            if pos + 8 > len(data):
                raise ValueError("manifest v1 is truncated")
            handle, role, size = struct.unpack(">IHH", data[pos:pos + 8])
            public = data[pos + 8:pos + 8 + size]
            if len(public) != size:
                raise ValueError("manifest v1 is truncated")
            if role == ROLE_EK_CERT:
                certs.append((handle, public))
            else:
                found[(handle, role)] = public
            pos += 8 + size
        if pos != len(data):
            raise ValueError("manifest v1 has trailing bytes")
        if (EK_RSA_HANDLE, ROLE_EK) not in found:
            raise ValueError("manifest v1 names no RSA EK")
        return cls(ek_rsa=found[(EK_RSA_HANDLE, ROLE_EK)],
                   ek_ecc=found.get((EK_ECC_HANDLE, ROLE_EK)),
                   ak=found.get((AK_HANDLE, ROLE_AK)), ek_certs=tuple(certs),
                   activation=found.get((AK_HANDLE, ROLE_ACTIVATION)))


def report_data(nonce: bytes, manifest: bytes) -> bytes:
    """REPORT_DATA for a nonce and a manifest: SHA-512(nonce || manifest), the SVSM rule."""
    return hashlib.sha512(bytes(nonce) + bytes(manifest)).digest()


def provision(client, *, ak_kind: str = "ecc") -> Identity:
    """Create the EKs and the AK from the current EPS and make them persistent (what a
    manufacturer or coconut-svsm's boot does), through TPM commands on a started TPM."""
    from .tpmclient import RH_ENDORSEMENT, RH_OWNER
    publics = []
    for template, handle in ((ek_rsa_template(), EK_RSA_HANDLE),
                             (ek_ecc_template(), EK_ECC_HANDLE),
                             (ak_template(ak_kind), AK_HANDLE)):
        transient, public, _ = client.create_primary(RH_ENDORSEMENT, template)
        client.evict_control(RH_OWNER, transient, handle)
        client.flush(transient)
        publics.append(public)
    return Identity(ek_rsa=publics[0], ek_ecc=publics[1], ak=publics[2])
