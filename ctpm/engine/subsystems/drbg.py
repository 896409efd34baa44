"""HMAC_DRBG (NIST SP 800-90A §10.1.2) with SHA-256: the TPM's random number generator.

A DRBG rather than os.urandom directly so that a TPM manufactured with a fixed test seed
produces repeatable random bytes, and so that TPM2_StirRandom has something to stir.
"""
import hashlib
import hmac


class HmacDrbg:
    def __init__(self, entropy: bytes, personalization: bytes = b""):
        self._k = b"\0" * 32
        self._v = b"\1" * 32
        self._update(entropy + personalization)

    def _update(self, data: bytes):
        self._k = hmac.new(self._k, self._v + b"\0" + data, hashlib.sha256).digest()
        self._v = hmac.new(self._k, self._v, hashlib.sha256).digest()
        if data:
            self._k = hmac.new(self._k, self._v + b"\1" + data, hashlib.sha256).digest()
            self._v = hmac.new(self._k, self._v, hashlib.sha256).digest()

    def reseed(self, data: bytes):
        """Mix in more entropy or caller data (TPM2_StirRandom)."""
        self._update(data)

    def generate(self, n: int) -> bytes:
        out = bytearray()
        k, v = self._k, self._v
        while len(out) < n:
            v = hmac.new(k, v, hashlib.sha256).digest()
            out += v
        self._v = v
        self._update(b"")
        return bytes(out[:n])
