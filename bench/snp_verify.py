"""SEV-SNP report verification throughput, side by side with its floor, in one run.

    python bench/snp_verify.py [--seconds 2] [--rounds 3]

Workloads (best round counts):
  * floor: one bare ECDSA P-384/SHA-384 verification with OpenSSL (through `cryptography`):
    no report verifier can beat it, the report signature is that operation;
  * warm: `Verifier.verify` of a real report with its VCEK, chain cached per VEK (what a
    verifier service checking many reports from known machines does);
  * cold: a new `Verifier` per report (the whole ARK/ASK/VCEK chain with RSA-4096 PSS
    checks every time);
  * simulated: warm verification of simulated-AMD-SP reports, each with fresh REPORT_DATA.
The ratio column is ops/s against the floor.
"""
import argparse
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature  # noqa: E402

from ctpm.snp import certs as C  # noqa: E402
from ctpm.snp.report import AttestationReport  # noqa: E402
from ctpm.snp.verify import Policy, Trust, Verifier  # noqa: E402

VECTORS = Path(__file__).resolve().parents[1] / "tests" / "snp" / "vectors"
AT = datetime(2026, 6, 1, tzinfo=timezone.utc)


def rate(fn, seconds):
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(20):
            fn()
        n += 20
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    report = (VECTORS / "milan_v3_report.bin").read_bytes()
    vcek = (VECTORS / "milan_v3_vcek.pem").read_bytes()
    policy = Policy(at=AT)
    parsed = AttestationReport.parse(report)
    key = C.load_cert(vcek).public_key()
    sig = encode_dss_signature(*parsed.signature_rs)

    def floor():
        key.verify(sig, parsed.signed_bytes, ec.ECDSA(hashes.SHA384()))

    warm_verifier = Verifier()

    def warm():
        warm_verifier.verify(report, vek=vcek, policy=policy)

    def cold():
        Verifier().verify(report, vek=vcek, policy=policy)

    with tempfile.TemporaryDirectory() as tmp:
        from ctpm.snp.simulator import SimulatedSP
        sp = SimulatedSP(os.path.join(tmp, "sp"))
        sim_verifier = Verifier(Trust(extra_arks=(sp.ark,)))
        table = sp.cert_table()
        reports = [sp.report(os.urandom(64)) for _ in range(200)]
        it = iter(range(1 << 62))

        def simulated():
            sim_verifier.verify(reports[next(it) % len(reports)], cert_table=table)

        workloads = [("ECDSA P-384 verify (floor)", floor), ("verify, chain cached", warm),
                     ("verify, cold chain", cold), ("verify simulated, cached", simulated)]
        best = {name: 0.0 for name, _ in workloads}
        for _ in range(args.rounds):
            for name, fn in workloads:
                best[name] = max(best[name], rate(fn, args.seconds))
    base = best[workloads[0][0]]
    print(f"{'workload':34} {'ops/s':>10} {'vs floor':>9}")
    for name, _ in workloads:
        print(f"{name:34} {best[name]:10.0f} {best[name] / base:8.2f}x")


if __name__ == "__main__":
    main()
