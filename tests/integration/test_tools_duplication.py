"""tpm2-tools against `ctpm run`: credentials (tpm2_makecredential offline and on the TPM,
tpm2_activatecredential), key import (tpm2_import of PEM keys, then tpm2_load and
tpm2_sign, the signature checked with `cryptography`) and tpm2_geteccparameters.

tpm2_duplicate authorizes the DUP role with a policy session (TPM2_PolicyCommandCode).
"""
import hashlib
import shutil
import struct
import subprocess

import pytest

from ctpm.testing.process import run_daemon
from ctpm.wire.commands import COMMANDS

_CODES = {c.code.name for c in COMMANDS}

pytestmark = [
    pytest.mark.tools,
    pytest.mark.skipif(shutil.which("tpm2_makecredential") is None,
                       reason="tpm2-tools is not installed"),
    pytest.mark.skipif(not {"ContextSave", "ContextLoad"} <= _CODES,
                       reason="tpm2-tools keeps objects in context files (-c): needs "
                              "TPM2_ContextSave / TPM2_ContextLoad"),
]

STORAGE = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|decrypt"
SIGNING = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign"
CRED_HEADER = 8            # tpm2-tools credential file: magic 0xBADCC0DE, version 1


def tool(*args, cwd):
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=cwd)


def ok(*args, cwd):
    r = tool(*args, cwd=cwd)
    assert r.returncode == 0, f"{' '.join(args)}:\n{r.stderr}"
    return r.stdout


@pytest.fixture(scope="module")
def daemon():
    with run_daemon() as d:
        r = tool("tpm2_startup", "-c", "-T", d.tcti("mssim"), cwd=None)
        assert r.returncode == 0, r.stderr
        yield d


@pytest.fixture(params=["mssim", "swtpm"])
def tcti(request, daemon):
    return daemon.tcti(request.param)


def flush_transient(tcti, cwd):
    ok("tpm2_flushcontext", "-T", tcti, "-t", cwd=cwd)


def name_of_public_file(path) -> bytes:
    """Name of a TPM2B_PUBLIC file: nameAlg || H(TPMT_PUBLIC) (SHA-256 here)."""
    raw = path.read_bytes()
    area = raw[2:2 + struct.unpack(">H", raw[:2])[0]]
    alg = struct.unpack(">H", area[2:4])[0]
    assert alg == 0x000B
    return area[2:4] + hashlib.sha256(area).digest()


@pytest.mark.parametrize("ek_alg", ["rsa2048:aes128cfb", "ecc256:aes128cfb",
                                    "ecc384:aes256cfb"])
@pytest.mark.parametrize("offline", [True, False], ids=["offline", "on-tpm"])
def test_makecredential_then_activatecredential(tcti, tmp_path, ek_alg, offline):
    ok("tpm2_createprimary", "-T", tcti, "-C", "e", "-G", ek_alg, "-a", STORAGE,
       "-c", "ek.ctx", cwd=tmp_path)
    ok("tpm2_readpublic", "-T", tcti, "-c", "ek.ctx", "-o", "ek.pub", cwd=tmp_path)
    ok("tpm2_createprimary", "-T", tcti, "-C", "o", "-G", "ecc256:ecdsa", "-a", SIGNING,
       "-c", "ak.ctx", cwd=tmp_path)
    ok("tpm2_readpublic", "-T", tcti, "-c", "ak.ctx", "-n", "ak.name", cwd=tmp_path)
    secret = b"credential via tpm2-tools"
    (tmp_path / "secret.bin").write_bytes(secret)
    name = (tmp_path / "ak.name").read_bytes().hex()
    ok("tpm2_makecredential", "-T", "none" if offline else tcti, "-u", "ek.pub",
       "-s", "secret.bin", "-n", name, "-o", "cred.bin", cwd=tmp_path)
    out = ok("tpm2_activatecredential", "-T", tcti, "-c", "ak.ctx", "-C", "ek.ctx",
             "-i", "cred.bin", "-o", "out.bin", cwd=tmp_path)
    assert (tmp_path / "out.bin").read_bytes() == secret
    assert secret.hex() in out
    # a damaged credential blob: TPM_RC_INTEGRITY on parameter 1 (0x1DF)
    blob = bytearray((tmp_path / "cred.bin").read_bytes())
    blob[CRED_HEADER + 2 + 2 + 40] ^= 1                 # in the encrypted credential
    (tmp_path / "bad.bin").write_bytes(bytes(blob))
    r = tool("tpm2_activatecredential", "-T", tcti, "-c", "ak.ctx", "-C", "ek.ctx",
             "-i", "bad.bin", "-o", "out2.bin", cwd=tmp_path)
    assert r.returncode != 0 and "0x1df" in r.stderr.lower(), r.stderr
    flush_transient(tcti, tmp_path)


