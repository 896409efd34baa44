"""TPM 2.0 structures for keys and objects (Part 2 §8-§15), in construct, in Part 2 order.

What TPM2_CreatePrimary, Create, Load, LoadExternal, ReadPublic, Sign, VerifySignature,
RSA_Encrypt/Decrypt, ECDH_KeyGen/ZGen, ECC_Parameters, ContextSave/Load, Duplicate/Import,
MakeCredential/ActivateCredential and Unseal carry. Built from the blocks of `base.py` and
the algorithm parameters of `structures.py`, with the same conventions: parsed values are
construct Containers with the Part 2 field names, TPM2B_ buffers are bytes, a TPM2B_ that
wraps a structure (`Sized`) is that structure's Container; every TPMI_ check fails with the
code the reference TPM's unmarshaling (Marshal.c) returns.

"+" types. Where the reference passes a per-command flag ("+" in Part 3) down to a nested
TPMI_, the bare name is the form the commands unmarshal and the other form has a suffix:
`TPM2B_PUBLIC` rejects nameAlg TPM_ALG_NULL (CreatePrimary, Create, Import...) and
`TPM2B_PUBLIC_PLUS` accepts it (LoadExternal; the ReadPublic answer for such a key);
`TPMT_SIGNATURE` rejects sigAlg TPM_ALG_NULL (VerifySignature, PolicySigned) and
`TPMT_SIGNATURE_PLUS` accepts it (the signature of Quote/Certify/GetTime without a key).
`TPMT_SIG_SCHEME` and `TPMT_RSA_DECRYPT` are unmarshaled with the flag by every command that
takes them, so only the "+" form exists; tickets and TPMS_CONTEXT take the hierarchy with
TPM_RH_NULL always (as the reference does).

Profile. The buffer maxima follow the C sizes the reference computes for this profile
(structures.py: SHA-1/256/384/512, RSA up to 4096, NIST P-256/384/521, AES-128/192/256,
MAX_SYM_DATA 128, MAX_CONTEXT_SIZE 2048); `sizeof()` of a structure is the C `sizeof` with
its padding, worked out below so that a change of profile moves every bound with it.
"""
from construct import Switch, this

from .base import UINT8, UINT16, UINT64, BadSelector, Int, Record, Sized, Tpm2b
from .constants import TPM_ALG, TPM_HT, TPM_RC, TPM_ST
from .structures import (
    MAX_CONTEXT_SIZE, MAX_DIGEST_SIZE, MAX_ECC_KEY_BYTES, MAX_RSA_KEY_BYTES, MAX_SYM_DATA,
    TPM2B_AUTH, TPM2B_DATA, TPM2B_DIGEST, TPM2B_ENCRYPTED_SECRET, TPM2B_NAME, TPM_ALG_ID,
    TPMI_ALG_HASH, TPMI_ALG_PUBLIC, TPMI_DH_OBJECT, TPMI_RH_HIERARCHY, TPML_DIGEST,
    TPML_PCR_SELECTION, TPMS_SCHEME_ECDAA, TPMS_SCHEME_HASH, TPMT_ECC_SCHEME, TPMT_HA_NONULL,
    TPMT_KDF_SCHEME,
    TPMT_PUBLIC_PARMS, TPMU_ASYM_SCHEME, TPMU_PUBLIC_PARMS,
)



def _align(n, a):
    return (n + a - 1) // a * a


# --- C sizes of this profile (the TPM2B_ maxima Part 2 defines as sizeof(...)) ------------

