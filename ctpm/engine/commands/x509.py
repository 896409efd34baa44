"""Part 3 §18.8 TPM2_CertifyX509: the TPM completes and signs a caller's partial X.509
certificate for one of its keys.

The caller sends the TBSCertificate without version, serial number, subject public key and
(optionally) the signature algorithm: a DER SEQUENCE of [signature AlgorithmIdentifier],
issuer, validity, subject and the [3] extensions, which must hold a keyUsage that fits the
key's attributes and may hold the TCG TPMA_OBJECT extension (equal to the key's attributes).
The TPM returns what it added (version, a serial number derived from the certificate's
contents and both Names, the signature algorithm if it chose it, the SubjectPublicKeyInfo),
the digest of the whole TBSCertificate, and its signature. The DER reading follows the
reference's TpmASN1.c (its limits: lengths below 0x8000, short tags only), so malformed input
gets the reference's answers.
"""
from ...crypto import hashes
from ...errors import TpmError
from ...crypto.rsapad import pss_salt_size
from ...wire.constants import TPM_ALG, TPM_RC, TPM_RH
from ...wire.structures import HASH_SIZES
from ..subsystems import keyuse
from .attest import signing_key
from .signature import sign_digest

SEQUENCE, INTEGER, BIT_STRING, OCTET_STRING, NULL, OID = 0x30, 0x02, 0x03, 0x04, 0x05, 0x06
EXTENSIONS = 0xA3           # [3] in TBSCertificate
SERIAL_SIZE = 20            # SIZE_OF_X509_SERIAL_NUMBER
RSA_DEFAULT_EXPONENT = 65537


def _oid(dotted: str) -> bytes:
    """DER of an OBJECT IDENTIFIER (tag and length included)."""
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray((40 * parts[0] + parts[1],))
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        body += bytes(reversed(chunk))
    return bytes((OID, len(body))) + bytes(body)


OID_KEY_USAGE = _oid("2.5.29.15")
OID_TCG_TPMA_OBJECT = _oid("2.23.133.10.1.1.1")
OID_RSA_ENCRYPTION = _oid("1.2.840.113549.1.1.1")
OID_MGF1 = _oid("1.2.840.113549.1.1.8")
OID_RSAPSS = _oid("1.2.840.113549.1.1.10")
OID_EC_PUBLIC_KEY = _oid("1.2.840.10045.2.1")
HASH_OIDS = {TPM_ALG.SHA1: _oid("1.3.14.3.2.26"),
             TPM_ALG.SHA256: _oid("2.16.840.1.101.3.4.2.1"),
             TPM_ALG.SHA384: _oid("2.16.840.1.101.3.4.2.2"),
             TPM_ALG.SHA512: _oid("2.16.840.1.101.3.4.2.3")}
RSASSA_OIDS = {TPM_ALG.SHA1: _oid("1.2.840.113549.1.1.5"),
               TPM_ALG.SHA256: _oid("1.2.840.113549.1.1.11"),
               TPM_ALG.SHA384: _oid("1.2.840.113549.1.1.12"),
               TPM_ALG.SHA512: _oid("1.2.840.113549.1.1.13")}
ECDSA_OIDS = {TPM_ALG.SHA1: _oid("1.2.840.10045.4.1"),
              TPM_ALG.SHA256: _oid("1.2.840.10045.4.3.2"),
              TPM_ALG.SHA384: _oid("1.2.840.10045.4.3.3"),
              TPM_ALG.SHA512: _oid("1.2.840.10045.4.3.4")}
CURVE_OIDS = {0x0003: _oid("1.2.840.10045.3.1.7"),       # NIST P-256
              0x0004: _oid("1.3.132.0.34"),               # NIST P-384
              0x0005: _oid("1.3.132.0.35"),               # NIST P-521
              0x0020: _oid("1.2.156.10197.1.301")}        # SM2 P-256

