"""The TEE application's library: get a secret from a TPM over the trusted channel
(docs/channel.md has the flow; `ctpm secret get` is this on the command line).

    with open_transport(tcti="mssim:host=...,port=...") as transport:   # or svsm=
        data = get_secret(transport, "disk", "http://verifier:8443", audience="...",
                          provider=open_provider("configfs"))

Steps: the secret's record from the authority; the TPM's composite evidence with a fresh
channel key K certified by the AK -> TPM token (cnf = K), checked here; the TEE's own SNP
report binding a fresh Q_T -> TEE token (cnf = Q_T); then the salted session and the unseal
(ctpm.channel.secrets.Unsealer) with the authority's signature, which arrives encrypted to Q_T.
"""
import json
import time
import urllib.error
import urllib.request

from ..attest.evidence import b64u
from . import protocol as P
from .tpm import ChannelError, TpmChannel


class VerifierClient:
    """The verifier service's HTTP API (sync, stdlib); problem documents -> ChannelError
    with the service's check name."""

    def __init__(self, url: str, *, timeout: float = 30.0, admin_token: str | None = None):
        self.url = url.rstrip("/")
        self.admin_token = admin_token
        self.timeout = timeout
        self.requests = 0
        self.bytes_out = self.bytes_in = 0

    def _request(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.admin_token and path == "/secrets":
            req.add_header("Authorization", f"Bearer {self.admin_token}")
        self.requests += 1
        self.bytes_out += len(data or b"")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                raw = r.read(4 << 20)
        except urllib.error.HTTPError as e:
            raw = e.read(1 << 16)
            try:
                problem = json.loads(raw)
                check, detail = problem["check"], problem.get("detail", problem.get("title"))
            except (ValueError, KeyError, TypeError):
                check, detail = "verifier_http", f"HTTP {e.code}"
            raise ChannelError(check, f"{path}: {detail}") from None
        except (urllib.error.URLError, OSError) as e:
            raise ChannelError("verifier_unreachable", f"{self.url}{path}: "
                                                       f"{getattr(e, 'reason', e)}") from None
        self.bytes_in += len(raw)
        try:
            return json.loads(raw)
        except ValueError:
            raise ChannelError("verifier_http", f"{path}: the answer is not JSON") from None

    def challenge(self) -> bytes:
        return bytes.fromhex(self._request("POST", "/challenge", {})["nonce"])

    def attest(self, nonce: bytes, evidence: dict) -> str:
        return self._request("POST", "/attest", {"nonce": nonce.hex(),
                                                  "evidence": evidence})["token"]

    def attest_tee(self, nonce: bytes, payload: dict) -> str:
        return self._request("POST", "/attest/tee", {"nonce": nonce.hex(), **payload})["token"]

    def jwks(self) -> dict:
        return self._request("GET", "/jwks")

    def authority(self) -> dict:
        return self._request("GET", "/authority")

    def record(self, name: str) -> dict:
        from urllib.parse import quote
        return self._request("GET", "/secrets/" + quote(name, safe=""))

    def authorize(self, body: dict) -> dict:
        return self._request("POST", "/authorize", body)

    def register(self, token: str | None, record: dict) -> dict:
        body = {"record": record} if token is None else {"token": token, "record": record}
        return self._request("POST", "/secrets", body)


def check_tpm_token(token: str, jwks: dict, *, audience: str, k_point: tuple,
                    ek_name: bytes | None = None, nonce: bytes | None = None) -> dict:
    """The TEE's check of the TPM's token: valid (ctpm.attest.tokens.verify_token), a vTPM
    token for this attestation's nonce, confirming exactly the K this TPM made, for the EK the
    record names."""
    from ..attest.tokens import TokenError, verify_token
    try:
        claims = verify_token(token, jwks, audience=audience)
    except TokenError as e:
        raise ChannelError("tpm_token", f"{e.reason}: {e.message}") from None
    submods = claims.get("submods") or {}
    if "vtpm" not in submods or "snp" not in submods:
        raise ChannelError("tpm_token", "type: not a composite (snp + vtpm) token")
    if nonce is not None and claims.get("eat_nonce") != b64u(nonce):
        raise ChannelError("tpm_token", "eat_nonce: the token is for another attestation")
    cnf = (claims.get("cnf") or {}).get("jwk")
    try:
        if P.jwk_point(cnf) != tuple(k_point):
            raise ValueError("another key")
    except (ValueError, TypeError):
        raise ChannelError("tpm_token_key", "the TPM token does not confirm the channel key "
                                            "this TPM answered with") from None
    if ek_name is not None and str(claims.get("ctpm.ek-name", "")).lower() != ek_name.hex():
        raise ChannelError("tpm_token_ek", "the token is for another TPM than the secret's")
    return claims


def _audience(vc, audience):
    """The tokens' audience: given, or the one the verifier says it issues for."""
    if audience:
        return audience
    got = vc.authority().get("audience")
    if not got:
        raise ChannelError("audience", "the verifier names no audience; give one")
    return got


def get_secret(transport, name: str, verifier, *, audience: str | None, provider,
               pcrs: str | None = None,
               svsm_client=None, timings: dict | None = None, owner_auth: bytes = b"") -> bytes:
    """The secret `name`, unsealed over the trusted channel. `verifier`: a URL or a
    VerifierClient; `provider`: the TEE's SNP report provider (ctpm.snp.providers);
    `svsm_client`: the SVSM connection whose attestation call gives the vTPM's report (SVSM
    mode), else ctpm's NV indices give it."""
    from .authority import decrypt_with
    from .secrets import Unsealer, check_record
    from .tee import TeeKey, tee_evidence
    t = timings if timings is not None else {}
    vc = verifier if isinstance(verifier, VerifierClient) else VerifierClient(verifier)
    tpm = TpmChannel(transport)
    t0 = time.perf_counter()
    audience = _audience(vc, audience)
    raw_record = vc.record(name)
    try:
        record = check_record(raw_record)
    except ValueError as e:
        raise ChannelError("record", str(e)) from None
    jwks = vc.jwks()

    # the TPM's side: composite evidence + K -> TPM token (cnf = K), checked here
    key, _ = _attest_tpm(tpm, vc, jwks, audience=audience, pcrs=pcrs, svsm_client=svsm_client,
                         owner_auth=owner_auth, ek_name=record["ek_name"])
    try:
        t["tpm_attest"] = time.perf_counter() - t0

        # the TEE's side: SNP report binding Q_T -> TEE token (cnf = Q_T)
        t1 = time.perf_counter()
        tee = TeeKey()
        tee_nonce = vc.challenge()
        tee_token = vc.attest_tee(tee_nonce, tee_evidence(provider, tee_nonce.hex(), tee))
        t["tee_attest"] = time.perf_counter() - t1

        def authorize(nonce_tpm, cp_hash, policy_ref, expiration):
            answer = vc.authorize({"token": tee_token, "secret": name,
                                   "nonce_tpm": nonce_tpm.hex(), "cp_hash": cp_hash.hex(),
                                   "policy_ref": policy_ref.hex(), "expiration": expiration,
                                   "salt_key": tee.jwk})
            try:
                payload = json.loads(decrypt_with(tee.private, answer["jwe"]))
            except (ValueError, KeyError, TypeError) as e:
                raise ChannelError("authorization", str(e)) from None
            if payload.get("nonce_tpm") != nonce_tpm.hex() or \
                    payload.get("cp_hash") != cp_hash.hex():
                raise ChannelError("authorization", "the authorization is for another "
                                                    "session or command")
            return bytes.fromhex(payload["signature"])

        t2 = time.perf_counter()
        data = Unsealer(tpm, raw_record, k_handle=key.handle, k_point=key.point,
                        tee_key=tee.private).run(authorize)
        t["unseal"] = time.perf_counter() - t2
    finally:
        tpm.flush(key.handle)
    t["total"] = time.perf_counter() - t0
    t["tpm_commands"] = tpm.commands
    t["http_requests"] = vc.requests
    return data


def _attest_tpm(tpm, vc, jwks, *, audience, pcrs, svsm_client, owner_auth, ek_name=None):
    """The TPM's side of mutual attestation: (K, the TPM token's claims)."""
    from ..attest import evidence as E
    from . import tpmside
    nonce = vc.challenge()
    snp = None
    if svsm_client is not None:
        got = svsm_client.attest_vtpm(nonce, 1)
        snp = (got.report, got.cert_table, got.manifest, 1, "svsm")
    doc, key = tpmside.attest(tpm, nonce, pcrs=pcrs or E.DEFAULT_PCRS, snp=snp,
                              owner_auth=owner_auth)
    try:
        claims = check_tpm_token(vc.attest(nonce, doc), jwks, audience=audience,
                                 k_point=key.point, ek_name=ek_name, nonce=nonce)
    except BaseException:
        tpm.flush(key.handle)
        raise
    return key, claims


def provision_secret(transport, name: str, data: bytes, verifier, *, audience: str | None,
                     provider,
                     seal_pcrs: str = "sha256:0,7", pcrs: str | None = None,
                     nv_index: int | None = None, register: bool = True, svsm_client=None,
                     owner_auth: bytes = b"") -> dict:
    """Provision a secret *into* the TPM over the channel (the TEE is the sealer): the TPM is
    attested first (its token confirms K), the secret travels parameter-encrypted in a
    session salted to K with a fresh attested Q_T, sealed to the PCR values the verified
    quote showed (`seal_pcrs` must be among the quoted ones) and to the authority's key. With
    `register`, the record goes to the authority (POST /secrets, with this TEE's token; the
    service must allow it). The record."""
    from ..attest.tpm import parse_selection
    from .secrets import seal
    from .tee import TeeKey, tee_evidence
    vc = verifier if isinstance(verifier, VerifierClient) else VerifierClient(verifier)
    tpm = TpmChannel(transport)
    jwks = vc.jwks()
    audience = _audience(vc, audience)
    authority = bytes.fromhex(vc.authority()["public"])
    selection = parse_selection(seal_pcrs)
    key, claims = _attest_tpm(tpm, vc, jwks, audience=audience, pcrs=pcrs,
                              svsm_client=svsm_client, owner_auth=owner_auth)
    try:
        quoted = ((claims["submods"]["vtpm"].get("ctpm.vtpm") or {}).get("pcrs") or {})
        try:
            values = {bank: {i: bytes.fromhex(quoted[bank][str(i)]) for i in indices}
                      for bank, indices in selection}
        except (KeyError, ValueError):
            raise ChannelError("seal_pcrs", f"{seal_pcrs} is not among the PCRs the TPM "
                                            "quoted (give them in --pcrs too)") from None
        tee = TeeKey()
        record = seal(tpm, name, data, selection, authority, nv_index=nv_index,
                      session_key=(key.handle, key.point, tee.private), pcr_values=values,
                      ek_name=bytes.fromhex(claims["ctpm.ek-name"])
                      if claims.get("ctpm.ek-name") else None)
    finally:
        tpm.flush(key.handle)
    if register:
        nonce = vc.challenge()
        token = vc.attest_tee(nonce, tee_evidence(provider, nonce.hex(), tee))
        vc.register(token, record)
    return record
