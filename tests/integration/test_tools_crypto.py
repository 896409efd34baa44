"""tpm2-tools' cryptographic commands against a real `ctpm run` process.

tpm2_sign / tpm2_verifysignature, tpm2_rsaencrypt / tpm2_rsadecrypt, tpm2_encryptdecrypt,
tpm2_hmac, tpm2_loadexternal, tpm2_ecdhkeygen / tpm2_ecdhzgen, with keys made by
tpm2_createprimary, tpm2_create and tpm2_load (the tools keep keys in context files, so
this needs TPM2_ContextSave/ContextLoad). Every result is checked outside the TPM: with the
openssl command line where it can (signatures, RSA, AES), else with `cryptography` and
hashlib/hmac.
"""
import hashlib
import hmac
import os
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ctpm.testing.process import run_daemon
from ctpm.wire.commands import BY_CODE
from ctpm.wire.constants import TPM_CC

pytestmark = [
    pytest.mark.tools,
    pytest.mark.skipif(shutil.which("tpm2_sign") is None, reason="tpm2-tools is not installed"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed"),
    pytest.mark.skipif(int(TPM_CC.ContextSave) not in BY_CODE,
                       reason="tpm2-tools keeps keys in context files: needs TPM2_ContextSave"),
]


def tool(*args, **kwargs):
    return subprocess.run(args, capture_output=True, timeout=60, **kwargs)


def ok(*args, **kwargs) -> bytes:
    result = tool(*args, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, args))}:\n{result.stderr.decode()}"
    return result.stdout


def fails(*args) -> str:
    result = tool(*args)
    assert result.returncode != 0, f"{' '.join(map(str, args))} succeeded"
    return result.stderr.decode()


@pytest.fixture(scope="module")
def daemon():
    with run_daemon() as d:
        ok("tpm2_startup", "-c", "-T", d.tcti("mssim"))
        yield d


@pytest.fixture(params=["mssim", "swtpm"])
def tcti(request, daemon):
    return daemon.tcti(request.param)


@pytest.fixture
def work(tmp_path, tcti):
    """A directory with a storage primary (owner hierarchy) in primary.ctx; flushed after."""
    ok("tpm2_createprimary", "-T", tcti, "-C", "o", "-c", tmp_path / "primary.ctx", "-Q")
    yield tmp_path
    ok("tpm2_flushcontext", "-T", tcti, "-t")


def key(tcti, work, name, alg, attrs=None):
    """tpm2_create + tpm2_load under the primary; the context file and a PEM of the key."""
    args = ["tpm2_create", "-T", tcti, "-C", work / "primary.ctx", "-G", alg,
            "-u", work / f"{name}.pub", "-r", work / f"{name}.priv", "-Q"]
    if attrs:
        args += ["-a", attrs]
    ok(*args)
    ctx = work / f"{name}.ctx"
    ok("tpm2_load", "-T", tcti, "-C", work / "primary.ctx", "-u", work / f"{name}.pub",
       "-r", work / f"{name}.priv", "-c", ctx, "-Q")
    if not alg.startswith(("aes", "hmac", "keyedhash")):
        ok("tpm2_readpublic", "-T", tcti, "-c", ctx, "-f", "pem", "-o", work / f"{name}.pem",
           "-Q")
    ok("tpm2_flushcontext", "-T", tcti, "-t")
    return ctx


def openssl(*args, **kwargs) -> bytes:
    return ok("openssl", *map(str, args), **kwargs)


# -- tpm2_sign / tpm2_verifysignature ---------------------------------------------------------