# TPMA_X509_KEY_USAGE: the keyUsage BIT STRING left-justified in 32 bits
KU_DIGITAL_SIGNATURE, KU_NON_REPUDIATION, KU_KEY_ENCIPHERMENT = 1 << 31, 1 << 30, 1 << 29
KU_DATA_ENCIPHERMENT, KU_KEY_AGREEMENT, KU_KEY_CERT_SIGN = 1 << 28, 1 << 27, 1 << 26
KU_CRL_SIGN, KU_ENCIPHER_ONLY, KU_DECIPHER_ONLY = 1 << 25, 1 << 24, 1 << 23
KU_ALLOWED = 0xFF800000
KU_SIGN = KU_DIGITAL_SIGNATURE | KU_KEY_CERT_SIGN | KU_CRL_SIGN
KU_DECRYPT = (KU_KEY_ENCIPHERMENT | KU_DATA_ENCIPHERMENT | KU_KEY_AGREEMENT
              | KU_ENCIPHER_ONLY | KU_DECIPHER_ONLY)
_SIGN, _DECRYPT, _FIXED_TPM, _RESTRICTED = 1 << 18, 1 << 17, 1 << 1, 1 << 16


class _Malformed(Exception):
    """The reference's failed unmarshaling context (size -1)."""


# -- reading DER as the reference does ----------------------------------------------------------

class _Reader:
    def __init__(self, buf: bytes, offset: int = 0, size: int | None = None):
        self.buf = buf
        self.offset = offset
        self.size = len(buf) if size is None else size
        self.tag = None

    def _octet(self) -> int:
        if self.offset >= self.size:
            raise _Malformed
        b = self.buf[self.offset]
        self.offset += 1
        return b

    def next_tag(self) -> int:
        """ASN1NextTag: read a tag and its length; the length must fit the context."""
        self.tag = self._octet()
        if self.tag & 0x1F == 0x1F:
            raise _Malformed
        first = self._octet()
        if first == 0x81:
            length = self._octet()
        elif first == 0x82:
            high = self._octet()
            if high >= 0x80:
                raise _Malformed
            length = (high << 8) | self._octet()
        elif first >= 0x80:
            raise _Malformed
        else:
            length = first
        if self.offset + length > self.size:
            raise _Malformed
        return length

    def bit_string_value(self) -> int:
        """ASN1GetBitStringValue: up to 32 bits, left-justified."""
        length = self.next_tag()
        if length < 1 or self.tag != BIT_STRING:
            raise _Malformed
        shift = self._octet()
        length -= 1
        bits = 8 * length - shift
        if shift >= 8 or (length == 0 and shift):
            raise _Malformed
        value = 0
        while length > 1:
            if value & 0xFF000000:
                raise _Malformed
            value = (value << 8) | self._octet()
            length -= 1
        if length == 1:
            if value & ((0xFF000000 << (8 - shift)) & 0xFFFFFFFF):
                raise _Malformed
            value = ((value << (8 - shift)) | (self._octet() >> shift)) & 0xFFFFFFFF
        if bits > 0:
            value = (value << (32 - bits)) & 0xFFFFFFFF
        return value


def _find_extension(reader: _Reader, oid: bytes):
    """X509FindExtensionByOID: a reader over the extension whose first element is `oid`,
    or None; a malformed list raises."""
    r = _Reader(reader.buf, reader.offset, reader.size)
    while r.size > r.offset:
        length = r.next_tag()
        if r.tag != SEQUENCE:
            raise _Malformed
        if length >= len(oid) and r.buf[r.offset:r.offset + len(oid)] == oid:
            return _Reader(r.buf, r.offset, r.offset + length)
        r.offset += length
    return None


def _extension_bits(r: _Reader) -> int:
    """X509GetExtensionBits: the BIT STRING inside the extension's OCTET STRING."""
    while True:
        length = r.next_tag()
        if length <= 0 or r.size <= r.offset:
            raise _Malformed
        if r.tag == OCTET_STRING:
            return r.bit_string_value()
        r.offset += length


