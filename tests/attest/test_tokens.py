"""Tokens: what a relying party refuses (tokens.verify_token and `ctpm token verify`), the
service key, its kid and JWKS (with x5c)."""
import base64
import datetime
import hashlib
import hmac
import json
import subprocess
import time

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ctpm.attest import tokens as T
from ctpm.testing.process import command, environment

NOW = 1_800_000_000
CLAIMS = {"policy_id": "p1", "instance_uuid": "7c1a5b2e-0000-4000-8000-000000000001",
          "confirmed_key": None,
          "snp": {"measurement": "aa" * 48, "reported_tcb": {"snp": 8}},
          "vtpm": {"ek_name": "000b" + "11" * 32, "ak_name": "000b" + "22" * 32,
                   "pcr_digest": "33" * 32}}


def key(curve=ec.SECP256R1()):
    return T.ServiceKey(ec.generate_private_key(curve))


def token(k, *, now=NOW, ttl=300, audience="rp", claims=CLAIMS, **extra):
    c = T.ear_claims(claims, b"\x01" * 64, issuer="https://verifier.test", audience=audience,
                     ttl=ttl, verifier_id={"developer": "ctpm", "build": "test"}, now=now)
    c.update(extra)
    return T.sign(k, c)


def refused(reason, tok, jwks, **kw):
    kw.setdefault("audience", "rp")
    kw.setdefault("now", NOW + 10)
    with pytest.raises(T.TokenError) as e:
        T.verify_token(tok, jwks, **kw)
    assert e.value.reason == reason, str(e.value)


def b64u_json(obj):
    return T._b64u(json.dumps(obj).encode())


def test_a_good_token_and_its_ear_claims():
    k = key()
    c = T.verify_token(token(k), k.jwks(), audience="rp", now=NOW + 10,
                       uuid=CLAIMS["instance_uuid"], issuer="https://verifier.test")
    assert c["eat_profile"] == T.EAR_PROFILE and c["exp"] == NOW + 300
    assert c["eat_nonce"] == T._b64u(b"\x01" * 64)
    assert c["ear.verifier-id"] == {"developer": "ctpm", "build": "test"}
    for sub in ("snp", "vtpm"):
        assert c["submods"][sub]["ear.status"] == "affirming"
        assert c["submods"][sub]["ear.appraisal-policy-id"] == "p1"
        assert set(c["submods"][sub]["ear.trustworthiness-vector"].values()) == {2}
    assert c["ctpm.launch-measurement"] == "aa" * 48 and "cnf" not in c
    assert c["ctpm.ek-name"] == CLAIMS["vtpm"]["ek_name"]
    assert jwt.get_unverified_header(token(k))["kid"] == k.kid
    k384 = key(ec.SECP384R1())
    assert k384.alg == "ES384" and jwt.get_unverified_header(token(k384))["alg"] == "ES384"
    T.verify_token(token(k384), k384.jwks(), audience="rp", now=NOW)


def test_confirmed_key_becomes_cnf():
    jwk = T.public_jwk(ec.generate_private_key(ec.SECP256R1()).public_key())
    k = key()
    c = T.verify_token(token(k, claims=dict(CLAIMS, confirmed_key=jwk)), k.jwks(),
                       audience="rp", now=NOW)
    assert c["cnf"] == {"jwk": jwk}


def test_time_audience_uuid_issuer():
    k = key()
    jwks = k.jwks()
    refused("expired", token(k), jwks, now=NOW + 300 + 31)
    T.verify_token(token(k), jwks, audience="rp", now=NOW + 300 + 29)       # within leeway
    refused("not_yet_valid", token(k, now=NOW + 100), jwks, now=NOW)
    refused("audience", token(k), jwks, audience="other")
    refused("audience", token(k, audience=None), jwks)
    refused("uuid", token(k), jwks, uuid="7c1a5b2e-0000-4000-8000-000000000002")
    refused("issuer", token(k), jwks, issuer="https://evil.test")
    refused("profile", token(k, eat_profile="tag:example.com,2020:other"), jwks)
    refused("malformed", token(k, exp="soon"), jwks)


