"""Acknowledge only what is on disk, without making each command wait for its own flush.

The engine runs in the event loop and a `DirStore` in deferred mode only queues its records.
Before a response goes out, its sender awaits `GroupCommit.wait()`: if a flush (write +
fdatasync, in a worker thread) is already running, it waits for that one and then starts
the next, which takes every record queued meanwhile - one disk flush for all the commands
that arrived during the previous one. Every response waits for everything executed before
it, not only for its own record: a read must not show a value a crash could still undo.

A flush of a few small records onto the journal's preallocated blocks takes ~0.1 ms on a
local disk: less than a command's own Python path, which already runs in the event loop,
and less than the hop to a worker thread and back. So while flushes stay quick (a moving
average under `INLINE_FLUSH`) and no compaction is due, a flush runs inline; a slow disk
(or a compaction: several fsyncs) sends them to the worker thread again. Before an inline
flush, the commands already waiting in the event loop run first (one checkpoint), so
that the flush still covers all of them. One stall of the
disk can block the event loop once, for as long as that flush takes.
"""
import time

import trio

from .errors import StoreError


INLINE_FLUSH = 0.0005              # seconds: flushes quicker than this (on average) run inline


class GroupCommit:
    def __init__(self, store):
        self.store = store
        store.deferred = True
        self._flushing = None           # a trio.Event while a flush runs
        self.flush_time = 0.0           # moving average of a flush's duration, seconds
        self.inline_flushes = self.thread_flushes = 0

    def pending(self) -> bool:
        """Something executed is not yet durable (and cannot be made so without waiting).
        With durability = "write" (no fdatasync), a plain write() of the queued records
        costs microseconds: it is done here, in the event loop, instead of a thread hop."""
        store = self.store
        if store.durable_seq >= store.appended_seq:
            return False
        if store.sync or self._flushing is not None or store.needs_slow_flush():
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
            if self.flush_time < INLINE_FLUSH and not self.store.needs_slow_flush():
                # first let every command that is ready run, so that one flush covers them
                await trio.lowlevel.cancel_shielded_checkpoint()
                if self.store.durable_seq >= target or self._flushing is not None:
                    continue
                self.inline_flushes += 1
                self._timed_flush()
                continue
            done = self._flushing = trio.Event()
            try:
                self.thread_flushes += 1
                await trio.to_thread.run_sync(self._timed_flush)
            finally:
                self._flushing = None
                done.set()

    def flush_inline(self):
        """Flush right here, without awaiting, if a flush is quick now (see above): True
        once everything is durable, None if it must wait for `wait()`; StoreError."""
        if (self._flushing is not None or self.flush_time >= INLINE_FLUSH
                or self.store.needs_slow_flush()):
            return None
        if self.store.durable_seq < self.store.appended_seq:
            self.inline_flushes += 1
            self._timed_flush()
        return True

    def _timed_flush(self):
        """store.flush, its duration averaged (a compaction's not: it never runs inline)."""
        if self.store.needs_slow_flush():
            return self.store.flush()
        t0 = time.perf_counter()
        try:
            self.store.flush()
        finally:
            self.flush_time += (time.perf_counter() - t0 - self.flush_time) / 4