def _check_extensions(extensions: bytes, attributes: int):
    """X509ProcessExtensions: the TPM_RC (RCS form) that refuses them, or None."""
    try:
        r = _Reader(extensions)
        r.next_tag()
        if r.tag != EXTENSIONS:
            return TPM_RC.VALUE
        r.next_tag()
        if r.tag != SEQUENCE:
            return TPM_RC.VALUE
        found = _find_extension(r, OID_TCG_TPMA_OBJECT)
        if found is not None and _extension_bits(found) != attributes:
            return TPM_RC.ATTRIBUTES
        found = _find_extension(r, OID_KEY_USAGE)
        if found is None:
            return TPM_RC.VALUE
        usage = _extension_bits(found)
    except _Malformed:
        return TPM_RC.VALUE
    if usage & ~KU_ALLOWED & 0xFFFFFFFF:
        return TPM_RC.RESERVED_BITS
    if ((usage & KU_SIGN and not attributes & _SIGN)
            or (usage & KU_DECRYPT and not attributes & _DECRYPT)
            or (usage & KU_NON_REPUDIATION and not attributes & _FIXED_TPM)
            or (usage & KU_KEY_ENCIPHERMENT and not attributes & _RESTRICTED)):
        return TPM_RC.VALUE
    return None


def _split_partial(partial: bytes):
    """The partial certificate's elements: (sequences, extensions), or raise TpmError."""
    if not partial:
        raise TpmError(TPM_RC.VALUE, param=3)
    r = _Reader(partial)
    try:
        length = r.next_tag()
    except _Malformed:
        raise TpmError(TPM_RC.SIZE, param=3) from None
    if r.tag != SEQUENCE or r.offset + length != len(partial):
        raise TpmError(TPM_RC.SIZE, param=3)
    sequences, extensions = [], None
    while r.offset < r.size:
        start = r.offset
        try:
            length = r.next_tag()
        except _Malformed:
            break
        if r.tag == SEQUENCE:
            r.offset += length
            sequences.append(partial[start:r.offset])
            if len(sequences) > 4:
                break
        elif r.tag == EXTENSIONS:
            if extensions is not None:
                raise TpmError(TPM_RC.VALUE, param=3)
            r.offset += length
            extensions = partial[start:r.offset]
        else:
            raise TpmError(TPM_RC.VALUE, param=3)
    if r.offset != r.size or not 3 <= len(sequences) <= 4 or extensions is None:
        raise TpmError(TPM_RC.VALUE, param=3)
    return sequences, extensions


# -- writing DER ---------------------------------------------------------------------------------

def _tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        length = bytes((n,))
    elif n < 0x100:
        length = bytes((0x81, n))
    else:
        length = bytes((0x82, n >> 8, n & 0xFF))
    return bytes((tag,)) + length + body


def _integer(value: bytes) -> bytes:
    """ASN1PushInteger: no leading zeros, a zero byte in front of a set high bit."""
    value = value.lstrip(b"\0") or b"\0"
    if value[0] & 0x80:
        value = b"\0" + value
    return _tlv(INTEGER, value)


def _alg_id(oid: bytes, null: bool = True) -> bytes:
    return _tlv(SEQUENCE, oid + (b"\x05\x00" if null else b""))


def public_key_info(obj) -> bytes | None:
    """X509AddPublicKey: the SubjectPublicKeyInfo of an RSA or ECC key (None otherwise)."""
    public = obj.public
    if public.type == TPM_ALG.RSA:
        exponent = public.parameters.exponent or RSA_DEFAULT_EXPONENT
        key = _tlv(SEQUENCE, _integer(bytes(public.unique)) + _integer(exponent.to_bytes(4, "big")))
        return _tlv(SEQUENCE, _alg_id(OID_RSA_ENCRYPTION) + _tlv(BIT_STRING, b"\0" + key))
    if public.type == TPM_ALG.ECC:
        curve = CURVE_OIDS.get(public.parameters.curveID)
        if curve is None:
            return None
        point = b"\x04" + bytes(public.unique.x) + bytes(public.unique.y)
        return _tlv(SEQUENCE, _tlv(SEQUENCE, OID_EC_PUBLIC_KEY + curve)
                    + _tlv(BIT_STRING, b"\0" + point))
    return None


