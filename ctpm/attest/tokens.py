"""Attestation-result tokens: EAR (draft-ietf-rats-ear) claims in a JWT signed ES256/ES384.

The signer is the verifier service's key (`ServiceKey`: a P-256 or P-384 private key in PEM,
kid = its RFC 7638 JWK thumbprint); relying parties check tokens with `verify_token` against
the service's JWKS. PyJWT does the JWS work (on top of `cryptography`); the rules a relying
party needs beyond it - only ES256/ES384, the key only from the JWKS by kid, never from the
token's header, times against a clock the caller may give - are enforced here first.
"""
import base64
import hashlib
import json
import os
import time

EAR_PROFILE = "tag:github.com,2023:veraison/ear"
ALGS = {"P-256": ("ES256", 32), "P-384": ("ES384", 48)}
HEADER_KEYS = ("jwk", "jku", "x5c", "x5u", "x5t", "x5t#S256")     # never trusted, refused
DEFAULT_LEEWAY = 30


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def thumbprint(jwk: dict) -> str:
    """RFC 7638: SHA-256 of the required members (EC: crv, kty, x, y), sorted, no spaces."""
    required = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    canon = json.dumps(required, sort_keys=True, separators=(",", ":")).encode()
    return _b64u(hashlib.sha256(canon).digest())


def public_jwk(public_key) -> dict:
    from cryptography.hazmat.primitives.asymmetric import ec
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise ValueError("the key is not an EC key (P-256 or P-384)")
    crv = {"secp256r1": "P-256", "secp384r1": "P-384"}.get(public_key.curve.name)
    if crv is None:
        raise ValueError(f"curve {public_key.curve.name} is neither P-256 nor P-384")
    size = ALGS[crv][1]
    n = public_key.public_numbers()
    return {"kty": "EC", "crv": crv, "x": _b64u(n.x.to_bytes(size, "big")),
            "y": _b64u(n.y.to_bytes(size, "big"))}


class ServiceKey:
    """The service's signing key, its JWK (kid, alg, use) and, when given, its x5c chain."""

    def __init__(self, private_key, chain_der=()):
        self.private_key = private_key
        jwk = public_jwk(private_key.public_key())
        self.alg = ALGS[jwk["crv"]][0]
        self.kid = thumbprint(jwk)
        self.jwk = dict(jwk, kid=self.kid, alg=self.alg, use="sig")
        if chain_der:
            self.jwk["x5c"] = [base64.b64encode(d).decode() for d in chain_der]

    @classmethod
    def load(cls, path: str, chain_path: str | None = None) -> "ServiceKey":
        """ValueError with one line when the file is unusable."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        try:
            with open(path, "rb") as f:
                key = serialization.load_pem_private_key(f.read(), password=None)
        except OSError as e:
            raise ValueError(f"--key {path}: {e.strerror}") from None
        except (ValueError, TypeError) as e:
            raise ValueError(f"--key {path}: not an unencrypted PEM private key ({e})") from None
        chain = ()
        if chain_path:
            try:
                with open(chain_path, "rb") as f:
                    certs = x509.load_pem_x509_certificates(f.read())
            except OSError as e:
                raise ValueError(f"--cert-chain {chain_path}: {e.strerror}") from None
            except ValueError as e:
                raise ValueError(f"--cert-chain {chain_path}: not PEM certificates ({e})") from None
            if certs[0].public_key().public_numbers() != key.public_key().public_numbers():
                raise ValueError(f"--cert-chain {chain_path}: the first certificate is not "
                                 "for --key")
            chain = tuple(c.public_bytes(serialization.Encoding.DER) for c in certs)
        try:
            return cls(key, chain)
        except ValueError as e:
            raise ValueError(f"--key {path}: {e}") from None

    def jwks(self) -> dict:
        return {"keys": [self.jwk]}


def keygen(path: str, curve: str = "P-256") -> ServiceKey:
    """A new key in PEM (mode 0600) at `path`; refuses to overwrite."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key({"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}[curve])
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return ServiceKey(key)


