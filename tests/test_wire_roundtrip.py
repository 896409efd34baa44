"""ctpm's construct structures (ctpm/wire/structures.py) against libtss2's marshalling.

Each case is a tpm2-pytss object and the Python value ctpm uses for it (Containers with
the Part 2 field names, lists for TPML_, bytes for TPM2B_). Both directions must agree byte
for byte: TSS bytes -> ctpm parse -> the value -> ctpm build -> the same bytes; and ctpm
build -> libtss2 unmarshal -> the same C structure, field for field. Malformed input must
fail with the TPM_RC that Part 2 (and the reference TPM's unmarshalling code) gives.
"""
import struct

import pytest
from tpm2_pytss import types as T
from tpm2_pytss._libtpm2_pytss import ffi

from ctpm.errors import TpmError
from ctpm.wire import structures as S
from ctpm.wire.constants import TPM_ALG as A, TPM_CAP, TPM_ECC_CURVE as C, TPM_RC, TPM_RH, TPM_ST

SHA1, SHA256, SHA384, SHA512, NULL = A.SHA1, A.SHA256, A.SHA384, A.SHA512, A.NULL


def u8(v): return struct.pack(">B", v)
def u16(v): return struct.pack(">H", v)
def u32(v): return struct.pack(">I", v)
def u64(v): return struct.pack(">Q", v)


# --- builders: each returns (tpm2-pytss object, ctpm Python value) ---------------------------

HA_MEMBER = {SHA1: "sha1", SHA256: "sha256", SHA384: "sha384", SHA512: "sha512"}
SCHEME_MEMBER = {A.RSASSA: "rsassa", A.RSAPSS: "rsapss", A.OAEP: "oaep", A.ECDSA: "ecdsa",
                 A.ECDH: "ecdh", A.ECSCHNORR: "ecschnorr", A.ECMQV: "ecmqv", A.HMAC: "hmac",
                 A.MGF1: "mgf1", A.KDF1_SP800_56A: "kdf1_sp800_56a",
                 A.KDF1_SP800_108: "kdf1_sp800_108"}


def ha(alg, fill=b"\xa5"):
    digest = fill * S.HASH_SIZES.get(alg, 0)
    t = T.TPMT_HA(hashAlg=alg)
    if digest:
        setattr(t.digest, HA_MEMBER[alg], digest)
    return t, {"hashAlg": alg, "digest": digest}


