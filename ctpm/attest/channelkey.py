"""The verifier's checks on a channel key K in composite evidence (docs/channel.md): the AK
certified K with TPM2_Certify over the evidence's nonce, and K is a key the TPM alone can use
for salts - then K is the key the TPM token confirms (`cnf`).

Checks, in order, each failing with its name:
`channel_key_format` (K's TPMT_PUBLIC and the TPMS_ATTEST parse), `channel_key_attributes`
(ECC P-256, nameAlg SHA-256, fixedTPM, fixedParent, sensitiveDataOrigin, restricted, decrypt,
not sign: a restricted decryption key never does ECDH_ZGen for a caller, so nobody learns a
session salt through it), `channel_key_certify` (magic, type TPM_ST_ATTEST_CERTIFY, signed by
the AK with an allowed scheme, qualifiedSigner = the AK's Qualified Name, extraData = SHA-256
(nonce) in constant time), `channel_key_name` (the certified Name is Name(K) as received).
"""
import hashlib
import hmac

from ..snp.errors import SnpError
from .evidence import b64u
from .tpm import (HASHES, TPM_GENERATED_VALUE, InvalidSignature, Reader, public_key,
                  verify_signature)

TPM_ST_ATTEST_CERTIFY = 0x8017
CHECKS = ("channel_key_format", "channel_key_attributes", "channel_key_certify",
          "channel_key_name")
_REQUIRED = 0x00000002 | 0x00000010 | 0x00000020 | 0x00010000 | 0x00020000
_SIGN = 0x00040000


class ChannelKeyError(SnpError):
    """A channel key refused; `check` names the rule."""


def parse_k(public: bytes) -> dict:
    r = Reader(public)
    kind, name_alg, attrs = r.u16(), r.u16(), r.u32()
    r.b2()
    sym = r.u16()
    if sym != 0x0010:
        r.u16(), r.u16()
    scheme = r.u16()
    if scheme != 0x0010:
        r.u16()
    if kind != 0x0023:
        return {"kind": kind, "name_alg": name_alg, "attributes": attrs}
    curve, kdf = r.u16(), r.u16()
    if kdf != 0x0010:
        r.u16()
    x, y = r.b2(), r.b2()
    r.end()
    return {"kind": kind, "name_alg": name_alg, "attributes": attrs, "symmetric": sym,
            "scheme": scheme, "curve": curve, "x": x, "y": y}


def verify_channel_key(public: bytes, certify: bytes, signature: bytes, *, ak: bytes,
                       ak_qualified_name: bytes, nonce: bytes, schemes) -> dict:
    """The confirmed key, as a JWK with K's Name, when every check holds."""
    try:
        k = parse_k(public)
        r = Reader(certify)
        magic, kind = r.u32(), r.u16()
        signer, extra = r.b2(), r.b2()
        r.u64(), r.u32(), r.u32(), r.u8(), r.u64()          # clockInfo, firmwareVersion
        certified_name = certified_qname = None
        if kind == TPM_ST_ATTEST_CERTIFY:
            certified_name, certified_qname = r.b2(), r.b2()
            r.end()
    except ValueError as e:
        raise ChannelKeyError("channel_key_format", f"K or its certification: {e}") from None
    attrs = k["attributes"]
    if k["kind"] != 0x0023 or k.get("curve") != 0x0003 or k["name_alg"] != 0x000B:
        raise ChannelKeyError("channel_key_attributes", "K is not an ECC P-256 key with "
                                                        "nameAlg SHA-256")
    if attrs & _REQUIRED != _REQUIRED or attrs & _SIGN:
        raise ChannelKeyError("channel_key_attributes",
                              f"K's attributes {attrs:#010x} are not a restricted decryption "
                              "key (fixedTPM, fixedParent, sensitiveDataOrigin, restricted, "
                              "decrypt, not sign)")
    if magic != TPM_GENERATED_VALUE or kind != TPM_ST_ATTEST_CERTIFY:
        raise ChannelKeyError("channel_key_certify", f"magic {magic:#x} / type {kind:#x} is "
                                                     "not a TPM-made certification")
    try:
        key = public_key(ak)[0]
        verify_signature(key, signature, certify, schemes)
    except (ValueError, InvalidSignature) as e:
        raise ChannelKeyError("channel_key_certify", f"the certification is not signed by "
                                                     f"the AK: {e or 'bad signature'}") from None
    if not hmac.compare_digest(signer, ak_qualified_name):
        raise ChannelKeyError("channel_key_certify", "qualifiedSigner is not the AK's "
                                                     "Qualified Name")
    if not hmac.compare_digest(extra, hashlib.sha256(nonce).digest()):
        raise ChannelKeyError("channel_key_certify", "extraData is not SHA-256(nonce)")
    name = k["name_alg"].to_bytes(2, "big") + hashlib.new(HASHES[k["name_alg"]],
                                                          public).digest()
    if not hmac.compare_digest(certified_name, name):
        raise ChannelKeyError("channel_key_name", "the certified Name is not the Name of "
                                                  "the channel key given")
    return {"kty": "EC", "crv": "P-256", "x": b64u(k["x"]), "y": b64u(k["y"]),
            "kid": name.hex()}
