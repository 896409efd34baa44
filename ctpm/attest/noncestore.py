"""Where the verifier service keeps its challenges: the only state it has.

A nonce is issued once (`issue`) and consumed once (`consume`), atomically: of two requests
racing with one nonce, exactly one gets "ok". Each entry remembers its own expiry, and stays
a grace period after it (or after its use) so that a late or replayed answer is told apart
from a nonce the service never issued: `consume` answers "ok", "expired", "replayed" or
"unknown". Keys are SHA-256 of the nonce (fixed size, nothing echoed into Redis keys).

`MemoryStore` serves one process; `RedisStore` lets any number of verifier processes share
challenges (a nonce issued by one is accepted, once, by any other).
"""
import hashlib
import threading
import time

GRACE = 600.0            # seconds an entry outlives its expiry or its use
USED = b"used"


def _key(nonce: bytes) -> str:
    return "ctpm:nonce:" + hashlib.sha256(nonce).hexdigest()


class StoreError(Exception):
    """The store cannot answer (Redis down, memory store full)."""


class MemoryStore:
    """Nonces in this process's memory; bounded (`capacity` live entries)."""

    def __init__(self, capacity: int = 1_000_000, clock=time.time):
        self._entries = {}          # key -> (expires, used, forget_at)
        self._lock = threading.Lock()
        self._capacity = capacity
        self._clock = clock
        self._next_purge = 0.0

    def describe(self) -> str:
        return "memory"

    async def issue(self, nonce: bytes, ttl: float) -> float:
        now = self._clock()
        expires = now + ttl
        with self._lock:
            if now >= self._next_purge or len(self._entries) >= self._capacity:
                self._purge(now)
            if len(self._entries) >= self._capacity:
                raise StoreError("too many outstanding challenges")
            self._entries[_key(nonce)] = (expires, False, expires + GRACE)
        return expires

    async def consume(self, nonce: bytes) -> str:
        now = self._clock()
        key = _key(nonce)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or now >= entry[2]:
                return "unknown"
            expires, used, _ = entry
            if used:
                return "replayed"
            self._entries[key] = (expires, True, now + GRACE)
        return "ok" if now < expires else "expired"

    async def ping(self) -> None:
        return None

    def close(self):
        pass

    def _purge(self, now):
        self._entries = {k: v for k, v in self._entries.items() if v[2] > now}
        self._next_purge = now + 10.0


class RedisStore:
    """Nonces in Redis (redis-py's synchronous client, called in worker threads: it has no
    trio client). An entry is `SET key <expiry> NX EX ttl+GRACE`; consuming is one atomic
    `SET key used XX KEEPTTL GET` (Redis >= 6.2), which returns what was there before."""

    def __init__(self, url: str, *, clock=time.time, timeout: float = 2.0):
        import redis
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout,
                                           socket_connect_timeout=timeout)
        self._url = url
        self._clock = clock

    def describe(self) -> str:
        from urllib.parse import urlsplit
        u = urlsplit(self._url)         # never the password
        return f"redis://{u.hostname}:{u.port or 6379}"

    async def _call(self, fn, *args, **kwargs):
        import redis
        import trio
        try:
            return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))
        except redis.RedisError as e:
            raise StoreError(f"redis: {type(e).__name__}") from None

    async def issue(self, nonce: bytes, ttl: float) -> float:
        expires = self._clock() + ttl
        ok = await self._call(self._redis.set, _key(nonce), repr(expires).encode(), nx=True,
                              ex=int(ttl + GRACE) + 1)
        if not ok:
            raise StoreError("nonce collision")     # 64 random bytes: never in practice
        return expires

    async def consume(self, nonce: bytes) -> str:
        old = await self._call(self._redis.set, _key(nonce), USED, xx=True, keepttl=True,
                               get=True)
        if old is None:
            return "unknown"
        if old == USED:
            return "replayed"
        try:
            expires = float(old)
        except ValueError:
            return "unknown"
        return "ok" if self._clock() < expires else "expired"

    async def ping(self) -> None:
        await self._call(self._redis.ping)

    def close(self):
        self._redis.close()


def open_store(spec: str):
    """`memory` or `redis://HOST:PORT[/DB]`; ValueError with one line otherwise."""
    if spec in (None, "", "memory"):
        return MemoryStore()
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(spec)
    raise ValueError(f"--nonce-store: {spec!r} is neither 'memory' nor redis://HOST:PORT")
