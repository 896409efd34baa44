"""The CTPM modes side by side, through the same tpm2-pytss ESAPI client, in one run.

    python bench/modes.py [--seconds 2] [--rounds 3]

TPMs: swtpm, ctpm standard, ctpm ephemeral (simulated AMD-SP), all over the swtpm TCTI
(the transport is the same, so the differences are the modes'), and ctpm svsm through
`ctpm svsm-bridge` when that command exists. Workloads: GetRandom, PCR_Extend, Quote ECDSA,
CreatePrimary ECC. Best round counts; the ratio is against ctpm standard. Also the time from
`ctpm run` to the first answered command, standard and ephemeral (the ephemeral mode makes
its EKs, AK and boot report before it serves).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import SwtpmProcess, Workloads, measure, open_esapi  # noqa: E402
from ctpm.testing.process import command, environment, run_daemon  # noqa: E402

WORKLOADS = ("GetRandom(32)", "PCR_Extend(sha256)", "Quote ECDSA P-256",
             "CreatePrimary ECC P-256")


def first_answer_time(args, rounds=3):
    """Seconds from starting `ctpm run ARGS` to a TPM2_Startup answered over mssim."""
    from tpm2_pytss import ESAPI, TCTILdr
    best = None
    for _ in range(rounds):
        t0 = time.perf_counter()
        with run_daemon("--mssim", "127.0.0.1:0", *args, timeout=60) as d:
            esapi = ESAPI(TCTILdr.parse(d.tcti("mssim")))
            esapi.startup(0)
            dt = time.perf_counter() - t0
            esapi.close()
        best = dt if best is None else min(best, dt)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        from ctpm.snp.simulator import SimulatedSP
        sim = os.path.join(tmp, "sp")
        SimulatedSP(sim, "milan")
        eph = ("--mode", "ephemeral", "--snp-provider", "simulated", "--snp-sim-dir", sim)
        swtpm = SwtpmProcess()
        daemons = {"standard": run_daemon("--swtpm", "127.0.0.1:0", timeout=60),
                   "ephemeral": run_daemon("--swtpm", "127.0.0.1:0", *eph, timeout=60)}
        running = {name: cm.__enter__() for name, cm in daemons.items()}
        tctis = {"swtpm": (swtpm.tcti(), False)}
        tctis.update({name: (d.tcti("swtpm"), True) for name, d in running.items()})
        bridge = svsm = None
        probe = subprocess.run(command("svsm-bridge", "--help"), capture_output=True,
                               env=environment())
        if probe.returncode == 0:
            sock = os.path.join(tmp, "vm.svsm")
            svsm = run_daemon("--mssim", "127.0.0.1:0", "--mode", "svsm", "--svsm",
                              f"unix:{sock}", "--snp-provider", "simulated", "--snp-sim-dir",
                              sim, timeout=60)
            svsm.__enter__()
            bridge = subprocess.Popen(command("svsm-bridge", "--svsm", f"unix:{sock}",
                                              "--mssim", "127.0.0.1:0"),
                                      stdout=subprocess.PIPE, env=environment())
            line = bridge.stdout.readline().decode()
            port = line.split("mssim=")[1].split(",")[0].rsplit(":", 1)[1]
            tctis["svsm (bridge, mssim)"] = (f"mssim:host=127.0.0.1,port={port}", True)
        try:
            clients = {name: Workloads(open_esapi(t, startup)) for name, (t, startup)
                       in tctis.items()}
            best = {(n, w): 0.0 for n in clients for w in WORKLOADS}
            for _ in range(args.rounds):
                for w in WORKLOADS:
                    for n, c in clients.items():
                        best[n, w] = max(best[n, w], measure(c.calls[w], args.seconds))
                        c.flush()
            names = list(clients)
            print(f"{'workload':26}" + "".join(f"{n:>22}" for n in names))
            for w in WORKLOADS:
                base = best["standard", w]
                print(f"{w:26}" + "".join(f"{best[n, w]:12.0f} ({best[n, w] / base:4.2f}x)"
                                          for n in names))
        finally:
            if bridge is not None:
                bridge.terminate()
                bridge.wait()
                svsm.__exit__(None, None, None)
            for cm in daemons.values():
                cm.__exit__(None, None, None)
            swtpm.close()
        print()
        print(f"start to first answered command: standard {first_answer_time(()) * 1000:.0f} ms,"
              f" ephemeral {first_answer_time(eph) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
