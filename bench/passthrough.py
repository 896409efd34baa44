"""Passthrough overhead: the same ESAPI workload on swtpm directly and through `ctpm run
--mode passthrough`, in one run.

    python bench/passthrough.py [--seconds 2] [--rounds 3]

swtpm serves one connection at a time, so two identical swtpm processes (same binary, same
flags, fresh state) stand in for "the same TPM": one reached directly over the swtpm TCTI,
one behind ctpm passthrough, whose own listener the client reaches over the same swtpm TCTI.
Unix sockets throughout: the swtpm TCTI connects anew for every command, which over TCP
leaves a TIME_WAIT socket per command (tens of thousands in a run).
Best rounds count; the ratio is passthrough / direct (1.00 = no overhead), overhead the time
per command added. Two passthrough daemons: ctpm's own swtpm protocol on one kept connection
(the default) and tpm2-pytss's TCTI loader (`tcti_loader = true`, a connection per command:
how passthrough forwarded before). ctpm standard (its own engine, same listener and TCTI) is
shown for scale: the listener's cost is in all three. Two minimal relays (bench/relay/, each
in front of its own swtpm: relay.c built with the machine's C compiler, and relay.py) show
the floor of any process in the middle for this client. PCR_Extend is not measured: the
guard refuses it by default.

    python bench/passthrough.py --mssim

measures a passthrough daemon reached over the mssim TCTI (its commands forwarded in a task,
not the swtpm listener's fast path) next to swtpm direct, ratios per round with their spread.

    python bench/passthrough.py --qemu

measures what QEMU's `-tpmdev emulator` sees: one data channel handed over with SET_DATAFD
and kept for the VM's life, raw commands one at a time (as the guest driver sends them), on
swtpm directly, through ctpm passthrough and on ctpm standard, in one run.
"""
import argparse
import struct
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import Workloads, measure, open_esapi  # noqa: E402
from ctpm.testing.process import run_daemon  # noqa: E402


class UnixSwtpm:
    """swtpm on unix sockets where the swtpm TCTI looks: data on PATH, control on PATH.ctrl."""

    def __init__(self, server=True):
        import os
        import subprocess
        import tempfile
        import time
        self.dir = tempfile.mkdtemp(prefix="ctpm-bench-swtpm-")
        self.path = os.path.join(self.dir, "tpm")
        data = ["--server", f"type=unixio,path={self.path}"] if server else []  # QEMU: none
        self.proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.dir}", *data,
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

# raw commands: GetRandom(32), PCR_Read(sha256 0-7), FlushContext (its handle appended) and
# CreatePrimary(owner) of an ECC P-256 restricted decryption key (AES-128-CFB)
GETRANDOM = bytes.fromhex("80010000000c0000017b0020")
PCR_READ = bytes.fromhex("8001000000140000017e00000001000b03ff0000")
FLUSH = bytes.fromhex("80010000000e00000165")
_TEMPLATE = bytes.fromhex("0023000b00030472000000060080004300100003001000000000")
_BODY = (struct.pack(">I", 0x40000001) + struct.pack(">I", 9)
         + struct.pack(">IHBH", 0x40000009, 0, 1, 0) + struct.pack(">H", 4) + bytes(4)
         + struct.pack(">H", len(_TEMPLATE)) + _TEMPLATE + bytes(2) + bytes(4))
CREATE_ECC = struct.pack(">HII", 0x8002, 10 + len(_BODY), 0x131) + _BODY

WORKLOADS = ("GetRandom(32)", "PCR_Read(4 PCRs)", "Hash(1 KiB, sha256)",
             "CreatePrimary ECC P-256", "CreatePrimary RSA-2048", "Create ECC P-256",
             "Sign RSASSA-2048", "Sign ECDSA P-256", "Quote ECDSA P-256")


