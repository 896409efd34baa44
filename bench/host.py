"""`ctpm host` against swtpm, side by side in one run: memory, fairness, throughput, and the
harness start/stop cycle.

    python bench/host.py [--only memory,fairness,throughput,cycle] [--instances 1,100,1000]
                         [--cycles 100] [--seconds 5]

Every client here speaks the swtpm data-channel protocol over unix sockets (raw commands,
one persistent connection per TPM), to ctpm and to swtpm alike, from one Python client
process; figures are ratios measured in the same run on the same machine.

- memory: RSS of one host with N idle instances (swtpm: one process per TPM).
- fairness: PCR_Read latency on instance A while instance B loops CreatePrimary RSA-2048
  (a new template each time): the host as built (slow commands in worker threads), the host
  with every command run inline on the event loop (what a one-loop host without the worker
  threads would do), and two swtpm processes.
- throughput: 100 instances, each with one client connection, one GetRandom(8) outstanding
  per connection, for a fixed time: the host in one process and with --workers (one per
  core by default) against 100 swtpm processes.
- cycle: start a TPM, Startup, GetCapability, CreatePrimary ECC P-256, stop; ctpm cold
  (`ctpm run`), ctpm warm (`ctpm run --host`), swtpm. "ready" is when the ready line was read
  (swtpm prints none: when the process was started), "first answer" when the Startup
  response came back (the cold `ctpm run` prints its ready line before it has loaded the
  engine), "cycle" until the process has exited.

Start-up is measured as installed: the ctpm processes run with bytecode caches (the bench
compiles ctpm once and clears PYTHONDONTWRITEBYTECODE for them).
"""
import argparse
import os
import selectors
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ctpm.testing.process import environment  # noqa: E402

STARTUP = bytes.fromhex("80010000000c000001440000")
PCR_READ = bytes.fromhex("8001000000140000017e00000001000b030f0000")
GET_RANDOM = bytes.fromhex("80010000000c0000017b0008")
GET_CAP = bytes.fromhex("8001000000160000017a000000060000010500000001")
CTPM = [sys.executable, "-m", "ctpm"]
if (Path(sys.executable).parent / "ctpm").exists():
    CTPM = [str(Path(sys.executable).parent / "ctpm")]


def create_primary(alg, unique=b""):
    from tpm2_pytss.types import TPM2B_PUBLIC
    public = TPM2B_PUBLIC.parse(alg)
    if unique:
        public.publicArea.unique.rsa = unique
    auth = struct.pack(">IHBH", 0x40000009, 0, 1, 0)
    body = (struct.pack(">I", 0x40000001) + struct.pack(">I", len(auth)) + auth
            + struct.pack(">HHH", 4, 0, 0) + public.marshal() + struct.pack(">HI", 0, 0))
    return struct.pack(">HII", 0x8002, 10 + len(body), 0x131) + body


def exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def transact(sock, command):
    sock.sendall(command)
    header = exact(sock, 10)
    size = struct.unpack(">I", header[2:6])[0]
    return header + exact(sock, size - 10)


