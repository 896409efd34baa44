"""Credential activation against an EK (Part 1 §24), the proof that an AK lives in the same
TPM as an EK, and the EK certificate check.

* `make_credential(ek_public, ak_name, secret)`: TPM2_MakeCredential in software: what a
  verifier (or ctpm inside the CVM) does with nothing but the EK's public area. Only the TPM
  holding that EK's private key can open it, and it opens it only for an object with that
  Name loaded beside the EK (ActivateCredential checks the HMAC over the AK's Name).
* `activate(client, ...)`: ActivateCredential on the TPM, with the EK's PolicySecret
  (TPM_RH_ENDORSEMENT) session, as a TCG EK requires.
* `check_ek_certificate(der, ek_public, cas, intermediates=)`: the EK certificate chains to
  one of the CAs (issuer signatures, validity), through the TPM's own EK certificate chain
  when it has one, and certifies exactly this EK's public key.
* `read_ek_chain(client)`: that chain, from NV 0x01C00100-0x01C001FF (TCG EK Credential
  Profile 2.5 §2.2.1.5.2: DER certificates, concatenated, in any order, overflowing into the
  next index; Intel's on-die CA TPMs sign EK certificates with device-unique intermediates,
  so their EK certificate verifies against the vendor's root only through it).
"""
import datetime
import os
import struct

from .tpmclient import RH_ENDORSEMENT, b2, policy_session, pw, u16, u32

RSA_EK_CERT_INDEX, ECC_EK_CERT_INDEX = 0x01C00002, 0x01C0000A
EK_CHAIN_FIRST, EK_CHAIN_LAST = 0x01C00100, 0x01C001FF
MAX_CHAIN_BYTES = 16384         # the most of a chain a manifest carries (a few certificates)
MAX_CHAIN_DEPTH = 8             # intermediates between an EK certificate and its anchor
CC_POLICY_SECRET, CC_ACTIVATE_CREDENTIAL = 0x151, 0x147


class CredentialError(Exception):
    """The credential did not open, or an EK certificate does not hold (str(): why)."""


def make_credential(ek_public: bytes, ak_name: bytes, secret: bytes) -> tuple[bytes, bytes]:
    """(credentialBlob, encryptedSecret) - the TPM2B buffers TPM2_MakeCredential returns -
    for `secret` (at most the EK's nameAlg digest) bound to `ak_name`, under the EK whose
    TPMT_PUBLIC is `ek_public`."""
    from ..crypto import protect, secret as seeds
    from ..wire.constants import TPM_ALG
    from ..wire.objects import TPMT_PUBLIC
    public = TPMT_PUBLIC.parse(bytes(ek_public))
    if len(secret) > seeds.digest_size(public.nameAlg):
        raise ValueError("the credential is longer than the EK's nameAlg digest")
    seed, encrypted = seeds.encrypt_seed(public, seeds.LABEL_IDENTITY, os.urandom)
    sym = public.parameters.symmetric
    blob = protect.protect(u16(len(secret)) + bytes(secret), bytes(ak_name), seed,
                           public.nameAlg, sym.keyBits,
                           sym_alg=sym.algorithm if sym.algorithm != TPM_ALG.NULL
                           else TPM_ALG.AES)
    return blob, encrypted


def activate(client, ek_handle: int, ak_handle: int, blob: bytes, encrypted: bytes, *,
             endorsement_auth: bytes = b"", ak_auth: bytes = b"") -> bytes:
    """TPM2_ActivateCredential(activateHandle = the AK, keyHandle = the EK): the secret, or
    TpmCommandError (TPM_RC_INTEGRITY when the AK is not the object the credential names or
    the EK is not the key it was made for)."""
    session, _ = client.start_policy_session()
    try:
        client.call("PolicySecret", b2(b"") + b2(b"") + b2(b"") + u32(0),
                    handles=[RH_ENDORSEMENT, session], sessions=[pw(endorsement_auth)])
        rsp = client.call("ActivateCredential", b2(blob) + b2(encrypted),
                          handles=[ak_handle, ek_handle],
                          sessions=[pw(ak_auth), policy_session(session)])
    except Exception:
        try:
            client.flush(session)
        except Exception:
            pass
        raise
    size = struct.unpack(">I", rsp[:4])[0]
    params = rsp[4:4 + size]
    return params[2:2 + struct.unpack(">H", params[:2])[0]]


