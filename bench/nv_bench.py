"""Durable NV: ctpm against swtpm, side by side, through the same tpm2-pytss ESAPI client.

    python bench/nv_bench.py [--seconds 2] [--rounds 3] [--clients 1,4] [--large]
                             [--before DIR]

Both TPMs keep their state in a directory on the same file system (ctpm: `--state`, swtpm:
`--tpmstate dir=`). Workloads: NV_Write of 8 bytes and NV_Increment, each acknowledged only
once the change is on disk (ctpm: journal + fdatasync; swtpm writes its NV file but never
syncs it), and ctpm without the fdatasync ("ctpm-write": swtpm's guarantee). With several
clients (threads, one ESAPI each), ctpm's group commit lets one fdatasync cover the changes
of every client waiting. Each NV_Write writes a new value. Reported: the best round's ops/s
and the range of the rounds' ratios, each server's CPU time per op, and for one client the
ceiling a flush per op leaves (swtpm's time per op plus this disk's flush, probed in every
round). `--large` also measures the start-up time with a large state (64 NV indices, 32
persistent objects). `--before DIR` also runs the ctpm of another source tree (e.g. `git
archive REV | tar -x -C DIR`) in the same run, with and without fdatasync, so that a change
is measured before/after side by side.
"""
import contextlib
import re
import subprocess
import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import SwtpmProcess, open_esapi, wait_listening  # noqa: E402
from ctpm.testing.process import run_daemon  # noqa: E402

BASE = 0x01500000


@contextlib.contextmanager
def other_tree(tree, state, *args):
    """`ctpm run ARGS` from the source tree `tree` (its own ctpm package first on the path);
    yields (its swtpm TCTI, its pid)."""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    proc = subprocess.Popen([sys.executable, "-m", "ctpm", "run", *args, "--swtpm",
                             "127.0.0.1:0", "--state", state], stdout=subprocess.PIPE,
                            text=True, env=env,
                            cwd=tree, stderr=subprocess.DEVNULL)
    try:
        line = proc.stdout.readline()
        port = re.search(r"swtpm=127\.0\.0\.1:(\d+)", line)
        if port is None:
            raise SystemExit(f"ctpm from {tree} did not start: {line!r}")
        yield f"swtpm:host=127.0.0.1,port={port.group(1)}", proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def define(esapi, index, counter):
    from tpm2_pytss import ESYS_TR, TPM2_ALG, TPM2_NT, TPMA_NV
    from tpm2_pytss.types import TPM2B_AUTH, TPM2B_NV_PUBLIC, TPMS_NV_PUBLIC
    attrs = (TPMA_NV.AUTHREAD | TPMA_NV.AUTHWRITE | TPMA_NV.OWNERREAD | TPMA_NV.OWNERWRITE
             | (TPM2_NT.COUNTER << TPMA_NV.TPM2_NT_SHIFT if counter else 0))
    public = TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(
        nvIndex=index, nameAlg=TPM2_ALG.SHA256, attributes=attrs, dataSize=8))
    return esapi.nv_define_space(TPM2B_AUTH(), public, ESYS_TR.OWNER)


class Client:
    """One ESAPI with its own write index and counter."""

    def __init__(self, tcti, n, startup):
        self.esapi = open_esapi(tcti, startup)
        self.written = 0
        self.data = define(self.esapi, BASE + 2 * n, False)
        self.counter = define(self.esapi, BASE + 2 * n + 1, True)

    def write(self):
        # a new value each time: rewriting the same bytes changes nothing, and a store may
        # rightly have nothing to make durable then
        from tpm2_pytss.types import TPM2B_MAX_NV_BUFFER
        self.written += 1
        self.esapi.nv_write(self.data, TPM2B_MAX_NV_BUFFER(self.written.to_bytes(8, "big")),
                            0)

    def increment(self):
        self.esapi.nv_increment(self.counter)


