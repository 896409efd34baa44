"""Composite attestation: the attester against a real `ctpm run --mode ephemeral` process,
the verifier's every check made to fail on purpose, and tpm2_checkquote accepting the TPM part
unchanged."""
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timezone

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ctpm.attest import evidence as E
from ctpm.attest.verify import (AttestPolicy, ClockHistory, qualified_name,
                                verify_evidence)
from ctpm.modes.identity import Identity, ek_rsa_template, name_of
from ctpm.snp.errors import SnpError
from ctpm.snp.verify import Policy, Trust
from ctpm.testing.process import run_daemon

TOOLS = shutil.which("tpm2_pcrextend") is not None


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from ctpm.snp.simulator import SimulatedSP
    return SimulatedSP(str(tmp_path_factory.mktemp("sim") / "sp"), "milan")


def policy(sim, **snp):
    return AttestPolicy(trust=Trust(extra_arks=(sim.ark,)), snp=Policy(**snp))


def ephemeral(sim):
    return run_daemon("--mode", "ephemeral", "--snp-provider", "simulated", "--snp-sim-dir",
                      sim.directory, timeout=30)


def member(doc, label, data=None):
    if data is None:
        return E.unb64u(doc[label][1])
    doc = dict(doc)
    doc[label] = [doc[label][0], E.b64u(data)]
    return doc


# --- a software attester: every field of the quote under the test's control ------------------

