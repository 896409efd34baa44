"""Part 3 §13: duplication - TPM2_Duplicate (§13.1), TPM2_Rewrap (§13.2), TPM2_Import (§13.3).

A duplication blob (Part 1 §23.3) is the object's TPM2B_SENSITIVE under up to two wraps,
the reference's SensitiveToDuplicate / DuplicateToSensitive:

* inner (optional, symmetricAlg not TPM_ALG_NULL): AES-CFB with a zero IV under
  encryptionKey over TPM2B_DIGEST(H_objectNameAlg(sensitive || Name)) || sensitive
  (`protect.inner_wrap`);
* outer (when there is a new parent): seed = secret.encrypt_seed(newParent, "DUPLICATE"),
  sent as inSymSeed/outSymSeed, and the zero-IV outer wrap of `protect.protect` with the new
  parent's nameAlg and AES key size, keyed by the Name of the duplicated object.

Import opens both wraps and returns an ordinary TPM2B_PRIVATE under the new parent, made as
TPM2_Create makes one (with an IV), so that TPM2_Load takes it; under a fixedTPM parent it
first validates the key as the reference's ObjectLoad does. Rewrap replaces the outer wrap
and leaves the inner one alone.

Duplicate needs the DUP role for objectHandle: a policy session with
TPM2_PolicyCommandCode(TPM_CC_Duplicate) or TPM2_PolicyDuplicationSelect. Until ctpm has
policy sessions the dispatcher refuses every authorization of it (the reference answers
TPM_RC_AUTH_TYPE for a password or HMAC session; ctpm's dispatcher, TPM_RC_AUTH_UNAVAILABLE),
so only the handler's semantics can be tested (tests/test_duplication.py calls it directly).
"""
import io

from construct import Container

from ...crypto import protect, secret
from ...errors import TpmError
from ...wire.constants import TPM_ALG, TPM_RC, TPM_RH, TPMA_OBJECT as OA
from ...wire.objects import SIZEOF_PRIVATE, TPM2B_SENSITIVE, TPMT_SENSITIVE
from ...wire.structures import HASH_SIZES
from ..subsystems.keyuse import private_key
from .external import validate_keys
from .object import _sym_alg, _sym_bits
from ..subsystems.object_checks import public_attributes_validation
from ..subsystems.objects import compute_name, public_bytes

_SIZE_FIELD = 2      # a marshaled UINT16 size


def is_storage(obj) -> bool:
    """The reference's ObjectIsStorage: a restricted decryption RSA or ECC key, not signing."""
    a = obj.public.objectAttributes
    return (bool(a & OA.RESTRICTED) and bool(a & OA.DECRYPT) and not a & OA.SIGN_ENCRYPT
            and obj.public.type in (TPM_ALG.RSA, TPM_ALG.ECC))


def is_parent(obj) -> bool:
    """The reference's ObjectIsParent (isParent, set when an object is loaded): a restricted
    decryption key with a private part that is not a derivation parent (KEYEDHASH)."""
    a = obj.public.objectAttributes
    return (bool(a & OA.RESTRICTED) and bool(a & OA.DECRYPT) and obj.sensitive is not None
            and obj.public.type != TPM_ALG.KEYEDHASH and obj.public.nameAlg != TPM_ALG.NULL)


def _padded_auth(sensitive, name_alg):
    """MarshalSensitive pads the authValue with zeros to the nameAlg's digest size."""
    auth = bytes(sensitive.authValue)
    size = HASH_SIZES.get(name_alg, 0)
    if len(auth) < size:
        auth += bytes(size - len(auth))
    return Container(sensitive, authValue=auth)


def _inner_key_bytes(symmetric_alg) -> int:
    return (symmetric_alg.keyBits + 7) // 8


# -- TPM2_Duplicate ----------------------------------------------------------------------------

