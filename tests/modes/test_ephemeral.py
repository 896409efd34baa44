"""The ephemeral mode through real clients: a `ctpm run --mode ephemeral` process with the
simulated AMD-SP, tpm2-tools on it, the anchor checked by `ctpm verify-ek` and independently."""
import hashlib
import os
import shutil
import struct
import subprocess
import sys

import pytest

from ctpm.modes.anchor import decode_evidence
from ctpm.modes.identity import name_of
from ctpm.testing.process import run_daemon
pytestmark = pytest.mark.skipif(shutil.which("tpm2_nvread") is None,
                                reason="tpm2-tools not installed")

EVIDENCE, REQUEST = "0x01400001", "0x01400002"


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory):
    from ctpm.snp.simulator import SimulatedSP
    path = tmp_path_factory.mktemp("sim") / "amd-sp"
    SimulatedSP(str(path), "milan")
    return str(path)


def ephemeral(sim_dir, *extra, cwd=None):
    return run_daemon("--mode", "ephemeral", "--snp-provider", "simulated",
                      "--snp-sim-dir", sim_dir, *extra, timeout=30)


def tool(d, *args, check=True, **kw):
    r = subprocess.run([args[0], "-T", d.tcti("mssim"), *args[1:]], capture_output=True,
                       timeout=60, **kw)
    if check:
        assert r.returncode == 0, (args, r.stderr.decode())
    return r


def ctpm(*args):
    r = subprocess.run([sys.executable, "-m", "ctpm", *args], capture_output=True, text=True,
                       timeout=60)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def read_evidence(d, tmp_path, nonce: bytes, name="evidence.bin"):
    (tmp_path / "nonce.bin").write_bytes(nonce)
    tool(d, "tpm2_nvwrite", REQUEST, "-C", "o", "-i", str(tmp_path / "nonce.bin"))
    out = tmp_path / name
    tool(d, "tpm2_nvread", EVIDENCE, "-C", "o", "-o", str(out))
    return out


def test_anchor_through_tpm2_tools(sim_dir, tmp_path):
    with ephemeral(sim_dir) as d:
        tool(d, "tpm2_startup", "-c")
        # tpm2_createek derives the same EK as the persistent one
        tool(d, "tpm2_createek", "-c", str(tmp_path / "ek.ctx"), "-G", "rsa",
             "-u", str(tmp_path / "createek.pub"))
        tool(d, "tpm2_readpublic", "-c", "0x81010001", "-o", str(tmp_path / "ek.pub"))
        tool(d, "tpm2_readpublic", "-c", "0x81020000", "-o", str(tmp_path / "ak.pub"))
        assert (tmp_path / "ek.pub").read_bytes() == (tmp_path / "createek.pub").read_bytes()
        tool(d, "tpm2_readpublic", "-c", "0x81010002")
        nonce = os.urandom(64)
        evidence = read_evidence(d, tmp_path, nonce)
        (tmp_path / "ark.pem").write_bytes(open(os.path.join(sim_dir, "ark.pem"), "rb").read())

        # ctpm's own verifier
        r = ctpm("verify-ek", "--evidence", str(evidence), "--nonce", nonce.hex(),
                 "--ek", str(tmp_path / "ek.pub"), "--ak", str(tmp_path / "ak.pub"),
                 "--trust-ark", str(tmp_path / "ark.pem"), "--json")
        assert r.returncode == 0, r.stderr
        assert '"provider": "simulated"' in r.stdout

        # an independent check of the binding: hashlib over the bytes the TPM gave
        ev = decode_evidence(evidence.read_bytes())
        ek = (tmp_path / "ek.pub").read_bytes()[2:]
        assert ev.nonce == nonce and ev.provider == "simulated"
        assert ev.report[0x50:0x90] == hashlib.sha512(nonce + ev.manifest).digest()
        assert ek in ev.manifest
        from ctpm.snp.verify import Trust, Verifier
        from ctpm.snp.certs import load_cert
        ark = load_cert((tmp_path / "ark.pem").read_bytes())
        Verifier(Trust(extra_arks=(ark,))).verify(ev.report, cert_table=ev.cert_table)

        # refusals: another nonce, the simulator not trusted, another TPM's EK
        r = ctpm("verify-ek", "--evidence", str(evidence), "--nonce", os.urandom(64).hex(),
                 "--ek", str(tmp_path / "ek.pub"), "--trust-ark", str(tmp_path / "ark.pem"))
        assert r.returncode == 1 and r.stderr.startswith("ctpm: refused: report_data: ")
        r = ctpm("verify-ek", "--evidence", str(evidence), "--nonce", nonce.hex(),
                 "--ek", str(tmp_path / "ek.pub"))
        assert r.returncode == 1 and r.stderr.startswith("ctpm: refused: ark_pinned: ")
        r = ctpm("verify-ek", "--evidence", str(evidence), "--nonce", nonce.hex(),
                 "--ek", str(tmp_path / "ek.pub"), "--ak", str(tmp_path / "ek.pub"),
                 "--trust-ark", str(tmp_path / "ark.pem"))
        assert r.returncode == 1 and r.stderr.startswith("ctpm: refused: ak_name: ")

        # guest root cannot replace or delete the evidence, with any authorization it has
        (tmp_path / "fake.bin").write_bytes(b"x" * 64)
        for args in (["tpm2_nvwrite", EVIDENCE, "-C", "o", "-i", str(tmp_path / "fake.bin")],
                     ["tpm2_nvwrite", EVIDENCE, "-C", EVIDENCE, "-i", str(tmp_path / "fake.bin")],
                     ["tpm2_nvwrite", EVIDENCE, "-C", "p", "-i", str(tmp_path / "fake.bin")],
                     ["tpm2_nvundefine", EVIDENCE, "-C", "o"],
                     ["tpm2_nvundefine", EVIDENCE, "-C", "p"],
                     ["tpm2_nvundefine", REQUEST, "-C", "p"]):
            assert tool(d, *args, check=False).returncode != 0, args
        again = tmp_path / "again.bin"
        tool(d, "tpm2_nvread", EVIDENCE, "-C", "o", "-o", str(again))
        assert again.read_bytes() == evidence.read_bytes()

        # a report the guest substitutes (an old one, for an earlier nonce) is refused
        old = read_evidence(d, tmp_path, os.urandom(64), "old.bin")
        r = ctpm("verify-ek", "--evidence", str(old), "--nonce", nonce.hex(),
                 "--ek", str(tmp_path / "ek.pub"), "--trust-ark", str(tmp_path / "ark.pem"))
        assert r.returncode == 1 and r.stderr.startswith("ctpm: refused: report_data: ")
        # and a forged report (one byte of the measurement changed) too
        forged = bytearray(evidence.read_bytes())
        at = forged.index(ev.report) + 0x90
        forged[at] ^= 1
        (tmp_path / "forged.bin").write_bytes(bytes(forged))
        r = ctpm("verify-ek", "--evidence", str(tmp_path / "forged.bin"), "--nonce",
                 nonce.hex(), "--trust-ark", str(tmp_path / "ark.pem"))
        assert r.returncode == 1 and r.stderr.startswith("ctpm: refused: report_signature: ")


