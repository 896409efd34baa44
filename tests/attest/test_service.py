"""The verifier service as a real process over real HTTP (httpx): challenge, attest, token,
JWKS, the relying party's check, and every bad input answered with a problem document."""
import os
import subprocess
import time

import httpx
import pytest

from ctpm.attest import evidence as E
from ctpm.attest.tokens import EAR_PROFILE, TokenError, _b64u, verify_token
from ctpm.testing.process import command, environment, run_daemon

from .service_helpers import AUDIENCE, make_key, run_service, write_policy
from .test_composite import crafted


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from ctpm.snp.simulator import SimulatedSP
    return SimulatedSP(str(tmp_path_factory.mktemp("sim") / "sp"), "milan")


@pytest.fixture(scope="module")
def files(sim, tmp_path_factory):
    d = str(tmp_path_factory.mktemp("verifier"))
    return {"dir": d, "policy": write_policy(d, sim), "key": make_key(d)}


@pytest.fixture(scope="module")
def service(files):
    with run_service(files["policy"], files["key"]) as s:
        yield s


def challenge(url):
    r = httpx.post(url + "/challenge")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    body = r.json()
    assert len(bytes.fromhex(body["nonce"])) == 64 and body["expires"] > time.time()
    return bytes.fromhex(body["nonce"])


def problem(r, status, check):
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["check"] == check and body["type"] == f"urn:ctpm:problem:{check}", body
    assert body["status"] == status and "Traceback" not in r.text
    return body


def test_challenge_attest_token_and_relying_party(service, sim, files):
    nonce = challenge(service.url)
    doc, ak = crafted(sim, nonce)
    r = httpx.post(service.url + "/attest", json={"nonce": nonce.hex(), "evidence": doc})
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    jwks = httpx.get(service.url + "/jwks").json()
    assert httpx.get(service.url + "/.well-known/jwks.json").json() == jwks
    claims = verify_token(token, jwks, audience=AUDIENCE)
    assert claims["eat_profile"] == EAR_PROFILE and claims["eat_nonce"] == _b64u(nonce)
    assert claims["iss"] == service.url and claims["aud"] == AUDIENCE
    assert claims["exp"] - claims["iat"] == 300 and claims["nbf"] == claims["iat"]
    assert claims["ctpm.ak-name"] == ak.name.hex()
    snp, vtpm = claims["submods"]["snp"], claims["submods"]["vtpm"]
    assert snp["ear.status"] == vtpm["ear.status"] == "affirming"
    assert snp["ear.appraisal-policy-id"] == "test-policy"
    assert snp["ctpm.snp"]["measurement"] == claims["ctpm.launch-measurement"]
    assert vtpm["ctpm.vtpm"]["pcr_digest"] == claims["ctpm.pcr-digest"]
    assert claims["ctpm.tcb"] == snp["ctpm.snp"]["reported_tcb"]
    # the same token through the CLI, the JWKS fetched from the service
    ok = subprocess.run(command("token", "verify", token, "--jwks", service.url + "/jwks",
                                "--audience", AUDIENCE), capture_output=True, text=True,
                        env=environment())
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(command("token", "verify", token, "--jwks", service.url + "/jwks",
                                 "--audience", "someone-else"), capture_output=True,
                         text=True, env=environment())
    assert bad.returncode == 1 and bad.stderr.startswith("ctpm: token refused: audience:")
    with pytest.raises(TokenError) as e:
        verify_token(token, jwks, audience=AUDIENCE, uuid="00000000-0000-0000-0000-000000000001")
    assert e.value.reason == "uuid"


def test_nonces_are_single_use_and_issued_by_the_service(service, sim):
    nonce = challenge(service.url)
    doc, _ = crafted(sim, nonce)
    assert httpx.post(service.url + "/attest",
                      json={"nonce": nonce.hex(), "evidence": doc}).status_code == 200
    problem(httpx.post(service.url + "/attest", json={"nonce": nonce.hex(), "evidence": doc}),
            403, "nonce_replayed")
    other = os.urandom(64)
    doc2, _ = crafted(sim, other)
    problem(httpx.post(service.url + "/attest", json={"nonce": other.hex(), "evidence": doc2}),
            403, "nonce_unknown")
    problem(httpx.post(service.url + "/attest", json={"nonce": "abcd", "evidence": doc2}),
            400, "nonce_format")
    # a refused appraisal uses the nonce up too: no second try with one challenge
    n2 = challenge(service.url)
    problem(httpx.post(service.url + "/attest", json={"nonce": n2.hex(), "evidence": doc2}),
            403, "report_data")
    problem(httpx.post(service.url + "/attest", json={"nonce": n2.hex(), "evidence": doc2}),
            403, "nonce_replayed")


