"""The SVSM mode against the standard mode (and swtpm), side by side in one run.

    python bench/svsm.py [--seconds 2] [--rounds 3]

The same tpm2-pytss ESAPI workload (GetRandom, PCR_Extend, Quote ECDSA, CreatePrimary ECC)
against:
* swtpm (swtpm TCTI; the baseline of bench/bench.py),
* `ctpm run` standard mode over mssim,
* `ctpm run --mode svsm` reached through `ctpm svsm-bridge` (mssim -> bridge -> SVSM
  protocol frames on a unix socket -> the SVSM's vTPM): what a guest's TPM stack pays,
* the same svsm-mode process over its own mssim listener (the mode without the bridge:
  separates the cost of the mode from the cost of the SVSM hop).
Each workload runs for a fixed time per round, the TPMs alternating; the best round counts.
Ratios are against standard mode. Also the raw SVSM round trip (one TPM_SEND_COMMAND of
GetRandom through the guest client) against a raw mssim round trip to the same process.

`svsm_rates(...)` is the measuring part, for bench/modes.py to call.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import SwtpmProcess, Workloads, measure, open_esapi  # noqa: E402  (bench/bench.py)
from ctpm.testing.process import run_daemon  # noqa: E402

WORKLOADS = ["GetRandom(32)", "PCR_Extend(sha256)", "Quote ECDSA P-256",
             "CreatePrimary ECC P-256"]
GET_RANDOM_8 = bytes.fromhex("80010000000c0000017b0008")


def start_bridge(svsm_path):
    import subprocess

    from ctpm.testing import process
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen(process.command("svsm-bridge", "--svsm", f"unix:{svsm_path}",
                                            "--mssim", "127.0.0.1:0"),
                            stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                            env=process.environment())
    return process.Daemon(proc, process._read_line(proc, 20), err)


def raw_round_trips(svsm_path, mssim_endpoint, seconds):
    """(SVSM frames/s, mssim commands/s) for GetRandom(8), one connection each."""
    import socket
    import struct

    from ctpm.svsm.client import SvsmClient
    with SvsmClient(svsm_path) as guest:
        svsm_rate = measure(lambda: guest.send_command(GET_RANDOM_8), seconds)
    _, host, port, _ = mssim_endpoint
    with socket.create_connection((host, port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        frame = struct.pack(">IBI", 8, 0, len(GET_RANDOM_8)) + GET_RANDOM_8

        def one():
            s.sendall(frame)
            need, data = 4 + 20 + 4, b""
            while len(data) < need:
                data += s.recv(need - len(data))
        mssim_rate = measure(one, seconds)
    return svsm_rate, mssim_rate


def svsm_rates(seconds=2.0, rounds=3, sim_dir=None, workloads=WORKLOADS, with_swtpm=True):
    """{(client, workload): best ops/s} and the raw round trips; `sim_dir` holds the
    simulated AMD-SP (made on first use, a few seconds)."""
    tmp = tempfile.mkdtemp(prefix="ctpm-bench-svsm-")
    sim_dir = sim_dir or os.path.join(tmp, "amd-sp")
    svsm_path = os.path.join(tmp, "svsm.sock")
    sw = SwtpmProcess() if with_swtpm and shutil.which("swtpm") else None
    try:
        with run_daemon("--mssim", "127.0.0.1:0") as standard, \
             run_daemon("--mode", "svsm", "--svsm", f"unix:{svsm_path}", "--mssim",
                        "127.0.0.1:0", "--snp-provider", "simulated", "--snp-sim-dir",
                        sim_dir, timeout=120) as svsm:
            bridge = start_bridge(svsm_path)
            try:
                clients = {"standard (mssim)": open_esapi(standard.tcti("mssim"), True),
                           "svsm via bridge": open_esapi(bridge.tcti("mssim"), True),
                           "svsm mode (mssim)": open_esapi(svsm.tcti("mssim"), False)}
                if sw:
                    clients["swtpm"] = open_esapi(sw.tcti(), False)
                loads = {name: Workloads(e) for name, e in clients.items()}
                best = {}
                for _ in range(rounds):
                    for wl in workloads:
                        for name in clients:
                            rate = measure(loads[name].calls[wl], seconds)
                            loads[name].flush()
                            best[name, wl] = max(best.get((name, wl), 0), rate)
                raw = max((raw_round_trips(svsm_path, svsm.endpoint("mssim"), seconds)
                           for _ in range(rounds)), key=lambda r: r[0])
                for e in clients.values():
                    e.close()
            finally:
                bridge.stop()
    finally:
        if sw:
            sw.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return best, raw, list(clients)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="per workload per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sim-dir", help="a simulated AMD-SP directory to reuse")
    args = ap.parse_args()
    t0 = time.perf_counter()
    best, (svsm_raw, mssim_raw), clients = svsm_rates(args.seconds, args.rounds,
                                                       args.sim_dir)
    others = [c for c in clients if c != "standard (mssim)"]
    print(f"{'workload':26} {'standard ops/s':>14} "
          + " ".join(f"{c + ' ops/s (ratio)':>30}" for c in others))
    for wl in WORKLOADS:
        base = best["standard (mssim)", wl]
        cells = " ".join(f"{best[c, wl]:20.1f} ({best[c, wl] / base:5.2f}x)" for c in others)
        print(f"{wl:26} {base:14.1f} {cells}")
    print(f"\nraw GetRandom(8) round trip to the svsm-mode process: SVSM frame "
          f"{svsm_raw:.0f}/s ({1e6 / svsm_raw:.0f} us), mssim {mssim_raw:.0f}/s "
          f"({1e6 / mssim_raw:.0f} us): {svsm_raw / mssim_raw:.2f}x")
    print(f"(run took {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    os.environ.setdefault("TSS2_LOG", "all+none")
    main()