@pytest.fixture(scope="module")
def pem_keys(tmp_path_factory):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    d = tmp_path_factory.mktemp("pem")
    for alg, key in (("rsa", rsa.generate_private_key(65537, 2048)),
                     ("ecc", ec.generate_private_key(ec.SECP256R1()))):
        (d / f"{alg}.pem").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()))
    return d


@pytest.mark.parametrize("key_alg", ["rsa", "ecc"])
@pytest.mark.parametrize("parent_alg", ["rsa2048:aes128cfb", "ecc256:aes128cfb"])
def test_import_a_pem_key_load_and_sign(daemon, tmp_path, pem_keys, parent_alg, key_alg):
    """tpm2_import wraps the key itself (seed to the parent, inner AES wrap) and sends
    TPM2_Import; the private it gets back loads, and the key signs what the PEM verifies."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding

    tcti = daemon.tcti("mssim")
    pem = pem_keys / f"{key_alg}.pem"
    ok("tpm2_createprimary", "-T", tcti, "-C", "o", "-G", parent_alg, "-c", "parent.ctx",
       cwd=tmp_path)
    ok("tpm2_import", "-T", tcti, "-C", "parent.ctx", "-G", key_alg, "-i", str(pem),
       "-u", "key.pub", "-r", "key.priv", cwd=tmp_path)
    out = ok("tpm2_load", "-T", tcti, "-C", "parent.ctx", "-u", "key.pub", "-r", "key.priv",
             "-c", "key.ctx", cwd=tmp_path)
    assert name_of_public_file(tmp_path / "key.pub").hex() in out
    (tmp_path / "msg").write_bytes(b"signed by an imported key")
    ok("tpm2_sign", "-T", tcti, "-c", "key.ctx", "-g", "sha256", "-f", "plain",
       "-o", "sig", "msg", cwd=tmp_path)
    public = serialization.load_pem_private_key(pem.read_bytes(), None).public_key()
    sig, msg = (tmp_path / "sig").read_bytes(), (tmp_path / "msg").read_bytes()
    if key_alg == "rsa":
        public.verify(sig, msg, padding.PKCS1v15(), hashes.SHA256())
    else:
        public.verify(sig, msg, ec.ECDSA(hashes.SHA256()))
    # the private blob belongs to this parent only
    ok("tpm2_createprimary", "-T", tcti, "-C", "o", "-G", "rsa3072:aes256cfb",
       "-c", "other.ctx", cwd=tmp_path)
    r = tool("tpm2_load", "-T", tcti, "-C", "other.ctx", "-u", "key.pub", "-r", "key.priv",
             "-c", "x.ctx", cwd=tmp_path)
    assert r.returncode != 0 and "0x1df" in r.stderr.lower(), r.stderr
    flush_transient(tcti, tmp_path)


@pytest.mark.parametrize("curve,size", [("ecc256", 32), ("ecc384", 48), ("ecc521", 66)])
def test_geteccparameters(daemon, tmp_path, curve, size):
    from cryptography.hazmat.primitives.asymmetric import ec

    cls = {"ecc256": ec.SECP256R1, "ecc384": ec.SECP384R1, "ecc521": ec.SECP521R1}[curve]
    ok("tpm2_geteccparameters", "-T", daemon.tcti("mssim"), curve, "-o", "params.bin",
       cwd=tmp_path)
    raw = (tmp_path / "params.bin").read_bytes()
    curve_id, key_size = struct.unpack(">HH", raw[:4])
    assert key_size == cls.key_size
    # kdf (KDF1_SP800_56A + hash) and sign (TPM_ALG_NULL), then p, a, b, gX, gY, n, h
    kdf, _hash, sign = struct.unpack(">HHH", raw[4:10])
    assert (kdf, sign) == (0x0020, 0x0010)
    values, i = [], 10
    for _ in range(7):
        n = struct.unpack(">H", raw[i:i + 2])[0]
        values.append(int.from_bytes(raw[i + 2:i + 2 + n], "big"))
        i += 2 + n
    assert i == len(raw)
    p, a, b, gx, gy, order, h = values
    g = ec.derive_private_key(1, cls()).public_key().public_numbers()
    assert (gx, gy) == (g.x, g.y) and (gy * gy - gx ** 3 - a * gx - b) % p == 0
    assert p.bit_length() == cls.key_size and h == 1
    ec.derive_private_key(order - 1, cls())             # n - 1 is a valid scalar, n is not
    with pytest.raises(ValueError):
        ec.derive_private_key(order, cls())


@pytest.mark.parametrize("wrap", ["aes", "null"])
def test_duplicate_with_tools(tcti, tmp_path, wrap):
    """tpm2_startauthsession --policy-session; tpm2_policycommandcode TPM2_CC_Duplicate;
    tpm2_duplicate -c key.ctx -C newparent.ctx -p session:session.ctx -G aes|null; tpm2_import
    under the new parent; tpm2_load; the moved key signs."""
    ok("tpm2_startauthsession", "-T", tcti, "-S", "trial.ctx", cwd=tmp_path)
    ok("tpm2_policycommandcode", "-T", tcti, "-S", "trial.ctx", "-L", "dup.policy",
       "TPM2_CC_Duplicate", cwd=tmp_path)
    ok("tpm2_flushcontext", "-T", tcti, "trial.ctx", cwd=tmp_path)
    assert (tmp_path / "dup.policy").read_bytes() == hashlib.sha256(
        b"\0" * 32 + struct.pack(">II", 0x16C, 0x14B)).digest()
    ok("tpm2_createprimary", "-T", tcti, "-C", "o", "-G", "rsa2048:aes128cfb", "-c", "root.ctx",
       cwd=tmp_path)
    ok("tpm2_create", "-T", tcti, "-C", "root.ctx", "-G", "ecc256:ecdsa", "-L", "dup.policy",
       "-a", "sensitivedataorigin|userwithauth|sign", "-u", "key.pub", "-r", "key.priv",
       cwd=tmp_path)
    ok("tpm2_load", "-T", tcti, "-C", "root.ctx", "-u", "key.pub", "-r", "key.priv",
       "-c", "key.ctx", cwd=tmp_path)
    ok("tpm2_createprimary", "-T", tcti, "-C", "o", "-G", "ecc256:aes128cfb",
       "-c", "newparent.ctx", cwd=tmp_path)
    args = ["-G", wrap] + (["-o", "sym.key"] if wrap == "aes" else [])
    # a password cannot authorize the DUP role: TPM_RC_AUTH_TYPE
    r = tool("tpm2_duplicate", "-T", tcti, "-C", "newparent.ctx", "-c", "key.ctx", *args,
             "-r", "dup.priv", "-s", "dup.seed", cwd=tmp_path)
    assert r.returncode != 0 and "0x124" in r.stderr.lower(), r.stderr
    ok("tpm2_startauthsession", "-T", tcti, "--policy-session", "-S", "session.ctx",
       cwd=tmp_path)
    ok("tpm2_policycommandcode", "-T", tcti, "-S", "session.ctx", "TPM2_CC_Duplicate",
       cwd=tmp_path)
    ok("tpm2_duplicate", "-T", tcti, "-C", "newparent.ctx", "-c", "key.ctx", *args,
       "-p", "session:session.ctx", "-r", "dup.priv", "-s", "dup.seed", cwd=tmp_path)
    ok("tpm2_flushcontext", "-T", tcti, "session.ctx", cwd=tmp_path)
    imp = ["-k", "sym.key"] if wrap == "aes" else []
    ok("tpm2_import", "-T", tcti, "-C", "newparent.ctx", "-u", "key.pub", "-i", "dup.priv",
       "-s", "dup.seed", *imp, "-r", "moved.priv", cwd=tmp_path)
    ok("tpm2_load", "-T", tcti, "-C", "newparent.ctx", "-u", "key.pub", "-r", "moved.priv",
       "-c", "moved.ctx", cwd=tmp_path)
    (tmp_path / "msg").write_bytes(b"signed after moving")
    ok("tpm2_sign", "-T", tcti, "-c", "moved.ctx", "-g", "sha256", "-o", "sig", "msg",
       cwd=tmp_path)
    ok("tpm2_verifysignature", "-T", tcti, "-c", "key.ctx", "-g", "sha256", "-m", "msg",
       "-s", "sig", cwd=tmp_path)
    flush_transient(tcti, tmp_path)