def pcr_sel(alg, *pcrs, cls=T.TPMS_PCR_SELECTION):
    bitmap = bytearray(3)
    for p in pcrs:
        bitmap[p // 8] |= 1 << (p % 8)
    if pcrs and cls is T.TPMS_PCR_SELECTION:      # libtss2's own bitmap builder
        t = T.TPMS_PCR_SELECTION.parse(f"{HA_MEMBER[alg]}:{','.join(map(str, pcrs))}")
    elif cls is T.TPMS_PCR_SELECTION:
        t = cls(hash=alg, sizeofSelect=3, pcrSelect=b"\0\0\0")
    else:
        t = cls(tag=alg, sizeofSelect=3, pcrSelect=bytes(bitmap))
    return t, {("hash" if cls is T.TPMS_PCR_SELECTION else "tag"): alg,
               "pcrSelect": bytes(bitmap)}


def tpml(cls, pairs):
    return cls([p[0] for p in pairs]), [p[1] for p in pairs]


def scheme(cls, alg, hash_alg=None):
    t = cls(scheme=alg)
    if hash_alg is None:
        return t, {"scheme": alg, "details": {}}
    getattr(t.details, SCHEME_MEMBER[alg]).hashAlg = hash_alg
    return t, {"scheme": alg, "details": {"hashAlg": hash_alg}}


def xor_scheme(hash_alg, kdf):
    t = T.TPMT_KEYEDHASH_SCHEME(scheme=A.XOR)
    t.details.exclusiveOr.hashAlg, t.details.exclusiveOr.kdf = hash_alg, kdf
    return t, {"scheme": A.XOR, "details": {"hashAlg": hash_alg, "kdf": kdf}}


def sym(alg, bits=None, mode=None, cls=T.TPMT_SYM_DEF_OBJECT):
    t = cls(algorithm=alg)
    if alg == A.AES:
        t.keyBits.aes, t.mode.aes = bits, mode
        return t, {"algorithm": alg, "keyBits": bits, "mode": mode}
    if alg == A.XOR:
        t.keyBits.exclusiveOr = bits
        return t, {"algorithm": alg, "keyBits": bits, "mode": {}}
    return t, {"algorithm": alg, "keyBits": {}, "mode": {}}


def parms(kind, **fields):
    """TPMT_PUBLIC_PARMS; `fields` are (pytss, value) pairs or plain ints."""
    t = T.TPMT_PUBLIC_PARMS(type=kind)
    member = {A.RSA: "rsaDetail", A.ECC: "eccDetail", A.KEYEDHASH: "keyedHashDetail",
              A.SYMCIPHER: "symDetail"}[kind]
    detail, value = getattr(t.parameters, member), {}
    for name, f in fields.items():
        setattr(detail, name, f[0] if isinstance(f, tuple) else f)
        value[name] = f[1] if isinstance(f, tuple) else f
    return t, {"type": kind, "parameters": value}


def cap(kind, member, lst):
    t = T.TPMS_CAPABILITY_DATA(capability=kind)
    setattr(t.data, member, lst[0])
    return t, {"capability": kind, "data": lst[1]}


def rsa(symdef, sch, bits, exponent=0):
    return parms(A.RSA, symmetric=symdef, scheme=sch, keyBits=bits, exponent=exponent)


def ecc(symdef, sch, curve, kdf):
    return parms(A.ECC, symmetric=symdef, scheme=sch, curveID=curve, kdf=kdf)


RSA_S, ECC_S, KDF_S, KH_S = (T.TPMT_RSA_SCHEME, T.TPMT_ECC_SCHEME, T.TPMT_KDF_SCHEME,
                             T.TPMT_KEYEDHASH_SCHEME)
SYM_NULL = sym(NULL)
AES128CFB = sym(A.AES, 128, A.CFB)

CASES = {
    "TPM2B_DIGEST-empty": (T.TPM2B_DIGEST(b""), b""),
    "TPM2B_DIGEST-3": (T.TPM2B_DIGEST(b"abc"), b"abc"),
    "TPM2B_DIGEST-max64": (T.TPM2B_DIGEST(bytes(range(64))), bytes(range(64))),
    **{f"TPMT_HA-{HA_MEMBER.get(a, 'null')}": ha(a) for a in (SHA1, SHA256, SHA384, SHA512, NULL)},
    "TPML_DIGEST-2": tpml(T.TPML_DIGEST, [(T.TPM2B_DIGEST(d), d) for d in (b"", b"\1" * 32)]),
    "TPML_DIGEST-8": tpml(T.TPML_DIGEST, [(T.TPM2B_DIGEST(bytes([i]) * i), bytes([i]) * i)
                                          for i in range(8)]),
    "TPML_DIGEST_VALUES-empty": tpml(T.TPML_DIGEST_VALUES, []),
    "TPML_DIGEST_VALUES-sha256": tpml(T.TPML_DIGEST_VALUES, [ha(SHA256)]),
    "TPML_DIGEST_VALUES-4banks": tpml(T.TPML_DIGEST_VALUES,
                                      [ha(a, bytes([a])) for a in (SHA1, SHA256, SHA384, SHA512)]),
    "TPMS_PCR_SELECTION-none": pcr_sel(SHA1),
    "TPMS_PCR_SELECTION-0,7,16,23": pcr_sel(SHA256, 0, 7, 16, 23),
    "TPML_PCR_SELECTION-empty": tpml(T.TPML_PCR_SELECTION, []),
    "TPML_PCR_SELECTION-4banks": tpml(T.TPML_PCR_SELECTION, [
        pcr_sel(SHA1, 0), pcr_sel(SHA256, *range(24)), pcr_sel(SHA384), pcr_sel(SHA512, 10, 17)]),
    "TPMT_TK_HASHCHECK-null": (T.TPMT_TK_HASHCHECK(tag=TPM_ST.HASHCHECK, hierarchy=TPM_RH.NULL),
                               {"tag": TPM_ST.HASHCHECK, "hierarchy": TPM_RH.NULL, "digest": b""}),
    "TPMT_TK_HASHCHECK-owner": (
        T.TPMT_TK_HASHCHECK(tag=TPM_ST.HASHCHECK, hierarchy=TPM_RH.OWNER, digest=b"\x5a" * 32),
        {"tag": TPM_ST.HASHCHECK, "hierarchy": TPM_RH.OWNER, "digest": b"\x5a" * 32}),
    "TPMS_CLOCK_INFO": (T.TPMS_CLOCK_INFO(clock=2**64 - 1, resetCount=7, restartCount=2**32 - 1,
                                          safe=1),
                        {"clock": 2**64 - 1, "resetCount": 7, "restartCount": 2**32 - 1,
                         "safe": 1}),
    "TPMS_TIME_INFO": (T.TPMS_TIME_INFO(time=0x0102030405060708, clockInfo=T.TPMS_CLOCK_INFO(
        clock=123456789, resetCount=1, restartCount=0, safe=0)),
        {"time": 0x0102030405060708, "clockInfo": {"clock": 123456789, "resetCount": 1,
                                                    "restartCount": 0, "safe": 0}}),
    "CAP-algorithms": cap(TPM_CAP.ALGS, "algorithms", tpml(T.TPML_ALG_PROPERTY, [
        (T.TPMS_ALG_PROPERTY(alg=a, algProperties=p), {"alg": a, "algProperties": p})
        for a, p in ((A.RSA, 0x9), (A.SHA256, 0x4), (A.AES, 0x2), (A.CFB, 0x202))])),
    "CAP-algorithms-empty": cap(TPM_CAP.ALGS, "algorithms", tpml(T.TPML_ALG_PROPERTY, [])),
    "CAP-handles": cap(TPM_CAP.HANDLES, "handles", tpml(T.TPML_HANDLE, [
        (h, h) for h in (0, 23, 0x01C00002, 0x40000001, 0x80000000, 0x81010001)])),
    "CAP-command": cap(TPM_CAP.COMMANDS, "command", tpml(T.TPML_CCA, [
        (a, a) for a in (0x0000017E, 0x0402017F, 0x20000182, 0xC0000001)])),
    "CAP-ppCommands": cap(TPM_CAP.PP_COMMANDS, "ppCommands", tpml(T.TPML_CC, [
        (c, c) for c in (0x11F, 0x127, 0x12E)])),
    "CAP-auditCommands": cap(TPM_CAP.AUDIT_COMMANDS, "auditCommands",
                             tpml(T.TPML_CC, [(0x182, 0x182)])),
    "CAP-assignedPCR": cap(TPM_CAP.PCRS, "assignedPCR", tpml(T.TPML_PCR_SELECTION, [
        pcr_sel(SHA1, *range(24)), pcr_sel(SHA256, *range(24))])),
    "CAP-tpmProperties": cap(TPM_CAP.TPM_PROPERTIES, "tpmProperties", tpml(
        T.TPML_TAGGED_TPM_PROPERTY, [(T.TPMS_TAGGED_PROPERTY(property=p, value=v),
                                      {"property": p, "value": v})
                                     for p, v in ((0x100, 0x322E3000), (0x112, 24), (0x20E, 0))])),
    "CAP-pcrProperties": cap(TPM_CAP.PCR_PROPERTIES, "pcrProperties", tpml(
        T.TPML_TAGGED_PCR_PROPERTY, [pcr_sel(0, *range(24), cls=T.TPMS_TAGGED_PCR_SELECT),
                                     pcr_sel(0x12, 16, 17, 18, 19, 20, 23,
                                             cls=T.TPMS_TAGGED_PCR_SELECT)])),
    "CAP-eccCurves": cap(TPM_CAP.ECC_CURVES, "eccCurves", tpml(
        T.TPML_ECC_CURVE, [(c, c) for c in (C.NIST_P256, C.NIST_P384, 0x0010)])),
    "TPMT_SYM_DEF-aes128cfb": sym(A.AES, 128, A.CFB, cls=T.TPMT_SYM_DEF),
    "TPMT_SYM_DEF-aes256ctr": sym(A.AES, 256, A.CTR, cls=T.TPMT_SYM_DEF),
    "TPMT_SYM_DEF-aes192-modenull": sym(A.AES, 192, NULL, cls=T.TPMT_SYM_DEF),
    "TPMT_SYM_DEF-xor-sha256": sym(A.XOR, SHA256, cls=T.TPMT_SYM_DEF),
    "TPMT_SYM_DEF-null": sym(NULL, cls=T.TPMT_SYM_DEF),
    "TPMT_SYM_DEF_OBJECT-aes128cfb": AES128CFB,
    "TPMT_SYM_DEF_OBJECT-aes256ecb": sym(A.AES, 256, A.ECB),
    "TPMT_SYM_DEF_OBJECT-null": SYM_NULL,
    "TPMT_RSA_SCHEME-null": scheme(RSA_S, NULL),
    "TPMT_RSA_SCHEME-rsassa-sha256": scheme(RSA_S, A.RSASSA, SHA256),
    "TPMT_RSA_SCHEME-rsapss-sha384": scheme(RSA_S, A.RSAPSS, SHA384),
    "TPMT_RSA_SCHEME-rsaes": scheme(RSA_S, A.RSAES),
    "TPMT_RSA_SCHEME-oaep-sha1": scheme(RSA_S, A.OAEP, SHA1),
    "TPMT_ECC_SCHEME-null": scheme(ECC_S, NULL),
    "TPMT_ECC_SCHEME-ecdsa-sha256": scheme(ECC_S, A.ECDSA, SHA256),
    "TPMT_ECC_SCHEME-ecdh-sha384": scheme(ECC_S, A.ECDH, SHA384),
    "TPMT_ECC_SCHEME-ecschnorr-sha512": scheme(ECC_S, A.ECSCHNORR, SHA512),
    "TPMT_KDF_SCHEME-null": scheme(KDF_S, NULL),
    "TPMT_KDF_SCHEME-mgf1-sha256": scheme(KDF_S, A.MGF1, SHA256),
    "TPMT_KDF_SCHEME-sp800_56a-sha384": scheme(KDF_S, A.KDF1_SP800_56A, SHA384),
    "TPMT_KDF_SCHEME-sp800_108-sha512": scheme(KDF_S, A.KDF1_SP800_108, SHA512),
    "TPMT_KEYEDHASH_SCHEME-null": scheme(KH_S, NULL),
    "TPMT_KEYEDHASH_SCHEME-hmac-sha256": scheme(KH_S, A.HMAC, SHA256),
    "TPMT_KEYEDHASH_SCHEME-xor-sha256-sp800_108": xor_scheme(SHA256, A.KDF1_SP800_108),
    "TPMT_KEYEDHASH_SCHEME-xor-sha1-kdfnull": xor_scheme(SHA1, NULL),
    "PARMS-rsa2048-storage": rsa(AES128CFB, scheme(RSA_S, NULL), 2048),
    "PARMS-rsa1024-rsaes": rsa(SYM_NULL, scheme(RSA_S, A.RSAES), 1024, 3),
    "PARMS-rsa3072-rsassa": rsa(SYM_NULL, scheme(RSA_S, A.RSASSA, SHA256), 3072, 65537),
    "PARMS-rsa4096-oaep": rsa(SYM_NULL, scheme(RSA_S, A.OAEP, SHA512), 4096, 0xFFFFFFFF),
    "PARMS-eccP256-storage": ecc(AES128CFB, scheme(ECC_S, NULL), C.NIST_P256,
                                 scheme(KDF_S, NULL)),
    "PARMS-eccP256-ecdsa": ecc(SYM_NULL, scheme(ECC_S, A.ECDSA, SHA256), C.NIST_P256,
                               scheme(KDF_S, NULL)),
    "PARMS-eccP384-ecdh-kdf": ecc(SYM_NULL, scheme(ECC_S, A.ECDH, SHA384), C.NIST_P384,
                                  scheme(KDF_S, A.KDF1_SP800_56A, SHA384)),
    "PARMS-eccP521-ecschnorr": ecc(sym(A.AES, 256, A.CFB), scheme(ECC_S, A.ECSCHNORR, SHA512),
                                   C.NIST_P521, scheme(KDF_S, A.MGF1, SHA1)),
    "PARMS-keyedhash-null": parms(A.KEYEDHASH, scheme=scheme(KH_S, NULL)),
    "PARMS-keyedhash-hmac": parms(A.KEYEDHASH, scheme=scheme(KH_S, A.HMAC, SHA384)),
    "PARMS-keyedhash-xor": parms(A.KEYEDHASH, scheme=xor_scheme(SHA256, A.MGF1)),
    "PARMS-symcipher-aes128cfb": parms(A.SYMCIPHER, sym=AES128CFB),
    "PARMS-symcipher-aes256-modenull": parms(A.SYMCIPHER, sym=sym(A.AES, 256, NULL)),
}
CASE_PARAMS = [pytest.param(t, v, id=k) for k, (t, v) in CASES.items()]


def plain(v):
    """A parsed construct value without construct's bookkeeping (`_io`)."""
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items() if not k.startswith("_")}
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v


