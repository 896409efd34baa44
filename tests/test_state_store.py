"""The state directory: journal replay, torn tails, damage, the lock, nv.bin migration,
encryption at rest (wrong key, wrong passphrase, moved/replayed records), rekey.

TPMs here are the real engine on a `DirStore`; each change is a real command.
"""
import errno
import hashlib
import json
import os
import struct
import subprocess
import sys

import pytest

from ctpm.engine.tpm import Tpm
from ctpm.platform import Platform
from ctpm.state import journal
from ctpm.state.keys import StateKey
from ctpm.state.store import DirStore, StoreError
from ctpm.testing.process import command, environment

from .tpmcmd import STARTUP_CLEAR, b2, cmd, params, pw_session, rc, u16, u32

INDEX = 0x01500020


def open_tpm(path, **kw):
    return Tpm.manufacture(Platform(DirStore(path, **kw)), seed=b"state-test")


def define_and_write(tpm, values):
    public = u32(INDEX) + u16(0x000B) + u32(0x02060006) + b2(b"") + u16(8)
    assert rc(tpm.execute(cmd(0x12A, b2(b"") + b2(public), handles=[0x40000001],
                              sessions=[pw_session()]))) == 0
    for v in values:
        write(tpm, v)


def write(tpm, value):
    assert rc(tpm.execute(cmd(0x137, b2(value) + u16(0), handles=[INDEX, INDEX],
                              sessions=[pw_session()]))) == 0


def read(tpm):
    rsp = tpm.execute(cmd(0x14E, u16(8) + u16(0), handles=[INDEX, INDEX],
                          sessions=[pw_session()]))
    assert rc(rsp) == 0, hex(rc(rsp))
    return params(rsp)[2:10]


def fresh(path, values=(b"11111111", b"22222222", b"33333333"), **kw):
    """A state with an NV index written len(values) times, closed; returns the journal."""
    tpm = open_tpm(path, **kw)
    assert rc(tpm.execute(STARTUP_CLEAR)) == 0
    define_and_write(tpm, values)
    tpm.platform.store.close()
    return path / "nv.journal"


def records(data):
    """(offset, end, seq) of each record in a journal file's bytes."""
    (n,) = struct.unpack_from(">I", data, 8)
    pos, out = 8 + 4 + n + 8, []
    while pos < len(data):
        size, seq = struct.unpack_from(">IQ", data, pos)
        end = pos + 12 + size + 8
        out.append((pos, end, seq))
        pos = end
    return out


def reopen_value(path, **kw):
    tpm = open_tpm(path, **kw)
    assert rc(tpm.execute(STARTUP_CLEAR)) == 0
    value = read(tpm)
    tpm.platform.store.close()
    return value


def test_journal_replays_every_change(tmp_path):
    fresh(tmp_path)
    assert reopen_value(tmp_path) == b"33333333"


def test_records_hold_diffs_not_whole_images(tmp_path):
    data = fresh(tmp_path).read_bytes()
    last = records(data)[-1]
    assert last[1] - last[0] < 400          # one index and the clock, not the whole NV
    assert b"eps" not in data[last[0]:last[1]]


@pytest.mark.parametrize("cut", [1, 7, 13, 30])
def test_torn_tail_is_dropped_up_to_the_last_whole_record(tmp_path, cut, caplog):
    path = fresh(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - cut])
    assert reopen_value(tmp_path) == b"22222222"
    assert "torn" in caplog.text
    # new records follow the last whole one
    tpm = open_tpm(tmp_path)
    tpm.execute(STARTUP_CLEAR)
    write(tpm, b"44444444")
    tpm.platform.store.close()
    assert reopen_value(tmp_path) == b"44444444"


def test_zero_filled_tail_is_a_torn_write(tmp_path):
    path = fresh(tmp_path)
    with open(path, "ab") as f:
        f.write(bytes(300))
    assert reopen_value(tmp_path) == b"33333333"


def test_bit_flip_inside_the_journal_is_an_error_not_a_fresh_tpm(tmp_path):
    path = fresh(tmp_path)
    data = bytearray(path.read_bytes())
    start, end, _ = records(data)[-2]
    data[(start + end) // 2] ^= 0x04
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="damaged .bad record at offset"):
        open_tpm(tmp_path)
    assert len(os.listdir(tmp_path)) == 3        # nothing replaced


@pytest.mark.parametrize("where", ["header", "record"])
def test_bit_flip_in_the_snapshot_is_an_error(tmp_path, where):
    fresh(tmp_path)
    snap = tmp_path / "nv.snap"
    data = bytearray(snap.read_bytes())
    data[20 if where == "header" else len(data) - 40] ^= 0x01
    snap.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="damaged"):
        open_tpm(tmp_path)


