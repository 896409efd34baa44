"""`ctpm verifier serve`: the verifier service (the trusted third party), and `ctpm verifier
keygen`.

A Starlette app (anyio, so it runs on trio) served by hypercorn's trio worker. The service
keeps no state but its nonces (`noncestore`) and the per-AK clock history; the appraisal is
ctpm.attest.verify's, run in worker threads (pure CPU, blocking) under a deadline. Every
error a client sees is an RFC 9457 problem document naming a stable check; nothing of a
Python exception reaches a client. Endpoints and problem types: docs/verifier.md.
"""
import json
import logging
import os
import sys
import threading
import time

PROBLEM_BASE = "urn:ctpm:problem:"
MAX_BODY = 1 << 20                  # 1 MiB: evidence with event logs is ~100 KiB
NONCE_SIZE = 64                     # the SVSM attestation protocol's nonce size
READ_TIMEOUT = 10.0                 # seconds to receive a request body
VERIFY_TIMEOUT = 10.0               # seconds for one appraisal
LOG = logging.getLogger("ctpm.verifier")


class Problem(Exception):
    """An answer that is an RFC 9457 problem document."""

    def __init__(self, status: int, check: str, title: str, detail: str = ""):
        super().__init__(detail or title)
        self.status, self.check, self.title, self.detail = status, check, title, detail


def problem_response(p: Problem):
    from starlette.responses import JSONResponse
    body = {"type": PROBLEM_BASE + p.check, "title": p.title, "status": p.status,
            "check": p.check}
    if p.detail:
        body["detail"] = p.detail
    return JSONResponse(body, status_code=p.status, media_type="application/problem+json")


class Settings:
    """What one service instance needs; `appraise(evidence, nonce) -> claims` is the
    verification (ctpm.attest.verify by default, see `from_policy`)."""

    def __init__(self, *, key, store, appraise, issuer, audience=None, token_ttl=300,
                 nonce_ttl=60, verifier_id=None, max_body=MAX_BODY, read_timeout=READ_TIMEOUT,
                 verify_timeout=VERIFY_TIMEOUT, workers=2, tee_appraise=None, authority=None,
                 certifier=None):
        self.key, self.store, self.appraise = key, store, appraise
        self.issuer, self.audience = issuer, audience
        self.token_ttl, self.nonce_ttl = token_ttl, nonce_ttl
        from .. import __version__
        self.verifier_id = verifier_id or {"developer": "ctpm", "build": f"ctpm {__version__}"}
        self.max_body, self.read_timeout, self.verify_timeout = max_body, read_timeout, \
            verify_timeout
        self.workers = workers
        # the trusted channel (docs/channel.md): TEE tokens and the PolicySigned authority
        self.tee_appraise, self.authority = tee_appraise, authority
        # manifest v0: the key a challenge wraps to the attester's EK (ctpm.attest.akcert)
        self.certifier = certifier


def appraiser(policy, certifier=None, history=None):
    """`appraise(evidence, nonce) -> claims` with ctpm.attest.verify: one SNP Verifier per
    worker thread (its certificate-chain cache is not thread-safe, and a cached VCEK chain is
    what makes an appraisal cheap), one clock history for the service."""
    from ..snp.verify import Verifier
    from .verify import ClockHistory, verify_evidence
    local = threading.local()
    history = history or ClockHistory()     # or ctpm.attest.clockstore.RedisClockHistory

    def appraise(evidence, nonce):
        verifier = getattr(local, "verifier", None)
        if verifier is None:
            verifier = local.verifier = Verifier(policy.trust)
        return verify_evidence(evidence, nonce, policy, verifier=verifier,
                               history=history, certifier=certifier).claims()
    return appraise


# --- the app -----------------------------------------------------------------------------------