# --- issuing -----------------------------------------------------------------------------------

AFFIRMING_TV = {"snp": {"instance-identity": 2, "hardware": 2, "configuration": 2,
                        "executables": 2},
                "vtpm": {"instance-identity": 2, "hardware": 2, "executables": 2}}


def ear_claims(claims: dict, nonce: bytes, *, issuer: str, audience: str | None, ttl: int,
               verifier_id: dict, now: float | None = None, jti: str | None = None) -> dict:
    """The EAR claims set for an `Appraisal.claims()` that passed every check.

    A token is only issued for evidence that passed, so both submodules are "affirming";
    the trustworthiness vectors use AR4SI's value 2 ("affirming") for what the checks
    established: instance-identity (the chip's VCEK chain / the AK anchored in the report),
    hardware (genuine AMD SEV-SNP / a TPM bound to that guest), configuration (the guest
    policy, VMPL, TCB the appraisal policy accepts), executables (launch measurement /
    PCRs and event log matching the policy's reference values)."""
    now = int(time.time() if now is None else now)
    snp, vtpm = dict(claims.get("snp") or {}), dict(claims.get("vtpm") or {})
    policy_id = claims.get("policy_id", "")
    out = {
        "iss": issuer, "iat": now, "nbf": now, "exp": now + int(ttl),
        "jti": jti or _b64u(os.urandom(16)),
        "eat_profile": EAR_PROFILE,
        "eat_nonce": _b64u(nonce),
        "ear.verifier-id": verifier_id,
        "submods": {
            "snp": {"ear.status": "affirming",
                    "ear.trustworthiness-vector": AFFIRMING_TV["snp"],
                    "ear.appraisal-policy-id": policy_id, "ctpm.snp": snp},
            "vtpm": {"ear.status": "affirming",
                     "ear.trustworthiness-vector": AFFIRMING_TV["vtpm"],
                     "ear.appraisal-policy-id": policy_id, "ctpm.vtpm": vtpm},
        },
        # the facts relying parties match on, at the top level
        "ctpm.instance-uuid": claims.get("instance_uuid"),
        "ctpm.launch-measurement": snp.get("measurement"),
        "ctpm.tcb": snp.get("reported_tcb"),
        "ctpm.ek-name": vtpm.get("ek_name"),
        "ctpm.ak-name": vtpm.get("ak_name"),
        "ctpm.pcr-digest": vtpm.get("pcr_digest"),
    }
    if audience:
        out["aud"] = audience
    if claims.get("confirmed_key"):
        out["cnf"] = {"jwk": claims["confirmed_key"]}
    return out


def sign(key: ServiceKey, claims: dict) -> str:
    import jwt
    return jwt.encode(claims, key.private_key, algorithm=key.alg,
                      headers={"kid": key.kid, "typ": "JWT"})


# --- the relying party -------------------------------------------------------------------------

