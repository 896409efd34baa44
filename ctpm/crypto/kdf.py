"""Key derivation functions of TPM 2.0 Part 1 §11.4.10."""
import hmac
import struct

from .hashes import HASH_NAMES


def kdfa(hash_alg, key: bytes, label: bytes, context_u: bytes, context_v: bytes,
         bits: int) -> bytes:
    """KDFa: SP 800-108 counter mode with HMAC (Part 1 §11.4.10.2).

    `label` is given without its terminating zero; when `bits` is not a multiple of 8 the
    unused high bits of the first byte are cleared, as the specification says.
    """
    name = HASH_NAMES[hash_alg]
    n = (bits + 7) // 8
    tail = label + b"\0" + context_u + context_v + struct.pack(">I", bits)
    out = bytearray()
    counter = 1
    while len(out) < n:
        out += hmac.new(key, struct.pack(">I", counter) + tail, name).digest()
        counter += 1
    out = out[:n]
    if bits % 8:
        out[0] &= (1 << (bits % 8)) - 1
    return bytes(out)
