"""The byte rules of the trusted channel, shared by the sealer, the TEE and the authority
(docs/channel.md has them in prose):

* the channel key K: an ECC P-256 **restricted decryption** key, fixedTPM, fixedParent,
  sensitiveDataOrigin, a primary of the owner hierarchy with a random `unique` (a fresh key
  per channel). Restricted, so nobody can ask the TPM for ECDH_ZGen(K, Q_T) and learn the
  salt: the TPM uses K only inside its own protocols (salts, credentials, imports), each with
  its own KDF label;
* the secret's policy: PolicyPCR(selection, digest) -> PolicySigned(authority, policyRef) ->
  PolicyAuthValue. PolicyAuthValue makes the TPM check the command HMAC, so the relay cannot
  clear the session's `encrypt` bit and read the secret in clear;
* the authorization the authority signs: aHash = SHA-256(nonceTPM || expiration (INT32) ||
  cpHashA || policyRef), cpHashA = SHA-256(TPM_CC_Unseal || Name(secret)) - or of an
  NV_Read of a secret index;
* the TEE's binding (Trustee's KBS shape): runtime data = the compact, key-sorted JSON of
  {"nonce": N (hex), "tee-pubkey": JWK of Q_T}; REPORT_DATA = SHA-384(runtime data) || 16
  zero bytes.
"""
import hashlib
import json
import os
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ..attest.evidence import b64u
from ..attest.tpm import name_of, pcr_selection
from .tpm import ALG_AES, ALG_CFB, ALG_ECC, ALG_NULL, CC, SHA256, b2, take_b2, u16, u32

ALG_KEYEDHASH, ALG_ECDSA = 0x0008, 0x0018
ECC_NIST_P256 = 0x0003
# TPMA_OBJECT bits
FIXED_TPM, FIXED_PARENT, SDO = 0x00000002, 0x00000010, 0x00000020
USER_WITH_AUTH, ADMIN_WITH_POLICY, NO_DA = 0x00000040, 0x00000080, 0x00000400
RESTRICTED, DECRYPT, SIGN = 0x00010000, 0x00020000, 0x00040000
K_ATTRIBUTES = FIXED_TPM | FIXED_PARENT | SDO | USER_WITH_AUTH | NO_DA | RESTRICTED | DECRYPT
SRK_ATTRIBUTES = K_ATTRIBUTES           # the TCG storage-key template's attributes
SEALED_ATTRIBUTES = FIXED_TPM | FIXED_PARENT | NO_DA      # policy only: no userWithAuth
MAX_SEALED = 128                        # MAX_SYM_DATA: what TPM2_Create seals
MAX_NV_SECRET = 1024                    # one NV_Read (MAX_NV_BUFFER_SIZE): one authorization
# TPMA_NV bits of a secret index: the owner writes it once (WRITEDEFINE + NV_WriteLock), only
# the policy reads it (no OWNERREAD/AUTHREAD), no dictionary-attack lockout
NV_OWNERWRITE, NV_WRITEDEFINE, NV_POLICYREAD = 0x00000002, 0x00002000, 0x00080000
NV_NO_DA, NV_WRITELOCKED, NV_WRITTEN = 0x02000000, 0x00000800, 0x20000000
NV_SECRET_ATTRIBUTES = NV_OWNERWRITE | NV_WRITEDEFINE | NV_POLICYREAD | NV_NO_DA
NV_FIRST, NV_LAST = 0x01000000, 0x01BFFFFF      # ordinary indices (not the EK-certificate range)
TEE_KEY_ALG = "ECDH-ES+A256KW"          # the "alg" of Trustee's EC tee-pubkey


def ecc_template(attributes: int, unique_x: bytes = b"", unique_y: bytes = b"") -> bytes:
    """A TPMT_PUBLIC of an ECC P-256 storage/decryption key (AES-128-CFB, no scheme)."""
    return (u16(ALG_ECC) + u16(SHA256) + u32(attributes) + b2(b"") + u16(ALG_AES) + u16(128)
            + u16(ALG_CFB) + u16(ALG_NULL) + u16(ECC_NIST_P256) + u16(ALG_NULL)
            + b2(unique_x) + b2(unique_y))


