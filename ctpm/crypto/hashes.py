"""Hash algorithms by TPM_ALG_ID (the TPM's hash table, Part 2 §6.3)."""
import hashlib

from ..wire.constants import TPM_ALG

HASH_NAMES = {TPM_ALG.SHA1: "sha1", TPM_ALG.SHA256: "sha256", TPM_ALG.SHA384: "sha384",
              TPM_ALG.SHA512: "sha512"}


def new(alg, data=b""):
    return hashlib.new(HASH_NAMES[alg], data)


def digest(alg, data: bytes) -> bytes:
    return hashlib.new(HASH_NAMES[alg], data).digest()
