"""The per-AK clock history (the `clock` check) in Redis, so that verifier processes sharing a
nonce store also share what each AK's TPM clock last said: a quote from the past sent to
another process is refused too.

One key per AK, `ctpm:clock:<SHA-256(Name(AK))>` = "resetCount restartCount clock", updated
by one Lua script (atomic in Redis): refuse when the quote goes back, else store it. Entries
expire after `ttl` seconds without a quote (30 days by default): a history that long
forgotten is as good as none. Same interface as ctpm.attest.verify.ClockHistory (`check`,
called from the appraisal's worker thread); Redis faults raise StoreError (503), never a
refusal of the evidence.
"""
import hashlib

from .noncestore import StoreError

TTL = 30 * 86400

# KEYS[1]; ARGV: reset, restart, clock, ttl. Returns the stored triple when the new one goes
# back (refused), else nil after storing the new one.
_SCRIPT = """
local old = redis.call('GET', KEYS[1])
if old then
  local r, s, c = string.match(old, '^(%d+) (%d+) (%d+)$')
  r = tonumber(r); c = tonumber(c)
  local nr, nc = tonumber(ARGV[1]), tonumber(ARGV[3])
  if nr < r or (nr == r and nc < c) then
    return old
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. ARGV[3], 'EX', ARGV[4])
return false
"""


class RedisClockHistory:
    """The last (resetCount, restartCount, clock) per AK, in Redis."""

    def __init__(self, url: str, *, ttl: int = TTL, timeout: float = 2.0):
        import redis
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout,
                                           socket_connect_timeout=timeout)
        self._script = self._redis.register_script(_SCRIPT)
        self._ttl = int(ttl)

    def check(self, ak_name: bytes, quote):
        import redis

        from .verify import AttestError
        key = "ctpm:clock:" + hashlib.sha256(bytes(ak_name)).hexdigest()
        try:
            old = self._script(keys=[key], args=[quote.reset_count, quote.restart_count,
                                                 quote.clock, self._ttl])
        except redis.RedisError as e:
            raise StoreError(f"redis: {type(e).__name__}") from None
        if old is not None:
            reset, _, clock = old.decode().split()
            raise AttestError("clock", f"the TPM's clock went back (resetCount "
                                       f"{quote.reset_count} clock {quote.clock} after "
                                       f"{reset}/{clock})")

    def close(self):
        self._redis.close()
