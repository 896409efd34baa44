"""Whole-directory rollback: a state directory put back to an older copy of itself is refused
when an anchor outside it remembers a later generation (ctpm/state/anchor.py), and the limits
stated there hold (a crash between state and anchor is not a rollback).
TPMs here are the real engine on a `DirStore`; each change is a real NV_Write.
"""
import json
import os
import shutil
import struct
import subprocess

import pytest

from ctpm.state import anchor as anchors
from ctpm.state import journal
from ctpm.state.store import DirStore, StoreError
from ctpm.testing.process import command, environment

from .test_state_store import (STARTUP_CLEAR, define_and_write, fresh, key, open_tpm,
                               reopen_value, rc, write)


def run_writes(path, values, **kw):
    tpm = open_tpm(path, **kw)
    assert rc(tpm.execute(STARTUP_CLEAR)) == 0
    for v in values:
        write(tpm, v)
    tpm.platform.store.close()


def test_directory_restored_from_an_older_copy_is_refused(tmp_path):
    state, a = tmp_path / "s", str(tmp_path / "anchor")
    fresh(state, anchor=a)
    shutil.copytree(state, tmp_path / "old")
    run_writes(state, [b"44444444"], anchor=a)        # a start: the generation moves on
    assert reopen_value(state, anchor=a) == b"44444444"
    shutil.rmtree(state)
    shutil.copytree(tmp_path / "old", state)
    with pytest.raises(StoreError, match=r"older than its anchor .* \(generation \d+ < \d+\): "
                                         r"rolled back"):
        open_tpm(state, anchor=a)
    assert reopen_value(state) == b"33333333"          # without the anchor: not noticed


def test_copy_taken_while_running_is_refused_once_the_anchor_moved(tmp_path):
    """A copy of a running TPM's directory: changes after the copy move the generation
    (here at every flush: anchor_interval=0), so putting the copy back is noticed."""
    state, a = tmp_path / "s", str(tmp_path / "anchor")
    tpm = open_tpm(state, anchor=a, anchor_interval=0)
    tpm.execute(STARTUP_CLEAR)
    define_and_write(tpm, [b"11111111"])
    shutil.copytree(state, tmp_path / "old", ignore=shutil.ignore_patterns("lock"))
    write(tpm, b"22222222")
    tpm.platform.store.close()
    shutil.rmtree(state)
    shutil.copytree(tmp_path / "old", state)
    with pytest.raises(StoreError, match="older than its anchor"):
        open_tpm(state, anchor=a)


def test_changes_inside_the_interval_are_the_stated_limit(tmp_path):
    """The honest limit: with the default interval, a copy taken after the last move of the
    generation and put back before the next one is not noticed."""
    state, a = tmp_path / "s", str(tmp_path / "anchor")
    tpm = open_tpm(state, anchor=a)
    tpm.execute(STARTUP_CLEAR)
    define_and_write(tpm, [b"11111111"])
    shutil.copytree(state, tmp_path / "old", ignore=shutil.ignore_patterns("lock"))
    write(tpm, b"22222222")
    tpm.platform.store.close()
    shutil.rmtree(state)
    shutil.copytree(tmp_path / "old", state)
    assert reopen_value(state, anchor=a) == b"11111111"


def test_compaction_moves_the_generation(tmp_path):
    state, a = tmp_path / "s", str(tmp_path / "anchor")
    tpm = open_tpm(state, anchor=a, compact_bytes=4096)
    tpm.execute(STARTUP_CLEAR)
    define_and_write(tpm, [b"00000000"])
    shutil.copytree(state, tmp_path / "old", ignore=shutil.ignore_patterns("lock"))
    before = anchors.read(a)[1]
    define = tpm.platform.store.generation
    for i in range(60):
        write(tpm, b"%08d" % i)
    assert tpm.platform.store.generation > define and anchors.read(a)[1] > before
    tpm.platform.store.close()
    shutil.rmtree(state)
    shutil.copytree(tmp_path / "old", state)
    with pytest.raises(StoreError, match="older than its anchor"):
        open_tpm(state, anchor=a)


def test_crash_between_the_generation_record_and_the_anchor_is_not_a_rollback(tmp_path,
                                                                            monkeypatch):
    state, a = tmp_path / "s", str(tmp_path / "anchor")
    fresh(state, anchor=a)
    g = anchors.read(a)[1]

    def lost(*args):
        raise StoreError("power cut")
    monkeypatch.setattr(anchors, "write", lost)
    with pytest.raises(StoreError, match="power cut"):
        DirStore(state, anchor=a).load_nv()       # the state moved to g+1, the anchor did not
    monkeypatch.undo()
    assert anchors.read(a)[1] == g
    assert reopen_value(state, anchor=a) == b"33333333"
    assert anchors.read(a)[1] == g + 2


