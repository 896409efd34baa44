"""Part 3 §12.5 TPM2_ActivateCredential and §12.6 TPM2_MakeCredential (Part 1 §24).

A credential is a small secret (a TPM2B_DIGEST, at most the key's nameAlg digest) bound to
the Name of an object, for a TPM that holds a restricted decryption key:

    seed, secret   = secret.encrypt_seed(key, "IDENTITY")
    credentialBlob = outer wrap of the marshaled TPM2B_DIGEST credential (protect.protect,
                     zero IV, no TPM2B_IV): symKey = KDFa(key nameAlg, seed, "STORAGE",
                     objectName, "", key's AES bits), HMAC key = KDFa(..., "INTEGRITY", ...)
                     and the HMAC over encrypted data || objectName

as the reference's SecretToCredential / CredentialToSecret. ActivateCredential recovers the
seed with the key's private half and checks the HMAC with the Name of `activateHandle`, so
the credential opens only on the TPM holding both the key and the named object.
"""
from ...crypto import protect, secret
from ...errors import TpmError
from ...wire.constants import TPM_ALG, TPM_RC, TPMA_OBJECT as OA
from ..subsystems.keyuse import private_key
from .object import _sym_alg, _sym_bits

_ASYMMETRIC = (TPM_ALG.RSA, TPM_ALG.ECC)
_MAX_DIGEST = 64


def _is_identity_key(public) -> bool:
    """An asymmetric, restricted decryption key (the reference's test in both commands)."""
    a = public.objectAttributes
    return public.type in _ASYMMETRIC and bool(a & OA.DECRYPT) and bool(a & OA.RESTRICTED)


def make_credential(tpm, ctx, handle, credential, object_name):
    """Part 3 §12.6: needs only the key's public area (no authorization)."""
    key = tpm.state.object(handle)
    public = key.public
    if not _is_identity_key(public):
        raise TpmError(TPM_RC.TYPE, handle=1)
    if len(credential) > secret.digest_size(public.nameAlg):
        raise TpmError(TPM_RC.SIZE, param=1)
    seed, encrypted = secret.encrypt_seed(public, secret.LABEL_IDENTITY,
                                          tpm.state.drbg.generate)
    blob = protect.protect(len(credential).to_bytes(2, "big") + credential, object_name, seed,
                           public.nameAlg, _sym_bits(public), sym_alg=_sym_alg(public))
    return (blob, encrypted)


def activate_credential(tpm, ctx, activate_handle, key_handle, credential_blob, encrypted):
    """Part 3 §12.5: the credential, if the blob was made for this key and the Name of the
    object at activateHandle (TPM_RC_INTEGRITY on parameter 1 otherwise)."""
    state = tpm.state
    key = state.object(key_handle)
    activated = state.object(activate_handle)
    public = key.public
    if not _is_identity_key(public):
        raise TpmError(TPM_RC.TYPE, handle=2)
    try:
        seed = secret.decrypt_seed(public, private_key(key), secret.LABEL_IDENTITY, encrypted)
    except TpmError as e:
        if e.rc == TPM_RC.KEY:
            raise TpmError(TPM_RC.FAILURE) from None
        raise e.located(param=2)
    try:
        data = protect.unprotect(credential_blob, activated.name, seed, public.nameAlg,
                                 _sym_bits(public), sym_alg=_sym_alg(public))
    except TpmError as e:
        raise e.located(param=1)
    # CredentialToSecret: the decrypted part must be exactly one TPM2B_DIGEST
    if len(data) < 2:
        raise TpmError(TPM_RC.INSUFFICIENT, param=1)
    size = int.from_bytes(data[:2], "big")
    if size > _MAX_DIGEST:
        raise TpmError(TPM_RC.SIZE, param=1)
    if len(data) - 2 < size:
        raise TpmError(TPM_RC.INSUFFICIENT, param=1)
    if len(data) - 2 != size:
        raise TpmError(TPM_RC.SIZE, param=1)
    return (data[2:],)
