"""Part 3 §20: signing and signature verification (TPM2_VerifySignature, TPM2_Sign).

`select_sign_scheme`, `sign_digest` and `validate_signature` are the reference's
CryptSelectSignScheme, CryptSign and CryptValidateSignature, for the attestation commands
to share. Schemes: RSASSA (PKCS #1 v1.5), RSAPSS (salt = the hash length, or what fits),
ECDSA, ECSCHNORR (the reference's TpmEcc_SignEcSchnorr), SM2 (crypto/sm2.py), ECDAA
(engine/subsystems/ecdaa.py; signing only - the reference's CryptValidateSignature refuses it with
TPM_RC_SCHEME, so does this), HMAC with keyed-hash keys. ECDSA on BN_P256 and SM2_P256 (not
in OpenSSL) is computed here in Python.
"""
import hmac
import struct

from construct import Container
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes as chashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from ...crypto import ecmath, keys, rsapad, sm2
from ...crypto.hashes import HASH_NAMES, digest as hash_digest
from ...errors import TpmError
from ...wire.constants import TPM_ALG, TPM_RC, TPM_RH, TPM_ST, TPMA_OBJECT as OA
from ...wire.structures import HASH_SIZES
from ..subsystems import ecdaa, keyuse
from ..subsystems.tickets import TICKET_HASH, hashcheck_ticket, null_ticket

_CHASH = {TPM_ALG.SHA1: chashes.SHA1, TPM_ALG.SHA256: chashes.SHA256,
          TPM_ALG.SHA384: chashes.SHA384, TPM_ALG.SHA512: chashes.SHA512,
          TPM_ALG.SM3_256: chashes.SM3}
_SIGN_SCHEMES = {
    TPM_ALG.RSA: frozenset((TPM_ALG.RSASSA, TPM_ALG.RSAPSS)),
    TPM_ALG.ECC: frozenset((TPM_ALG.ECDSA, TPM_ALG.ECSCHNORR, TPM_ALG.ECDAA, TPM_ALG.SM2)),
    TPM_ALG.KEYEDHASH: frozenset((TPM_ALG.HMAC,)),
}
# ECDSA through OpenSSL takes a digest of a hash's size: the reduced digest e is handed over
# as a big-endian number of this many bytes (e < 2^(8 * size) on every curve here).
_ECDSA_PREHASH = {32: chashes.SHA256(), 48: chashes.SHA384(), 66: chashes.SHA512()}
_ECDSA_PREHASH_SIZE = {32: 32, 48: 48, 66: 64}


# -- scheme selection -------------------------------------------------------------------------

def _key_scheme(public):
    return public.parameters.scheme


def select_sign_scheme(public, in_scheme):
    """CryptSelectSignScheme: the key's scheme if the input is NULL, the input if the key has
    none, the input if both agree; None if they conflict, both are NULL, or the scheme does
    not suit the key type (the caller answers TPM_RC_SCHEME)."""
    if public.type not in _SIGN_SCHEMES:
        return None
    key_scheme = _key_scheme(public)
    if key_scheme.scheme == TPM_ALG.NULL:
        scheme = in_scheme
        if scheme.scheme == TPM_ALG.NULL:
            return None
    elif in_scheme.scheme == TPM_ALG.NULL:
        if key_scheme.scheme == TPM_ALG.ECDAA:     # CryptIsSplitSign: needs the count
            return None
        scheme = Container(scheme=key_scheme.scheme,
                           details=Container(hashAlg=key_scheme.details.hashAlg))
    elif (key_scheme.scheme == in_scheme.scheme
          and key_scheme.details.get("hashAlg") == in_scheme.details.get("hashAlg")):
        scheme = in_scheme
    else:
        return None
    if scheme.scheme not in _SIGN_SCHEMES[public.type]:
        return None
    if scheme.details.get("hashAlg") not in HASH_SIZES:
        return None
    return scheme


# -- signing ----------------------------------------------------------------------------------

