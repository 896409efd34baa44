"""Part 3 §15: symmetric commands (EncryptDecrypt, EncryptDecrypt2, HMAC).

AES or SM4 in CFB, CBC, CTR, OFB and ECB with a SYMCIPHER key. There is no padding: CBC and ECB
take whole blocks only. ivOut is what continues the chain in a next call (the reference's
CryptSymmetricEncrypt/Decrypt): the last cipher block for CBC and CFB (a partial last CFB
block padded with zeros), the next counter for CTR, the last key-stream block for OFB, and
for ECB the (empty) ivIn.
"""
import hmac

from cryptography.hazmat.primitives.ciphers import Cipher, modes

try:    # cryptography >= 43 moved CFB and OFB to "decrepit"
    from cryptography.hazmat.decrepit.ciphers.modes import CFB, OFB
except ImportError:   # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB, OFB

from ...crypto import symcipher
from ...crypto.hashes import HASH_NAMES
from ...errors import TpmError
from ...wire.constants import TPM_ALG, TPM_RC, TPMA_OBJECT as OA
from ..subsystems import keyuse

BLOCK = 16


def _run(cipher, data: bytes) -> bytes:
    return cipher.update(data) + cipher.finalize()


def aes(key: bytes, mode, iv: bytes, data: bytes, decrypt: bool, cipher=TPM_ALG.AES):
    """(outData, ivOut) of AES (or `cipher`, SM4) in a TPM mode; `data` already checked for
    the mode."""
    if not data:
        return b"", iv
    alg = symcipher.algorithm(cipher, key)
    if mode == TPM_ALG.ECB:
        c = Cipher(alg, modes.ECB())
        return _run(c.decryptor() if decrypt else c.encryptor(), data), iv
    if mode == TPM_ALG.CBC:
        c = Cipher(alg, modes.CBC(iv))
        out = _run(c.decryptor() if decrypt else c.encryptor(), data)
        return out, (data if decrypt else out)[-BLOCK:]
    if mode == TPM_ALG.CFB:
        c = Cipher(alg, CFB(iv))
        out = _run(c.decryptor() if decrypt else c.encryptor(), data)
        cipher_text = data if decrypt else out
        tail = len(data) % BLOCK or BLOCK
        return out, cipher_text[-tail:].ljust(BLOCK, b"\0")
    blocks = (len(data) + BLOCK - 1) // BLOCK
    if mode == TPM_ALG.CTR:
        out = _run(Cipher(alg, modes.CTR(iv)).encryptor(), data)
        counter = (int.from_bytes(iv, "big") + blocks) % (1 << 128)
        return out, counter.to_bytes(BLOCK, "big")
    # OFB: the key stream is E(iv), E(E(iv)), ...; ivOut is its last block
    stream = _run(Cipher(alg, OFB(iv)).encryptor(), bytes(blocks * BLOCK))
    out = (int.from_bytes(data, "big")
           ^ int.from_bytes(stream[:len(data)], "big")).to_bytes(len(data), "big")
    return out, stream[-BLOCK:]


def _encrypt_decrypt(tpm, key_handle, decrypt, mode, iv_in, in_data, pnum):
    """EncryptDecryptShared; `pnum` maps "decrypt", "mode", "ivIn", "inData" to the
    command's parameter numbers."""
    obj = tpm.state.object(key_handle)
    public = obj.public
    if public.type != TPM_ALG.SYMCIPHER:
        raise TpmError(TPM_RC.KEY, handle=1)
    a = obj.attributes
    needed = OA.DECRYPT if decrypt else OA.SIGN_ENCRYPT
    if a & OA.RESTRICTED or not a & needed:
        raise TpmError(TPM_RC.ATTRIBUTES, handle=1)
    keyuse.require_private(obj)
    sym = public.parameters.sym
    key_mode = sym.mode
    if key_mode != TPM_ALG.NULL:
        if mode != TPM_ALG.NULL and mode != key_mode:
            raise TpmError(TPM_RC.MODE, param=pnum["mode"])
    elif mode == TPM_ALG.NULL:
        raise TpmError(TPM_RC.MODE, param=pnum["mode"])
    else:
        key_mode = mode
    if (len(iv_in) != 0) if key_mode == TPM_ALG.ECB else (len(iv_in) != BLOCK):
        raise TpmError(TPM_RC.SIZE, param=pnum["ivIn"])
    if key_mode in (TPM_ALG.CBC, TPM_ALG.ECB) and len(in_data) % BLOCK:
        raise TpmError(TPM_RC.SIZE, param=pnum["inData"])
    return aes(obj.sensitive.sensitive, key_mode, iv_in, in_data, bool(decrypt), sym.algorithm)


_ED1 = {"decrypt": 1, "mode": 2, "ivIn": 3, "inData": 4}
_ED2 = {"inData": 1, "decrypt": 2, "mode": 3, "ivIn": 4}


def encrypt_decrypt(tpm, ctx, key_handle, decrypt, mode, iv_in, in_data):
    """Part 3 §15.2 (its first parameter is not a TPM2B, so it cannot be session-encrypted;
    EncryptDecrypt2 moves inData first)."""
    return _encrypt_decrypt(tpm, key_handle, decrypt, mode, iv_in, in_data, _ED1)


def encrypt_decrypt2(tpm, ctx, key_handle, in_data, decrypt, mode, iv_in):
    """Part 3 §15.3."""
    return _encrypt_decrypt(tpm, key_handle, decrypt, mode, iv_in, in_data, _ED2)


def hmac_(tpm, ctx, handle, buffer, hash_alg):
    """Part 3 §15.5: HMAC of a buffer with an unrestricted keyed-hash signing key."""
    obj = tpm.state.object(handle)
    alg = keyuse.hmac_hash(obj, hash_alg)
    return (hmac.new(obj.sensitive.sensitive, buffer, HASH_NAMES[alg]).digest(),)


__all__ = ["aes", "encrypt_decrypt", "encrypt_decrypt2", "hmac_"]