def cmem(obj):
    """The C structure behind a tpm2-pytss object (zero-initialised, so comparable)."""
    return bytes(ffi.buffer(obj._cdata))


def ctpm(tss):
    return getattr(S, type(tss).__name__)


@pytest.mark.parametrize("tss, value", CASE_PARAMS)
def test_tss_to_ctpm(tss, value):
    data = tss.marshal()
    parsed = ctpm(tss).parse(data)
    assert plain(parsed) == value
    assert ctpm(tss).build(parsed) == data


@pytest.mark.parametrize("tss, value", CASE_PARAMS)
def test_ctpm_to_tss(tss, value):
    data = ctpm(tss).build(value)
    obj, used = type(tss).unmarshal(data)
    assert used == len(data)
    assert cmem(obj) == cmem(tss)           # every field, as libtss2 holds it
    assert obj.marshal() == data


@pytest.mark.parametrize("tss, value", CASE_PARAMS)
def test_truncated(tss, value):
    data = tss.marshal()
    for n in range(len(data)):
        with pytest.raises(TpmError) as e:
            ctpm(tss).parse(data[:n])
        assert e.value.rc == TPM_RC.INSUFFICIENT, f"cut at {n}"


# --- the list maxima ctpm builds must fit libtss2's arrays ------------------------------------