def test_every_start_is_a_new_tpm_and_nothing_is_written(sim_dir, tmp_path):
    names = []
    before = set(os.listdir(sim_dir))
    for i in range(2):
        with ephemeral(sim_dir) as d:
            tool(d, "tpm2_startup", "-c")
            out = tmp_path / f"ek{i}.pub"
            tool(d, "tpm2_readpublic", "-c", "0x81010001", "-o", str(out))
            names.append(name_of(out.read_bytes()[2:]))
            info = d.stderr()
        assert d.proc.returncode == 0, info
    assert names[0] != names[1]
    assert set(os.listdir(sim_dir)) == before      # the simulator's keys only, as before


def test_another_vtpms_report_is_refused(sim_dir, tmp_path):
    nonce = os.urandom(64)
    with ephemeral(sim_dir) as a, ephemeral(sim_dir) as b:
        for d in (a, b):
            tool(d, "tpm2_startup", "-c")
        tool(a, "tpm2_readpublic", "-c", "0x81010001", "-o", str(tmp_path / "ek_a.pub"))
        evidence_b = read_evidence(b, tmp_path, nonce)
    (tmp_path / "ark.pem").write_bytes(open(os.path.join(sim_dir, "ark.pem"), "rb").read())
    r = ctpm("verify-ek", "--evidence", str(evidence_b), "--nonce", nonce.hex(),
             "--ek", str(tmp_path / "ek_a.pub"), "--trust-ark", str(tmp_path / "ark.pem"))
    assert r.returncode == 1 and r.stderr.startswith("ctpm: refused: ek_name: ")


def test_state_blobs_are_refused(sim_dir):
    """QEMU's GET_STATEBLOB (migration) and SET_STATEBLOB get swtpm's FAIL: an ephemeral
    TPM's seeds never leave it and cannot be replaced from the host."""
    import socket
    with ephemeral(sim_dir) as d:
        port = d.swtpm_port + 1
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(struct.pack(">IIII", 0x0C, 1, 1, 0))
            assert struct.unpack(">I", s.recv(64)[:4])[0] == 9
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(struct.pack(">IIII", 0x0D, 0, 1, 4) + b"abcd")
            assert struct.unpack(">I", s.recv(64)[:4])[0] != 0


