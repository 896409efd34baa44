"""Verifier service throughput: many concurrent attesters (trio + httpx) against real
`ctpm verifier serve` processes on this machine, side by side in one run with the floor,
the in-process library call.

    python bench/verifier.py [--attestations 2000] [--concurrency 64]

Workloads:
  * library: `verify_evidence` in this process, one thread, warm SNP Verifier (the VCEK
    chain cached): the appraisal cost every service pays; the ceiling of one process;
  * service x1: one `ctpm verifier serve` (memory nonce store);
  * service x2 + Redis: two services sharing a redis-server nonce store, the clients
    spread over both (what a load balancer does), when redis-server is installed.
Each attestation is one POST /attest (a small keep-alive HTTP/1.1 client per attester) of fresh evidence for its own challenge. The challenges
are fetched and the evidence crafted (simulated AMD-SP report + software AK quote, the same
checks as a real TPM's) before the clock starts, so that the attesters' own CPU work does not
compete with the verifier; the HTTP clients still run on the same 2 cores. Reported:
attestations verified per second, p50/p99 latency of POST /attest, the services' CPU time
per attestation (from /proc: where the time goes), and the ratio to the library's rate.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import trio  # noqa: E402

from ctpm.attest.verify import load_policy, verify_evidence  # noqa: E402
from ctpm.snp.simulator import SimulatedSP  # noqa: E402
from ctpm.snp.verify import Verifier  # noqa: E402
from tests.attest.service_helpers import make_key, run_service, write_policy  # noqa: E402
from tests.attest.test_composite import SoftAk, crafted  # noqa: E402
from tests.attest.test_service_redis import Redis  # noqa: E402


def craft_many(sim, nonces, aks):
    return [crafted(sim, n, aks[i % len(aks)])[0] for i, n in enumerate(nonces)]


def library_rate(sim, policy_path, n):
    policy = load_policy(policy_path)
    verifier = Verifier(policy.trust)
    aks = [SoftAk() for _ in range(8)]
    nonces = [os.urandom(64) for _ in range(n)]
    docs = craft_many(sim, nonces, aks)
    verify_evidence(docs[0], nonces[0], policy, verifier=verifier)      # warm the chain
    start = time.perf_counter()
    for doc, nonce in zip(docs, nonces):
        verify_evidence(doc, nonce, policy, verifier=verifier)
    return n / (time.perf_counter() - start)


async def _challenges(urls, n, concurrency):
    nonces = []
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        async def get(i):
            r = await client.post(urls[i % len(urls)] + "/challenge")
            nonces.append((i, bytes.fromhex(r.json()["nonce"])))
        async with trio.open_nursery() as nursery:
            sem = trio.Semaphore(concurrency)
            for i in range(n):
                async def one(i=i):
                    async with sem:
                        await get(i)
                nursery.start_soon(one)
    return [n for _, n in sorted(nonces)]


class Connection:
    """A minimal keep-alive HTTP/1.1 client on a trio stream: the attesters' side must cost
    little CPU, since it shares the 2 cores with the services it measures (httpx costs about
    as much per request as the service's own HTTP layer)."""

    def __init__(self, stream, host):
        self.stream, self.host, self.buf = stream, host, b""

    @classmethod
    async def open(cls, url):
        hostport = url.split("//", 1)[1]
        host, port = hostport.rsplit(":", 1)
        return cls(await trio.open_tcp_stream(host, int(port)), hostport)

    async def post(self, path, body: bytes):
        await self.stream.send_all(
            b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (path.encode(), self.host.encode(), len(body))
            + body)
        while b"\r\n\r\n" not in self.buf:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError("the service closed the connection")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next(int(v) for k, _, v in (ln.partition(b":") for ln in lines[1:])
                      if k.strip().lower() == b"content-length")
        while len(self.buf) < length:
            self.buf += await self.stream.receive_some(65536)
        data, self.buf = self.buf[:length], self.buf[length:]
        return status, data


async def _attest(urls, work, concurrency):
    latencies, failures = [], []
    queue = list(enumerate(work))

    async def attester(k):
        conn = await Connection.open(urls[k % len(urls)])
        while queue:
            _, body = queue.pop()
            t = time.perf_counter()
            status, data = await conn.post("/attest", body)
            latencies.append(time.perf_counter() - t)
            if status != 200:
                failures.append(data[:200])
        await conn.stream.aclose()
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for k in range(concurrency):
            nursery.start_soon(attester, k)
    wall = time.perf_counter() - start
    return wall, sorted(latencies), failures


def bodies(nonces, docs):
    return [json.dumps({"nonce": n.hex(), "evidence": d}).encode() for n, d in zip(nonces, docs)]


def cpu_seconds(pids):
    """User+system CPU time of the service processes so far (from /proc)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def service_run(sim, services, n, concurrency):
    urls = [s.url for s in services]
    pids = [s.proc.pid for s in services]
    nonces = trio.run(_challenges, urls, n, concurrency)
    aks = [SoftAk() for _ in range(8)]
    docs = craft_many(sim, nonces, aks)
    # warm: one attestation per service (its worker threads' VCEK chain caches fill)
    extra = trio.run(_challenges, urls, 4 * len(urls), 4)
    trio.run(_attest, urls, bodies(extra, craft_many(sim, extra, aks)), len(urls))
    cpu = cpu_seconds(pids)
    work = bodies(nonces, docs)
    wall, lat, failures = trio.run(_attest, urls, work, concurrency)
    cpu = cpu_seconds(pids) - cpu
    if failures:
        raise SystemExit(f"{len(failures)} attestations refused, e.g. {failures[0]}")
    pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3    # noqa: E731
    return n / wall, pct(0.50), pct(0.99), cpu / n * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--attestations", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        sim = SimulatedSP(os.path.join(d, "sp"), "milan")
        policy = write_policy(d, sim, policy_id="bench")
        key = make_key(d)
        rows = []
        lib = library_rate(sim, policy, min(args.attestations, 500))
        rows.append(("library (in process, 1 thread)", lib, None, None, 1e3 / lib))
        extra = ("--nonce-ttl", "600", "--log-level", "warning")
        with run_service(policy, key, *extra) as s:
            rows.append(("service x1 (memory store)",
                         *service_run(sim, [s], args.attestations, args.concurrency)))
        if shutil.which("redis-server"):
            redis = Redis(d)
            try:
                with run_service(policy, key, "--nonce-store", redis.url, *extra) as a, \
                        run_service(policy, key, "--nonce-store", redis.url, *extra) as b:
                    rows.append(("service x2 + Redis store", *service_run(
                        sim, [a, b], args.attestations, args.concurrency)))
            finally:
                redis.stop()
    print(f"verifier service: {args.attestations} attestations, {args.concurrency} concurrent "
          f"attesters, {os.cpu_count()} CPUs")
    print(f"{'workload':34} {'attest/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/att':>10} "
          f"{'vs library':>10}")
    for name, r, p50, p99, cpu in rows:
        f = (lambda v: f"{v:8.1f}" if v is not None else f"{'-':>8}")  # noqa: E731
        print(f"{name:34} {r:9.0f} {f(p50)} {f(p99)} {cpu:10.2f} {r / lib:10.2f}")


if __name__ == "__main__":
    main()
