"""TPM 2.0 structures (Part 2), in construct, in Part 2 order.

Interfaces (TPMI_) carry the value checks Part 2 lists for them, so a bad value fails at
unmarshaling with the code the reference TPM returns; unions (TPMU_) fail with
TPM_RC_SELECTOR on an unknown selector. Parsed structures are construct Containers with the
Part 2 field names; lists (TPML_) are Python lists.
"""
from construct import Construct, Int32sb, Switch, this

from ..errors import TpmError
from .base import UINT8, UINT16, UINT32, UINT64, BYTE, BadSelector, Int, List, Record, Tpm2b, read_exact
from .constants import TPM_ALG, TPM_CAP, TPM_ECC_CURVE, TPM_HT, TPM_RC, TPM_RH, TPM_SE, TPM_ST, TPM_SU

# --- implementation limits the structures depend on (Part 2 Annex / TpmProfile) ---------

IMPLEMENTATION_PCR = 24
PCR_SELECT_MIN = (24 + 7) // 8       # PC Client: at least 24 PCRs are selectable
PCR_SELECT_MAX = (IMPLEMENTATION_PCR + 7) // 8
HASH_SIZES = {TPM_ALG.SHA1: 20, TPM_ALG.SHA256: 32, TPM_ALG.SHA384: 48, TPM_ALG.SHA512: 64,
              TPM_ALG.SM3_256: 32}
# The hashes that can be PCR banks (SM3_256 is a hash here but has no bank), and the bound of
# the lists indexed by bank (TPML_PCR_SELECTION, TPML_DIGEST_VALUES): 4, as libtpms.
PCR_HASHES = (TPM_ALG.SHA1, TPM_ALG.SHA256, TPM_ALG.SHA384, TPM_ALG.SHA512)
HASH_COUNT = len(PCR_HASHES)
MAX_DIGEST_SIZE = 64                 # sizeof(TPMU_HA)
MAX_DIGEST_BUFFER = 1024
MAX_NV_BUFFER_SIZE = 1024           # TPM_PT_NV_BUFFER_MAX by default (libtpms' value)
# ...at most (EngineConfig.nv_buffer_max): tpm2-tss's TPM2_MAX_NV_BUFFER_SIZE
MAX_NV_BUFFER_LIMIT = 2048
MAX_CAP_BUFFER = 1024
MAX_CAP_DATA = MAX_CAP_BUFFER - 4 - 4
MAX_CAP_ALGS = MAX_CAP_DATA // 8          # sizeof(TPMS_ALG_PROPERTY) is 8 in C
MAX_CAP_HANDLES = MAX_CAP_DATA // 4
MAX_CAP_CC = MAX_CAP_DATA // 4
MAX_TPM_PROPERTIES = MAX_CAP_DATA // 8
MAX_PCR_PROPERTIES = MAX_CAP_DATA // 8   # sizeof(TPMS_TAGGED_PCR_SELECT) with 3 select bytes
MAX_ECC_CURVES = MAX_CAP_DATA // 2
MAX_ALG_LIST_SIZE = 64
MAX_SYM_DATA = 128
MAX_RSA_KEY_BYTES = 512
MAX_ECC_KEY_BYTES = 66
MAX_CONTEXT_SIZE = 2048
MAX_COMMAND_SIZE = 4096
MAX_RESPONSE_SIZE = 4096
PCR_LAST = IMPLEMENTATION_PCR - 1

# --- Part 2 §5-§9: base types, constants, handles -----------------------------------------

TPM_ALG_ID = UINT16
TPM_KEY_BITS = UINT16
TPM_CC = UINT32
TPM_RC_ = UINT32
TPM_HANDLE = UINT32
TPM_ST_ = UINT16
TPM_PT = UINT32
TPM_GENERATED_VALUE = 0xFF544347
INT32 = Int32sb

TPM_SU_ = Int(2, frozenset(TPM_SU), TPM_RC.VALUE)
TPM_SE_ = Int(1, frozenset(TPM_SE), TPM_RC.VALUE)
TPM_EO_ = Int(2, frozenset(range(0xC)), TPM_RC.VALUE)   # TPM_EO_EQ .. TPM_EO_BITCLEAR
TPM_CAP_ = Int(4, frozenset(range(TPM_CAP.ALGS, TPM_CAP.ACT + 1)), TPM_RC.VALUE)

