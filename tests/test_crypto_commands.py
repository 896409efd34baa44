"""The cryptographic commands: TPM2_Sign, VerifySignature, RSA_Encrypt, RSA_Decrypt,
ECDH_KeyGen, ECDH_ZGen, EncryptDecrypt, EncryptDecrypt2, HMAC and LoadExternal.

1. Through tpm2-pytss ESAPI against the in-process daemon. Every result is checked outside
   the TPM: signatures with `cryptography` (ECSCHNORR, which no library has, with the small
   independent elliptic-curve code below), ciphertexts decrypted or produced by
   `cryptography`, shared secrets against `cryptography`'s ECDH, AES modes against
   `cryptography`'s. Nothing here uses ctpm's own crypto code.
2. Differential: the same command bytes to ctpm and to swtpm (libtpms), compared byte for
   byte where the answer is deterministic - the same private keys loaded into both with
   LoadExternal give identical PKCS #1 v1.5 signatures, decryptions, ECDH points, AES and
   HMAC results, and identical error codes; randomized signatures made by one TPM are
   verified by the other.
"""
import hashlib
import hmac
import os
import secrets
import struct

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

try:
    from cryptography.hazmat.decrepit.ciphers.modes import CFB, OFB
except ImportError:     # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB, OFB

from ctpm.testing import manufacture_test_tpm, startup, with_esapi
from tests import weierstrass
from tests.peers import Pair, Swtpm, needs_swtpm
from tests.tpmcmd import b2, cmd, params, pw_session, rc, u16, u32

tpm2_pytss = pytest.importorskip("tpm2_pytss")
from tpm2_pytss import ESYS_TR, TSS2_Exception  # noqa: E402
from tpm2_pytss.constants import (TPM2_ALG, TPM2_RC, TPM2_RH, TPM2_ST,  # noqa: E402
                                  TPMA_OBJECT)
from tpm2_pytss.types import (TPM2B_ECC_POINT, TPM2B_PUBLIC, TPM2B_SENSITIVE,  # noqa: E402
                              TPM2B_SENSITIVE_CREATE, TPMS_ECC_POINT, TPMS_SENSITIVE_CREATE,
                              TPMS_SIGNATURE_ECC, TPMT_HA, TPMT_PUBLIC, TPMT_RSA_DECRYPT,
                              TPMT_SIG_SCHEME, TPMT_SIGNATURE, TPMT_TK_HASHCHECK,
                              TPMT_SENSITIVE, TPMU_SIGNATURE)

HASHES = {"sha1": TPM2_ALG.SHA1, "sha256": TPM2_ALG.SHA256, "sha384": TPM2_ALG.SHA384,
          "sha512": TPM2_ALG.SHA512}
CHASH = {"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384,
         "sha512": hashes.SHA512}
SIGN = (TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.SENSITIVEDATAORIGIN
        | TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT)
DECRYPT = (TPMA_OBJECT.DECRYPT | TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.SENSITIVEDATAORIGIN
           | TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT)
RH_OWNER, RH_NULL = 0x40000001, 0x40000007


def rc_param(code, n):
    return int(code) | 0x040 | (n << 8)


def rc_handle(code, n):
    return int(code) | (n << 8)


# -- elliptic-curve checks outside ctpm (ECSCHNORR and points; tests/weierstrass.py) ----------

class Nist(weierstrass.Curve):
    """A NIST curve from its defining formulas; G and b are read off `cryptography`."""

    def __init__(self, cls, p, n, tpm_id):
        g = ec.derive_private_key(1, cls()).public_key().public_numbers()
        a = p - 3
        super().__init__(p, a, (g.y * g.y - g.x ** 3 - a * g.x) % p, (g.x, g.y), n, tpm_id)
        self.cls = cls

    def schnorr_hash(self, hash_name, x, digest):
        """r = H(x || digest), truncated to the byte size of n (the reference's ECSCHNORR)."""
        h = hashlib.new(hash_name, x.to_bytes(self.size, "big") + digest).digest()
        return int.from_bytes(h[:self.size], "big")

    def schnorr_sign(self, d, hash_name, digest):
        while True:
            k = secrets.randbelow(self.n - 1) + 1
            r = self.schnorr_hash(hash_name, self.mul(k, self.g)[0], digest)
            s = (k + r * d) % self.n
            if r % self.n and s:
                return r, s

    def schnorr_verify(self, q, hash_name, digest, r, s):
        if not (0 < r < self.n and 0 < s < self.n):
            return False
        e = self.add(self.mul(s, self.g), self.mul(self.n - r, q))
        return e is not None and self.schnorr_hash(hash_name, e[0], digest) == r


P256 = Nist(ec.SECP256R1, 2**256 - 2**224 + 2**192 + 2**96 - 1,
            0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551, 0x0003)
P384 = Nist(ec.SECP384R1, 2**384 - 2**128 - 2**96 + 2**32 - 1,
            int("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF"
                "581A0DB248B0A77AECEC196ACCC52973", 16), 0x0004)
P521 = Nist(ec.SECP521R1, 2**521 - 1,
            int("01FF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFA"
                "51868783 BF2F966B 7FCC0148 F709A5D0 3BB5C9B8 899C47AE BB6FB71E 91386409"
                .replace(" ", ""), 16),
            0x0005)
CURVES = {"ecc256": P256, "ecc384": P384, "ecc521": P521}


def test_the_independent_curve_code_agrees_with_openssl():
    for c in CURVES.values():
        d = secrets.randbelow(c.n - 1) + 1
        pub = ec.derive_private_key(d, c.cls()).public_key().public_numbers()
        assert c.mul(d, c.g) == (pub.x, pub.y) and c.on_curve((pub.x, pub.y))


# -- ESAPI plumbing ---------------------------------------------------------------------------

def template(spec, attrs):
    return TPM2B_PUBLIC(TPMT_PUBLIC.parse(spec, objectAttributes=attrs))


def primary(esapi, spec, attrs, data=b""):
    """A primary key from a tpm2-pytss template string ("aes128null": AES without a mode)."""
    sensitive = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(data=data)) if data else None
    if data:
        attrs &= ~TPMA_OBJECT.SENSITIVEDATAORIGIN
    no_mode = spec.endswith("null") and spec.startswith("aes")
    public = template(spec[:-4] + "cfb" if no_mode else spec, attrs)
    if no_mode:
        public.publicArea.parameters.symDetail.sym.mode.sym = TPM2_ALG.NULL
    handle, public, *_ = esapi.create_primary(sensitive, public)
    return handle, public


def null_ticket():
    return TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.NULL)


def scheme(alg=TPM2_ALG.NULL, hash_alg=TPM2_ALG.NULL):
    s = TPMT_SIG_SCHEME(scheme=alg)
    s.details.any.hashAlg = hash_alg
    return s


def tpm_error(fn, *args):
    with pytest.raises(TSS2_Exception) as e:
        fn(*args)
    return e.value.rc


def rsa_public(public) -> rsa.RSAPublicKey:
    p = public.publicArea
    n = int.from_bytes(bytes(p.unique.rsa), "big")
    return rsa.RSAPublicNumbers(p.parameters.rsaDetail.exponent or 65537, n).public_key()


def ecc_point(public):
    u = public.publicArea.unique.ecc
    return int.from_bytes(bytes(u.x), "big"), int.from_bytes(bytes(u.y), "big")


def ecc_public(public, curve) -> ec.EllipticCurvePublicKey:
    x, y = ecc_point(public)
    return ec.EllipticCurvePublicNumbers(x, y, curve.cls()).public_key()


