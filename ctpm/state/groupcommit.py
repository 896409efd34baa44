"""Acknowledge only what is on disk, without making each command wait for its own flush.

The engine runs in the event loop and a `DirStore` in deferred mode only queues its records.
Before a response goes out, its sender awaits `GroupCommit.wait()`: if a flush (write +
fdatasync, in a worker thread) is already running, it waits for that one and then starts
the next, which takes every record queued meanwhile - one disk flush for all the commands
that arrived during the previous one. Every response waits for everything executed before
it, not only for its own record: a read must not show a value a crash could still undo.
"""
import trio

from .errors import StoreError


class GroupCommit:
    def __init__(self, store):
        self.store = store
        store.deferred = True
        self._flushing = None           # a trio.Event while a flush runs

    def pending(self) -> bool:
        """Something executed is not yet durable (and cannot be made so without waiting).
        With durability = "write" (no fdatasync), a plain write() of the queued records
        costs microseconds: it is done here, in the event loop, instead of a thread hop."""
        store = self.store
        if store.durable_seq >= store.appended_seq:
            return False
        if store.sync or self._flushing is not None or store.needs_compaction():
            return True
        try:
            store.flush()
        except StoreError:
            return True             # wait() reports it
        return False

    async def wait(self):
        """Return once everything executed so far is durable; StoreError if it cannot be."""
        target = self.store.appended_seq
        while self.store.durable_seq < target:
            if self._flushing is not None:
                await self._flushing.wait()
                continue
            done = self._flushing = trio.Event()
            try:
                await trio.to_thread.run_sync(self.store.flush)
            finally:
                self._flushing = None
                done.set()