def test_reordered_records_are_refused(tmp_path):
    path = fresh(tmp_path)
    data = path.read_bytes()
    (a0, a1, _), (b0, b1, _) = records(data)[-2:]
    path.write_bytes(data[:a0] + data[b0:b1] + data[a0:a1])
    with pytest.raises(StoreError, match="where .* belongs"):
        open_tpm(tmp_path)


def test_snapshot_without_journal_and_journal_without_snapshot(tmp_path):
    fresh(tmp_path)
    (tmp_path / "nv.snap").unlink()
    with pytest.raises(StoreError, match="without nv.snap"):
        open_tpm(tmp_path)


def test_compaction_keeps_everything(tmp_path):
    tpm = open_tpm(tmp_path, compact_bytes=4096)
    tpm.execute(STARTUP_CLEAR)
    define_and_write(tpm, [b"%08d" % i for i in range(200)])
    store = tpm.platform.store
    assert os.path.getsize(tmp_path / "nv.journal") < 4096 + 512
    assert store.durable_seq > 150
    store.close()
    assert reopen_value(tmp_path) == b"00000199"


def test_crash_between_snapshot_and_new_journal(tmp_path):
    """Compaction writes the snapshot first; the old journal's records are then skipped."""
    fresh(tmp_path)
    old_journal = (tmp_path / "nv.journal").read_bytes()
    store = DirStore(tmp_path)
    store.load_nv()
    store._compact()
    store.close()
    (tmp_path / "nv.journal").write_bytes(old_journal)
    assert reopen_value(tmp_path) == b"33333333"


def test_a_second_process_is_refused_by_the_lock(tmp_path):
    fresh(tmp_path)
    store = DirStore(tmp_path)
    try:
        out = subprocess.run([sys.executable, "-c", "import sys\n"
                              "from ctpm.state.store import DirStore, StoreError\n"
                              "try:\n DirStore(sys.argv[1])\n"
                              "except StoreError as e:\n print(e)\n",
                              str(tmp_path)], capture_output=True, text=True,
                             env=environment())
        assert f"is in use by another process (pid {os.getpid()})" in out.stdout
    finally:
        store.close()


def test_nv_bin_of_the_previous_format_is_migrated(tmp_path):
    tpm = open_tpm(tmp_path / "src")
    tpm.execute(STARTUP_CLEAR)
    define_and_write(tpm, [b"migrated"])
    nv = dict(tpm.state.nv, clock=tpm.state.clock())
    tpm.platform.store.close()
    body = json.dumps(nv, sort_keys=True)
    legacy = {"sha256": hashlib.sha256(body.encode()).hexdigest(), "body": body}
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "nv.bin").write_text(json.dumps(legacy))
    assert reopen_value(tmp_path / "dst") == b"migrated"
    assert sorted(os.listdir(tmp_path / "dst")) == ["lock", "nv.bin.migrated", "nv.journal",
                                                   "nv.snap"]
    assert reopen_value(tmp_path / "dst") == b"migrated"


def test_corrupt_nv_bin_is_an_error(tmp_path):
    (tmp_path / "nv.bin").write_text('{"sha256": "00", "body": "{}"}')
    with pytest.raises(StoreError, match="corrupt .checksum mismatch"):
        open_tpm(tmp_path)


# -- encryption at rest ---------------------------------------------------------------------

KEY = StateKey(key=bytes(range(32)))


def key(n=0):
    return StateKey(key=bytes([n]) * 32, source=f"key {n}")


def test_encrypted_state_reads_back_and_hides_its_contents(tmp_path):
    fresh(tmp_path, key=key(1))
    for name in ("nv.snap", "nv.journal"):
        data = (tmp_path / name).read_bytes()
        assert b"eps" not in data and b"nv_indices" not in data and b"33333333" not in data
    assert reopen_value(tmp_path, key=key(1)) == b"33333333"


def test_wrong_key_missing_key_and_unneeded_key_are_one_line_errors(tmp_path):
    fresh(tmp_path / "enc", key=key(1))
    with pytest.raises(StoreError, match=r"wrong state key for .* \(key 2\)"):
        open_tpm(tmp_path / "enc", key=key(2))
    with pytest.raises(StoreError, match="is encrypted: give its key"):
        open_tpm(tmp_path / "enc")
    fresh(tmp_path / "plain")
    with pytest.raises(StoreError, match="not encrypted, but a state key was given"):
        open_tpm(tmp_path / "plain", key=key(1))


