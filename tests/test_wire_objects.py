"""ctpm's key and object structures (ctpm/wire/objects.py) against libtss2's marshalling.

As tests/test_wire_roundtrip.py: each case is a tpm2-pytss object and the Python value ctpm
uses for it (Containers with the Part 2 field names, bytes for TPM2B_, None for an empty
TPM2B_SENSITIVE). TSS bytes -> ctpm parse -> the value -> ctpm build -> the same bytes; ctpm
build -> libtss2 unmarshal consumes everything -> the same C structure -> the same bytes; every
truncation is TPM_RC_INSUFFICIENT; malformed input fails with the TPM_RC the reference TPM's
Marshal.c returns.
"""
import struct

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tpm2_pytss import types as T
from tpm2_pytss._libtpm2_pytss import ffi

from ctpm.errors import TpmError
from ctpm.wire import objects as O
from ctpm.wire.constants import TPM_ALG as A, TPM_ECC_CURVE as C, TPM_RC, TPM_RH, TPM_ST
from ctpm.wire.constants import TPMA_OBJECT as OA

SHA1, SHA256, SHA384, SHA512, NULL = A.SHA1, A.SHA256, A.SHA384, A.SHA512, A.NULL
RESERVED_BITS = TPM_RC.RESERVED_BITS
HASH_SIZE = {SHA1: 20, SHA256: 32, SHA384: 48, SHA512: 64}
HA_MEMBER = {SHA1: "sha1", SHA256: "sha256", SHA384: "sha384", SHA512: "sha512"}


def u8(v): return struct.pack(">B", v)
def u16(v): return struct.pack(">H", v)
def u32(v): return struct.pack(">I", v)
def u64(v): return struct.pack(">Q", v)
def b2(data): return u16(len(data)) + data


def pattern(n, start=1):
    return bytes((start + i) & 0xFF for i in range(n))


# --- builders: each returns (tpm2-pytss object, ctpm Python value) ---------------------------

SIGN_ATTRS = (OA.FIXEDTPM | OA.FIXEDPARENT | OA.SENSITIVEDATAORIGIN | OA.USERWITHAUTH
              | OA.SIGN_ENCRYPT)
STORAGE_ATTRS = (OA.FIXEDTPM | OA.FIXEDPARENT | OA.SENSITIVEDATAORIGIN | OA.USERWITHAUTH
                 | OA.RESTRICTED | OA.DECRYPT | OA.NODA)
SEAL_ATTRS = OA.FIXEDTPM | OA.FIXEDPARENT | OA.USERWITHAUTH
ALL_ATTRS = int(OA.FIXEDTPM | OA.STCLEAR | OA.FIXEDPARENT | OA.SENSITIVEDATAORIGIN
                | OA.USERWITHAUTH | OA.ADMINWITHPOLICY | OA.NODA | OA.ENCRYPTEDDUPLICATION
                | OA.RESTRICTED | OA.DECRYPT | OA.SIGN_ENCRYPT | OA.X509SIGN)

SYM_NULL = {"algorithm": NULL, "keyBits": {}, "mode": {}}
AES128CFB = {"algorithm": A.AES, "keyBits": 128, "mode": A.CFB}
NO_SCHEME = {"scheme": NULL, "details": {}}


def hashed(alg, hash_alg):
    return {"scheme": alg, "details": {"hashAlg": hash_alg}}


def public(spec, attrs, parameters, unique, name_alg=SHA256, policy=b"", fill=None):
    """TPMT_PUBLIC from libtss2's own template parser (`spec`); `fill(t)` sets the unique."""
    t = T.TPMT_PUBLIC.parse(spec, objectAttributes=int(attrs), nameAlg=name_alg,
                            authPolicy=policy or None)
    if fill:
        fill(t)
    return t, {"type": int(t.type), "nameAlg": name_alg, "objectAttributes": int(attrs),
               "authPolicy": policy, "parameters": parameters, "unique": unique}


def rsa_parms(symmetric, scheme, bits, exponent=0):
    return {"symmetric": symmetric, "scheme": scheme, "keyBits": bits, "exponent": exponent}


def ecc_parms(symmetric, scheme, curve, kdf=NO_SCHEME):
    return {"symmetric": symmetric, "scheme": scheme, "curveID": curve, "kdf": kdf}


def set_rsa(n):
    def fill(t):
        t.unique.rsa = n
    return fill


def set_ecc(x, y):
    def fill(t):
        t.unique.ecc.x, t.unique.ecc.y = x, y
    return fill


def set_digest(member, d):
    def fill(t):
        setattr(t.unique, member, d)
    return fill


def sized(pair, cls, member):
    """Wrap a (TSS structure, value) in its TPM2B_ (size as libtss2's unmarshal sets it)."""
    t, v = pair
    w = cls(**{member: t})
    w.size = len(t.marshal())
    return w, v


def _probable_prime(n):
    """Miller-Rabin with fixed bases (enough for test keys; no randomness)."""
    if n % 2 == 0:
        return False
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime_from(start):
    n = start | 1
    while not _probable_prime(n) or n % 65537 == 1:
        n += 2
    return n


def _rsa1024():
    """An RSA-1024 key made from fixed numbers: the cases are the same on every run."""
    p = _prime_from(int.from_bytes(b"\xc5" + pattern(63, 0x11), "big"))
    q = _prime_from(int.from_bytes(b"\xd7" + pattern(63, 0x42), "big"))
    d = pow(65537, -1, (p - 1) * (q - 1))
    return rsa.RSAPrivateNumbers(p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q),
                                 rsa.rsa_crt_iqmp(p, q), rsa.RSAPublicNumbers(65537, p * q))


RSA_KEY = _rsa1024()
EC_KEY = ec.derive_private_key(0x1234567890ABCDEF, ec.SECP256R1())