def connect_unix(path, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


# -- processes -------------------------------------------------------------------------------

class Host:
    """A `ctpm host serve` process in a temporary directory."""

    def __init__(self, inline=False, workers=0):
        self.dir = tempfile.mkdtemp(prefix="ctpm-bench-host-")
        self.control = os.path.join(self.dir, "control.sock")
        argv = CTPM + ["host", "serve", "--control", self.control, "--log-level", "warning"]
        if workers:
            argv += ["--workers", str(workers)]
        if inline:      # baseline: no worker threads, every command on the event loop
            argv = [sys.executable, "-c",
                    "import sys, ctpm.backend as b; b._SLOW_CODES = frozenset(); "
                    "from ctpm.cli import main; sys.exit(main(sys.argv[1:]))"] + argv[-6:]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=ENV)
        self.proc.stdout.readline()
        self.conn = connect_unix(self.control)
        self.buf = b""

    def request(self, req):
        import json
        self.conn.sendall(json.dumps(req).encode() + b"\n")
        while b"\n" not in self.buf:
            self.buf += self.conn.recv(65536)
        line, _, self.buf = self.buf.partition(b"\n")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise RuntimeError(answer)
        return answer

    def add(self, name):
        path = os.path.join(self.dir, f"{name}.sock")
        self.request({"op": "add", "name": name, "swtpm": [f"unix:{path}"]})
        return path

    def close(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        shutil.rmtree(self.dir, ignore_errors=True)


class Swtpm:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="ctpm-bench-swtpm-")
        self.path = os.path.join(self.dir, "data")
        self.proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.dir}",
             "--server", f"type=unixio,path={self.path}",
             "--ctrl", f"type=unixio,path={self.path}.ctrl", "--flags", "not-need-init"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def close(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        shutil.rmtree(self.dir, ignore_errors=True)


# -- benchmarks ------------------------------------------------------------------------------

def memory(counts):
    print("\n## memory: RSS of idle TPMs")
    print(f"{'TPMs':>6} {'ctpm host RSS':>14} {'per added TPM':>14} {'swtpm RSS (N processes)':>24}")
    sw = Swtpm()
    s = connect_unix(sw.path)
    transact(s, STARTUP)
    swtpm_rss = rss_kib(sw.proc.pid)
    s.close()
    sw.close()
    host = Host()
    try:
        base = rss_kib(host.proc.pid)
        added = 0
        for n in counts:
            while added < n:
                path = host.add(f"i{added}")
                added += 1
            if added == 1:      # the first instance pays the engine's imports
                s = connect_unix(path)
                transact(s, STARTUP)
                s.close()
                first = rss_kib(host.proc.pid)
            time.sleep(0.5)
            rss = rss_kib(host.proc.pid)
            per = (rss - first) / (n - 1) if n > 1 else rss - base
            print(f"{n:>6} {rss / 1024:>11.1f} MiB {per:>10.0f} KiB {n * swtpm_rss / 1024:>20.1f} MiB")
    finally:
        host.close()
    print(f"(host with no instance: {base / 1024:.1f} MiB; one swtpm: {swtpm_rss / 1024:.1f} MiB)")


def latencies_under_load(path_a, path_b, seconds):
    sa, sb = connect_unix(path_a), connect_unix(path_b)
    transact(sa, STARTUP)
    transact(sb, STARTUP)
    stop = threading.Event()
    keys = [0]

    def loop():
        i = 0
        while not stop.is_set():
            rsp = transact(sb, create_primary("rsa2048", b"fair %d %f" % (i, time.time())))
            assert rsp[6:10] == b"\0\0\0\0", rsp.hex()
            flush = struct.pack(">HII", 0x8001, 14, 0x165) + rsp[10:14]
            transact(sb, flush)
            i += 1
        keys[0] = i
    t = threading.Thread(target=loop)
    t.start()
    samples = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            transact(sa, PCR_READ)
            samples.append(time.perf_counter() - t0)
            time.sleep(0.001)
    finally:
        stop.set()
        t.join()
        sa.close()
        sb.close()
    samples.sort()
    return (samples[len(samples) // 2] * 1000, samples[int(len(samples) * 0.99)] * 1000,
            samples[-1] * 1000, keys[0] / seconds)


def fairness(seconds, rounds):
    print(f"\n## fairness: PCR_Read on A while B loops CreatePrimary RSA-2048 (the round "
          f"with the lowest p99 of {rounds})")
    print(f"{'server':34} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'B keys/s':>9}")
    for label, inline in (("ctpm host (slow commands in threads)", False),
                          ("ctpm host, all inline (baseline)", True)):
        host = Host(inline=inline)
        try:
            a, b = host.add("a"), host.add("b")
            r = min((latencies_under_load(a, b, seconds) for _ in range(rounds)),
                    key=lambda x: x[1])
        finally:
            host.close()
        print(f"{label:34} {r[0]:>7.2f} {r[1]:>7.2f} {r[2]:>7.2f} {r[3]:>9.1f}")
    sa, sb = Swtpm(), Swtpm()
    try:
        r = min((latencies_under_load(sa.path, sb.path, seconds) for _ in range(rounds)),
                key=lambda x: x[1])
    finally:
        sa.close()
        sb.close()
    print(f"{'two swtpm processes':34} {r[0]:>7.2f} {r[1]:>7.2f} {r[2]:>7.2f} {r[3]:>9.1f}")


def drive(paths, seconds):
    """One GetRandom outstanding per connection, for `seconds`: completed commands/s."""
    sel = selectors.DefaultSelector()
    socks = []
    for p in paths:
        s = connect_unix(p)
        transact(s, STARTUP)            # TPM_RC_INITIALIZE after the first round: fine
        s.setblocking(False)
        socks.append(s)
        sel.register(s, selectors.EVENT_READ, [b""])
    for s in socks:
        s.send(GET_RANDOM)
    done = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        for key, _ in sel.select(0.1):
            s, state = key.fileobj, key.data
            state[0] += s.recv(4096)
            while len(state[0]) >= 20:
                state[0] = state[0][20:]
                done += 1
                s.send(GET_RANDOM)
    elapsed = time.perf_counter() - t0
    for s in socks:
        s.close()
    return done / elapsed


def throughput(n, seconds, rounds, workers):
    print(f"\n## throughput: {n} TPMs, GetRandom(8), one client connection each "
          f"(best of {rounds} alternating rounds; {os.cpu_count()} cores)")
    hosts = {"ctpm host (one process)": Host(),
             f"ctpm host --workers {workers}": Host(workers=workers)}
    sws = [Swtpm() for _ in range(n)]
    try:
        paths = {label: [h.add(f"t{i}") for i in range(n)] for label, h in hosts.items()}
        ops = dict.fromkeys([*hosts, f"{n} swtpm processes"], 0)
        for _ in range(rounds):
            for label in hosts:
                ops[label] = max(ops[label], drive(paths[label], seconds))
            ops[f"{n} swtpm processes"] = max(ops[f"{n} swtpm processes"],
                                              drive([s.path for s in sws], seconds))
    finally:
        for h in hosts.values():
            h.close()
        for s in sws:
            s.close()
    swtpm_ops = ops[f"{n} swtpm processes"]
    for label, value in ops.items():
        print(f"{label:32} {value:>9.0f} ops/s   {value / swtpm_ops:.2f}x swtpm")


def cycle_once(kind, tmp, control=None):
    path = os.path.join(tmp, "tpm.sock")
    t0 = time.perf_counter()
    if kind == "swtpm":
        proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={tmp}", "--server",
             f"type=unixio,path={path}", "--ctrl", f"type=unixio,path={path}.ctrl",
             "--flags", "not-need-init"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        argv = CTPM + ["run", "--swtpm", f"unix:{path}"]
        if kind == "warm":
            argv += ["--host", f"unix:{control}"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=ENV)
        proc.stdout.readline()                  # the ready line
    ready = time.perf_counter() - t0
    s = connect_unix(path)
    first = None
    for c in (STARTUP, GET_CAP, ECC_PRIMARY):
        rsp = transact(s, c)
        first = first or time.perf_counter() - t0
        assert rsp[6:10] == b"\0\0\0\0", (kind, rsp.hex())
    s.close()
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    if proc.stdout:
        proc.stdout.close()
    return ready, first, time.perf_counter() - t0


def cycle(n):
    print(f"\n## harness cycle x{n}: start, Startup, GetCapability, CreatePrimary ECC P-256, stop")
    print(f"{'TPM':22} {'ready p50 ms':>13} {'1st answer p50':>15} {'cycle p50 ms':>13} "
          f"{'cycle mean ms':>14}")
    host = Host()
    kinds = ("ctpm cold", "ctpm warm (host)", "swtpm")
    samples = {kind: [] for kind in kinds}
    try:
        for _ in range(n):          # interleaved: the machine's load hits all three alike
            for kind in kinds:
                tmp = tempfile.mkdtemp(prefix="ctpm-bench-cycle-")
                try:
                    samples[kind].append(cycle_once(
                        kind.split()[0 if kind == "swtpm" else 1].strip("()"), tmp,
                        host.control))
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
        results = {}
        for kind in kinds:
            readies, firsts, totals = zip(*samples[kind])
            results[kind] = statistics.median(totals)
            print(f"{kind:22} {statistics.median(readies) * 1000:>13.1f} "
                  f"{statistics.median(firsts) * 1000:>15.1f} "
                  f"{statistics.median(totals) * 1000:>13.1f} "
                  f"{statistics.mean(totals) * 1000:>14.1f}")
    finally:
        host.close()
    print(f"(ratios of the cycle p50 to swtpm: cold {results['ctpm cold'] / results['swtpm']:.2f}x,"
          f" warm {results['ctpm warm (host)'] / results['swtpm']:.2f}x)")


ENV = environment()
ENV.pop("CTPM_HOST", None)
ENV.pop("PYTHONDONTWRITEBYTECODE", None)
ECC_PRIMARY = None


def main():
    global ECC_PRIMARY
    p = argparse.ArgumentParser()
    p.add_argument("--only", default="memory,fairness,throughput,cycle")
    p.add_argument("--instances", default="1,100,1000")
    p.add_argument("--throughput-instances", type=int, default=100)
    p.add_argument("--cycles", type=int, default=100)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                   help="worker processes of the sharded host (throughput)")
    args = p.parse_args()
    if not shutil.which("swtpm"):
        sys.exit("bench: swtpm is not installed (apt-get install swtpm)")
    ECC_PRIMARY = create_primary("ecc256")
    import compileall                   # bytecode caches, as an installed package has them
    compileall.compile_dir(str(ROOT / "ctpm"), quiet=1)
    only = args.only.split(",")
    if "memory" in only:
        memory([int(n) for n in args.instances.split(",")])
    if "fairness" in only:
        fairness(args.seconds, args.rounds)
    if "throughput" in only:
        throughput(args.throughput_instances, args.seconds, args.rounds, args.workers)
    if "cycle" in only:
        cycle(args.cycles)


if __name__ == "__main__":
    main()
