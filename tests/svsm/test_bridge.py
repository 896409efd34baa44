"""End to end through the SVSM protocol: tpm2-tools and tpm2-pytss talk mssim to
`ctpm svsm-bridge`, which sends every command as SVSM vTPM TPM_SEND_COMMAND to a
`ctpm run --mode svsm` process; the vTPM service attestation is verified against the EK the
tools read (manifest v0 exactly as coconut-svsm's, and ctpm's v1)."""
import hashlib
import os
import shutil
import socket
import struct
import subprocess

import pytest

from ctpm.modes.anchor import decode_evidence, verify_anchor
from ctpm.snp.errors import SnpError
from ctpm.snp.verify import Policy
from ctpm.svsm import protocol as p
from ctpm.svsm.client import SvsmClient
from ctpm.testing.process import command, environment

tools = pytest.mark.skipif(shutil.which("tpm2_createek") is None,
                           reason="tpm2-tools is not installed")


def tool(*args, cwd=None) -> str:
    r = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=cwd)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def started(bridge):
    if shutil.which("tpm2_startup"):
        tool("tpm2_startup", "-c", "-T", bridge.tcti())
    return bridge


@pytest.fixture(scope="module")
def ek_public(started, tmp_path_factory):
    """TPM2B_PUBLIC of 0x81010001, as tpm2_readpublic writes it."""
    if shutil.which("tpm2_readpublic") is None:
        pytest.skip("tpm2-tools is not installed")
    out = tmp_path_factory.mktemp("ek") / "ek.pub"
    tool("tpm2_readpublic", "-T", started.tcti(), "-c", "0x81010001", "-o", str(out))
    return out.read_bytes()


@pytest.mark.tools
@tools
def test_tools_through_the_svsm(started, tmp_path):
    t = started.tcti()
    assert len(bytes.fromhex(tool("tpm2_getrandom", "-T", t, "--hex", "16"))) == 16
    tool("tpm2_createek", "-T", t, "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub", cwd=tmp_path)
    tool("tpm2_readpublic", "-T", t, "-c", "0x81010001", "-o", "persistent.pub", cwd=tmp_path)
    # tpm2_createek makes the TCG L-1 EK again: the same key the SVSM provisioned
    assert (tmp_path / "ek.pub").read_bytes() == (tmp_path / "persistent.pub").read_bytes()
    tool("tpm2_flushcontext", "-T", t, "-t")
    tool("tpm2_nvread", "-T", t, "-C", "o", "0x01400001", "-o", "evidence.bin", cwd=tmp_path)
    evidence = decode_evidence((tmp_path / "evidence.bin").read_bytes())
    assert len(evidence.report) == 1184 and evidence.manifest_version == 1


@pytest.mark.tools
@tools
def test_attestation_v0_is_coconuts_format(started, ek_public, svsm, verifier):
    nonce = os.urandom(64)
    with SvsmClient(svsm.path) as guest:
        got = guest.attest_vtpm(nonce, 0)
    # manifest v0 = the marshalled TPMT_PUBLIC of the RSA EK, no size prefix
    assert got.manifest == ek_public[2:]
    assert struct.unpack(">H", ek_public[:2])[0] == len(got.manifest) == 314
    # REPORT_DATA = SHA-512(nonce || manifest), computed here independently
    assert got.report[0x50:0x90] == hashlib.sha512(nonce + got.manifest).digest()
    anchored = verify_anchor(got.report, nonce, got.manifest, 0, ek_public=ek_public,
                             cert_table=got.cert_table, verifier=verifier)
    assert anchored.snp.vmpl == 0                       # the SVSM's own level
    with pytest.raises(SnpError) as refused:
        verify_anchor(got.report, os.urandom(64), got.manifest, 0, ek_public=ek_public,
                      cert_table=got.cert_table, verifier=verifier)
    assert refused.value.check == "report_data"


@pytest.mark.tools
@tools
def test_attestation_v1_names_the_ak(started, ek_public, svsm, verifier, tmp_path):
    tool("tpm2_readpublic", "-T", started.tcti(), "-c", "0x81020000", "-o", "ak.pub",
         cwd=tmp_path)
    nonce = os.urandom(64)
    with SvsmClient(svsm.path) as guest:
        got = guest.attest_vtpm(nonce, 1)
    anchored = verify_anchor(got.report, nonce, got.manifest, 1, ek_public=ek_public,
                             ak_public=(tmp_path / "ak.pub").read_bytes(),
                             cert_table=got.cert_table, verifier=verifier)
    assert anchored.ak_name is not None and anchored.snp.vmpl == 0
    # a v1 manifest passed off as v0 (or another TPM's EK) is refused
    with pytest.raises(SnpError):
        verify_anchor(got.report, nonce, got.manifest, 0, ek_public=ek_public,
                      cert_table=got.cert_table, verifier=verifier)