MAX_SYM_KEY_BYTES = 32                       # AES-256
LABEL_MAX_BUFFER = min(32, max(MAX_ECC_KEY_BYTES, MAX_DIGEST_SIZE))
RSA_PRIVATE_BYTES = MAX_RSA_KEY_BYTES // 2   # TPM2B_PRIVATE_KEY_RSA: one prime
# TPM2B_PRIVATE_VENDOR_SPECIFIC, the TPMU_SENSITIVE_COMPOSITE member a TPM may keep its own
# key form in (the reference: RSA_PRIVATE_SIZE, p q dP dQ qInv). It never appears on the wire
# but it is in the union, so it sets sizeof(TPMT_SENSITIVE) and with it TPM2B_PRIVATE's bound.
PRIVATE_VENDOR_SPECIFIC_BYTES = (MAX_RSA_KEY_BYTES // 2) * 5

SIZEOF_TPM2B_DIGEST = 2 + MAX_DIGEST_SIZE                           # 66
SIZEOF_TPMS_DERIVE = 2 * (2 + LABEL_MAX_BUFFER)                     # 68
SIZEOF_TPMU_SENSITIVE_CREATE = max(MAX_SYM_DATA, SIZEOF_TPMS_DERIVE)  # 128
# TPMS_RSA_PARMS is the largest TPMU_PUBLIC_PARMS member: symmetric (3 x UINT16), scheme
# (UINT16 + TPMS_SCHEME_ECDAA, 2 x UINT16), keyBits UINT16, then exponent UINT32 at offset 16.
SIZEOF_TPMU_PUBLIC_PARMS = _align(_align(6 + 6 + 2, 4) + 4, 4)      # 20, 4-aligned
SIZEOF_TPMU_PUBLIC_ID = max(SIZEOF_TPM2B_DIGEST, 2 + MAX_RSA_KEY_BYTES,
                            2 * (2 + MAX_ECC_KEY_BYTES), SIZEOF_TPMS_DERIVE)   # 514
# type, nameAlg, objectAttributes (UINT32), authPolicy, then the 4-aligned parameters union
SIZEOF_TPMT_PUBLIC = _align(_align(2 + 2 + 4 + SIZEOF_TPM2B_DIGEST, 4)
                            + SIZEOF_TPMU_PUBLIC_PARMS + SIZEOF_TPMU_PUBLIC_ID, 4)  # 612
SIZEOF_TPMU_SENSITIVE_COMPOSITE = 2 + max(RSA_PRIVATE_BYTES, MAX_ECC_KEY_BYTES,
                                          SIZEOF_TPMU_SENSITIVE_CREATE, MAX_SYM_KEY_BYTES,
                                          PRIVATE_VENDOR_SPECIFIC_BYTES)  # 1282
SIZEOF_TPMT_SENSITIVE = 2 + 2 * SIZEOF_TPM2B_DIGEST + SIZEOF_TPMU_SENSITIVE_COMPOSITE  # 1416
# _PRIVATE (Part 2 §12.3.4): integrityOuter, integrityInner, TPM2B_SENSITIVE
SIZEOF_PRIVATE = 2 * SIZEOF_TPM2B_DIGEST + 2 + SIZEOF_TPMT_SENSITIVE  # 1550
SIZEOF_TPMS_ID_OBJECT = 2 * SIZEOF_TPM2B_DIGEST                     # 132
SIZEOF_TPMS_CONTEXT_DATA = SIZEOF_TPM2B_DIGEST + 2 + MAX_CONTEXT_SIZE  # 2116

# --- Part 2 §8.3: TPMA_OBJECT --------------------------------------------------------------

# Reserved: bits 0, 3, 8, 9, 12-15, 20-31 (Part 2 rev 1.59, libtpms: 0xFFF0F309). The 1.83
# reference (Marshal.c) masks 0xFFF0F001 because it gives bits 3/8/9 meaning (fixedFirmware,
# firmwareLimited, svnLimited) - objects bound to firmware-limited hierarchies, which this
# TPM does not have (TPMI_RH_HIERARCHY takes no TPM_RH_FW_*), so they stay reserved here.
TPMA_OBJECT_RESERVED = 0xFFF0F309
TPMA_OBJECT = Int(4, lambda v: not v & TPMA_OBJECT_RESERVED, TPM_RC.RESERVED_BITS)
TPMA_LOCALITY = UINT8                        # every value is a locality (32-255 extended)

# --- Part 2 §9: interface types ------------------------------------------------------------

# TPMI_DH_SAVED: a session, or one of the three transient-object context handles
# (0x80000000 object, 0x80000001 sequence, 0x80000002 stClear object); else TPM_RC_VALUE.
# Like TPMI_DH_CONTEXT in structures.py, a session is recognised by its handle type; the
# reference also bounds the index by MAX_ACTIVE_SESSIONS (a configuration value here).
SAVED_TRANSIENT = frozenset((0x80000000, 0x80000001, 0x80000002))
TPMI_DH_SAVED = Int(4, lambda v: (v in SAVED_TRANSIENT
                                  or v >> 24 in (TPM_HT.HMAC_SESSION, TPM_HT.POLICY_SESSION)),
                    TPM_RC.VALUE)
# TPMI_ALG_SIG_SCHEME (no EdDSA here): else TPM_RC_SCHEME
SIG_SCHEMES = frozenset((TPM_ALG.HMAC, TPM_ALG.RSASSA, TPM_ALG.RSAPSS, TPM_ALG.ECDSA,
                         TPM_ALG.ECSCHNORR, TPM_ALG.ECDAA, TPM_ALG.SM2))
TPMI_ALG_SIG_SCHEME = Int(2, SIG_SCHEMES, TPM_RC.SCHEME, null=TPM_ALG.NULL)

# --- Part 2 §10.7: tickets -----------------------------------------------------------------


def _tag(*tags):
    """A ticket's TPM_ST tag: anything but the listed values is TPM_RC_TAG."""
    return Int(2, frozenset(tags), TPM_RC.TAG)


TPMT_TK_CREATION = Record("tag" / _tag(TPM_ST.CREATION),
                          "hierarchy" / TPMI_RH_HIERARCHY.plus, "digest" / TPM2B_DIGEST)
TPMT_TK_VERIFIED = Record("tag" / _tag(TPM_ST.VERIFIED),
                          "hierarchy" / TPMI_RH_HIERARCHY.plus, "digest" / TPM2B_DIGEST)
TPMT_TK_AUTH = Record("tag" / _tag(TPM_ST.AUTH_SIGNED, TPM_ST.AUTH_SECRET),
                      "hierarchy" / TPMI_RH_HIERARCHY.plus, "digest" / TPM2B_DIGEST)

# --- Part 2 §11.1: symmetric keys, sensitive creation data ---------------------------------

TPM2B_SYM_KEY = Tpm2b(MAX_SYM_KEY_BYTES)                       # §11.1.7
TPM2B_SENSITIVE_DATA = Tpm2b(SIZEOF_TPMU_SENSITIVE_CREATE)     # §11.1.13
TPMS_SENSITIVE_CREATE = Record("userAuth" / TPM2B_AUTH,        # §11.1.14
                               "data" / TPM2B_SENSITIVE_DATA)
TPM2B_SENSITIVE_CREATE = Sized(TPMS_SENSITIVE_CREATE)          # §11.1.15, size 0: TPM_RC_SIZE

# --- Part 2 §11.2.1: signing schemes -------------------------------------------------------

_EMPTY = Record()
TPMU_SIG_SCHEME = Switch(this.scheme, {                        # §11.2.1.4
    **{alg: TPMS_SCHEME_HASH for alg in SIG_SCHEMES},          # TPMS_SCHEME_HMAC / _SIG_SCHEME_
    TPM_ALG.ECDAA: TPMS_SCHEME_ECDAA,                          # hashAlg, count
    TPM_ALG.NULL: _EMPTY,
}, default=BadSelector())
TPMT_SIG_SCHEME = Record("scheme" / TPMI_ALG_SIG_SCHEME.plus,  # §11.2.1.5, "+" in every command
                         "details" / TPMU_SIG_SCHEME)

# --- Part 2 §11.2.4: RSA -------------------------------------------------------------------

# §11.2.4.3 TPMI_ALG_RSA_DECRYPT: else TPM_RC_VALUE
TPMI_ALG_RSA_DECRYPT = Int(2, frozenset((TPM_ALG.RSAES, TPM_ALG.OAEP)), TPM_RC.VALUE,
                           null=TPM_ALG.NULL)
TPMT_RSA_DECRYPT = Record("scheme" / TPMI_ALG_RSA_DECRYPT.plus,    # §11.2.4.4
                          "details" / TPMU_ASYM_SCHEME)
TPM2B_PUBLIC_KEY_RSA = Tpm2b(MAX_RSA_KEY_BYTES)                # §11.2.4.5
# §11.2.4.7: one prime, MAX_RSA_KEY_BYTES/2 (Part 2, libtpms; the 1.83 reference checks
# RSA_PRIVATE_SIZE = 5 primes' worth and refuses a longer prime later, when loading)
TPM2B_PRIVATE_KEY_RSA = Tpm2b(RSA_PRIVATE_BYTES)

# --- Part 2 §11.2.5: ECC -------------------------------------------------------------------

TPM2B_ECC_PARAMETER = Tpm2b(MAX_ECC_KEY_BYTES)                 # §11.2.5.1
TPMS_ECC_POINT = Record("x" / TPM2B_ECC_PARAMETER, "y" / TPM2B_ECC_PARAMETER)   # §11.2.5.2
TPM2B_ECC_POINT = Sized(TPMS_ECC_POINT)                        # §11.2.5.3, size 0: TPM_RC_SIZE
TPMS_ALGORITHM_DETAIL_ECC = Record(                            # §11.2.5.7 (response only)
    "curveID" / UINT16,                                        # TPM_ECC_CURVE
    "keySize" / UINT16,
    "kdf" / TPMT_KDF_SCHEME,                                   # +
    "sign" / TPMT_ECC_SCHEME,                                  # +
    "p" / TPM2B_ECC_PARAMETER, "a" / TPM2B_ECC_PARAMETER, "b" / TPM2B_ECC_PARAMETER,
    "gX" / TPM2B_ECC_PARAMETER, "gY" / TPM2B_ECC_PARAMETER, "n" / TPM2B_ECC_PARAMETER,
    "h" / TPM2B_ECC_PARAMETER)

# --- Part 2 §11.3: signatures --------------------------------------------------------------

TPMS_SIGNATURE_RSA = Record("hash" / TPMI_ALG_HASH,            # §11.3.1, NULL: TPM_RC_HASH
                            "sig" / TPM2B_PUBLIC_KEY_RSA)
TPMS_SIGNATURE_ECC = Record("hash" / TPMI_ALG_HASH,            # §11.3.2
                            "signatureR" / TPM2B_ECC_PARAMETER,
                            "signatureS" / TPM2B_ECC_PARAMETER)
TPMU_SIGNATURE = Switch(this.sigAlg, {                         # §11.3.3
    TPM_ALG.HMAC: TPMT_HA_NONULL,                              # TPMT_HA without "+"
    TPM_ALG.RSASSA: TPMS_SIGNATURE_RSA,
    TPM_ALG.RSAPSS: TPMS_SIGNATURE_RSA,
    TPM_ALG.ECDSA: TPMS_SIGNATURE_ECC,
    TPM_ALG.ECSCHNORR: TPMS_SIGNATURE_ECC,
    TPM_ALG.ECDAA: TPMS_SIGNATURE_ECC,                         # TPMS_SIGNATURE_ECDAA
    TPM_ALG.SM2: TPMS_SIGNATURE_ECC,                           # TPMS_SIGNATURE_SM2
    TPM_ALG.NULL: _EMPTY,
}, default=BadSelector())
TPMT_SIGNATURE = Record("sigAlg" / TPMI_ALG_SIG_SCHEME,        # §11.3.4, as command parameter
                        "signature" / TPMU_SIGNATURE)
TPMT_SIGNATURE_PLUS = Record("sigAlg" / TPMI_ALG_SIG_SCHEME.plus, "signature" / TPMU_SIGNATURE)

# --- Part 2 §12.2: public area -------------------------------------------------------------

TPMU_PUBLIC_ID = Switch(this.type, {                           # §12.2.3.2
    TPM_ALG.KEYEDHASH: TPM2B_DIGEST,
    TPM_ALG.SYMCIPHER: TPM2B_DIGEST,
    TPM_ALG.RSA: TPM2B_PUBLIC_KEY_RSA,
    TPM_ALG.ECC: TPMS_ECC_POINT,
}, default=BadSelector())


def _public(name_alg):
    return Record("type" / TPMI_ALG_PUBLIC,                    # TPM_RC_TYPE
                  "nameAlg" / name_alg,                        # TPM_RC_HASH
                  "objectAttributes" / TPMA_OBJECT,            # TPM_RC_RESERVED_BITS
                  "authPolicy" / TPM2B_DIGEST,
                  "parameters" / TPMU_PUBLIC_PARMS,
                  "unique" / TPMU_PUBLIC_ID)


TPMT_PUBLIC = _public(TPMI_ALG_HASH)                           # §12.2.4
TPMT_PUBLIC_PLUS = _public(TPMI_ALG_HASH.plus)                 # nameAlg may be TPM_ALG_NULL
TPM2B_PUBLIC = Sized(TPMT_PUBLIC)                              # §12.2.5, size 0: TPM_RC_SIZE
TPM2B_PUBLIC_PLUS = Sized(TPMT_PUBLIC_PLUS)
TPM2B_TEMPLATE = Tpm2b(SIZEOF_TPMT_PUBLIC)                     # §12.2.6, parsed by the command
TPM2B_LABEL = Tpm2b(LABEL_MAX_BUFFER)                          # §11.1.11
TPMS_DERIVE = Record("label" / TPM2B_LABEL, "context" / TPM2B_LABEL)   # §11.1.12
# The template of a derived object (TPM2_CreateLoaded under a derivation parent): its unique
# field is the TPMS_DERIVE the key is derived from (Part 3 §12.9).
TPMT_PUBLIC_DERIVE = Record("type" / TPMI_ALG_PUBLIC, "nameAlg" / TPMI_ALG_HASH,
                            "objectAttributes" / TPMA_OBJECT, "authPolicy" / TPM2B_DIGEST,
                            "parameters" / TPMU_PUBLIC_PARMS, "unique" / TPMS_DERIVE)

# --- Part 2 §12.3: private area ------------------------------------------------------------

TPMU_SENSITIVE_COMPOSITE = Switch(this.sensitiveType, {        # §12.3.2.2
    TPM_ALG.RSA: TPM2B_PRIVATE_KEY_RSA,
    TPM_ALG.ECC: TPM2B_ECC_PARAMETER,
    TPM_ALG.KEYEDHASH: TPM2B_SENSITIVE_DATA,
    TPM_ALG.SYMCIPHER: TPM2B_SYM_KEY,
}, default=BadSelector())
TPMT_SENSITIVE = Record("sensitiveType" / TPMI_ALG_PUBLIC,     # §12.3.2.3
                        "authValue" / TPM2B_AUTH,
                        "seedValue" / TPM2B_DIGEST,
                        "sensitive" / TPMU_SENSITIVE_COMPOSITE)
TPM2B_SENSITIVE = Sized(TPMT_SENSITIVE, allow_empty=True)      # §12.3.3, empty parses as None
# §12.3.5: sizeof(_PRIVATE), 1550 - the reference's bound for this profile (and libtss2's),
# although what this TPM writes is smaller (its TPMT_SENSITIVE has no vendor-specific form)
TPM2B_PRIVATE = Tpm2b(SIZEOF_PRIVATE)

# --- Part 2 §12.4: identity object ---------------------------------------------------------

TPM2B_ID_OBJECT = Tpm2b(SIZEOF_TPMS_ID_OBJECT)                 # §12.4.3: 132

# --- Part 2 §14: context data --------------------------------------------------------------

TPM2B_CONTEXT_SENSITIVE = Tpm2b(MAX_CONTEXT_SIZE)              # §14.2
# §14.4: sizeof(TPMS_CONTEXT_DATA) - integrity TPM2B_DIGEST + TPM2B_CONTEXT_SENSITIVE, 2116
TPM2B_CONTEXT_DATA = Tpm2b(SIZEOF_TPMS_CONTEXT_DATA)
TPMS_CONTEXT = Record("sequence" / UINT64,                     # §14.5
                      "savedHandle" / TPMI_DH_SAVED,
                      "hierarchy" / TPMI_RH_HIERARCHY.plus,
                      "contextBlob" / TPM2B_CONTEXT_DATA)

# --- Part 2 §15: creation data -------------------------------------------------------------

TPMS_CREATION_DATA = Record("pcrSelect" / TPML_PCR_SELECTION,  # §15.1 (response only)
                            "pcrDigest" / TPM2B_DIGEST,
                            "locality" / TPMA_LOCALITY,
                            "parentNameAlg" / TPM_ALG_ID,
                            "parentName" / TPM2B_NAME,
                            "parentQualifiedName" / TPM2B_NAME,
                            "outsideInfo" / TPM2B_DATA)
TPM2B_CREATION_DATA = Sized(TPMS_CREATION_DATA)                # §15.2

# TPM2B_DATA, TPM2B_ENCRYPTED_SECRET, TPM2B_NAME, TPMI_DH_OBJECT, TPMI_RH_HIERARCHY,
# TPML_DIGEST and TPMT_PUBLIC_PARMS come from structures.py and are re-exported with the rest
__all__ = [n for n in dir() if n.startswith(("TPM", "SIZEOF_", "MAX_", "RSA_", "PRIVATE_",
                                             "LABEL_", "SIG_", "SAVED_"))]