def _ecdsa_e(c: ecmath.Curve, digest: bytes) -> int:
    """The digest as a number of at most the order's size (TpmEcc_AdjustEcdsaDigest)."""
    bits = c.n.bit_length()
    e = int.from_bytes(digest[:(bits + 7) // 8], "big")
    shift = e.bit_length() - bits
    return e >> shift if shift > 0 else e


def _ecdsa_prehashed(c: ecmath.Curve, digest: bytes):
    size = _ECDSA_PREHASH_SIZE[c.size]
    return (_ecdsa_e(c, digest).to_bytes(size, "big"),
            ec.ECDSA(utils.Prehashed(_ECDSA_PREHASH[c.size])))


def _schnorr_hash(alg, c: ecmath.Curve, x: int, digest: bytes) -> int:
    """Hash(x || digest) truncated to the byte size of the order (SchnorrReduce)."""
    h = hash_digest(alg, x.to_bytes(c.size, "big") + digest)
    return int.from_bytes(h[:c.size], "big")


def _sign_ecschnorr(tpm, obj, alg, digest: bytes):
    """TpmEcc_SignEcSchnorr: k random, R = [k]G, r = H(R.x || digest) (truncated),
    s = k + r * d (mod n); the signature is (r, s)."""
    c = keyuse.ecc_curve(obj)
    d = keyuse.ecc_scalar(obj)
    stream = keys.EntropyStream(tpm.state.drbg.generate)
    while True:
        k = keys.ecc_private_from_stream(stream, obj.public.parameters.curveID)
        rx, _ry = ecmath.mul_base(c, k)
        r = _schnorr_hash(alg, c, rx, digest)
        if r % c.n == 0:
            continue
        s = (k + (r % c.n) * d) % c.n
        if s:
            return r, s


def _sign_ecdsa_soft(tpm, obj, c: ecmath.Curve, digest: bytes):
    """ECDSA (TpmEcc_SignEcdsa) in Python, for a curve OpenSSL does not have."""
    d = keyuse.ecc_scalar(obj)
    e = _ecdsa_e(c, digest)
    stream = keys.EntropyStream(tpm.state.drbg.generate)
    while True:
        k = keys.ecc_private_from_stream(stream, obj.public.parameters.curveID)
        r = ecmath.mul_base(c, k)[0] % c.n
        if not r:
            continue
        s = pow(k, -1, c.n) * (e + r * d) % c.n
        if s:
            return r, s


def _sign_sm2(tpm, obj, c: ecmath.Curve, digest: bytes):
    """SM2 (TpmEcc_SignEcSm2): a new nonce k until (r, s) is acceptable."""
    d = keyuse.ecc_scalar(obj)
    if (d + 1) % c.n == 0:              # (1 + d) has no inverse: no SM2 signature exists
        raise TpmError(TPM_RC.NO_RESULT)
    stream = keys.EntropyStream(tpm.state.drbg.generate)
    while True:
        k = keys.ecc_private_from_stream(stream, obj.public.parameters.curveID)
        rs = sm2.sign_with(c, d, digest, k)
        if rs is not None:
            return rs


def _verify_ecdsa_soft(c: ecmath.Curve, q, r: int, s: int, digest: bytes) -> bool:
    w = pow(s, -1, c.n)
    e = _ecdsa_e(c, digest)
    point = ecmath.mul_add(c, e * w, r * w, q)
    return point is not None and point[0] % c.n == r


def sign_digest(tpm, obj, scheme, digest: bytes):
    """CryptSign: the TPMT_SIGNATURE of `digest` with a selected scheme."""
    alg = scheme.details.hashAlg
    sig_alg = scheme.scheme
    t = obj.public.type
    if t == TPM_ALG.RSA:
        _n, _e, k = keyuse.rsa_modulus(obj)
        key = keyuse.rsa_private_key(obj)
        if sig_alg == TPM_ALG.RSASSA and alg == TPM_ALG.SM3_256:
            # the registry's DigestInfo, not OpenSSL's (rsapad.DER_PREFIX)
            sig = keyuse.rsa_private(obj).op(rsapad.rsassa_encode(alg, digest, k))
            return Container(sigAlg=sig_alg, signature=Container(hash=alg, sig=sig))
        if sig_alg == TPM_ALG.RSASSA:
            rsapad.rsassa_encode(alg, digest, k)     # the reference's size checks
            pad = padding.PKCS1v15()
        else:
            pad = padding.PSS(mgf=padding.MGF1(_CHASH[alg]()),
                              salt_length=rsapad.pss_salt_size(HASH_SIZES[alg], k))
        sig = key.sign(digest, pad, utils.Prehashed(_CHASH[alg]()))
        return Container(sigAlg=sig_alg, signature=Container(hash=alg, sig=sig))
    if t == TPM_ALG.ECC:
        c = keyuse.ecc_curve(obj)
        if sig_alg == TPM_ALG.ECDAA:
            nonce_k, s = ecdaa.sign_ecdaa(tpm, obj, scheme, digest)
            return Container(sigAlg=sig_alg, signature=Container(
                hash=alg, signatureR=nonce_k, signatureS=s))
        if sig_alg == TPM_ALG.ECDSA and c.cls is None:
            r, s = _sign_ecdsa_soft(tpm, obj, c, digest)
        elif sig_alg == TPM_ALG.ECDSA:
            data, algorithm = _ecdsa_prehashed(c, digest)
            r, s = utils.decode_dss_signature(keyuse.ecc_private_key(obj).sign(data, algorithm))
        elif sig_alg == TPM_ALG.SM2:
            r, s = _sign_sm2(tpm, obj, c, digest)
        else:
            r, s = _sign_ecschnorr(tpm, obj, alg, digest)
        return Container(sigAlg=sig_alg, signature=Container(
            hash=alg, signatureR=r.to_bytes(c.size, "big"),
            signatureS=s.to_bytes(c.size, "big")))
    mac = hmac.new(obj.sensitive.sensitive, digest, HASH_NAMES[alg]).digest()
    return Container(sigAlg=TPM_ALG.HMAC, signature=Container(hashAlg=alg, digest=mac))


# -- verification -----------------------------------------------------------------------------

def _verify_rsa(obj, digest, signature):
    if signature.sigAlg not in (TPM_ALG.RSASSA, TPM_ALG.RSAPSS):
        raise TpmError(TPM_RC.SCHEME)
    n, e, k = keyuse.rsa_modulus(obj)
    sig = signature.signature
    if len(sig.sig) != k:
        raise TpmError(TPM_RC.SIGNATURE)
    try:
        em = rsapad.public_op(n, e, sig.sig, k)
    except TpmError:
        raise TpmError(TPM_RC.SIGNATURE) from None
    if signature.sigAlg == TPM_ALG.RSASSA:
        ok = rsapad.rsassa_verify(sig.hash, digest, em)
    else:
        ok = rsapad.pss_verify(sig.hash, digest, em)
    if not ok:
        raise TpmError(TPM_RC.SIGNATURE)


def _verify_ecc(obj, digest, signature):
    if signature.sigAlg not in (TPM_ALG.ECDSA, TPM_ALG.ECSCHNORR, TPM_ALG.SM2):
        raise TpmError(TPM_RC.SCHEME)
    c = keyuse.ecc_curve(obj)
    sig = signature.signature
    r = int.from_bytes(sig.signatureR, "big")
    s = int.from_bytes(sig.signatureS, "big")
    if not (0 < r < c.n and 0 < s < c.n):
        raise TpmError(TPM_RC.SIGNATURE)
    try:
        public = keyuse.ecc_public_key(obj)
    except ValueError:
        raise TpmError(TPM_RC.SIGNATURE) from None
    if signature.sigAlg == TPM_ALG.SM2:
        if not sm2.verify(c, keyuse.ecc_point(obj), digest, r, s):
            raise TpmError(TPM_RC.SIGNATURE)
        return
    if signature.sigAlg == TPM_ALG.ECDSA and c.cls is None:
        if not _verify_ecdsa_soft(c, keyuse.ecc_point(obj), r, s, digest):
            raise TpmError(TPM_RC.SIGNATURE)
        return
    if signature.sigAlg == TPM_ALG.ECDSA:
        data, algorithm = _ecdsa_prehashed(c, digest)
        try:
            public.verify(utils.encode_dss_signature(r, s), data, algorithm)
        except InvalidSignature:
            raise TpmError(TPM_RC.SIGNATURE) from None
        return
    # ECSCHNORR: E = [s]G - [r]Q; valid if H(E.x || digest) (truncated) is r
    q = keyuse.ecc_point(obj)
    point = ecmath.add(c, ecmath.mul_base(c, s), ecmath.mul(c, c.n - r, q, public))
    if point is None or _schnorr_hash(sig.hash, c, point[0], digest) != r:
        raise TpmError(TPM_RC.SIGNATURE)


def _verify_hmac(obj, digest, signature):
    if keyuse.is_public_only(obj):
        raise TpmError(TPM_RC.HANDLE)
    if signature.sigAlg != TPM_ALG.HMAC:
        raise TpmError(TPM_RC.SCHEME)
    ha = signature.signature
    key_scheme = obj.public.parameters.scheme
    if key_scheme.scheme != TPM_ALG.NULL and (
            key_scheme.scheme != TPM_ALG.HMAC or key_scheme.details.hashAlg != ha.hashAlg):
        raise TpmError(TPM_RC.SIGNATURE)
    mac = hmac.new(obj.sensitive.sensitive, digest, HASH_NAMES[ha.hashAlg]).digest()
    if not hmac.compare_digest(mac, ha.digest):
        raise TpmError(TPM_RC.SIGNATURE)


def validate_signature(obj, digest: bytes, signature):
    """CryptValidateSignature: TPM_RC_SIGNATURE if not genuine, TPM_RC_SCHEME if the
    signature's algorithm does not fit the key, TPM_RC_HANDLE for an HMAC key loaded
    without its sensitive area."""
    t = obj.public.type
    if signature.sigAlg == TPM_ALG.NULL:
        raise TpmError(TPM_RC.SIGNATURE)
    if t == TPM_ALG.RSA:
        _verify_rsa(obj, digest, signature)
    elif t == TPM_ALG.ECC:
        _verify_ecc(obj, digest, signature)
    elif t == TPM_ALG.KEYEDHASH:
        _verify_hmac(obj, digest, signature)
    else:
        raise TpmError(TPM_RC.SCHEME)


def verified_ticket(tpm, hierarchy, digest: bytes, key_name: bytes):
    """TPMT_TK_VERIFIED (Part 2 §10.7.4): HMAC(proof, TPM_ST_VERIFIED || digest || keyName)."""
    mac = hmac.new(tpm.state.proof(hierarchy), struct.pack(">H", TPM_ST.VERIFIED) + digest
                   + key_name, TICKET_HASH).digest()
    return Container(tag=TPM_ST.VERIFIED, hierarchy=hierarchy, digest=mac)


# -- the commands -----------------------------------------------------------------------------

def verify_signature(tpm, ctx, key_handle, digest, signature):
    """Part 3 §20.1: a ticket that this key signed `digest` (empty for the NULL
    hierarchy or a key without a Name)."""
    obj = tpm.state.object(key_handle)
    if not obj.attributes & OA.SIGN_ENCRYPT:
        raise TpmError(TPM_RC.ATTRIBUTES, handle=1)
    try:
        validate_signature(obj, digest, signature)
    except TpmError as e:
        raise e.located(param=2)
    if obj.hierarchy == TPM_RH.NULL or obj.public.nameAlg == TPM_ALG.NULL:
        return (null_ticket(TPM_ST.VERIFIED),)
    return (verified_ticket(tpm, obj.hierarchy, digest, obj.name),)


def sign(tpm, ctx, key_handle, digest, in_scheme, validation):
    """Part 3 §20.2: sign a digest. A restricted key signs only a digest the TPM computed
    (a TPMT_TK_HASHCHECK from TPM2_Hash or a hash sequence); an unrestricted one anything
    of the scheme's digest size."""
    obj = tpm.state.object(key_handle)
    public = obj.public
    if not obj.attributes & OA.SIGN_ENCRYPT or public.type == TPM_ALG.SYMCIPHER:
        raise TpmError(TPM_RC.KEY, handle=1)
    if obj.attributes & OA.X509SIGN:
        raise TpmError(TPM_RC.ATTRIBUTES, handle=1)
    keyuse.require_private(obj)
    scheme = select_sign_scheme(public, in_scheme)
    if scheme is None:
        raise TpmError(TPM_RC.SCHEME, param=2)
    alg = scheme.details.hashAlg
    if validation.digest or obj.attributes & OA.RESTRICTED:
        expected = hashcheck_ticket(tpm, validation.hierarchy, alg, digest).digest
        if not hmac.compare_digest(expected, validation.digest):
            raise TpmError(TPM_RC.TICKET, param=3)
    elif len(digest) != HASH_SIZES[alg]:
        raise TpmError(TPM_RC.SIZE, param=1)
    return (sign_digest(tpm, obj, scheme, digest),)


__all__ = ["select_sign_scheme", "sign_digest", "validate_signature", "verified_ticket",
           "verify_signature", "sign"]
