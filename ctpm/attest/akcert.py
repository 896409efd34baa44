"""TCG EK-based AK certification inside the one attestation exchange, for manifest v0 (which
names only the EK, as coconut-svsm's vTPM manifest).

The verifier, given the attester's EK public area with its challenge, makes a restricted
P-256 signing key K for (nonce N, Name(EK)) and wraps it to the EK (the outer duplication
wrapper of TPM 2.0 Part 1 §23.3.2: a seed RSA-OAEP-encrypted to the EK with label
"DUPLICATE", AES-128-CFB of the TPM2B_SENSITIVE under KDFa(seed, "STORAGE", Name(K)) and an
HMAC under KDFa(seed, "INTEGRITY")). Only the TPM holding the EK's private key can
TPM2_Import it (the EK's PolicySecret(TPM_RH_ENDORSEMENT) authorizes that), so a
TPM2_Certify of the AK by K, over qualifyingData = SHA-256(N), proves that the AK lives in
the TPM whose EK the SNP report binds, in this exchange. K is restricted: the attester cannot
have it sign a TPMS_ATTEST the TPM did not make.

K is derived, not stored: private scalar = HKDF-SHA256(secret, N || Name(EK)), so a verifier
(or several sharing `secret`) keeps no state per challenge; one with another EK's Name (a
challenge asked for another TPM than the report binds) derives another key and refuses.

Checks (verifier side, in this order): `ak_certify_format`, `ak_attributes`,
`ak_certify_type`, `ak_certify_signature`, `ak_certify_signer`, `ak_certify_nonce`,
`ak_certify_name`.
"""
import hashlib
import hmac
import os
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

try:    # cryptography >= 43 moved CFB to "decrepit"
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:     # pragma: no cover
    from cryptography.hazmat.primitives.ciphers.modes import CFB

from .tpm import Reader, name_of, public_key

CHECKS = ("ak_certify_format", "ak_attributes", "ak_certify_type", "ak_certify_signature",
          "ak_certify_signer", "ak_certify_nonce", "ak_certify_name")