def forwarding(seconds, rounds):
    """The forwarding path alone, without a listener or a client TCTI: raw commands on one
    kept socket to swtpm (the floor) against PassthroughBackend (guard, upstream, answer: the
    listener's fast path `execute_inline`, then `execute` when the answer takes over 2 ms)
    over the direct protocol and over the TCTI loader. Microseconds per command, best of the
    rounds; each on its own swtpm, in one run."""
    import dataclasses
    import socket
    import time

    import trio

    from ctpm.config import load
    from ctpm.modes.passthrough import PassthroughBackend

    getrandom, pcr_read, create, flush = GETRANDOM, PCR_READ, CREATE_ECC, FLUSH
    swtpms = [UnixSwtpm() for _ in range(3)]
    try:
        raw = socket.socket(socket.AF_UNIX)
        raw.connect(swtpms[0].path)

        async def direct(command):
            raw.sendall(command)
            return raw.recv(16384)
        paths = {"swtpm, raw socket": direct}
        for sw, loader in ((swtpms[1], False), (swtpms[2], True)):
            config = dataclasses.replace(
                load(mode="passthrough", upstream=sw.tcti(), default_listener=False),
                upstream_tcti_loader=loader)
            backend = PassthroughBackend.build(config)

            async def through(command, b=backend):
                rsp = b.execute_inline(command, 0)
                return rsp if rsp is not None else await b.execute(command, 0)
            paths["passthrough, " + ("TCTI loader" if loader else "direct protocol")] = through

        async def primary(fn):
            rsp = await fn(create)
            assert rsp[6:10] == bytes(4), rsp[6:10].hex()
            await fn(flush + rsp[10:14])

        async def one(fn, command):
            await fn(command)
        work = {"GetRandom(32)": lambda fn: one(fn, getrandom),
                "PCR_Read(sha256 0-7)": lambda fn: one(fn, pcr_read),
                "CreatePrimary ECC + Flush": primary}
        best = {}

        async def measure_all():
            for _ in range(rounds):
                for w, run in work.items():
                    for name, fn in paths.items():
                        n, t0 = 0, time.perf_counter()
                        while time.perf_counter() - t0 < seconds:
                            await run(fn)
                            n += 1
                        us = (time.perf_counter() - t0) / n * 1e6
                        best[w, name] = min(best.get((w, name), us), us)
        trio.run(measure_all)
        names = list(paths)
        print(f"forwarding path alone (us per command, best of {rounds}; in brackets: added "
              "us and speed ratio to the raw socket)")
        print(f"{'workload':28}" + "".join(f"{n:>32}" for n in names))
        for w in work:
            base = best[w, names[0]]
            cells = [f"{best[w, n]:.1f} (+{best[w, n] - base:.1f}, {base / best[w, n]:.2f}x)"
                     if n != names[0] else f"{base:.1f}" for n in names]
            print(f"{w:28}" + "".join(f"{c:>32}" for c in cells))
    finally:
        for sw in swtpms:
            sw.close()


class Relay:
    """A minimal relay (bench/relay/: relay.c built with the machine's C compiler, or
    relay.py) between a swtpm TCTI client and its own swtpm: the floor any process in the
    middle pays. None when it cannot run here (no C compiler)."""

    def __init__(self, kind, sw):
        import os
        import shutil
        import subprocess
        here = Path(__file__).resolve().parent / "relay"
        if kind == "c":
            cc = shutil.which("cc") or shutil.which("gcc")
            if cc is None:
                raise FileNotFoundError("no C compiler")
            subprocess.run([cc, "-O2", "-o", f"{sw.dir}/relay", str(here / "relay.c")],
                           check=True, capture_output=True)
            argv = [f"{sw.dir}/relay"]
        else:
            argv = [sys.executable, str(here / "relay.py")]
        self.path = os.path.join(sw.dir, "relayed")
        os.symlink(sw.path + ".ctrl", self.path + ".ctrl")    # the TCTI's control channel
        self.proc = subprocess.Popen(argv + [self.path, sw.path], stdout=subprocess.PIPE)
        if self.proc.stdout.readline() != b"ready\n":
            raise RuntimeError(f"{kind} relay did not start")

    def tcti(self):
        return f"swtpm:path={self.path}"

    def close(self):
        self.proc.terminate()
        self.proc.wait()
        self.proc.stdout.close()


MSSIM_WORKLOADS = ("GetRandom(32)", "PCR_Read(4 PCRs)", "Hash(1 KiB, sha256)",
                   "Sign RSASSA-2048", "Sign ECDSA P-256", "CreatePrimary ECC P-256")


