"""`ctpm verify-report` as a user runs it: exit 0 with a summary, 1 with one line naming the
failed check, 2 for unusable input - never a traceback."""
import json
import os
import subprocess
import sys

import pytest

from ctpm.snp.report import build_msg_report_rsp

from .conftest import VECTORS

AT = "2026-06-01T00:00Z"


def ctpm(*args):
    r = subprocess.run([sys.executable, "-m", "ctpm.cli", *args], capture_output=True,
                       text=True, timeout=60)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def v(name):
    return os.path.join(VECTORS, name)


def test_real_reports():
    r = ctpm("verify-report", v("milan_v3_report.bin"), "--vek", v("milan_v3_vcek.pem"),
             "--at", AT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("verified: Milan report v3, VCEK-signed, root AMD, VMPL 0")
    r = ctpm("verify-report", v("turin_v5_report.bin"), "--vek", v("turin_v5_vcek.pem"),
             "--at", AT, "--json", "--min-tcb", "fmc=1,bl=1,tee=1,snp=4,ucode=81")
    facts = json.loads(r.stdout)
    assert r.returncode == 0 and facts["product"] == "Turin" and facts["root"] == "amd"
    assert facts["reported_tcb"] == {"fmc": 1, "bl": 1, "tee": 1, "snp": 4, "ucode": 81}
    r = ctpm("verify-report", v("aws_milan_v3_vlek_vmpl1_report.bin"), "--vek",
             v("aws_milan_vlek.der"), "--chain", v("milan_asvk_ark.pem"), "--vmpl", "1",
             "--at", "2025-06-01T00:00Z", "--allow-provisional-firmware")
    assert r.returncode == 0, r.stderr


def test_refusals_name_the_check():
    cases = [
        (["verify-report", v("milan_v2_debug_report.bin"), "--vek", v("milan_v2_debug_vcek.der"),
          "--at", AT], "debug"),
        (["verify-report", v("genoa_v3_report.bin"), "--vek", v("genoa_v3_vcek.pem"),
          "--at", AT, "--min-tcb", "snp=24"], "min_tcb"),
        (["verify-report", v("genoa_v3_report.bin"), "--vek", v("genoa_v3_vcek.pem"),
          "--at", AT, "--measurement", "00" * 48], "measurement"),
        (["verify-report", v("genoa_v3_report.bin"), "--vek", v("genoa_v3_vcek.pem"),
          "--at", AT, "--report-data", "11" * 64], "report_data"),
        (["verify-report", v("genoa_v3_report.bin"), "--vek", v("milan_v3_vcek.pem"),
          "--at", AT], "product"),
        (["verify-report", v("milan_v3_report.bin"), "--vek", v("milan_v3_vcek.pem"),
          "--at", "2040-01-01"], "vek_validity"),
        (["verify-report", v("milan_v3_vcek.pem"), "--vek", v("milan_v3_vcek.pem")],
         "report_size"),
    ]
    for args, check in cases:
        r = ctpm(*args)
        assert r.returncode == 1, (args, r.stderr)
        assert r.stderr.startswith(f"ctpm: refused: {check}: "), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_unusable_input():
    for args in (["verify-report", "/nonexistent/report"],
                 ["verify-report", v("milan_v3_report.bin"), "--report-data", "zz"],
                 ["verify-report", v("milan_v3_report.bin"), "--report-data", "00"],
                 ["verify-report", v("milan_v3_report.bin"), "--vmpl", "7"],
                 ["verify-report", v("milan_v3_report.bin"), "--min-tcb", "bogus=1"],
                 ["verify-report", v("milan_v3_report.bin"), "--vek", v("README.md")]):
        r = ctpm(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
    # no VEK: the line says where AMD's KDS serves it (and nothing is fetched)
    r = ctpm("verify-report", v("milan_v3_report.bin"))
    assert r.returncode == 2
    assert "https://kdsintf.amd.com/vcek/v1/Milan/4ffb5cb4" in r.stderr
    assert "blSPL=4&teeSPL=0&snpSPL=24&ucodeSPL=219" in r.stderr


def test_simulated_report_needs_trust_ark(milan, tmp_path):
    report = tmp_path / "report.bin"
    table = tmp_path / "certs.bin"
    # as /dev/sev-guest hands it over: inside MSG_REPORT_RSP
    report.write_bytes(build_msg_report_rsp(milan.report(b"\x42" * 64)))
    table.write_bytes(milan.cert_table())
    r = ctpm("verify-report", str(report), "--cert-table", str(table))
    assert r.returncode == 1 and r.stderr.startswith("ctpm: refused: ark_pinned: ")
    ark = tmp_path / "ark.pem"
    ark.write_bytes(milan.ark_pem())
    r = ctpm("verify-report", str(report), "--cert-table", str(table), "--trust-ark", str(ark),
             "--report-data", "42" * 64)
    assert r.returncode == 0, r.stderr
    assert "root caller-trusted ARK" in r.stdout
    # --trust-ark takes ARKs only
    asks = tmp_path / "ask.pem"
    asks.write_bytes(milan.chain_pem()[:milan.chain_pem().index(b"-----END") + 26])
    r = ctpm("verify-report", str(report), "--cert-table", str(table), "--trust-ark", str(asks))
    assert r.returncode == 2


@pytest.mark.parametrize("crl_revokes", [False, True])
def test_crl_option(milan, tmp_path, crl_revokes):
    report = tmp_path / "report.bin"
    report.write_bytes(milan.report(bytes(64)))
    (tmp_path / "certs.bin").write_bytes(milan.cert_table())
    (tmp_path / "ark.pem").write_bytes(milan.ark_pem())
    (tmp_path / "crl.der").write_bytes(milan.crl([milan.ask.serial_number] if crl_revokes
                                                 else []))
    r = ctpm("verify-report", str(report), "--cert-table", str(tmp_path / "certs.bin"),
             "--trust-ark", str(tmp_path / "ark.pem"), "--crl", str(tmp_path / "crl.der"))
    if crl_revokes:
        assert r.returncode == 1 and r.stderr.startswith("ctpm: refused: crl: ")
    else:
        assert r.returncode == 0, r.stderr
