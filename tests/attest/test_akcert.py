"""Manifest v0 (the EK only, as coconut-svsm): the AK certified in the same exchange by a key
the verifier wrapped to the EK. Real `ctpm run --mode svsm` processes give the manifest v0
through the SVSM attestation protocol; every new check is made to fail on purpose."""
import hashlib
import json
import os
import shutil
import struct
import subprocess

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ctpm.attest import evidence as E
from ctpm.attest.akcert import Certifier
from ctpm.attest.verify import verify_evidence
from ctpm.snp.errors import SnpError
from ctpm.svsm.client import SvsmClient
from ctpm.testing.process import run_daemon

from .test_composite import SoftAk, ctpm, member, policy

TOOLS = shutil.which("tpm2_readpublic") is not None


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from ctpm.snp.simulator import SimulatedSP
    return SimulatedSP(str(tmp_path_factory.mktemp("sim") / "sp"), "milan")


def svsm_daemon(sim, sock):
    return run_daemon("--mode", "svsm", "--svsm", f"unix:{sock}", "--snp-provider",
                      "simulated", "--snp-sim-dir", sim.directory, timeout=30)


def ek_public(tcti):
    from tpm2_pytss import ESAPI, TCTILdr
    esapi = ESAPI(TCTILdr.parse(tcti))
    try:
        return bytes(esapi.read_public(esapi.tr_from_tpmpublic(0x81010001))[0].publicArea
                     .marshal())
    finally:
        esapi.close()


def v0_evidence(tcti, sock, nonce, wrapped):
    with SvsmClient(str(sock)) as c:
        got = c.attest_vtpm(nonce, 0)
    return E.collect(tcti, nonce, pcrs="sha256:0,1,2,3,4,5,6,7", ak_certify=wrapped,
                     snp=(got.report, got.cert_table, got.manifest, 0, "svsm"))


def refused(check, doc, nonce, pol, certifier):
    with pytest.raises(SnpError) as e:
        verify_evidence(doc, nonce, pol, certifier=certifier)
    assert e.value.check == check, str(e.value)


def resigned(doc, certifier, nonce, ek, edit):
    """The certification edited by `edit(attest) -> attest` and signed again with the key the
    verifier derived: what an attacker holding K could make (K is restricted in the TPM, so
    only a broken TPM could); the checks after the signature must still refuse it."""
    from ctpm.modes.identity import name_of
    key = certifier.key(nonce, name_of(ek))
    body = edit(member(doc, "ak-certify"))
    r, s = decode_dss_signature(key.sign(body, ec.ECDSA(hashes.SHA256())))
    sig = (struct.pack(">HH", 0x18, 0x0B) + struct.pack(">H", 32) + r.to_bytes(32, "big")
           + struct.pack(">H", 32) + s.to_bytes(32, "big"))
    return member(member(doc, "ak-certify", body), "ak-certify-signature", sig)


def edit_field(index):
    """An edit of the index-th TPM2B of a TPMS_CERTIFY attest (0 qualifiedSigner, 1
    extraData, 2 name, 3 qualifiedName): its last byte flipped."""
    def edit(attest):
        out, pos = bytearray(attest), 6
        for i in range(4):
            size = struct.unpack(">H", out[pos:pos + 2])[0]
            if i == index:
                out[pos + 2 + size - 1] ^= 1
                return bytes(out)
            pos += 2 + size
            if i == 1:
                pos += 25                       # clockInfo, firmwareVersion
    return edit


