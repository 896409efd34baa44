"""Hash algorithms by TPM_ALG_ID (the TPM's hash table, Part 2 §6.3).

SM3_256 (GM/T 0004) comes from OpenSSL like the SHA family (hashlib's "sm3"); it is a hash
of every purpose - names, HMAC, KDFs, policies, signatures - but not a PCR bank
(`wire.structures.PCR_HASHES`).
"""
import hashlib

from ..wire.constants import TPM_ALG

HASH_NAMES = {TPM_ALG.SHA1: "sha1", TPM_ALG.SHA256: "sha256", TPM_ALG.SHA384: "sha384",
              TPM_ALG.SHA512: "sha512", TPM_ALG.SM3_256: "sm3"}


def new(alg, data=b""):
    return hashlib.new(HASH_NAMES[alg], data)


def digest(alg, data: bytes) -> bytes:
    return hashlib.new(HASH_NAMES[alg], data).digest()
