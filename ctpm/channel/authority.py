"""The authority: the verifier service's PolicySigned signer (docs/channel.md).

It signs aHash = SHA-256(nonceTPM || expiration || cpHashA || policyRef) only for a TEE whose
valid TEE token (issued by this service) confirms the key Q_T that salted the session, only
for an Unseal/NV_Read of a secret it knows, only with a short negative expiration (no
ticket); and it answers with a JWE encrypted to Q_T (ECDH-ES+A256KW, A256GCM - Trustee's
answer shape), so only the TEE holding Q_T's private key can use the signature.

Refusals name their check: authorize_format, tee_token (with the token rule that failed),
salt_key, unknown_secret, policy_ref, cp_hash, expiration, tee_measurement.
"""
import hmac
import json
import os
import re
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from . import protocol as P

CHECKS = ("authorize_format", "tee_token", "salt_key", "unknown_secret", "policy_ref",
          "cp_hash", "expiration", "tee_measurement")
REGISTER_CHECKS = ("registration_disabled", "authorize_format", "tee_token", "record",
                   "secret_exists")
MAX_EXPIRATION = 300            # seconds after nonceTPM an authorization may live
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class AuthorityError(Exception):
    def __init__(self, check: str, message: str, status: int = 403):
        super().__init__(f"{check}: {message}")
        self.check, self.message, self.status = check, message, status


def load_admin_token(path: str) -> str:
    """The operator's bearer token (--admin-token-file): at least 32 characters; ValueError."""
    try:
        with open(path) as f:
            token = f.read().strip()
    except OSError as e:
        raise ValueError(f"--admin-token-file {path}: {e.strerror}") from None
    if len(token) < 32 or any(c.isspace() for c in token):
        raise ValueError(f"--admin-token-file {path}: the token must be one word of at least "
                         "32 characters (e.g. `openssl rand -hex 32`)")
    return token


def load_key(path: str) -> ec.EllipticCurvePrivateKey:
    """The authority's P-256 key (PEM, as `ctpm verifier keygen` writes); ValueError."""
    try:
        with open(path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror}") from None
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or \
            not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"{path}: the authority key must be ECC P-256 (PolicySigned with "
                         "ECDSA/SHA-256)")
    return key


class SecretStore:
    """Records (ctpm.channel.secrets.seal) as DIR/NAME.json, read on each use: adding a
    secret is writing a file; no restart."""

    def __init__(self, directory: str | None):
        self.directory = directory

    def get(self, name: str) -> dict | None:
        if not self.directory or not isinstance(name, str) or not NAME_RE.match(name):
            return None
        try:
            with open(os.path.join(self.directory, name + ".json"), "rb") as f:
                record = json.load(f)
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and record.get("name") == name else None

    def put(self, name: str, record: dict) -> bool:
        """Write NAME.json if it does not exist (False if it does)."""
        if not self.directory or not NAME_RE.match(name):
            return False
        path = os.path.join(self.directory, name + ".json")
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(record, f)
        try:
            os.link(tmp, path)          # atomic, and never replaces an existing record
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True