@pytest.mark.parametrize("alg,scheme,hash_name,verify_opts", [
    ("rsa2048:rsassa-sha256:null", "rsassa", "sha256", []),
    ("rsa2048:rsapss-sha384:null", "rsapss", "sha384", ["-sigopt", "rsa_padding_mode:pss",
                                                        "-sigopt", "rsa_pss_saltlen:48"]),
    ("rsa2048:null:null", "rsapss", "sha256", ["-sigopt", "rsa_padding_mode:pss",
                                               "-sigopt", "rsa_pss_saltlen:32"]),
    ("ecc256:ecdsa-sha256:null", "ecdsa", "sha256", []),
    ("ecc384:ecdsa-sha384:null", "ecdsa", "sha384", []),
    ("ecc521:ecdsa-sha512:null", "ecdsa", "sha512", []),
])
def test_sign_checked_by_openssl(tcti, work, alg, scheme, hash_name, verify_opts):
    """tpm2_sign of a message; openssl verifies the plain signature (RSAPSS: with a salt as
    long as the hash), tpm2_verifysignature the TSS one and writes a ticket."""
    ctx = key(tcti, work, "signer", alg)
    msg = work / "message"
    msg.write_bytes(b"signed by ctpm through tpm2-tools\n" * 50)
    sign = ["tpm2_sign", "-T", tcti, "-c", ctx, "-g", hash_name, "-s", scheme]
    ok(*sign, "-f", "plain", "-o", work / "sig.plain", msg)
    openssl("dgst", f"-{hash_name}", "-verify", work / "signer.pem", *verify_opts,
            "-signature", work / "sig.plain", msg)
    ok(*sign, "-o", work / "sig.tss", msg)
    ok("tpm2_verifysignature", "-T", tcti, "-c", ctx, "-g", hash_name, "-m", msg,
       "-s", work / "sig.tss", "-t", work / "ticket")
    ticket = (work / "ticket").read_bytes()
    assert ticket[:2] == b"\x80\x22" and ticket[2:6] == b"\x40\x00\x00\x01"   # VERIFIED, owner
    assert len(ticket) == 6 + 2 + 64
    msg.write_bytes(b"something else")
    err = fails("tpm2_verifysignature", "-T", tcti, "-c", ctx, "-g", hash_name, "-m", msg,
                "-s", work / "sig.tss")
    assert "0x2db" in err.lower() or "signature" in err.lower(), err


def test_sign_a_digest_and_ecschnorr(tcti, work):
    """tpm2_sign -d of a precomputed digest with an ECSCHNORR key, checked by the TPM."""
    ctx = key(tcti, work, "schnorr", "ecc256:ecschnorr-sha256:null")
    digest = work / "digest"
    digest.write_bytes(hashlib.sha256(b"schnorr").digest())
    ok("tpm2_sign", "-T", tcti, "-c", ctx, "-g", "sha256", "-s", "ecschnorr", "-d",
       "-o", work / "sig", digest)
    ok("tpm2_verifysignature", "-T", tcti, "-c", ctx, "-d", digest, "-s", work / "sig")
    sig = (work / "sig").read_bytes()
    assert sig[:4] == b"\x00\x1c\x00\x0b"       # TPMT_SIGNATURE: ECSCHNORR, SHA256


def test_restricted_key_signs_through_the_tpm_hash(tcti, work):
    """A restricted key: tpm2_sign of a message works (the tool gets a hash-check ticket from
    the TPM); a bare digest without a ticket is refused with TPM_RC_TICKET."""
    ctx = key(tcti, work, "restricted", "rsa2048:rsassa-sha256:null",
              "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign")
    msg = work / "message"
    msg.write_bytes(b"restricted")
    ok("tpm2_sign", "-T", tcti, "-c", ctx, "-g", "sha256", "-f", "plain",
       "-o", work / "sig", msg)
    openssl("dgst", "-sha256", "-verify", work / "restricted.pem", "-signature", work / "sig",
            msg)
    digest = work / "digest"
    digest.write_bytes(hashlib.sha256(b"restricted").digest())
    err = fails("tpm2_sign", "-T", tcti, "-c", ctx, "-g", "sha256", "-d", "-o", work / "s2",
                digest)
    assert "0x3a2" in err.lower() or "ticket" in err.lower(), err


# -- tpm2_rsaencrypt / tpm2_rsadecrypt --------------------------------------------------------