def test_failed_checks_are_named(service, sim):
    n = challenge(service.url)
    problem(httpx.post(service.url + "/attest", json={"nonce": n.hex(), "evidence": {"x": 1}}),
            403, "evidence_format")
    n = challenge(service.url)
    doc, _ = crafted(sim, n, extra=b"\x00" * 32)          # quote for another nonce
    body = problem(httpx.post(service.url + "/attest", json={"nonce": n.hex(),
                                                             "evidence": doc}), 403, "nonce")
    assert body["title"] == "Evidence refused" and body["detail"]


def test_bad_input(service):
    url = service.url + "/attest"
    json_type = {"content-type": "application/json"}
    problem(httpx.post(url, content=b"{" + b" " * (2 << 20) + b"}", headers=json_type),
            413, "body_too_large")

    def chunks():                   # no Content-Length: the limit holds while reading
        for _ in range(40):
            yield b" " * 65536
    problem(httpx.post(url, content=chunks(), headers=json_type), 413, "body_too_large")
    problem(httpx.post(url, content=b'{"nonce": ', headers=json_type), 400, "malformed_json")
    problem(httpx.post(url, content=b"\xff\xfe", headers=json_type), 400, "malformed_json")
    problem(httpx.post(url, content=b"[" * 100000 + b"]" * 100000, headers=json_type),
            400, "malformed_json")
    problem(httpx.post(url, content=b"{}", headers={"content-type": "text/plain"}),
            415, "content_type")
    problem(httpx.post(url, content=b"{}"), 415, "content_type")
    problem(httpx.post(url, json=[1, 2]), 400, "request_format")
    problem(httpx.post(url, json={"nonce": 5, "evidence": {}}), 400, "request_format")
    problem(httpx.get(url), 405, "method_not_allowed")
    problem(httpx.get(service.url + "/nowhere"), 404, "not_found")
    assert httpx.get(service.url + "/health").json()["status"] == "ok"