def build_app(settings: Settings):
    import trio
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from ..snp.errors import SnpError
    from . import tokens
    from .noncestore import StoreError
    limiter = trio.CapacityLimiter(settings.workers)

    async def read_json(request: Request):
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise Problem(415, "content_type", "Unsupported Media Type",
                          "the body must be application/json")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_body):
            raise Problem(413, "body_too_large", "Content Too Large",
                          f"the body is limited to {settings.max_body} bytes")
        chunks, size = [], 0
        with trio.move_on_after(settings.read_timeout) as scope:
            async for chunk in request.stream():
                size += len(chunk)
                if size > settings.max_body:
                    raise Problem(413, "body_too_large", "Content Too Large",
                                  f"the body is limited to {settings.max_body} bytes")
                chunks.append(chunk)
        if scope.cancelled_caught:
            raise Problem(408, "request_timeout", "Request Timeout",
                          f"the body did not arrive within {settings.read_timeout:g} s")
        try:
            return json.loads(b"".join(chunks))
        except (ValueError, RecursionError) as e:
            raise Problem(400, "malformed_json", "Bad Request",
                          f"the body is not JSON: {str(e)[:200]}") from None

    async def challenge(request: Request):
        ek = await challenge_ek(request)
        nonce = os.urandom(NONCE_SIZE)
        try:
            expires = await settings.store.issue(nonce, settings.nonce_ttl)
        except StoreError as e:
            LOG.warning("challenge: nonce store: %s", e)
            raise Problem(503, "nonce_store_unavailable", "Service Unavailable",
                          "the nonce store cannot take a new challenge") from None
        answer = {"nonce": nonce.hex(), "expires": int(expires), "ttl": settings.nonce_ttl}
        if ek is not None:
            answer["ak_certify"] = await trio.to_thread.run_sync(
                settings.certifier.challenge, nonce, ek, limiter=limiter)
        return JSONResponse(answer, headers={"Cache-Control": "no-store"})

    async def challenge_ek(request: Request):
        """The attester's RSA EK (TPMT_PUBLIC or TPM2B_PUBLIC, base64url) when the challenge
        body names one: manifest v0, whose AK the verifier has certified in the exchange."""
        if request.headers.get("content-length", "0") == "0" and \
                "transfer-encoding" not in request.headers:
            return None
        body = await read_json(request)
        if not isinstance(body, dict) or set(body) - {"ek"}:
            raise Problem(400, "challenge_format", "Bad Request",
                          'the body is empty or {"ek": base64url TPMT_PUBLIC}')
        if "ek" not in body:
            return None
        if settings.certifier is None:
            raise Problem(400, "challenge_format", "Bad Request",
                          "this service does not certify AKs (no certifier)")
        from .akcert import _ek_key, public_area
        try:
            from .evidence import unb64u
            ek = public_area(unb64u(body["ek"]))
            _ek_key(ek)
        except (ValueError, TypeError, IndexError) as e:
            raise Problem(400, "ek_format", "Bad Request",
                          f"ek is not a base64url TCG RSA EK public area: {e}") from None
        return ek

    async def consume_nonce(text):
        """The nonce (bytes) if this service issued it and it is unused and fresh; it is
        used up here, atomically, whatever follows."""
        try:
            nonce = bytes.fromhex(text)
        except (ValueError, TypeError):
            nonce = b""
        if len(nonce) != NONCE_SIZE:
            raise Problem(400, "nonce_format", "Bad Request",
                          f"the nonce is {NONCE_SIZE} bytes in hex, as /challenge gave it")
        try:
            state = await settings.store.consume(nonce)       # atomic: one use, even on failure
        except StoreError as e:
            LOG.warning("attest: nonce store: %s", e)
            raise Problem(503, "nonce_store_unavailable", "Service Unavailable",
                          "the nonce store cannot be reached") from None
        if state != "ok":
            detail = {"unknown": "this service did not issue the nonce (or forgot it)",
                      "replayed": "the nonce was already used",
                      "expired": "the nonce expired before the evidence arrived"}[state]
            LOG.info("attest refused: nonce_%s", state)
            raise Problem(403, f"nonce_{state}", "Forbidden", detail)
        return nonce

    async def run_appraisal(appraise, *args):
        """`appraise(*args)` in a worker thread under the deadline; SnpError -> 403."""
        with trio.move_on_after(settings.verify_timeout) as scope:
            try:
                return await trio.to_thread.run_sync(appraise, *args, limiter=limiter,
                                                     abandon_on_cancel=True)
            except SnpError as e:
                LOG.info("attest refused: %s", e.check)
                raise Problem(403, e.check, "Evidence refused", e.message) from None
            except StoreError as e:         # the shared clock history
                LOG.warning("attest: clock history: %s", e)
                raise Problem(503, "clock_store_unavailable", "Service Unavailable",
                              "the clock history cannot be reached") from None
        if scope.cancelled_caught:
            LOG.warning("attest: appraisal took longer than %g s", settings.verify_timeout)
            raise Problem(503, "verify_timeout", "Service Unavailable",
                          "the appraisal did not finish in time")

    async def attest(request: Request):
        body = await read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("nonce"), str) or \
                not isinstance(body.get("evidence"), dict):
            raise Problem(400, "request_format", "Bad Request",
                          'the body must be {"nonce": HEX, "evidence": {...}}')
        nonce = await consume_nonce(body["nonce"])
        started = time.perf_counter()
        claims = await run_appraisal(settings.appraise, body["evidence"], nonce)
        now = time.time()
        ear = tokens.ear_claims(claims, nonce, issuer=settings.issuer,
                                audience=settings.audience, ttl=settings.token_ttl,
                                verifier_id=settings.verifier_id, now=now)
        token = tokens.sign(settings.key, ear)
        LOG.info("attest ok: policy %s ak %s in %.1f ms", claims.get("policy_id"),
                 str(claims.get("vtpm", {}).get("ak_name", ""))[:16],
                 (time.perf_counter() - started) * 1e3)
        return JSONResponse({"token": token, "expires": ear["exp"]},
                            headers={"Cache-Control": "no-store"})

    async def jwks(request: Request):
        return JSONResponse(settings.key.jwks(), media_type="application/jwk-set+json",
                            headers={"Cache-Control": "max-age=300"})

    async def health(request: Request):
        try:
            with trio.fail_after(2):
                await settings.store.ping()
        except (StoreError, trio.TooSlowError):
            return JSONResponse({"status": "unavailable", "nonce_store": "unreachable"},
                                status_code=503)
        return JSONResponse({"status": "ok", "nonce_store": settings.store.describe()})

    async def openapi(request: Request):
        return JSONResponse(openapi_document(settings))

    async def on_problem(request, exc: Problem):
        return problem_response(exc)

    async def on_http(request, exc: HTTPException):
        names = {404: "not_found", 405: "method_not_allowed"}
        return problem_response(Problem(exc.status_code, names.get(exc.status_code, "http"),
                                        str(exc.detail)))

    async def on_error(request, exc: Exception):
        LOG.error("internal error on %s", request.url.path, exc_info=exc)
        return problem_response(Problem(500, "internal", "Internal Server Error",
                                        "the verifier failed; see its log"))

    routes = [Route("/challenge", challenge, methods=["POST"]),
              Route("/attest", attest, methods=["POST"]),
              Route("/jwks", jwks, methods=["GET"]),
              Route("/.well-known/jwks.json", jwks, methods=["GET"]),
              Route("/health", health, methods=["GET"]),
              Route("/openapi.json", openapi, methods=["GET"])]
    if settings.tee_appraise is not None:
        from ..channel.routes import routes as channel_routes
        routes += channel_routes(settings, read_json=read_json, consume_nonce=consume_nonce,
                                 run_appraisal=run_appraisal, Problem=Problem)
    return _quiet_when_gone(Starlette(routes=routes, exception_handlers={
        Problem: on_problem, HTTPException: on_http, Exception: on_error}))