def test_passphrase_wrong_passphrase_and_kdf_parameters_in_the_header(tmp_path):
    fresh(tmp_path, key=StateKey(passphrase=b"correct horse"))
    header = (tmp_path / "nv.snap").read_bytes()
    assert b'"name": "scrypt"' in header and b'"n": 32768' in header
    with pytest.raises(StoreError, match="wrong state passphrase"):
        open_tpm(tmp_path, key=StateKey(passphrase=b"battery staple"))
    with pytest.raises(StoreError, match="encrypted with a passphrase, not a key"):
        open_tpm(tmp_path, key=key(1))
    assert reopen_value(tmp_path, key=StateKey(passphrase=b"correct horse")) == b"33333333"


def test_swapped_records_with_fixed_sequence_numbers_fail_authentication(tmp_path):
    """An attacker who swaps two records and rewrites their sequence numbers and checksums
    (all unencrypted framing) still cannot move them: the position is in the AAD."""
    path = fresh(tmp_path, key=key(1))
    data = path.read_bytes()
    (a0, a1, sa), (b0, b1, sb) = records(data)[-2:]

    def reframe(rec, seq):
        size = struct.unpack_from(">I", rec)[0]
        head = struct.pack(">IQ", size, seq)
        payload = rec[12:12 + size]
        return head + payload + journal._checksum(head, payload)
    path.write_bytes(data[:a0] + reframe(data[b0:b1], sa) + reframe(data[a0:a1], sb))
    with pytest.raises(StoreError, match=f"record {sa} of nv.journal fails authentication"):
        open_tpm(tmp_path, key=key(1))


def test_record_replayed_from_another_state_with_the_same_key_is_refused(tmp_path):
    fresh(tmp_path / "a", key=key(1))
    fresh(tmp_path / "b", key=key(1), values=(b"bbbbbbb1", b"bbbbbbb2", b"bbbbbbb3"))
    a = (tmp_path / "a" / "nv.journal").read_bytes()
    b = (tmp_path / "b" / "nv.journal").read_bytes()
    (s, e, seq) = records(a)[-1]
    (s2, e2) = next((s2, e2) for s2, e2, seq2 in records(b) if seq2 == seq)
    (tmp_path / "a" / "nv.journal").write_bytes(a[:s] + b[s2:e2])
    with pytest.raises(StoreError, match="fails authentication"):
        open_tpm(tmp_path / "a", key=key(1))


def _ctpm(*args, **kw):
    return subprocess.run(command("state", *args), capture_output=True, text=True,
                          env=environment(), **kw)


def test_rekey_from_key_to_passphrase_to_plain(tmp_path):
    fresh(tmp_path / "s", key=key(1))
    (tmp_path / "k1").write_bytes(bytes([1]) * 32)
    (tmp_path / "k3").write_text((bytes([3]) * 32).hex() + "\n")
    (tmp_path / "pw").write_text("a passphrase\n")
    s = str(tmp_path / "s")
    out = _ctpm("rekey", "--state", s, "--state-key", str(tmp_path / "k3"),
                "--new-state-key", str(tmp_path / "k1"))
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert "wrong state key" in out.stderr
    out = _ctpm("rekey", "--state", s, "--state-key", str(tmp_path / "k1"),
                "--new-state-passphrase-file", str(tmp_path / "pw"))
    assert out.returncode == 0, out.stderr
    with pytest.raises(StoreError, match="encrypted with a passphrase"):
        open_tpm(tmp_path / "s", key=key(1))
    r, w = os.pipe()
    os.write(w, b"a passphrase\n")
    os.close(w)
    out = _ctpm("check", "--state", s, "--state-passphrase-fd", str(r), pass_fds=(r,))
    os.close(r)
    assert out.returncode == 0 and "intact" in out.stdout and "encrypted" in out.stdout
    out = _ctpm("rekey", "--state", s, "--state-passphrase-file", str(tmp_path / "pw"),
                "--decrypt")
    assert out.returncode == 0, out.stderr
    assert reopen_value(tmp_path / "s") == b"33333333"


def test_daemon_with_wrong_key_exits_1_with_one_line(tmp_path):
    fresh(tmp_path / "s", key=key(1))
    (tmp_path / "k").write_bytes(bytes([2]) * 32)
    out = subprocess.run(command("run", "--mssim", "127.0.0.1:0", "--state",
                                 str(tmp_path / "s"), "--state-key", str(tmp_path / "k")),
                         capture_output=True, text=True, env=environment(), timeout=30)
    assert out.returncode == 1
    assert out.stderr.startswith("ctpm: state error: wrong state key for")
    assert out.stderr.count("\n") == 1