class TokenError(Exception):
    """A token refused; `reason` is a stable name (docs/verifier.md)."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def load_jwks(source: str, *, timeout: float = 5.0) -> dict:
    """A JWKS from a file or an http(s) URL; ValueError with one line."""
    try:
        if source.startswith(("http://", "https://")):
            import urllib.request
            with urllib.request.urlopen(source, timeout=timeout) as r:
                data = r.read(1 << 20)
        else:
            with open(source, "rb") as f:
                data = f.read(1 << 20)
        jwks = json.loads(data)
    except OSError as e:
        raise ValueError(f"--jwks {source}: {getattr(e, 'strerror', None) or e}") from None
    except ValueError as e:
        raise ValueError(f"--jwks {source}: not JSON ({e})") from None
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise ValueError(f"--jwks {source}: not a JWK set (no 'keys' list)")
    return jwks


def verify_token(token: str, jwks: dict, *, audience: str, uuid: str | None = None,
                 issuer: str | None = None, now: float | None = None,
                 leeway: float = DEFAULT_LEEWAY) -> dict:
    """The claims of `token` when every rule holds; TokenError naming the first that does not.

    Reasons: malformed, alg (anything but ES256/ES384: none, HS256, RS256 ...), header_key
    (a jwk/jku/x5c/x5u in the header: a token never names its own key), unknown_kid,
    signature, expired, not_yet_valid, audience, issuer, profile, uuid."""
    import jwt
    from jwt.algorithms import ECAlgorithm
    if not isinstance(token, str) or token.count(".") != 2:
        raise TokenError("malformed", "not a JWS compact serialization")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as e:
        raise TokenError("malformed", f"header: {e}") from None
    alg = header.get("alg")
    if alg not in ("ES256", "ES384"):
        raise TokenError("alg", f"algorithm {alg!r} is not accepted (ES256 or ES384 only)")
    carried = [k for k in HEADER_KEYS if k in header]
    if carried:
        raise TokenError("header_key", f"the header carries {carried[0]!r}: keys come only "
                                       "from the verifier's JWKS")
    if "crit" in header:
        raise TokenError("malformed", "unsupported critical header parameters")
    kid = header.get("kid")
    candidates = [k for k in jwks.get("keys", []) if isinstance(k, dict) and k.get("kid") == kid]
    if not kid or not candidates:
        raise TokenError("unknown_kid", f"no key {kid!r} in the JWKS")
    jwk = candidates[0]
    want_crv = {"ES256": "P-256", "ES384": "P-384"}[alg]
    if jwk.get("kty") != "EC" or jwk.get("crv") != want_crv or jwk.get("alg", alg) != alg:
        raise TokenError("alg", f"key {kid!r} is not a {want_crv} key for {alg}")
    try:
        public = ECAlgorithm.from_jwk(json.dumps(
            {k: jwk[k] for k in ("kty", "crv", "x", "y")}))
    except (jwt.InvalidKeyError, KeyError, ValueError) as e:
        raise TokenError("unknown_kid", f"key {kid!r} in the JWKS is unusable: {e}") from None
    try:
        claims = jwt.decode(token, public, algorithms=[alg], options={
            "verify_signature": True, "verify_exp": False, "verify_nbf": False,
            "verify_iat": False, "verify_aud": False, "verify_iss": False})
    except jwt.InvalidSignatureError:
        raise TokenError("signature", f"the signature does not verify with key {kid!r}") from None
    except jwt.InvalidTokenError as e:
        raise TokenError("malformed", str(e)) from None
    now = time.time() if now is None else now
    for name in ("exp", "nbf", "iat"):
        if not isinstance(claims.get(name), (int, float)) or isinstance(claims[name], bool):
            raise TokenError("malformed", f"claim {name!r} is missing or not a number")
    if now > claims["exp"] + leeway:
        raise TokenError("expired", f"expired {int(now - claims['exp'])} s ago")
    if now + leeway < claims["nbf"] or now + leeway < claims["iat"]:
        raise TokenError("not_yet_valid", f"valid only from {int(claims['nbf'])} "
                                          f"({int(claims['nbf'] - now)} s from now)")
    aud = claims.get("aud")
    auds = aud if isinstance(aud, list) else [aud]
    if audience not in auds:
        raise TokenError("audience", f"issued for {aud!r}, not {audience!r}")
    if issuer is not None and claims.get("iss") != issuer:
        raise TokenError("issuer", f"issued by {claims.get('iss')!r}, not {issuer!r}")
    if claims.get("eat_profile") != EAR_PROFILE:
        raise TokenError("profile", f"eat_profile {claims.get('eat_profile')!r} is not EAR")
    if uuid is not None and str(claims.get("ctpm.instance-uuid")).lower() != uuid.lower():
        raise TokenError("uuid", f"issued for instance {claims.get('ctpm.instance-uuid')!r}, "
                                 f"not {uuid!r}")
    return claims