def prove_same_tpm(client, ek_handle, ek_public, ak_handle, ak_name, *,
                   endorsement_auth: bytes = b"") -> None:
    """Make a credential for a fresh random secret and have the TPM open it: returns when the
    AK (loaded at `ak_handle`) is in the TPM that holds the EK, raises CredentialError
    otherwise."""
    secret = os.urandom(32)
    blob, encrypted = make_credential(ek_public, ak_name, secret)
    from .tpmclient import TpmCommandError
    try:
        opened = activate(client, ek_handle, ak_handle, blob, encrypted,
                          endorsement_auth=endorsement_auth)
    except TpmCommandError as e:
        raise CredentialError(f"the TPM did not open the credential: {e}") from None
    import hmac
    if not hmac.compare_digest(opened, secret):
        raise CredentialError("the TPM opened the credential to another secret")


def read_nv(client, index: int, auth: int | None = None, password: bytes = b"") -> bytes | None:
    """The whole content of NV `index` (None if it is not defined), read in 1024-byte pieces
    with the index's own (empty) authorization unless `auth` is given."""
    from .tpmclient import TpmCommandError
    try:
        size = client.nv_data_size(index)
    except TpmCommandError as e:
        if e.no_such_handle:        # not defined
            return None
        raise
    out = b""
    while len(out) < size:
        out += client.nv_read(index if auth is None else auth, index,
                              min(1024, size - len(out)), len(out), password=password)
    return out


def read_ek_chain(client) -> tuple:
    """((NV index, content), ...) of the EK certificate chain indices the TPM defines, in
    index order; () when it has none. Raises CredentialError when the chain is larger than
    MAX_CHAIN_BYTES (a manifest is not the place for it)."""
    chain, total = [], 0
    for index in client.handles(EK_CHAIN_FIRST, EK_CHAIN_LAST):
        content = read_nv(client, index)
        if content is None:
            continue
        total += len(content)
        if total > MAX_CHAIN_BYTES:
            raise CredentialError(f"the EK certificate chain in NV {EK_CHAIN_FIRST:#010x}... "
                                  f"is larger than {MAX_CHAIN_BYTES} bytes")
        chain.append((index, content))
    return tuple(chain)


def split_certificates(data: bytes) -> list:
    """The DER certificates of a concatenation (the chain indices' contents, in index order);
    padding of 0x00 or 0xFF bytes after the last one is allowed, anything else is
    CredentialError."""
    data, out, pos = bytes(data), [], 0
    while pos < len(data):
        if data[pos] != 0x30:
            if set(data[pos:]) <= {0x00, 0xFF}:
                break
            raise CredentialError(f"the EK certificate chain is not DER at byte {pos}")
        if pos + 2 > len(data):
            raise CredentialError("the EK certificate chain is truncated")
        first = data[pos + 1]
        if first < 0x80:
            length, head = first, 2
        elif 0x81 <= first <= 0x83:
            n = first & 0x7F
            length, head = int.from_bytes(data[pos + 2:pos + 2 + n], "big"), 2 + n
        else:
            raise CredentialError(f"the EK certificate chain has a bad DER length at byte {pos}")
        end = pos + head + length
        if end > len(data):
            raise CredentialError("the EK certificate chain is truncated")
        out.append(data[pos:end])
        pos = end
    return out