def test_no_snp_device_is_one_line(tmp_path):
    from ctpm.testing.process import command, environment
    r = subprocess.run(command("run", "--mode", "ephemeral", "--mssim", "127.0.0.1:0"),
                       capture_output=True, text=True, timeout=60, env=environment())
    if os.path.exists("/sys/kernel/config/tsm/report") or os.path.exists("/dev/sev-guest"):
        pytest.skip("this machine is an SEV-SNP guest")
    assert r.returncode == 1
    assert r.stderr.startswith("ctpm: SNP report provider: no SEV-SNP guest interface"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_nv_buffer_max_2048_and_tpm2_tools_read_the_evidence_with_it(sim_dir, tmp_path):
    """The ephemeral TPM reports TPM_PT_NV_BUFFER_MAX 2048 (the standard mode keeps libtpms'
    1024); tpm2_nvread, which reads the property, gets the whole evidence in those pieces."""
    with ephemeral(sim_dir) as d:
        tool(d, "tpm2_startup", "-c")
        fixed = tool(d, "tpm2_getcap", "properties-fixed").stdout.decode()
        assert "TPM2_PT_NV_BUFFER_MAX:\n  raw: 0x800" in fixed
        nonce = os.urandom(64)
        ev = decode_evidence(read_evidence(d, tmp_path, nonce).read_bytes())
        assert ev.nonce == nonce
    with run_daemon() as d:
        tool(d, "tpm2_startup", "-c")
        assert "TPM2_PT_NV_BUFFER_MAX:\n  raw: 0x400" in \
            tool(d, "tpm2_getcap", "properties-fixed").stdout.decode()


def test_a_report_request_needs_no_session_slot(sim_dir, tmp_path):
    """ctpm writes the evidence as the platform, with no TPM command: a guest holding every
    session slot (max_sessions = 3) still gets a fresh report for its nonce."""
    from tpm2_pytss import ESAPI, TCTILdr, TSS2_Exception
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_SE
    from tpm2_pytss.types import TPMT_SYM_DEF

    from ctpm.attest.evidence import collect_snp_only
    conf = tmp_path / "ctpm.toml"
    conf.write_text("[tpm]\nmax_sessions = 3\n")
    with ephemeral(sim_dir, "--config", str(conf), "--mssim", "127.0.0.1:0") as d:
        esapi = ESAPI(TCTILdr.parse(d.tcti("mssim")))
        try:
            esapi.startup(0)

            def start():
                return esapi.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.HMAC,
                                                TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                                                TPM2_ALG.SHA256)
            sessions = [start() for _ in range(3)]
            with pytest.raises(TSS2_Exception, match="memory for session"):
                start()
            for _ in range(2):
                nonce = os.urandom(64)
                assert decode_evidence(collect_snp_only(esapi, nonce)).nonce == nonce
            for s in sessions:
                esapi.flush_context(s)
        finally:
            esapi.close()
        assert "cannot refresh" not in d.stderr()


def test_only_the_platform_key_satisfies_the_indices_policy(sim_dir):
    """The evidence index, which ctpm writes as the platform without a command, is closed to
    clients: owner, platform and its own authValue are refused, and its authPolicy is
    PolicySigned by the key only this process holds (another key's PolicySigned does not
    satisfy it; that key's does)."""
    from ctpm.config import Config
    from ctpm.modes.ephemeral import EVIDENCE_INDEX, EphemeralBackend, PlatformSigner
    from ctpm.modes.tpmclient import (RH_OWNER, RH_PLATFORM, TpmClient, TpmCommandError,
                                      policy_session)
    from ctpm.snp.simulator import SimulatedProvider, SimulatedSP
    backend = EphemeralBackend.build(Config(), provider=SimulatedProvider(SimulatedSP(sim_dir)))
    tpm = backend._tpm
    client = TpmClient(tpm.execute)
    client.startup()
    # TPM_RC_NV_AUTHORIZATION; with its own authValue TPM_RC_AUTH_UNAVAILABLE (policy only)
    for auth, rc in ((RH_OWNER, 0x149), (RH_PLATFORM, 0x149), (EVIDENCE_INDEX, 0x12F)):
        with pytest.raises(TpmCommandError) as e:
            client.nv_write(auth, EVIDENCE_INDEX, b"guest")
        assert e.value.rc == rc, hex(e.value.rc)

    def policy_write(signer, data):
        key, _ = client.load_external_public(signer.public)
        session, nonce_tpm = client.start_policy_session()
        try:
            client.policy_signed(key, session, nonce_tpm, signer.signature(nonce_tpm))
            client.nv_write(EVIDENCE_INDEX, EVIDENCE_INDEX, data,
                            session=policy_session(session))
        finally:
            for handle in (key, session):
                try:
                    client.flush(handle)
                except TpmCommandError:         # the session ended with its command
                    pass
    with pytest.raises(TpmCommandError) as e:
        policy_write(PlatformSigner(), b"other")
    assert e.value.rc & 0xFBF == 0x99D                          # TPM_RC_POLICY_FAIL
    assert not tpm.platform_nv_read(EVIDENCE_INDEX).startswith(b"other")
    policy_write(backend.signer, b"platform")
    assert tpm.platform_nv_read(EVIDENCE_INDEX).startswith(b"platform")