def channel_key_template() -> bytes:
    """K's template; the random unique.x makes each channel key new."""
    return ecc_template(K_ATTRIBUTES, os.urandom(32))


def srk_template() -> bytes:
    """The TCG EK/SRK-style ECC storage root (empty unique), recreated on demand."""
    return ecc_template(SRK_ATTRIBUTES, bytes(32), bytes(32))


def sealed_template(policy: bytes) -> bytes:
    return (u16(ALG_KEYEDHASH) + u16(SHA256) + u32(SEALED_ATTRIBUTES) + b2(policy)
            + u16(ALG_NULL) + b2(b""))


def parse_ecc_public(public: bytes) -> dict:
    """The facts of a marshalled TPMT_PUBLIC of an ECC key that the channel checks."""
    try:
        kind, name_alg, attrs = struct.unpack_from(">HHI", public, 0)
        policy, pos = take_b2(public, 8)
        sym = struct.unpack_from(">H", public, pos)[0]
        pos += 2
        sym_bits = sym_mode = None
        if sym != ALG_NULL:
            sym_bits, sym_mode = struct.unpack_from(">HH", public, pos)
            pos += 4
        scheme = struct.unpack_from(">H", public, pos)[0]
        pos += 2
        if scheme != ALG_NULL:
            pos += 2
        if kind != ALG_ECC:
            raise ValueError(f"type {kind:#x} is not ECC")
        curve, kdf = struct.unpack_from(">HH", public, pos)
        pos += 4
        if kdf != ALG_NULL:
            pos += 2
        x, pos = take_b2(public, pos)
        y, pos = take_b2(public, pos)
    except struct.error:
        raise ValueError("truncated TPMT_PUBLIC") from None
    if pos != len(public):
        raise ValueError("trailing bytes after the TPMT_PUBLIC")
    return {"name_alg": name_alg, "attributes": attrs, "auth_policy": policy, "symmetric": sym,
            "sym_bits": sym_bits, "sym_mode": sym_mode, "scheme": scheme, "curve": curve,
            "kdf": kdf, "x": x, "y": y}


def nv_public(index: int, attributes: int, policy: bytes, size: int) -> bytes:
    """TPMS_NV_PUBLIC (nameAlg SHA-256)."""
    return u32(index) + u16(SHA256) + u32(attributes) + b2(policy) + u16(size)


def nv_name(public: bytes) -> bytes:
    return u16(SHA256) + hashlib.sha256(public).digest()


# --- the authority's key -----------------------------------------------------------------------