def test_anchor_missing_damaged_foreign_behind_or_inside_are_one_line_errors(tmp_path):
    state, a = tmp_path / "s", str(tmp_path / "anchor")
    fresh(state, anchor=a)
    good = open(a, "rb").read()
    os.unlink(a)
    with pytest.raises(StoreError, match=r"anchor .* does not exist, but .* holds a TPM state "
                                         r"\(bind them with `ctpm state anchor"):
        open_tpm(state, anchor=a)
    open(a, "wb").write(good.replace(b'"generation": ', b'"generation": 1'))
    with pytest.raises(StoreError, match="anchor .* is damaged"):
        open_tpm(state, anchor=a)
    fresh(tmp_path / "other", anchor=str(tmp_path / "other-anchor"))
    shutil.copy(tmp_path / "other-anchor", a)
    with pytest.raises(StoreError, match="belongs to another TPM state"):
        open_tpm(state, anchor=a)
    open(a, "wb").write(good)
    run_writes(state, [], anchor=a)
    run_writes(state, [], anchor=a)
    open(a, "wb").write(good)               # the anchor put back two generations
    with pytest.raises(StoreError, match="anchor .* is older than the TPM state"):
        open_tpm(state, anchor=a)
    with pytest.raises(StoreError, match="inside the state directory"):
        DirStore(state, anchor=str(state / "anchor"))


def test_deleted_directory_is_not_replaced_by_a_fresh_tpm(tmp_path):
    state, a = tmp_path / "s", str(tmp_path / "anchor")
    fresh(state, anchor=a)
    shutil.rmtree(state)
    with pytest.raises(StoreError, match="holds no TPM state, but its anchor .* says it did"):
        open_tpm(state, anchor=a)


def test_generation_in_an_encrypted_snapshot_header_cannot_be_set_back(tmp_path):
    """Under a key the snapshot's generation is in the AEAD's associated data: a header
    edited to an older generation (checksum recomputed) no longer decrypts."""
    state, a = tmp_path / "s", str(tmp_path / "anchor")
    fresh(state, key=key(1), anchor=a)
    snap = state / "nv.snap"
    data = snap.read_bytes()
    (n,) = struct.unpack_from(">I", data, 8)
    header = json.loads(data[12:12 + n])
    assert header["generation"] >= 1
    header["generation"] -= 1
    body = json.dumps(header, sort_keys=True).encode()
    snap.write_bytes(data[:8] + struct.pack(">I", len(body)) + body + journal._checksum(body)
                     + data[12 + n + 8:])
    with pytest.raises(StoreError, match="fails authentication"):
        open_tpm(state, key=key(1))


def _ctpm(*args):
    return subprocess.run(command(*args), capture_output=True, text=True, env=environment(),
                          timeout=60)


def test_daemon_refuses_a_rolled_back_state_and_state_anchor_rebinds(tmp_path):
    state, a = tmp_path / "s", str(tmp_path / "anchor")
    fresh(state)                                       # made without an anchor
    out = _ctpm("state", "anchor", "--state", str(state), "--state-anchor", a)
    assert out.returncode == 0 and "anchors" in out.stdout, out.stderr
    shutil.copytree(state, tmp_path / "old")
    run_writes(state, [b"44444444"], anchor=a)
    shutil.rmtree(state)
    shutil.copytree(tmp_path / "old", state)
    out = _ctpm("run", "--mssim", "127.0.0.1:0", "--state", str(state), "--state-anchor", a)
    assert out.returncode == 1
    assert out.stderr.startswith("ctpm: state error: TPM state in ") and "older than its " \
        "anchor" in out.stderr
    assert out.stderr.count("\n") == 1
    out = _ctpm("state", "check", "--state", str(state), "--state-anchor", a)
    assert out.returncode == 1 and "older than its anchor" in out.stderr
    # a deliberate restore: the operator binds the anchor to it
    out = _ctpm("state", "anchor", "--state", str(state), "--state-anchor", a)
    assert out.returncode == 0, out.stderr
    assert reopen_value(state, anchor=a) == b"33333333"


def test_config_needs_a_state_directory_for_the_anchor(tmp_path):
    out = _ctpm("run", "--mssim", "127.0.0.1:0", "--state-anchor", str(tmp_path / "a"))
    assert out.returncode == 2
    assert out.stderr == "ctpm: config error: --state-anchor: an anchor needs a state " \
                         "directory (--state)\n"