def limit(name, maxcount, item):
    return pytest.param(name, maxcount, item, id=name)


LIMITS = [
    limit("TPML_DIGEST", 8, b""),
    limit("TPML_DIGEST_VALUES", S.HASH_COUNT, {"hashAlg": SHA1, "digest": b"\1" * 20}),
    limit("TPML_PCR_SELECTION", S.HASH_COUNT, {"hash": SHA1, "pcrSelect": b"\1\2\3"}),
    limit("TPML_HANDLE", S.MAX_CAP_HANDLES, 0x81000000),
    limit("TPML_CCA", S.MAX_CAP_CC, 0x17E),
    limit("TPML_CC", S.MAX_CAP_CC, 0x17E),
    limit("TPML_TAGGED_TPM_PROPERTY", S.MAX_TPM_PROPERTIES, {"property": 0x100, "value": 1}),
    limit("TPML_ECC_CURVE", S.MAX_ECC_CURVES, C.NIST_P256),
    # Part 2 divides by sizeof(TPMS_ALG_PROPERTY), 8 in C (padding): 127, as libtss2
    limit("TPML_ALG_PROPERTY", S.MAX_CAP_ALGS, {"alg": A.RSA, "algProperties": 9}),
]


@pytest.mark.parametrize("name, maxcount, item", LIMITS)
def test_list_maximum(name, maxcount, item):
    st = getattr(S, name)
    data = st.build([item] * maxcount)
    obj, used = getattr(T, name).unmarshal(data)
    assert used == len(data) and obj.marshal() == data
    with pytest.raises(TpmError) as e:       # one more is TPM_RC_SIZE, before any element
        st.parse(u32(maxcount + 1) + data[4:])
    assert e.value.rc == TPM_RC.SIZE