# -- group commit in the daemon -----------------------------------------------------------------

class CountingStore(DirStore):
    """A DirStore that counts its flushes and notes how many records each one wrote."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.batches = []

    def flush(self):
        before = self.durable_seq
        super().flush()
        if self.durable_seq > before:
            self.batches.append(self.durable_seq - before)


async def test_concurrent_clients_share_flushes_and_see_their_changes(tmp_path, ctpm_config):
    """Eight mssim clients increment their own counters at once: every response comes after
    its record is durable, and one flush carries several clients' records."""
    import functools

    import trio

    from ctpm.daemon import serve
    store = CountingStore(tmp_path)
    tpm = Tpm.manufacture(Platform(store), seed=b"group")
    assert rc(tpm.execute(STARTUP_CLEAR)) == 0
    counters = [0x01500100 + i for i in range(8)]
    for index in counters:
        public = u32(index) + u16(0x000B) + u32(0x02060016) + b2(b"") + u16(8)
        assert rc(tpm.execute(cmd(0x12A, b2(b"") + b2(public), handles=[0x40000001],
                                  sessions=[pw_session()]))) == 0
    async with trio.open_nursery() as nursery:
        listening = await nursery.start(functools.partial(serve, ctpm_config, tpm=tpm))

        async def client(index):
            stream = await trio.open_tcp_stream("127.0.0.1", listening.mssim_port)
            for _ in range(25):
                command = cmd(0x134, handles=[index, index], sessions=[pw_session()])
                await stream.send_all(u32(8) + b"\0" + u32(len(command)) + command)
                got = b""
                while len(got) < 4 + 19 + 4:
                    got += await stream.receive_some(64)
                assert rc(got[4:]) == 0
            await stream.aclose()
        async with trio.open_nursery() as clients:
            for index in counters:
                clients.start_soon(client, index)
        nursery.cancel_scope.cancel()
    assert sum(store.batches) >= 200
    assert max(store.batches) > 1 and len(store.batches) < 200      # grouped
    store.close()
    again = Tpm.manufacture(Platform(DirStore(tmp_path)))
    assert rc(again.execute(STARTUP_CLEAR)) == 0
    for index in counters:
        rsp = again.execute(cmd(0x14E, u16(8) + u16(0), handles=[index, index],
                                sessions=[pw_session()]))
        assert struct.unpack(">Q", params(rsp)[2:10])[0] == 25
    again.platform.store.close()


async def test_group_commit_flushes_inline_while_quick_and_in_a_thread_when_slow(tmp_path):
    """A flush that takes longer than INLINE_FLUSH on average moves to the worker thread
    (the event loop must not wait for a slow disk); quick ones stay inline. Either way
    wait() returns only once everything is durable."""
    import threading
    import time

    from ctpm.state.groupcommit import INLINE_FLUSH, GroupCommit

    class SlowStore(DirStore):
        delay = 0.0

        def flush(self):
            self.threads.add(threading.current_thread() is threading.main_thread())
            time.sleep(self.delay)
            super().flush()

    store = SlowStore(tmp_path)
    store.threads = set()
    tpm = Tpm.manufacture(Platform(store), seed=b"inline")
    commit = GroupCommit(store)
    assert rc(tpm.execute(STARTUP_CLEAR)) == 0
    await commit.wait()
    define_and_write(tpm, [b"11111111"])
    await commit.wait()
    assert store.durable_seq == store.appended_seq
    assert commit.inline_flushes >= 1 and True in store.threads      # the first is inline
    store.delay = 4 * INLINE_FLUSH
    for v in (b"22222222", b"33333333", b"44444444", b"55555555"):
        write(tpm, v)
        await commit.wait()
        assert store.durable_seq == store.appended_seq
    assert commit.thread_flushes >= 2 and False in store.threads
    store.close()
    assert reopen_value(tmp_path) == b"55555555"


async def test_inline_flushes_share_the_event_loop_budget():
    """Past INLINE_SHARE of a window spent in inline flushes (all stores of this event
    loop), the next flushes go to worker threads until the window ends."""
    import trio

    from ctpm.state import groupcommit as gc
    assert gc._budget_left()
    gc._spend(gc.INLINE_WINDOW * gc.INLINE_SHARE)
    assert not gc._budget_left()
    await trio.sleep(gc.INLINE_WINDOW * 1.5)
    assert gc._budget_left()


