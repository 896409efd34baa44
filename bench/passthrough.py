"""Passthrough overhead: the same ESAPI workload on swtpm directly and through `ctpm run
--mode passthrough`, in one run.

    python bench/passthrough.py [--seconds 2] [--rounds 3]

swtpm serves one connection at a time, so two identical swtpm processes (same binary, same
flags, fresh state) stand in for "the same TPM": one reached directly over the swtpm TCTI,
one behind ctpm passthrough, whose own listener the client reaches over the same swtpm TCTI.
Best rounds count; the ratio is passthrough / direct (1.00 = no overhead). PCR_Extend is not
measured: the guard refuses it by default.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import SwtpmProcess, Workloads, measure, open_esapi  # noqa: E402
from ctpm.testing.process import run_daemon  # noqa: E402

WORKLOADS = ("GetRandom(32)", "PCR_Read(4 PCRs)", "Hash(1 KiB, sha256)",
             "CreatePrimary ECC P-256", "CreatePrimary RSA-2048", "Create ECC P-256",
             "Sign RSASSA-2048", "Sign ECDSA P-256", "Quote ECDSA P-256")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    direct, upstream = SwtpmProcess(), SwtpmProcess()
    daemon = run_daemon("--mode", "passthrough", "--upstream", upstream.tcti(),
                        "--swtpm", "127.0.0.1:0", timeout=60)
    d = daemon.__enter__()
    try:
        clients = {"swtpm direct": Workloads(open_esapi(direct.tcti(), False)),
                   "ctpm passthrough": Workloads(open_esapi(d.tcti("swtpm"), False))}
        best = {(n, w): 0.0 for n in clients for w in WORKLOADS}
        for _ in range(args.rounds):
            for w in WORKLOADS:
                for n, c in clients.items():
                    best[n, w] = max(best[n, w], measure(c.calls[w], args.seconds))
                    c.flush()
        print(f"{'workload (ops/s)':26}{'swtpm direct':>14}{'ctpm passthrough':>18}{'ratio':>8}"
              f"{'overhead':>10}")
        for w in WORKLOADS:
            a, b = best["swtpm direct", w], best["ctpm passthrough", w]
            print(f"{w:26}{a:14.0f}{b:18.0f}{b / a:8.2f}{(a / b - 1) * 100:9.1f}%")
    finally:
        daemon.__exit__(None, None, None)
        direct.close()
        upstream.close()


if __name__ == "__main__":
    main()
