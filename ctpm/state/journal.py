"""A TPM's NV in a directory: a snapshot plus an append-only journal of checksummed records.

Why a journal: the engine changes a few bytes of NV per command (a counter, one index), and
rewriting, syncing and renaming the whole image for each costs several disk flushes. Here
each change is one small record - the difference between the NV dict as last written and
as now, two levels deep (top-level keys, and the entries of dict values such as
`nv_indices` or `persistent`) - appended to `nv.journal`; one fdatasync makes a whole batch
durable (group commit, see `GroupCommit`). When the journal grows past `compact_bytes`,
the whole NV becomes a new `nv.snap` and the journal starts over (compaction).

Files (all owner-only):
  lock        held with a POSIX lock (fcntl) while a store is open: a second daemon on the
              same directory is refused with one line naming the holder's pid
  nv.snap     MAGIC_SNAP, header, one record: the whole NV dict at sequence number S
  nv.journal  MAGIC_JOURNAL, header, records S+1, S+2, ... (each a diff)
  nv.bin      the format before the journal; migrated (and renamed nv.bin.migrated) on open

Header: u32 length | JSON | 8-byte BLAKE2b of the JSON. It names the state (a random id,
the same in both files), the snapshot's sequence number, and the encryption, if any.
Record: u32 length | u64 sequence number | payload | 8-byte BLAKE2b of the three. With a
key (`keys.StateKey`), the payload is nonce | AES-256-GCM(JSON) with the state id, the
file kind and the sequence number as associated data: a record moved to another position,
another file or another state does not decrypt.

Damage: the last record of the journal, if incomplete or failing its checksum (followed by
no intact record: zeros, or the rest of a batch a power cut tore), is a torn write and is
dropped (a warning says so); any other damage - a bad record followed by a good one, a
sequence gap, a bad snapshot or header, a record that fails authentication - is a
`StoreError` (one line) and the daemon does not start: a TPM is never silently replaced by
a fresh one. A bit flip in the very last record cannot be told from a torn write and loses
that record, as it would a torn one. Replacing both files with an older consistent pair (a
rollback) is detected only with an anchor outside the directory (state/anchor.py).
"""
import errno
import fcntl
import hashlib
import json
import logging
import os
import struct
import threading
import time

from . import anchor as anchors
from .errors import StoreError

log = logging.getLogger("ctpm.state")

MAGIC_SNAP = b"CTPMSNP1"
MAGIC_JOURNAL = b"CTPMJRN1"
SNAP, JOURNAL, LEGACY, LOCK = "nv.snap", "nv.journal", "nv.bin", "lock"
_REC = struct.Struct(">IQ")
_SUM = 8
MAX_RECORD = 64 << 20
COMPACT_BYTES = 1 << 20
ANCHOR_INTERVAL = 10.0         # seconds: a changing state moves its generation this often
PREALLOCATE = 1 << 20          # the journal grows by up to this much at a time
_ZERO_HEAD = bytes(_REC.size)
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode     # json.dumps builds one per call


def _checksum(*parts) -> bytes:
    h = hashlib.blake2b(digest_size=_SUM)
    for p in parts:
        h.update(p)
    return h.digest()


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _pwrite_all(fd, data, offset):
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _pwrite_dsync(fd, data, offset):
    """pwrite with RWF_DSYNC: written and on disk (as pwrite + fdatasync) in one system
    call; OSError EOPNOTSUPP/EINVAL where the kernel or file system has no RWF_DSYNC
    (nothing is written then)."""
    view = memoryview(data)
    while view:
        n = os.pwritev(fd, [view], offset, os.RWF_DSYNC)
        view, offset = view[n:], offset + n


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def diff(old: dict, new: dict):
    """Operations turning `old` into `new`: ([[path, value], ...], [path, ...]), paths of one
    or two keys (dict values are compared entry by entry)."""
    sets, dels = [], []
    old_get = old.get
    for k, v in new.items():
        o = old_get(k, _MISSING)
        if o == v and type(o) is type(v):       # most keys, most of the time: one C compare
            continue
        if o is _MISSING:
            sets.append([[k], v])
        elif type(v) is dict and type(o) is dict:
            for k2, v2 in v.items():
                if o.get(k2, _MISSING) != v2:
                    sets.append([[k, k2], v2])
            dels.extend([k, k2] for k2 in o if k2 not in v)
        else:
            sets.append([[k], v])
    if not old.keys() <= new.keys():
        dels.extend([k] for k in old if k not in new)
    return sets, dels


