"""Is this public area a valid template for a new object? (Part 1 §27.2, Part 3 §12.1)

The rules of the reference TPM's CreateChecks, PublicAttributesValidation and SchemeChecks,
in their order, so that a bad template fails with the same code as on other TPMs. A
`parent` of None means a primary object; errors are TpmError without a parameter number
(the caller names its inPublic parameter).
"""
from ...errors import TpmError
from types import SimpleNamespace

from ...wire.constants import TPM_ALG, TPM_RC, TPMA_OBJECT
from ...wire.structures import HASH_SIZES

# The attribute bits as plain ints: IntFlag arithmetic costs microseconds per operation.
OA = SimpleNamespace(**{m.name: int(m) for m in TPMA_OBJECT})

SIGN_SCHEMES = {
    TPM_ALG.RSA: {TPM_ALG.RSASSA, TPM_ALG.RSAPSS},
    TPM_ALG.ECC: {TPM_ALG.ECDSA, TPM_ALG.ECSCHNORR, TPM_ALG.ECDAA, TPM_ALG.SM2},
}
DECRYPT_SCHEMES = {
    TPM_ALG.RSA: {TPM_ALG.RSAES, TPM_ALG.OAEP},
    TPM_ALG.ECC: {TPM_ALG.ECDH, TPM_ALG.ECMQV},
}


def _has(attrs, bit):
    return bool(attrs & bit)


def create_checks(parent_attrs, public, data_size: int):
    """`parent_attrs`: the parent's TPMA_OBJECT, or None for a primary object."""
    a = public.objectAttributes
    if not _has(a, OA.SENSITIVEDATAORIGIN) and data_size == 0:
        raise TpmError(TPM_RC.ATTRIBUTES)
    if parent_attrs is not None and _has(a, OA.SENSITIVEDATAORIGIN) and data_size:
        raise TpmError(TPM_RC.ATTRIBUTES)
    t = public.type
    if t in (TPM_ALG.KEYEDHASH, TPM_ALG.SYMCIPHER):
        if (t == TPM_ALG.KEYEDHASH and not _has(a, OA.SIGN_ENCRYPT) and not _has(a, OA.DECRYPT)
                and _has(a, OA.SENSITIVEDATAORIGIN)):
            raise TpmError(TPM_RC.ATTRIBUTES)     # a sealed data object brings its data
        if (_has(a, OA.RESTRICTED) and not _has(a, OA.SENSITIVEDATAORIGIN)
                and (_has(a, OA.FIXEDPARENT) or _has(a, OA.FIXEDTPM))):
            raise TpmError(TPM_RC.ATTRIBUTES)
    elif not _has(a, OA.SENSITIVEDATAORIGIN):
        raise TpmError(TPM_RC.ATTRIBUTES)         # asymmetric keys are generated inside
    public_attributes_validation(parent_attrs, public)


def public_attributes_validation(parent_attrs, public):
    a = public.objectAttributes
    if public.nameAlg == TPM_ALG.NULL:
        raise TpmError(TPM_RC.HASH)
    if public.authPolicy and len(public.authPolicy) != HASH_SIZES[public.nameAlg]:
        raise TpmError(TPM_RC.SIZE)
    if parent_attrs is None or _has(parent_attrs, OA.FIXEDTPM):
        if _has(a, OA.FIXEDPARENT) != _has(a, OA.FIXEDTPM):
            raise TpmError(TPM_RC.ATTRIBUTES)
    elif _has(a, OA.FIXEDTPM):
        raise TpmError(TPM_RC.ATTRIBUTES)
    if _has(a, OA.SIGN_ENCRYPT) == _has(a, OA.DECRYPT):
        if _has(a, OA.RESTRICTED):
            raise TpmError(TPM_RC.ATTRIBUTES)
        if public.type != TPM_ALG.KEYEDHASH and not _has(a, OA.SIGN_ENCRYPT):
            raise TpmError(TPM_RC.ATTRIBUTES)
    if _has(a, OA.FIXEDTPM) and _has(a, OA.ENCRYPTEDDUPLICATION):
        raise TpmError(TPM_RC.ATTRIBUTES)
    if parent_attrs is not None and not _has(parent_attrs, OA.FIXEDTPM):
        if _has(a, OA.ENCRYPTEDDUPLICATION) != _has(parent_attrs, OA.ENCRYPTEDDUPLICATION):
            raise TpmError(TPM_RC.ATTRIBUTES)
    scheme_checks(public)


