"""The engine in memory: life cycle, persistence, error codes, robustness."""
import hashlib
import os
import random
import struct

import pytest

from ctpm.engine.tpm import Tpm
from ctpm.platform import Platform
from ctpm.state.store import DirStore, StoreError
from ctpm.wire.constants import TPM_RC
from tests.tpmcmd import (SHUTDOWN_CLEAR, SHUTDOWN_STATE, STARTUP_CLEAR, STARTUP_STATE, b2, cmd,
                          params, pcr_select, pw_session, rc, tag, u16, u32)

SHA1, SHA256 = 0x04, 0x0B
PW = [pw_session()]


def extend(pcr, digest=b"\x01" * 32, alg=SHA256, sessions=PW):
    return cmd(0x182, u32(1) + u16(alg) + digest, handles=[pcr], sessions=sessions)


def read_pcr(tpm, pcr, alg=SHA256, locality=0):
    r = tpm.execute(cmd(0x17E, pcr_select((alg, [pcr]))), locality)
    assert rc(r) == 0
    body = params(r)
    n = struct.unpack(">H", body[-(2 + (32 if alg == SHA256 else 20)):][:2])[0]
    return body[-n:]


def read_clock(tpm):
    r = tpm.execute(cmd(0x181))
    assert rc(r) == 0
    time, clock, resets, restarts, safe = struct.unpack(">QQIIB", params(r))
    return dict(time=time, clock=clock, reset_count=resets, restart_count=restarts, safe=safe)


@pytest.fixture
def tpm():
    t = Tpm.manufacture(seed=b"engine-tests")
    assert rc(t.execute(STARTUP_CLEAR)) == 0
    return t


# --- header and framing errors (below what a socket peer can even frame) ------------------

@pytest.mark.parametrize("data,code", [
    (b"", TPM_RC.INSUFFICIENT),
    (b"\x80", TPM_RC.INSUFFICIENT),
    (b"\x80\x01", TPM_RC.INSUFFICIENT),
    (b"\x80\x01\x00\x00\x00", TPM_RC.INSUFFICIENT),
    (b"\x81\x01", TPM_RC.BAD_TAG),
    (b"\x80\x01\x00\x00\x00\x08\x00\x00", TPM_RC.INSUFFICIENT),
    (b"\x80\x01\x00\x00\x00\x09\x00\x00", TPM_RC.COMMAND_SIZE),
    (b"\x80\x01\x00\x00\x10\x01" + b"\0" * 4091, TPM_RC.COMMAND_SIZE),   # 4097 > max
])
def test_header_errors(tpm, data, code):
    r = tpm.execute(data)
    assert r == struct.pack(">HII", 0x8001, 10, code)
    assert rc(tpm.execute(cmd(0x17B, u16(4)))) == 0     # and it goes on serving


def test_error_codes_name_the_parameter_handle_and_session(tpm):
    assert rc(tpm.execute(cmd(0x17D, b2(b"x") + u16(0x99) + u32(0x40000007)))) == 0x2C3   # HASH, P2
    assert rc(tpm.execute(extend(99))) == 0x184                                     # VALUE, H1
    assert rc(tpm.execute(extend(0, sessions=[pw_session(b"bad")]))) == 0x9A2         # BAD_AUTH, S1
    assert rc(tpm.execute(extend(0, sessions=[pw_session(nonce=b"x")]))) == 0x98F     # NONCE, S1


# --- life cycle ---------------------------------------------------------------------------

def test_commands_need_startup_first():
    t = Tpm.manufacture(seed=b"x")
    assert rc(t.execute(cmd(0x17B, u16(8)))) == TPM_RC.INITIALIZE
    assert rc(t.execute(STARTUP_STATE)) == 0x1C4      # no Shutdown(STATE) before: VALUE, P1
    assert rc(t.execute(STARTUP_CLEAR)) == 0
    assert rc(t.execute(STARTUP_CLEAR)) == TPM_RC.INITIALIZE


