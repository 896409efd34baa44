"""Two verifier processes sharing one real redis-server (started here on a free port): a
challenge from one is accepted once by the other, a race for one nonce has one winner, and a
Redis that goes away is a 503 problem, not a crash."""
import concurrent.futures
import shutil
import socket
import subprocess
import time

import httpx
import pytest

from ctpm.attest.noncestore import RedisStore

from .service_helpers import AUDIENCE, make_key, run_service, write_policy
from .test_composite import crafted

REDIS = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS is None, reason="redis-server is not installed "
                                                      "(./dev.sh setup installs it)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    def __init__(self, tmp):
        for _ in range(5):                  # the port may be taken between probe and bind
            self.port = free_port()
            self.proc = subprocess.Popen(
                [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(tmp)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), 0.2) as c:
                        c.sendall(b"PING\r\n")
                        if c.recv(16).startswith(b"+PONG"):
                            return
                except OSError:
                    time.sleep(0.05)
            self.stop()
        raise RuntimeError("redis-server did not start")

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from ctpm.snp.simulator import SimulatedSP
    return SimulatedSP(str(tmp_path_factory.mktemp("sim") / "sp"), "milan")


@pytest.fixture
def redis(tmp_path):
    r = Redis(tmp_path)
    yield r
    r.stop()


def attest(url, nonce, doc):
    return httpx.post(url + "/attest", json={"nonce": nonce.hex(), "evidence": doc}, timeout=30)


def test_two_verifiers_share_one_redis(sim, redis, tmp_path):
    policy, key = write_policy(str(tmp_path), sim), make_key(str(tmp_path))
    with run_service(policy, key, "--nonce-store", redis.url) as a, \
            run_service(policy, key, "--nonce-store", redis.url) as b:
        assert httpx.get(a.url + "/health").json() == {"status": "ok",
                                                       "nonce_store": redis.url}
        nonce = bytes.fromhex(httpx.post(a.url + "/challenge").json()["nonce"])
        doc, _ = crafted(sim, nonce)
        assert attest(b.url, nonce, doc).status_code == 200           # issued by a, used at b
        for url in (a.url, b.url):
            r = attest(url, nonce, doc)
            assert r.status_code == 403 and r.json()["check"] == "nonce_replayed"
        # one nonce sent to both at once: exactly one token
        for _ in range(5):
            nonce = bytes.fromhex(httpx.post(b.url + "/challenge").json()["nonce"])
            doc, _ = crafted(sim, nonce)
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                codes = sorted(pool.map(lambda u: attest(u, nonce, doc).status_code,
                                        [a.url, b.url, a.url, b.url]))
            assert codes == [200, 403, 403, 403]
        # Redis gone: a problem document, and the services stay up
        redis.stop()
        r = httpx.post(a.url + "/challenge")
        assert r.status_code == 503 and r.json()["check"] == "nonce_store_unavailable"
        r = attest(b.url, nonce, doc)
        assert r.status_code == 503 and r.json()["check"] == "nonce_store_unavailable"
        assert httpx.get(a.url + "/health").status_code == 503


async def test_redis_store_expiry_and_replay(redis):
    clock = [1000.0]
    store = RedisStore(redis.url, clock=lambda: clock[0])
    try:
        await store.issue(b"a" * 64, 60)
        await store.issue(b"b" * 64, 60)
        assert await store.consume(b"a" * 64) == "ok"
        assert await store.consume(b"a" * 64) == "replayed"
        assert await store.consume(b"c" * 64) == "unknown"
        clock[0] += 61
        assert await store.consume(b"b" * 64) == "expired"
    finally:
        store.close()


async def test_memory_store():
    from ctpm.attest.noncestore import GRACE, MemoryStore, StoreError
    clock = [1000.0]
    store = MemoryStore(capacity=3, clock=lambda: clock[0])
    for n in (b"a", b"b", b"c"):
        await store.issue(n * 64, 60)
    with pytest.raises(StoreError):
        await store.issue(b"d" * 64, 60)
    assert await store.consume(b"a" * 64) == "ok"
    assert await store.consume(b"a" * 64) == "replayed"
    clock[0] += 61
    assert await store.consume(b"b" * 64) == "expired"
    clock[0] += GRACE + 1                   # forgotten entries make room again
    await store.issue(b"d" * 64, 60)
    assert await store.consume(b"c" * 64) == "unknown"