@pytest.mark.parametrize("scheme,pkeyopts", [
    ("oaep", ["-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256",
              "-pkeyopt", "rsa_mgf1_md:sha256"]),
    ("rsaes", ["-pkeyopt", "rsa_padding_mode:pkcs1"]),
])
def test_rsa_encryption(tcti, work, scheme, pkeyopts):
    """openssl encrypts to the TPM key's public PEM, tpm2_rsadecrypt decrypts; a key made by
    openssl and loaded with tpm2_loadexternal: tpm2_rsaencrypt, openssl decrypts."""
    ctx = key(tcti, work, "rsa", "rsa2048:null:null",
              "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|decrypt")
    plain = work / "plain"
    plain.write_bytes(b"secret for the TPM")
    openssl("pkeyutl", "-encrypt", "-pubin", "-inkey", work / "rsa.pem", *pkeyopts,
            "-in", plain, "-out", work / "cipher")
    hash_opts = ["-s", f"{scheme}-sha256"] if scheme == "oaep" else ["-s", scheme]
    ok("tpm2_rsadecrypt", "-T", tcti, "-c", ctx, *hash_opts, "-o", work / "out",
       work / "cipher")
    assert (work / "out").read_bytes() == plain.read_bytes()
    # round trip inside the TPM
    ok("tpm2_rsaencrypt", "-T", tcti, "-c", ctx, *hash_opts, "-o", work / "c2", plain)
    ok("tpm2_rsadecrypt", "-T", tcti, "-c", ctx, *hash_opts, "-o", work / "p2", work / "c2")
    assert (work / "p2").read_bytes() == plain.read_bytes()
    # an outside key: the TPM encrypts, openssl decrypts
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
            "-out", work / "outside.pem")
    ok("tpm2_loadexternal", "-T", tcti, "-C", "n", "-G", "rsa", "-r", work / "outside.pem",
       "-c", work / "outside.ctx", "-Q")
    ok("tpm2_rsaencrypt", "-T", tcti, "-c", work / "outside.ctx", *hash_opts,
       "-o", work / "c3", plain)
    out = openssl("pkeyutl", "-decrypt", "-inkey", work / "outside.pem", *pkeyopts,
                  "-in", work / "c3")
    assert out == plain.read_bytes()


# -- tpm2_encryptdecrypt ----------------------------------------------------------------------