class SoftAk:
    """A P-256 'AK' outside any TPM, to craft quotes a TPM would never sign."""

    def __init__(self):
        self.key = ec.generate_private_key(ec.SECP256R1())
        n = self.key.public_key().public_numbers()
        self.public = (struct.pack(">HHI", 0x23, 0x0B, 0x00050072) + struct.pack(">H", 0)
                       + struct.pack(">HHHHH", 0x10, 0x18, 0x0B, 0x03, 0x10)
                       + struct.pack(">H", 32) + n.x.to_bytes(32, "big")
                       + struct.pack(">H", 32) + n.y.to_bytes(32, "big"))
        self.name = name_of(self.public)

    def quote(self, nonce, pcrs, *, magic=0xFF544347, kind=0x8018, signer=None, extra=None,
              clock=1000, resets=0, selection=((("sha256", (0, 1))),)):
        sel = struct.pack(">I", len(selection))
        digest = hashlib.sha256()
        for bank, indices in selection:
            bits = bytearray(3)
            for i in indices:
                bits[i // 8] |= 1 << (i % 8)
                digest.update(pcrs[bank][i])
            sel += struct.pack(">HB", {"sha256": 0x0B, "sha1": 0x04}[bank], 3) + bytes(bits)
        signer = qualified_name(self.name) if signer is None else signer
        extra = E.qualifying_data(nonce) if extra is None else extra
        body = (struct.pack(">IH", magic, kind) + struct.pack(">H", len(signer)) + signer
                + struct.pack(">H", len(extra)) + extra
                + struct.pack(">QIIB", clock, resets, 0, 1) + struct.pack(">Q", 0) + sel
                + struct.pack(">H", 32) + digest.digest())
        r, s = decode_dss_signature(self.key.sign(body, ec.ECDSA(hashes.SHA256())))
        sig = (struct.pack(">HH", 0x18, 0x0B) + struct.pack(">H", 32) + r.to_bytes(32, "big")
               + struct.pack(">H", 32) + s.to_bytes(32, "big"))
        return body, sig


def crafted(sim, nonce, ak=None, *, report_fields=None, pcrs=None, **quote):
    ak = ak or SoftAk()
    identity = Identity(ek_rsa=ek_rsa_template(), ak=ak.public)
    manifest = identity.manifest(1)
    report = sim.report(hashlib.sha512(nonce + manifest).digest(), **(report_fields or {}))
    pcrs = pcrs or {"sha256": {0: bytes(32), 1: b"\x01" * 32}}
    body, sig = ak.quote(nonce, pcrs, **quote)
    return E.build(report=report, cert_table=sim.cert_table(), manifest=manifest,
                   manifest_version=1, provider="simulated", quote=body, signature=sig,
                   pcrs=pcrs, selection="sha256:0,1"), ak


def soft_policy(sim, **snp):
    return replace(policy(sim, **snp), pcrs="sha256:0,1")


def refused(check, doc, nonce, pol, **kw):
    with pytest.raises(SnpError) as e:
        verify_evidence(doc, nonce, pol, **kw)
    assert e.value.check == check, str(e.value)


def test_crafted_evidence_verifies_when_nothing_is_wrong(sim):
    nonce = os.urandom(64)
    doc, ak = crafted(sim, nonce)
    a = verify_evidence(doc, nonce, soft_policy(sim))
    assert a.ak_name == ak.name and a.claims()["vtpm"]["pcr_selection"] == "sha256:0,1"


def test_each_quote_check_fails_on_purpose(sim):
    nonce = os.urandom(64)
    pol = soft_policy(sim)
    ak = SoftAk()
    refused("quote_magic", crafted(sim, nonce, ak, magic=0x12345678)[0], nonce, pol)
    refused("quote_type", crafted(sim, nonce, ak, kind=0x8017)[0], nonce, pol)
    refused("qualified_signer", crafted(sim, nonce, ak, signer=ak.name)[0], nonce, pol)
    refused("nonce", crafted(sim, nonce, ak, extra=hashlib.sha256(b"other").digest())[0],
            nonce, pol)
    refused("pcr_selection", crafted(sim, nonce, ak, selection=(("sha256", (0,)),))[0],
            nonce, pol)
    # a quote signed by another AK than the manifest's
    doc, _ = crafted(sim, nonce, ak)
    other_body, other_sig = SoftAk().quote(nonce, {"sha256": {0: bytes(32), 1: b"\1" * 32}})
    refused("quote_signature", member(member(doc, "tpm-quote", other_body), "tpm-signature",
                                      other_sig), nonce, pol)
    # a signature scheme the policy does not allow
    refused("quote_signature", doc, nonce, replace(pol, schemes=frozenset({(0x14, "sha256")})))
    # the clock going back for one AK
    history = ClockHistory()
    verify_evidence(crafted(sim, nonce, ak, clock=5000)[0], nonce, pol, history=history)
    refused("clock", crafted(sim, nonce, ak, clock=4000)[0], nonce, pol, history=history)
    verify_evidence(crafted(sim, nonce, ak, clock=10, resets=1)[0], nonce, pol, history=history)
    # reference values
    ref = replace(pol, reference={("sha256", 1): b"\x02" * 32})
    refused("reference_pcrs", doc, nonce, ref)
    verify_evidence(doc, nonce, replace(pol, reference={("sha256", 1): b"\x01" * 32}))
    # a manifest v0 names no AK
    doc0 = member(doc, "meta", json.dumps({"version": 1, "manifest_version": 0}).encode())
    doc0 = member(doc0, "manifest", ek_rsa_template())
    refused("report_data", doc0, nonce, pol)


def test_snp_side_checks_in_composite_evidence(sim):
    nonce = os.urandom(64)
    doc, ak = crafted(sim, nonce)
    refused("report_data", doc, os.urandom(64), soft_policy(sim))          # wrong nonce
    refused("measurement", doc, nonce, soft_policy(sim, measurements=[b"\1" * 48]))
    refused("debug", crafted(sim, nonce, ak, report_fields={"policy": 0x30000 | 1 << 19})[0],
            nonce, soft_policy(sim))
    refused("chain_validity", doc, nonce, soft_policy(
        sim, at=datetime(2090, 1, 1, tzinfo=timezone.utc)))
    refused("ark_pinned", doc, nonce, replace(soft_policy(sim), trust=Trust()))
    # a report for another manifest (another TPM's AK)
    other, _ = crafted(sim, nonce)
    refused("report_data", member(doc, "snp-report", member(other, "snp-report")), nonce,
            soft_policy(sim))


def test_malformed_documents_are_named(sim):
    nonce = os.urandom(64)
    doc, _ = crafted(sim, nonce)
    pol = soft_policy(sim)
    for bad in ({}, [], {"__cmwc_t": "x"}, dict(doc, **{"tpm-quote": ["text/plain", "AA"]}),
                dict(doc, **{"pcrs": [E.MEDIA["pcrs"], "!!"]}),
                {k: v for k, v in doc.items() if k != "manifest"},
                dict(doc, extra=["a", "b"]), b"{not json", "[1, 2"):
        refused("evidence_format", bad, nonce, pol)
    refused("quote_format", member(doc, "tpm-quote", b"\xff\x54"), nonce, pol)


# --- against a real ctpm -----------------------------------------------------------------------

def ctpm(*args):
    r = subprocess.run([sys.executable, "-m", "ctpm", *args], capture_output=True, text=True,
                       timeout=120)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def pc_client_log(events):
    """A crypto-agile TCG PC Client event log (SHA-256 only) of (pcr, digest) events."""
    spec = (b"Spec ID Event03\0" + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, 1)
            + struct.pack("<HH", 0x0B, 32) + b"\0")
    log = struct.pack("<II", 0, 3) + bytes(20) + struct.pack("<I", len(spec)) + spec
    for pcr, digest in events:
        data = b"ctpm test event"
        log += (struct.pack("<III", pcr, 0x0D, 1) + struct.pack("<H", 0x0B) + digest
                + struct.pack("<I", len(data)) + data)
    return log