def sync_latency(directory, n=200):
    """(median, mean) of `n` 128-byte overwrites + fdatasync on a preallocated file in
    `directory`: what one durable change costs this disk now (it varies with other
    processes' I/O; the mean bounds one client's durable rate)."""
    path = os.path.join(directory, "sync-probe")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.posix_fallocate(fd, 0, n * 128)
        os.fsync(fd)
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            os.pwrite(fd, b"x" * 128, i * 128)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        os.unlink(path)
    return sorted(times)[n // 2], sum(times) / n


def cpu_seconds(pid):
    """CPU time used so far by every thread of process `pid` (schedstat: nanoseconds)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass                        # a thread that just ended
    return total / 1e9


def rate(clients, op, seconds, pid=None):
    """(total ops/s of all clients running `op` in parallel for `seconds`, the server's
    CPU seconds per op: process `pid`, None without)."""
    counts = [0] * len(clients)
    end = time.perf_counter() + seconds
    barrier = threading.Barrier(len(clients))

    def run(i):
        barrier.wait()
        fn = getattr(clients[i], op)
        while time.perf_counter() < end:
            fn()
            counts[i] += 1
    cpu0 = cpu_seconds(pid) if pid else None
    t0 = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    ops = max(1, sum(counts))
    cpu = (cpu_seconds(pid) - cpu0) / ops if pid else None
    return ops / elapsed, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", default="1,4", help="comma-separated client counts")
    ap.add_argument("--large", action="store_true", help="also time start-up, large state")
    ap.add_argument("--before", metavar="DIR", help="also the ctpm of this source tree")
    args = ap.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    state = tempfile.mkdtemp(prefix="ctpm-nvbench-")
    conf = os.path.join(state, "write.toml")
    with open(conf, "w") as f:
        f.write('[state]\ndurability = "write"\n')
    sw = SwtpmProcess()
    results = {}
    sync_before = sync_latency(state)
    try:
        with run_daemon("--swtpm", "127.0.0.1:0", "--state", os.path.join(state, "a")) as d, \
                run_daemon("--config", conf, "--swtpm", "127.0.0.1:0",
                           "--state", os.path.join(state, "b")) as w, \
                contextlib.ExitStack() as stack:
            tctis = {"swtpm": (sw.tcti(), sw.proc.pid), "ctpm": (d.tcti("swtpm"), d.proc.pid),
                     "ctpm-write": (w.tcti("swtpm"), w.proc.pid)}
            if args.before:
                tctis["ctpm-before"] = stack.enter_context(
                    other_tree(args.before, os.path.join(state, "c")))
                tctis["before-write"] = stack.enter_context(
                    other_tree(args.before, os.path.join(state, "e"), "--config", conf))
            pools = {}
            for name, (tcti, _pid) in tctis.items():
                pools[name] = [Client(tcti, i, startup=(name != "swtpm" and i == 0))
                               for i in range(max(counts))]
            for _ in range(args.rounds):
                for n in counts:
                    for op in ("write", "increment"):
                        for name, (_tcti, pid) in tctis.items():
                            r, cpu = rate(pools[name][:n], op, args.seconds, pid)
                            key = (n, op, name)
                            results.setdefault(key, []).append((r, cpu))
                        # the disk's flush now, between the TPMs' runs of this round
                        results.setdefault((n, op, "flush"), []).append(
                            sync_latency(state, 50)[0])
            for pool in pools.values():
                for c in pool:
                    c.esapi.close()
        sync_after = sync_latency(state)
    finally:
        sw.close()
        shutil.rmtree(state, ignore_errors=True)
    report(results, counts, args, sync_before, sync_after)
    if args.large:
        large_startup()


def report(results, counts, args, sync_before, sync_after):
    """The table (best round of each; the spread of the rounds in brackets), the servers'
    CPU time per op, and for one client what a flush per op costs at best."""
    names = {"write": "NV_Write(8 bytes)", "increment": "NV_Increment"}
    best = {k: max(v) for k, v in results.items()}
    print("ctpm: fdatasync before each response (group commit); ctpm-write: written to the "
          "OS before each\nresponse, no fdatasync (survives kill -9, not a power cut: what "
          "swtpm does)")
    print("this disk's pwrite + fdatasync of a small overwrite, median/mean: "
          f"{sync_before[0] * 1e6:.0f}/{sync_before[1] * 1e6:.0f} us before, "
          f"{sync_after[0] * 1e6:.0f}/{sync_after[1] * 1e6:.0f} us after the run\n")
    others = ["ctpm", "ctpm-write"] + (["ctpm-before", "before-write"] if args.before else [])
    print(f"{'workload':18} {'clients':>7} {'swtpm ops/s':>11}"
          + "".join(f" {k + ' ops/s':>17} {'ratio':>6} {'(rounds)':>11}" for k in others))
    for n in counts:
        for op in ("write", "increment"):
            s = best[n, op, "swtpm"][0]
            line = f"{names[op]:18} {n:7} {s:11.1f}"
            for k in others:
                # each round's ratio against swtpm's rate of the same round
                ratios = [c / w for (c, _), (w, _) in zip(results[n, op, k],
                                                           results[n, op, "swtpm"])]
                line += (f" {best[n, op, k][0]:17.1f} {best[n, op, k][0] / s:5.2f}x "
                         f"{min(ratios):4.2f}-{max(ratios):4.2f}x")
            print(line)
    print("\nserver CPU per op (us, all threads, median of the rounds):")
    print(f"{'workload':18} {'clients':>7}" + "".join(f" {k:>11}" for k in ["swtpm"] + others))
    for n in counts:
        for op in ("write", "increment"):
            cpus = ["" if results[n, op, k][0][1] is None else
                    f"{sorted(c for _, c in results[n, op, k])[len(results[n, op, k]) // 2] * 1e6:.0f}"
                    for k in ["swtpm"] + others]
            print(f"{names[op]:18} {n:7}" + "".join(f" {c:>11}" for c in cpus))
    if 1 in counts:
        print("\none client, per op (us): the client waits for each response, so a durable "
              "server adds its flush to\nevery op. 'ceiling': swtpm's time per op plus one "
              "flush of this disk (median of 50 probes\nright after the TPMs' runs of the same "
              "round): a server as quick as swtpm that also makes\neach change durable. "
              "Per round: swtpm / ctpm / flush us, ceiling, ctpm's ratio.")
        for op in ("write", "increment"):
            line = f"{names[op]:18}"
            for (w, _), (c, _), f in zip(results[1, op, "swtpm"], results[1, op, "ctpm"],
                                         results[1, op, "flush"]):
                t_sw, t_ct = 1e6 / w, 1e6 / c
                line += (f"  {t_sw:.0f}/{t_ct:.0f}/{f * 1e6:.0f}: {t_sw / (t_sw + f * 1e6):.2f}x"
                         f" {t_sw / t_ct:.2f}x")
            print(line)
    if args.before:
        print(f"\nctpm-before, before-write: the ctpm of {args.before}, fdatasync like ctpm, "
              f"no fdatasync like ctpm-write")


def large_startup():
    """Start-up time of ctpm and swtpm on a state with 64 NV indices, 32 persistent objects."""
    from tpm2_pytss import ESYS_TR
    from tpm2_pytss.types import TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE
    state = tempfile.mkdtemp(prefix="ctpm-nvbench-large-")
    sw = SwtpmProcess()
    times = {}
    try:
        with run_daemon("--swtpm", "127.0.0.1:0", "--state", state) as d:
            for name, tcti in (("ctpm", d.tcti("swtpm")), ("swtpm", sw.tcti())):
                e = open_esapi(tcti, startup=name == "ctpm")
                for i in range(64):
                    define(e, BASE + 0x1000 + i, i % 2 == 1)
                public = TPM2B_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=(
                    "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|decrypt"))
                for i in range(32):
                    h = e.create_primary(TPM2B_SENSITIVE_CREATE(), public)[0]
                    e.evict_control(ESYS_TR.OWNER, h, 0x81000100 + i)
                    e.flush_context(h)
                e.close()
        best = None
        for _ in range(3):
            t0 = time.perf_counter()
            with run_daemon("--swtpm", "127.0.0.1:0", "--state", state) as d:
                ready = time.perf_counter() - t0
                first_answer(d.swtpm_port)
                dt = time.perf_counter() - t0
            best = (ready, dt) if best is None else min(best, (ready, dt))
        times["ctpm"] = best
        sw_dir = sw.dir
        sw.proc.terminate()
        sw.proc.wait()
        best = None
        for _ in range(3):
            port = sw.port
            t0 = time.perf_counter()
            p = subprocess.Popen(
                ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={sw_dir}",
                 "--server", f"type=tcp,port={port}", "--ctrl", f"type=tcp,port={port + 1}",
                 "--flags", "not-need-init,startup-clear"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_listening(port)
            ready = time.perf_counter() - t0
            first_answer(port)
            dt = time.perf_counter() - t0
            p.terminate()
            p.wait()
            best = (ready, dt) if best is None else min(best, (ready, dt))
        times["swtpm"] = best
    finally:
        sw.close()
        shutil.rmtree(state, ignore_errors=True)
    print("\nstart-up with 64 NV indices + 32 persistent objects (best of 3), listening / first "
          f"command answered: ctpm {times['ctpm'][0] * 1000:.0f} / {times['ctpm'][1] * 1000:.0f}"
          f" ms, swtpm {times['swtpm'][0] * 1000:.0f} / {times['swtpm'][1] * 1000:.0f} ms")


def first_answer(port):
    """Send TPM2_GetRandom(8) as a raw command to the data port; return once answered."""
    import socket
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(bytes.fromhex("80010000000c0000017b0008"))
        head = b""
        while len(head) < 10:
            chunk = s.recv(64)
            if not chunk:
                raise SystemExit("no answer to GetRandom")
            head += chunk



if __name__ == "__main__":
    os.environ.setdefault("TSS2_LOG", "all+none")
    main()