def _copy(value):
    """A JSON value as json.loads(json.dumps(value)) would give it (dicts and lists copied,
    tuples as lists), without the text: the shadow must share nothing the engine changes
    in place."""
    t = type(value)
    if t is dict:
        if not all(type(k) is str for k in value):
            return json.loads(json.dumps(value))        # keys json would turn into text
        return {k: _copy(v) for k, v in value.items()}
    if t is list or t is tuple:
        return [_copy(v) for v in value]
    return value


def apply(target: dict, ops: dict):
    """Apply a decoded record payload ({"s": sets, "d": dels}) to `target` in place."""
    for path, value in ops["s"]:
        if len(path) == 1:
            target[path[0]] = value
        else:
            target[path[0]][path[1]] = value
    for path in ops["d"]:
        if len(path) == 1:
            del target[path[0]]
        else:
            del target[path[0]][path[1]]


_MISSING = object()


class DirStore:
    """NV in a state directory (see the module docstring).

    Synchronous by default: `save_nv` returns once the record is on disk. A daemon sets
    `deferred = True` and makes records durable in batches with `GroupCommit` before it
    answers. `key` (a `keys.StateKey`) encrypts; it must be given for an encrypted state.
    """

    def __init__(self, path, *, key=None, compact_bytes=COMPACT_BYTES, durability="fdatasync",
                 lock=True, anchor=None, anchor_interval=ANCHOR_INTERVAL):
        self.path = os.path.abspath(path)
        self.key = key
        self.anchor = anchor               # the rollback anchor's path (state/anchor.py)
        self.anchor_interval = anchor_interval
        self.generation = 0                # how far the state has come (state/anchor.py)
        self._anchored_seq = 0             # appended_seq when the generation last moved
        self._anchored_at = 0.0
        self.compact_bytes = compact_bytes
        self.sync = durability == "fdatasync"
        self._rwf_dsync = hasattr(os, "RWF_DSYNC")     # until the kernel says otherwise
        self.deferred = False
        self._mutex = threading.Lock()     # _pending between the event loop and the flusher
        self._pending = []                 # encoded records not yet written
        self._pending_bytes = 0
        self._lock_fd = self._journal_fd = None
        self.state_id = None
        self.appended_seq = self.durable_seq = 0
        self._shadow = None                # the NV dict as the files hold it (plus pending)
        self._journal_bytes = 0            # where the next record goes (the journal's end)
        self._journal_alloc = 0            # the journal file's size (zeros past the end)
        self.failed = None
        if not os.path.isdir(self.path):
            try:
                os.makedirs(self.path, mode=0o700, exist_ok=True)
            except OSError as e:
                raise StoreError(f"state directory {self.path}: {e.strerror}") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise StoreError(f"state directory {self.path} is not writable")
        if anchor is not None and os.path.dirname(os.path.realpath(anchor)) == \
                os.path.realpath(self.path):
            raise StoreError(f"state anchor {anchor} is inside the state directory: it must "
                             f"be kept elsewhere (a copy of the directory would bring it "
                             f"back too)")
        if lock:
            self._take_lock()

    def _file(self, name):
        return os.path.join(self.path, name)

    def _take_lock(self):
        """A POSIX record lock on `lock`: another process holding it means another daemon.
        (POSIX locks belong to the process: a second store on the same directory in the
        same process is not refused, and closing it releases the first one's lock too.)"""
        name = self._file(LOCK)
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise StoreError(f"cannot open {name}: {e.strerror}") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = ""
            try:
                holder = os.pread(fd, 32, 0).decode().strip()
            except (OSError, UnicodeDecodeError):
                pass
            os.close(fd)
            if e.errno in (errno.EACCES, errno.EAGAIN):
                who = f" (pid {holder})" if holder.isdigit() else ""
                raise StoreError(f"state directory {self.path} is in use by another "
                                 f"process{who}") from None
            raise StoreError(f"cannot lock {name}: {e.strerror}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def describe(self):
        return self.path

    # -- loading -------------------------------------------------------------------------

    def load_nv(self):
        """The NV dict, or None for a new directory. Replays the journal, drops a torn tail,
        migrates nv.bin. StoreError (one line) for anything else (and the lock is freed)."""
        try:
            return self._load_nv()
        except StoreError:
            self.close()
            raise

    def _load_nv(self):
        snap = self._file(SNAP)
        if not os.path.exists(snap):
            if os.path.exists(self._file(JOURNAL)):
                raise StoreError(f"TPM state in {self.path} is damaged: {JOURNAL} without "
                                 f"{SNAP}")
            if os.path.exists(self._file(LEGACY)):
                return self._migrate()
            if self.anchor is not None and anchors.read(self.anchor) is not None:
                raise StoreError(f"{self.path} holds no TPM state, but its anchor "
                                 f"{self.anchor} says it did: deleted? (remove the anchor "
                                 f"to start a new TPM)")
            return None
        header, payload, seq = self._read_snapshot(snap)
        try:
            self.state_id = bytes.fromhex(header["state_id"])
        except (KeyError, TypeError, ValueError):
            raise StoreError(f"TPM state file {snap} is damaged (bad header)") from None
        cipher = header.get("cipher")
        if self.key is None and cipher:
            raise StoreError(f"TPM state in {self.path} is encrypted: give its key "
                             f"(--state-key, --state-key-fd or --state-passphrase-fd)")
        if self.key is not None:
            if not cipher:
                raise StoreError(f"TPM state in {self.path} is not encrypted, but a state key "
                                 f"was given (encrypt it with `ctpm state rekey`)")
            self.key.unlock(cipher, self.path)
        generation = header.get("generation")
        if generation is not None and not isinstance(generation, int):
            raise StoreError(f"TPM state file {snap} is damaged (bad header)")
        nv = self._decode(payload, b"S", seq, SNAP, generation)
        self.generation = generation or 0
        seq = self._replay(nv, seq)
        self._shadow = nv
        self.appended_seq = self.durable_seq = seq
        if self.anchor is not None:
            anchors.check(self.anchor, self.path, self.state_id.hex(), self.generation)
            self.advance_generation()
        return json.loads(json.dumps(nv))

    def _read_header(self, data, magic, name):
        where = f"{self._file(name)}"
        if len(data) < len(magic) + 4 or data[:len(magic)] != magic:
            raise StoreError(f"TPM state file {where} is damaged (not a ctpm state file)")
        pos = len(magic)
        (n,) = struct.unpack_from(">I", data, pos)
        body = data[pos + 4:pos + 4 + n]
        total = pos + 4 + n + _SUM
        if len(body) != n or data[pos + 4 + n:total] != _checksum(body) or total > len(data):
            raise StoreError(f"TPM state file {where} is damaged (bad header)")
        try:
            header = json.loads(body)
        except ValueError:
            raise StoreError(f"TPM state file {where} is damaged (bad header)") from None
        if header.get("version") != 1:
            raise StoreError(f"TPM state file {where} has an unknown version")
        return header, total

    def _read_snapshot(self, name):
        try:
            with open(name, "rb") as f:
                data = f.read()
        except OSError as e:
            raise StoreError(f"cannot read {name}: {e.strerror}") from None
        header, pos = self._read_header(data, MAGIC_SNAP, SNAP)
        rec = _parse_record(data, pos)
        if rec is None or rec[2] != len(data):
            raise StoreError(f"TPM state file {name} is damaged (bad snapshot record)")
        payload, seq, _end = rec
        if seq != header.get("seq"):
            raise StoreError(f"TPM state file {name} is damaged (sequence number mismatch)")
        return header, payload, seq

    def _decode(self, payload, kind, seq, name, generation=None):
        if self.key is not None:
            payload = self.key.open(payload, self._aad(kind, seq, generation), self.path, name,
                                    seq)
        try:
            return json.loads(payload)
        except ValueError:
            raise StoreError(f"TPM state file {self._file(name)} is damaged (record {seq} "
                             f"is not valid)") from None

    def _aad(self, kind, seq, generation=None):
        """The record's place: state, file kind, sequence number (and a snapshot's
        generation, so that its header cannot be set back under a key)."""
        aad = b"ctpm-nv\0" + self.state_id + kind + seq.to_bytes(8, "big")
        return aad if generation is None else aad + b"g" + generation.to_bytes(8, "big")

    def _replay(self, nv, seq):
        """Apply the journal's records after `seq`; returns the last sequence number.
        Truncates a torn tail so that new records follow the last whole one."""
        name = self._file(JOURNAL)
        try:
            with open(name, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            self._new_journal(seq)
            return seq
        except OSError as e:
            raise StoreError(f"cannot read {name}: {e.strerror}") from None
        if len(data) < len(MAGIC_JOURNAL) + 4 + _SUM and not data.strip(b"\0"):
            log.warning("%s: empty journal (torn at creation); starting a new one", name)
            self._new_journal(seq)
            return seq
        header, pos = self._read_header(data, MAGIC_JOURNAL, JOURNAL)
        if header.get("state_id") != self.state_id.hex():
            raise StoreError(f"TPM state file {name} belongs to another state")
        base = header.get("seq")
        if not isinstance(base, int) or base > seq:
            raise StoreError(f"TPM state file {name} is damaged (journal starts after the "
                             f"snapshot)")
        expected = base + 1
        while pos < len(data):
            if data[pos:pos + _REC.size] == _ZERO_HEAD and not data[pos:].strip(b"\0"):
                break                   # the preallocated rest of the file
            rec = _parse_record(data, pos)
            if rec is None:
                if _torn(data, pos):
                    log.warning("%s: dropping a torn record at offset %d (%d bytes)", name,
                                pos, len(data) - pos)
                    self._truncate(name, pos)
                    break
                raise StoreError(f"TPM state file {name} is damaged (bad record at offset "
                                 f"{pos})")
            payload, rseq, end = rec
            if rseq != expected:
                raise StoreError(f"TPM state file {name} is damaged (record {rseq} where "
                                 f"{expected} belongs)")
            expected += 1
            if rseq > seq:
                if rseq != seq + 1:
                    raise StoreError(f"TPM state file {name} is damaged (records "
                                     f"{seq + 1}..{rseq - 1} missing)")
                try:
                    ops = self._decode(payload, b"J", rseq, JOURNAL)
                    if "g" in ops:
                        if not isinstance(ops["g"], int) or ops["g"] <= self.generation:
                            raise ValueError("generation")
                        self.generation = ops["g"]
                    else:
                        apply(nv, ops)
                except (KeyError, TypeError, ValueError, IndexError):
                    raise StoreError(f"TPM state file {name} is damaged (record {rseq} does "
                                     f"not apply)") from None
                seq = rseq
            pos = end
        if expected - 1 < seq:
            # The snapshot is newer than the journal's last record: a compaction that took
            # records not yet written stopped before its new journal. Everything here is
            # in the snapshot; the next record (seq + 1) must not follow these.
            log.info("%s: older than %s (a compaction was interrupted); starting a new one",
                     name, SNAP)
            self._new_journal(seq)
            return seq
        self._open_journal(pos)
        return seq

    def _truncate(self, name, size):
        fd = os.open(name, os.O_WRONLY)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _migrate(self):
        """nv.bin (checksummed JSON image, one file) becomes a snapshot and an empty journal."""
        legacy = self._file(LEGACY)
        try:
            with open(legacy, "rb") as f:
                blob = f.read()
        except OSError as e:
            raise StoreError(f"cannot read {legacy}: {e.strerror}") from None
        try:
            outer = json.loads(blob)
            body = outer["body"]
            if hashlib.sha256(body.encode()).hexdigest() != outer["sha256"]:
                raise ValueError("checksum mismatch")
            nv = json.loads(body)
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError(f"TPM state in {legacy} is corrupt ({e})") from None
        self._create(nv)
        os.replace(legacy, legacy + ".migrated")
        _fsync_dir(self.path)
        log.info("migrated %s to a snapshot and journal", legacy)
        return json.loads(json.dumps(nv))

    # -- writing -------------------------------------------------------------------------

    def _create(self, nv):
        """A new state: id, snapshot at sequence 0, empty journal."""
        if self.anchor is not None and anchors.read(self.anchor) is not None:
            raise StoreError(f"state anchor {self.anchor} belongs to a TPM state that "
                             f"{self.path} no longer holds (remove it to start a new TPM)")
        self.state_id = os.urandom(16)
        self._shadow = json.loads(json.dumps(nv))
        self.appended_seq = self.durable_seq = 0
        self.generation = 1
        self._write_snapshot(self._snapshot_bytes(0))
        self._new_journal(0)
        if self.anchor is not None:
            self._write_anchor()

    def _header(self, magic, seq):
        h = {"version": 1, "state_id": self.state_id.hex(), "seq": seq,
             "cipher": self.key.header() if self.key is not None else None}
        if magic == MAGIC_SNAP:
            h["generation"] = self.generation
        body = json.dumps(h, sort_keys=True).encode()
        return magic + struct.pack(">I", len(body)) + body + _checksum(body)

    def _record(self, kind, seq, plaintext: bytes, generation=None) -> bytes:
        payload = plaintext if self.key is None else self.key.seal(
            plaintext, self._aad(kind, seq, generation))
        head = _REC.pack(len(payload), seq)
        return head + payload + _checksum(head, payload)

    def _snapshot_bytes(self, seq) -> bytes:
        body = json.dumps(self._shadow, separators=(",", ":")).encode()
        return self._header(MAGIC_SNAP, seq) + self._record(b"S", seq, body, self.generation)

    def _write_snapshot(self, data):
        tmp = self._file(SNAP + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._file(SNAP))
        _fsync_dir(self.path)

    def _new_journal(self, seq):
        tmp = self._file(JOURNAL + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            head = self._header(MAGIC_JOURNAL, seq)
            _write_all(fd, head)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._file(JOURNAL))
        _fsync_dir(self.path)
        self._open_journal(len(head))

    def _open_journal(self, size):
        if self._journal_fd is not None:
            os.close(self._journal_fd)
        self._journal_fd = os.open(self._file(JOURNAL), os.O_WRONLY | os.O_CLOEXEC)
        self._journal_bytes = size
        self._journal_alloc = os.fstat(self._journal_fd).st_size
        self._preallocate(size)
        if self._journal_alloc > size:
            os.fsync(self._journal_fd)      # the file's new size, once, not per record

    def _preallocate(self, need):
        """Make the file at least `need` bytes, rounded up to a chunk, so that records are
        written over allocated blocks: then an fdatasync has no file size or block map to
        write, only the record (and no per-record metadata journal commit on ext4/xfs).
        Zeros past the last record mark the end (see `_replay`)."""
        if need <= self._journal_alloc:
            return
        chunk = max(4096, min(self.compact_bytes, PREALLOCATE) + 4095 & ~4095)
        size = -(-need // chunk) * chunk
        try:
            os.posix_fallocate(self._journal_fd, self._journal_alloc,
                               size - self._journal_alloc)
        except OSError:
            return                          # then records extend the file, as without
        self._journal_alloc = size

    def save(self, blob):
        raise TypeError("DirStore keeps an NV dict: the engine calls save_nv")

    def save_nv(self, nv: dict):
        """Record the change from the last saved NV to `nv` (nothing if none). Durable on
        return unless `deferred` (then `flush`, from `GroupCommit`, makes it so)."""
        if self._shadow is None:
            self._create(nv)
            return
        sets, dels = diff(self._shadow, nv)
        if not sets and not dels:
            return
        body = _ENCODE({"s": sets, "d": dels}).encode()
        record = self._record(b"J", self.appended_seq + 1, body)
        copied = {"s": [[path, _copy(value)] for path, value in sets], "d": dels}
        with self._mutex:       # a compaction in the flusher thread reads the shadow
            apply(self._shadow, copied)                 # copies, not nv's own objects
            self.appended_seq += 1
            self._pending.append(record)
            self._pending_bytes += len(record)
        if not self.deferred:
            self.flush()

    def needs_compaction(self) -> bool:
        return self._journal_bytes + self._pending_bytes > self.compact_bytes

    def needs_slow_flush(self) -> bool:
        """The next flush does more than write and fdatasync records (a compaction, or the
        anchor's turn): it belongs in a worker thread."""
        return self.needs_compaction() or self._anchor_due()

    def _anchor_due(self) -> bool:
        return (self.anchor is not None and self.appended_seq > self._anchored_seq
                and time.monotonic() - self._anchored_at >= self.anchor_interval)

    def advance_generation(self):
        """A "g" record with the next generation, fdatasync'ed whatever the durability,
        then the anchor: the state is never behind its anchor."""
        with self._mutex:
            self.generation += 1
            body = json.dumps({"g": self.generation}).encode()
            record = self._record(b"J", self.appended_seq + 1, body)
            self.appended_seq += 1
            self._pending.append(record)
            self._pending_bytes += len(record)
        self._write_pending(sync=True)
        self._write_anchor()

    def bind_anchor(self, path):
        """Make `path` the anchor of this (loaded) state, at its next generation."""
        self.anchor = path
        self.advance_generation()

    def _write_anchor(self):
        anchors.write(self.anchor, self.state_id.hex(), self.generation)
        self._anchored_seq = self.appended_seq
        self._anchored_at = time.monotonic()

    def flush(self):
        """Write the pending records and fdatasync (in a worker thread, for a daemon). On an
        error the records stay pending and the next flush tries again."""
        if self.failed:
            raise StoreError(self.failed)
        if self.needs_compaction():
            return self._compact()
        self._write_pending(self.sync)
        if self._anchor_due():
            self.advance_generation()

    def _write_pending(self, sync):
        with self._mutex:
            batch, self._pending = self._pending, []
            nbytes, self._pending_bytes = self._pending_bytes, 0
            target = self.appended_seq
        if not batch:
            return
        try:
            self._preallocate(self._journal_bytes + nbytes)
            data = batch[0] if len(batch) == 1 else b"".join(batch)
            if not (sync and self._dsync_write(data)):
                _pwrite_all(self._journal_fd, data, self._journal_bytes)
                if sync:
                    os.fdatasync(self._journal_fd)
        except OSError as e:
            # a partly written batch would leave a record that later ones could not follow
            self.failed = (f"cannot write {self._file(JOURNAL)}: {e.strerror}; the TPM "
                           f"state is kept as it was before this change")
            raise StoreError(self.failed) from None
        self._journal_bytes += nbytes
        self.durable_seq = target

    def _dsync_write(self, data) -> bool:
        """`data` at the journal's end with RWF_DSYNC: one system call instead of pwrite +
        fdatasync, the same guarantee. False if the kernel or file system has no RWF_DSYNC
        (remembered; rewriting from the start then is harmless)."""
        if not self._rwf_dsync:
            return False
        try:
            _pwrite_dsync(self._journal_fd, data, self._journal_bytes)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            self._rwf_dsync = False
            return False
        return True

    def _compact(self):
        """Everything so far (pending records included) as a new snapshot, then an empty
        journal. A crash in between leaves the new snapshot and the old journal, whose
        records it already contains (replay skips them)."""
        with self._mutex:
            self._pending, self._pending_bytes = [], 0
            seq = self.appended_seq
            if self.anchor is not None:
                self.generation += 1
            data = self._snapshot_bytes(seq)
        self._write_snapshot(data)
        self._new_journal(seq)
        self.durable_seq = seq
        if self.anchor is not None:
            self._write_anchor()

    def rekey(self, key):
        """Everything as a new snapshot under `key` (None: unencrypted), a new journal."""
        self.flush()
        self.key = key
        self._compact()

    def close(self):
        """Write what is pending, release the lock."""
        try:
            if self._pending and not self.failed:
                self.flush()
            if self._journal_fd is not None and self._journal_alloc > self._journal_bytes \
                    and not self.failed:
                os.ftruncate(self._journal_fd, self._journal_bytes)   # a tidy file
        finally:
            for fd in (self._journal_fd, self._lock_fd):
                if fd is not None:
                    os.close(fd)
            self._journal_fd = self._lock_fd = None


def _parse_record(data, pos):
    """(payload, seq, end) of the record at `pos`, or None if incomplete or not intact."""
    if pos + _REC.size > len(data):
        return None
    n, seq = _REC.unpack_from(data, pos)
    end = pos + _REC.size + n + _SUM
    if n > MAX_RECORD or end > len(data):
        return None
    head = data[pos:pos + _REC.size]
    payload = data[pos + _REC.size:end - _SUM]
    if data[end - _SUM:end] != _checksum(head, payload):
        return None
    return payload, seq, end


def _torn(data, pos) -> bool:
    """A bad record at `pos` is a torn write if no intact record follows it anywhere: its
    length runs past the end, it ends the file, only zeros follow, or bytes that hold no
    record. The last covers a power cut during a flush onto preallocated blocks, which
    may persist a later page of the batch without an earlier one (a record's header
    zero, its payload there). A bad record with an intact one after it is damage."""
    if pos + _REC.size > len(data) or not data[pos:].strip(b"\0"):
        return True
    n, _ = _REC.unpack_from(data, pos)
    end = pos + _REC.size + n + _SUM
    if end >= len(data) or not data[end:].strip(b"\0"):
        return True
    stop = len(data.rstrip(b"\0"))
    return not any(_parse_record(data, p) is not None for p in range(pos + 1, stop))