def signature_algorithm(sign_obj, scheme) -> bytes | None:
    """X509AddSigningAlgorithm: the AlgorithmIdentifier for the scheme, None if X.509 has
    none (ECSCHNORR, ECDAA, HMAC, ...)."""
    alg = scheme.details.hashAlg
    if scheme.scheme == TPM_ALG.RSASSA and alg in RSASSA_OIDS:
        return _alg_id(RSASSA_OIDS[alg])
    if scheme.scheme == TPM_ALG.RSAPSS and alg in HASH_OIDS:
        if alg == TPM_ALG.SHA1:
            return _alg_id(OID_RSAPSS)
        _n, _e, k = keyuse.rsa_modulus(sign_obj)
        hash_id = _alg_id(HASH_OIDS[alg])
        params = _tlv(SEQUENCE, _tlv(0xA0, hash_id)
                      + _tlv(0xA1, _tlv(SEQUENCE, OID_MGF1 + hash_id))
                      + _tlv(0xA2, _integer(pss_salt_size(HASH_SIZES[alg], k)
                                            .to_bytes(4, "big"))))
        return _tlv(SEQUENCE, OID_RSAPSS + params)
    if scheme.scheme == TPM_ALG.ECDSA and alg in ECDSA_OIDS:
        return _tlv(SEQUENCE, ECDSA_OIDS[alg])
    return None


# -- the command ---------------------------------------------------------------------------------

def certify_x509(tpm, ctx, object_handle, sign_handle, reserved, in_scheme, partial):
    """Part 3 §18.8 (the reference's order of checks)."""
    if reserved:
        raise TpmError(TPM_RC.SIZE, param=1)
    if sign_handle == TPM_RH.NULL:
        # the reference has no answer (it would dereference the missing key): no key
        raise TpmError(TPM_RC.KEY, handle=2)
    sign_obj, scheme = signing_key(tpm, sign_handle, in_scheme, handle=2, param=2)
    obj = tpm.state.object(object_handle)
    spki = public_key_info(obj)
    if spki is None:
        raise TpmError(TPM_RC.ASYMMETRIC, handle=1)
    partial = bytes(partial)
    sequences, extensions = _split_partial(partial)
    sig_alg = signature_algorithm(sign_obj, scheme)
    if len(sequences) == 3 and sig_alg is None:
        raise TpmError(TPM_RC.SCHEME, handle=2)
    rc = _check_extensions(extensions, obj.attributes)
    if rc == TPM_RC.ATTRIBUTES:
        raise TpmError(rc, handle=1)
    if rc is not None:
        raise TpmError(rc, param=3)
    provided_alg = len(sequences) == 4
    signature_ref = sequences[0] if provided_alg else sig_alg
    issuer, validity, subject = sequences[-3:]
    tail = signature_ref + issuer + validity + subject + spki + extensions
    serial = hashes.digest(sign_obj.public.nameAlg, tail + sign_obj.name + obj.name)
    serial = _integer(serial[:SERIAL_SIZE])
    version = _tlv(0xA0, _integer(b"\x02"))
    body = version + serial + tail
    tbs_header = _tlv(SEQUENCE, body)[:-len(body)]
    tbs_digest = hashes.digest(scheme.details.hashAlg, tbs_header + body)
    added = version + serial + (b"" if provided_alg else sig_alg) + spki
    signature = sign_digest(tpm, sign_obj, scheme, tbs_digest)
    return _tlv(SEQUENCE, added), tbs_digest, signature
