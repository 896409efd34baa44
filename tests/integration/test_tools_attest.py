"""Attestation through the real tpm2-tools against a `ctpm run` process: quote + checkquote
(RSA and ECC attestation keys, SHA-1 and SHA-256 banks), certify, certifycreation, gettime,
getsessionauditdigest, getcommandauditdigest, nvcertify. Every signature is also verified
here with `cryptography` against the key's PEM from tpm2_readpublic, and the attested fields
are checked against values computed here.
"""
import hashlib
import struct
import subprocess

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from ctpm.testing.process import run_daemon
from tests.integration.test_tools import fails, ok

pytestmark = [pytest.mark.tools,
              pytest.mark.skipif(subprocess.run(["which", "tpm2_quote"],
                                                capture_output=True).returncode != 0,
                                 reason="tpm2-tools is not installed")]

AK_ATTRS = "restricted|sign|fixedtpm|fixedparent|sensitivedataorigin|userwithauth"
GENERATED = 0xFF544347


@pytest.fixture(scope="module")
def daemon():
    with run_daemon() as d:
        ok("tpm2_startup", "-c", "-T", d.tcti("mssim"))
        yield d


@pytest.fixture
def tcti(daemon):
    tcti = daemon.tcti("mssim")
    yield tcti
    ok("tpm2_flushcontext", "-t", "-T", tcti)
    ok("tpm2_flushcontext", "-s", "-T", tcti)


def run(tcti, cwd, *args):
    return ok(args[0], "-T", tcti, *args[1:], cwd=cwd)


def signing_key(tcti, cwd, alg="rsa:rsassa-sha256:null", hierarchy="o", name="ak"):
    """A primary signing key (restricted, like an AK); returns its context and PEM."""
    run(tcti, cwd, "tpm2_createprimary", "-C", hierarchy, "-G", alg, "-g", "sha256",
        "-a", AK_ATTRS, "-c", f"{name}.ctx")
    run(tcti, cwd, "tpm2_readpublic", "-c", f"{name}.ctx", "-f", "pem", "-o", f"{name}.pem",
        "-n", f"{name}.name")
    return f"{name}.ctx", (cwd / f"{name}.pem").read_bytes()


def verify(pem: bytes, data: bytes, signature: bytes):
    """An independent check of a tpm2-tools "plain" signature over `data` (SHA-256)."""
    key = serialization.load_pem_public_key(pem)
    if isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    else:
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))


def header(attest: bytes):
    """(magic, type, qualifiedSigner, extraData, attested bytes) of a TPMS_ATTEST."""
    magic, kind = struct.unpack(">IH", attest[:6])
    off, fields = 6, []
    for _ in range(2):
        size = struct.unpack(">H", attest[off:off + 2])[0]
        fields.append(attest[off + 2:off + 2 + size])
        off += 2 + size
    return magic, kind, fields[0], fields[1], attest[off + 25:]


@pytest.mark.parametrize("alg,bank", [("rsa:rsassa-sha256:null", "sha256"),
                                      ("rsa:rsassa-sha256:null", "sha1"),
                                      ("ecc:ecdsa-sha256:null", "sha256"),
                                      ("ecc:ecdsa-sha256:null", "sha1")])
def test_quote_and_checkquote(tcti, tmp_path, alg, bank):
    ak, pem = signing_key(tcti, tmp_path, alg)
    run(tcti, tmp_path, "tpm2_pcrextend", f"7:{bank}=" + "ab" * (20 if bank == "sha1" else 32))
    run(tcti, tmp_path, "tpm2_quote", "-c", ak, "-l", f"{bank}:0,1,7", "-q", "c0ffee",
        "-m", "quote.msg", "-s", "quote.sig", "-o", "quote.pcrs", "-g", "sha256", "-f",
        "plain")
    ok("tpm2_checkquote", "-u", "ak.pem", "-m", "quote.msg", "-s", "quote.sig",
       "-f", "quote.pcrs", "-g", "sha256", "-q", "c0ffee", cwd=tmp_path)
    msg = (tmp_path / "quote.msg").read_bytes()
    verify(pem, msg, (tmp_path / "quote.sig").read_bytes())
    magic, kind, _signer, extra, _ = header(msg)
    assert (magic, kind, extra) == (GENERATED, 0x8018, bytes.fromhex("c0ffee"))
    # a wrong nonce fails tpm2_checkquote
    fails("tpm2_checkquote", "-u", "ak.pem", "-m", "quote.msg", "-s", "quote.sig",
          "-f", "quote.pcrs", "-g", "sha256", "-q", "c0ffef", cwd=tmp_path)