def test_services_attestation(svsm, verifier):
    nonce = os.urandom(64)
    with SvsmClient(svsm.path) as guest:
        got = guest.attest_services(nonce)
        ek_manifest = guest.attest_vtpm(nonce, 0).manifest
    assert p.decode_services_manifest(got.manifest) == {p.VTPM_SERVICE_GUID: ek_manifest}
    verified = verifier.verify(got.report, cert_table=got.cert_table, policy=Policy(
        vmpl=0, report_data=hashlib.sha512(nonce + got.manifest).digest()))
    assert verified.vmpl == 0


def test_pytss_esapi_through_the_svsm(started):
    from tpm2_pytss import ESAPI, TPM2B_PUBLIC, TPML_PCR_SELECTION
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG
    from tpm2_pytss.types import (TPM2B_DATA, TPML_DIGEST_VALUES, TPMS_ATTEST, TPMT_HA,
                                  TPMT_SIG_SCHEME)

    with ESAPI(started.tcti()) as esapi:
        assert len(esapi.get_random(32)) == 32
        ha = TPMT_HA(hashAlg=TPM2_ALG.SHA256)
        ha.digest.sha256 = hashlib.sha256(b"svsm").digest()
        esapi.pcr_extend(ESYS_TR.PCR16, TPML_DIGEST_VALUES([ha]))
        template = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256:null",
                                      objectAttributes="sign|restricted|fixedtpm|fixedparent"
                                                       "|sensitivedataorigin|userwithauth")
        key = esapi.create_primary(None, template, ESYS_TR.OWNER)[0]
        quoted, signature = esapi.quote(key, TPML_PCR_SELECTION.parse("sha256:16"),
                                        TPM2B_DATA(b"svsm-nonce"),
                                        TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))
        attest, _ = TPMS_ATTEST.unmarshal(bytes(quoted))
        assert bytes(attest.extraData) == b"svsm-nonce"
        assert signature.sigAlg == TPM2_ALG.ECDSA
        esapi.flush_context(key)


def test_bridge_refuses_other_localities(started):
    _, host, port, _ = started.endpoint("mssim")
    get_random = bytes.fromhex("80010000000c0000017b0008")
    with socket.create_connection((host, port), timeout=10) as s:
        for locality, rc in ((3, 0x907), (0, 0)):
            s.sendall(struct.pack(">IBI", 8, locality, len(get_random)) + get_random)
            size = struct.unpack(">I", s.recv(4))[0]
            data = b""
            while len(data) < size + 4:
                data += s.recv(4096)
            assert struct.unpack(">I", data[6:10])[0] == rc


def test_bridge_usage_and_unreachable_svsm(tmp_path):
    run = lambda *a: subprocess.run(command("svsm-bridge", *a), capture_output=True,  # noqa
                                    text=True, timeout=30, env=environment())
    r = run("--svsm", f"unix:{tmp_path}/nothing.sock", "--mssim", "127.0.0.1:0")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().count("\n") == 0 and "cannot reach the SVSM" in r.stderr
    r = run("--svsm", "127.0.0.1:5", "--mssim", "127.0.0.1:0")
    assert r.returncode == 2 and "unix:PATH" in r.stderr


def mssim_command(port, command: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(struct.pack(">IBI", 8, 0, len(command)) + command)
        data = b""
        while len(data) < 4 or len(data) < 8 + struct.unpack(">I", data[:4])[0]:
            chunk = s.recv(4096)
            assert chunk, "the bridge closed the connection"
            data += chunk
        return data[4:-4]


def test_bridge_survives_the_svsm_restarting(sp, tmp_path):
    """The SVSM goes away: commands get TPM_RC_FAILURE (the bridge stays up); it comes back
    (a new TPM: ephemeral): the bridge reconnects and the guest starts it up again."""
    from .conftest import run_bridge, start_svsm
    startup = bytes.fromhex("80010000000c000001440000")
    get_random = bytes.fromhex("80010000000c0000017b0008")
    path, running = start_svsm(sp, tmp_path)
    with running:
        bridge = run_bridge(path)
    try:
        port = bridge.mssim_port
        assert mssim_command(port, get_random)[6:10] == struct.pack(">I", 0x101), bridge.stderr()
        assert bridge.proc.poll() is None
        _, again = start_svsm(sp, tmp_path)
        with again:
            assert mssim_command(port, startup)[6:10] == bytes(4)
            assert mssim_command(port, get_random)[6:10] == bytes(4)
    finally:
        bridge.stop()
        bridge.proc.stdout.close()
        bridge._stderr.close()