def test_manifest_v0_with_ak_certification_against_ctpm_svsm(sim, tmp_path):
    """The whole library path, then each check of the AK certification failing on purpose."""
    pol = policy(sim)
    certifier = Certifier()
    nonce = os.urandom(64)
    sock, sock2 = tmp_path / "a.svsm", tmp_path / "b.svsm"
    with svsm_daemon(sim, sock) as d, svsm_daemon(sim, sock2) as other:
        from tpm2_pytss import ESAPI, TCTILdr
        from tpm2_pytss.constants import TPM2_SU
        for t in (d.tcti(), other.tcti()):
            with ESAPI(TCTILdr.parse(t)) as esapi:
                esapi.startup(TPM2_SU.CLEAR)
        ek, ek_other = ek_public(d.tcti()), ek_public(other.tcti())
        wrapped = certifier.challenge(nonce, ek)
        doc = v0_evidence(d.tcti(), sock, nonce, wrapped)
        a = verify_evidence(doc, nonce, pol, certifier=certifier)
        assert a.manifest_version == 0 and a.ak_certified
        assert a.claims()["vtpm"]["ak_binding"] == "ek-certify"

        # a key wrapped to another TPM's EK does not import here (the TPM says integrity)
        from tpm2_pytss import TSS2_Exception
        with pytest.raises(TSS2_Exception):
            v0_evidence(d.tcti(), sock, nonce, certifier.challenge(nonce, ek_other))
        # the other VM's report and manifest (its EK) with this TPM's certification: the key
        # the verifier derives for that EK did not sign it
        theirs = v0_evidence(other.tcti(), sock2, nonce, certifier.challenge(nonce, ek_other))
        verify_evidence(theirs, nonce, pol, certifier=certifier)
        mixed = member(member(doc, "snp-report", member(theirs, "snp-report")), "manifest",
                       member(theirs, "manifest"))
        mixed = member(mixed, "snp-certs", member(theirs, "snp-certs"))
        refused("ak_certify_signature", mixed, nonce, pol, certifier)
        # ... and the other TPM's AK and certification with this VM's report: its quote too
        swapped = doc
        for m in ("ak-public", "ak-certify", "ak-certify-signature"):
            swapped = member(swapped, m, member(theirs, m))
        refused("ak_certify_signature", swapped, nonce, pol, certifier)

    # the checks, in order
    refused("manifest_ak", doc, nonce, pol, None)                   # no certifier
    bare = {k: v for k, v in doc.items() if not k.startswith("ak-")}
    refused("manifest_ak", bare, nonce, pol, certifier)             # no certification
    refused("ak_certify_format", member(doc, "ak-certify", member(doc, "ak-certify")[:40]),
            nonce, pol, certifier)
    refused("ak_attributes", member(doc, "ak-public", ek), nonce, pol, certifier)
    refused("ak_certify_type", member(doc, "ak-certify", member(doc, "tpm-quote")), nonce,
            pol, certifier)
    refused("ak_certify_signature", doc, nonce, pol, Certifier())   # another verifier's key
    refused("ak_certify_signer", resigned(doc, certifier, nonce, ek, edit_field(0)), nonce,
            pol, certifier)
    refused("ak_certify_nonce", resigned(doc, certifier, nonce, ek, edit_field(1)), nonce,
            pol, certifier)
    refused("ak_certify_name", resigned(doc, certifier, nonce, ek, edit_field(2)), nonce, pol,
            certifier)
    refused("ak_certify_name", resigned(doc, certifier, nonce, ek, edit_field(3)), nonce, pol,
            certifier)
    # another (well-formed) AK given beside a certification of the real one
    refused("ak_certify_name", member(doc, "ak-public", SoftAk().public), nonce, pol,
            certifier)
    # the quote by another AK than the certified one
    soft = SoftAk()
    body, sig = soft.quote(nonce, {"sha256": {i: bytes(32) for i in range(8)}},
                           selection=(("sha256", tuple(range(8))),))
    refused("quote_signature", member(member(doc, "tpm-quote", body), "tpm-signature", sig),
            nonce, pol, certifier)