def test_certify(tcti, tmp_path):
    ak, pem = signing_key(tcti, tmp_path)
    run(tcti, tmp_path, "tpm2_createprimary", "-C", "o", "-c", "parent.ctx")
    run(tcti, tmp_path, "tpm2_create", "-C", "parent.ctx", "-G", "ecc", "-u", "key.pub",
        "-r", "key.priv")
    run(tcti, tmp_path, "tpm2_load", "-C", "parent.ctx", "-u", "key.pub", "-r", "key.priv",
        "-c", "key.ctx", "-n", "key.name")
    run(tcti, tmp_path, "tpm2_certify", "-C", ak, "-c", "key.ctx", "-g", "sha256",
        "-o", "certify.attest", "-s", "certify.sig", "-f", "plain")
    attest = (tmp_path / "certify.attest").read_bytes()
    verify(pem, attest, (tmp_path / "certify.sig").read_bytes())
    _, kind, _, _, attested = header(attest)
    name = (tmp_path / "key.name").read_bytes()
    assert kind == 0x8017 and attested.startswith(struct.pack(">H", len(name)) + name)


def test_certifycreation(tcti, tmp_path):
    ak, pem = signing_key(tcti, tmp_path)
    run(tcti, tmp_path, "tpm2_createprimary", "-C", "o", "-c", "parent.ctx",
        "--creation-hash", "ch.bin", "--creation-ticket", "ticket.bin")
    run(tcti, tmp_path, "tpm2_certifycreation", "-C", ak, "-c", "parent.ctx", "-d", "ch.bin",
        "-t", "ticket.bin", "-g", "sha256", "-o", "cc.sig", "--attestation", "cc.attest",
        "-f", "plain", "-s", "rsassa")
    attest = (tmp_path / "cc.attest").read_bytes()
    verify(pem, attest, (tmp_path / "cc.sig").read_bytes())
    _, kind, _, _, attested = header(attest)
    assert kind == 0x801A
    assert attested.endswith(struct.pack(">H", 32) + (tmp_path / "ch.bin").read_bytes()[-32:])
    # a different creation hash does not match the ticket
    (tmp_path / "other.bin").write_bytes((tmp_path / "ch.bin").read_bytes()[:-1] + b"\0")
    fails("tpm2_certifycreation", "-T", tcti, "-C", ak, "-c", "parent.ctx", "-d", "other.bin",
          "-t", "ticket.bin", "-g", "sha256", "-o", "x.sig", "--attestation", "x.attest",
          cwd=tmp_path)


def test_gettime(tcti, tmp_path):
    ak, pem = signing_key(tcti, tmp_path, hierarchy="e")
    run(tcti, tmp_path, "tpm2_gettime", "-c", ak, "-q", "1234", "-o", "time.sig",
        "--attestation", "time.attest", "-f", "plain")
    attest = (tmp_path / "time.attest").read_bytes()
    verify(pem, attest, (tmp_path / "time.sig").read_bytes())
    _, kind, _, extra, attested = header(attest)
    assert kind == 0x8019 and extra == bytes.fromhex("1234")
    # an endorsement key sees the real counters: the header's equal the inner ones
    inner_reset, inner_restart = struct.unpack(">II", attested[16:24])
    off = len(attest) - len(attested) - 25
    outer_reset, outer_restart = struct.unpack(">II", attest[off + 8:off + 16])
    assert (inner_reset, inner_restart) == (outer_reset, outer_restart)


