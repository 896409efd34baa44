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
average under `INLINE_FLUSH`) and no compaction or anchor update is due, a flush runs
inline; a slow disk (or a compaction: several fsyncs) sends them to the worker thread
again. Before an inline flush, the commands already waiting in the event loop run first
(one checkpoint), so that the flush still covers all of them. Inline flushes of all the
stores of one event loop (a `ctpm host`: many instances) may take at most `INLINE_SHARE`
of its time (per `INLINE_WINDOW`); beyond that they go to worker threads, where flushes of
different files overlap. One stall of the disk can block the event loop once, for as long
as that flush takes.
"""
import time

import trio

from .errors import StoreError

INLINE_FLUSH = 0.0005              # seconds: flushes quicker than this (on average) run inline
INLINE_WINDOW, INLINE_SHARE = 0.01, 0.2
# the inline flush time spent in the current window, per event loop (a trio RunVar: its
# value belongs to one trio.run, like everything else of that loop)
_SPENT = trio.lowlevel.RunVar("ctpm_inline_flush_spent", default=(0.0, 0.0))


def _budget_left() -> bool:
    start, spent = _SPENT.get()
    now = time.perf_counter()
    if now - start > INLINE_WINDOW:
        _SPENT.set((now, 0.0))
        return True
    return spent < INLINE_WINDOW * INLINE_SHARE


def _spend(seconds):
    start, spent = _SPENT.get()
    _SPENT.set((start, spent + seconds))


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

    def _inline_ok(self) -> bool:
        return (self._flushing is None and self.flush_time < INLINE_FLUSH
                and not self.store.needs_slow_flush() and _budget_left())

    async def wait(self):
        """Return once everything executed so far is durable; StoreError if it cannot be."""
        target = self.store.appended_seq
        while self.store.durable_seq < target:
            if self._flushing is not None:
                await self._flushing.wait()
                continue
            if self._inline_ok():
                # first let every command that is ready run, so that one flush covers them
                await trio.lowlevel.cancel_shielded_checkpoint()
                if self.store.durable_seq >= target:
                    continue
                if self._inline_ok():
                    self._inline_flush()
                    continue
                if self._flushing is not None:
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
        if self.store.durable_seq >= self.store.appended_seq:
            return True
        if not self._inline_ok():
            return None
        self._inline_flush()
        return True

    def _inline_flush(self):
        self.inline_flushes += 1
        t0 = time.perf_counter()
        try:
            self._timed_flush()
        finally:
            _spend(time.perf_counter() - t0)

    def _timed_flush(self):
        """store.flush, its duration averaged (a compaction's not: it never runs inline)."""
        if self.store.needs_slow_flush():
            return self.store.flush()
        t0 = time.perf_counter()
        try:
            self.store.flush()
        finally:
            self.flush_time += (time.perf_counter() - t0 - self.flush_time) / 4