def duplicate(tpm, ctx, object_handle, new_parent_handle, encryption_key_in, symmetric_alg):
    """Part 3 §13.1: the loaded object's sensitive area, wrapped for a new parent (or none)."""
    state = tpm.state
    obj = state.object(object_handle)
    if obj.sensitive is None:       # public only: no policy can authorize it (reference)
        raise TpmError(TPM_RC.AUTH_UNAVAILABLE)
    a = obj.attributes
    if a & OA.FIXEDPARENT:
        raise TpmError(TPM_RC.ATTRIBUTES, handle=1)
    if obj.public.nameAlg == TPM_ALG.NULL:
        raise TpmError(TPM_RC.TYPE, handle=1)
    new_parent = None
    if new_parent_handle != TPM_RH.NULL:
        new_parent = state.object(new_parent_handle)
        if not is_storage(new_parent):
            raise TpmError(TPM_RC.TYPE, handle=2)
    inner = symmetric_alg.algorithm != TPM_ALG.NULL
    if a & OA.ENCRYPTEDDUPLICATION:
        if not inner:
            raise TpmError(TPM_RC.SYMMETRIC, param=2)
        if new_parent is None:
            raise TpmError(TPM_RC.HIERARCHY, handle=2)
    if not inner:
        if encryption_key_in:
            raise TpmError(TPM_RC.SIZE, param=1)
    elif encryption_key_in and len(encryption_key_in) != _inner_key_bytes(symmetric_alg):
        raise TpmError(TPM_RC.SIZE, param=1)

    seed = out_sym_seed = b""
    if new_parent is not None:
        seed, out_sym_seed = secret.encrypt_seed(new_parent.public, secret.LABEL_DUPLICATE,
                                                 state.drbg.generate)
    data = TPM2B_SENSITIVE.build(_padded_auth(obj.sensitive, obj.public.nameAlg))
    key_out = b""
    if inner:
        key = encryption_key_in
        if not key:                 # the TPM chooses the key and returns it
            key = key_out = state.drbg.generate(_inner_key_bytes(symmetric_alg))
        data = protect.inner_wrap(data, obj.name, obj.public.nameAlg, key,
                                  symmetric_alg.algorithm)
    if seed:
        data = protect.protect(data, obj.name, seed, new_parent.public.nameAlg,
                               _sym_bits(new_parent.public), sym_alg=_sym_alg(new_parent.public))
    return (key_out, data, out_sym_seed)


# -- TPM2_Rewrap -------------------------------------------------------------------------------

def rewrap(tpm, ctx, old_parent_handle, new_parent_handle, in_duplicate, name, in_sym_seed):
    """Part 3 §13.2: move a duplication blob's outer wrap from one parent to another (either
    may be TPM_RH_NULL: no outer wrap); the inner wrap, if any, is untouched."""
    state = tpm.state
    if bool(in_sym_seed) != (old_parent_handle != TPM_RH.NULL):
        raise TpmError(TPM_RC.HANDLE, handle=1)
    if old_parent_handle != TPM_RH.NULL:
        old = state.object(old_parent_handle)
        if not is_storage(old):
            raise TpmError(TPM_RC.TYPE, handle=1)
        key = private_key(old)
        try:
            seed = secret.decrypt_seed(old.public, key, secret.LABEL_DUPLICATE, in_sym_seed)
        except TpmError:
            raise TpmError(TPM_RC.VALUE, param=3) from None
        try:
            private = protect.unprotect(in_duplicate, name, seed, old.public.nameAlg,
                                        _sym_bits(old.public), sym_alg=_sym_alg(old.public))
        except TpmError as e:
            raise e.located(param=1)
    else:
        private = bytes(in_duplicate)
    if new_parent_handle == TPM_RH.NULL:
        return (private, b"")
    new = state.object(new_parent_handle)
    if not is_storage(new):
        raise TpmError(TPM_RC.TYPE, handle=2)
    seed, out_sym_seed = secret.encrypt_seed(new.public, secret.LABEL_DUPLICATE,
                                             state.drbg.generate)
    if len(private) + _SIZE_FIELD + HASH_SIZES[new.public.nameAlg] > SIZEOF_PRIVATE:
        raise TpmError(TPM_RC.VALUE, param=1)
    out = protect.protect(private, name, seed, new.public.nameAlg, _sym_bits(new.public),
                          sym_alg=_sym_alg(new.public))
    return (out, out_sym_seed)


# -- TPM2_Import -------------------------------------------------------------------------------

