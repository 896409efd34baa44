"""The TPM structures a verifier reads: TPMT_PUBLIC (the AK), TPMS_ATTEST of a quote,
TPMT_SIGNATURE, and the checks on them. Plain `struct` over the bytes received, independent of
the engine (a verifier must not share code paths with the TPM it judges)."""
import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

ALG_RSA, ALG_ECC, ALG_NULL = 0x0001, 0x0023, 0x0010
ALG_RSASSA, ALG_RSAPSS, ALG_ECDSA = 0x0014, 0x0016, 0x0018
HASHES = {0x0004: "sha1", 0x000B: "sha256", 0x000C: "sha384", 0x000D: "sha512"}
HASH_IDS = {v: k for k, v in HASHES.items()}
CURVES = {0x0003: ec.SECP256R1(), 0x0004: ec.SECP384R1(), 0x0005: ec.SECP521R1()}
TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018


class Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = bytes(data), 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self):
        return self.take(1)[0]

    def u16(self):
        return struct.unpack(">H", self.take(2))[0]

    def u32(self):
        return struct.unpack(">I", self.take(4))[0]

    def u64(self):
        return struct.unpack(">Q", self.take(8))[0]

    def b2(self) -> bytes:
        return self.take(self.u16())

    def end(self):
        if self.pos != len(self.data):
            raise ValueError("trailing bytes")


def public_key(public: bytes):
    """(cryptography public key, nameAlg, scheme, scheme hash) of a marshalled TPMT_PUBLIC
    of an RSA or ECC signing key."""
    r = Reader(public)
    kind, name_alg = r.u16(), r.u16()
    r.u32()                                         # objectAttributes
    r.b2()                                          # authPolicy
    sym = r.u16()
    if sym != ALG_NULL:
        r.u16(), r.u16()
    scheme = r.u16()
    scheme_hash = r.u16() if scheme != ALG_NULL else None
    if kind == ALG_ECC:
        curve = r.u16()
        kdf = r.u16()
        if kdf != ALG_NULL:
            r.u16()
        x, y = r.b2(), r.b2()
        r.end()
        if curve not in CURVES:
            raise ValueError(f"curve {curve:#x} is not supported")
        key = ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"),
                                            CURVES[curve]).public_key()
    elif kind == ALG_RSA:
        r.u16()                                     # keyBits
        exponent = r.u32()
        n = r.b2()
        r.end()
        key = rsa.RSAPublicNumbers(exponent or 65537, int.from_bytes(n, "big")).public_key()
    else:
        raise ValueError(f"key type {kind:#x} cannot sign")
    return key, name_alg, scheme, scheme_hash


def name_of(public: bytes) -> bytes:
    name_alg = struct.unpack(">H", public[2:4])[0]
    if name_alg not in HASHES:
        raise ValueError(f"nameAlg {name_alg:#x} is not supported")
    return struct.pack(">H", name_alg) + hashlib.new(HASHES[name_alg], public).digest()


@dataclass(frozen=True)
class Quote:
    """A TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE."""

    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    safe: int
    firmware_version: int
    selection: tuple                # ((hash name, (pcr, ...)), ...) in the quote's order
    pcr_digest: bytes

    @classmethod
    def parse(cls, data: bytes) -> "Quote":
        r = Reader(data)
        magic, kind = r.u32(), r.u16()
        signer, extra = r.b2(), r.b2()
        clock, resets, restarts, safe = r.u64(), r.u32(), r.u32(), r.u8()
        firmware = r.u64()
        if kind != TPM_ST_ATTEST_QUOTE:
            return cls(magic, kind, signer, extra, clock, resets, restarts, safe, firmware,
                       (), b"")
        selection = []
        for _ in range(r.u32()):
            alg, size = r.u16(), r.u8()
            bits = r.take(size)
            pcrs = tuple(i for i in range(size * 8) if bits[i // 8] >> (i % 8) & 1)
            selection.append((HASHES.get(alg, f"alg{alg:#x}"), pcrs))
        digest = r.b2()
        r.end()
        return cls(magic, kind, signer, extra, clock, resets, restarts, safe, firmware,
                   tuple(selection), digest)


def parse_selection(text: str) -> tuple:
    """'sha256:0,1,2+sha1:7' (tpm2-tools' form; ranges 0-7 allowed) -> ((bank, pcrs), ...)."""
    out = []
    for part in text.split("+"):
        bank, _, items = part.partition(":")
        bank = bank.strip().lower()
        if bank not in HASH_IDS or not items:
            raise ValueError(f"PCR selection {part!r} is not BANK:N,N,...")
        pcrs = set()
        for item in items.split(","):
            lo, _, hi = item.strip().partition("-")
            if not lo.isdigit() or (hi and not hi.isdigit()):
                raise ValueError(f"PCR selection {part!r}: {item!r} is not a number or range")
            pcrs.update(range(int(lo), int(hi or lo) + 1))
        if max(pcrs) > 23:
            raise ValueError(f"PCR selection {part!r}: PCRs are 0-23")
        out.append((bank, tuple(sorted(pcrs))))
    return tuple(out)


def pcr_selection(selection) -> bytes:
    """TPML_PCR_SELECTION of ((bank, (pcr, ...)), ...) (`parse_selection`)."""
    out = struct.pack(">I", len(selection))
    for bank, pcrs in selection:
        bits = bytearray(3)
        for i in pcrs:
            bits[i // 8] |= 1 << (i % 8)
        out += struct.pack(">HB", HASH_IDS[bank], 3) + bytes(bits)
    return out


def format_selection(selection) -> str:
    return "+".join(f"{bank}:{','.join(map(str, pcrs))}" for bank, pcrs in selection)


def verify_signature(key, signature: bytes, message: bytes, allowed: set):
    """Check a marshalled TPMT_SIGNATURE over `message`; returns (sigAlg, hash name).
    Raises ValueError (malformed, or a scheme not in `allowed`) or InvalidSignature."""
    r = Reader(signature)
    alg, hash_id = r.u16(), r.u16()
    name = HASHES.get(hash_id)
    if (alg, name) not in allowed:
        raise ValueError(f"signature scheme {alg:#x}/{name or hex(hash_id)} is not allowed")
    h = {"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384,
         "sha512": hashes.SHA512}[name]()
    if alg == ALG_ECDSA:
        rr, ss = r.b2(), r.b2()
        r.end()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ValueError("an ECDSA signature from a non-ECC key")
        key.verify(encode_dss_signature(int.from_bytes(rr, "big"), int.from_bytes(ss, "big")),
                   message, ec.ECDSA(h))
    elif alg in (ALG_RSASSA, ALG_RSAPSS):
        sig = r.b2()
        r.end()
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError("an RSA signature from a non-RSA key")
        pad = padding.PKCS1v15() if alg == ALG_RSASSA else padding.PSS(
            padding.MGF1(h), padding.PSS.AUTO)
        key.verify(sig, message, pad, h)
    else:
        raise ValueError(f"signature algorithm {alg:#x} is not supported")
    return alg, name


__all__ = ["InvalidSignature", "Quote", "public_key", "name_of", "parse_selection",
           "pcr_selection", "format_selection", "verify_signature"]