def _quiet_when_gone(app):
    """An answer to a client that has already gone is dropped, not logged as a crash.
    hypercorn 0.18 half-closes a connection whose client closed (its read loop holds the
    stream's send side for a moment) while the app may still be answering - typically the
    413 to a client that sent a huge body and hung up: the app's send then raises
    trio.BusyResourceError, which hypercorn would log as an ASGI traceback."""
    import trio
    gone_errors = (trio.BusyResourceError, trio.BrokenResourceError, trio.ClosedResourceError)

    async def guarded_app(scope, receive, send):
        gone = False

        async def guarded_send(message):
            nonlocal gone
            if gone:
                return
            try:
                await send(message)
            except gone_errors:
                gone = True
                LOG.debug("client went away before its %s answer", scope.get("path"))
        await app(scope, receive, guarded_send)
    return guarded_app


def openapi_document(settings) -> dict:
    problem = {"description": "RFC 9457 problem document naming the failed check",
               "content": {"application/problem+json": {
                   "schema": {"$ref": "#/components/schemas/Problem"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "ctpm verifier", "version": "1",
                 "description": "Composite (SEV-SNP + vTPM) attestation: challenge, attest, "
                                "EAR tokens; see docs/verifier.md"},
        "paths": {
            "/challenge": {"post": {"summary": "a fresh single-use nonce (and, given the "
                                               "attester's EK, a key wrapped to it that "
                                               "certifies the AK: manifest v0)",
                                    "requestBody": {"required": False, "content": {
                                        "application/json": {"schema": {
                                            "$ref": "#/components/schemas/ChallengeRequest"}}}},
                                    "responses": {
                "200": {"description": "the nonce", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Challenge"}}}},
                "503": problem}}},
            "/attest": {"post": {
                "summary": "appraise evidence for a nonce; an EAR token when it passes",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/AttestRequest"}}}},
                "responses": {"200": {"description": "the token", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Token"}}}},
                    "400": problem, "403": problem, "408": problem, "413": problem,
                    "415": problem, "503": problem}}},
            "/jwks": {"get": {"summary": "the token-signing keys", "responses": {"200": {
                "description": "JWK set", "content": {"application/jwk-set+json": {}}}}}},
            "/.well-known/jwks.json": {"get": {"summary": "same as /jwks", "responses": {
                "200": {"description": "JWK set"}}}},
            "/attest/tee": {"post": {
                "summary": "appraise a TEE's Attestation payload (docs/channel.md); a TEE "
                           "token whose cnf is the TEE's key",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"type": "object", "required": ["nonce", "tee-pubkey",
                                                              "tee-evidence"]}}}},
                "responses": {"200": {"description": "the token", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Token"}}}},
                    "400": problem, "403": problem, "413": problem, "415": problem,
                    "503": problem}}},
            "/authority": {"get": {"summary": "the PolicySigned key for `ctpm secret seal`",
                                   "responses": {"200": {"description": "TPMT_PUBLIC, Name, "
                                                                        "PEM"},
                                                 "404": problem}}},
            "/secrets": {"post": {"summary": "a record of a secret a TEE provisioned "
                                              "(--allow-tee-provisioning)",
                                  "responses": {"201": {"description": "kept"},
                                                "400": problem, "403": problem,
                                                "409": problem}}},
            "/secrets/{name}": {"get": {"summary": "a sealed secret's record (no secret)",
                                        "responses": {"200": {"description": "the record"},
                                                      "404": problem}}},
            "/authorize": {"post": {
                "summary": "a PolicySigned authorization for a TEE token's session, as a JWE "
                           "to the token's key",
                "responses": {"200": {"description": '{"jwe": COMPACT}'}, "400": problem,
                              "403": problem, "404": problem}}},
            "/health": {"get": {"summary": "liveness and nonce-store reachability",
                                "responses": {"200": {"description": "ok"},
                                              "503": {"description": "store unreachable"}}}},
        },
        "components": {"schemas": {
            "Challenge": {"type": "object", "required": ["nonce", "expires"], "properties": {
                "nonce": {"type": "string", "pattern": "^[0-9a-f]{128}$"},
                "expires": {"type": "integer", "description": "Unix time"},
                "ttl": {"type": "integer"},
                "ak_certify": {"type": "object", "description": "base64url public, duplicate, "
                               "in_sym_seed for TPM2_Import under the EK (docs/attestation.md)",
                               "properties": {k: {"type": "string"} for k in (
                                   "public", "duplicate", "in_sym_seed")}}}},
            "ChallengeRequest": {"type": "object", "properties": {"ek": {
                "type": "string", "description": "the RSA EK's TPMT_PUBLIC, base64url"}}},
            "AttestRequest": {"type": "object", "required": ["nonce", "evidence"],
                              "properties": {"nonce": {"type": "string",
                                                       "pattern": "^[0-9a-fA-F]{128}$"},
                                             "evidence": {"type": "object", "description":
                                                          "ctpm composite evidence "
                                                          "(ctpm/attest/evidence.schema.json)"}}},
            "Token": {"type": "object", "required": ["token"], "properties": {
                "token": {"type": "string", "description": "JWT (EAR claims), "
                          + settings.key.alg},
                "expires": {"type": "integer"}}},
            "Problem": {"type": "object", "required": ["type", "title", "status", "check"],
                        "properties": {"type": {"type": "string", "format": "uri"},
                                       "title": {"type": "string"},
                                       "status": {"type": "integer"},
                                       "check": {"type": "string"},
                                       "detail": {"type": "string"}}},
        }},
    }


# --- the command -------------------------------------------------------------------------------

def add_parsers(commands):
    p = commands.add_parser("verifier", help="the attestation verifier service (ctpm verifier "
                                             "serve | keygen)")
    sub = p.add_subparsers(dest="verifier_command", metavar="SUBCOMMAND", required=True)
    s = sub.add_parser("serve", help="serve challenge/attest/jwks/health over HTTP")
    s.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:8443")
    s.add_argument("--allow-remote", action="store_true",
                   help="allow listening on non-loopback addresses")
    s.add_argument("--policy", metavar="FILE", required=True, help="appraisal policy (TOML)")
    s.add_argument("--key", metavar="FILE", required=True,
                   help="token-signing key: EC P-256 (ES256) or P-384 (ES384), PEM")
    s.add_argument("--cert-chain", metavar="FILE",
                   help="PEM certificates for --key (leaf first): published as x5c")
    s.add_argument("--nonce-store", metavar="memory|redis://HOST:PORT", default="memory")
    s.add_argument("--issuer", metavar="URL", help="the tokens' iss (default: http://HOST:PORT bound)")
    s.add_argument("--audience", metavar="X", help="the tokens' aud")
    s.add_argument("--token-ttl", metavar="SECONDS", type=int, default=300)
    s.add_argument("--nonce-ttl", metavar="SECONDS", type=int, default=60)
    s.add_argument("--max-body", metavar="BYTES", type=int, default=MAX_BODY,
                   help="largest request body (default 1 MiB; larger: 413)")
    s.add_argument("--read-timeout", metavar="SECONDS", type=float, default=READ_TIMEOUT,
                   help="time allowed to send a request body (default 10; then 408)")
    s.add_argument("--authority-key", metavar="FILE",
                   help="the trusted channel's PolicySigned key (EC P-256 PEM, e.g. from "
                        "`ctpm verifier keygen`); enables /authority and /authorize")
    s.add_argument("--secrets", metavar="DIR",
                   help="the secrets' records (NAME.json from `ctpm secret seal`) the "
                        "authority serves and authorizes")
    s.add_argument("--admin-token-file", metavar="FILE",
                   help="the operator's bearer token: `ctpm secret seal --register` may then "
                        "POST records to /secrets (never overwriting)")
    s.add_argument("--allow-tee-provisioning", action="store_true",
                   help="accept records of secrets that attested TEEs provisioned into a TPM "
                        "(POST /secrets; never overwrites)")
    s.add_argument("--log-level", metavar="LEVEL", default="info")
    s.add_argument("--certify-secret", metavar="FILE",
                   help="32+ bytes from which challenges' AK-certification keys are derived "
                        "(manifest v0); services sharing a nonce store share it too "
                        "(default: random per process)")
    s.add_argument("--clock-history", choices=("memory", "nonce-store"), default="memory",
                   help="where each AK's last TPM clock is kept: this process, or the "
                        "nonce store's Redis (shared by the services using it)")
    s.set_defaults(main=run_serve)
    c = sub.add_parser("challenge", help="a challenge for manifest v0 without the service: a "
                                         "nonce and a key wrapped to the attester's EK")
    c.add_argument("--ek", metavar="FILE", required=True,
                   help="the attester's RSA EK public area (tpm2_readpublic -o)")
    c.add_argument("--certify-secret", metavar="FILE", required=True,
                   help="32+ bytes; give the same file to ctpm verify")
    c.add_argument("--nonce", metavar="HEX", help="default: 64 random bytes")
    c.add_argument("-o", "--output", metavar="FILE", default="-")
    c.set_defaults(main=run_challenge)
    k = sub.add_parser("keygen", help="a new token-signing key (PEM, mode 0600)")
    k.add_argument("file", metavar="FILE")
    k.add_argument("--curve", choices=("P-256", "P-384"), default="P-256")
    k.set_defaults(main=run_keygen)


def run_keygen(args) -> int:
    from .tokens import keygen
    try:
        key = keygen(args.file, args.curve)
    except OSError as e:
        print(f"ctpm: {args.file}: {e.strerror}", file=sys.stderr)
        return 2
    print(f"kid {key.kid} alg {key.alg}")
    return 0


def run_challenge(args) -> int:
    from .akcert import load_secret, public_area
    try:
        certifier = load_secret(args.certify_secret)
        with open(args.ek, "rb") as f:
            ek = public_area(f.read())
        nonce = bytes.fromhex(args.nonce) if args.nonce else os.urandom(NONCE_SIZE)
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"--nonce must be {NONCE_SIZE} bytes")
        answer = {"nonce": nonce.hex(), "ak_certify": certifier.challenge(nonce, ek)}
    except OSError as e:
        print(f"ctpm: {args.ek}: {e.strerror}", file=sys.stderr)
        return 2
    except (ValueError, IndexError) as e:
        print(f"ctpm: verifier challenge: {e}", file=sys.stderr)
        return 2
    text = json.dumps(answer, indent=1) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w") as f:
            f.write(text)
    return 0