def _duplicate_to_sensitive(blob, name, parent, name_alg, seed, symmetric_alg, key):
    """DuplicateToSensitive: the TPMT_SENSITIVE inside a duplication blob (errors without a
    locus: the caller names the duplicate parameter)."""
    data = bytes(blob)
    if seed:
        data = protect.unprotect(data, name, seed, parent.public.nameAlg,
                                 _sym_bits(parent.public), sym_alg=_sym_alg(parent.public))
    if symmetric_alg.algorithm != TPM_ALG.NULL:
        data = protect.inner_unwrap(data, name, name_alg, key, symmetric_alg.algorithm)
    if len(data) < _SIZE_FIELD:
        raise TpmError(TPM_RC.INSUFFICIENT)
    if int.from_bytes(data[:2], "big") + _SIZE_FIELD != len(data):
        raise TpmError(TPM_RC.SIZE)
    stream = io.BytesIO(data[2:])
    sensitive = TPMT_SENSITIVE.parse_stream(stream)     # TpmError as the reference unmarshals
    if stream.tell() != len(data) - _SIZE_FIELD:
        raise TpmError(TPM_RC.SIZE)
    return sensitive


def _validate_keys(public, sensitive):
    """ObjectLoad's checks on an object imported under a fixedTPM parent (the reference then
    skips them at TPM2_Load): the seed's size, the public attributes, then CryptValidateKeys,
    with parameter 3 (duplicate) or 2 (objectPublic)."""
    if len(sensitive.seedValue) > HASH_SIZES[public.nameAlg]:
        raise TpmError(TPM_RC.KEY_SIZE, param=3)
    try:
        public_attributes_validation(None, public)
    except TpmError as e:
        raise e.located(param=2)
    return validate_keys(public, sensitive, public_param=2, sensitive_param=3)


def import_(tpm, ctx, parent_handle, encryption_key, object_public, duplicate_blob,
            in_sym_seed, symmetric_alg):
    """Part 3 §13.3: a duplication blob becomes a TPM2B_PRIVATE under the parent."""
    state = tpm.state
    a = object_public.objectAttributes
    if a & (OA.FIXEDTPM | OA.FIXEDPARENT):
        raise TpmError(TPM_RC.ATTRIBUTES, param=2)
    parent = state.object(parent_handle)
    if not is_parent(parent):
        raise TpmError(TPM_RC.TYPE, handle=1)
    inner = symmetric_alg.algorithm != TPM_ALG.NULL
    if inner:
        if len(encryption_key) != _inner_key_bytes(symmetric_alg):
            raise TpmError(TPM_RC.SIZE, param=1)
    else:
        if encryption_key:
            raise TpmError(TPM_RC.SIZE, param=1)
        if a & OA.ENCRYPTEDDUPLICATION:
            raise TpmError(TPM_RC.ATTRIBUTES, param=1)
    if in_sym_seed:
        if parent.public.type == TPM_ALG.SYMCIPHER:
            raise TpmError(TPM_RC.TYPE, handle=1)
        try:
            seed = secret.decrypt_seed(parent.public, private_key(parent),
                                       secret.LABEL_DUPLICATE, in_sym_seed)
        except TpmError as e:
            raise e.located(param=4)
    else:
        if a & OA.ENCRYPTEDDUPLICATION:
            raise TpmError(TPM_RC.ATTRIBUTES, param=4)
        seed = b""
    name = compute_name(object_public.nameAlg, public_bytes(object_public))
    try:
        sensitive = _duplicate_to_sensitive(duplicate_blob, name, parent,
                                            object_public.nameAlg, seed, symmetric_alg,
                                            encryption_key)
    except TpmError as e:
        raise e.located(param=3)
    if parent.attributes & OA.FIXEDTPM:
        _validate_keys(object_public, sensitive)
    sensitive = _padded_auth(sensitive, object_public.nameAlg)
    private = protect.protect(TPM2B_SENSITIVE.build(sensitive), name,
                              parent.sensitive.seedValue, parent.public.nameAlg,
                              _sym_bits(parent.public), iv=state.drbg.generate(16),
                              sym_alg=_sym_alg(parent.public))
    return (private,)