def test_startup_locality(tpm):
    t = Tpm.manufacture(seed=b"x")
    assert rc(t.execute(STARTUP_CLEAR, locality=1)) == TPM_RC.LOCALITY
    assert rc(t.execute(STARTUP_CLEAR, locality=3)) == 0
    assert read_pcr(t, 0) == b"\0" * 31 + b"\x03"      # H-CRTM PCR records locality 3
    assert read_pcr(t, 17) == b"\xff" * 32             # D-RTM PCRs start at all ones


def test_resume_restores_saved_pcrs_and_restart_does_not(tpm):
    tpm.execute(extend(0))
    tpm.execute(extend(16))
    pcr0 = read_pcr(tpm, 0)
    assert read_pcr(tpm, 16) != b"\0" * 32
    assert pcr0 != b"\0" * 32
    before = read_clock(tpm)
    assert rc(tpm.execute(SHUTDOWN_STATE)) == 0
    tpm.power_off()
    tpm.power_on()
    assert rc(tpm.execute(STARTUP_STATE)) == 0          # TPM Resume
    assert read_pcr(tpm, 0) == pcr0                     # state-saved PCR restored
    assert read_pcr(tpm, 16) == b"\0" * 32              # debug PCR is not saved
    after = read_clock(tpm)
    assert after["reset_count"] == before["reset_count"]
    assert after["restart_count"] == before["restart_count"] + 1
    assert after["clock"] >= before["clock"]
    # TPM Restart: Shutdown(STATE) then Startup(CLEAR): PCRs reset, restartCount counts on
    assert rc(tpm.execute(SHUTDOWN_STATE)) == 0
    tpm.power_off()
    tpm.power_on()
    assert rc(tpm.execute(STARTUP_CLEAR)) == 0
    assert read_pcr(tpm, 0) == b"\0" * 32
    assert read_clock(tpm)["restart_count"] == after["restart_count"] + 1
    # TPM Reset: no Shutdown at all
    tpm.power_off()
    tpm.power_on()
    assert rc(tpm.execute(STARTUP_CLEAR)) == 0
    c = read_clock(tpm)
    assert (c["reset_count"], c["restart_count"], c["safe"]) == (before["reset_count"] + 1, 0, 0)


def test_a_change_after_shutdown_state_makes_it_disorderly(tpm):
    assert rc(tpm.execute(SHUTDOWN_STATE)) == 0
    assert rc(tpm.execute(extend(0))) == 0
    tpm.power_off()
    tpm.power_on()
    assert rc(tpm.execute(STARTUP_STATE)) == 0x1C4


def test_power_off_fails_commands_until_power_on(tpm):
    tpm.power_off()
    assert rc(tpm.execute(cmd(0x17B, u16(8)))) == TPM_RC.FAILURE
    tpm.power_on()
    assert rc(tpm.execute(cmd(0x17B, u16(8)))) == TPM_RC.INITIALIZE


def test_nv_unavailable_blocks_startup():
    t = Tpm.manufacture(seed=b"x")
    t.nv_off()
    assert rc(t.execute(STARTUP_CLEAR)) == TPM_RC.NV_UNAVAILABLE
    t.nv_on()
    assert rc(t.execute(STARTUP_CLEAR)) == 0


def test_drtm_sequence_sets_pcr17_and_established(tpm):
    assert not tpm.established
    tpm.hash_start()
    tpm.hash_data(b"measured launch environment")
    tpm.hash_end()
    expect = hashlib.sha256(b"\0" * 32 + hashlib.sha256(b"measured launch environment").digest())
    assert read_pcr(tpm, 17) == expect.digest()
    assert read_pcr(tpm, 18) == b"\0" * 32
    assert tpm.established
    tpm.reset_established(3)
    assert not tpm.established


# --- PCRs ----------------------------------------------------------------------------------