def test_getsessionauditdigest(tcti, tmp_path):
    ak, pem = signing_key(tcti, tmp_path, hierarchy="e")
    run(tcti, tmp_path, "tpm2_startauthsession", "-S", "session.ctx", "--audit-session")
    run(tcti, tmp_path, "tpm2_getrandom", "8", "-S", "session.ctx", "-o", "random.bin")
    run(tcti, tmp_path, "tpm2_getsessionauditdigest", "-c", ak, "-S", "session.ctx",
        "-m", "audit.attest", "-s", "audit.sig", "-f", "plain", "-g", "sha256")
    attest = (tmp_path / "audit.attest").read_bytes()
    verify(pem, attest, (tmp_path / "audit.sig").read_bytes())
    _, kind, _, _, attested = header(attest)
    random = (tmp_path / "random.bin").read_bytes()
    cp = hashlib.sha256(struct.pack(">IH", 0x17B, 8)).digest()
    rp = hashlib.sha256(struct.pack(">IIH", 0, 0x17B, 8) + random).digest()
    assert kind == 0x8016
    # not exclusive: the tool's own commands before GetSessionAuditDigest (ReadPublic of the
    # key it loaded) ran without the audit session
    assert attested == b"\x00" + struct.pack(">H", 32) + hashlib.sha256(
        bytes(32) + cp + rp).digest()


def test_getcommandauditdigest(tcti, tmp_path):
    ak, pem = signing_key(tcti, tmp_path, hierarchy="e")
    run(tcti, tmp_path, "tpm2_setcommandauditstatus", "-g", "sha256")
    run(tcti, tmp_path, "tpm2_setcommandauditstatus", "TPM2_CC_GetRandom")
    run(tcti, tmp_path, "tpm2_getrandom", "4", "-o", "r.bin")
    run(tcti, tmp_path, "tpm2_getcommandauditdigest", "-c", ak, "-m", "cmd.attest",
        "-s", "cmd.sig", "-f", "plain", "-g", "sha256")
    attest = (tmp_path / "cmd.attest").read_bytes()
    verify(pem, attest, (tmp_path / "cmd.sig").read_bytes())
    _, kind, _, _, attested = header(attest)
    assert kind == 0x8015
    counter, alg = struct.unpack(">QH", attested[:10])
    assert alg == 0x000B and counter >= 1
    codes = sorted((0x140, 0x17B))            # SetCommandCodeAuditStatus, GetRandom
    command_digest = hashlib.sha256(b"".join(struct.pack(">I", c) for c in codes)).digest()
    assert attested.endswith(struct.pack(">H", 32) + command_digest)
    run(tcti, tmp_path, "tpm2_setcommandauditstatus", "--clear-list", "TPM2_CC_GetRandom")


def test_nvcertify(tcti, tmp_path):
    ak, pem = signing_key(tcti, tmp_path)
    index = "0x1500030"
    run(tcti, tmp_path, "tpm2_nvdefine", index, "-s", "32", "-a",
        "ownerread|ownerwrite|authread|authwrite")
    try:
        (tmp_path / "data.bin").write_bytes(bytes(range(32)))
        run(tcti, tmp_path, "tpm2_nvwrite", index, "-i", "data.bin")
        run(tcti, tmp_path, "tpm2_nvcertify", "-C", ak, "-g", "sha256", "-f", "plain",
            "-o", "nv.sig", "--attestation", "nv.attest", "--size", "16", "--offset", "8",
            "-q", "aa", index)
        attest = (tmp_path / "nv.attest").read_bytes()
        verify(pem, attest, (tmp_path / "nv.sig").read_bytes())
        _, kind, _, extra, attested = header(attest)
        assert kind == 0x8014 and extra == b"\xaa"
        assert attested.endswith(struct.pack(">HH", 8, 16) + bytes(range(8, 24)))
        fails("tpm2_nvcertify", "-T", tcti, "-C", ak, "-g", "sha256", "-o", "x.sig",
              "--attestation", "x.attest", "--size", "16", "--offset", "20", index,
              cwd=tmp_path)
    finally:
        run(tcti, tmp_path, "tpm2_nvundefine", index)