# --- Part 2 §9: interface types ------------------------------------------------------------

TPMI_YES_NO = Int(1, frozenset((0, 1)), TPM_RC.VALUE)
TPMI_ST_COMMAND_TAG = Int(2, frozenset((TPM_ST.NO_SESSIONS, TPM_ST.SESSIONS)), TPM_RC.BAD_TAG)
TPMI_DH_PCR = Int(4, lambda v: v <= PCR_LAST, TPM_RC.VALUE, null=TPM_RH.NULL)
_OBJECT_TYPES = (TPM_HT.TRANSIENT, TPM_HT.PERSISTENT)
TPMI_DH_OBJECT = Int(4, lambda v: v >> 24 in _OBJECT_TYPES, TPM_RC.VALUE, null=TPM_RH.NULL)
_ENTITY_PERMANENT = frozenset((TPM_RH.OWNER, TPM_RH.ENDORSEMENT, TPM_RH.PLATFORM, TPM_RH.LOCKOUT))
TPMI_DH_ENTITY = Int(4, lambda v: (v in _ENTITY_PERMANENT or v <= PCR_LAST
                                   or v >> 24 in _OBJECT_TYPES + (TPM_HT.NV_INDEX,)),
                     TPM_RC.VALUE, null=TPM_RH.NULL)
TPMI_DH_PARENT = Int(4, lambda v: v >> 24 in _OBJECT_TYPES or v in (TPM_RH.OWNER, TPM_RH.PLATFORM,
                                                                    TPM_RH.ENDORSEMENT),
                     TPM_RC.VALUE, null=TPM_RH.NULL)
TPMI_RH_HIERARCHY_AUTH = Int(4, frozenset((TPM_RH.OWNER, TPM_RH.ENDORSEMENT, TPM_RH.PLATFORM,
                                           TPM_RH.LOCKOUT)), TPM_RC.VALUE)
TPMI_RH_CLEAR = Int(4, frozenset((TPM_RH.LOCKOUT, TPM_RH.PLATFORM)), TPM_RC.VALUE)
TPMI_RH_PROVISION = Int(4, frozenset((TPM_RH.OWNER, TPM_RH.PLATFORM)), TPM_RC.VALUE)
# TPMI_RH_ACT and (since Library rev 1.59) the ACT handles among TPMI_RH_HIERARCHY_POLICY
ACT_HANDLES = frozenset(range(TPM_RH.ACT_0, TPM_RH.ACT_F + 1))
TPMI_RH_ACT = Int(4, ACT_HANDLES, TPM_RC.VALUE)
TPMI_RH_HIERARCHY_POLICY = Int(4, frozenset((TPM_RH.OWNER, TPM_RH.ENDORSEMENT, TPM_RH.PLATFORM,
                                             TPM_RH.LOCKOUT)) | ACT_HANDLES, TPM_RC.VALUE)
TPMI_RH_ENABLES = Int(4, frozenset((TPM_RH.OWNER, TPM_RH.ENDORSEMENT, TPM_RH.PLATFORM,
                                    TPM_RH.PLATFORM_NV)), TPM_RC.VALUE, null=TPM_RH.NULL)
TPMI_RH_PLATFORM = Int(4, frozenset((TPM_RH.PLATFORM,)), TPM_RC.VALUE)
TPMI_DH_PERSISTENT = Int(4, lambda v: 0x81000000 <= v <= 0x81FFFFFF, TPM_RC.VALUE)
TPMI_DH_CONTEXT = Int(4, lambda v: v >> 24 in (TPM_HT.HMAC_SESSION, TPM_HT.POLICY_SESSION,
                                               TPM_HT.TRANSIENT), TPM_RC.VALUE)
TPMI_SH_POLICY = Int(4, lambda v: v >> 24 == TPM_HT.POLICY_SESSION, TPM_RC.VALUE)
TPMI_RH_HIERARCHY = Int(4, frozenset((TPM_RH.OWNER, TPM_RH.ENDORSEMENT, TPM_RH.PLATFORM)),
                        TPM_RC.VALUE, null=TPM_RH.NULL)