@pytest.mark.skipif(not TOOLS, reason="tpm2-tools not installed")
def test_end_to_end_with_ctpm_and_tools(sim, tmp_path):
    events = [(pcr, hashlib.sha256(b"event %d %d" % (pcr, i)).digest())
              for pcr in range(8) for i in range(2)]
    log = pc_client_log(events)
    (tmp_path / "log.bin").write_bytes(log)
    (tmp_path / "ark.pem").write_bytes(sim.ark_pem())
    (tmp_path / "policy.toml").write_text(
        f'id = "test-policy"\n[snp]\ntrust_ark = ["{tmp_path / "ark.pem"}"]\n'
        f'[tpm]\npcrs = "sha256:0,1,2,3,4,5,6,7"\nrequire_event_log = true\n')
    with ephemeral(sim) as d:
        tcti = d.tcti("mssim")
        subprocess.run(["tpm2_startup", "-c", "-T", tcti], check=True, capture_output=True)
        for pcr, digest in events:         # what firmware would have measured
            subprocess.run(["tpm2_pcrextend", "-T", tcti, f"{pcr}:sha256={digest.hex()}"],
                           check=True, capture_output=True)
        nonce = os.urandom(64)
        r = ctpm("attest", "--tcti", tcti, "--nonce", nonce.hex(), "-o",
                 str(tmp_path / "ev.json"), "--event-log", str(tmp_path / "log.bin"),
                 "--uuid", "6f1c6a34-8a55-4d8a-9d4b-6d5d3f1f0c11")
        assert r.returncode == 0, r.stderr
        r = ctpm("verify", str(tmp_path / "ev.json"), "--nonce", nonce.hex(), "--policy",
                 str(tmp_path / "policy.toml"), "--json")
        assert r.returncode == 0, r.stderr
        claims = json.loads(r.stdout)
        assert claims["instance_uuid"] == "6f1c6a34-8a55-4d8a-9d4b-6d5d3f1f0c11"
        assert claims["vtpm"]["event_log_pcrs"] == [f"sha256:{i}" for i in range(8)]
        doc = json.loads((tmp_path / "ev.json").read_text())

        # tpm2_checkquote verifies the TPM part as it is, with -q SHA-256(nonce)
        subprocess.run(["tpm2_readpublic", "-T", tcti, "-c", "0x81020000", "-o",
                        str(tmp_path / "ak.pub")], check=True, capture_output=True)
        (tmp_path / "quote.msg").write_bytes(member(doc, "tpm-quote"))
        (tmp_path / "quote.sig").write_bytes(member(doc, "tpm-signature"))
        r = subprocess.run(["tpm2_checkquote", "-u", str(tmp_path / "ak.pub"), "-m",
                            str(tmp_path / "quote.msg"), "-s", str(tmp_path / "quote.sig"),
                            "-g", "sha256", "-q", hashlib.sha256(nonce).hexdigest()],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr

        # every refusal on real evidence names its check, exit 1, one line
        pcrs = json.loads(member(doc, "pcrs"))
        pcrs["sha256"]["7"] = "00" * 32
        edited_log = bytearray(log)
        edited_log[-20] ^= 1                 # inside the last event's digest
        cases = [
            (doc, os.urandom(64).hex(), "report_data"),                       # wrong nonce
            (member(doc, "pcrs", json.dumps(pcrs).encode()), nonce.hex(), "pcr_digest"),
            (member(doc, "event-log", bytes(edited_log)), nonce.hex(), "event_log"),
        ]
        # the PCRs moved on after the quote: a new quote does not match the old values
        subprocess.run(["tpm2_pcrextend", "-T", tcti, "7:sha256=" + "ab" * 32], check=True,
                       capture_output=True)
        nonce2 = os.urandom(64)
        fresh = E.collect(tcti, nonce2)
        cases.append((member(fresh, "pcrs", member(doc, "pcrs")), nonce2.hex(), "pcr_digest"))
        cases.append((fresh, nonce2.hex(), "event_log"))       # no log given: required
        for i, (bad, n, check) in enumerate(cases):
            path = tmp_path / f"bad{i}.json"
            path.write_text(json.dumps(bad))
            r = ctpm("verify", str(path), "--nonce", n, "--policy", str(tmp_path / "policy.toml"))
            assert r.returncode == 1 and r.stderr.startswith(f"ctpm: refused: {check}: "), \
                (check, r.stderr)

    # a quote by another ctpm's AK over the same nonce
    with ephemeral(sim) as other:
        subprocess.run(["tpm2_startup", "-c", "-T", other.tcti("mssim")], check=True,
                       capture_output=True)
        theirs = E.collect(other.tcti("mssim"), nonce)
    mixed = member(member(doc, "tpm-quote", member(theirs, "tpm-quote")), "tpm-signature",
                   member(theirs, "tpm-signature"))
    (tmp_path / "mixed.json").write_text(json.dumps(mixed))
    r = ctpm("verify", str(tmp_path / "mixed.json"), "--nonce", nonce.hex(), "--policy",
             str(tmp_path / "policy.toml"))
    assert r.returncode == 1 and r.stderr.startswith("ctpm: refused: quote_signature: ")


def test_cli_unusable_input(tmp_path):
    assert ctpm("verify", str(tmp_path / "none.json"), "--nonce", "00" * 64).returncode == 2
    (tmp_path / "e.json").write_text("{}")
    assert ctpm("verify", str(tmp_path / "e.json"), "--nonce", "00").returncode == 2
    (tmp_path / "p.toml").write_text("[snp]\nvmpl = 'x'\n")
    r = ctpm("verify", str(tmp_path / "e.json"), "--nonce", "00" * 64, "--policy",
             str(tmp_path / "p.toml"))
    assert r.returncode == 2 and "vmpl" in r.stderr
    r = ctpm("attest", "--tcti", "mssim:host=127.0.0.1,port=1", "--nonce", "00" * 64, "-o",
             str(tmp_path / "x.json"))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not TOOLS, reason="tpm2-tools not installed")