def authority_public(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """The TPMT_PUBLIC the TEE loads with TPM2_LoadExternal and the sealer names in the policy:
    an ECC P-256 signing key, ECDSA with SHA-256, nameAlg SHA-256."""
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or \
            not isinstance(public_key.curve, ec.SECP256R1):
        raise ValueError("the authority key must be an ECC P-256 key")
    n = public_key.public_numbers()
    return (u16(ALG_ECC) + u16(SHA256) + u32(SIGN | USER_WITH_AUTH) + b2(b"") + u16(ALG_NULL)
            + u16(ALG_ECDSA) + u16(SHA256) + u16(ECC_NIST_P256) + u16(ALG_NULL)
            + b2(n.x.to_bytes(32, "big")) + b2(n.y.to_bytes(32, "big")))


def a_hash(nonce_tpm: bytes, expiration: int, cp_hash: bytes, policy_ref: bytes) -> bytes:
    return hashlib.sha256(bytes(nonce_tpm) + struct.pack(">i", expiration) + bytes(cp_hash)
                          + bytes(policy_ref)).digest()


def sign_authorization(private_key: ec.EllipticCurvePrivateKey, nonce_tpm: bytes,
                       expiration: int, cp_hash: bytes, policy_ref: bytes) -> bytes:
    """The marshalled TPMT_SIGNATURE (ECDSA, SHA-256) PolicySigned checks."""
    digest = a_hash(nonce_tpm, expiration, cp_hash, policy_ref)
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
    der = private_key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    r, s = decode_dss_signature(der)
    return u16(ALG_ECDSA) + u16(SHA256) + b2(r.to_bytes(32, "big")) + b2(s.to_bytes(32, "big"))


# --- policies ------------------------------------------------------------------------------------

def pcr_digest(selection, values: dict) -> bytes:
    """SHA-256 of the selected PCR values in selection order (what PolicyPCR compares)."""
    h = hashlib.sha256()
    for bank, pcrs in selection:
        for i in pcrs:
            h.update(values[bank][i])
    return h.digest()


def policy_digest(selection, digest: bytes, authority_name: bytes, policy_ref: bytes) -> bytes:
    """PolicyPCR -> PolicySigned -> PolicyAuthValue, as a trial session computes it."""
    d = bytes(32)
    d = hashlib.sha256(d + u32(CC["PolicyPCR"]) + pcr_selection(selection) + digest).digest()
    d = hashlib.sha256(d + u32(CC["PolicySigned"]) + authority_name).digest()
    d = hashlib.sha256(d + policy_ref).digest()
    d = hashlib.sha256(d + u32(CC["PolicyAuthValue"])).digest()
    return d


def unseal_cp_hash(object_name: bytes) -> bytes:
    return hashlib.sha256(u32(CC["Unseal"]) + bytes(object_name)).digest()


def nv_read_cp_hash(index_name: bytes, size: int, offset: int) -> bytes:
    """cpHash of NV_Read(authHandle = the index, nvIndex = the index, size, offset)."""
    return hashlib.sha256(u32(CC["NV_Read"]) + bytes(index_name) + bytes(index_name)
                          + u16(size) + u16(offset)).digest()


def policy_ref(name: str) -> bytes:
    """The policyRef a secret's authorization carries: its name, so that a signature for one
    secret is not one for another (together with the cpHash)."""
    return b"ctpm-secret:" + name.encode()


# --- the TEE's binding ---------------------------------------------------------------------------

def tee_jwk(public_key: ec.EllipticCurvePublicKey) -> dict:
    n = public_key.public_numbers()
    return {"alg": TEE_KEY_ALG, "crv": "P-256", "kty": "EC",
            "x": b64u(n.x.to_bytes(32, "big")), "y": b64u(n.y.to_bytes(32, "big"))}


def jwk_point(jwk: dict) -> tuple[bytes, bytes]:
    """(x, y) of a P-256 JWK; ValueError if it is not one."""
    import base64
    if not isinstance(jwk, dict) or jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise ValueError("not an EC P-256 JWK")
    try:
        x, y = (base64.urlsafe_b64decode(jwk[k] + "=" * (-len(jwk[k]) % 4)) for k in "xy")
    except (KeyError, TypeError, ValueError):
        raise ValueError("the JWK's x/y are not base64url") from None
    if len(x) != 32 or len(y) != 32:
        raise ValueError("the JWK's x/y are not 32 bytes")
    ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"),
                                  ec.SECP256R1()).public_key()      # on the curve, or raises
    return x, y


def jwk_public_key(jwk: dict) -> ec.EllipticCurvePublicKey:
    x, y = jwk_point(jwk)
    return ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"),
                                         ec.SECP256R1()).public_key()


def runtime_data(nonce_hex: str, jwk: dict) -> bytes:
    """Trustee's runtime data: compact JSON with sorted keys (serde_json's default map)."""
    return json.dumps({"nonce": nonce_hex, "tee-pubkey": jwk}, sort_keys=True,
                      separators=(",", ":")).encode()


def tee_report_data(nonce_hex: str, jwk: dict) -> bytes:
    return hashlib.sha384(runtime_data(nonce_hex, jwk)).digest() + bytes(16)


def same_point(jwk_a: dict, jwk_b: dict) -> bool:
    try:
        return jwk_point(jwk_a) == jwk_point(jwk_b)
    except ValueError:
        return False