def _aes_key(tcti, work, bits, attrs=None):
    """An AES key from outside: tpm2_loadexternal -G aes -r <raw key> (the tool gives it
    no mode, so the mode comes from tpm2_encryptdecrypt -G)."""
    raw = os.urandom(bits // 8)
    (work / "aes.key").write_bytes(raw)
    ok("tpm2_loadexternal", "-T", tcti, "-C", "n", "-G", f"aes{bits}", "-r", work / "aes.key",
       "-c", work / "aes.ctx", "-Q", *(["-a", attrs] if attrs else []))
    return raw, work / "aes.ctx"


@pytest.mark.parametrize("mode", ["cfb", "cbc", "ctr", "ofb", "ecb"])
@pytest.mark.parametrize("bits", [128, 256])
def test_encryptdecrypt_equals_openssl(tcti, work, mode, bits):
    """tpm2_encryptdecrypt with an outside AES key (encrypt only: sign SET, decrypt CLEAR)
    equals `openssl enc`."""
    raw, ctx = _aes_key(tcti, work, bits, "sign|userwithauth")
    iv = os.urandom(16)
    (work / "iv").write_bytes(iv)
    data = os.urandom(96 if mode in ("cbc", "ecb") else 77)
    (work / "plain").write_bytes(data)
    iv_args = [] if mode == "ecb" else ["-t", work / "iv"]
    ok("tpm2_encryptdecrypt", "-T", tcti, "-c", ctx, "-G", mode, *iv_args,
       "-o", work / "cipher", work / "plain")
    iv_opts = [] if mode == "ecb" else ["-iv", iv.hex()]
    expected = openssl("enc", f"-aes-{bits}-{mode}", "-K", raw.hex(), *iv_opts, "-nopad",
                       "-in", work / "plain")
    assert (work / "cipher").read_bytes() == expected
    err = fails("tpm2_encryptdecrypt", "-T", tcti, "-c", ctx, "-G", mode, "-d", *iv_args,
                "-o", work / "back", work / "cipher")
    assert "0x182" in err.lower() or "attributes" in err.lower(), err


def test_encryptdecrypt_outside_key_decrypts(tcti, work):
    """tpm2_loadexternal's AES key (sign|decrypt, no mode) decrypts what openssl encrypted."""
    raw, ctx = _aes_key(tcti, work, 128)
    (work / "cipher").write_bytes(openssl("enc", "-aes-128-cbc", "-K", raw.hex(), "-iv",
                                          "00" * 16, "-nopad", input=bytes(32)))
    (work / "iv").write_bytes(bytes(16))
    ok("tpm2_encryptdecrypt", "-T", tcti, "-c", ctx, "-G", "cbc", "-d", "-t", work / "iv",
       "-o", work / "plain", work / "cipher")
    assert (work / "plain").read_bytes() == bytes(32)


def test_encryptdecrypt_with_a_created_key(tcti, work):
    """A TPM-made AES key (tpm2_create -G aes) encrypts and decrypts; the key never leaves."""
    ctx = key(tcti, work, "aes", "aes256cfb")
    data = b"x" * 1000
    (work / "plain").write_bytes(data)
    ok("tpm2_encryptdecrypt", "-T", tcti, "-c", ctx, "-o", work / "c", work / "plain")
    ok("tpm2_encryptdecrypt", "-T", tcti, "-c", ctx, "-d", "-o", work / "p", work / "c")
    assert (work / "p").read_bytes() == data and (work / "c").read_bytes() != data


# -- tpm2_hmac --------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 100, 1024, 3000])
def test_hmac(tcti, work, size):
    """An HMAC key from outside; tpm2_hmac (TPM2_HMAC, or a sequence past 1024 bytes) equals
    hmac.new."""
    secret = os.urandom(32)
    (work / "hmac.key").write_bytes(secret)
    # sign only: with its default sign|decrypt the tool's HMAC key has a scheme it may not
    # have (TPM_RC_SCHEME on every TPM)
    ok("tpm2_loadexternal", "-T", tcti, "-C", "n", "-G", "hmac", "-r", work / "hmac.key",
       "-a", "sign|userwithauth", "-c", work / "hmac.ctx", "-Q")
    data = os.urandom(size)
    (work / "data").write_bytes(data)
    out = ok("tpm2_hmac", "-T", tcti, "-c", work / "hmac.ctx", "--hex", work / "data")
    assert bytes.fromhex(out.decode().strip()) == hmac.new(secret, data, "sha256").digest()


def test_hmac_with_a_created_key(tcti, work):
    ctx = key(tcti, work, "hmac", "hmac")
    (work / "data").write_bytes(b"abc")
    a = ok("tpm2_hmac", "-T", tcti, "-c", ctx, "--hex", work / "data")
    b = ok("tpm2_hmac", "-T", tcti, "-c", ctx, "--hex", work / "data")
    assert a == b and len(bytes.fromhex(a.decode().strip())) == 32


# -- tpm2_loadexternal ------------------------------------------------------------------------

def test_loadexternal_public_key_verifies_outside_signatures(tcti, work):
    """openssl signs; the public key, loaded into the owner hierarchy, verifies in the TPM
    and gives an owner ticket; its Name is what tpm2_loadexternal prints."""
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", work / "ec.pem")
    openssl("ec", "-in", work / "ec.pem", "-pubout", "-out", work / "ec.pub.pem")
    msg = work / "message"
    msg.write_bytes(b"signed outside")
    openssl("dgst", "-sha256", "-sign", work / "ec.pem", "-out", work / "sig.der", msg)
    out = ok("tpm2_loadexternal", "-T", tcti, "-C", "o", "-G", "ecc", "-u", work / "ec.pub.pem",
             "-c", work / "ec.ctx", "-n", work / "name")
    assert b"name:" in out
    ok("tpm2_verifysignature", "-T", tcti, "-c", work / "ec.ctx", "-g", "sha256", "-m", msg,
       "-f", "ecdsa", "-s", work / "sig.der", "-t", work / "ticket")
    ticket = (work / "ticket").read_bytes()
    assert ticket[2:6] == b"\x40\x00\x00\x01" and len(ticket) == 72
    # the Name: nameAlg || H(TPMT_PUBLIC), from the public area the TPM reports
    ok("tpm2_readpublic", "-T", tcti, "-c", work / "ec.ctx", "-o", work / "ec.tpmpub", "-Q")
    area = (work / "ec.tpmpub").read_bytes()[2:]
    name = (work / "name").read_bytes()
    assert name == b"\x00\x0b" + hashlib.sha256(area).digest()


def test_loadexternal_private_rsa_signs_like_openssl(tcti, work):
    """PKCS #1 v1.5 is deterministic: the TPM's signature with an outside private key is
    openssl's, byte for byte. A private key only loads into the NULL hierarchy."""
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
            "-out", work / "rsa.pem")
    err = fails("tpm2_loadexternal", "-T", tcti, "-C", "o", "-G", "rsa", "-r", work / "rsa.pem",
                "-c", work / "x.ctx")
    assert "0x385" in err.lower() or "hierarchy" in err.lower(), err
    ok("tpm2_loadexternal", "-T", tcti, "-C", "n", "-G", "rsa:rsassa-sha256", "-r",
       work / "rsa.pem", "-c", work / "rsa.ctx", "-Q")
    msg = work / "message"
    msg.write_bytes(b"same signature twice")
    ok("tpm2_sign", "-T", tcti, "-c", work / "rsa.ctx", "-g", "sha256", "-f", "plain",
       "-o", work / "tpm.sig", msg)
    theirs = openssl("dgst", "-sha256", "-sign", work / "rsa.pem", msg)
    assert (work / "tpm.sig").read_bytes() == theirs


