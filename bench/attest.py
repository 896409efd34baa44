"""Composite attestation against the separate flow, side by side, in one run.

    python bench/attest.py [--rounds 30]

Both flows run against the same `ctpm run --mode ephemeral` (simulated AMD-SP) over the same
transport (tpm2-pytss, mssim TCTI), attester and verifier in this process, the verifier's SNP
chain cached (one `Verifier` for the run). Reported: round trips, bytes sent/received by the
attester, verifier CPU time (thread time of the checks), end-to-end latency (median and p90).
The separate flow (ctpm/attest/baseline.py): TEE report round, MakeCredential/
ActivateCredential round, quote round.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctpm.attest.baseline import _Clock, run_separate  # noqa: E402
from ctpm.attest.evidence import collect  # noqa: E402
from ctpm.attest.verify import AttestPolicy, verify_evidence  # noqa: E402
from ctpm.snp.verify import Trust, Verifier  # noqa: E402
from ctpm.testing.process import run_daemon  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--rtt", type=float, default=0.0, metavar="MS",
                    help="add this network round-trip time per verifier<->attester exchange "
                         "(both flows run on one machine; 0 = loopback only)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        from ctpm.snp.simulator import SimulatedSP
        sp = SimulatedSP(os.path.join(tmp, "sp"))
        policy = AttestPolicy(trust=Trust(extra_arks=(sp.ark,)))
        verifier = Verifier(policy.trust)
        with run_daemon("--mode", "ephemeral", "--snp-provider", "simulated",
                        "--snp-sim-dir", sp.directory, timeout=60) as d:
            tcti = d.tcti("mssim")
            subprocess.run(["tpm2_startup", "-c", "-T", tcti], check=True)
            results = {"composite": ([], [], 0, 0), "separate": ([], [], 0, 0)}
            for i in range(args.rounds + 2):       # two warm-up rounds
                for name in ("composite", "separate") if i % 2 else ("separate", "composite"):
                    lat, cpu, _, _ = results[name]
                    t0 = time.perf_counter()
                    if name == "composite":
                        nonce = os.urandom(64)
                        doc = collect(tcti, nonce)
                        body = json.dumps(doc).encode()
                        c0 = time.thread_time()
                        verify_evidence(body, nonce, policy, verifier=verifier)
                        v_cpu = time.thread_time() - c0
                        trips, sent, received = 1, 64, len(body)
                    else:
                        clock = _Clock()
                        trips, sent, received = run_separate(
                            tcti, (os.urandom(64), os.urandom(64)), verifier=verifier,
                            policy=policy, clock=clock)
                        v_cpu = clock.cpu
                    if i >= 2:
                        lat.append(time.perf_counter() - t0 + trips * args.rtt / 1000)
                        cpu.append(v_cpu)
                        results[name] = (lat, cpu, trips, (sent, received))
    print(f"{'flow':10} {'round trips':>11} {'bytes out/in':>14} {'verifier CPU':>13} "
          f"{'latency p50':>12} {'p90':>8}")
    for name, (lat, cpu, trips, (sent, received)) in results.items():
        lat.sort()
        print(f"{name:10} {trips:11d} {f'{sent}/{received}':>14} "
              f"{statistics.median(cpu) * 1000:10.2f} ms {statistics.median(lat) * 1000:9.1f} ms"
              f" {lat[int(len(lat) * 0.9)] * 1000:6.1f} ms")
    c, s = (statistics.median(results[n][0]) for n in ("composite", "separate"))
    print(f"\n(network round trip added per exchange: {args.rtt} ms)")
    print(f"composite end-to-end latency: {c / s:.2f}x the separate flow's "
          f"({(1 - c / s) * 100:.0f}% lower)")


if __name__ == "__main__":
    main()