def test_pcr_extend_event_and_reset(tpm):
    digest = hashlib.sha256(b"measurement").digest()
    assert rc(tpm.execute(extend(10, digest))) == 0
    assert read_pcr(tpm, 10) == hashlib.sha256(b"\0" * 32 + digest).digest()
    r = tpm.execute(cmd(0x13C, b2(b"event"), handles=[11], sessions=PW))
    assert rc(r) == 0
    assert read_pcr(tpm, 11, SHA1) == hashlib.sha1(b"\0" * 20 + hashlib.sha1(b"event").digest()).digest()
    assert rc(tpm.execute(cmd(0x13D, handles=[10], sessions=PW))) == TPM_RC.LOCALITY
    assert rc(tpm.execute(extend(23))) == 0
    assert rc(tpm.execute(cmd(0x13D, handles=[23], sessions=PW))) == 0
    assert read_pcr(tpm, 23) == b"\0" * 32


def test_pcr_locality_rules(tpm):
    assert rc(tpm.execute(extend(17), locality=0)) == TPM_RC.LOCALITY
    assert rc(tpm.execute(extend(17), locality=2)) == 0
    assert rc(tpm.execute(cmd(0x13D, handles=[20], sessions=PW), locality=2)) == 0
    assert rc(tpm.execute(cmd(0x13D, handles=[17], sessions=PW), locality=4)) == TPM_RC.LOCALITY
    assert rc(tpm.execute(extend(0), locality=32)) == TPM_RC.LOCALITY   # extended locality


# --- persistence and determinism ----------------------------------------------------------

def test_state_dir_survives_restart_and_is_written_atomically(tmp_path):
    t = Tpm.manufacture(Platform(DirStore(tmp_path)), seed=b"persist")
    t.execute(STARTUP_CLEAR)
    first = read_clock(t)
    t.execute(SHUTDOWN_CLEAR)
    assert sorted(os.listdir(tmp_path)) == ["lock", "nv.journal", "nv.snap"]
    t.platform.store.close()
    t2 = Tpm.manufacture(Platform(DirStore(tmp_path)))
    assert rc(t2.execute(STARTUP_CLEAR)) == 0
    second = read_clock(t2)
    assert second["reset_count"] == first["reset_count"] + 1
    assert second["clock"] >= first["clock"]
    assert second["safe"] == 1                       # orderly shutdown before


def test_corrupt_state_is_refused_with_a_clear_error(tmp_path):
    Tpm.manufacture(Platform(DirStore(tmp_path)), seed=b"x").platform.store.close()
    blob = (tmp_path / "nv.snap").read_bytes()
    (tmp_path / "nv.snap").write_bytes(blob.replace(b"reset_count", b"reset_kount"))
    with pytest.raises(StoreError, match="damaged"):
        Tpm.manufacture(Platform(DirStore(tmp_path)))


def test_fixed_seed_is_deterministic_and_seeds_differ():
    def random_bytes(seed):
        t = Tpm.manufacture(seed=seed)
        t.execute(STARTUP_CLEAR)
        return params(t.execute(cmd(0x17B, u16(32))))
    assert random_bytes(b"a") == random_bytes(b"a")
    assert random_bytes(b"a") != random_bytes(b"b")
    fresh = [Tpm.manufacture() for _ in range(2)]
    for t in fresh:
        t.execute(STARTUP_CLEAR)
    assert params(fresh[0].execute(cmd(0x17B, u16(32)))) != params(fresh[1].execute(cmd(0x17B, u16(32))))


def test_stir_random_changes_the_stream():
    a, b = (Tpm.manufacture(seed=b"s") for _ in range(2))
    for t in (a, b):
        t.execute(STARTUP_CLEAR)
    assert rc(b.execute(cmd(0x146, b2(b"caller entropy")))) == 0
    assert params(a.execute(cmd(0x17B, u16(16)))) != params(b.execute(cmd(0x17B, u16(16))))


def test_get_random_caps_at_64_bytes(tpm):
    body = params(tpm.execute(cmd(0x17B, u16(1000))))
    assert struct.unpack(">H", body[:2])[0] == 64 and len(body) == 66


