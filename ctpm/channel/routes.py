"""The verifier service's trusted-channel endpoints (docs/verifier.md, docs/channel.md):

  POST /attest/tee       a TEE's Attestation payload for a nonce -> a TEE token (cnf = Q_T)
  GET  /authority        the PolicySigned key (TPMT_PUBLIC, Name, PEM) for `secret seal`
  GET  /secrets/{name}   a secret's record (public/private blobs, policy facts: no secret)
  POST /authorize        a PolicySigned authorization, as a JWE to the TEE's key

Handlers reuse the service's body reader, nonce consumption and problem documents.
"""
import logging
import threading
import time

LOG = logging.getLogger("ctpm.verifier.channel")


def tee_appraiser(policy):
    """`appraise(body, nonce_hex) -> claims` for TEE evidence: the policy's [tee] section
    (its [snp] one when absent), one SNP Verifier per worker thread (chain cache)."""
    from ..snp.verify import Verifier
    from .tee import verify_tee_evidence
    local = threading.local()
    snp_policy = getattr(policy, "tee", None) or policy.snp

    def appraise(body, nonce_hex):
        verifier = getattr(local, "verifier", None)
        if verifier is None:
            verifier = local.verifier = Verifier(policy.trust)
        return verify_tee_evidence(body, nonce_hex, snp_policy=snp_policy,
                                   verifier=verifier).claims(policy.id)
    return appraise


def tee_ear_claims(claims: dict, nonce: bytes, *, issuer, audience, ttl, verifier_id,
                   now=None) -> dict:
    """EAR claims of a TEE token: one `tee` submodule, cnf = the TEE's key Q_T."""
    import os

    from ..attest.tokens import AFFIRMING_TV, EAR_PROFILE, _b64u
    now = int(time.time() if now is None else now)
    tee = dict(claims["tee"])
    out = {"iss": issuer, "iat": now, "nbf": now, "exp": now + int(ttl),
           "jti": _b64u(os.urandom(16)), "eat_profile": EAR_PROFILE,
           "eat_nonce": _b64u(nonce), "ear.verifier-id": verifier_id,
           "submods": {"tee": {"ear.status": "affirming",
                               "ear.trustworthiness-vector": AFFIRMING_TV["snp"],
                               "ear.appraisal-policy-id": claims["policy_id"],
                               "ctpm.tee": tee}},
           "ctpm.launch-measurement": tee.get("measurement"),
           "ctpm.tcb": tee.get("reported_tcb"),
           "cnf": {"jwk": claims["confirmed_key"]}}
    if audience:
        out["aud"] = audience
    return out


def routes(settings, *, read_json, consume_nonce, run_appraisal, Problem):
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from ..attest import tokens
    from .authority import AuthorityError

    async def attest_tee(request):
        body = await read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("nonce"), str):
            raise Problem(400, "request_format", "Bad Request",
                          'the body must be {"nonce": HEX, "tee-pubkey": JWK, '
                          '"tee-evidence": {...}}')
        nonce = await consume_nonce(body["nonce"])
        claims = await run_appraisal(settings.tee_appraise, body, nonce.hex())
        ear = tee_ear_claims(claims, nonce, issuer=settings.issuer, audience=settings.audience,
                             ttl=settings.token_ttl, verifier_id=settings.verifier_id)
        LOG.info("attest/tee ok: measurement %s", str(ear["ctpm.launch-measurement"])[:16])
        return JSONResponse({"token": tokens.sign(settings.key, ear), "expires": ear["exp"]},
                            headers={"Cache-Control": "no-store"})

    def authority():
        if settings.authority is None:
            raise Problem(404, "authority_disabled", "Not Found",
                          "this verifier has no authority key (--authority-key)")
        settings.authority.issuer = settings.issuer
        settings.authority.audience = settings.audience
        return settings.authority

    async def describe(request):
        return JSONResponse(authority().describe(), headers={"Cache-Control": "max-age=300"})

    async def secret(request):
        try:
            return JSONResponse(authority().record(request.path_params["name"]),
                                headers={"Cache-Control": "no-store"})
        except AuthorityError as e:
            raise Problem(e.status, e.check, "Not Found", e.message) from None

    async def call_authority(request, method: str, title: str, status: int = 200):
        """The authority's `method` on the JSON body, in a worker thread (it verifies tokens
        and signs); AuthorityError -> a problem document naming the check."""
        import functools

        import trio
        body = await read_json(request)
        auth = authority()
        call = getattr(auth, method)
        if method == "register":
            call = functools.partial(call, admin=auth.is_admin(
                request.headers.get("authorization")))
        try:
            answer = await trio.to_thread.run_sync(call, body)
        except AuthorityError as e:
            LOG.info("%s refused: %s", method, e.check)
            raise Problem(e.status, e.check, title, e.message) from None
        LOG.info("%s ok: secret %s", method, str(body.get("secret") or answer.get("name"))[:64])
        return JSONResponse(answer, status_code=status, headers={"Cache-Control": "no-store"})

    async def authorize(request):
        return await call_authority(request, "authorize", "Authorization refused")

    async def register(request):
        return await call_authority(request, "register", "Registration refused", 201)

    return [Route("/attest/tee", attest_tee, methods=["POST"]),
            Route("/secrets", register, methods=["POST"]),
            Route("/authority", describe, methods=["GET"]),
            Route("/secrets/{name}", secret, methods=["GET"]),
            Route("/authorize", authorize, methods=["POST"])]