def test_clients_hanging_up_on_a_large_body_leave_no_traceback(files):
    """A client that sends too much and hangs up before reading its 413: the service stays
    up and logs no ASGI traceback (hypercorn half-closes while the app answers)."""
    import socket
    with run_service(files["policy"], files["key"]) as s:
        host, port = s.url.split("//")[1].rsplit(":", 1)
        body = b" " * 65536
        for i in range(12):
            c = socket.create_connection((host, int(port)))
            framing = (b"Transfer-Encoding: chunked\r\n" if i % 2
                       else b"Content-Length: %d\r\n" % (4 << 20))
            c.sendall(b"POST /attest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      + framing + b"\r\n")
            try:
                for _ in range(24):
                    c.sendall(b"%x\r\n%s\r\n" % (len(body), body) if i % 2 else body)
            except OSError:
                pass                    # the service answered 413 and closed: expected
            c.close()
        time.sleep(0.5)
        assert httpx.get(s.url + "/health").json()["status"] == "ok"
    # run_service fails the test if the service's log holds a traceback


def test_openapi_description(service):
    doc = httpx.get(service.url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert {"/challenge", "/attest", "/jwks", "/health"} <= set(doc["paths"])


def test_expired_nonce_is_refused(files, sim):
    with run_service(files["policy"], files["key"], "--nonce-ttl", "1") as s:
        nonce = challenge(s.url)
        doc, _ = crafted(sim, nonce)
        time.sleep(1.2)
        problem(httpx.post(s.url + "/attest", json={"nonce": nonce.hex(), "evidence": doc}),
                403, "nonce_expired")


def test_slow_body_times_out(files):
    with run_service(files["policy"], files["key"], "--read-timeout", "1") as s:
        def slow():
            yield b'{"nonce": '
            time.sleep(2)
            yield b'"00"}'
        r = httpx.post(s.url + "/attest", content=slow(),
                       headers={"content-type": "application/json"}, timeout=10)
        problem(r, 408, "request_timeout")


@pytest.mark.parametrize("args, words", [
    (["--listen", "0.0.0.0:0"], "not a loopback address"),
    (["--listen", "nonsense"], "expected HOST:PORT"),
    (["--nonce-store", "mongo://x"], "--nonce-store"),
    (["--token-ttl", "0"], "--token-ttl must be positive"),
])
def test_configuration_mistakes_are_one_line(files, args, words):
    argv = ["verifier", "serve", "--listen", "127.0.0.1:0", "--policy", files["policy"],
            "--key", files["key"], *args]
    r = subprocess.run(command(*argv), capture_output=True, text=True, env=environment(),
                       timeout=30)
    assert r.returncode == 2 and words in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = subprocess.run(command("verifier", "serve", "--policy", files["policy"], "--key",
                               files["policy"]), capture_output=True, text=True,
                       env=environment(), timeout=30)
    assert r.returncode == 2 and "--key" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_end_to_end_with_an_ephemeral_ctpm(sim, files, tmp_path):
    """Real evidence: `ctpm run --mode ephemeral` with the simulated AMD-SP, collected by the
    attester library over mssim, appraised by the service, the token checked."""
    policy = write_policy(str(tmp_path), sim, pcrs=E.DEFAULT_PCRS, policy_id="e2e")
    with run_daemon("--mode", "ephemeral", "--snp-provider", "simulated", "--snp-sim-dir",
                    sim.directory, timeout=30) as d, run_service(policy, files["key"]) as s:
        tcti = f"mssim:host=127.0.0.1,port={d.mssim_port}"
        for i in range(2):
            nonce = challenge(s.url)
            doc = E.collect(tcti, nonce, instance_uuid="5a0c8e1e-9a6f-4c1e-8a43-3c2d1b0e9f11",
                            startup=(i == 0))
            r = httpx.post(s.url + "/attest", json={"nonce": nonce.hex(), "evidence": doc})
            assert r.status_code == 200, r.text
            claims = verify_token(r.json()["token"], httpx.get(s.url + "/jwks").json(),
                                  audience=AUDIENCE, uuid="5A0C8E1E-9A6F-4C1E-8A43-3C2D1B0E9F11")
            assert claims["submods"]["vtpm"]["ear.appraisal-policy-id"] == "e2e"
            assert claims["ctpm.ek-name"] and claims["ctpm.ak-name"]


def test_manifest_v0_through_the_service_in_svsm_mode(sim, files, tmp_path):
    """The challenge carries the EK; its answer a key wrapped to it; the attester gets
    manifest v0 from the SVSM attestation call and certifies the AK with that key; the
    service appraises it and the token says how the AK was bound. Two services sharing a
    --certify-secret accept each other's wrapped keys; one with another secret refuses."""
    from ctpm.svsm.client import SvsmClient
    from .test_akcert import ek_public
    policy = write_policy(str(tmp_path), sim, pcrs=E.DEFAULT_PCRS, policy_id="v0")
    secret = tmp_path / "secret"
    secret.write_bytes(os.urandom(32))
    sock = tmp_path / "vm.svsm"
    with run_daemon("--mode", "svsm", "--svsm", f"unix:{sock}", "--snp-provider", "simulated",
                    "--snp-sim-dir", sim.directory, timeout=30) as d, \
            run_service(policy, files["key"], "--certify-secret", str(secret)) as s, \
            run_service(policy, files["key"]) as other:
        tcti = d.tcti()
        from tpm2_pytss import ESAPI, TCTILdr
        from tpm2_pytss.constants import TPM2_SU
        with ESAPI(TCTILdr.parse(tcti)) as esapi:
            esapi.startup(TPM2_SU.CLEAR)
        ek = ek_public(tcti)

        def v0(url):
            r = httpx.post(url + "/challenge", json={"ek": E.b64u(ek)})
            assert r.status_code == 200, r.text
            body = r.json()
            nonce = bytes.fromhex(body["nonce"])
            with SvsmClient(str(sock)) as c:
                got = c.attest_vtpm(nonce, 0)
            return nonce, E.collect(tcti, nonce, ak_certify=body["ak_certify"], snp=(
                got.report, got.cert_table, got.manifest, 0, "svsm"))

        nonce, doc = v0(s.url)
        r = httpx.post(s.url + "/attest", json={"nonce": nonce.hex(), "evidence": doc})
        assert r.status_code == 200, r.text
        claims = verify_token(r.json()["token"], httpx.get(s.url + "/jwks").json(),
                              audience=AUDIENCE)
        vtpm = claims["submods"]["vtpm"]["ctpm.vtpm"]
        assert vtpm["manifest_version"] == 0 and vtpm["ak_binding"] == "ek-certify"
        # the same evidence without its certification: manifest_ak
        nonce, doc = v0(s.url)
        bare = {k: v for k, v in doc.items() if not k.startswith("ak-")}
        problem(httpx.post(s.url + "/attest", json={"nonce": nonce.hex(), "evidence": bare}),
                403, "manifest_ak")
        # a service with another secret did not wrap that key: it refuses the certification
        from ctpm.attest.akcert import Certifier
        nonce = bytes.fromhex(httpx.post(other.url + "/challenge").json()["nonce"])
        with SvsmClient(str(sock)) as c:
            got = c.attest_vtpm(nonce, 0)
        doc = E.collect(tcti, nonce, ak_certify=Certifier(secret.read_bytes()).challenge(
            nonce, ek), snp=(got.report, got.cert_table, got.manifest, 0, "svsm"))
        problem(httpx.post(other.url + "/attest", json={"nonce": nonce.hex(), "evidence": doc}),
                403, "ak_certify_signature")
        # bad challenge bodies
        problem(httpx.post(s.url + "/challenge", json={"ek": "!!"}), 400, "ek_format")
        problem(httpx.post(s.url + "/challenge", json={"ek": E.b64u(b"\0\x23" + bytes(40))}),
                400, "ek_format")
        problem(httpx.post(s.url + "/challenge", json={"ak": "x"}), 400, "challenge_format")
        problem(httpx.post(s.url + "/challenge", content=b"{", headers={
            "content-type": "application/json"}), 400, "malformed_json")