def over_mssim(seconds, rounds):
    """A passthrough daemon reached over the mssim TCTI (each command answered by
    `execute` in a task: `_forward`), next to the same daemon over the swtpm TCTI (its fast
    path) and swtpm direct, in one run. Ratios to swtpm direct per round: best and the
    spread (lowest-highest) over the rounds."""
    direct, upstream = UnixSwtpm(), UnixSwtpm()
    daemon = run_daemon("--mode", "passthrough", "--upstream", upstream.tcti(),
                        "--mssim", "127.0.0.1:0", "--swtpm", f"unix:{upstream.dir}/ctpm",
                        timeout=60)
    d = daemon.__enter__()
    try:
        clients = {"swtpm direct": Workloads(open_esapi(direct.tcti(), False)),
                   "passthrough mssim": Workloads(open_esapi(d.tcti("mssim"), False)),
                   "passthrough swtpm": Workloads(open_esapi(d.tcti("swtpm"), False))}
        rates = {(n, w): [] for n in clients for w in MSSIM_WORKLOADS}
        for _ in range(rounds):
            for w in MSSIM_WORKLOADS:
                for n, c in clients.items():
                    rates[n, w].append(measure(c.calls[w], seconds))
                    c.flush()
        names = list(clients)[1:]
        print(f"{'workload (ops/s, best)':26}{'swtpm direct':>13}"
              + "".join(f"{n:>19}{'ratio (spread)':>20}" for n in names))
        for w in MSSIM_WORKLOADS:
            base = rates["swtpm direct", w]
            line = f"{w:26}{max(base):13.0f}"
            for n in names:
                ratios = [r / b for r, b in zip(rates[n, w], base)]
                cell = f"{max(rates[n, w]) / max(base):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
                line += f"{max(rates[n, w]):19.0f}{cell:>20}"
            print(line)
        for c in clients.values():
            c.esapi.close()
    finally:
        daemon.__exit__(None, None, None)
        direct.close()
        upstream.close()