# --- malformed input: TpmError with the Part 2 code ------------------------------------------

SYM0 = u16(NULL)                                     # TPMT_SYM_DEF(_OBJECT) NULL
RSA_HDR = u16(A.RSA) + SYM0 + u16(NULL)              # type, symmetric, scheme
ECC_HDR = u16(A.ECC) + SYM0 + u16(NULL)


def bad(id, st, data, rc, ctx=None):
    return pytest.param(st, data, ctx or {}, rc, id=id)


REJECTED = [
    # TPM2B larger than the type allows
    bad("TPM2B_DIGEST-65", S.TPM2B_DIGEST, u16(65) + bytes(65), TPM_RC.SIZE),
    bad("TPM2B_DIGEST-ffff", S.TPM2B_DIGEST, u16(0xFFFF), TPM_RC.SIZE),
    bad("TPML_DIGEST-entry65", S.TPML_DIGEST, u32(2) + u16(0) + u16(65) + bytes(65), TPM_RC.SIZE),
    bad("TK_HASHCHECK-digest65", S.TPMT_TK_HASHCHECK,
        u16(TPM_ST.HASHCHECK) + u32(TPM_RH.NULL) + u16(65) + bytes(65), TPM_RC.SIZE),
    # TPMI_ALG_HASH: unknown, and NULL without "+"
    bad("TPMT_HA-sha3", S.TPMT_HA, u16(0x27) + bytes(32), TPM_RC.HASH),
    bad("TPMT_HA-rsa", S.TPMT_HA, u16(A.RSA), TPM_RC.HASH),
    bad("DIGEST_VALUES-null", S.TPML_DIGEST_VALUES, u32(1) + u16(NULL), TPM_RC.HASH),
    bad("DIGEST_VALUES-2nd-unknown", S.TPML_DIGEST_VALUES,
        u32(2) + u16(SHA1) + bytes(20) + u16(0x99), TPM_RC.HASH),
    bad("PCR_SELECTION-null", S.TPMS_PCR_SELECTION, u16(NULL) + b"\3\0\0\0", TPM_RC.HASH),
    bad("PCR_SELECTION-unknown", S.TPMS_PCR_SELECTION, u16(0x99) + b"\3\0\0\0", TPM_RC.HASH),
    bad("RSA_SCHEME-rsassa-null", S.TPMT_RSA_SCHEME, u16(A.RSASSA) + u16(NULL), TPM_RC.HASH),
    bad("ECC_SCHEME-ecdsa-unknown", S.TPMT_ECC_SCHEME, u16(A.ECDSA) + u16(0x99), TPM_RC.HASH),
    bad("KDF_SCHEME-mgf1-null", S.TPMT_KDF_SCHEME, u16(A.MGF1) + u16(NULL), TPM_RC.HASH),
    bad("KEYEDHASH-hmac-null", S.TPMT_KEYEDHASH_SCHEME, u16(A.HMAC) + u16(NULL), TPM_RC.HASH),
    bad("KEYEDHASH-xor-null", S.TPMT_KEYEDHASH_SCHEME, u16(A.XOR) + u16(NULL) + u16(NULL),
        TPM_RC.HASH),
    bad("SYM_DEF-xor-null", S.TPMT_SYM_DEF, u16(A.XOR) + u16(NULL), TPM_RC.HASH),
    # sizeofSelect outside PCR_SELECT_MIN..PCR_SELECT_MAX (3..3)
    *[bad(f"PCR_SELECTION-sizeof{n}", S.TPMS_PCR_SELECTION, u16(SHA256) + u8(n) + bytes(n),
          TPM_RC.VALUE) for n in (0, 2, 4)],
    bad("PCR_SELECTION-2nd-sizeof4", S.TPML_PCR_SELECTION,
        u32(2) + u16(SHA1) + b"\3\0\0\0" + u16(SHA256) + b"\4" + bytes(4), TPM_RC.VALUE),
    bad("TAGGED_PCR_SELECT-sizeof1", S.TPMS_TAGGED_PCR_SELECT, u32(0) + b"\1\0", TPM_RC.VALUE),
    # list counts above the maximum
    bad("PCR_SELECTION-count5", S.TPML_PCR_SELECTION, u32(5), TPM_RC.SIZE),
    bad("DIGEST_VALUES-count5", S.TPML_DIGEST_VALUES, u32(5), TPM_RC.SIZE),
    bad("TPML_DIGEST-count9", S.TPML_DIGEST, u32(9), TPM_RC.SIZE),
    bad("TPML_ALG-count65", S.TPML_ALG, u32(65), TPM_RC.SIZE),
    bad("TPML_DIGEST-count-ffffffff", S.TPML_DIGEST, u32(0xFFFFFFFF), TPM_RC.SIZE),
    bad("CAP-handles-count255", S.TPMS_CAPABILITY_DATA, u32(TPM_CAP.HANDLES) + u32(255),
        TPM_RC.SIZE),
    bad("CAP-tpmProperties-count128", S.TPMS_CAPABILITY_DATA,
        u32(TPM_CAP.TPM_PROPERTIES) + u32(128), TPM_RC.SIZE),
    bad("CAP-eccCurves-count509", S.TPMS_CAPABILITY_DATA, u32(TPM_CAP.ECC_CURVES) + u32(509),
        TPM_RC.SIZE),
    # union selectors: rejected by their TPMI_ first, else TPM_RC_SELECTOR in the union
    bad("CAP-vendor", S.TPMS_CAPABILITY_DATA, u32(TPM_CAP.VENDOR_PROPERTY) + u32(0), TPM_RC.VALUE),
    bad("RSA_SCHEME-ecdsa", S.TPMT_RSA_SCHEME, u16(A.ECDSA) + u16(SHA256), TPM_RC.VALUE),
    bad("ECC_SCHEME-rsassa", S.TPMT_ECC_SCHEME, u16(A.RSASSA) + u16(SHA256), TPM_RC.SCHEME),
    bad("ECC_SCHEME-unknown", S.TPMT_ECC_SCHEME, u16(0x99), TPM_RC.SCHEME),
    bad("KDF_SCHEME-kdf2", S.TPMT_KDF_SCHEME, u16(0x21) + u16(SHA256), TPM_RC.KDF),
    bad("KEYEDHASH-xor-kdf-bad", S.TPMT_KEYEDHASH_SCHEME, u16(A.XOR) + u16(SHA256) + u16(A.SHA1),
        TPM_RC.KDF),
    bad("KEYEDHASH-rsassa", S.TPMT_KEYEDHASH_SCHEME, u16(A.RSASSA) + u16(SHA256), TPM_RC.VALUE),
    *[bad(f"{name}-selector", getattr(S, name), b"\0" * 8, TPM_RC.SELECTOR, {key: sel})
      for name, key, sel in (("TPMU_HA", "hashAlg", 0x27),
                             ("TPMU_CAPABILITIES", "capability", 0x100),
                             ("TPMU_SYM_KEY_BITS", "algorithm", 0x3),
                             ("TPMU_SYM_MODE", "algorithm", 0x26),
                             ("TPMU_ASYM_SCHEME", "scheme", 0x99),
                             ("TPMU_KDF_SCHEME", "scheme", 0x21),
                             ("TPMU_SCHEME_KEYEDHASH", "scheme", A.RSASSA),
                             ("TPMU_PUBLIC_PARMS", "type", A.SHA1))],
    # curves, symmetric algorithms, modes, key sizes, public types
    bad("ECC-curve-bnp638", S.TPMT_PUBLIC_PARMS, ECC_HDR + u16(0x11) + u16(NULL), TPM_RC.CURVE),
    bad("ECC-curve-none", S.TPMT_PUBLIC_PARMS, ECC_HDR + u16(C.NONE) + u16(NULL), TPM_RC.CURVE),
    bad("ECC-kdf-bad", S.TPMT_PUBLIC_PARMS, ECC_HDR + u16(C.NIST_P256) + u16(A.SHA256),
        TPM_RC.KDF),
    bad("SYM_DEF-tdes", S.TPMT_SYM_DEF, u16(A.TDES) + u16(128) + u16(A.CFB), TPM_RC.SYMMETRIC),
    bad("SYM_DEF_OBJECT-xor", S.TPMT_SYM_DEF_OBJECT, u16(A.XOR) + u16(SHA256), TPM_RC.SYMMETRIC),
    bad("SYM_DEF_OBJECT-camellia", S.TPMT_SYM_DEF_OBJECT, u16(A.CAMELLIA) + u16(128) + u16(A.CFB),
        TPM_RC.SYMMETRIC),
    bad("RSA-symmetric-sha256", S.TPMT_PUBLIC_PARMS, u16(A.RSA) + u16(SHA256), TPM_RC.SYMMETRIC),
    bad("SYMCIPHER-sym-null", S.TPMT_PUBLIC_PARMS, u16(A.SYMCIPHER) + u16(NULL), TPM_RC.SYMMETRIC),
    bad("SYM_DEF-aes-mode-cmac", S.TPMT_SYM_DEF, u16(A.AES) + u16(128) + u16(A.CMAC), TPM_RC.MODE),
    bad("SYM_DEF_OBJECT-aes-mode-sha1", S.TPMT_SYM_DEF_OBJECT, u16(A.AES) + u16(128) + u16(SHA1),
        TPM_RC.MODE),
    bad("SYMCIPHER-mode-bad", S.TPMT_PUBLIC_PARMS, u16(A.SYMCIPHER) + u16(A.AES) + u16(256)
        + u16(0x99), TPM_RC.MODE),
    bad("SYM_DEF-aes-64bits", S.TPMT_SYM_DEF, u16(A.AES) + u16(64) + u16(A.CFB), TPM_RC.VALUE),
    bad("RSA-keyBits768", S.TPMT_PUBLIC_PARMS, RSA_HDR + u16(768) + u32(0), TPM_RC.VALUE),
    bad("RSA-keyBits0", S.TPMT_PUBLIC_PARMS, RSA_HDR + u16(0) + u32(0), TPM_RC.VALUE),
    bad("RSA-scheme-ecdh", S.TPMT_PUBLIC_PARMS, u16(A.RSA) + SYM0 + u16(A.ECDH) + u16(SHA256),
        TPM_RC.VALUE),
    *[bad(f"PARMS-type-{n}", S.TPMT_PUBLIC_PARMS, u16(t) + bytes(8), TPM_RC.TYPE)
      for n, t in (("null", NULL), ("sha1", SHA1), ("aes", A.AES), ("0x99", 0x99))],
    # other TPMI_ checks
    bad("CLOCK_INFO-safe2", S.TPMS_CLOCK_INFO, u64(0) + u32(0) + u32(0) + u8(2), TPM_RC.VALUE),
    bad("TK_HASHCHECK-hierarchy-lockout", S.TPMT_TK_HASHCHECK,
        u16(TPM_ST.HASHCHECK) + u32(TPM_RH.LOCKOUT) + u16(0), TPM_RC.VALUE),
    # Part 2 TPMT_TK_HASHCHECK.tag is {TPM_ST_HASHCHECK} #TPM_RC_TAG
    bad("TK_HASHCHECK-tag-creation", S.TPMT_TK_HASHCHECK,
        u16(TPM_ST.CREATION) + u32(TPM_RH.NULL) + u16(0), TPM_RC.TAG),
    # Part 2 TPML_DIGEST.count is {2:8} (TPM2_PolicyOR) #TPM_RC_SIZE
    *[bad(f"TPML_DIGEST-count{n}", S.TPML_DIGEST, u32(n) + u16(0) * n, TPM_RC.SIZE)
      for n in (0, 1)],
]


@pytest.mark.parametrize("st, data, ctx, rc", REJECTED)
def test_rejected(st, data, ctx, rc):
    with pytest.raises(TpmError) as e:
        st.parse(data, **ctx)
    assert e.value.rc == rc, f"{TPM_RC(e.value.rc).name}, expected {rc.name}"


def test_tpm2b_data_holds_a_tpmt_ha():
    """Part 2 TPM2B_DATA holds sizeof(TPMT_HA) = 66 bytes."""
    assert S.TPM2B_DATA.parse(u16(66) + bytes(66)) == bytes(66)