def scheme_checks(public):
    a = public.objectAttributes
    p = public.parameters
    sym = None
    if public.type == TPM_ALG.SYMCIPHER:
        sym = p.sym     # a decryption key may leave the mode to EncryptDecrypt (NULL)
    elif public.type == TPM_ALG.KEYEDHASH:
        scheme = p.scheme.scheme
        if _has(a, OA.SIGN_ENCRYPT) == _has(a, OA.DECRYPT):
            if scheme != TPM_ALG.NULL:
                raise TpmError(TPM_RC.SCHEME)
        elif _has(a, OA.SIGN_ENCRYPT) and scheme != TPM_ALG.HMAC:
            raise TpmError(TPM_RC.SCHEME)
        elif _has(a, OA.DECRYPT):
            if scheme != TPM_ALG.XOR:
                raise TpmError(TPM_RC.SCHEME)
            if _has(a, OA.RESTRICTED) and p.scheme.details.kdf != TPM_ALG.KDF1_SP800_108:
                raise TpmError(TPM_RC.SCHEME)
    else:
        scheme = p.scheme.scheme
        sym = p.symmetric
        if _has(a, OA.SIGN_ENCRYPT) == _has(a, OA.DECRYPT):
            if scheme != TPM_ALG.NULL:
                raise TpmError(TPM_RC.SCHEME)
        elif _has(a, OA.SIGN_ENCRYPT):
            if scheme in SIGN_SCHEMES[public.type]:
                if p.scheme.details.hashAlg == TPM_ALG.NULL:
                    raise TpmError(TPM_RC.SCHEME)
            elif _has(a, OA.RESTRICTED) or scheme != TPM_ALG.NULL:
                raise TpmError(TPM_RC.SCHEME)
        elif _has(a, OA.DECRYPT):
            if _has(a, OA.RESTRICTED):
                if scheme != TPM_ALG.NULL:
                    raise TpmError(TPM_RC.SCHEME)
            elif scheme != TPM_ALG.NULL and scheme not in DECRYPT_SCHEMES[public.type]:
                raise TpmError(TPM_RC.SCHEME)
        if not (_has(a, OA.RESTRICTED) and _has(a, OA.DECRYPT)):
            if sym.algorithm != TPM_ALG.NULL:
                raise TpmError(TPM_RC.SYMMETRIC)
        if public.type == TPM_ALG.ECC and p.kdf.scheme != TPM_ALG.NULL:
            raise TpmError(TPM_RC.KDF)
    if sym is not None and _has(a, OA.RESTRICTED) and _has(a, OA.DECRYPT):
        if sym.algorithm == TPM_ALG.NULL:
            raise TpmError(TPM_RC.SYMMETRIC)


def is_storage_parent(public) -> bool:
    """A parent: a restricted decryption key with a symmetric algorithm (Part 1 §27.1)."""
    a = public.objectAttributes
    return (_has(a, OA.RESTRICTED) and _has(a, OA.DECRYPT) and not _has(a, OA.SIGN_ENCRYPT)
            and public.type in (TPM_ALG.RSA, TPM_ALG.ECC, TPM_ALG.SYMCIPHER))


def is_derivation_parent(public) -> bool:
    """A derivation parent: a restricted decryption keyed-hash key (Part 1 §27.1.5)."""
    a = public.objectAttributes
    return (public.type == TPM_ALG.KEYEDHASH and _has(a, OA.RESTRICTED)
            and _has(a, OA.DECRYPT) and not _has(a, OA.SIGN_ENCRYPT))