def _listen_address(text: str, allow_remote: bool):
    from ..config import ConfigError, _is_loopback
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT")
    try:
        if not allow_remote and not _is_loopback(host, "--listen"):
            raise ValueError(f"--listen {text!r}: not a loopback address (add --allow-remote "
                             "to listen beyond this machine)")
    except ConfigError as e:
        raise ValueError(str(e)) from None
    return host, int(port)


def run_serve(args) -> int:
    logging.basicConfig(stream=sys.stderr, level=str(args.log_level).upper(),
                        format="ctpm: %(levelname)s: %(name)s: %(message)s")
    from .noncestore import open_store
    from .tokens import ServiceKey
    from .verify import load_policy
    try:
        host, port = _listen_address(args.listen, args.allow_remote)
        for name in ("token_ttl", "nonce_ttl", "max_body", "read_timeout"):
            if getattr(args, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        policy = load_policy(args.policy)
        key = ServiceKey.load(args.key, args.cert_chain)
        authority = None
        if args.authority_key and not args.audience:
            raise ValueError("--authority-key needs --audience: the trusted channel's tokens "
                             "are checked for it on both sides")
        if args.authority_key:
            from ..channel.authority import Authority, SecretStore, load_key
            if args.secrets and not os.path.isdir(args.secrets):
                raise ValueError(f"--secrets {args.secrets}: not a directory")
            from ..channel.authority import load_admin_token
            if (args.allow_tee_provisioning or args.admin_token_file) and not args.secrets:
                raise ValueError("--allow-tee-provisioning and --admin-token-file need "
                                 "--secrets")
            admin = load_admin_token(args.admin_token_file) if args.admin_token_file else None
            authority = Authority(load_key(args.authority_key), SecretStore(args.secrets),
                                  jwks=key.jwks(), issuer=args.issuer, audience=args.audience,
                                  allow_registration=args.allow_tee_provisioning,
                                  admin_token=admin)
        elif args.secrets or args.allow_tee_provisioning or args.admin_token_file:
            raise ValueError("--secrets, --allow-tee-provisioning and --admin-token-file need "
                             "--authority-key")
        from .akcert import Certifier, load_secret
        certifier = load_secret(args.certify_secret) if args.certify_secret else Certifier()
        store = open_store(args.nonce_store)
        history = None
        if args.clock_history == "nonce-store":
            if not args.nonce_store.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError("--clock-history nonce-store needs --nonce-store redis://...")
            from .clockstore import RedisClockHistory
            history = RedisClockHistory(args.nonce_store)
    except ValueError as e:
        print(f"ctpm: config error: {e}", file=sys.stderr)
        return 2
    from ..channel.routes import tee_appraiser
    settings = Settings(key=key, store=store, appraise=appraiser(policy, certifier, history),
                        certifier=certifier, issuer=args.issuer,
                        audience=args.audience, token_ttl=args.token_ttl,
                        nonce_ttl=args.nonce_ttl, max_body=args.max_body,
                        read_timeout=args.read_timeout, tee_appraise=tee_appraiser(policy),
                        authority=authority)
    import trio
    try:
        trio.run(_serve, settings, host, port)
    except OSError as e:
        print(f"ctpm: cannot listen on {args.listen}: {e.strerror or e}", file=sys.stderr)
        return 1
    finally:
        store.close()
        if history is not None:
            history.close()
    return 0


async def _serve(settings, host, port):
    import signal

    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("ctpm.verifier.http")
    config.read_timeout = int(settings.read_timeout) + 5     # the app answers 408 first
    config.keep_alive_timeout = 15
    config.graceful_timeout = 2
    config.include_server_header = False
    config.backlog = 1024
    app = build_app(settings)
    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            async def until_signal():
                async for signum in signals:
                    LOG.info("stopping on %s", signal.Signals(signum).name)
                    stop.set()
                    return
            nursery.start_soon(until_signal)
            binds = await nursery.start(lambda task_status: serve(
                app, config, shutdown_trigger=stop.wait, task_status=task_status))
            settings.issuer = settings.issuer or binds[0]
            LOG.info("nonce store %s, key %s (%s), issuer %s", settings.store.describe(),
                     settings.key.kid, settings.key.alg, settings.issuer)
            print(f"ctpm: ready verifier={binds[0]}", flush=True)
            await stop.wait()