def test_power_cut_tearing_a_batch_on_preallocated_blocks_is_a_torn_tail(tmp_path, caplog):
    """A flush onto preallocated blocks can persist a later page without an earlier one: the
    last record's header is zeros, its payload there, zeros after. No intact record follows,
    so it is a torn write (that record was never acknowledged), not damage."""
    path = fresh(tmp_path)
    data = bytearray(path.read_bytes())
    start, end, _ = records(data)[-1]
    data[start:start + 12] = bytes(12)
    path.write_bytes(bytes(data) + bytes(4096))
    assert reopen_value(tmp_path) == b"22222222"
    assert "torn" in caplog.text


def test_crash_after_a_compaction_that_took_unwritten_records(tmp_path):
    """A compaction takes the records not yet written into the new snapshot; a crash before
    its new journal leaves a journal that ends before the snapshot. New records must start
    a new journal, not follow the old one's last record (a sequence gap at the next start)."""
    fresh(tmp_path)
    old_journal = (tmp_path / "nv.journal").read_bytes()
    tpm = open_tpm(tmp_path)
    assert rc(tpm.execute(STARTUP_CLEAR)) == 0
    store = tpm.platform.store
    store.deferred = True
    write(tpm, b"44444444")                  # pending, not in the journal
    store._compact()                         # the snapshot has it
    store.close()
    (tmp_path / "nv.journal").write_bytes(old_journal)     # the crash: no new journal yet
    tpm = open_tpm(tmp_path)
    assert rc(tpm.execute(STARTUP_CLEAR)) == 0
    assert read(tpm) == b"44444444"
    write(tpm, b"55555555")
    tpm.platform.store.close()
    assert reopen_value(tmp_path) == b"55555555"


def test_without_rwf_dsync_records_go_through_pwrite_and_fdatasync(tmp_path, monkeypatch):
    """A kernel or file system without RWF_DSYNC (EOPNOTSUPP): the store falls back to
    pwrite + fdatasync, once and for all, and loses nothing."""
    tried, synced = [], []
    real_fdatasync = os.fdatasync

    def no_rwf(fd, buffers, offset, flags=0):
        tried.append(flags)
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(os, "pwritev", no_rwf)
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real_fdatasync(fd)))
    fresh(tmp_path, values=(b"11111111", b"22222222"))
    assert tried == [os.RWF_DSYNC]              # asked once, then remembered
    assert len(synced) >= 3                     # the define and both writes
    monkeypatch.undo()
    assert reopen_value(tmp_path) == b"22222222"


def test_records_are_written_with_rwf_dsync_where_the_kernel_has_it(tmp_path, monkeypatch):
    """One system call per flush (pwritev with RWF_DSYNC), no separate fdatasync."""
    calls = []
    real = os.pwritev
    monkeypatch.setattr(os, "pwritev", lambda *a: (calls.append(a[3]), real(*a))[1])
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append("fdatasync"))
    fresh(tmp_path, values=(b"11111111", b"22222222"))
    monkeypatch.undo()
    assert calls and set(calls) == {os.RWF_DSYNC}
    assert reopen_value(tmp_path) == b"22222222"


def test_the_journal_replays_to_what_the_engine_held_through_in_place_changes(tmp_path):
    """The store's copy of the NV (what the next diff starts from) shares nothing with the
    engine's: values changed in place after a save (a nested dict, a list, a tuple become
    list) still make records, and a replay gives exactly the JSON of the last NV saved."""
    import random
    rng = random.Random(14)
    store = DirStore(tmp_path)
    assert store.load_nv() is None
    nv = {"a": 1, "t": {"x": {"k": "v"}, "y": [1, 2]}, "l": [1, {"z": 2}], "s": "text"}
    store.save_nv(nv)
    for i in range(200):
        op = rng.randrange(7)
        if op == 0:
            nv["t"].setdefault("x", {})["k"] = f"v{i}"  # an entry changed in place
        elif op == 1:
            nv["t"].setdefault("y", []).append(i)       # a list inside an entry, in place
        elif op == 2:
            nv["l"][1]["z"] = i                          # inside a top-level list
        elif op == 3:
            nv["t"][f"n{i % 5}"] = (i, "tuple")           # a tuple: JSON keeps a list
        elif op == 4:
            nv["t"].pop(rng.choice(sorted(nv["t"])), None)
        elif op == 5:
            nv[f"top{i % 3}"] = {"deep": {"er": i}}
        else:
            nv.pop(f"top{rng.randrange(3)}", None)
        store.save_nv(nv)
        assert store._shadow == json.loads(json.dumps(nv))
    store.close()
    again = DirStore(tmp_path)
    assert again.load_nv() == json.loads(json.dumps(nv))
    again.close()