def test_hash_ticket_verifies_only_with_this_tpm(tpm):
    r = tpm.execute(cmd(0x17D, b2(b"abc") + u16(SHA256) + u32(0x40000001)))
    body = params(r)
    assert body[2:34] == hashlib.sha256(b"abc").digest()
    tag_, hierarchy, n = struct.unpack(">HIH", body[34:42])
    assert (tag_, hierarchy, n) == (0x8024, 0x40000001, 64)
    other = Tpm.manufacture(seed=b"other")
    other.execute(STARTUP_CLEAR)
    assert params(other.execute(cmd(0x17D, b2(b"abc") + u16(SHA256) + u32(0x40000001))))[42:] != body[42:]


# --- robustness ------------------------------------------------------------------------------

def test_mutated_commands_never_break_the_engine(tpm):
    seeds = [extend(0), cmd(0x17E, pcr_select((SHA256, [0, 1]))), cmd(0x17A, u32(6) + u32(0x100) + u32(5)),
             cmd(0x18A, bytes.fromhex("00010006008000430010080000000000")),
             cmd(0x17D, b2(b"abc") + u16(SHA256) + u32(0x40000001)), cmd(0x13C, b2(b"e"), handles=[3], sessions=PW)]
    rng = random.Random(1234)
    for _ in range(3000):
        c = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            pos = rng.randrange(len(c))
            if op < 0.5:
                c[pos] = rng.randrange(256)
            elif op < 0.75:
                del c[pos]
            else:
                c.insert(pos, rng.randrange(256))
        if rng.random() < 0.7 and len(c) >= 6:
            c[2:6] = struct.pack(">I", len(c))        # keep the size right to get deeper
        r = tpm.execute(bytes(c))
        assert len(r) >= 10 and struct.unpack(">I", r[2:6])[0] == len(r)
        assert tag(r) in (0x8001, 0x8002)
    assert rc(tpm.execute(cmd(0x17B, u16(8)))) == 0


def test_mutated_object_session_and_nv_commands_never_hit_an_internal_error(caplog):
    """Malformed variants of richer commands (objects, sessions, contexts, NV) must get a TPM
    response code, never the engine's internal-error path (logged as an exception)."""
    from tests.test_objects import create, create_primary, template
    tpm = Tpm.manufacture(seed=b"fuzz")
    tpm.execute(STARTUP_CLEAR)
    parent = struct.unpack(">I", tpm.execute(create_primary())[10:14])[0]
    nv_public = bytes.fromhex("01500016000b00060004000000000008")
    seeds = [create_primary(), create(parent, template("rsa2048:rsassa")),
             cmd(0x176, b2(b"\x11" * 32) + b2(b"") + b"\0" + u16(0x10) + u16(0x0b),
                 handles=[0x40000007, 0x40000007]),
             cmd(0x15D, b2(b"\x01" * 32) + u16(0x10) + u16(0x8024) + u32(0x40000007) + u16(0),
                 handles=[parent], sessions=PW),
             cmd(0x162, handles=[parent]),
             cmd(0x12A, b2(b"") + b2(nv_public), handles=[0x40000001], sessions=PW),
             cmd(0x17A, u32(1) + u32(0x80000000) + u32(5))]
    rng = random.Random(7)
    with caplog.at_level("ERROR", logger="ctpm.engine"):
        for _ in range(4000):
            c = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 3)):
                pos = rng.randrange(len(c))
                op = rng.random()
                if op < 0.6:
                    c[pos] = rng.randrange(256)
                elif op < 0.8:
                    del c[pos]
                else:
                    c.insert(pos, rng.randrange(256))
            if len(c) >= 6 and rng.random() < 0.8:
                c[2:6] = struct.pack(">I", len(c))
            r = tpm.execute(bytes(c))
            assert len(r) >= 10 and struct.unpack(">I", r[2:6])[0] == len(r)
            for h in [h for h in tpm.state.objects if h != parent][:-30]:
                del tpm.state.objects[h]
    assert not [r for r in caplog.records if r.name == "ctpm.engine"], caplog.text[:2000]