def test_the_separate_flow_baseline(sim):
    """The three-round flow the benchmark compares with: it works, and a credential wrapped
    for another AK's Name does not unwrap."""
    from tpm2_pytss import ESAPI, TCTILdr

    from ctpm.attest.baseline import activate_credential, make_credential, run_separate
    from ctpm.snp.verify import Verifier
    pol = policy(sim)
    with ephemeral(sim) as d:
        subprocess.run(["tpm2_startup", "-c", "-T", d.tcti()], check=True, capture_output=True)
        trips, sent, received = run_separate(d.tcti(), (os.urandom(64), os.urandom(64)),
                                             verifier=Verifier(pol.trust), policy=pol)
        assert trips == 3 and sent > 0 and received > 0
        esapi = ESAPI(TCTILdr.parse(d.tcti()))
        try:
            ek = bytes(esapi.read_public(esapi.tr_from_tpmpublic(0x81010001))[0].publicArea
                       .marshal())
            blob, secret = make_credential(ek, b"\0\x0b" + bytes(32), b"s" * 32)
            with pytest.raises(Exception):
                activate_credential(esapi, blob, secret)
        finally:
            esapi.close()


@pytest.mark.skipif(not TOOLS, reason="tpm2-tools not installed")
@pytest.mark.parametrize("buffer", [1024, 2048])
def test_the_attester_reads_in_the_tpms_nv_buffer_size(sim, tmp_path, buffer):
    """The attester reads the evidence index in pieces of the TPM's TPM_PT_NV_BUFFER_MAX,
    whatever it is: with 1024, a read of 2048 would be refused (TPM_RC_VALUE). Two real
    ctpm instances, configured with each size."""
    from tpm2_pytss import ESAPI, TCTILdr

    from ctpm.modes.anchor import decode_evidence
    from ctpm.modes.tpmclient import (RH_OWNER, TPM_PT_NV_BUFFER_MAX, TctiTransport, TpmClient,
                                      TpmCommandError)
    from ctpm.snp.verify import Verifier
    conf = tmp_path / "ctpm.toml"
    conf.write_text(f"[tpm]\nnv_buffer_max = {buffer}\n")
    pol = policy(sim)
    with run_daemon("--mode", "ephemeral", "--snp-provider", "simulated", "--snp-sim-dir",
                    sim.directory, "--config", str(conf), "--mssim", "127.0.0.1:0",
                    timeout=30) as d:
        tcti = d.tcti("mssim")
        raw = TctiTransport(tcti)
        try:
            tpm = TpmClient(raw)
            tpm.startup()
            assert tpm.tpm_property(TPM_PT_NV_BUFFER_MAX) == buffer
            if buffer == 1024:
                with pytest.raises(TpmCommandError) as e:
                    tpm.nv_read(RH_OWNER, E.NV_EVIDENCE, 2048)
                assert e.value.rc == 0x1C4                      # TPM_RC_VALUE, parameter 1
        finally:
            raw.close()
        nonce = os.urandom(64)
        doc = E.collect(tcti, nonce)
        verify_evidence(json.dumps(doc).encode(), nonce, pol, verifier=Verifier(pol.trust))
        esapi = ESAPI(TCTILdr.parse(tcti))
        try:        # the same bytes as tpm2-tools' way of reading the whole index
            nonce = os.urandom(64)
            ev = decode_evidence(E.collect_snp_only(esapi, nonce))
            size = esapi.nv_read_public(esapi.tr_from_tpmpublic(E.NV_EVIDENCE))[0] \
                .nvPublic.dataSize
        finally:
            esapi.close()
        assert ev.nonce == nonce and len(ev.report) == 1184
        whole = subprocess.run(["tpm2_nvread", "-T", tcti, hex(E.NV_EVIDENCE), "-C", "o"],
                               capture_output=True, check=True).stdout
        assert len(whole) == size and decode_evidence(whole) == ev


