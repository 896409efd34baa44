"""The block ciphers of TPMT_SYM_DEF(_OBJECT) by TPM_ALG_ID: AES and SM4 (GM/T 0002-2012),
both from OpenSSL through `cryptography`, both with 16-byte blocks.

One table, so that protected storage, parameter encryption, credentials, duplication and
TPM2_EncryptDecrypt accept the same ciphers and key sizes as the unmarshaling does.
"""
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

try:    # cryptography >= 43 moved CFB to "decrepit"
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:   # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB

from ..wire.constants import TPM_ALG

BLOCK = 16
_ALGORITHMS = {TPM_ALG.AES: algorithms.AES, TPM_ALG.SM4: algorithms.SM4}
KEY_BITS = {TPM_ALG.AES: frozenset((128, 192, 256)), TPM_ALG.SM4: frozenset((128,))}


def algorithm(alg, key: bytes):
    """The `cryptography` algorithm object of cipher `alg` keyed with `key`; ValueError for
    a cipher or key size this TPM does not have."""
    if len(key) * 8 not in KEY_BITS.get(alg, ()):
        raise ValueError(f"unsupported symmetric cipher {alg!r} with {len(key) * 8}-bit key")
    return _ALGORITHMS[alg](bytes(key))


def cfb(alg, key: bytes, iv: bytes, data: bytes, encrypt: bool) -> bytes:
    """`data` en- or decrypted in CFB mode (full-block feedback, as Part 1 §11.4.8 uses)."""
    cipher = Cipher(algorithm(alg, key), CFB(bytes(iv)))
    ctx = cipher.encryptor() if encrypt else cipher.decryptor()
    return ctx.update(bytes(data)) + ctx.finalize()


__all__ = ["BLOCK", "KEY_BITS", "algorithm", "cfb", "CFB"]
