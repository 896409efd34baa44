"""Part 3 §12.3: TPM2_LoadExternal - a key from outside the TPM.

Public only, in any hierarchy (e.g. to verify signatures, or as the key of a PolicySigned
or PolicyAuthorize), or public and sensitive areas together in the NULL hierarchy only, and
then neither fixedTPM, fixedParent nor restricted. A nameAlg of TPM_ALG_NULL gives an
object without a Name. The checks and their codes are the reference's ObjectLoad and
CryptValidateKeys; an external object's qualified name is its Name.
"""
from ...crypto import ecmath, hashes, keys
from ...errors import TpmError
from ...wire.constants import TPM_ALG, TPM_RC, TPM_RH, TPMA_OBJECT as OA
from ...wire.structures import HASH_SIZES
from ..subsystems.object_checks import public_attributes_validation, scheme_checks
from ..subsystems.objects import Object, compute_name, free_object_handle, public_bytes

_IN_PRIVATE, _IN_PUBLIC = 1, 2


def _hmac_block_size(alg) -> int:
    return 128 if alg in (TPM_ALG.SHA384, TPM_ALG.SHA512) else 64


def validate_keys(public, sensitive, public_param=_IN_PUBLIC, sensitive_param=_IN_PRIVATE):
    """CryptValidateKeys: the public key is usable, the sensitive area fits it and, with a
    nameAlg, belongs to it. Returns the `cryptography` private key, or None. The codes name
    the public and sensitive areas' parameters (LoadExternal's by default; Import passes its
    own, as the reference's ObjectLoad takes them)."""
    name_alg = public.nameAlg
    digest_size = HASH_SIZES.get(name_alg, 0)
    p = public.parameters
    key = None
    if sensitive is not None:
        if sensitive.sensitiveType != public.type:
            raise TpmError(TPM_RC.TYPE, param=sensitive_param)
        if digest_size and len(sensitive.authValue) > digest_size:
            raise TpmError(TPM_RC.SIZE, param=sensitive_param)
    t = public.type
    if t == TPM_ALG.RSA:
        size = p.keyBits // 8
        n = public.unique
        if len(n) != size or n[0] < 0x80:
            raise TpmError(TPM_RC.KEY, param=public_param)
        if p.exponent and p.exponent < 7:
            raise TpmError(TPM_RC.VALUE, param=public_param)
        if sensitive is not None:
            prime = sensitive.sensitive
            if len(prime) * 2 != size or prime[0] < 0x80:
                raise TpmError(TPM_RC.KEY_SIZE, param=sensitive_param)
            try:     # CryptRsaLoadPrivateExponent
                numbers = keys.rsa_private_from_prime(int.from_bytes(n, "big"),
                                                      p.exponent or 65537,
                                                      int.from_bytes(prime, "big"))
                key = keys.rsa_private_key(*numbers)
            except ValueError:
                raise TpmError(TPM_RC.BINDING) from None
    elif t == TPM_ALG.ECC:
        c = ecmath.curve(p.curveID)
        u = public.unique
        if sensitive is None:
            if len(u.x) != c.size or len(u.y) != c.size:
                raise TpmError(TPM_RC.KEY, param=public_param)
            if name_alg != TPM_ALG.NULL and not ecmath.on_curve(
                    c, int.from_bytes(u.x, "big"), int.from_bytes(u.y, "big")):
                raise TpmError(TPM_RC.ECC_POINT, param=public_param)
        else:
            d = int.from_bytes(sensitive.sensitive, "big")
            if not 0 < d < c.n:
                raise TpmError(TPM_RC.KEY_SIZE)
            key = keys.ecc_private_key(p.curveID, d)
            if name_alg != TPM_ALG.NULL:
                x, y = ecmath.mul_base(c, d)
                if (int.from_bytes(u.x, "big"), int.from_bytes(u.y, "big")) != (x, y):
                    raise TpmError(TPM_RC.BINDING)
    else:       # SYMCIPHER, KEYEDHASH
        if sensitive is None:
            if len(public.unique) != digest_size:
                raise TpmError(TPM_RC.KEY, param=public_param)
        else:
            secret = sensitive.sensitive
            if t == TPM_ALG.SYMCIPHER:
                if len(secret) != p.sym.keyBits // 8:
                    raise TpmError(TPM_RC.KEY_SIZE, param=sensitive_param)
            else:
                scheme = p.scheme
                if scheme.scheme == TPM_ALG.NULL:
                    limit = 128
                else:
                    limit = _hmac_block_size(scheme.details.hashAlg)
                if len(secret) > limit:
                    raise TpmError(TPM_RC.KEY_SIZE, param=sensitive_param)
            if name_alg != TPM_ALG.NULL:
                if len(sensitive.seedValue) != digest_size:
                    raise TpmError(TPM_RC.KEY_SIZE, param=sensitive_param)
                if hashes.digest(name_alg, sensitive.seedValue + secret) != public.unique:
                    raise TpmError(TPM_RC.BINDING)
    a = public.objectAttributes
    if (a & OA.RESTRICTED and a & OA.DECRYPT and sensitive is not None
            and name_alg != TPM_ALG.NULL):
        if not digest_size // 2 <= len(sensitive.seedValue) <= digest_size:
            raise TpmError(TPM_RC.SIZE, param=sensitive_param)
    return key


def load_external(tpm, ctx, in_private, in_public, hierarchy):
    """Part 3 §12.3."""
    state = tpm.state
    handle = free_object_handle(state)
    a = in_public.objectAttributes
    if not state.hierarchy_enabled(hierarchy):
        raise TpmError(TPM_RC.HIERARCHY, param=3)
    if in_private is not None:
        if hierarchy != TPM_RH.NULL:
            raise TpmError(TPM_RC.HIERARCHY, param=3)
        if a & (OA.FIXEDTPM | OA.FIXEDPARENT | OA.RESTRICTED):
            raise TpmError(TPM_RC.ATTRIBUTES, param=_IN_PUBLIC)
    try:
        if in_private is None or in_public.nameAlg == TPM_ALG.NULL:
            scheme_checks(in_public)
        else:
            if len(in_private.seedValue) > HASH_SIZES[in_public.nameAlg]:
                raise TpmError(TPM_RC.KEY_SIZE, param=_IN_PRIVATE)
            public_attributes_validation(None, in_public)
    except TpmError as e:
        raise e.located(param=_IN_PUBLIC)
    key = validate_keys(in_public, in_private)
    raw = public_bytes(in_public)
    if in_public.nameAlg == TPM_ALG.NULL:
        name = b""
    else:
        name = compute_name(in_public.nameAlg, raw)
    state.objects[handle] = Object(public=in_public, public_bytes=raw, sensitive=in_private,
                                   hierarchy=hierarchy, name=name, qualified_name=name,
                                   key=key)
    return (handle, name)


__all__ = ["validate_keys", "load_external"]
