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


def test_clock_history_shared_through_redis(sim, redis, tmp_path):
    """With --clock-history nonce-store a quote from the past is refused by the other
    service too; with the default (per process) only by the one that saw the later quote."""
    from .test_composite import SoftAk
    policy = write_policy(str(tmp_path), sim)
    key = make_key(str(tmp_path))
    shared = ("--nonce-store", redis.url, "--clock-history", "nonce-store")
    with run_service(policy, key, *shared) as a, run_service(policy, key, *shared) as b, \
            run_service(policy, key, "--nonce-store", redis.url) as own:
        ak = SoftAk()

        def quote_at(url, clock, resets=0):
            nonce = bytes.fromhex(httpx.post(url + "/challenge").json()["nonce"])
            return attest(url, nonce, crafted(sim, nonce, ak, clock=clock, resets=resets)[0])
        assert quote_at(a.url, 5000).status_code == 200
        r = quote_at(b.url, 4000)                            # the other shared service
        assert r.status_code == 403 and r.json()["check"] == "clock", r.text
        assert quote_at(own.url, 4000).status_code == 200   # a per-process history: unseen
        assert quote_at(b.url, 6000).status_code == 200
        r = quote_at(a.url, 5500)
        assert r.status_code == 403 and r.json()["check"] == "clock"
        assert quote_at(a.url, 10, resets=1).status_code == 200     # a TPM reset: new epoch
        # the history's Redis gone: 503 naming the store, no crash (the nonce store is the
        # same Redis, so the challenge already fails)
        redis.stop()
        r = httpx.post(a.url + "/challenge")
        assert r.status_code == 503


def test_clock_history_needs_redis(tmp_path, sim):
    import subprocess as sp

    from ctpm.testing.process import command, environment
    policy, key = write_policy(str(tmp_path), sim), make_key(str(tmp_path))
    r = sp.run(command("verifier", "serve", "--listen", "127.0.0.1:0", "--policy", policy,
                       "--key", key, "--clock-history", "nonce-store"), capture_output=True,
               text=True, env=environment(), timeout=60)
    assert r.returncode == 2 and "--clock-history nonce-store needs" in r.stderr


def test_redis_clock_history_directly(redis):
    """The script's rule, and a Redis fault as StoreError (not a refusal)."""
    from ctpm.attest.clockstore import RedisClockHistory
    from ctpm.attest.noncestore import StoreError
    from ctpm.attest.verify import AttestError

    class Q:
        def __init__(self, reset, clock, restart=0):
            self.reset_count, self.clock, self.restart_count = reset, clock, restart
    h = RedisClockHistory(redis.url)
    try:
        h.check(b"ak", Q(2, 100))
        h.check(b"ak", Q(2, 100))               # the same instant: not going back
        with pytest.raises(AttestError, match="went back"):
            h.check(b"ak", Q(2, 99))
        with pytest.raises(AttestError):
            h.check(b"ak", Q(1, 10 ** 12))
        h.check(b"other", Q(0, 1))              # per AK
        h.check(b"ak", Q(3, 0))
        redis.stop()
        with pytest.raises(StoreError):
            h.check(b"ak", Q(4, 0))
    finally:
        h.close()
