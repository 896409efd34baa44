"""The key material of a loaded object, as the cryptographic commands need it.

An `Object` keeps the public and sensitive areas; `Object.key` caches a `cryptography`
private key (made by Create/CreatePrimary/Load, or here on first use). Public-key operations
work from the public area alone, so that a key loaded public-only (TPM2_LoadExternal) can
verify and encrypt.
"""
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ...crypto import ecmath, hashes, keys, rsapad
from ...errors import TpmError
from ...wire.constants import TPM_ALG, TPM_RC, TPMA_OBJECT


def is_public_only(obj) -> bool:
    return obj.sensitive is None


def require_private(obj):
    """A command that uses the private part of a key whose sensitive area is not loaded.

    The reference never gets that far: authorization of a public-only object is
    TPM_RC_AUTH_UNAVAILABLE (IsAuthValueAvailable), so that is the answer here too."""
    if obj.sensitive is None:
        raise TpmError(TPM_RC.AUTH_UNAVAILABLE)


def rsa_modulus(obj):
    """(n, e, k): the public modulus, exponent (0 means 65537) and size in bytes."""
    p = obj.public
    n = p.unique
    return int.from_bytes(n, "big"), p.parameters.exponent or 65537, len(n)


def rsa_private_key(obj) -> rsa.RSAPrivateKey:
    key = obj.key
    if not isinstance(key, rsa.RSAPrivateKey):
        n, e, _k = rsa_modulus(obj)
        try:
            n, e, p, q, d = keys.rsa_private_from_prime(
                n, e, int.from_bytes(obj.sensitive.sensitive, "big"))
        except ValueError:
            raise TpmError(TPM_RC.BINDING) from None
        key = obj.key = keys.rsa_private_key(n, e, p, q, d)
    return key


def rsa_private(obj) -> rsapad.PrivateKey:
    return rsapad.PrivateKey(rsa_private_key(obj).private_numbers())


def ecc_curve(obj) -> ecmath.Curve:
    return ecmath.curve(obj.public.parameters.curveID)


def ecc_point(obj):
    """The public point (x, y) as integers (not checked to be on the curve)."""
    u = obj.public.unique
    return int.from_bytes(u.x, "big"), int.from_bytes(u.y, "big")


def ecc_scalar(obj) -> int:
    return int.from_bytes(obj.sensitive.sensitive, "big")


def ecc_private_key(obj) -> ec.EllipticCurvePrivateKey:
    key = obj.key
    if not isinstance(key, (ec.EllipticCurvePrivateKey, keys.EccSoftPrivateKey)):
        try:
            key = keys.ecc_private_key(obj.public.parameters.curveID, ecc_scalar(obj))
        except ValueError:
            raise TpmError(TPM_RC.KEY_SIZE) from None
        obj.key = key
    return key


def ecc_public_key(obj):
    """`cryptography` public key of the object's point; ValueError if it is off the curve."""
    c = ecc_curve(obj)
    x, y = ecc_point(obj)
    if not ecmath.on_curve(c, x, y):
        raise ValueError("point not on the curve")
    if c.cls is None:
        return keys.ecc_public_key(obj.public.parameters.curveID, x, y)
    return ec.EllipticCurvePublicNumbers(x, y, c.cls()).public_key()


def hmac_hash(obj, hash_alg) -> int:
    """The hash an HMAC with this key uses (TPM2_HMAC, TPM2_HMAC_Start): the key must be an
    unrestricted keyed-hash signing key; its scheme's hash wins, hashAlg (parameter 2) is
    used when the scheme has none and must agree when it has one."""
    public = obj.public
    if public.type != TPM_ALG.KEYEDHASH:
        raise TpmError(TPM_RC.TYPE, handle=1)
    if public.objectAttributes & TPMA_OBJECT.RESTRICTED:
        raise TpmError(TPM_RC.ATTRIBUTES, handle=1)
    if not public.objectAttributes & TPMA_OBJECT.SIGN_ENCRYPT:
        raise TpmError(TPM_RC.KEY, handle=1)
    require_private(obj)
    scheme = public.parameters.scheme
    alg = hash_alg if scheme.scheme == TPM_ALG.NULL else scheme.details.hashAlg
    if hash_alg not in (TPM_ALG.NULL, alg) or alg == TPM_ALG.NULL:
        raise TpmError(TPM_RC.VALUE, param=2)
    return alg


def binding_check(public, sensitive):
    """Do the public and sensitive areas belong together? TPM_RC_BINDING if not."""
    p = public.parameters
    try:
        if public.type == TPM_ALG.RSA:
            n = int.from_bytes(public.unique, "big")
            prime = int.from_bytes(sensitive.sensitive, "big")
            n, e, pp, q, d = keys.rsa_private_from_prime(n, p.exponent or 65537, prime)
            return keys.rsa_private_key(n, e, pp, q, d)
        if public.type == TPM_ALG.ECC:
            key = keys.ecc_private_key(p.curveID, int.from_bytes(sensitive.sensitive, "big"))
            # compared as numbers: a public area whose coordinates drop leading zero bytes
            # (tpm2-pytss's from_pem makes them) is bound all the same, as libtpms accepts it
            x, y = keys.ecc_public_xy(key)
            if (int.from_bytes(x, "big"), int.from_bytes(y, "big")) != (
                    int.from_bytes(public.unique.x, "big"),
                    int.from_bytes(public.unique.y, "big")):
                raise ValueError("point mismatch")
            return key
    except ValueError:
        raise TpmError(TPM_RC.BINDING) from None
    if hashes.digest(public.nameAlg, sensitive.seedValue + sensitive.sensitive) != public.unique:
        raise TpmError(TPM_RC.BINDING)
    return None


def private_key(obj):
    """The `cryptography` private key of a loaded object, rebuilt if it was not kept.

    A public-only object (TPM2_LoadExternal) has none; the reference never gets here with
    one, as its authorization in the USER role is TPM_RC_AUTH_UNAVAILABLE."""
    if obj.sensitive is None:
        raise TpmError(TPM_RC.AUTH_UNAVAILABLE)
    if obj.key is None:
        obj.key = binding_check(obj.public, obj.sensitive)
    return obj.key