def pem_private(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def pem_public(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def external_public(key, attrs) -> TPM2B_PUBLIC:
    """TPM2B_PUBLIC of a `cryptography` key; ECC coordinates padded to the curve size, as
    the TPM requires (tpm2-pytss drops leading zeros)."""
    public = TPM2B_PUBLIC.from_pem(pem_public(key), objectAttributes=attrs)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        size = (key.curve.key_size + 7) // 8
        u = public.publicArea.unique.ecc
        u.x, u.y = bytes(u.x).rjust(size, b"\0"), bytes(u.y).rjust(size, b"\0")
    return public


# -- TPM2_Sign / TPM2_VerifySignature ---------------------------------------------------------

@pytest.mark.parametrize("where", ["key", "input"])
@pytest.mark.parametrize("hash_name", ["sha256", "sha384"])
@pytest.mark.parametrize("sig_scheme", ["rsassa", "rsapss"])
async def test_rsa_signatures(ctpm_server, sig_scheme, hash_name, where):
    """RSA 2048 RSASSA and RSAPSS, the scheme from the key or from inScheme; checked by
    `cryptography` (PSS with salt = hash length) and by TPM2_VerifySignature."""
    alg = {"rsassa": TPM2_ALG.RSASSA, "rsapss": TPM2_ALG.RSAPSS}[sig_scheme]
    digest = hashlib.new(hash_name, b"to be signed").digest()

    def scenario(esapi):
        if where == "key":
            key, public = primary(esapi, f"rsa2048:{sig_scheme}-{hash_name}:null", SIGN)
            in_scheme = scheme()
        else:
            key, public = primary(esapi, "rsa2048:null:null", SIGN)
            in_scheme = scheme(alg, HASHES[hash_name])
        sig = esapi.sign(key, digest, in_scheme, null_ticket())
        ticket = esapi.verify_signature(key, digest, sig)
        again = esapi.verify_signature(key, digest, sig)
        other = hashlib.new(hash_name, b"something else").digest()
        bad = tpm_error(esapi.verify_signature, key, other, sig)
        return public, sig, ticket, again, bad

    public, sig, ticket, again, bad = await with_esapi(ctpm_server, scenario)
    assert sig.sigAlg == alg and sig.signature.rsassa.hash == HASHES[hash_name]
    raw = bytes(sig.signature.rsassa.sig)
    assert len(raw) == 256
    h = CHASH[hash_name]()
    if sig_scheme == "rsassa":
        pad = padding.PKCS1v15()
    else:   # the salt is as long as the hash (the reference TPM's choice)
        pad = padding.PSS(mgf=padding.MGF1(CHASH[hash_name]()), salt_length=h.digest_size)
    rsa_public(public).verify(raw, digest, pad, utils.Prehashed(h))
    assert ticket.tag == TPM2_ST.VERIFIED and ticket.hierarchy == TPM2_RH.OWNER
    assert len(bytes(ticket.digest)) == 64 and bytes(again.digest) == bytes(ticket.digest)
    assert bad == rc_param(TPM2_RC.SIGNATURE, 2)


def ecdsa_check(public_key, digest, r, s, hash_name):
    public_key.verify(utils.encode_dss_signature(r, s), digest,
                      ec.ECDSA(utils.Prehashed(CHASH[hash_name]())))


@pytest.mark.parametrize("hash_name", ["sha256", "sha384", "sha512"])
@pytest.mark.parametrize("sig_scheme", ["ecdsa", "ecschnorr"])
@pytest.mark.parametrize("curve", ["ecc256", "ecc384", "ecc521"])
async def test_ecc_signatures(ctpm_server, curve, sig_scheme, hash_name):
    """ECDSA (checked by `cryptography`) and ECSCHNORR (by the code above) on P-256/384/521;
    a Schnorr signature made outside verifies in the TPM."""
    c = CURVES[curve]
    alg = {"ecdsa": TPM2_ALG.ECDSA, "ecschnorr": TPM2_ALG.ECSCHNORR}[sig_scheme]
    digest = hashlib.new(hash_name, b"ecc message").digest()

    def scenario(esapi):
        key, public = primary(esapi, f"{curve}:{sig_scheme}-{hash_name}:null", SIGN)
        sigs = [esapi.sign(key, digest, scheme(), null_ticket()) for _ in range(2)]
        tickets = [esapi.verify_signature(key, digest, s) for s in sigs]
        bad = tpm_error(esapi.verify_signature, key, digest[::-1], sigs[0])
        return public, sigs, tickets, bad

    public, sigs, tickets, bad = await with_esapi(ctpm_server, scenario)
    q = ecc_point(public)
    assert c.on_curve(q)
    rs = []
    for sig in sigs:
        assert sig.sigAlg == alg and sig.signature.ecdsa.hash == HASHES[hash_name]
        r_raw, s_raw = bytes(sig.signature.ecdsa.signatureR), bytes(sig.signature.ecdsa.signatureS)
        assert len(r_raw) == len(s_raw) == c.size
        r, s = int.from_bytes(r_raw, "big"), int.from_bytes(s_raw, "big")
        rs.append((r, s))
        if sig_scheme == "ecdsa":
            ecdsa_check(ecc_public(public, c), digest, r, s, hash_name)
        else:
            assert c.schnorr_verify(q, hash_name, digest, r, s)
            assert not c.schnorr_verify(q, hash_name, digest[::-1], r, s)
    assert rs[0] != rs[1]                            # a fresh nonce each time
    assert all(t.hierarchy == TPM2_RH.OWNER for t in tickets)
    assert bad == rc_param(TPM2_RC.SIGNATURE, 2)


@pytest.mark.parametrize("curve", ["ecc256", "ecc384", "ecc521"])
async def test_signatures_made_outside_verify_in_the_tpm(ctpm_server, curve):
    """An ECDSA signature by `cryptography` and an ECSCHNORR signature by the code above,
    checked by TPM2_VerifySignature on the key loaded public-only with LoadExternal."""
    c = CURVES[curve]
    key = ec.generate_private_key(c.cls())
    d = key.private_numbers().private_value
    q = (key.public_key().public_numbers().x, key.public_key().public_numbers().y)
    digest = hashlib.sha256(b"outside").digest()
    r1, s1 = utils.decode_dss_signature(key.sign(digest, ec.ECDSA(utils.Prehashed(
        hashes.SHA256()))))
    r2, s2 = c.schnorr_sign(d, "sha256", digest)

    def ecc_sig(alg, r, s):
        return TPMT_SIGNATURE(sigAlg=alg, signature=TPMU_SIGNATURE(ecdsa=TPMS_SIGNATURE_ECC(
            hash=TPM2_ALG.SHA256, signatureR=r.to_bytes(c.size, "big"),
            signatureS=s.to_bytes(c.size, "big"))))

    def scenario(esapi):
        public = external_public(key, TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.USERWITHAUTH)
        handle = esapi.load_external(public, None, ESYS_TR.OWNER)
        t1 = esapi.verify_signature(handle, digest, ecc_sig(TPM2_ALG.ECDSA, r1, s1))
        t2 = esapi.verify_signature(handle, digest, ecc_sig(TPM2_ALG.ECSCHNORR, r2, s2))
        errors = [tpm_error(esapi.verify_signature, handle, digest, ecc_sig(alg, r, s))
                  for alg, r, s in ((TPM2_ALG.ECDSA, r2, s2), (TPM2_ALG.ECSCHNORR, r1, s1),
                                    (TPM2_ALG.ECDSA, 0, s1), (TPM2_ALG.ECDSA, r1, c.n),
                                    (TPM2_ALG.ECSCHNORR, r2, (s2 + 1) % c.n or 1))]
        return t1, t2, errors

    t1, t2, errors = await with_esapi(ctpm_server, scenario)
    assert t1.hierarchy == t2.hierarchy == TPM2_RH.OWNER
    assert errors == [rc_param(TPM2_RC.SIGNATURE, 2)] * 5
    assert c.schnorr_verify(q, "sha256", digest, r2, s2)


async def test_hmac_keys(ctpm_server):
    """A keyed-hash key with a known secret: TPM2_HMAC, TPM2_Sign with HMAC and its
    verification, against hmac.new."""
    secret = b"\x5a" * 32
    digest = hashlib.sha256(b"hmac me").digest()

    def scenario(esapi):
        key, _ = primary(esapi, "hmac:sha256", SIGN, data=secret)
        out = esapi.hmac(key, b"some data", TPM2_ALG.NULL)
        out2 = esapi.hmac(key, b"some data", TPM2_ALG.SHA256)
        conflict = tpm_error(esapi.hmac, key, b"x", TPM2_ALG.SHA1)
        sig = esapi.sign(key, digest, scheme(), null_ticket())
        ticket = esapi.verify_signature(key, digest, sig)
        forged = TPMT_SIGNATURE(sigAlg=TPM2_ALG.HMAC, signature=TPMU_SIGNATURE(
            hmac=TPMT_HA(hashAlg=TPM2_ALG.SHA256)))
        forged.signature.hmac.digest.sha256 = b"\0" * 32
        bad = tpm_error(esapi.verify_signature, key, digest, forged)
        # a key without a scheme (so both sign and decrypt) takes the command's hash
        free, _ = primary(esapi, "keyedhash", SIGN | TPMA_OBJECT.DECRYPT, data=secret)
        sha384 = esapi.hmac(free, b"abc", TPM2_ALG.SHA384)
        none = tpm_error(esapi.hmac, free, b"abc", TPM2_ALG.NULL)
        return out, out2, conflict, sig, ticket, bad, sha384, none

    out, out2, conflict, sig, ticket, bad, sha384, none = \
        await with_esapi(ctpm_server, scenario)
    assert bytes(out) == bytes(out2) == hmac.new(secret, b"some data", "sha256").digest()
    assert conflict == none == rc_param(TPM2_RC.VALUE, 2)
    assert sig.sigAlg == TPM2_ALG.HMAC
    assert bytes(sig.signature.hmac.digest.sha256) == hmac.new(secret, digest, "sha256").digest()
    assert ticket.hierarchy == TPM2_RH.OWNER
    assert bad == rc_param(TPM2_RC.SIGNATURE, 2)
    assert bytes(sha384) == hmac.new(secret, b"abc", "sha384").digest()


async def test_restricted_keys_sign_only_what_the_tpm_hashed(ctpm_server):
    """A restricted signing key needs a TPMT_TK_HASHCHECK from TPM2_Hash (of the same hash
    algorithm and hierarchy); an unrestricted key takes a NULL ticket, but a ticket it is
    given must be right."""
    data = b"message hashed by the TPM"

    def scenario(esapi):
        key, public = primary(esapi, "rsa2048:rsassa-sha256:null", SIGN | TPMA_OBJECT.RESTRICTED)
        digest, ticket = esapi.hash(data, TPM2_ALG.SHA256, ESYS_TR.OWNER)
        sig = esapi.sign(key, digest, scheme(), ticket)
        errors = {
            "null ticket": tpm_error(esapi.sign, key, digest, scheme(), null_ticket()),
            "other digest": tpm_error(esapi.sign, key, hashlib.sha256(b"x").digest(),
                                      scheme(), ticket),
        }
        # a NULL-hierarchy hash has no ticket, nor data that starts like TPM-made data
        d_null, t_null = esapi.hash(data, TPM2_ALG.SHA256, ESYS_TR.NULL)
        errors["NULL hierarchy"] = tpm_error(esapi.sign, key, d_null, scheme(), t_null)
        d_gen, t_gen = esapi.hash(b"\xffTCG" + data, TPM2_ALG.SHA256, ESYS_TR.OWNER)
        errors["TPM_GENERATED"] = tpm_error(esapi.sign, key, d_gen, scheme(), t_gen)
        # a ticket for the same digest from another hierarchy or for another hash
        d_e, t_e = esapi.hash(data, TPM2_ALG.SHA256, ESYS_TR.ENDORSEMENT)
        t_e.hierarchy = TPM2_RH.OWNER
        errors["other hierarchy"] = tpm_error(esapi.sign, key, d_e, scheme(), t_e)
        d384, t384 = esapi.hash(data, TPM2_ALG.SHA384, ESYS_TR.OWNER)
        errors["sha384 ticket"] = tpm_error(esapi.sign, key, d384, scheme(), t384)
        # unrestricted: NULL ticket fine, a valid one fine, a forged one not
        free, free_public = primary(esapi, "rsa2048:rsassa-sha256:null", SIGN)
        esapi.sign(free, digest, scheme(), null_ticket())
        esapi.sign(free, digest, scheme(), ticket)
        forged = TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.OWNER,
                                   digest=b"\1" * 64)
        errors["forged"] = tpm_error(esapi.sign, free, digest, scheme(), forged)
        return public, digest, sig, errors

    public, digest, sig, errors = await with_esapi(ctpm_server, scenario)
    assert bytes(digest) == hashlib.sha256(data).digest()
    rsa_public(public).verify(bytes(sig.signature.rsassa.sig), data, padding.PKCS1v15(),
                              hashes.SHA256())
    assert errors == {k: rc_param(TPM2_RC.TICKET, 3) for k in errors}


async def test_sign_and_verify_errors(ctpm_server):
    def scenario(esapi):
        rsa_key, _ = primary(esapi, "rsa2048:rsassa-sha256:null", SIGN)
        free, _ = primary(esapi, "rsa2048:null:null", SIGN)
        dec, _ = primary(esapi, "rsa2048:null:null", DECRYPT)
        ecc_key, _ = primary(esapi, "ecc256:ecdsa-sha256:null", SIGN)
        sym, _ = primary(esapi, "aes128cfb", DECRYPT | TPMA_OBJECT.SIGN_ENCRYPT)
        d256 = hashlib.sha256(b"d").digest()
        sig = esapi.sign(rsa_key, d256, scheme(), null_ticket())
        ecc_sig = esapi.sign(ecc_key, d256, scheme(), null_ticket())
        return {
            "scheme conflicts with key": tpm_error(
                esapi.sign, rsa_key, d256, scheme(TPM2_ALG.RSAPSS, TPM2_ALG.SHA256),
                null_ticket()),
            "hash conflicts with key": tpm_error(
                esapi.sign, rsa_key, hashlib.sha384(b"d").digest(),
                scheme(TPM2_ALG.RSASSA, TPM2_ALG.SHA384), null_ticket()),
            "no scheme at all": tpm_error(esapi.sign, free, d256, scheme(), null_ticket()),
            "ECDSA with an RSA key": tpm_error(
                esapi.sign, free, d256, scheme(TPM2_ALG.ECDSA, TPM2_ALG.SHA256),
                null_ticket()),
            "digest size": tpm_error(esapi.sign, rsa_key, d256[:20], scheme(), null_ticket()),
            "digest size, input scheme": tpm_error(
                esapi.sign, free, d256, scheme(TPM2_ALG.RSASSA, TPM2_ALG.SHA384),
                null_ticket()),
            "decryption key": tpm_error(esapi.sign, dec, d256,
                                        scheme(TPM2_ALG.RSASSA, TPM2_ALG.SHA256), null_ticket()),
            "symmetric key": tpm_error(esapi.sign, sym, d256, scheme(TPM2_ALG.HMAC,
                                                                     TPM2_ALG.SHA256),
                                       null_ticket()),
            "verify: ECDSA signature, RSA key": tpm_error(esapi.verify_signature, rsa_key, d256,
                                                          ecc_sig),
            "verify: RSA signature, ECC key": tpm_error(esapi.verify_signature, ecc_key, d256,
                                                        sig),
            "verify: not a signing key": tpm_error(esapi.verify_signature, dec, d256, sig),
            "verify: wrong digest size": tpm_error(esapi.verify_signature, rsa_key, d256[:31],
                                                   sig),
        }

    errors = await with_esapi(ctpm_server, scenario)
    assert errors == {
        "scheme conflicts with key": rc_param(TPM2_RC.SCHEME, 2),
        "hash conflicts with key": rc_param(TPM2_RC.SCHEME, 2),
        "no scheme at all": rc_param(TPM2_RC.SCHEME, 2),
        "ECDSA with an RSA key": rc_param(TPM2_RC.SCHEME, 2),
        "digest size": rc_param(TPM2_RC.SIZE, 1),
        "digest size, input scheme": rc_param(TPM2_RC.SIZE, 1),
        "decryption key": rc_handle(TPM2_RC.KEY, 1),
        "symmetric key": rc_handle(TPM2_RC.KEY, 1),
        "verify: ECDSA signature, RSA key": rc_param(TPM2_RC.SCHEME, 2),
        "verify: RSA signature, ECC key": rc_param(TPM2_RC.SCHEME, 2),
        "verify: not a signing key": rc_handle(TPM2_RC.ATTRIBUTES, 1),
        "verify: wrong digest size": rc_param(TPM2_RC.SIGNATURE, 2),
    }


# -- RSA_Encrypt / RSA_Decrypt ----------------------------------------------------------------

def oaep(hash_name, label):
    return padding.OAEP(mgf=padding.MGF1(CHASH[hash_name]()), algorithm=CHASH[hash_name](),
                        label=label or None)


def rsa_decrypt_scheme(alg, hash_alg=TPM2_ALG.SHA256):
    s = TPMT_RSA_DECRYPT(scheme=alg)
    if alg == TPM2_ALG.OAEP:
        s.details.oaep.hashAlg = hash_alg
    return s


@pytest.mark.parametrize("case", ["oaep-sha256-label", "oaep-sha1", "oaep-sha384",
                                  "rsaes", "null"])
async def test_rsa_encryption_both_ways(ctpm_server, case):
    """A key made outside is loaded (public and private, NULL hierarchy): what `cryptography`
    encrypts the TPM decrypts and vice versa. The TPM's own key decrypts what `cryptography`
    encrypted to its public key."""
    key = rsa.generate_private_key(65537, 2048)
    n = key.public_key().public_numbers().n
    message = b"a secret message"
    label = b"my label\0" if case.endswith("label") else b""
    if case.startswith("oaep"):
        hash_name = case.split("-")[1]
        pad, tpm_scheme = oaep(hash_name, label), rsa_decrypt_scheme(TPM2_ALG.OAEP,
                                                                      HASHES[hash_name])
    elif case == "rsaes":
        pad, tpm_scheme = padding.PKCS1v15(), rsa_decrypt_scheme(TPM2_ALG.RSAES)
    else:
        pad, tpm_scheme = None, rsa_decrypt_scheme(TPM2_ALG.NULL)

    def encrypt_outside(public_key, m):
        if pad is None:     # raw RSA: m^e mod n
            nn = public_key.public_numbers().n
            return pow(int.from_bytes(m, "big"), 65537, nn).to_bytes(256, "big")
        return public_key.encrypt(m, pad)

    def decrypt_outside(c):
        if pad is None:
            d = key.private_numbers().d
            return pow(int.from_bytes(c, "big"), d, n).to_bytes(256, "big")
        return key.decrypt(c, pad)

    def scenario(esapi):
        public = TPM2B_PUBLIC.from_pem(pem_public(key), objectAttributes=TPMA_OBJECT.DECRYPT
                                       | TPMA_OBJECT.USERWITHAUTH)
        handle = esapi.load_external(public, TPM2B_SENSITIVE.from_pem(pem_private(key)),
                                     ESYS_TR.NULL)
        in_tpm = bytes(esapi.rsa_encrypt(handle, message, tpm_scheme, label))
        twice = bytes(esapi.rsa_encrypt(handle, message, tpm_scheme, label))
        out_of_tpm = bytes(esapi.rsa_decrypt(handle, encrypt_outside(key.public_key(), message),
                                             tpm_scheme, label))
        own, own_public = primary(esapi, "rsa2048:null:null", DECRYPT)
        own_in = encrypt_outside(rsa_public(own_public), message)
        own_out = bytes(esapi.rsa_decrypt(own, own_in, tpm_scheme, label))
        return in_tpm, twice, out_of_tpm, own_out

    in_tpm, twice, out_of_tpm, own_out = await with_esapi(ctpm_server, scenario)
    assert len(in_tpm) == 256
    if pad is None:
        expected = message.rjust(256, b"\0")
        assert in_tpm == twice                      # raw RSA is deterministic
    else:
        expected = message
        assert in_tpm != twice                      # padding is random
    assert decrypt_outside(in_tpm).lstrip(b"\0") == message
    assert out_of_tpm == own_out == expected


async def test_rsa_encryption_errors(ctpm_server):
    def scenario(esapi):
        dec, public = primary(esapi, "rsa2048:null:null", DECRYPT)
        sign_key, _ = primary(esapi, "rsa2048:rsassa-sha256:null", SIGN)
        oaep_key, _ = primary(esapi, "rsa2048:oaep-sha256:null", DECRYPT)
        ecc, _ = primary(esapi, "ecc256:ecdh-sha256:null", DECRYPT)
        OAEP, RSAES = rsa_decrypt_scheme(TPM2_ALG.OAEP), rsa_decrypt_scheme(TPM2_ALG.RSAES)
        good = esapi.rsa_encrypt(dec, b"m", OAEP, b"")
        n = int.from_bytes(bytes(public.publicArea.unique.rsa), "big")
        return {
            "label without terminating zero": tpm_error(esapi.rsa_encrypt, dec, b"m", OAEP,
                                                        b"label"),
            "decrypt: label without zero": tpm_error(esapi.rsa_decrypt, dec, good, OAEP,
                                                     b"label"),
            "decrypt with a signing key": tpm_error(esapi.rsa_decrypt, sign_key, good, OAEP),
            "encrypt with a signing key": tpm_error(esapi.rsa_encrypt, sign_key, b"m", OAEP),
            "scheme conflicts with the key": tpm_error(esapi.rsa_encrypt, oaep_key, b"m",
                                                       RSAES),
            "message too long for RSAES": tpm_error(esapi.rsa_encrypt, dec, b"m" * 246, RSAES),
            "message too long for OAEP": tpm_error(esapi.rsa_encrypt, dec, b"m" * 191, OAEP),
            "OAEP with the wrong label": tpm_error(esapi.rsa_decrypt, dec, good, OAEP, b"x\0"),
            "RSAES padding of an OAEP block": tpm_error(esapi.rsa_decrypt, dec, good, RSAES),
            "ciphertext of the wrong size": tpm_error(esapi.rsa_decrypt, dec, bytes(good)[1:],
                                                      OAEP),
            "ciphertext not below n": tpm_error(esapi.rsa_decrypt, dec,
                                                (n + 1).to_bytes(256, "big"), OAEP),
            "ECC key": tpm_error(esapi.rsa_encrypt, ecc, b"m", OAEP),
        }

    errors = await with_esapi(ctpm_server, scenario)
    assert errors == {
        "label without terminating zero": rc_param(TPM2_RC.VALUE, 3),
        "decrypt: label without zero": rc_param(TPM2_RC.VALUE, 3),
        "decrypt with a signing key": rc_handle(TPM2_RC.ATTRIBUTES, 1),
        "encrypt with a signing key": rc_handle(TPM2_RC.ATTRIBUTES, 1),
        "scheme conflicts with the key": rc_param(TPM2_RC.SCHEME, 2),
        "message too long for RSAES": TPM2_RC.VALUE,
        "message too long for OAEP": TPM2_RC.VALUE,
        "OAEP with the wrong label": TPM2_RC.VALUE,
        "RSAES padding of an OAEP block": TPM2_RC.VALUE,
        "ciphertext of the wrong size": TPM2_RC.SIZE,
        "ciphertext not below n": TPM2_RC.SIZE,
        "ECC key": rc_handle(TPM2_RC.KEY, 1),
    }


# -- ECDH_KeyGen / ECDH_ZGen ------------------------------------------------------------------

def ecc_2b(c, point) -> TPM2B_ECC_POINT:
    size = max(c.size, (max(point).bit_length() + 7) // 8)
    return TPM2B_ECC_POINT(TPMS_ECC_POINT(x=point[0].to_bytes(size, "big"),
                                          y=point[1].to_bytes(size, "big")))


def point_of(p2b):
    return int.from_bytes(bytes(p2b.point.x), "big"), int.from_bytes(bytes(p2b.point.y), "big")


@pytest.mark.parametrize("curve", ["ecc256", "ecc384", "ecc521"])
async def test_ecdh(ctpm_server, curve):
    """ZGen of an outside ephemeral key equals `cryptography`'s ECDH; KeyGen's Z is the
    shared secret the key's owner computes from pubPoint (checked with a key loaded from
    outside). Both whole points are checked with the independent curve code."""
    c = CURVES[curve]
    peer = ec.generate_private_key(c.cls())
    peer_pub = peer.public_key().public_numbers()
    outside = ec.generate_private_key(c.cls())
    attrs = TPMA_OBJECT.DECRYPT | TPMA_OBJECT.USERWITHAUTH

    def scenario(esapi):
        key, public = primary(esapi, f"{curve}:ecdh-sha256:null", DECRYPT)
        z = esapi.ecdh_zgen(key, ecc_2b(c, (peer_pub.x, peer_pub.y)))
        gens = [esapi.ecdh_key_gen(key) for _ in range(2)]
        ext = esapi.load_external(external_public(outside, attrs), None, ESYS_TR.OWNER)
        ext_z, ext_pub = esapi.ecdh_key_gen(ext)
        off = tpm_error(esapi.ecdh_zgen, key, ecc_2b(c, (peer_pub.x, peer_pub.y ^ 1)))
        return public, z, gens, ext_z, ext_pub, off

    public, z, gens, ext_z, ext_pub, off = await with_esapi(ctpm_server, scenario)
    q = ecc_point(public)
    shared = peer.exchange(ec.ECDH(), ecc_public(public, c))
    assert bytes(z.point.x) == shared
    d_peer = peer.private_numbers().private_value
    assert point_of(z) == c.mul(d_peer, q)
    (z1, p1), (z2, p2) = gens
    assert point_of(p1) != point_of(p2)
    for zz, pp in gens:         # Z = [k]Q where pubPoint = [k]G: check with [k] unknown
        assert c.on_curve(point_of(pp)) and c.on_curve(point_of(zz))
        assert len(bytes(zz.point.x)) == len(bytes(pp.point.y)) == c.size
    expected = outside.exchange(ec.ECDH(), ec.EllipticCurvePublicNumbers(
        *point_of(ext_pub), c.cls()).public_key())
    assert bytes(ext_z.point.x) == expected
    assert point_of(ext_z) == c.mul(outside.private_numbers().private_value, point_of(ext_pub))
    assert off == rc_param(TPM2_RC.ECC_POINT, 1)


async def test_ecdh_errors(ctpm_server):
    def scenario(esapi):
        sign_key, _ = primary(esapi, "ecc256:ecdsa-sha256:null", SIGN)
        rsa_key, _ = primary(esapi, "rsa2048:null:null", DECRYPT)
        dh_key, _ = primary(esapi, "ecc256:ecdh-sha256:null", DECRYPT)
        point = ecc_2b(P256, P256.g)
        return {
            "ZGen with a signing key": tpm_error(esapi.ecdh_zgen, sign_key, point),
            "ZGen with an RSA key": tpm_error(esapi.ecdh_zgen, rsa_key, point),
            "KeyGen with an RSA key": tpm_error(esapi.ecdh_key_gen, rsa_key),
            "ZGen, coordinate not below p": tpm_error(
                esapi.ecdh_zgen, dh_key, ecc_2b(P256, (P256.g[0] + P256.p, P256.g[1]))),
        }

    errors = await with_esapi(ctpm_server, scenario)
    assert errors == {
        "ZGen with a signing key": rc_handle(TPM2_RC.ATTRIBUTES, 1),
        "ZGen with an RSA key": rc_handle(TPM2_RC.KEY, 1),
        "KeyGen with an RSA key": rc_handle(TPM2_RC.KEY, 1),
        "ZGen, coordinate not below p": rc_param(TPM2_RC.ECC_POINT, 1),
    }


# -- EncryptDecrypt / EncryptDecrypt2 / HMAC --------------------------------------------------

MODES = {"cfb": TPM2_ALG.CFB, "cbc": TPM2_ALG.CBC, "ctr": TPM2_ALG.CTR, "ofb": TPM2_ALG.OFB,
         "ecb": TPM2_ALG.ECB}


def aes_outside(key, mode, iv, data, decrypt=False):
    m = {"cfb": lambda: CFB(iv), "cbc": lambda: modes.CBC(iv), "ctr": lambda: modes.CTR(iv),
         "ofb": lambda: OFB(iv), "ecb": modes.ECB}[mode]()
    c = Cipher(algorithms.AES(key), m)
    ctx = c.decryptor() if decrypt else c.encryptor()
    return ctx.update(data) + ctx.finalize()


def expected_iv_out(key, mode, iv, data, cipher_text):
    """What continues the chain (the reference TPM's CryptSymmetricEncrypt)."""
    blocks = (len(data) + 15) // 16
    if mode == "ecb":
        return b""
    if mode == "cbc":
        return cipher_text[-16:]
    if mode == "cfb":
        tail = len(data) % 16 or 16
        return cipher_text[-tail:].ljust(16, b"\0")
    if mode == "ctr":
        return ((int.from_bytes(iv, "big") + blocks) % 2**128).to_bytes(16, "big")
    stream = aes_outside(key, "ofb", iv, bytes(16 * blocks))
    return stream[-16:]


SYM_BOTH = TPMA_OBJECT.DECRYPT | TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.USERWITHAUTH
SYM_ENCRYPT = TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.USERWITHAUTH


@pytest.mark.parametrize("bits", [128, 192, 256])
@pytest.mark.parametrize("mode", list(MODES))
async def test_aes_modes(ctpm_server, mode, bits):
    """EncryptDecrypt and EncryptDecrypt2 against `cryptography`, with the mode from the
    command (an encrypt-only key without a mode) and from the key; ivOut continues the
    chain."""
    key = bytes(range(bits // 8))
    iv = b"" if mode == "ecb" else os.urandom(16)
    data = os.urandom(64 if mode in ("cbc", "ecb") else 61)
    expected = aes_outside(key, mode, iv, data)

    def scenario(esapi):
        free, _ = primary(esapi, f"aes{bits}null", SYM_ENCRYPT, data=key)
        fixed, _ = primary(esapi, f"aes{bits}{mode}", SYM_BOTH, data=key)
        results = []
        for handle, m in ((free, MODES[mode]), (fixed, TPM2_ALG.NULL), (fixed, MODES[mode])):
            out, iv_out = esapi.encrypt_decrypt_2(handle, False, m, iv, data)
            out1, iv_out1 = esapi.encrypt_decrypt(handle, False, m, iv, data)
            results.append((bytes(out), bytes(iv_out), bytes(out1), bytes(iv_out1)))
        back, back_iv = esapi.encrypt_decrypt_2(fixed, True, TPM2_ALG.NULL, iv, expected)
        back1, back_iv1 = esapi.encrypt_decrypt(fixed, True, MODES[mode], iv, expected)
        both, _ = primary(esapi, f"aes{bits}null", SYM_BOTH, data=key)
        back2, back_iv2 = esapi.encrypt_decrypt_2(both, True, MODES[mode], iv, expected)
        # two calls chained through ivOut equal one call (at a block boundary)
        first, iv_mid = esapi.encrypt_decrypt_2(free, False, MODES[mode], iv, data[:32])
        second, _ = esapi.encrypt_decrypt_2(free, False, MODES[mode], iv_mid, data[32:])
        return (results, (bytes(back), bytes(back_iv), bytes(back1), bytes(back_iv1),
                          bytes(back2), bytes(back_iv2)), bytes(first) + bytes(second))

    results, back, chained = await with_esapi(ctpm_server, scenario)
    iv_out = expected_iv_out(key, mode, iv, data, expected)
    for out, iv2, out1, iv1 in results:
        assert out == out1 == expected
        assert iv2 == iv1 == iv_out
    assert back == (data, iv_out) * 3               # decryption chains on the ciphertext
    assert chained == expected


async def test_decryption_key_without_a_mode(ctpm_server):
    """A decryption key may leave the mode to the command (the reference's SchemeChecks:
    CryptSymModeIsValid(mode, TRUE)); tpm2_loadexternal -G aes makes such keys."""
    key = bytes(16)

    def scenario(esapi):
        free, _ = primary(esapi, "aes128null", SYM_BOTH, data=key)
        out, _ = esapi.encrypt_decrypt_2(free, True, TPM2_ALG.CBC, bytes(16), bytes(16))
        return bytes(out)

    assert await with_esapi(ctpm_server, scenario) == aes_outside(key, "cbc", bytes(16),
                                                                  bytes(16), decrypt=True)


async def test_encrypt_decrypt_errors(ctpm_server):
    key = bytes(16)

    def scenario(esapi):
        free, _ = primary(esapi, "aes128null", SYM_ENCRYPT, data=key)
        cfb, _ = primary(esapi, "aes128cfb", SYM_BOTH, data=key)
        dec_only, _ = primary(esapi, "aes128cfb", SYM_BOTH & ~TPMA_OBJECT.SIGN_ENCRYPT,
                              data=key)
        rsa_key, _ = primary(esapi, "rsa2048:null:null", DECRYPT)
        iv = bytes(16)
        ed2 = esapi.encrypt_decrypt_2
        return {
            "no mode anywhere": tpm_error(ed2, free, False, TPM2_ALG.NULL, iv, b"x"),
            "mode conflicts with the key": tpm_error(ed2, cfb, False, TPM2_ALG.CBC, iv,
                                                     bytes(16)),
            "CBC, partial block": tpm_error(ed2, free, False, TPM2_ALG.CBC, iv, bytes(15)),
            "ECB, partial block": tpm_error(ed2, free, False, TPM2_ALG.ECB, b"", bytes(17)),
            "ECB with an IV": tpm_error(ed2, free, False, TPM2_ALG.ECB, iv, bytes(16)),
            "IV too short": tpm_error(ed2, free, False, TPM2_ALG.CFB, iv[:8], b"x"),
            "EncryptDecrypt, IV too short": tpm_error(esapi.encrypt_decrypt, free, False,
                                                      TPM2_ALG.CFB, iv[:8], b"x"),
            "EncryptDecrypt, CBC partial": tpm_error(esapi.encrypt_decrypt, free, False,
                                                     TPM2_ALG.CBC, iv, bytes(3)),
            "encrypt without sign": tpm_error(ed2, dec_only, False, TPM2_ALG.CFB, iv, b"x"),
            "decrypt without decrypt": tpm_error(ed2, free, True, TPM2_ALG.CFB, iv, b"x"),
            "RSA key": tpm_error(ed2, rsa_key, False, TPM2_ALG.CFB, iv, b"x"),
            "HMAC with an AES key": tpm_error(esapi.hmac, cfb, b"x", TPM2_ALG.SHA256),
        }

    errors = await with_esapi(ctpm_server, scenario)
    assert errors == {
        "no mode anywhere": rc_param(TPM2_RC.MODE, 3),
        "mode conflicts with the key": rc_param(TPM2_RC.MODE, 3),
        "CBC, partial block": rc_param(TPM2_RC.SIZE, 1),
        "ECB, partial block": rc_param(TPM2_RC.SIZE, 1),
        "ECB with an IV": rc_param(TPM2_RC.SIZE, 4),
        "IV too short": rc_param(TPM2_RC.SIZE, 4),
        "EncryptDecrypt, IV too short": rc_param(TPM2_RC.SIZE, 3),
        "EncryptDecrypt, CBC partial": rc_param(TPM2_RC.SIZE, 4),
        "encrypt without sign": rc_handle(TPM2_RC.ATTRIBUTES, 1),
        "decrypt without decrypt": rc_handle(TPM2_RC.ATTRIBUTES, 1),
        "RSA key": rc_handle(TPM2_RC.KEY, 1),
        "HMAC with an AES key": rc_handle(TPM2_RC.TYPE, 1),
    }


# -- LoadExternal ------------------------------------------------------------------------------

async def test_load_external(ctpm_server):
    """Names as Part 1 defines them; hierarchy rules; a public-only key verifies (with a
    ticket of its hierarchy) but cannot sign."""
    key = rsa.generate_private_key(65537, 2048)
    attrs = TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.USERWITHAUTH
    public = TPM2B_PUBLIC.from_pem(pem_public(key), objectAttributes=attrs,
                                   scheme=None)
    sensitive = TPM2B_SENSITIVE.from_pem(pem_private(key))
    digest = hashlib.sha256(b"external").digest()
    outside_sig = key.sign(b"external", padding.PKCS1v15(), hashes.SHA256())
    expected_name = b"\x00\x0b" + hashlib.sha256(public.publicArea.marshal()).digest()

    def scenario(esapi):
        out = {}
        pub_only = esapi.load_external(public, None, ESYS_TR.OWNER)
        out["name"] = bytes(esapi.tr_get_name(pub_only))
        _, read_name, qualified = esapi.read_public(pub_only)
        out["read"] = bytes(read_name), bytes(qualified)
        sig = TPMT_SIGNATURE(sigAlg=TPM2_ALG.RSASSA)
        sig.signature.rsassa.hash = TPM2_ALG.SHA256
        sig.signature.rsassa.sig = outside_sig
        out["owner ticket"] = esapi.verify_signature(pub_only, digest, sig)
        out["sign public-only"] = tpm_error(esapi.sign, pub_only, digest,
                                            scheme(TPM2_ALG.RSASSA, TPM2_ALG.SHA256),
                                            null_ticket())
        both = esapi.load_external(public, sensitive, ESYS_TR.NULL)
        out["null ticket"] = esapi.verify_signature(both, digest, sig)
        own = esapi.sign(both, digest, scheme(TPM2_ALG.RSASSA, TPM2_ALG.SHA256), null_ticket())
        out["own signature"] = bytes(own.signature.rsassa.sig)
        out["private in owner"] = tpm_error(esapi.load_external, public, sensitive,
                                            ESYS_TR.OWNER)
        fixed = TPM2B_PUBLIC.from_pem(pem_public(key), objectAttributes=attrs
                                      | TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT)
        out["fixedTPM with private"] = tpm_error(esapi.load_external, fixed, sensitive,
                                                 ESYS_TR.NULL)
        other = rsa.generate_private_key(65537, 2048)
        out["binding"] = tpm_error(esapi.load_external, public,
                                   TPM2B_SENSITIVE.from_pem(pem_private(other)), ESYS_TR.NULL)
        short = TPM2B_PUBLIC.from_pem(pem_public(key), objectAttributes=attrs)
        short.publicArea.unique.rsa = bytes(short.publicArea.unique.rsa)[1:]
        out["short modulus"] = tpm_error(esapi.load_external, short, None, ESYS_TR.OWNER)
        bad_point = external_public(ec.generate_private_key(ec.SECP256R1()), attrs)
        bad_point.publicArea.unique.ecc.y = b"\1" * 32
        out["off-curve point"] = tpm_error(esapi.load_external, bad_point, None, ESYS_TR.OWNER)
        return out

    out = await with_esapi(ctpm_server, scenario)
    assert out["name"] == expected_name
    assert out["read"] == (expected_name, expected_name)
    ticket = out["owner ticket"]
    assert ticket.hierarchy == TPM2_RH.OWNER and len(bytes(ticket.digest)) == 64
    assert out["null ticket"].hierarchy == TPM2_RH.NULL and not bytes(out["null ticket"].digest)
    assert out["own signature"] == outside_sig         # PKCS #1 v1.5 is deterministic
    assert out["sign public-only"] == TPM2_RC.AUTH_UNAVAILABLE
    assert out["private in owner"] == rc_param(TPM2_RC.HIERARCHY, 3)
    assert out["fixedTPM with private"] == rc_param(TPM2_RC.ATTRIBUTES, 2)
    assert out["binding"] == TPM2_RC.BINDING
    assert out["short modulus"] == rc_param(TPM2_RC.KEY, 2)
    assert out["off-curve point"] == rc_param(TPM2_RC.ECC_POINT, 2)


async def test_external_symmetric_and_hmac_keys(ctpm_server):
    """Keyed-hash and AES keys with sensitive areas from outside (tpm2-pytss builds them)."""
    secret = os.urandom(32)
    aes_key = os.urandom(16)
    attrs = TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.DECRYPT | TPMA_OBJECT.USERWITHAUTH

    def scenario(esapi):
        sens, pub = TPMT_SENSITIVE.keyedhash_from_secret(secret, objectAttributes=attrs)
        h = esapi.load_external(TPM2B_PUBLIC(pub), TPM2B_SENSITIVE(sens), ESYS_TR.NULL)
        mac = bytes(esapi.hmac(h, b"data", TPM2_ALG.SHA512))
        sens, pub = TPMT_SENSITIVE.symcipher_from_secret(aes_key, objectAttributes=attrs)
        a = esapi.load_external(TPM2B_PUBLIC(pub), TPM2B_SENSITIVE(sens), ESYS_TR.NULL)
        out, _ = esapi.encrypt_decrypt_2(a, False, TPM2_ALG.NULL, bytes(16), b"hello")
        pub.unique.sym = bytes(32)
        binding = tpm_error(esapi.load_external, TPM2B_PUBLIC(pub), TPM2B_SENSITIVE(sens),
                            ESYS_TR.NULL)
        return mac, bytes(out), binding

    mac, out, binding = await with_esapi(ctpm_server, scenario)
    assert mac == hmac.new(secret, b"data", "sha512").digest()
    assert out == aes_outside(aes_key, "cfb", bytes(16), b"hello")
    assert binding == TPM2_RC.BINDING


async def test_over_the_swtpm_tcti(ctpm_server):
    """One signature through the other transport (commands with sessions and tickets)."""
    digest = hashlib.sha256(b"swtpm tcti").digest()

    def scenario(esapi):
        key, public = primary(esapi, "ecc256:ecdsa-sha256:null", SIGN)
        sig = esapi.sign(key, digest, scheme(), null_ticket())
        esapi.verify_signature(key, digest, sig)
        return public, sig

    public, sig = await with_esapi(ctpm_server, scenario, kind="swtpm")
    ecdsa_check(ecc_public(public, P256), digest,
                int.from_bytes(bytes(sig.signature.ecdsa.signatureR), "big"),
                int.from_bytes(bytes(sig.signature.ecdsa.signatureS), "big"), "sha256")


# -- differential: the same bytes to ctpm and to swtpm ---------------------------------------

SELFTEST = cmd(0x143, b"\x01")
STARTUP = cmd(0x144, u16(0))
SHUTDOWN = cmd(0x145, u16(0))
PW = [pw_session()]
NULL_TICKET = u16(0x8024) + u32(RH_NULL) + u16(0)
RETRY = 0x922       # libtpms may ask to retry while it prepares an RSA key


def load_external(sensitive: bytes, public: bytes, hierarchy=RH_NULL):
    return cmd(0x167, sensitive + public + u32(hierarchy))


def flush(handle):
    return cmd(0x165, u32(handle))


def sign(handle, digest, sig_scheme=0x0010, hash_alg=None, ticket=NULL_TICKET):
    s = u16(sig_scheme) + (u16(hash_alg) if hash_alg is not None else b"")
    return cmd(0x15D, b2(digest) + s + ticket, handles=[handle], sessions=PW)


def verify(handle, digest, signature: bytes):
    return cmd(0x177, b2(digest) + signature, handles=[handle])


def rsa_sig(alg, hash_alg, sig):
    return u16(alg) + u16(hash_alg) + b2(sig)


def ecc_sig(alg, hash_alg, r: bytes, s: bytes):
    return u16(alg) + u16(hash_alg) + b2(r) + b2(s)


def rsa_encrypt(handle, message, scheme_=b"\x00\x10", label=b""):
    return cmd(0x174, b2(message) + scheme_ + b2(label), handles=[handle])


def rsa_decrypt(handle, cipher, scheme_=b"\x00\x10", label=b""):
    return cmd(0x159, b2(cipher) + scheme_ + b2(label), handles=[handle], sessions=PW)


def zgen(handle, x: bytes, y: bytes):
    return cmd(0x154, b2(b2(x) + b2(y)), handles=[handle], sessions=PW)


def ed(handle, decrypt, mode, iv, data):
    return cmd(0x164, bytes([decrypt]) + u16(mode) + b2(iv) + b2(data), handles=[handle],
               sessions=PW)


def ed2(handle, decrypt, mode, iv, data):
    return cmd(0x193, b2(data) + bytes([decrypt]) + u16(mode) + b2(iv), handles=[handle],
               sessions=PW)


def hmac_cmd(handle, data, hash_alg):
    return cmd(0x155, b2(data) + u16(hash_alg), handles=[handle], sessions=PW)


OAEP256 = u16(0x0017) + u16(0x000B)
OAEP1 = u16(0x0017) + u16(0x0004)
RSAES = u16(0x0015)


@pytest.fixture(scope="module")
def swtpm():
    peer = Swtpm()
    yield peer
    peer.close()


# libtpms 0.9 answers TPM_RC_FAILURE where its OpenSSL-based RSA code fails; the reference
# (CryptRsa.c: RSAEP/RSADP, OaepDecode, RSAES_Decode, the encoders) answers TPM_RC_VALUE for
# bad padding or a message too long, TPM_RC_SIZE for a value not below the modulus.
LIBTPMS_RSA_FAILURE = 0x101


def handle_of(response):
    return struct.unpack(">I", response[10:14])[0]


def rsa_material(key, attrs=0x00060040, scheme_=b"\x00\x10"):
    """TPM2B_SENSITIVE and TPM2B_PUBLIC (nameAlg sha256) of a `cryptography` RSA key."""
    nums = key.private_numbers()
    n = nums.public_numbers.n.to_bytes(256, "big")
    p = max(nums.p, nums.q).to_bytes(128, "big")
    public = (u16(0x0001) + u16(0x000B) + u32(attrs) + b2(b"") + u16(0x0010) + scheme_
              + u16(2048) + u32(0) + b2(n))
    sensitive = u16(0x0001) + b2(b"") + b2(b"") + b2(p)
    return b2(sensitive), b2(public)


def ecc_material(key, curve_id, attrs=0x00060040, scheme_=b"\x00\x10", size=32):
    nums = key.private_numbers()
    pub = nums.public_numbers
    public = (u16(0x0023) + u16(0x000B) + u32(attrs) + b2(b"") + u16(0x0010) + scheme_
              + u16(curve_id) + u16(0x0010) + b2(pub.x.to_bytes(size, "big"))
              + b2(pub.y.to_bytes(size, "big")))
    sensitive = u16(0x0023) + b2(b"") + b2(b"") + b2(nums.private_value.to_bytes(size, "big"))
    return b2(sensitive), b2(public)


def sym_material(key: bytes, mode=0x0043, attrs=0x00060040, seed=b"\x07" * 32):
    unique = hashlib.sha256(seed + key).digest()
    public = (u16(0x0025) + u16(0x000B) + u32(attrs) + b2(b"") + u16(0x0006)
              + u16(len(key) * 8) + u16(mode) + b2(unique))
    sensitive = u16(0x0025) + b2(b"") + b2(seed) + b2(key)
    return b2(sensitive), b2(public)


def keyedhash_material(secret: bytes, scheme_=u16(0x0005) + u16(0x000B), attrs=0x00040040,
                       seed=b"\x09" * 32):
    unique = hashlib.sha256(seed + secret).digest()
    public = (u16(0x0008) + u16(0x000B) + u32(attrs) + b2(b"") + scheme_ + b2(unique))
    sensitive = u16(0x0008) + b2(b"") + b2(seed) + b2(secret)
    return b2(sensitive), b2(public)


@needs_swtpm
@pytest.mark.swtpm
def test_differential_rsa(swtpm):
    """One RSA key loaded into both: identical PKCS #1 v1.5 signatures and decryptions,
    identical raw encryptions, identical codes for bad input; PSS signatures of each TPM
    verify in the other."""
    pair = Pair(swtpm)
    key = rsa.generate_private_key(65537, 2048)
    sens, pub = rsa_material(key)
    h = handle_of(pair.same(load_external(sens, pub), "LoadExternal"))
    for alg, name in ((0x04, "sha1"), (0x0B, "sha256"), (0x0C, "sha384"), (0x0D, "sha512")):
        digest = hashlib.new(name, b"differential").digest()
        sig = params(pair.same(sign(h, digest, 0x14, alg), f"RSASSA {name}"))
        key.public_key().verify(sig[6:], digest, padding.PKCS1v15(),
                                utils.Prehashed(CHASH[name]()))
        pair.same(verify(h, digest, sig), "verify RSASSA")
        pair.same(verify(h, digest[::-1], sig), "verify RSASSA, other digest")
        ours, theirs = pair.run(sign(h, digest, 0x16, alg))
        assert rc(ours) == rc(theirs) == 0
        for pss in (params(ours), params(theirs)):
            pair.same(verify(h, digest, pss), "verify PSS")
        outside = key.sign(digest, padding.PSS(padding.MGF1(CHASH[name]()), 20),
                           utils.Prehashed(CHASH[name]()))
        pair.same(verify(h, digest, rsa_sig(0x16, alg, outside)), "PSS, 20-byte salt")
    d = hashlib.sha256(b"x").digest()
    for what, command in {
        "digest size": sign(h, d[:20], 0x14, 0x0B),
        "no scheme": sign(h, d),
        "ECDSA scheme": sign(h, d, 0x18, 0x0B),
        "HMAC scheme": sign(h, d, 0x05, 0x0B),
        "NULL hash": sign(h, d, 0x14, 0x10),
        "bad ticket tag": sign(h, d, 0x14, 0x0B, u16(0x8021) + u32(RH_NULL) + u16(0)),
        "forged ticket": sign(h, d, 0x14, 0x0B, u16(0x8024) + u32(RH_OWNER) + b2(b"\1" * 64)),
        "verify: short signature": verify(h, d, rsa_sig(0x14, 0x0B, b"\1" * 255)),
        "verify: signature >= n": verify(h, d, rsa_sig(0x14, 0x0B, b"\xff" * 256)),
        "verify: ECDSA signature": verify(h, d, ecc_sig(0x18, 0x0B, b"\1", b"\1")),
        "verify: NULL signature": verify(h, d, u16(0x0010)),
        "verify: hash mismatch": verify(h, d, rsa_sig(0x14, 0x0C, b"\1" * 256)),
    }.items():
        pair.same(command, what)

    message = b"differential secret"
    oaep_label = b"label\0"
    ciphers = {
        "OAEP sha256 + label": (OAEP256, oaep_label, key.public_key().encrypt(
            message, oaep("sha256", oaep_label))),
        "OAEP sha1": (OAEP1, b"", key.public_key().encrypt(message, oaep("sha1", b""))),
        "RSAES": (RSAES, b"", key.public_key().encrypt(message, padding.PKCS1v15())),
    }
    value, size, failure = 0x084, 0x095, LIBTPMS_RSA_FAILURE
    for what, (s, label, c) in ciphers.items():
        out = params(pair.same(rsa_decrypt(h, c, s, label), what))
        assert out == b2(message)
        if s != RSAES:
            pair.deviates(rsa_decrypt(h, c, s, b"other\0"), what + ", other label",
                          value, failure)
        pair.same(rsa_decrypt(h, c, s, b"nozero"), what + ", label without zero")
    pair.deviates(rsa_decrypt(h, ciphers["RSAES"][2], OAEP256), "OAEP of an RSAES block",
                  value, failure)
    pair.deviates(rsa_decrypt(h, ciphers["OAEP sha1"][2], RSAES), "RSAES of an OAEP block",
                  value, failure)
    pair.same(rsa_decrypt(h, ciphers["RSAES"][2]), "raw decryption")
    pair.same(rsa_decrypt(h, ciphers["RSAES"][2][1:]), "short ciphertext")
    pair.deviates(rsa_decrypt(h, b"\xff" * 256, RSAES), "ciphertext >= n", size, failure)
    pair.same(rsa_encrypt(h, b"\0\0\x01\x02"), "raw encryption")
    pair.same(rsa_encrypt(h, b"\0" * 300 + b"\x05"), "raw, leading zeros")
    pair.same(rsa_encrypt(h, b"\x01" * 257), "raw, longer than n")
    pair.deviates(rsa_encrypt(h, b"\xff" * 256), "raw, value >= n", size, failure)
    pair.deviates(rsa_encrypt(h, b"m" * 246, RSAES), "RSAES, message too long", value,
                  failure)
    pair.deviates(rsa_encrypt(h, b"m" * 191, OAEP256), "OAEP, message too long", value,
                  failure)
    ours, theirs = pair.run(rsa_encrypt(h, b"m" * 245, RSAES))
    assert rc(ours) == rc(theirs) == 0, "RSAES, longest message"
    for s in (RSAES, OAEP256):
        ours, theirs = pair.run(rsa_encrypt(h, message, s, b""))
        for c in (params(ours), params(theirs)):
            assert params(pair.same(rsa_decrypt(h, c[2:], s), "decrypt the other's")) \
                == b2(message)
    pair.same(flush(h))


@needs_swtpm
@pytest.mark.swtpm
@pytest.mark.parametrize("curve", ["ecc256", "ecc384", "ecc521"])
def test_differential_ecc(swtpm, curve):
    """One ECC key loaded into both: identical ZGen points and codes; ECDSA and ECSCHNORR
    signatures of each TPM (and of `cryptography` / the code above) verify in the other."""
    c = CURVES[curve]
    pair = Pair(swtpm)
    key = ec.generate_private_key(c.cls())
    d = key.private_numbers().private_value
    sens, pub = ecc_material(key, c.tpm_id, size=c.size)
    h = handle_of(pair.same(load_external(sens, pub), "LoadExternal"))
    for alg, name in ((0x0B, "sha256"), (0x0C, "sha384"), (0x0D, "sha512")):
        digest = hashlib.new(name, b"ecc differential").digest()
        for sig_alg in (0x18, 0x1C):
            ours, theirs = pair.run(sign(h, digest, sig_alg, alg))
            assert rc(ours) == rc(theirs) == 0
            for sig in (params(ours), params(theirs)):
                pair.same(verify(h, digest, sig), "verify the other's")
                pair.same(verify(h, digest[::-1], sig), "other digest")
        r, s = utils.decode_dss_signature(key.sign(digest, ec.ECDSA(utils.Prehashed(
            CHASH[name]()))))
        pair.same(verify(h, digest, ecc_sig(0x18, alg, r.to_bytes(c.size, "big"),
                                            s.to_bytes(c.size, "big"))), "cryptography")
        r, s = c.schnorr_sign(d, name, digest)
        pair.same(verify(h, digest, ecc_sig(0x1C, alg, r.to_bytes(c.size, "big"),
                                            s.to_bytes(c.size, "big"))), "Schnorr outside")
    size = c.size
    digest = hashlib.sha256(b"e").digest()
    for what, sig in {
        "r = 0": ecc_sig(0x18, 0x0B, b"", b"\1"),
        "s = n": ecc_sig(0x18, 0x0B, b"\1", c.n.to_bytes(size, "big")),
        "short r and s": ecc_sig(0x18, 0x0B, b"\1", b"\1"),
        "Schnorr r = n - 1": ecc_sig(0x1C, 0x0B, (c.n - 1).to_bytes(size, "big"), b"\1"),
        "RSA signature": rsa_sig(0x14, 0x0B, b"\1" * 256),
    }.items():
        pair.same(verify(h, digest, sig), what)
    pair.same(sign(h, digest[:31], 0x18, 0x0B), "digest size")
    pair.same(sign(h, digest, 0x14, 0x0B), "RSASSA scheme")
    peer = ec.generate_private_key(c.cls()).public_key().public_numbers()
    x, y = peer.x.to_bytes(size, "big"), peer.y.to_bytes(size, "big")
    z = params(pair.same(zgen(h, x, y), "ZGen"))
    assert z[4:4 + size] == key.exchange(ec.ECDH(), ec.EllipticCurvePublicNumbers(
        peer.x, peer.y, c.cls()).public_key())
    pair.same(zgen(h, x, (peer.y ^ 1).to_bytes(size, "big")), "ZGen off the curve")
    pair.same(zgen(h, x[1:], y), "ZGen, short x")
    pair.same(zgen(h, b"", b""), "ZGen, empty point")
    pair.same(flush(h))
    # a signing-only key: ZGen refused, KeyGen allowed
    sens, pub = ecc_material(key, c.tpm_id, attrs=0x00040040, scheme_=u16(0x18) + u16(0x0B),
                             size=size)
    h = handle_of(pair.same(load_external(sens, pub), "signing key"))
    pair.same(zgen(h, x, y), "ZGen with a signing key")
    pair.same(sign(h, digest, 0x1C, 0x0B), "scheme conflicts")
    pair.same(sign(h, digest, 0x18, 0x0C), "hash conflicts")
    ours, theirs = pair.run(cmd(0x163, handles=[h]))
    assert rc(ours) == rc(theirs) == 0 and len(ours) == len(theirs)
    pair.same(flush(h))


def cfb_partial_block(pair, command, size, what):
    """CFB ending in a partial block: the same output, and ivOut begins with the last
    partial cipher block. The reference pads it with zeros (CryptSymmetricEncrypt/Decrypt);
    libtpms (OpenSSL) leaves the rest of that block's key stream there."""
    ours, theirs = pair.run(command)
    assert rc(ours) == rc(theirs) == 0, what
    ours, theirs = params(ours), params(theirs)
    tail = size % 16
    assert ours[:2 + size] == theirs[:2 + size], what
    iv_ours, iv_theirs = ours[2 + size:], theirs[2 + size:]
    assert iv_ours[:2 + tail] == iv_theirs[:2 + tail], what
    assert iv_ours[2 + tail:] == bytes(16 - tail), what


@needs_swtpm
@pytest.mark.swtpm
def test_differential_symmetric_and_hmac(swtpm):
    """AES keys and an HMAC key loaded into both: every mode, ivOut and error identical."""
    pair = Pair(swtpm)
    iv = bytes(range(16))
    for bits in (128, 256):
        key = bytes(range(100, 100 + bits // 8))
        # encryption: a key without a mode (encrypt only), decryption: one key per mode
        h = handle_of(pair.same(load_external(*sym_material(key, 0x0010, 0x00040040)),
                                f"AES-{bits}, no mode"))
        both = handle_of(pair.same(load_external(*sym_material(key, 0x0010)),
                                   f"AES-{bits}, no mode, encrypt and decrypt"))
        for mode in (0x43, 0x42, 0x40, 0x41, 0x44):       # CFB CBC CTR OFB ECB
            m = handle_of(pair.same(load_external(*sym_material(key, mode)), f"mode {mode}"))
            for size in (0, 16, 48, 33, 5):
                data = bytes(range(size))
                use_iv = b"" if mode == 0x44 else iv
                for handle, decrypt, mode_in in ((h, 0, mode), (m, 0, 0x0010), (m, 1, 0x0010),
                                                 (m, 1, mode), (both, 1, mode)):
                    what = (bits, mode, size, decrypt)
                    for command in (ed2(handle, decrypt, mode_in, use_iv, data),
                                    ed(handle, decrypt, mode_in, use_iv, data)):
                        if mode == 0x43 and size % 16:
                            cfb_partial_block(pair, command, size, what)
                        else:
                            pair.same(command, what)
            pair.same(ed2(h, 1, mode, use_iv, bytes(16)), "decrypt with an encrypt-only key")
            pair.same(ed2(both, 1, 0x0010, use_iv, bytes(16)), "no mode anywhere")
            pair.same(flush(m))
        pair.same(flush(both))
        for what, command in {
            "no mode": ed2(h, 0, 0x0010, iv, b"x"),
            "bad mode": ed2(h, 0, 0x0006, iv, b"x"),
            "ECB with IV": ed2(h, 0, 0x44, iv, bytes(16)),
            "short IV": ed2(h, 0, 0x43, iv[:15], b"x"),
            "decrypt = 2": ed2(h, 2, 0x43, iv, b"x"),
            "EncryptDecrypt: short IV": ed(h, 0, 0x43, iv[:15], b"x"),
            "Sign with an AES key": sign(h, hashlib.sha256().digest(), 0x05, 0x0B),
        }.items():
            pair.same(command, what)
        # libtpms (with TPM2_MAC/CMAC behind this command code) takes an AES key for a
        # CMAC and refuses the hash; the reference's TPM2_HMAC refuses the key's type
        pair.deviates(hmac_cmd(h, b"x", 0x0B), "HMAC with an AES key", 0x18A, 0x2D2)
        pair.same(flush(h))
    h = handle_of(pair.same(load_external(*sym_material(bytes(16), mode=0x43)), "CFB key"))
    pair.same(ed2(h, 0, 0x42, iv, bytes(16)), "mode conflicts")
    cfb_partial_block(pair, ed2(h, 0, 0x0010, iv, b"abc"), 3, "key's mode")
    pair.same(flush(h))
    h = handle_of(pair.same(load_external(*sym_material(bytes(16), attrs=0x00020040)),
                            "decrypt-only AES"))
    pair.same(ed2(h, 0, 0x43, iv, b"abc"), "encrypt without sign")
    pair.same(flush(h))

    secret = b"differential hmac key"
    h = handle_of(pair.same(load_external(*keyedhash_material(secret)), "HMAC key"))
    for alg in (0x0B, 0x0010, 0x04):
        pair.same(hmac_cmd(h, b"data", alg), f"HMAC {alg:#x}")
    digest = hashlib.sha256(b"d").digest()
    sig = params(pair.same(sign(h, digest), "HMAC signature"))
    assert sig == u16(0x05) + u16(0x0B) + hmac.new(secret, digest, "sha256").digest()
    pair.same(verify(h, digest, sig), "verify HMAC")
    pair.same(verify(h, digest[::-1], sig), "verify HMAC, other digest")
    pair.same(verify(h, digest, u16(0x05) + u16(0x04) + bytes(20)), "HMAC sha1 signature")
    pair.same(sign(h, digest[:20]), "HMAC, digest size")
    pair.same(flush(h))
    h = handle_of(pair.same(load_external(*keyedhash_material(secret, scheme_=u16(0x0010),
                                                              attrs=0x00060040)),
                            "HMAC key without scheme"))
    pair.same(hmac_cmd(h, b"data", 0x0010), "no hash anywhere")
    pair.same(hmac_cmd(h, b"data", 0x0C), "hash from the command")
    pair.same(sign(h, digest), "no signing scheme")
    pair.same(sign(h, hashlib.sha384().digest(), 0x05, 0x0C), "HMAC sha384")
    pair.same(flush(h))


@needs_swtpm
@pytest.mark.swtpm
def test_differential_load_external(swtpm):
    """LoadExternal's checks: the same code from both TPMs for each bad input."""
    pair = Pair(swtpm)
    key = rsa.generate_private_key(65537, 2048)
    sens, pub = rsa_material(key)
    other_sens, _ = rsa_material(rsa.generate_private_key(65537, 2048))
    _, pub_only = rsa_material(key)
    e_key = ec.generate_private_key(ec.SECP256R1())
    e_sens, e_pub = ecc_material(e_key, 0x0003)
    cases = {
        "public only, owner": load_external(b2(b""), pub_only, RH_OWNER),
        "public only, endorsement": load_external(b2(b""), pub_only, 0x4000000B),
        "private in owner": load_external(sens, pub, RH_OWNER),
        "binding": load_external(other_sens, pub),
        "fixedTPM": load_external(sens, rsa_material(key, attrs=0x00060042)[1]),
        "restricted": load_external(sens, rsa_material(key, attrs=0x00070040,
                                                       scheme_=u16(0x14) + u16(0x0B))[1]),
        "sign+decrypt with a scheme": load_external(sens, rsa_material(
            key, scheme_=u16(0x14) + u16(0x0B))[1]),
        "type mismatch": load_external(e_sens, pub),
        "ECC": load_external(e_sens, e_pub),
        "ECC public only, bad point": load_external(
            b2(b""), e_pub[:-2] + bytes([e_pub[-2] ^ 1]) + e_pub[-1:], RH_OWNER),
        "ECC binding": load_external(ecc_material(ec.generate_private_key(
            ec.SECP256R1()), 0x0003)[0], e_pub),
        "AES": load_external(*sym_material(bytes(16))),
        "AES, encrypt-only, no mode": load_external(*sym_material(bytes(16), 0x0010,
                                                                  0x00040040)),
        "AES, no mode": load_external(*sym_material(bytes(16), 0x0010)),
        "AES, wrong key size": load_external(sym_material(bytes(24))[0],
                                             sym_material(bytes(16))[1]),
        "AES binding": load_external(sym_material(b"\1" * 16)[0], sym_material(bytes(16))[1]),
        "AES public only": load_external(b2(b""), sym_material(bytes(16))[1], RH_OWNER),
        "AES public only, bad unique": load_external(b2(b""), sym_material(bytes(16))[1][:-3]
                                                     [2:].join((u16(len(sym_material(bytes(
                                                         16))[1]) - 3), b"")), RH_OWNER),
        "HMAC": load_external(*keyedhash_material(b"k")),
        "HMAC, sign without a scheme": load_external(*keyedhash_material(b"k", u16(0x0010))),
        "HMAC, key longer than a block": load_external(*keyedhash_material(b"k" * 65)),
        "HMAC binding": load_external(keyedhash_material(b"j")[0],
                                      keyedhash_material(b"k")[1]),
        "HMAC, short seed": load_external(*keyedhash_material(b"k", seed=b"\1" * 31)),
        "RSA public only, NULL nameAlg": load_external(b2(b""), pub_only[:4] + u16(0x0010)
                                                       + pub_only[6:], RH_OWNER),
        "bad hierarchy": load_external(sens, pub, 0x40000002),
    }
    for what, command in cases.items():
        response = pair.same(command, what)
        if rc(response) == 0:
            pair.same(flush(handle_of(response)))


def test_public_only_key_has_no_auth_value():
    """A key loaded without its sensitive area has no authValue: any password is
    TPM_RC_AUTH_UNAVAILABLE (the reference's IsAuthValueAvailable; swtpm too), never
    TPM_RC_AUTH_FAIL counted by dictionary-attack protection."""
    tpm = startup(manufacture_test_tpm())
    _, public = rsa_material(rsa.generate_private_key(65537, 2048), attrs=0x00040040,
                             scheme_=u16(0x14) + u16(0x0B))
    h = handle_of(tpm.execute(load_external(b2(b""), public, RH_OWNER)))
    digest = hashlib.sha256(b"x").digest()
    for password in (b"", b"wrong"):
        command = cmd(0x15D, b2(digest) + u16(0x10) + NULL_TICKET, handles=[h],
                      sessions=[pw_session(password)])
        assert rc(tpm.execute(command)) == TPM2_RC.AUTH_UNAVAILABLE, password