class Authority:
    def __init__(self, key: ec.EllipticCurvePrivateKey, store: SecretStore, *, jwks: dict,
                 issuer: str, audience: str | None, max_expiration: int = MAX_EXPIRATION,
                 allow_registration: bool = False, admin_token: str | None = None):
        self.key, self.store, self.jwks = key, store, jwks
        self.allow_registration = allow_registration
        self.admin_token = admin_token
        self.issuer, self.audience = issuer, audience
        self.max_expiration = max_expiration
        self.public = P.authority_public(key.public_key())
        self.name = P.name_of(self.public)

    def describe(self) -> dict:
        """What `ctpm secret seal --authority URL` needs."""
        pem = self.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        return {"public": self.public.hex(), "name": self.name.hex(), "pem": pem.decode(),
                "scheme": "ecdsa-sha256", "max_expiration": self.max_expiration,
                "issuer": self.issuer, "audience": self.audience}

    def record(self, name: str) -> dict:
        record = self.store.get(name)
        if record is None:
            raise AuthorityError("unknown_secret", f"no secret {name!r}", 404)
        return record

    def _tee_claims(self, token, now=None) -> dict:
        from ..attest.tokens import TokenError, verify_token
        try:
            claims = verify_token(token, self.jwks, audience=self.audience or self.issuer,
                                  issuer=self.issuer, now=now)
        except TokenError as e:
            raise AuthorityError("tee_token", f"{e.reason}: {e.message}") from None
        cnf = (claims.get("cnf") or {}).get("jwk")
        if "tee" not in (claims.get("submods") or {}) or not isinstance(cnf, dict):
            raise AuthorityError("tee_token", "type: not a TEE token (no tee submodule or no "
                                              "confirmed key)")
        return claims

    def is_admin(self, authorization: str | None) -> bool:
        """`Authorization: Bearer TOKEN` with the operator's token (constant time)."""
        if not self.admin_token or not isinstance(authorization, str):
            return False
        scheme, _, token = authorization.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.admin_token.encode())

    def register(self, body, *, now: float | None = None, admin: bool = False) -> dict:
        """A record of a sealed secret (POST /secrets), kept when it comes from the operator
        (`admin`: the --admin-token-file bearer token, what `secret seal --register` sends)
        or from a TEE with a valid TEE token when the service allows TEE provisioning; the
        record well formed and for this authority, the name free (never overwritten)."""
        from .secrets import check_record
        if not admin and not self.allow_registration:
            raise AuthorityError("registration_disabled", "this verifier takes secrets only "
                                                          "from its operator (TEEs: "
                                                          "--allow-tee-provisioning)", 403)
        if not isinstance(body, dict) or not isinstance(body.get("record"), dict):
            raise AuthorityError("authorize_format", 'the body must be {"token": JWT, '
                                                     '"record": {...}}', 400)
        claims = {} if admin else self._tee_claims(body.get("token"), now)
        record = body["record"]
        try:
            rec = check_record(record)
        except ValueError as e:
            raise AuthorityError("record", str(e), 400) from None
        if rec["authority"] != self.public:
            raise AuthorityError("record", "the secret is sealed to another authority key", 400)
        if not self.store.put(rec["name"], record):
            raise AuthorityError("secret_exists", f"a secret {rec['name']!r} exists already",
                                 409)
        if admin:
            return {"name": rec["name"], "registered_by": "operator"}
        return {"name": rec["name"], "registered_by":
                (claims["submods"]["tee"].get("ctpm.tee") or {}).get("measurement")}

    def authorize(self, body, *, now: float | None = None) -> dict:
        """The JWE answer ({"jwe": compact}) for a valid request, or AuthorityError."""
        from .secrets import check_record
        try:
            if not isinstance(body, dict):
                raise ValueError("the body is not an object")
            token, secret = body["token"], body["secret"]
            nonce_tpm = bytes.fromhex(body["nonce_tpm"])
            cp_hash = bytes.fromhex(body["cp_hash"])
            ref = bytes.fromhex(body["policy_ref"])
            expiration = body["expiration"]
            salt_key = body["salt_key"]
            if not isinstance(expiration, int) or isinstance(expiration, bool):
                raise ValueError("expiration is not an integer")
            if not 16 <= len(nonce_tpm) <= 32 or len(cp_hash) != 32 or len(ref) > 64:
                raise ValueError("nonce_tpm (16-32 bytes), cp_hash (32) or policy_ref (<= 64) "
                                 "has the wrong size")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise AuthorityError("authorize_format", f"the request: {e}", 400) from None
        claims = self._tee_claims(token, now)
        cnf = claims["cnf"]["jwk"]
        if not P.same_point(salt_key, cnf):
            raise AuthorityError("salt_key", "the session was salted with a key the token "
                                             "does not confirm")
        raw = self.store.get(secret)
        if raw is None:
            raise AuthorityError("unknown_secret", f"no secret {secret!r}")
        try:
            rec = check_record(raw)
        except ValueError as e:
            raise AuthorityError("unknown_secret", f"the record of {secret!r} is unusable: "
                                                   f"{e}") from None
        if ref != rec["policy_ref"]:
            raise AuthorityError("policy_ref", "the policyRef is not the secret's")
        if cp_hash != rec["cp_hash"]:
            raise AuthorityError("cp_hash", "the cpHash is not the Unseal (or the NV_Read) of "
                                            "this secret")
        if not -self.max_expiration <= expiration < 0:
            raise AuthorityError("expiration", f"expiration must be in [-{self.max_expiration}"
                                               ", -1] s (negative: no ticket)")
        measurements = raw.get("tee_measurements")
        if measurements:
            got = ((claims["submods"]["tee"].get("ctpm.tee") or {}).get("measurement") or "")
            if got.lower() not in {m.lower() for m in measurements}:
                raise AuthorityError("tee_measurement", "the TEE's launch measurement is not "
                                                        "one this secret allows")
        signature = P.sign_authorization(self.key, nonce_tpm, expiration, cp_hash, ref)
        payload = {"signature": signature.hex(), "nonce_tpm": nonce_tpm.hex(),
                   "cp_hash": cp_hash.hex(), "policy_ref": ref.hex(), "expiration": expiration,
                   "issued": int(time.time() if now is None else now)}
        return {"jwe": encrypt_to(cnf, json.dumps(payload, sort_keys=True).encode())}


def encrypt_to(jwk: dict, payload: bytes) -> str:
    """A compact JWE of `payload` to the P-256 key `jwk` (ECDH-ES+A256KW, A256GCM)."""
    from jwcrypto import jwe, jwk as jwkmod
    recipient = jwkmod.JWK(**{k: jwk[k] for k in ("kty", "crv", "x", "y")})
    token = jwe.JWE(payload, protected={"alg": "ECDH-ES+A256KW", "enc": "A256GCM"})
    token.add_recipient(recipient)
    return token.serialize(compact=True)


def decrypt_with(private: ec.EllipticCurvePrivateKey, compact: str) -> bytes:
    """The payload of a JWE to the TEE's key; ValueError when it does not open."""
    from jwcrypto import jwe, jwk as jwkmod
    from jwcrypto.common import JWException
    key = jwkmod.JWK.from_pyca(private)
    try:
        token = jwe.JWE()
        token.deserialize(compact, key=key)
    except (JWException, ValueError, TypeError) as e:
        raise ValueError(f"the authority's answer does not open with this TEE's key: {e}") \
            from None
    header = token.jose_header
    if header.get("alg") != "ECDH-ES+A256KW" or header.get("enc") != "A256GCM":
        raise ValueError("the authority's answer uses another JWE algorithm")
    return token.payload