def qemu_channel(seconds, rounds):
    """Microseconds per command on a SET_DATAFD channel (QEMU's), best of the rounds."""
    import array
    import socket
    import time

    getrandom, pcr_read, create = GETRANDOM, PCR_READ, CREATE_ECC

    def channel(ctrl_path):
        ctrl = socket.socket(socket.AF_UNIX)
        ctrl.connect(ctrl_path)
        ours, theirs = socket.socketpair()
        ctrl.sendmsg([struct.pack(">I", 16)],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [theirs.fileno()]))])
        if ctrl.recv(4) != bytes(4):
            raise RuntimeError(f"SET_DATAFD refused by {ctrl_path}")
        theirs.close()
        return ours, ctrl

    def call(sock, command):
        sock.sendall(command)
        rsp = sock.recv(16384)
        while len(rsp) < 10 or len(rsp) < int.from_bytes(rsp[2:6], "big"):
            rsp += sock.recv(16384)
        return rsp

    def primary(sock):
        rsp = call(sock, create)
        assert rsp[6:10] == bytes(4), rsp[6:10].hex()
        call(sock, FLUSH + rsp[10:14])

    work = {"GetRandom(32)": lambda s: call(s, getrandom),
            "PCR_Read(sha256 0-7)": lambda s: call(s, pcr_read),
            "CreatePrimary ECC + Flush": primary}
    direct, upstream, other = UnixSwtpm(server=False), UnixSwtpm(), UnixSwtpm()
    daemon = run_daemon("--mode", "passthrough", "--upstream", upstream.tcti(),
                        "--swtpm", f"unix:{upstream.dir}/ctpm", timeout=60)
    standard = run_daemon("--swtpm", f"unix:{other.dir}/ctpm", timeout=60)
    daemon.__enter__(), standard.__enter__()
    try:
        paths = {"swtpm direct": channel(direct.path + ".ctrl"),
                 "ctpm passthrough": channel(f"{upstream.dir}/ctpm.ctrl"),
                 "ctpm standard": channel(f"{other.dir}/ctpm.ctrl")}
        call(paths["ctpm standard"][0], bytes.fromhex("80010000000c000001440000"))
        best = {}
        for _ in range(rounds):
            for w, run in work.items():
                for name, (sock, _ctrl) in paths.items():
                    n, t0 = 0, time.perf_counter()
                    while time.perf_counter() - t0 < seconds:
                        run(sock)
                        n += 1
                    us = (time.perf_counter() - t0) / n * 1e6
                    best[w, name] = min(best.get((w, name), us), us)
        names = list(paths)
        print(f"QEMU's data channel (SET_DATAFD, kept): us per command, best of {rounds}; "
              "in brackets the speed ratio to swtpm direct")
        print(f"{'workload':28}" + "".join(f"{n:>24}" for n in names))
        for w in work:
            base = best[w, names[0]]
            print(f"{w:28}" + "".join(f"{best[w, n]:>15.1f} ({base / best[w, n]:.2f}x)"
                                      for n in names))
        for sock, ctrl in paths.values():
            sock.close()
            ctrl.close()
    finally:
        standard.__exit__(None, None, None)
        daemon.__exit__(None, None, None)
        for sw in (direct, upstream, other):
            sw.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--forwarding-only", action="store_true",
                    help="only the forwarding path without listener and client TCTI")
    ap.add_argument("--mssim", action="store_true",
                    help="only passthrough over the mssim TCTI (and swtpm TCTI) vs direct")
    ap.add_argument("--qemu", action="store_true",
                    help="only QEMU's kept data channel (SET_DATAFD), raw commands")
    args = ap.parse_args()
    if args.qemu:
        return qemu_channel(args.seconds, args.rounds)
    if args.forwarding_only:
        return forwarding(args.seconds, args.rounds)
    if args.mssim:
        return over_mssim(args.seconds, args.rounds)

    direct, upstream, upstream2 = UnixSwtpm(), UnixSwtpm(), UnixSwtpm()
    relayed = {"C relay": UnixSwtpm(), "Python relay": UnixSwtpm()}
    relays = {}
    for name, sw in relayed.items():
        try:
            relays[name] = Relay("c" if name == "C relay" else "py", sw)
        except (OSError, subprocess.CalledProcessError) as e:
            print(f"{name}: not measured ({e})")
    daemon = run_daemon("--mode", "passthrough", "--upstream", upstream.tcti(),
                        "--swtpm", f"unix:{upstream.dir}/ctpm", timeout=60)
    with open(f"{upstream2.dir}/loader.toml", "w") as f:
        f.write("[passthrough]\ntcti_loader = true\n")
    loader = run_daemon("--mode", "passthrough", "--upstream", upstream2.tcti(),
                        "--config", f"{upstream2.dir}/loader.toml",
                        "--swtpm", f"unix:{upstream2.dir}/ctpm", timeout=60)
    standard = run_daemon("--swtpm", f"unix:{direct.dir}/ctpm", timeout=60)
    d, l, s = daemon.__enter__(), loader.__enter__(), standard.__enter__()
    try:
        clients = {"swtpm direct": Workloads(open_esapi(direct.tcti(), False)),
                   "ctpm passthrough": Workloads(open_esapi(d.tcti("swtpm"), False)),
                   "passthrough via loader": Workloads(open_esapi(l.tcti("swtpm"), False)),
                   "ctpm standard": Workloads(open_esapi(s.tcti("swtpm"), True))}
        for name, relay in relays.items():
            clients[name] = Workloads(open_esapi(relay.tcti(), False))
        best = {(n, w): 0.0 for n in clients for w in WORKLOADS}
        for _ in range(args.rounds):
            for w in WORKLOADS:
                for n, c in clients.items():
                    best[n, w] = max(best[n, w], measure(c.calls[w], args.seconds))
                    c.flush()
        print(f"{'workload (ops/s)':26}{'swtpm direct':>13}{'passthrough':>12}{'ratio':>7}"
              f"{'overhead':>9}{'via loader':>11}{'ratio':>7}{'ctpm standard':>14}{'ratio':>7}"
              + "".join(f"{n:>14}{'ratio':>7}" for n in relays))
        for w in WORKLOADS:
            a, b = best["swtpm direct", w], best["ctpm passthrough", w]
            c, e = best["ctpm standard", w], best["passthrough via loader", w]
            print(f"{w:26}{a:13.0f}{b:12.0f}{b / a:7.2f}{(a / b - 1) * 100:8.1f}%"
                  f"{e:11.0f}{e / a:7.2f}{c:14.0f}{c / a:7.2f}"
                  + "".join(f"{best[n, w]:14.0f}{best[n, w] / a:7.2f}" for n in relays))
        if relays:
            print("relays: the floor of any process between the client and swtpm (accept, "
                  "read, forward on one kept connection, answer, close; nothing else); "
                  "'overhead' is passthrough's time per command over direct")
    finally:
        standard.__exit__(None, None, None)
        loader.__exit__(None, None, None)
        daemon.__exit__(None, None, None)
        direct.close()
        upstream.close()
        upstream2.close()
        for relay in relays.values():
            relay.close()
        for sw in relayed.values():
            sw.close()


if __name__ == "__main__":
    main()