def public_key(ek_public: bytes):
    """The `cryptography` public key of an RSA or ECC (NIST P-256/384/521) TPMT_PUBLIC, read
    here (a verifier's side: no engine code)."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    p = bytes(ek_public)
    kind = struct.unpack(">H", p[:2])[0]
    pos = 8 + 2 + struct.unpack(">H", p[8:10])[0]             # type, nameAlg, attrs, policy
    sym = struct.unpack(">H", p[pos:pos + 2])[0]
    pos += 2 if sym == 0x10 else 6                              # TPMT_SYM_DEF_OBJECT
    scheme = struct.unpack(">H", p[pos:pos + 2])[0]
    pos += 2 if scheme == 0x10 else 4                           # TPMT_*_SCHEME
    if kind == 0x01:
        _bits, exponent = struct.unpack(">HI", p[pos:pos + 6])
        pos += 6
        size = struct.unpack(">H", p[pos:pos + 2])[0]
        n = int.from_bytes(p[pos + 2:pos + 2 + size], "big")
        return rsa.RSAPublicNumbers(exponent or 65537, n).public_key()
    if kind == 0x23:
        curve_id, kdf = struct.unpack(">HH", p[pos:pos + 4])
        pos += 4 if kdf == 0x10 else 6
        curve = {3: ec.SECP256R1, 4: ec.SECP384R1, 5: ec.SECP521R1}.get(curve_id)
        if curve is None:
            raise ValueError(f"ECC curve {curve_id:#x} is not a NIST curve")
        xs = struct.unpack(">H", p[pos:pos + 2])[0]
        x = int.from_bytes(p[pos + 2:pos + 2 + xs], "big")
        pos += 2 + xs
        ys = struct.unpack(">H", p[pos:pos + 2])[0]
        y = int.from_bytes(p[pos + 2:pos + 2 + ys], "big")
        return ec.EllipticCurvePublicNumbers(x, y, curve()).public_key()
    raise ValueError("the EK is neither RSA nor ECC")


def load_ca_bundle(path: str) -> list:
    """The certificates of a PEM bundle (or one DER certificate)."""
    from cryptography import x509
    with open(path, "rb") as f:
        data = f.read()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def check_ek_certificate(der: bytes, ek_public: bytes, cas, *, intermediates=(), now=None):
    """The certificate if it certifies `ek_public` and was issued (signature, validity
    period) by one of `cas` (`cryptography` certificates, each a trust anchor: the vendor's
    root, or the intermediate that signs EK certificates), directly or through
    `intermediates` (DER or `cryptography` certificates the TPM holds - untrusted: each must
    be a CA certificate, valid now, whose issuer signed it, up to one of `cas`);
    CredentialError otherwise. The path is walked here rather than by a generic X.509
    verifier: EK certificates (empty subject, critical directoryName SAN, the TCG EK EKU)
    are not what web PKI verifiers accept."""
    from cryptography import x509
    now = now or datetime.datetime.now(datetime.timezone.utc)
    try:
        cert = x509.load_der_x509_certificate(bytes(der))
    except ValueError as e:
        raise CredentialError(f"the EK certificate is not DER X.509: {e}") from None
    try:
        certified = cert.public_key().public_numbers()
        expected = public_key(ek_public).public_numbers()
    except (ValueError, AttributeError, struct.error) as e:
        raise CredentialError(f"the EK certificate's key is unusable: {e}") from None
    if certified != expected:
        raise CredentialError("the EK certificate certifies another key than this EK")
    pool = []
    for c in intermediates:
        try:
            pool.append(c if isinstance(c, x509.Certificate)
                        else x509.load_der_x509_certificate(bytes(c)))
        except ValueError as e:
            raise CredentialError(f"a certificate of the EK certificate chain is not DER "
                                  f"X.509: {e}") from None
    what = cert.subject.rfc4514_string() or "the EK certificate"
    _within(cert, now, what)
    current, used = cert, set()
    for _ in range(MAX_CHAIN_DEPTH + 1):
        for issuer in (c for c in cas if c.subject == current.issuer):
            if _issued_by(current, issuer):
                _within(issuer, now, f"the CA {issuer.subject.rfc4514_string()}")
                _path_length(issuer, len(used))
                return cert
        step = next((i for i, c in enumerate(pool) if i not in used
                     and c.subject == current.issuer and _issued_by(current, c)), None)
        if step is None:
            break
        current = pool[step]
        used.add(step)
        name = f"the chain certificate {current.subject.rfc4514_string()}"
        _within(current, now, name)
        if not _is_ca(current):
            raise CredentialError(f"{name} is not a CA certificate (basicConstraints)")
        _path_length(current, len(used) - 1)
    raise CredentialError(f"no CA given issued {what} (issuer {cert.issuer.rfc4514_string()}"
                          + (f"; through the TPM's chain up to {current.issuer.rfc4514_string()}"
                             if current is not cert else "") + ")")


def _issued_by(cert, issuer) -> bool:
    from cryptography.exceptions import InvalidSignature
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def _within(cert, now, what: str):
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise CredentialError(f"{what} is outside its validity period")


def _path_length(ca, below: int):
    """RFC 5280 pathLenConstraint: at most that many intermediates below this CA."""
    from cryptography import x509
    try:
        limit = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
    except x509.ExtensionNotFound:
        return
    if limit is not None and below > limit:
        raise CredentialError(f"the CA {ca.subject.rfc4514_string()} allows {limit} "
                              f"intermediate(s) below it, the chain has {below}")


def _is_ca(cert) -> bool:
    """basicConstraints cA, and keyCertSign where a keyUsage is present (RFC 5280 4.2.1.9)."""
    from cryptography import x509
    try:
        if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return False
    except x509.ExtensionNotFound:
        return False
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    except x509.ExtensionNotFound:
        return True