@pytest.mark.skipif(not TOOLS, reason="tpm2-tools not installed")
def test_end_to_end_in_svsm_mode(sim, tmp_path):
    """The SNP part from the SVSM attestation call (VMPL 0), the quote through the same TPM's
    mssim listener: one evidence document that `ctpm verify` accepts."""
    sock = tmp_path / "vm.svsm"
    (tmp_path / "ark.pem").write_bytes(sim.ark_pem())
    (tmp_path / "policy.toml").write_text(f'[snp]\ntrust_ark = ["{tmp_path / "ark.pem"}"]\n')
    with run_daemon("--mode", "svsm", "--svsm", f"unix:{sock}", "--snp-provider", "simulated",
                    "--snp-sim-dir", sim.directory, timeout=30) as d:
        subprocess.run(["tpm2_startup", "-c", "-T", d.tcti()], check=True, capture_output=True)
        nonce = os.urandom(64)
        r = ctpm("attest", "--tcti", d.tcti(), "--svsm", f"unix:{sock}", "--nonce",
                 nonce.hex(), "-o", str(tmp_path / "ev.json"))
        assert r.returncode == 0, r.stderr
    r = ctpm("verify", str(tmp_path / "ev.json"), "--nonce", nonce.hex(), "--policy",
             str(tmp_path / "policy.toml"), "--json")
    assert r.returncode == 0, r.stderr
    claims = json.loads(r.stdout)
    assert claims["snp"]["provider"] == "svsm" and claims["snp"]["vmpl"] == 0