def pem_private(numbers_or_key):
    key = numbers_or_key
    if isinstance(key, rsa.RSAPrivateNumbers):
        key = key.private_key()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def be(n, size=None):
    return n.to_bytes(size or (n.bit_length() + 7) // 8, "big")


def sensitive(t, kind, secret, seed=b"", auth=b""):
    return t, {"sensitiveType": kind, "authValue": auth, "seedValue": seed, "sensitive": secret}


def tss_sensitive(kind, member, secret, seed=b"", auth=b""):
    t = T.TPMT_SENSITIVE(sensitiveType=kind, authValue=auth, seedValue=seed)
    setattr(t.sensitive, member, secret)
    return sensitive(t, kind, secret, seed, auth)


def sig_scheme(alg, hash_alg=None):
    t = T.TPMT_SIG_SCHEME(scheme=alg)
    if hash_alg is None:
        return t, NO_SCHEME if alg == NULL else {"scheme": alg, "details": {}}
    getattr(t.details, {A.RSASSA: "rsassa", A.RSAPSS: "rsapss", A.ECDSA: "ecdsa",
                        A.ECSCHNORR: "ecschnorr", A.HMAC: "hmac"}[alg]).hashAlg = hash_alg
    return t, hashed(alg, hash_alg)


def rsa_decrypt(alg, hash_alg=None):
    t = T.TPMT_RSA_DECRYPT(scheme=alg)
    if hash_alg is None:
        return t, {"scheme": alg, "details": {}}
    t.details.oaep.hashAlg = hash_alg
    return t, hashed(alg, hash_alg)


def sig_rsa(alg, hash_alg, sig):
    t = T.TPMT_SIGNATURE(sigAlg=alg)
    member = getattr(t.signature, {A.RSASSA: "rsassa", A.RSAPSS: "rsapss"}[alg])
    member.hash, member.sig = hash_alg, sig
    return t, {"sigAlg": alg, "signature": {"hash": hash_alg, "sig": sig}}


def sig_ecc(alg, hash_alg, r, s):
    t = T.TPMT_SIGNATURE(sigAlg=alg)
    member = getattr(t.signature, {A.ECDSA: "ecdsa", A.ECSCHNORR: "ecschnorr"}[alg])
    member.hash, member.signatureR, member.signatureS = hash_alg, r, s
    return t, {"sigAlg": alg, "signature": {"hash": hash_alg, "signatureR": r, "signatureS": s}}


def sig_hmac(hash_alg, fill=0x5A):
    digest = bytes([fill]) * HASH_SIZE[hash_alg]
    t = T.TPMT_SIGNATURE(sigAlg=A.HMAC)
    t.signature.hmac.hashAlg = hash_alg
    setattr(t.signature.hmac.digest, HA_MEMBER[hash_alg], digest)
    return t, {"sigAlg": A.HMAC, "signature": {"hashAlg": hash_alg, "digest": digest}}


def ticket(cls, tag, hierarchy, digest=b""):
    return (cls(tag=tag, hierarchy=hierarchy, digest=digest),
            {"tag": tag, "hierarchy": hierarchy, "digest": digest})


def context(seq, handle, hierarchy, blob):
    return (T.TPMS_CONTEXT(sequence=seq, savedHandle=handle, hierarchy=hierarchy,
                           contextBlob=blob),
            {"sequence": seq, "savedHandle": handle, "hierarchy": hierarchy,
             "contextBlob": blob})


def creation_data(selection, pcr_digest, locality, parent_alg, parent_name, qualified, info):
    sel = T.TPML_PCR_SELECTION.parse(selection) if selection else T.TPML_PCR_SELECTION()
    bitmaps = {"sha1": SHA1, "sha256": SHA256, "sha384": SHA384, "sha512": SHA512}
    value_sel = []
    for bank in filter(None, selection.split("+")):
        alg, _, pcrs = bank.partition(":")
        bitmap = bytearray(3)
        for p in map(int, pcrs.split(",")):
            bitmap[p // 8] |= 1 << (p % 8)
        value_sel.append({"hash": bitmaps[alg], "pcrSelect": bytes(bitmap)})
    t = T.TPMS_CREATION_DATA(pcrSelect=sel, pcrDigest=pcr_digest, locality=locality,
                             parentNameAlg=parent_alg, parentName=parent_name,
                             parentQualifiedName=qualified, outsideInfo=info)
    return t, {"pcrSelect": value_sel, "pcrDigest": pcr_digest, "locality": locality,
               "parentNameAlg": parent_alg, "parentName": parent_name,
               "parentQualifiedName": qualified, "outsideInfo": info}


def point(x, y):
    return T.TPMS_ECC_POINT(x=x, y=y), {"x": x, "y": y}


P256 = {  # SEC 2 secp256r1, as TPM2_ECC_Parameters returns it
    "p": be(0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF),
    "a": be(0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFC),
    "b": be(0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B),
    "gX": be(0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296),
    "gY": be(0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5),
    "n": be(0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551),
    "h": b"\x01",
}


def ecc_detail(curve, size, kdf, sign, params):
    t = T.TPMS_ALGORITHM_DETAIL_ECC(curveID=curve, keySize=size, **params)
    t.kdf.scheme = kdf[0]
    if kdf[1]:
        t.kdf.details.kdf1_sp800_56a.hashAlg = kdf[1]
    t.sign.scheme = sign[0]
    if sign[1]:
        t.sign.details.ecdsa.hashAlg = sign[1]
    kdf_v = hashed(*kdf) if kdf[1] else NO_SCHEME
    sign_v = hashed(*sign) if sign[1] else NO_SCHEME
    return t, {"curveID": curve, "keySize": size, "kdf": kdf_v, "sign": sign_v, **params}


RSA_N = be(RSA_KEY.public_numbers.n)
EC_X = be(EC_KEY.public_key().public_numbers().x, 32)
EC_Y = be(EC_KEY.public_key().public_numbers().y, 32)

PUB_RSA_SIGN = public("rsa2048:rsassa-sha256", SIGN_ATTRS,
                      rsa_parms(SYM_NULL, hashed(A.RSASSA, SHA256), 2048), pattern(256),
                      fill=set_rsa(pattern(256)))
PUB_ECC_SIGN = public("ecc256:ecdsa", SIGN_ATTRS,
                      ecc_parms(SYM_NULL, hashed(A.ECDSA, SHA256), C.NIST_P256),
                      {"x": pattern(32), "y": pattern(32, 0x80)},
                      fill=set_ecc(pattern(32), pattern(32, 0x80)))
PUB_RSA_SRK = public("rsa2048:null:aes128cfb", STORAGE_ATTRS,
                     rsa_parms(AES128CFB, NO_SCHEME, 2048), b"")

CASES = {
    # Part 2 §8.3
    "TPMA_OBJECT-all-defined-bits": ((ALL_ATTRS, "TPMA_OBJECT"), ALL_ATTRS),
    # Part 2 §10.7 tickets
    "TPMT_TK_CREATION-owner": ticket(T.TPMT_TK_CREATION, TPM_ST.CREATION, TPM_RH.OWNER,
                                     pattern(32)),
    "TPMT_TK_CREATION-null": ticket(T.TPMT_TK_CREATION, TPM_ST.CREATION, TPM_RH.NULL),
    "TPMT_TK_VERIFIED-endorsement": ticket(T.TPMT_TK_VERIFIED, TPM_ST.VERIFIED,
                                           TPM_RH.ENDORSEMENT, pattern(48)),
    "TPMT_TK_VERIFIED-null": ticket(T.TPMT_TK_VERIFIED, TPM_ST.VERIFIED, TPM_RH.NULL),
    "TPMT_TK_AUTH-signed": ticket(T.TPMT_TK_AUTH, TPM_ST.AUTH_SIGNED, TPM_RH.PLATFORM,
                                  pattern(64)),
    "TPMT_TK_AUTH-secret": ticket(T.TPMT_TK_AUTH, TPM_ST.AUTH_SECRET, TPM_RH.NULL),
    # Part 2 §11.1
    "TPM2B_SYM_KEY-aes256": (T.TPM2B_SYM_KEY(pattern(32)), pattern(32)),
    "TPM2B_SENSITIVE_DATA-max128": (T.TPM2B_SENSITIVE_DATA(pattern(128)), pattern(128)),
    "TPMS_SENSITIVE_CREATE-empty": (T.TPMS_SENSITIVE_CREATE(),
                                    {"userAuth": b"", "data": b""}),
    "TPM2B_SENSITIVE_CREATE-auth": sized(
        (T.TPMS_SENSITIVE_CREATE(userAuth=b"password"), {"userAuth": b"password", "data": b""}),
        T.TPM2B_SENSITIVE_CREATE, "sensitive"),
    "TPM2B_SENSITIVE_CREATE-empty-fields": sized(
        (T.TPMS_SENSITIVE_CREATE(), {"userAuth": b"", "data": b""}),
        T.TPM2B_SENSITIVE_CREATE, "sensitive"),
    "TPM2B_SENSITIVE_CREATE-seal": sized(
        (T.TPMS_SENSITIVE_CREATE(userAuth=pattern(64), data=pattern(128)),
         {"userAuth": pattern(64), "data": pattern(128)}),
        T.TPM2B_SENSITIVE_CREATE, "sensitive"),
    # Part 2 §11.2.1
    **{f"TPMT_SIG_SCHEME-{n}": sig_scheme(*a) for n, a in (
        ("null", (NULL,)), ("rsassa-sha256", (A.RSASSA, SHA256)),
        ("rsapss-sha384", (A.RSAPSS, SHA384)), ("ecdsa-sha512", (A.ECDSA, SHA512)),
        ("ecschnorr-sha1", (A.ECSCHNORR, SHA1)), ("hmac-sha256", (A.HMAC, SHA256)))},
    # Part 2 §11.2.4
    "TPMT_RSA_DECRYPT-null": rsa_decrypt(NULL),
    "TPMT_RSA_DECRYPT-rsaes": rsa_decrypt(A.RSAES),
    "TPMT_RSA_DECRYPT-oaep-sha256": rsa_decrypt(A.OAEP, SHA256),
    "TPM2B_PUBLIC_KEY_RSA-empty": (T.TPM2B_PUBLIC_KEY_RSA(b""), b""),
    "TPM2B_PUBLIC_KEY_RSA-4096": (T.TPM2B_PUBLIC_KEY_RSA(pattern(512)), pattern(512)),
    "TPM2B_PRIVATE_KEY_RSA-2048": (T.TPM2B_PRIVATE_KEY_RSA(pattern(128)), pattern(128)),
    "TPM2B_PRIVATE_KEY_RSA-4096": (T.TPM2B_PRIVATE_KEY_RSA(pattern(256)), pattern(256)),
    # Part 2 §11.2.5
    "TPM2B_ECC_PARAMETER-p521": (T.TPM2B_ECC_PARAMETER(pattern(66)), pattern(66)),
    "TPMS_ECC_POINT-p256": point(EC_X, EC_Y),
    "TPMS_ECC_POINT-empty": point(b"", b""),
    "TPM2B_ECC_POINT-p384": sized(point(pattern(48), pattern(48, 7)), T.TPM2B_ECC_POINT,
                                  "point"),
    "TPM2B_ECC_POINT-p521": sized(point(pattern(66), pattern(66, 9)), T.TPM2B_ECC_POINT,
                                  "point"),
    "TPMS_ALGORITHM_DETAIL_ECC-p256": ecc_detail(C.NIST_P256, 256, (NULL, None), (NULL, None),
                                                 P256),
    "TPMS_ALGORITHM_DETAIL_ECC-schemes": ecc_detail(C.NIST_P256, 256,
                                                    (A.KDF1_SP800_56A, SHA256),
                                                    (A.ECDSA, SHA256), P256),
    # Part 2 §11.3
    "TPMT_SIGNATURE-rsassa-sha256": sig_rsa(A.RSASSA, SHA256, pattern(256)),
    "TPMT_SIGNATURE-rsassa-4096": sig_rsa(A.RSASSA, SHA512, pattern(512)),
    "TPMT_SIGNATURE-rsapss-sha384": sig_rsa(A.RSAPSS, SHA384, pattern(384)),
    "TPMT_SIGNATURE-ecdsa-sha256": sig_ecc(A.ECDSA, SHA256, pattern(32), pattern(32, 0x40)),
    "TPMT_SIGNATURE-ecdsa-p521": sig_ecc(A.ECDSA, SHA512, pattern(66), pattern(65)),
    "TPMT_SIGNATURE-ecschnorr-sha1": sig_ecc(A.ECSCHNORR, SHA1, pattern(48), pattern(48, 3)),
    "TPMT_SIGNATURE-hmac-sha256": sig_hmac(SHA256),
    "TPMT_SIGNATURE-hmac-sha1": sig_hmac(SHA1),
    "TPMT_SIGNATURE-hmac-sha512": sig_hmac(SHA512),
    "TPMT_SIGNATURE_PLUS-null": ((T.TPMT_SIGNATURE(sigAlg=NULL), "TPMT_SIGNATURE_PLUS"),
                                 {"sigAlg": NULL, "signature": {}}),
    "TPMT_SIGNATURE_PLUS-ecdsa": ((sig_ecc(A.ECDSA, SHA384, pattern(48), pattern(48))[0],
                                   "TPMT_SIGNATURE_PLUS"),
                                  sig_ecc(A.ECDSA, SHA384, pattern(48), pattern(48))[1]),
    # Part 2 §12.2
    "TPMT_PUBLIC-rsa2048:rsassa-sha256": PUB_RSA_SIGN,
    "TPMT_PUBLIC-ecc256:ecdsa": PUB_ECC_SIGN,
    "TPMT_PUBLIC-rsa2048-srk": PUB_RSA_SRK,
    "TPMT_PUBLIC-rsa3072-oaep-policy": public(
        "rsa3072:oaep-sha384", OA.FIXEDTPM | OA.FIXEDPARENT | OA.ADMINWITHPOLICY | OA.DECRYPT,
        rsa_parms(SYM_NULL, hashed(A.OAEP, SHA384), 3072), b"", name_alg=SHA384,
        policy=pattern(48)),
    "TPMT_PUBLIC-rsa4096-rsapss-unique": public(   # libtss2 parses "rsapss" with aes128cfb
        "rsa4096:rsassa-sha512", SIGN_ATTRS,
        rsa_parms(SYM_NULL, hashed(A.RSAPSS, SHA512), 4096), pattern(512), name_alg=SHA512,
        fill=lambda t: (setattr(t.parameters.rsaDetail.scheme, "scheme", A.RSAPSS),
                        set_rsa(pattern(512))(t))),
    "TPMT_PUBLIC-ecc384-ecdh": public(
        "ecc384:ecdh-sha384", OA.FIXEDTPM | OA.FIXEDPARENT | OA.USERWITHAUTH | OA.DECRYPT,
        ecc_parms(SYM_NULL, hashed(A.ECDH, SHA384), C.NIST_P384), {"x": b"", "y": b""}),
    "TPMT_PUBLIC-ecc521-ecschnorr": public(
        "ecc521:ecschnorr-sha512", SIGN_ATTRS,
        ecc_parms(SYM_NULL, hashed(A.ECSCHNORR, SHA512), C.NIST_P521),
        {"x": pattern(66), "y": pattern(66, 2)}, fill=set_ecc(pattern(66), pattern(66, 2))),
    "TPMT_PUBLIC-ecc256-srk": public(
        "ecc256:null:aes128cfb", STORAGE_ATTRS, ecc_parms(AES128CFB, NO_SCHEME, C.NIST_P256),
        {"x": b"", "y": b""}),
    "TPMT_PUBLIC-keyedhash-seal": public(
        "keyedhash", SEAL_ATTRS, {"scheme": NO_SCHEME}, pattern(32),
        fill=set_digest("keyedHash", pattern(32))),
    "TPMT_PUBLIC-hmac-sha384": public(
        "hmac:sha384", SIGN_ATTRS, {"scheme": hashed(A.HMAC, SHA384)}, b""),
    "TPMT_PUBLIC-xor-sha256": public(
        "xor:sha256", SEAL_ATTRS | OA.DECRYPT,
        {"scheme": {"scheme": A.XOR, "details": {"hashAlg": SHA256,
                                                 "kdf": A.KDF1_SP800_108}}}, b""),
    "TPMT_PUBLIC-aes128cfb": public(
        "aes128cfb", OA.FIXEDTPM | OA.FIXEDPARENT | OA.USERWITHAUTH | OA.DECRYPT
        | OA.SIGN_ENCRYPT, {"sym": AES128CFB}, pattern(32),
        fill=set_digest("sym", pattern(32))),
    "TPMT_PUBLIC-aes256cfb-sha1": public(
        "aes256cfb", OA.FIXEDTPM | OA.FIXEDPARENT | OA.USERWITHAUTH | OA.DECRYPT,
        {"sym": {"algorithm": A.AES, "keyBits": 256, "mode": A.CFB}}, b"", name_alg=SHA1),
    "TPMT_PUBLIC-from-pem-rsa": (
        T.TPMT_PUBLIC.from_pem(pem_private(RSA_KEY), objectAttributes=int(SIGN_ATTRS)),
        {"type": A.RSA, "nameAlg": SHA256, "objectAttributes": int(SIGN_ATTRS),
         "authPolicy": b"", "parameters": rsa_parms(SYM_NULL, NO_SCHEME, 1024, 0),
         "unique": RSA_N}),
    "TPMT_PUBLIC_PLUS-nameAlg-null": (
        (public("ecc256:ecdsa", SIGN_ATTRS, None, None, name_alg=NULL)[0], "TPMT_PUBLIC_PLUS"),
        public("ecc256:ecdsa", SIGN_ATTRS,
               ecc_parms(SYM_NULL, hashed(A.ECDSA, SHA256), C.NIST_P256),
               {"x": b"", "y": b""}, name_alg=NULL)[1]),
    "TPM2B_PUBLIC-rsa": sized(PUB_RSA_SIGN, T.TPM2B_PUBLIC, "publicArea"),
    "TPM2B_PUBLIC-ecc": sized(PUB_ECC_SIGN, T.TPM2B_PUBLIC, "publicArea"),
    "TPM2B_PUBLIC-srk": sized(PUB_RSA_SRK, T.TPM2B_PUBLIC, "publicArea"),
    "TPM2B_TEMPLATE-srk": (T.TPM2B_TEMPLATE(PUB_RSA_SRK[0].marshal()),
                           PUB_RSA_SRK[0].marshal()),
    "TPM2B_TEMPLATE-max": (T.TPM2B_TEMPLATE(pattern(O.SIZEOF_TPMT_PUBLIC)),
                           pattern(O.SIZEOF_TPMT_PUBLIC)),
    # Part 2 §12.3
    "TPMT_SENSITIVE-keyedhash": sensitive(
        T.TPMT_SENSITIVE.keyedhash_from_secret(b"sealed secret", seed=pattern(32))[0],
        A.KEYEDHASH, b"sealed secret", seed=pattern(32)),
    "TPMT_SENSITIVE-symcipher": sensitive(
        T.TPMT_SENSITIVE.symcipher_from_secret(pattern(16), seed=pattern(32, 9))[0],
        A.SYMCIPHER, pattern(16), seed=pattern(32, 9)),
    "TPMT_SENSITIVE-rsa-from-pem": sensitive(
        T.TPMT_SENSITIVE.from_pem(pem_private(RSA_KEY)), A.RSA,
        be(RSA_KEY.p)),
    "TPMT_SENSITIVE-ecc-from-pem": sensitive(
        T.TPMT_SENSITIVE.from_pem(pem_private(EC_KEY)), A.ECC,
        be(EC_KEY.private_numbers().private_value)),     # libtss2 drops leading zeros
    "TPMT_SENSITIVE-rsa4096-auth": tss_sensitive(A.RSA, "rsa", pattern(256), pattern(64),
                                                 b"auth"),
    "TPMT_SENSITIVE-ecc521": tss_sensitive(A.ECC, "ecc", pattern(66), pattern(32)),
    "TPMT_SENSITIVE-bits-max": tss_sensitive(A.KEYEDHASH, "bits", pattern(128), pattern(64)),
    "TPMT_SENSITIVE-sym-aes256": tss_sensitive(A.SYMCIPHER, "sym", pattern(32), pattern(32),
                                               pattern(64)),
    "TPM2B_SENSITIVE-ecc": sized(tss_sensitive(A.ECC, "ecc", pattern(32), pattern(32)),
                                 T.TPM2B_SENSITIVE, "sensitiveArea"),
    "TPM2B_SENSITIVE-keyedhash": sized(tss_sensitive(A.KEYEDHASH, "bits", b"x"),
                                       T.TPM2B_SENSITIVE, "sensitiveArea"),
    "TPM2B_PRIVATE-small": (T.TPM2B_PRIVATE(pattern(200)), pattern(200)),
    "TPM2B_PRIVATE-max": (T.TPM2B_PRIVATE(pattern(O.SIZEOF_PRIVATE)), pattern(O.SIZEOF_PRIVATE)),
    # Part 2 §12.4
    "TPM2B_ID_OBJECT-sha256": (T.TPM2B_ID_OBJECT(pattern(68)), pattern(68)),
    "TPM2B_ID_OBJECT-max": (T.TPM2B_ID_OBJECT(pattern(132)), pattern(132)),
    # Part 2 §14
    "TPMS_CONTEXT-object": context(1, 0x80000000, TPM_RH.OWNER, pattern(300)),
    "TPMS_CONTEXT-sequence": context(2**64 - 1, 0x80000001, TPM_RH.NULL, pattern(80)),
    "TPMS_CONTEXT-stclear": context(0x100, 0x80000002, TPM_RH.PLATFORM, b""),
    "TPMS_CONTEXT-hmac-session": context(7, 0x02000000, TPM_RH.NULL, pattern(120)),
    "TPMS_CONTEXT-policy-session": context(8, 0x03000003, TPM_RH.ENDORSEMENT, pattern(140)),
    "TPMS_CONTEXT-max-blob": context(9, 0x80000000, TPM_RH.OWNER,
                                     pattern(O.SIZEOF_TPMS_CONTEXT_DATA)),
    "TPM2B_CONTEXT_DATA": (T.TPM2B_CONTEXT_DATA(pattern(1000)), pattern(1000)),
    # Part 2 §15
    "TPMS_CREATION_DATA-empty": creation_data("", b"", 0, NULL, b"", b"", b""),
    "TPMS_CREATION_DATA-primary": creation_data(
        "sha256:0,1,2,3,7", pattern(32), 1, NULL, u32(TPM_RH.OWNER), u32(TPM_RH.OWNER),
        b"outside"),
    "TPMS_CREATION_DATA-child": creation_data(
        "sha1:0+sha256:16,23", pattern(32), 0x1F, SHA256, u16(SHA256) + pattern(32),
        u16(SHA256) + pattern(32, 0x33), pattern(64)),   # libtss2 holds 64, Part 2 66
    "TPM2B_CREATION_DATA": sized(creation_data("sha256:7", pattern(32), 2, SHA384,
                                               u16(SHA384) + pattern(48),
                                               u16(SHA384) + pattern(48, 5), b""),
                                 T.TPM2B_CREATION_DATA, "creationData"),
    "TPM2B_NAME-handle": (T.TPM2B_NAME(u32(TPM_RH.OWNER)), u32(TPM_RH.OWNER)),
    "TPM2B_NAME-sha512": (T.TPM2B_NAME(u16(SHA512) + pattern(64)), u16(SHA512) + pattern(64)),
}


def split(tss):
    """A case's TSS side is a TSS object, or (object, ctpm name) when the names differ."""
    if isinstance(tss, tuple):
        return tss
    return tss, type(tss).__name__


def marshal(obj):
    if isinstance(obj, int):                          # TPMA_OBJECT: a UINT32
        return u32(obj)
    return obj.marshal()


CASE_PARAMS = [pytest.param(*split(t), v, id=k) for k, (t, v) in CASES.items()]


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


@pytest.mark.parametrize("tss, name, value", CASE_PARAMS)
def test_tss_to_ctpm(tss, name, value):
    data = marshal(tss)
    st = getattr(O, name)
    parsed = st.parse(data)
    assert plain(parsed) == value
    assert st.build(parsed) == data


@pytest.mark.parametrize("tss, name, value", CASE_PARAMS)
def test_ctpm_to_tss(tss, name, value):
    data = getattr(O, name).build(value)
    if isinstance(tss, int):
        assert data == u32(tss)
        return
    obj, used = type(tss).unmarshal(data)
    assert used == len(data)
    # every field, as libtss2 holds it after unmarshaling its own bytes (a template from
    # libtss2's parser may leave values in union members that the selector does not marshal)
    own = type(tss).unmarshal(tss.marshal())[0]
    assert cmem(obj) == cmem(own)
    assert obj.marshal() == data


@pytest.mark.parametrize("tss, name, value", CASE_PARAMS)
def test_truncated(tss, name, value):
    data = marshal(tss)
    st = getattr(O, name)
    for n in range(len(data)):
        with pytest.raises(TpmError) as e:
            st.parse(data[:n])
        assert e.value.rc == TPM_RC.INSUFFICIENT, f"cut at {n}"


def test_empty_tpm2b_sensitive():
    """Part 2 §12.3.3: TPM2B_SENSITIVE may be empty (LoadExternal of a public key)."""
    assert O.TPM2B_SENSITIVE.parse(b"\0\0") is None
    assert O.TPM2B_SENSITIVE.build(None) == b"\0\0"
    obj, used = T.TPM2B_SENSITIVE.unmarshal(b"\0\0")
    assert used == 2 and obj.size == 0


# --- the C sizes objects.py works out: the same as libtss2's compiler where the profile agrees -

@pytest.mark.parametrize("name, ctype", [
    ("SIZEOF_TPMU_PUBLIC_PARMS", "TPMU_PUBLIC_PARMS"),
    ("SIZEOF_TPMU_PUBLIC_ID", "TPMU_PUBLIC_ID"),       # RSA-4096 dominates P-521 and libtss2's 128
    ("SIZEOF_TPMT_PUBLIC", "TPMT_PUBLIC"),
    ("SIZEOF_TPMU_SENSITIVE_COMPOSITE", "TPMU_SENSITIVE_COMPOSITE"),
    ("SIZEOF_TPMT_SENSITIVE", "TPMT_SENSITIVE"),
    ("SIZEOF_PRIVATE", "_PRIVATE"),
    ("SIZEOF_TPMS_ID_OBJECT", "TPMS_ID_OBJECT"),
])
def test_sizeof_matches_c(name, ctype):
    assert getattr(O, name) == ffi.sizeof(ctype)


# --- TPM2B_ maxima: the largest ctpm accepts fits libtss2; one more byte is TPM_RC_SIZE --------

@pytest.mark.parametrize("name, maxsize", [
    ("TPM2B_PUBLIC_KEY_RSA", 512),
    ("TPM2B_PRIVATE_KEY_RSA", 256),
    ("TPM2B_ECC_PARAMETER", 66),
    ("TPM2B_SYM_KEY", 32),
    ("TPM2B_SENSITIVE_DATA", 128),
    ("TPM2B_TEMPLATE", 612),
    ("TPM2B_PRIVATE", 1550),
    ("TPM2B_ID_OBJECT", 132),
    ("TPM2B_CONTEXT_DATA", 2116),
])
def test_tpm2b_maximum(name, maxsize):
    st = getattr(O, name)
    data = b2(pattern(maxsize))
    assert st.parse(data) == pattern(maxsize)
    obj, used = getattr(T, name).unmarshal(data)
    assert used == len(data) and obj.marshal() == data
    with pytest.raises(TpmError) as e:
        st.parse(b2(pattern(maxsize + 1)))
    assert e.value.rc == TPM_RC.SIZE


# --- malformed input: TpmError with the code of the reference TPM's Marshal.c -----------------

SYM0 = u16(NULL)
RSA_PARMS = SYM0 + u16(NULL) + u16(2048) + u32(0)              # TPMS_RSA_PARMS, no scheme
ECC_PARMS = SYM0 + u16(NULL) + u16(C.NIST_P256) + u16(NULL)    # TPMS_ECC_PARMS
ATTRS = u32(int(SIGN_ATTRS))


def pub(kind=A.RSA, name_alg=SHA256, attrs=ATTRS, policy=b"", parms=None, unique=None):
    """TPMT_PUBLIC bytes, each field replaceable."""
    if parms is None:
        parms = {A.RSA: RSA_PARMS, A.ECC: ECC_PARMS, A.KEYEDHASH: u16(NULL),
                 A.SYMCIPHER: u16(A.AES) + u16(128) + u16(A.CFB)}.get(kind, b"")
    if unique is None:
        unique = {A.ECC: b2(b"") + b2(b"")}.get(kind, b2(b""))
    return u16(kind) + u16(name_alg) + attrs + b2(policy) + parms + unique


def sens(kind=A.ECC, auth=b"", seed=b"", secret=pattern(32)):
    return u16(kind) + b2(auth) + b2(seed) + b2(secret)


GOOD_PUB = pub()
CREATE = b2(b"pw") + b2(b"data")                             # TPMS_SENSITIVE_CREATE


def bad(id, st, data, rc, ctx=None):
    return pytest.param(st, data, ctx or {}, rc, id=id)


RESERVED = [b for b in range(32) if O.TPMA_OBJECT_RESERVED >> b & 1]

REJECTED = [
    # Part 2 §8.3 TPMA_OBJECT: any reserved bit
    *[bad(f"TPMA_OBJECT-bit{b}", "TPMA_OBJECT", u32(1 << b), RESERVED_BITS) for b in RESERVED],
    bad("TPMA_OBJECT-defined+reserved", "TPMA_OBJECT", u32(ALL_ATTRS | 1 << 31), RESERVED_BITS),
    bad("TPMT_PUBLIC-attrs-bit0", "TPMT_PUBLIC", pub(attrs=u32(int(SIGN_ATTRS) | 1)),
        RESERVED_BITS),
    # TPMT_PUBLIC.type: TPMI_ALG_PUBLIC
    *[bad(f"TPMT_PUBLIC-type-{n}", "TPMT_PUBLIC", pub(kind=t), TPM_RC.TYPE)
      for n, t in (("null", NULL), ("sha256", SHA256), ("aes", A.AES), ("0x99", 0x99))],
    bad("TPMT_PUBLIC-type-before-nameAlg", "TPMT_PUBLIC", pub(kind=NULL, name_alg=0x99),
        TPM_RC.TYPE),
    bad("TPMT_SENSITIVE-type-null", "TPMT_SENSITIVE", sens(kind=NULL), TPM_RC.TYPE),
    bad("TPMT_SENSITIVE-type-hmac", "TPMT_SENSITIVE", sens(kind=A.HMAC), TPM_RC.TYPE),
    # nameAlg: TPMI_ALG_HASH, NULL only with "+" (LoadExternal)
    bad("TPMT_PUBLIC-nameAlg-null", "TPMT_PUBLIC", pub(name_alg=NULL), TPM_RC.HASH),
    bad("TPM2B_PUBLIC-nameAlg-null", "TPM2B_PUBLIC", b2(pub(name_alg=NULL)), TPM_RC.HASH),
    bad("TPMT_PUBLIC-nameAlg-sha3", "TPMT_PUBLIC", pub(name_alg=0x27), TPM_RC.HASH),
    bad("TPMT_PUBLIC_PLUS-nameAlg-sha3", "TPMT_PUBLIC_PLUS", pub(name_alg=0x27), TPM_RC.HASH),
    bad("TPM2B_PUBLIC_PLUS-nameAlg-rsa", "TPM2B_PUBLIC_PLUS", b2(pub(name_alg=A.RSA)),
        TPM_RC.HASH),
    bad("TPMT_PUBLIC-attrs-before-policy", "TPMT_PUBLIC",
        pub(attrs=u32(1 << 31), policy=pattern(65)), RESERVED_BITS),
    # sizes of the TPM2B_ fields
    bad("TPMT_PUBLIC-authPolicy-65", "TPMT_PUBLIC", pub(policy=pattern(65)), TPM_RC.SIZE),
    bad("TPMT_PUBLIC-rsa-unique-513", "TPMT_PUBLIC", pub(unique=b2(pattern(513))), TPM_RC.SIZE),
    bad("TPMT_PUBLIC-ecc-x-67", "TPMT_PUBLIC", pub(A.ECC, unique=b2(pattern(67)) + b2(b"")),
        TPM_RC.SIZE),
    bad("TPMT_PUBLIC-ecc-y-67", "TPMT_PUBLIC", pub(A.ECC, unique=b2(b"") + b2(pattern(67))),
        TPM_RC.SIZE),
    bad("TPMT_PUBLIC-keyedhash-unique-65", "TPMT_PUBLIC",
        pub(A.KEYEDHASH, unique=b2(pattern(65))), TPM_RC.SIZE),
    bad("TPMT_PUBLIC-sym-unique-65", "TPMT_PUBLIC", pub(A.SYMCIPHER, unique=b2(pattern(65))),
        TPM_RC.SIZE),
    # parameters (the checks of structures.py, reached through TPMT_PUBLIC)
    bad("TPMT_PUBLIC-rsa-keyBits-768", "TPMT_PUBLIC",
        pub(parms=SYM0 + u16(NULL) + u16(768) + u32(0)), TPM_RC.VALUE),
    bad("TPMT_PUBLIC-ecc-curve-bn638", "TPMT_PUBLIC",
        pub(A.ECC, parms=SYM0 + u16(NULL) + u16(0x11) + u16(NULL)), TPM_RC.CURVE),
    bad("TPMT_PUBLIC-ecc-scheme-rsassa", "TPMT_PUBLIC",
        pub(A.ECC, parms=SYM0 + u16(A.RSASSA) + u16(SHA256)), TPM_RC.SCHEME),
    bad("TPMT_PUBLIC-symcipher-null", "TPMT_PUBLIC", pub(A.SYMCIPHER, parms=u16(NULL)),
        TPM_RC.SYMMETRIC),
    bad("TPMT_PUBLIC-keyedhash-scheme-rsassa", "TPMT_PUBLIC",
        pub(A.KEYEDHASH, parms=u16(A.RSASSA) + u16(SHA256)), TPM_RC.VALUE),
    # Part 2 §12.2.5 TPM2B_PUBLIC: size 0 is "missing", the area must fill the size exactly
    bad("TPM2B_PUBLIC-size0", "TPM2B_PUBLIC", u16(0), TPM_RC.SIZE),
    bad("TPM2B_PUBLIC_PLUS-size0", "TPM2B_PUBLIC_PLUS", u16(0), TPM_RC.SIZE),
    bad("TPM2B_PUBLIC-trailing-byte", "TPM2B_PUBLIC",
        u16(len(GOOD_PUB) + 1) + GOOD_PUB + b"\0", TPM_RC.SIZE),
    bad("TPM2B_PUBLIC-inner-error-first", "TPM2B_PUBLIC", b2(pub(kind=0x99)), TPM_RC.TYPE),
    bad("TPM2B_TEMPLATE-613", "TPM2B_TEMPLATE", b2(pattern(613)), TPM_RC.SIZE),
    # Part 2 §11.1.15 TPM2B_SENSITIVE_CREATE
    bad("TPM2B_SENSITIVE_CREATE-size0", "TPM2B_SENSITIVE_CREATE", u16(0), TPM_RC.SIZE),
    bad("TPM2B_SENSITIVE_CREATE-trailing", "TPM2B_SENSITIVE_CREATE",
        u16(len(CREATE) + 2) + CREATE + b"\0\0", TPM_RC.SIZE),
    bad("TPM2B_SENSITIVE_CREATE-userAuth-65", "TPM2B_SENSITIVE_CREATE",
        b2(b2(pattern(65)) + b2(b"")), TPM_RC.SIZE),
    bad("TPM2B_SENSITIVE_CREATE-data-129", "TPM2B_SENSITIVE_CREATE",
        b2(b2(b"") + b2(pattern(129))), TPM_RC.SIZE),
    # Part 2 §12.3 TPMT_SENSITIVE / TPM2B_SENSITIVE
    bad("TPMT_SENSITIVE-authValue-65", "TPMT_SENSITIVE", sens(auth=pattern(65)), TPM_RC.SIZE),
    bad("TPMT_SENSITIVE-seedValue-65", "TPMT_SENSITIVE", sens(seed=pattern(65)), TPM_RC.SIZE),
    bad("TPMT_SENSITIVE-rsa-257", "TPMT_SENSITIVE", sens(A.RSA, secret=pattern(257)),
        TPM_RC.SIZE),
    bad("TPMT_SENSITIVE-ecc-67", "TPMT_SENSITIVE", sens(A.ECC, secret=pattern(67)),
        TPM_RC.SIZE),
    bad("TPMT_SENSITIVE-bits-129", "TPMT_SENSITIVE", sens(A.KEYEDHASH, secret=pattern(129)),
        TPM_RC.SIZE),
    bad("TPMT_SENSITIVE-sym-33", "TPMT_SENSITIVE", sens(A.SYMCIPHER, secret=pattern(33)),
        TPM_RC.SIZE),
    bad("TPM2B_SENSITIVE-trailing", "TPM2B_SENSITIVE",
        u16(len(sens()) + 1) + sens() + b"\0", TPM_RC.SIZE),
    bad("TPM2B_SENSITIVE-type-null", "TPM2B_SENSITIVE", b2(sens(kind=NULL)), TPM_RC.TYPE),
    bad("TPM2B_PRIVATE-1551", "TPM2B_PRIVATE", b2(pattern(1551)), TPM_RC.SIZE),
    bad("TPM2B_ID_OBJECT-133", "TPM2B_ID_OBJECT", b2(pattern(133)), TPM_RC.SIZE),
    # Part 2 §11.2.1.5 TPMT_SIG_SCHEME: TPMI_ALG_SIG_SCHEME+ -> TPM_RC_SCHEME
    *[bad(f"TPMT_SIG_SCHEME-{n}", "TPMT_SIG_SCHEME", u16(s) + u16(SHA256), TPM_RC.SCHEME)
      for n, s in (("rsaes", A.RSAES), ("oaep", A.OAEP), ("ecdh", A.ECDH),
                   ("ecmqv", A.ECMQV), ("xor", A.XOR), ("sha256", SHA256), ("0x99", 0x99))],
    bad("TPMT_SIG_SCHEME-rsassa-hash-null", "TPMT_SIG_SCHEME", u16(A.RSASSA) + u16(NULL),
        TPM_RC.HASH),
    bad("TPMT_SIG_SCHEME-hmac-hash-bad", "TPMT_SIG_SCHEME", u16(A.HMAC) + u16(0x99),
        TPM_RC.HASH),
    # Part 2 §11.3.4 TPMT_SIGNATURE (as VerifySignature/PolicySigned take it: no NULL)
    bad("TPMT_SIGNATURE-null", "TPMT_SIGNATURE", u16(NULL), TPM_RC.SCHEME),
    bad("TPMT_SIGNATURE-rsaes", "TPMT_SIGNATURE", u16(A.RSAES) + u16(SHA256) + b2(b""),
        TPM_RC.SCHEME),
    bad("TPMT_SIGNATURE_PLUS-ecdh", "TPMT_SIGNATURE_PLUS", u16(A.ECDH), TPM_RC.SCHEME),
    bad("TPMT_SIGNATURE-rsassa-hash-null", "TPMT_SIGNATURE", u16(A.RSASSA) + u16(NULL) + b2(b""),
        TPM_RC.HASH),
    bad("TPMT_SIGNATURE-ecdsa-hash-bad", "TPMT_SIGNATURE", u16(A.ECDSA) + u16(0x99),
        TPM_RC.HASH),
    bad("TPMT_SIGNATURE-hmac-null", "TPMT_SIGNATURE", u16(A.HMAC) + u16(NULL), TPM_RC.HASH),
    bad("TPMT_SIGNATURE-rsassa-sig-513", "TPMT_SIGNATURE",
        u16(A.RSASSA) + u16(SHA256) + b2(pattern(513)), TPM_RC.SIZE),
    bad("TPMT_SIGNATURE-ecdsa-r-67", "TPMT_SIGNATURE",
        u16(A.ECDSA) + u16(SHA256) + b2(pattern(67)) + b2(b""), TPM_RC.SIZE),
    bad("TPMT_SIGNATURE-ecschnorr-s-67", "TPMT_SIGNATURE",
        u16(A.ECSCHNORR) + u16(SHA256) + b2(b"") + b2(pattern(67)), TPM_RC.SIZE),
    # Part 2 §11.2.4.4 TPMT_RSA_DECRYPT: TPMI_ALG_RSA_DECRYPT+ -> TPM_RC_VALUE
    *[bad(f"TPMT_RSA_DECRYPT-{n}", "TPMT_RSA_DECRYPT", u16(s) + u16(SHA256), TPM_RC.VALUE)
      for n, s in (("rsassa", A.RSASSA), ("rsapss", A.RSAPSS), ("ecdsa", A.ECDSA),
                   ("sha256", SHA256), ("0x99", 0x99))],
    bad("TPMT_RSA_DECRYPT-oaep-hash-null", "TPMT_RSA_DECRYPT", u16(A.OAEP) + u16(NULL),
        TPM_RC.HASH),
    # Part 2 §11.2.5.3 TPM2B_ECC_POINT
    bad("TPM2B_ECC_POINT-size0", "TPM2B_ECC_POINT", u16(0), TPM_RC.SIZE),
    bad("TPM2B_ECC_POINT-trailing", "TPM2B_ECC_POINT", u16(5) + b2(b"") + b2(b"") + b"\0",
        TPM_RC.SIZE),
    bad("TPM2B_ECC_POINT-x-67", "TPM2B_ECC_POINT", b2(b2(pattern(67)) + b2(b"")), TPM_RC.SIZE),
    # Part 2 §10.7 tickets: the tag (TPM_RC_TAG), then TPMI_RH_HIERARCHY+ (TPM_RC_VALUE)
    bad("TK_CREATION-tag-verified", "TPMT_TK_CREATION",
        u16(TPM_ST.VERIFIED) + u32(TPM_RH.NULL) + b2(b""), TPM_RC.TAG),
    bad("TK_VERIFIED-tag-creation", "TPMT_TK_VERIFIED",
        u16(TPM_ST.CREATION) + u32(TPM_RH.NULL) + b2(b""), TPM_RC.TAG),
    bad("TK_AUTH-tag-hashcheck", "TPMT_TK_AUTH",
        u16(TPM_ST.HASHCHECK) + u32(TPM_RH.NULL) + b2(b""), TPM_RC.TAG),
    bad("TK_CREATION-tag-before-hierarchy", "TPMT_TK_CREATION",
        u16(0) + u32(TPM_RH.LOCKOUT) + b2(b""), TPM_RC.TAG),
    *[bad(f"TK_{n}-hierarchy-lockout", f"TPMT_TK_{n}", u16(tag) + u32(TPM_RH.LOCKOUT) + b2(b""),
          TPM_RC.VALUE)
      for n, tag in (("CREATION", TPM_ST.CREATION), ("VERIFIED", TPM_ST.VERIFIED),
                     ("AUTH", TPM_ST.AUTH_SECRET))],
    bad("TK_CREATION-hierarchy-transient", "TPMT_TK_CREATION",
        u16(TPM_ST.CREATION) + u32(0x80000000) + b2(b""), TPM_RC.VALUE),
    bad("TK_VERIFIED-digest-65", "TPMT_TK_VERIFIED",
        u16(TPM_ST.VERIFIED) + u32(TPM_RH.OWNER) + b2(pattern(65)), TPM_RC.SIZE),
    # Part 2 §14.5 TPMS_CONTEXT: TPMI_DH_SAVED, TPMI_RH_HIERARCHY+, TPM2B_CONTEXT_DATA
    *[bad(f"TPMS_CONTEXT-savedHandle-{h:08x}", "TPMS_CONTEXT",
          u64(1) + u32(h) + u32(TPM_RH.OWNER) + b2(b""), TPM_RC.VALUE)
      for h in (0x80000003, 0x80FFFFFF, 0x81000000, 0x40000001, 0x01000000, 0x00000000,
                0xFFFFFFFF)],
    bad("TPMS_CONTEXT-hierarchy-lockout", "TPMS_CONTEXT",
        u64(1) + u32(0x80000000) + u32(TPM_RH.LOCKOUT) + b2(b""), TPM_RC.VALUE),
    bad("TPMS_CONTEXT-hierarchy-handle", "TPMS_CONTEXT",
        u64(1) + u32(0x02000000) + u32(0x80000000) + b2(b""), TPM_RC.VALUE),
    bad("TPMS_CONTEXT-blob-too-big", "TPMS_CONTEXT",
        u64(1) + u32(0x80000000) + u32(TPM_RH.OWNER) + b2(pattern(2117)), TPM_RC.SIZE),
    # Part 2 §15 creation data (a response, but parsed with the same checks)
    bad("TPM2B_CREATION_DATA-size0", "TPM2B_CREATION_DATA", u16(0), TPM_RC.SIZE),
    bad("TPMS_CREATION_DATA-name-69", "TPMS_CREATION_DATA",     # sizeof(TPMU_NAME) is 68
        u32(0) + b2(b"") + u8(0) + u16(NULL) + b2(pattern(69)), TPM_RC.SIZE),
    bad("TPMS_CREATION_DATA-outsideInfo-67", "TPMS_CREATION_DATA",
        u32(0) + b2(b"") + u8(0) + u16(NULL) + b2(b"") + b2(b"") + b2(pattern(67)), TPM_RC.SIZE),
    # unions reached with an unknown selector: TPM_RC_SELECTOR
    *[bad(f"{name}-selector", name, b"\0" * 8, TPM_RC.SELECTOR, {key: sel})
      for name, key, sel in (("TPMU_PUBLIC_ID", "type", A.NULL),
                             ("TPMU_PUBLIC_ID", "type", SHA256),
                             ("TPMU_SENSITIVE_COMPOSITE", "sensitiveType", A.HMAC),
                             ("TPMU_SIG_SCHEME", "scheme", A.RSAES),
                             ("TPMU_SIG_SCHEME", "scheme", A.ECMQV),
                             ("TPMU_SIGNATURE", "sigAlg", A.ECDH),
                             ("TPMU_SIGNATURE", "sigAlg", 0x99))],
]


@pytest.mark.parametrize("name, data, ctx, rc", REJECTED)
def test_rejected(name, data, ctx, rc):
    with pytest.raises(TpmError) as e:
        getattr(O, name).parse(data, **ctx)
    assert e.value.rc == rc, f"{TPM_RC(e.value.rc).name}, expected {TPM_RC(rc).name}"


ACCEPTED = [
    pytest.param("TPMA_OBJECT", u32(int(bit)), int(bit), id=f"TPMA_OBJECT-{bit.name}")
    for bit in OA
] + [
    pytest.param("TPMT_PUBLIC_PLUS", pub(name_alg=NULL), None, id="PUBLIC_PLUS-nameAlg-null"),
    pytest.param("TPM2B_PUBLIC_PLUS", b2(pub(name_alg=NULL)), None,
                 id="TPM2B_PUBLIC_PLUS-nameAlg-null"),
    pytest.param("TPMT_SIGNATURE_PLUS", u16(NULL), {"sigAlg": NULL, "signature": {}},
                 id="SIGNATURE_PLUS-null"),
    pytest.param("TPMT_SIG_SCHEME", u16(NULL), NO_SCHEME, id="SIG_SCHEME-null"),
    pytest.param("TPMT_RSA_DECRYPT", u16(NULL), NO_SCHEME, id="RSA_DECRYPT-null"),
    *[pytest.param("TPMS_CONTEXT", u64(3) + u32(h) + u32(TPM_RH.NULL) + b2(b""),
                   {"sequence": 3, "savedHandle": h, "hierarchy": TPM_RH.NULL,
                    "contextBlob": b""}, id=f"TPMS_CONTEXT-savedHandle-{h:08x}")
      for h in (0x80000000, 0x80000001, 0x80000002, 0x02000000, 0x02FFFFFF, 0x03000000)],
    pytest.param("TPM2B_SENSITIVE", u16(0), None, id="TPM2B_SENSITIVE-empty"),
]


@pytest.mark.parametrize("name, data, value", ACCEPTED)
def test_accepted(name, data, value):
    parsed = getattr(O, name).parse(data)
    if value is not None:
        assert plain(parsed) == value
    if parsed is not None:
        assert getattr(O, name).build(parsed) == data


@pytest.mark.parametrize("data", [
    pytest.param(u16(len(GOOD_PUB) - 1) + GOOD_PUB + b"\0" * 8, id="size-one-short"),
    pytest.param(u16(len(GOOD_PUB) + 100) + GOOD_PUB + b"\0" * 8, id="size-past-the-end"),
])
def test_sized_size_mismatch_like_reference(data):
    """A TPM2B_PUBLIC whose size does not match its TPMT_PUBLIC (Marshal.c: TPM_RC_SIZE)."""
    with pytest.raises(TpmError) as e:
        O.TPM2B_PUBLIC.parse(data)
    assert e.value.rc == TPM_RC.SIZE