def test_signature_kid_and_algorithm_confusion():
    k, other = key(), key()
    jwks = k.jwks()
    refused("unknown_kid", token(other), jwks)
    # another key's signature under the published kid
    forged = jwt.encode(jwt.decode(token(k), options={"verify_signature": False}),
                        other.private_key, algorithm="ES256", headers={"kid": k.kid})
    refused("signature", forged, jwks)
    # a payload changed after signing
    h, p, s = token(k).split(".")
    body = json.loads(base64.urlsafe_b64decode(p + "=="))
    body["aud"] = "other-rp"
    refused("signature", ".".join([h, b64u_json(body), s]), jwks, audience="other-rp")
    # alg none
    payload = token(k).split(".")[1]
    refused("alg", f"{b64u_json({'alg': 'none', 'kid': k.kid})}.{payload}.", jwks)
    # HS256 keyed with the public key's PEM (the classic confusion)
    pem = k.private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    head = b64u_json({"alg": "HS256", "kid": k.kid, "typ": "JWT"})
    mac = hmac.new(pem, f"{head}.{payload}".encode(), hashlib.sha256).digest()
    refused("alg", f"{head}.{payload}.{T._b64u(mac)}", jwks)
    # a key carried in the header is never used, even when it signed the token
    for member, value in (("jwk", other.jwk), ("x5c", ["MIIB"]), ("jku", "https://evil/jwks")):
        tok = jwt.encode(jwt.decode(token(k), options={"verify_signature": False}),
                         other.private_key, algorithm="ES256",
                         headers={"kid": other.kid, member: value})
        refused("header_key", tok, {"keys": [k.jwk]})
    # ES384 claimed with a P-256 key in the set
    k384 = key(ec.SECP384R1())
    tok = jwt.encode({"x": 1}, k384.private_key, algorithm="ES384", headers={"kid": k.kid})
    refused("alg", tok, jwks)
    refused("malformed", "not-a-token", jwks)


def test_kid_is_the_rfc7638_thumbprint_and_x5c_is_published(tmp_path):
    k = key()
    # RFC 7638 §3: the required members in lexicographic order, no whitespace
    text = ('{"crv":"%s","kty":"EC","x":"%s","y":"%s"}' % (k.jwk["crv"], k.jwk["x"],
                                                            k.jwk["y"])).encode()
    assert k.kid == base64.urlsafe_b64encode(hashlib.sha256(text).digest()).rstrip(b"=").decode()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ctpm verifier")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(k.private_key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(k.private_key, hashes.SHA256()))
    key_path, chain_path = tmp_path / "k.pem", tmp_path / "chain.pem"
    key_path.write_bytes(k.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    chain_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    loaded = T.ServiceKey.load(str(key_path), str(chain_path))
    assert loaded.kid == k.kid
    assert base64.b64decode(loaded.jwks()["keys"][0]["x5c"][0]) == cert.public_bytes(
        serialization.Encoding.DER)
    other = tmp_path / "other.pem"
    other.write_bytes(key().private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    with pytest.raises(ValueError, match="not for --key"):
        T.ServiceKey.load(str(other), str(chain_path))
    rsa = tmp_path / "rsa.pem"
    from cryptography.hazmat.primitives.asymmetric import rsa as R
    rsa.write_bytes(R.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    with pytest.raises(ValueError, match="not an EC key"):
        T.ServiceKey.load(str(rsa))


def test_token_verify_cli(tmp_path):
    k = key()
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(k.jwks()))
    good = token(k, now=int(time.time()))
    (tmp_path / "tok").write_text(good + "\n")

    def run(*args):
        return subprocess.run(command("token", "verify", *args), capture_output=True,
                              text=True, env=environment(), timeout=30)
    r = run("@" + str(tmp_path / "tok"), "--jwks", str(jwks), "--audience", "rp",
            "--uuid", CLAIMS["instance_uuid"])
    assert r.returncode == 0 and json.loads(r.stdout)["ctpm.ak-name"], r.stderr
    r = run(token(k, now=int(time.time()) - 1000), "--jwks", str(jwks),
            "--audience", "rp")
    assert r.returncode == 1 and r.stderr.startswith("ctpm: token refused: expired:")
    assert r.stderr.count("\n") == 1
    r = run(token(key(), now=int(time.time())), "--jwks", str(jwks), "--audience", "rp")
    assert r.returncode == 1 and "unknown_kid" in r.stderr
    r = run(good, "--jwks", str(tmp_path / "missing.json"), "--audience", "rp")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
