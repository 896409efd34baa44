"""Passthrough overhead: the same ESAPI workload on swtpm directly and through `ctpm run
--mode passthrough`, in one run.

    python bench/passthrough.py [--seconds 2] [--rounds 3]

swtpm serves one connection at a time, so two identical swtpm processes (same binary, same
flags, fresh state) stand in for "the same TPM": one reached directly over the swtpm TCTI,
one behind ctpm passthrough, whose own listener the client reaches over the same swtpm TCTI.
Unix sockets throughout: the swtpm TCTI connects anew for every command, which over TCP
leaves a TIME_WAIT socket per command (tens of thousands in a run).
Best rounds count; the ratio is passthrough / direct (1.00 = no overhead), overhead the time
per command added. ctpm standard (its own engine, same listener and TCTI) is shown for scale:
the listener's cost is in both. PCR_Extend is not measured: the guard refuses it by default.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import Workloads, measure, open_esapi  # noqa: E402
from ctpm.testing.process import run_daemon  # noqa: E402


class UnixSwtpm:
    """swtpm on unix sockets where the swtpm TCTI looks: data on PATH, control on PATH.ctrl."""

    def __init__(self):
        import os
        import subprocess
        import tempfile
        import time
        self.dir = tempfile.mkdtemp(prefix="ctpm-bench-swtpm-")
        self.path = os.path.join(self.dir, "tpm")
        self.proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.dir}",
             "--server", f"type=unixio,path={self.path}",
             "--ctrl", f"type=unixio,path={self.path}.ctrl",
             "--flags", "not-need-init,startup-clear"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.path + ".ctrl"):
            if time.monotonic() > deadline:
                raise RuntimeError("swtpm did not start")
            time.sleep(0.01)
        time.sleep(0.05)

    def tcti(self):
        return f"swtpm:path={self.path}"

    def close(self):
        import shutil
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

WORKLOADS = ("GetRandom(32)", "PCR_Read(4 PCRs)", "Hash(1 KiB, sha256)",
             "CreatePrimary ECC P-256", "CreatePrimary RSA-2048", "Create ECC P-256",
             "Sign RSASSA-2048", "Sign ECDSA P-256", "Quote ECDSA P-256")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    direct, upstream = UnixSwtpm(), UnixSwtpm()
    daemon = run_daemon("--mode", "passthrough", "--upstream", upstream.tcti(),
                        "--swtpm", f"unix:{upstream.dir}/ctpm", timeout=60)
    standard = run_daemon("--swtpm", f"unix:{direct.dir}/ctpm", timeout=60)
    d, s = daemon.__enter__(), standard.__enter__()
    try:
        clients = {"swtpm direct": Workloads(open_esapi(direct.tcti(), False)),
                   "ctpm passthrough": Workloads(open_esapi(d.tcti("swtpm"), False)),
                   "ctpm standard": Workloads(open_esapi(s.tcti("swtpm"), True))}
        best = {(n, w): 0.0 for n in clients for w in WORKLOADS}
        for _ in range(args.rounds):
            for w in WORKLOADS:
                for n, c in clients.items():
                    best[n, w] = max(best[n, w], measure(c.calls[w], args.seconds))
                    c.flush()
        print(f"{'workload (ops/s)':26}{'swtpm direct':>14}{'ctpm passthrough':>18}{'ratio':>8}"
              f"{'overhead':>10}{'ctpm standard':>15}{'ratio':>8}")
        for w in WORKLOADS:
            a, b = best["swtpm direct", w], best["ctpm passthrough", w]
            c = best["ctpm standard", w]
            print(f"{w:26}{a:14.0f}{b:18.0f}{b / a:8.2f}{(a / b - 1) * 100:9.1f}%"
                  f"{c:15.0f}{c / a:8.2f}")
    finally:
        standard.__exit__(None, None, None)
        daemon.__exit__(None, None, None)
        direct.close()
        upstream.close()


if __name__ == "__main__":
    main()