TPMI_ALG_HASH = Int(2, frozenset(HASH_SIZES), TPM_RC.HASH, null=TPM_ALG.NULL)
SYM_OBJECT_ALGS = frozenset((TPM_ALG.AES, TPM_ALG.SM4))
TPMI_ALG_SYM = Int(2, SYM_OBJECT_ALGS | {TPM_ALG.XOR}, TPM_RC.SYMMETRIC, null=TPM_ALG.NULL)
TPMI_ALG_SYM_OBJECT = Int(2, SYM_OBJECT_ALGS, TPM_RC.SYMMETRIC, null=TPM_ALG.NULL)
SYM_MODES = frozenset((TPM_ALG.CTR, TPM_ALG.OFB, TPM_ALG.CBC, TPM_ALG.CFB, TPM_ALG.ECB))
TPMI_ALG_SYM_MODE = Int(2, SYM_MODES, TPM_RC.MODE, null=TPM_ALG.NULL)
KDF_ALGS = frozenset((TPM_ALG.MGF1, TPM_ALG.KDF1_SP800_56A, TPM_ALG.KDF1_SP800_108))
TPMI_ALG_KDF = Int(2, KDF_ALGS, TPM_RC.KDF, null=TPM_ALG.NULL)
TPMI_ALG_PUBLIC = Int(2, frozenset((TPM_ALG.RSA, TPM_ALG.KEYEDHASH, TPM_ALG.ECC,
                                    TPM_ALG.SYMCIPHER)), TPM_RC.TYPE)
TPMI_ALG_KEYEDHASH_SCHEME = Int(2, frozenset((TPM_ALG.HMAC, TPM_ALG.XOR)), TPM_RC.VALUE,
                                null=TPM_ALG.NULL)
RSA_SCHEMES = frozenset((TPM_ALG.RSASSA, TPM_ALG.RSAPSS, TPM_ALG.RSAES, TPM_ALG.OAEP))
TPMI_ALG_RSA_SCHEME = Int(2, RSA_SCHEMES, TPM_RC.VALUE, null=TPM_ALG.NULL)
RSA_KEY_BITS = frozenset((1024, 2048, 3072, 4096))
TPMI_RSA_KEY_BITS = Int(2, RSA_KEY_BITS, TPM_RC.VALUE)
ECC_SCHEMES = frozenset((TPM_ALG.ECDSA, TPM_ALG.ECDH, TPM_ALG.ECSCHNORR, TPM_ALG.ECDAA,
                         TPM_ALG.ECMQV, TPM_ALG.SM2))
TPMI_ALG_ECC_SCHEME = Int(2, ECC_SCHEMES, TPM_RC.SCHEME, null=TPM_ALG.NULL)
ECC_CURVES = frozenset((TPM_ECC_CURVE.NIST_P256, TPM_ECC_CURVE.NIST_P384,
                        TPM_ECC_CURVE.NIST_P521, TPM_ECC_CURVE.BN_P256,
                        TPM_ECC_CURVE.SM2_P256))
# TPMI_ECC_KEY_EXCHANGE (TPM2_ZGen_2Phase): ECDH and ECMQV (SM2 key exchange is not
# implemented, SM2 signing is); else TPM_RC_SCHEME
TPMI_ECC_KEY_EXCHANGE = Int(2, frozenset((TPM_ALG.ECDH, TPM_ALG.ECMQV)), TPM_RC.SCHEME,
                            null=TPM_ALG.NULL)
TPMI_ECC_CURVE = Int(2, ECC_CURVES, TPM_RC.CURVE)
AES_KEY_BITS = frozenset((128, 192, 256))
TPMI_AES_KEY_BITS = Int(2, AES_KEY_BITS, TPM_RC.VALUE)
TPMI_SM4_KEY_BITS = Int(2, frozenset((128,)), TPM_RC.VALUE)

# --- Part 2 §10: structures ------------------------------------------------------------------


