"""What the engine gets from the outside world: time, entropy and a place to keep NV.

The engine never touches the OS directly; a `Platform` is injected so that tests can run a
TPM in memory and the daemon can back it with a state directory.
"""
import os
import time

from .state.store import MemoryStore


class Platform:
    """Clock (milliseconds, monotonic), entropy and the NV store of one TPM instance."""

    def __init__(self, store=None, *, entropy=os.urandom, clock_ns=time.monotonic_ns):
        self.store = store if store is not None else MemoryStore()
        self.entropy = entropy
        self._clock_ns = clock_ns

    def now_ms(self) -> int:
        return self._clock_ns() // 1_000_000