# -- tpm2_ecdhkeygen / tpm2_ecdhzgen ---------------------------------------------------------

def _point(blob: bytes):
    """TPM2B_ECC_POINT -> (x, y)."""
    size = int.from_bytes(blob[:2], "big")
    body = blob[2:2 + size]
    xlen = int.from_bytes(body[:2], "big")
    x = body[2:2 + xlen]
    ylen = int.from_bytes(body[2 + xlen:4 + xlen], "big")
    return int.from_bytes(x, "big"), int.from_bytes(body[4 + xlen:4 + xlen + ylen], "big")


def test_ecdh(tcti, work):
    """tpm2_ecdhkeygen on a key whose private half is known outside: Z is the ECDH secret of
    that key and the ephemeral public point; tpm2_ecdhzgen of that point gives Z again."""
    outside = ec.generate_private_key(ec.SECP256R1())
    (work / "ecdh.pem").write_bytes(outside.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    ok("tpm2_loadexternal", "-T", tcti, "-C", "n", "-G", "ecc:ecdh-sha256", "-r",
       work / "ecdh.pem", "-a", "decrypt|userwithauth", "-c", work / "ecdh.ctx", "-Q")
    ok("tpm2_ecdhkeygen", "-T", tcti, "-c", work / "ecdh.ctx", "-u", work / "eph.pub",
       "-o", work / "z.bin")
    eph = _point((work / "eph.pub").read_bytes())
    z = _point((work / "z.bin").read_bytes())
    shared = outside.exchange(ec.ECDH(), ec.EllipticCurvePublicNumbers(
        *eph, ec.SECP256R1()).public_key())
    assert z[0].to_bytes(32, "big") == shared
    ok("tpm2_ecdhzgen", "-T", tcti, "-c", work / "ecdh.ctx", "-u", work / "eph.pub",
       "-o", work / "z2.bin")
    assert _point((work / "z2.bin").read_bytes()) == z