class _Bytes(Construct):
    """A fixed-size byte array (BYTE[n])."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def _parse(self, stream, context, path):
        return read_exact(stream, self.n)

    def _build(self, obj, stream, context, path):
        obj = bytes(obj)
        if len(obj) != self.n:
            raise ValueError(f"expected {self.n} bytes, got {len(obj)}")
        stream.write(obj)
        return obj

    def _sizeof(self, context, path):
        return self.n


TPMU_HA = Switch(this.hashAlg, {**{alg: _Bytes(size) for alg, size in HASH_SIZES.items()},
                                 TPM_ALG.NULL: _Bytes(0)}, default=BadSelector())
TPMT_HA = Record("hashAlg" / TPMI_ALG_HASH.plus, "digest" / TPMU_HA)
TPMT_HA_NONULL = Record("hashAlg" / TPMI_ALG_HASH, "digest" / TPMU_HA)
TPM2B_DIGEST = Tpm2b(MAX_DIGEST_SIZE)
TPM2B_DATA = Tpm2b(MAX_DIGEST_SIZE + 2)     # sizeof(TPMT_HA)
TPM2B_NONCE = TPM2B_DIGEST
TPM2B_AUTH = TPM2B_DIGEST
TPM2B_OPERAND = TPM2B_DIGEST
TPM2B_EVENT = Tpm2b(1024)
TPM2B_MAX_BUFFER = Tpm2b(MAX_DIGEST_BUFFER)
TPM2B_MAX_NV_BUFFER = Tpm2b(MAX_NV_BUFFER_LIMIT, limit="nv_buffer_max")
TPM2B_TIMEOUT = Tpm2b(8)
TPM2B_IV = Tpm2b(16)
TPM2B_NAME = Tpm2b(MAX_DIGEST_SIZE + 4)     # sizeof(TPMU_NAME): 66, padded to 68
TPM2B_ENCRYPTED_SECRET = Tpm2b(MAX_RSA_KEY_BYTES)


class _PcrSelect(Construct):
    """TPMS_PCR_SELECT body: sizeofSelect (PCR_SELECT_MIN..MAX, else TPM_RC_VALUE), bitmap."""

    def _parse(self, stream, context, path):
        n = read_exact(stream, 1)[0]
        if n < PCR_SELECT_MIN or n > PCR_SELECT_MAX:
            raise TpmError(TPM_RC.VALUE)
        return read_exact(stream, n)

    def _build(self, obj, stream, context, path):
        obj = bytes(obj)
        stream.write(bytes((len(obj),)) + obj)
        return obj


TPMS_PCR_SELECT = Record("pcrSelect" / _PcrSelect())
TPMS_PCR_SELECTION = Record("hash" / TPMI_ALG_HASH, "pcrSelect" / _PcrSelect())
TPMT_TK_HASHCHECK = Record("tag" / Int(2, frozenset((TPM_ST.HASHCHECK,)), TPM_RC.TAG), "hierarchy" / TPMI_RH_HIERARCHY.plus,
                           "digest" / TPM2B_DIGEST)
TPMS_ALG_PROPERTY = Record("alg" / TPM_ALG_ID, "algProperties" / UINT32)
TPMS_TAGGED_PROPERTY = Record("property" / TPM_PT, "value" / UINT32)
TPMS_TAGGED_PCR_SELECT = Record("tag" / UINT32, "pcrSelect" / _PcrSelect())

# --- Part 2 §10.9: lists ---------------------------------------------------------------------

TPML_CC = List(TPM_CC, MAX_CAP_CC)
TPML_CCA = List(UINT32, MAX_CAP_CC)
TPML_ALG = List(TPM_ALG_ID, MAX_ALG_LIST_SIZE)
TPML_HANDLE = List(TPM_HANDLE, MAX_CAP_HANDLES)
TPML_DIGEST = List(TPM2B_DIGEST, 8, mincount=2)    # {2:8} when unmarshaled (PolicyOR)
TPML_DIGEST_VALUES = List(TPMT_HA_NONULL, HASH_COUNT)
TPML_PCR_SELECTION = List(TPMS_PCR_SELECTION, HASH_COUNT)
TPML_ALG_PROPERTY = List(TPMS_ALG_PROPERTY, MAX_CAP_ALGS)
TPML_TAGGED_TPM_PROPERTY = List(TPMS_TAGGED_PROPERTY, MAX_TPM_PROPERTIES)
TPML_TAGGED_PCR_PROPERTY = List(TPMS_TAGGED_PCR_SELECT, MAX_PCR_PROPERTIES)
TPML_ECC_CURVE = List(UINT16, MAX_ECC_CURVES)
TPMS_TAGGED_POLICY = Record("handle" / TPM_HANDLE, "policyHash" / TPMT_HA)
TPML_TAGGED_POLICY = List(TPMS_TAGGED_POLICY, MAX_CAP_DATA // 70)
TPMS_ACT_DATA = Record("handle" / TPM_HANDLE, "timeout" / UINT32, "attributes" / UINT32)
TPML_ACT_DATA = List(TPMS_ACT_DATA, MAX_CAP_DATA // 12)

TPMU_CAPABILITIES = Switch(this.capability, {
    TPM_CAP.ALGS: TPML_ALG_PROPERTY,
    TPM_CAP.HANDLES: TPML_HANDLE,
    TPM_CAP.COMMANDS: TPML_CCA,
    TPM_CAP.PP_COMMANDS: TPML_CC,
    TPM_CAP.AUDIT_COMMANDS: TPML_CC,
    TPM_CAP.PCRS: TPML_PCR_SELECTION,
    TPM_CAP.TPM_PROPERTIES: TPML_TAGGED_TPM_PROPERTY,
    TPM_CAP.PCR_PROPERTIES: TPML_TAGGED_PCR_PROPERTY,
    TPM_CAP.ECC_CURVES: TPML_ECC_CURVE,
    TPM_CAP.AUTH_POLICIES: TPML_TAGGED_POLICY,
    TPM_CAP.ACT: TPML_ACT_DATA,
}, default=BadSelector())
TPMS_CAPABILITY_DATA = Record("capability" / TPM_CAP_, "data" / TPMU_CAPABILITIES)

# --- Part 2 §10.11: clock and time -----------------------------------------------------------

TPMS_CLOCK_INFO = Record("clock" / UINT64, "resetCount" / UINT32, "restartCount" / UINT32,
                         "safe" / TPMI_YES_NO)
TPMS_TIME_INFO = Record("time" / UINT64, "clockInfo" / TPMS_CLOCK_INFO)

# --- Part 2 §11-§12: algorithm parameters (TPMT_PUBLIC_PARMS, for TPM2_TestParms) ------------

TPMU_SYM_KEY_BITS = Switch(this.algorithm, {
    TPM_ALG.AES: TPMI_AES_KEY_BITS,
    TPM_ALG.SM4: TPMI_SM4_KEY_BITS,
    TPM_ALG.XOR: TPMI_ALG_HASH,
    TPM_ALG.NULL: Record(),
}, default=BadSelector())
TPMU_SYM_MODE = Switch(this.algorithm, {
    TPM_ALG.AES: TPMI_ALG_SYM_MODE.plus,
    TPM_ALG.SM4: TPMI_ALG_SYM_MODE.plus,
    TPM_ALG.XOR: Record(),
    TPM_ALG.NULL: Record(),
}, default=BadSelector())
TPMT_SYM_DEF = Record("algorithm" / TPMI_ALG_SYM.plus, "keyBits" / TPMU_SYM_KEY_BITS,
                      "mode" / TPMU_SYM_MODE)
TPMT_SYM_DEF_OBJECT = Record("algorithm" / TPMI_ALG_SYM_OBJECT.plus,
                             "keyBits" / TPMU_SYM_KEY_BITS, "mode" / TPMU_SYM_MODE)
TPMS_SYMCIPHER_PARMS = Record("sym" / Record("algorithm" / TPMI_ALG_SYM_OBJECT,
                                             "keyBits" / TPMU_SYM_KEY_BITS,
                                             "mode" / TPMU_SYM_MODE))

TPMS_SCHEME_HASH = Record("hashAlg" / TPMI_ALG_HASH)
TPMS_SCHEME_ECDAA = Record("hashAlg" / TPMI_ALG_HASH, "count" / UINT16)
TPMS_SCHEME_XOR = Record("hashAlg" / TPMI_ALG_HASH, "kdf" / TPMI_ALG_KDF.plus)
_EMPTY = Record()

TPMU_SCHEME_KEYEDHASH = Switch(this.scheme, {
    TPM_ALG.HMAC: TPMS_SCHEME_HASH,
    TPM_ALG.XOR: TPMS_SCHEME_XOR,
    TPM_ALG.NULL: _EMPTY,
}, default=BadSelector())
TPMT_KEYEDHASH_SCHEME = Record("scheme" / TPMI_ALG_KEYEDHASH_SCHEME.plus,
                               "details" / TPMU_SCHEME_KEYEDHASH)
TPMS_KEYEDHASH_PARMS = Record("scheme" / TPMT_KEYEDHASH_SCHEME)

_ASYM_SCHEME_DETAILS = {
    TPM_ALG.RSASSA: TPMS_SCHEME_HASH,
    TPM_ALG.RSAPSS: TPMS_SCHEME_HASH,
    TPM_ALG.ECDSA: TPMS_SCHEME_HASH,
    TPM_ALG.ECSCHNORR: TPMS_SCHEME_HASH,
    TPM_ALG.ECDAA: TPMS_SCHEME_ECDAA,
    TPM_ALG.OAEP: TPMS_SCHEME_HASH,
    TPM_ALG.ECDH: TPMS_SCHEME_HASH,
    TPM_ALG.ECMQV: TPMS_SCHEME_HASH,
    TPM_ALG.SM2: TPMS_SCHEME_HASH,
    TPM_ALG.RSAES: _EMPTY,
    TPM_ALG.NULL: _EMPTY,
}
TPMU_ASYM_SCHEME = Switch(this.scheme, _ASYM_SCHEME_DETAILS, default=BadSelector())
TPMT_RSA_SCHEME = Record("scheme" / TPMI_ALG_RSA_SCHEME.plus, "details" / TPMU_ASYM_SCHEME)
TPMT_ECC_SCHEME = Record("scheme" / TPMI_ALG_ECC_SCHEME.plus, "details" / TPMU_ASYM_SCHEME)
TPMU_KDF_SCHEME = Switch(this.scheme, {
    TPM_ALG.MGF1: TPMS_SCHEME_HASH,
    TPM_ALG.KDF1_SP800_56A: TPMS_SCHEME_HASH,
    TPM_ALG.KDF1_SP800_108: TPMS_SCHEME_HASH,
    TPM_ALG.NULL: _EMPTY,
}, default=BadSelector())
TPMT_KDF_SCHEME = Record("scheme" / TPMI_ALG_KDF.plus, "details" / TPMU_KDF_SCHEME)
# KDF2 (IEEE 1363a / X9.63, Library rev 1.59) is ECC_Encrypt/ECC_Decrypt's only scheme; ctpm
# takes it there only (a key's kdf or an XOR scheme still answers TPM_RC_KDF, as libtpms 0.9).
TPMT_KDF_SCHEME_ECC_CRYPT = Record(
    "scheme" / Int(2, KDF_ALGS | {TPM_ALG.KDF2}, TPM_RC.KDF, null=TPM_ALG.NULL).plus,
    "details" / Switch(this.scheme, {alg: TPMS_SCHEME_HASH for alg in KDF_ALGS | {TPM_ALG.KDF2}}
                       | {TPM_ALG.NULL: _EMPTY}, default=BadSelector()))

TPMS_RSA_PARMS = Record("symmetric" / TPMT_SYM_DEF_OBJECT, "scheme" / TPMT_RSA_SCHEME,
                        "keyBits" / TPMI_RSA_KEY_BITS, "exponent" / UINT32)
TPMS_ECC_PARMS = Record("symmetric" / TPMT_SYM_DEF_OBJECT, "scheme" / TPMT_ECC_SCHEME,
                        "curveID" / TPMI_ECC_CURVE, "kdf" / TPMT_KDF_SCHEME)
TPMU_PUBLIC_PARMS = Switch(this.type, {
    TPM_ALG.KEYEDHASH: TPMS_KEYEDHASH_PARMS,
    TPM_ALG.SYMCIPHER: TPMS_SYMCIPHER_PARMS,
    TPM_ALG.RSA: TPMS_RSA_PARMS,
    TPM_ALG.ECC: TPMS_ECC_PARMS,
}, default=BadSelector())
TPMT_PUBLIC_PARMS = Record("type" / TPMI_ALG_PUBLIC, "parameters" / TPMU_PUBLIC_PARMS)

__all__ = [n for n in dir() if n.startswith(("TPM", "MAX_", "HASH_", "PCR_", "IMPLEMENTATION"))]
__all__ += ["UINT8", "UINT16", "UINT32", "UINT64", "BYTE", "INT32"]