@pytest.mark.skipif(not TOOLS, reason="tpm2-tools not installed")
def test_manifest_v0_cli(sim, tmp_path):
    """tpm2_readpublic's EK -> `ctpm verifier challenge` -> `ctpm attest --svsm --challenge`
    -> `ctpm verify --certify-secret`."""
    sock = tmp_path / "vm.svsm"
    (tmp_path / "secret").write_bytes(os.urandom(32))
    (tmp_path / "ark.pem").write_bytes(sim.ark_pem())
    (tmp_path / "policy.toml").write_text(f'[snp]\ntrust_ark = ["{tmp_path / "ark.pem"}"]\n')
    with svsm_daemon(sim, sock) as d:
        subprocess.run(["tpm2_startup", "-c", "-T", d.tcti()], check=True, capture_output=True)
        subprocess.run(["tpm2_readpublic", "-T", d.tcti(), "-c", "0x81010001", "-o",
                        str(tmp_path / "ek.pub")], check=True, capture_output=True)
        r = ctpm("verifier", "challenge", "--ek", str(tmp_path / "ek.pub"), "--certify-secret",
                 str(tmp_path / "secret"), "-o", str(tmp_path / "challenge.json"))
        assert r.returncode == 0, r.stderr
        nonce = json.loads((tmp_path / "challenge.json").read_text())["nonce"]
        r = ctpm("attest", "--tcti", d.tcti(), "--svsm", f"unix:{sock}", "--challenge",
                 str(tmp_path / "challenge.json"), "-o", str(tmp_path / "ev.json"))
        assert r.returncode == 0, r.stderr
    verify = ("verify", str(tmp_path / "ev.json"), "--nonce", nonce, "--policy",
              str(tmp_path / "policy.toml"))
    r = ctpm(*verify, "--certify-secret", str(tmp_path / "secret"), "--json")
    assert r.returncode == 0, r.stderr
    claims = json.loads(r.stdout)
    assert claims["vtpm"]["manifest_version"] == 0
    assert claims["vtpm"]["ak_binding"] == "ek-certify"
    r = ctpm(*verify)
    assert r.returncode == 1 and r.stderr.startswith("ctpm: refused: manifest_ak: ")
    (tmp_path / "other").write_bytes(os.urandom(32))
    r = ctpm(*verify, "--certify-secret", str(tmp_path / "other"))
    assert r.returncode == 1 and r.stderr.startswith("ctpm: refused: ak_certify_signature: ")
    (tmp_path / "short").write_bytes(b"x")
    r = ctpm(*verify, "--certify-secret", str(tmp_path / "short"))
    assert r.returncode == 2 and "32 bytes" in r.stderr
    r = ctpm("verifier", "challenge", "--ek", str(tmp_path / "policy.toml"),
             "--certify-secret", str(tmp_path / "secret"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_wrap_is_the_spec_outer_wrapper():
    """Known-answer check of the wrapper's pieces independent of any TPM: KDFa's counter
    form and the integrity HMAC over (encrypted sensitive || Name)."""
    import hmac as H

    from ctpm.attest.akcert import kdfa, key_public, wrap
    from ctpm.modes.identity import name_of
    key = b"k" * 32
    want = H.new(key, b"\0\0\0\1STORAGE\0ctx\0\0\0\x80", hashlib.sha256).digest()[:16]
    assert kdfa(key, b"STORAGE", b"ctx", b"", 128) == want
    from cryptography.hazmat.primitives.asymmetric import rsa
    ek_key = rsa.generate_private_key(65537, 2048)
    from ctpm.modes.identity import ek_rsa_template
    template = ek_rsa_template()
    ek = template[:-256] + ek_key.public_key().public_numbers().n.to_bytes(256, "big")
    k = ec.generate_private_key(ec.SECP256R1())
    public = key_public(k)
    seed = os.urandom(32)
    duplicate, in_sym_seed = wrap(ek, public, k, seed=seed)
    from cryptography.hazmat.primitives.asymmetric import padding
    assert ek_key.decrypt(in_sym_seed, padding.OAEP(padding.MGF1(hashes.SHA256()),
                                                    hashes.SHA256(), b"DUPLICATE\0")) == seed
    size = struct.unpack(">H", duplicate[:2])[0]
    mac, encrypted = duplicate[2:2 + size], duplicate[2 + size:]
    assert mac == H.new(kdfa(seed, b"INTEGRITY", b"", b"", 256), encrypted + name_of(public),
                        hashlib.sha256).digest()


def test_every_check_is_documented():
    from pathlib import Path

    from ctpm.attest.verify import CHECKS
    doc = (Path(__file__).resolve().parents[2] / "docs" / "attestation.md").read_text()
    missing = [c for c in CHECKS if not c.startswith("<") and f"`{c}`" not in doc]
    assert not missing, missing