TPM_ST_ATTEST_CERTIFY = 0x8017
TPM_GENERATED_VALUE = 0xFF544347
RH_ENDORSEMENT = struct.pack(">I", 0x4000000B)
# the AK must be a TPM-made restricted signing key that cannot leave the TPM
FIXED_TPM, FIXED_PARENT, SENSITIVE_ORIGIN = 0x2, 0x10, 0x20
USER_WITH_AUTH, NO_DA, RESTRICTED, DECRYPT, SIGN = 0x40, 0x400, 0x10000, 0x20000, 0x40000
AK_REQUIRED = FIXED_TPM | FIXED_PARENT | SENSITIVE_ORIGIN | RESTRICTED | SIGN
# K: restricted signing key, usable with an empty password, importable (no fixedTPM/Parent)
KEY_ATTRIBUTES = USER_WITH_AUTH | NO_DA | RESTRICTED | SIGN
_P256_ORDER = int("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16)


class CertifyError(ValueError):
    """Refused; `check` is one of CHECKS."""

    def __init__(self, check: str, message: str):
        super().__init__(message)
        self.check, self.message = check, message


def _b2(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def kdfa(key: bytes, label: bytes, context_u: bytes, context_v: bytes, bits: int) -> bytes:
    """KDFa with HMAC-SHA256 (Part 1 §11.4.10.2; the label ends with one zero byte)."""
    out, counter = b"", 1
    while len(out) * 8 < bits:
        out += hmac.new(key, struct.pack(">I", counter) + label + b"\0" + context_u
                        + context_v + struct.pack(">I", bits), hashlib.sha256).digest()
        counter += 1
    return out[:(bits + 7) // 8]


def key_public(private: ec.EllipticCurvePrivateKey) -> bytes:
    """K's TPMT_PUBLIC: ECC P-256, nameAlg SHA-256, ECDSA-SHA256, KEY_ATTRIBUTES."""
    n = private.public_key().public_numbers()
    return (struct.pack(">HHI", 0x23, 0x0B, KEY_ATTRIBUTES) + _b2(b"")
            + struct.pack(">HHHHH", 0x10, 0x18, 0x0B, 0x03, 0x10)
            + _b2(n.x.to_bytes(32, "big")) + _b2(n.y.to_bytes(32, "big")))


def wrap(ek_public: bytes, public: bytes, private: ec.EllipticCurvePrivateKey, *,
         seed: bytes | None = None) -> tuple:
    """(duplicate TPM2B_PRIVATE contents, inSymSeed) of K for TPM2_Import under the RSA EK
    `ek_public` (TPMT_PUBLIC; its symmetric must be AES-128-CFB, as every TCG EK template)."""
    ek_key, ek_alg, _, _ = _ek_key(ek_public)
    seed = os.urandom(32) if seed is None else seed
    in_sym_seed = ek_key.encrypt(seed, padding.OAEP(padding.MGF1(hashes.SHA256()),
                                                    hashes.SHA256(), b"DUPLICATE\0"))
    d = private.private_numbers().private_value.to_bytes(32, "big")
    sensitive = struct.pack(">H", 0x23) + _b2(b"") + _b2(b"") + _b2(d)
    name = name_of(public)
    sym = kdfa(seed, b"STORAGE", name, b"", 128)
    enc = Cipher(algorithms.AES(sym), CFB(bytes(16))).encryptor()
    encrypted = enc.update(_b2(sensitive)) + enc.finalize()
    integrity = hmac.new(kdfa(seed, b"INTEGRITY", b"", b"", 256), encrypted + name,
                         hashlib.sha256).digest()
    return _b2(integrity) + encrypted, in_sym_seed


def _ek_key(ek_public: bytes):
    r = Reader(ek_public)
    kind, name_alg = r.u16(), r.u16()
    attributes = r.u32()
    r.b2()
    sym, bits, mode = r.u16(), r.u16(), r.u16()
    if kind != 0x0001 or name_alg != 0x000B:
        raise ValueError("the EK is not an RSA key with nameAlg SHA-256 (manifest v0's EK)")
    if (sym, bits, mode) != (0x0006, 128, 0x0043) or not attributes & RESTRICTED or \
            not attributes & DECRYPT:
        raise ValueError("the EK is not a restricted decryption key with AES-128-CFB")
    scheme = r.u16()
    if scheme != 0x0010:
        raise ValueError("the EK has a scheme (a storage key has none)")
    r.u16()
    exponent = r.u32()
    n = r.b2()
    r.end()
    from cryptography.hazmat.primitives.asymmetric import rsa
    return rsa.RSAPublicNumbers(exponent or 65537, int.from_bytes(n, "big")).public_key(), \
        name_alg, None, None


class Certifier:
    """The verifier's side. `secret`: 32+ bytes shared by every verifier process that may
    see the evidence of a challenge it did not issue."""

    def __init__(self, secret: bytes | None = None):
        self.secret = os.urandom(32) if secret is None else bytes(secret)
        if len(self.secret) < 32:
            raise ValueError("the AK-certification secret is at least 32 bytes")

    def key(self, nonce: bytes, ek_name: bytes) -> ec.EllipticCurvePrivateKey:
        okm = HKDF(hashes.SHA256(), 40, salt=None, info=b"ctpm ak-certify v1" + bytes(nonce)
                   + bytes(ek_name)).derive(self.secret)
        return ec.derive_private_key(int.from_bytes(okm, "big") % (_P256_ORDER - 1) + 1,
                                     ec.SECP256R1())

    def challenge(self, nonce: bytes, ek_public: bytes) -> dict:
        """What the challenge response carries for the attester (base64url, no padding):
        K's public area and its duplicate and seed for TPM2_Import under the EK."""
        ek_public = public_area(ek_public)
        private = self.key(nonce, name_of(ek_public))
        public = key_public(private)
        duplicate, seed = wrap(ek_public, public, private)
        return {"public": _b64u(public), "duplicate": _b64u(duplicate),
                "in_sym_seed": _b64u(seed)}

    def check(self, *, nonce: bytes, ek_public: bytes, ak_public: bytes, attest: bytes,
              signature: bytes) -> bytes:
        """Check the AK's certification; the AK's Name. Raises CertifyError."""
        from .tpm import ALG_ECDSA, InvalidSignature, verify_signature
        try:
            ak_name = name_of(ak_public)
            _, _, _, _ = public_key(ak_public)
            attributes = struct.unpack(">I", ak_public[4:8])[0]
            info = _certify_info(attest)
            ek_name = name_of(ek_public)
        except (ValueError, IndexError, struct.error) as e:
            raise CertifyError("ak_certify_format", f"the AK or its certification is "
                                                    f"malformed: {e}") from None
        if attributes & AK_REQUIRED != AK_REQUIRED or attributes & DECRYPT:
            raise CertifyError("ak_attributes", f"the AK's attributes {attributes:#010x} are "
                                                "not those of a TPM-made restricted signing key "
                                                "(fixedTPM, fixedParent, sensitiveDataOrigin, "
                                                "restricted, sign)")
        if info["magic"] != TPM_GENERATED_VALUE or info["type"] != TPM_ST_ATTEST_CERTIFY:
            raise CertifyError("ak_certify_type", "the certification is not a TPM-made "
                                                  "TPMS_ATTEST of type TPM_ST_ATTEST_CERTIFY")
        key = self.key(nonce, ek_name)
        public = key_public(key)
        try:
            verify_signature(key.public_key(), signature, attest, {(ALG_ECDSA, "sha256")})
        except (ValueError, InvalidSignature):
            raise CertifyError("ak_certify_signature", "the AK's certification is not signed "
                                                       "by the key this verifier wrapped to "
                                                       "the report's EK for this nonce") from None
        expected = _qualified_name(name_of(public), parent=_qualified_name(ek_name))
        if not hmac.compare_digest(info["signer"], expected):
            raise CertifyError("ak_certify_signer", "qualifiedSigner is not the wrapped key "
                                                    "as a child of the EK")
        if not hmac.compare_digest(info["extra"], hashlib.sha256(bytes(nonce)).digest()):
            raise CertifyError("ak_certify_nonce", "the certification's extraData is not "
                                                   "SHA-256(nonce)")
        if not hmac.compare_digest(info["name"], ak_name) or not hmac.compare_digest(
                info["qualified_name"], _qualified_name(ak_name)):
            raise CertifyError("ak_certify_name", "the certified object is not the AK given "
                                                  "(Name, or Qualified Name of a primary key "
                                                  "of the endorsement hierarchy)")
        return ak_name


def load_secret(path: str) -> Certifier:
    """A Certifier from a secret file (32+ bytes); ValueError with one line."""
    try:
        with open(path, "rb") as f:
            return Certifier(f.read())
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror}") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _qualified_name(name: bytes, parent: bytes = RH_ENDORSEMENT) -> bytes:
    """QN = nameAlg || H(QN(parent) || Name) (Part 1 §16.6); a hierarchy's QN is its handle.
    (The same rule as ctpm.attest.verify.qualified_name; kept here so that this module
    imports neither verify nor evidence, which import it.)"""
    from .tpm import HASHES
    return name[:2] + hashlib.new(HASHES[int.from_bytes(name[:2], "big")], parent + name).digest()


def _b64u(data: bytes) -> str:
    import base64
    return base64.urlsafe_b64encode(bytes(data)).rstrip(b"=").decode()


def _unb64u(text: str) -> bytes:
    import base64
    if not isinstance(text, str) or any(c in text for c in "=+/ \n"):
        raise ValueError("not base64url without padding")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _certify_info(data: bytes) -> dict:
    r = Reader(data)
    out = {"magic": r.u32(), "type": r.u16(), "signer": r.b2(), "extra": r.b2()}
    r.take(8 + 4 + 4 + 1 + 8)           # clockInfo, firmwareVersion
    if out["type"] == TPM_ST_ATTEST_CERTIFY:
        out["name"], out["qualified_name"] = r.b2(), r.b2()
        r.end()
    return out


def public_area(data: bytes) -> bytes:
    """A TPMT_PUBLIC given as TPMT_PUBLIC or TPM2B_PUBLIC (what `tpm2_readpublic -o` writes)."""
    data = bytes(data)
    if len(data) >= 2 and struct.unpack(">H", data[:2])[0] == len(data) - 2:
        return data[2:]
    return data


# --- the attester's side -----------------------------------------------------------------------

def certify_ak(esapi, wrapped: dict, nonce: bytes, *, ek_handle: int = 0x81010001,
               ak_handle: int = 0x81020000, ek=None, ak=None) -> tuple:
    """Import K under the EK (PolicySecret(TPM_RH_ENDORSEMENT) sessions), load it and have it
    certify the AK over SHA-256(nonce); (AK TPMT_PUBLIC, TPMS_ATTEST, TPMT_SIGNATURE).
    The EK and AK are the persistent handles, or `ek`/`ak` (ESYS_TR of loaded objects)."""
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_SE
    from tpm2_pytss.types import (TPM2B_DATA, TPM2B_ENCRYPTED_SECRET, TPM2B_PRIVATE,
                                  TPM2B_PUBLIC, TPMT_SIG_SCHEME, TPMT_SYM_DEF,
                                  TPMT_SYM_DEF_OBJECT)

    public = TPM2B_PUBLIC.unmarshal(_b2(_unb64u(wrapped["public"])))[0]
    duplicate = TPM2B_PRIVATE(_unb64u(wrapped["duplicate"]))
    seed = TPM2B_ENCRYPTED_SECRET(_unb64u(wrapped["in_sym_seed"]))
    ek = esapi.tr_from_tpmpublic(ek_handle) if ek is None else ek
    ak = esapi.tr_from_tpmpublic(ak_handle) if ak is None else ak
    session = esapi.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY,
                                       TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256)
    key = None
    try:
        esapi.policy_secret(ESYS_TR.ENDORSEMENT, session)
        private = esapi.import_(ek, TPM2B_DATA(), public, duplicate, seed,
                                TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL), session1=session)
        esapi.policy_restart(session)
        esapi.policy_secret(ESYS_TR.ENDORSEMENT, session)
        key = esapi.load(ek, private, public, session1=session)
        attest, signature = esapi.certify(ak, key, TPM2B_DATA(hashlib.sha256(nonce).digest()),
                                          TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))
        ak_public = bytes(esapi.read_public(ak)[0].publicArea.marshal())
    finally:
        if key is not None:
            esapi.flush_context(key)
        esapi.flush_context(session)
    return ak_public, bytes(attest.attestationData), signature.marshal()
