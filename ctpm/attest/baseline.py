"""The separate flow users run today, for comparison with composite attestation (the
benchmark's baseline; each round verified on its own):

1. TEE round:  nonce N1 -> the SNP report binding the EK (REPORT_DATA = SHA-512(N1 || EK));
2. credential round: the verifier wraps a secret to the EK for the AK's Name (MakeCredential,
   done here in software as a verifier does), the TPM unwraps it (ActivateCredential, which
   proves the AK lives in the TPM that holds the EK);
3. quote round: nonce N3 -> TPM2_Quote by the AK, checked like composite evidence's quote.

Three round trips instead of one, and nothing binds round 3's PCRs to round 1's TEE except
the chain of checks the verifier keeps in its own memory.
"""
import hmac
import os
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ..crypto.kdf import kdfa
from ..crypto.symcipher import cfb
from ..wire.constants import TPM_ALG
from . import evidence as E
from .tpm import name_of, public_key

ALG_SHA256 = 0x000B


def _ek_key(ek_public: bytes) -> rsa.RSAPublicKey:
    key = public_key(ek_public)[0]
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("the baseline wraps credentials to the RSA EK")
    return key


def make_credential(ek_public: bytes, ak_name: bytes, secret: bytes) -> tuple[bytes, bytes]:
    """(credentialBlob TPM2B_ID_OBJECT, encrypted seed TPM2B_ENCRYPTED_SECRET), Part 1
    §24 with the EK's nameAlg SHA-256 and AES-128-CFB."""
    seed = os.urandom(32)
    encrypted = _ek_key(ek_public).encrypt(seed, padding.OAEP(
        padding.MGF1(hashes.SHA256()), hashes.SHA256(), b"IDENTITY\0"))
    sym = kdfa(ALG_SHA256, seed, b"STORAGE", ak_name, b"", 128)
    plain = struct.pack(">H", len(secret)) + secret
    enc_identity = cfb(TPM_ALG.AES, sym, bytes(16), plain, True)
    hmac_key = kdfa(ALG_SHA256, seed, b"INTEGRITY", b"", b"", 256)
    integrity = hmac.new(hmac_key, enc_identity + ak_name, "sha256").digest()
    blob = struct.pack(">H", len(integrity)) + integrity + enc_identity
    return struct.pack(">H", len(blob)) + blob, struct.pack(">H", len(encrypted)) + encrypted


def activate_credential(esapi, blob: bytes, encrypted: bytes) -> bytes:
    """The attester's side: TPM2_ActivateCredential with the AK (0x81020000) and the EK
    (0x81010001), the EK authorized by PolicySecret(TPM_RH_ENDORSEMENT)."""
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_SE
    from tpm2_pytss.types import TPM2B_ENCRYPTED_SECRET, TPM2B_ID_OBJECT, TPMT_SYM_DEF

    ak = esapi.tr_from_tpmpublic(E.AK_HANDLE)
    ek = esapi.tr_from_tpmpublic(0x81010001)
    session = esapi.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY,
                                       TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256)
    try:
        esapi.policy_secret(ESYS_TR.ENDORSEMENT, session, b"", b"", b"", 0)
        blob_obj, _ = TPM2B_ID_OBJECT.unmarshal(blob)
        secret_obj, _ = TPM2B_ENCRYPTED_SECRET.unmarshal(encrypted)
        out = esapi.activate_credential(ak, ek, blob_obj, secret_obj,
                                        session1=ESYS_TR.PASSWORD, session2=session)
    finally:
        try:
            esapi.flush_context(session)
        except Exception:
            pass
    return bytes(out)


class _Clock:
    """Verifier CPU time (thread time) spent inside `with clock:` blocks."""

    def __init__(self):
        self.cpu = 0.0

    def __enter__(self):
        import time
        self._t = time.thread_time()

    def __exit__(self, *exc):
        import time
        self.cpu += time.thread_time() - self._t


def run_separate(tcti: str, nonces, *, verifier, policy, clock: _Clock | None = None):
    """The three rounds against the TPM at `tcti`, each verified on its own; returns the
    round-trip count and the bytes exchanged. `nonces`: (N1, N3), 64 bytes each."""

    from tpm2_pytss import ESAPI, TCTILdr

    from ..modes.anchor import decode_evidence, verify_anchor
    from .verify import AttestError, _verify_quote

    n1, n3 = nonces
    clock = clock or _Clock()
    sent = received = 0
    esapi = ESAPI(TCTILdr.parse(tcti))
    try:
        # round 1: the TEE report for N1, with the EK bound (manifest v0 = the EK)
        doc = E.collect_snp_only(esapi, n1)
        ev = decode_evidence(doc)
        sent += 64
        received += len(ev.report) + len(ev.cert_table or b"") + len(ev.manifest)
        with clock:
            anchored = verify_anchor(ev.report, n1, ev.manifest, ev.manifest_version,
                                     verifier=verifier, policy=policy.snp,
                                     cert_table=ev.cert_table)
        ak_public = anchored.identity.ak
        ek_public = anchored.identity.ek_rsa
        # round 2: the AK is in the TPM that holds this EK (the AK's public comes along, as a
        # real attester sends it; the verifier takes its Name)
        with clock:
            ak_name = name_of(ak_public)
            secret = os.urandom(32)
            blob, encrypted = make_credential(ek_public, ak_name, secret)
        sent += len(blob) + len(encrypted)
        received += len(ak_public) + 2 + len(secret)
        if not hmac.compare_digest(activate_credential(esapi, blob, encrypted), secret):
            raise AttestError("credential", "ActivateCredential returned another secret")
        # round 3: the quote for N3 (the same code as the composite attester's)
        quoted = E.quote_pcrs(esapi, n3, policy.pcrs)
        if quoted is None:
            raise LookupError(f"no usable AK at {E.AK_HANDLE:#x}")
        quote, sig, values = quoted
        sent += 64
        received += len(quote) + len(sig) + sum(len(v) for b in values.values()
                                                for v in b.values())
        with clock:
            _verify_quote(quote, sig, values, ak_public, n3, policy)
    finally:
        esapi.close()
    return 3, sent, received
