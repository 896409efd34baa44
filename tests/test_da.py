"""Dictionary-attack protection (Part 1 §19.8, Part 3 §25): failedTries, lockout, self-healing
on a fake clock, lockoutAuth lockout, persistence; the same stream against swtpm; tpm2-tools."""
import shutil
import struct
import subprocess

import pytest

from ctpm.engine.tpm import Tpm
from ctpm.platform import Platform
from ctpm.state.store import DirStore
from ctpm.testing.process import run_daemon
from tests.peers import Swtpm, needs_swtpm, retrying
from tests.tpmcmd import (SHUTDOWN_CLEAR, SHUTDOWN_STATE, STARTUP_CLEAR, STARTUP_STATE, b2, cmd, params, pw_session, rc, u16,
                          u32)

pytest.importorskip("tpm2_pytss")
from tests.test_objects import create_primary, sensitive_create, template  # noqa: E402

RH_OWNER, RH_LOCKOUT = 0x40000001, 0x4000000A
AUTH_FAIL, BAD_AUTH, LOCKOUT = 0x98E, 0x9A2, 0x921
SIGNING = 0x00040072            # fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|sign
NODA = 0x400
PT_PERMANENT, PT_LOCKOUT_COUNTER = 0x200, 0x20E
IN_LOCKOUT = 0x200


class FakeClock:
    def __init__(self):
        self.ns = 0

    def __call__(self):
        return self.ns

    def advance(self, seconds):
        self.ns += int(seconds * 1e9)


def hmac_cmd(key, password):
    """TPM2_HMAC with the key's own scheme: one USER-role authorization of `key`."""
    return cmd(0x155, b2(b"data") + u16(0x0010), handles=[key], sessions=[pw_session(password)])


def lock_reset(auth=b""):
    return cmd(0x139, handles=[RH_LOCKOUT], sessions=[pw_session(auth)])


def da_parameters(max_tries, recovery, lockout_recovery, auth=b""):
    return cmd(0x13A, u32(max_tries) + u32(recovery) + u32(lockout_recovery),
               handles=[RH_LOCKOUT], sessions=[pw_session(auth)])


def change_lockout_auth(new, old=b""):
    return cmd(0x129, b2(new), handles=[RH_LOCKOUT], sessions=[pw_session(old)])


def da_properties(execute):
    """(LOCKOUT_COUNTER, MAX_AUTH_FAIL, LOCKOUT_INTERVAL, LOCKOUT_RECOVERY, inLockout)."""
    body = params(execute(cmd(0x17A, u32(6) + u32(PT_LOCKOUT_COUNTER) + u32(4))))
    values = [struct.unpack(">I", body[13 + 8 * i:17 + 8 * i])[0] for i in range(4)]
    perm = params(execute(cmd(0x17A, u32(6) + u32(PT_PERMANENT) + u32(1))))
    return (*values, bool(int.from_bytes(perm[-4:], "big") & IN_LOCKOUT))


def hmac_key(execute, attrs=SIGNING, auth=b"key pw"):
    rsp = execute(create_primary(RH_OWNER, template("hmac", objectAttributes=attrs),
                                 sensitive_create(auth)))
    assert rc(rsp) == 0, hex(rc(rsp))
    return struct.unpack(">I", rsp[10:14])[0]


def fresh(store=None, clock=None):
    clock = clock or FakeClock()
    tpm = Tpm.manufacture(Platform(store, clock_ns=clock), seed=b"da")
    assert rc(tpm.execute(STARTUP_CLEAR)) == 0
    return tpm, clock


# -- engine ------------------------------------------------------------------------------------

def test_defaults_are_the_reference_manufacturer_values():
    tpm, _ = fresh()
    assert da_properties(tpm.execute) == (0, 3, 1000, 1000, False)


def test_wrong_passwords_count_until_lockout_then_heal_one_per_recovery_time():
    tpm, clock = fresh()
    key = hmac_key(tpm.execute)
    for n in range(1, 4):
        assert rc(tpm.execute(hmac_cmd(key, b"wrong"))) == AUTH_FAIL
        assert da_properties(tpm.execute)[0] == n
    assert da_properties(tpm.execute)[4]
    # in lockout even the right password is refused, before it is looked at
    assert rc(tpm.execute(hmac_cmd(key, b"key pw"))) == LOCKOUT
    assert rc(tpm.execute(hmac_cmd(key, b"wrong"))) == LOCKOUT
    assert da_properties(tpm.execute)[0] == 3
    clock.advance(999)
    assert da_properties(tpm.execute)[0] == 3
    clock.advance(1)
    assert da_properties(tpm.execute)[0] == 2
    assert rc(tpm.execute(hmac_cmd(key, b"key pw"))) == 0
    clock.advance(2500)
    assert da_properties(tpm.execute)[:1] == (0,)


def test_exempt_entities_get_bad_auth_and_do_not_count():
    tpm, _ = fresh()
    nokey = hmac_key(tpm.execute, SIGNING | NODA)
    for _ in range(5):
        assert rc(tpm.execute(hmac_cmd(nokey, b"wrong"))) == BAD_AUTH
        assert rc(tpm.execute(create_primary(RH_OWNER, auth=b"wrong"))) == BAD_AUTH
    assert da_properties(tpm.execute)[0] == 0
    # and stay usable in lockout
    key = hmac_key(tpm.execute)
    for _ in range(3):
        tpm.execute(hmac_cmd(key, b"wrong"))
    assert rc(tpm.execute(hmac_cmd(nokey, b"key pw"))) == 0
    assert rc(tpm.execute(hmac_cmd(key, b"key pw"))) == LOCKOUT


def test_lock_reset_and_parameters():
    tpm, clock = fresh()
    key = hmac_key(tpm.execute)
    for _ in range(3):
        tpm.execute(hmac_cmd(key, b"wrong"))
    assert rc(tpm.execute(lock_reset())) == 0
    assert da_properties(tpm.execute) == (0, 3, 1000, 1000, False)
    assert rc(tpm.execute(da_parameters(5, 10, 20))) == 0
    assert da_properties(tpm.execute) == (0, 5, 10, 20, False)
    for _ in range(5):
        assert rc(tpm.execute(hmac_cmd(key, b"wrong"))) == AUTH_FAIL
    assert rc(tpm.execute(hmac_cmd(key, b"key pw"))) == LOCKOUT
    clock.advance(10)
    assert rc(tpm.execute(hmac_cmd(key, b"key pw"))) == 0
    # lowering maxTries below failedTries locks out at once
    assert rc(tpm.execute(da_parameters(2, 10, 20))) == 0
    assert da_properties(tpm.execute)[4]
    # recoveryTime 0: DA is off, failures are not counted
    assert rc(tpm.execute(da_parameters(2, 0, 20))) == 0
    assert da_properties(tpm.execute)[0] == 0
    assert rc(tpm.execute(hmac_cmd(key, b"wrong"))) == AUTH_FAIL
    assert da_properties(tpm.execute)[0] == 0
    # only TPM_RH_LOCKOUT is a lockHandle
    bad = cmd(0x139, handles=[RH_OWNER], sessions=[pw_session()])
    assert rc(tpm.execute(bad)) == 0x184                  # TPM_RC_VALUE, handle 1


def test_lockout_auth_failure_locks_the_lockout_hierarchy_for_lockout_recovery():
    tpm, clock = fresh()
    assert rc(tpm.execute(change_lockout_auth(b"lo"))) == 0
    assert rc(tpm.execute(da_parameters(3, 1000, 30, b"lo"))) == 0
    assert rc(tpm.execute(lock_reset(b"wrong"))) == AUTH_FAIL
    assert da_properties(tpm.execute)[0] == 0              # failedTries is not touched
    assert rc(tpm.execute(lock_reset(b"lo"))) == LOCKOUT
    assert rc(tpm.execute(cmd(0x126, handles=[RH_LOCKOUT], sessions=[pw_session(b"lo")]))) \
        == LOCKOUT                                          # Clear with lockoutAuth
    clock.advance(29)
    assert rc(tpm.execute(lock_reset(b"lo"))) == LOCKOUT
    clock.advance(1)
    assert rc(tpm.execute(lock_reset(b"lo"))) == 0


def test_lockout_recovery_zero_means_until_the_next_startup():
    tpm, clock = fresh()
    assert rc(tpm.execute(da_parameters(3, 1000, 0))) == 0
    assert rc(tpm.execute(lock_reset(b"wrong"))) == AUTH_FAIL
    clock.advance(100000)
    assert rc(tpm.execute(lock_reset())) == LOCKOUT
    tpm.execute(SHUTDOWN_CLEAR)
    tpm.power_off()
    tpm.power_on()
    assert rc(tpm.execute(STARTUP_CLEAR)) == 0
    assert rc(tpm.execute(lock_reset())) == 0


def test_counters_survive_a_restart_and_the_lockout_timer_starts_over(tmp_path):
    store = DirStore(tmp_path)
    tpm, clock = fresh(store)
    key = hmac_key(tpm.execute)
    assert rc(tpm.execute(change_lockout_auth(b"lo"))) == 0
    assert rc(tpm.execute(da_parameters(4, 60, 120, b"lo"))) == 0
    for _ in range(4):
        tpm.execute(hmac_cmd(key, b"wrong"))
    assert rc(tpm.execute(lock_reset(b"nope"))) == AUTH_FAIL
    tpm.execute(SHUTDOWN_CLEAR)
    del tpm                                             # written after each change: no save
    again = Tpm.manufacture(Platform(DirStore(tmp_path), clock_ns=clock), seed=b"da")
    assert rc(again.execute(STARTUP_CLEAR)) == 0
    assert da_properties(again.execute) == (4, 4, 60, 120, True)
    assert rc(again.execute(lock_reset(b"lo"))) == LOCKOUT
    clock.advance(120)                                  # 120 s of power since _TPM_Init
    assert rc(again.execute(lock_reset(b"lo"))) == 0
    assert da_properties(again.execute)[0] == 0


def test_disorderly_shutdown_after_a_da_protected_use_counts_a_failure(tmp_path):
    tpm, clock = fresh(DirStore(tmp_path))
    key = hmac_key(tpm.execute)
    assert rc(tpm.execute(hmac_cmd(key, b"key pw"))) == 0
    tpm.power_off()                                     # no Shutdown
    again = Tpm.manufacture(Platform(DirStore(tmp_path), clock_ns=clock), seed=b"da")
    assert rc(again.execute(STARTUP_CLEAR)) == 0
    assert da_properties(again.execute)[0] == 1
    # without a DA-protected use in between, another disorderly shutdown costs nothing
    again.power_off()
    third = Tpm.manufacture(Platform(DirStore(tmp_path), clock_ns=clock), seed=b"da")
    assert rc(third.execute(STARTUP_CLEAR)) == 0
    assert da_properties(third.execute)[0] == 1


def test_clear_restores_the_manufacturer_values():
    tpm, _ = fresh()
    key = hmac_key(tpm.execute)
    assert rc(tpm.execute(da_parameters(7, 11, 13))) == 0
    tpm.execute(hmac_cmd(key, b"wrong"))
    assert rc(tpm.execute(cmd(0x126, handles=[RH_LOCKOUT], sessions=[pw_session()]))) == 0
    assert da_properties(tpm.execute) == (0, 3, 1000, 1000, False)


# -- against swtpm -----------------------------------------------------------------------------




def stream(x):
    out = []
    key = hmac_key(x)
    out.append(da_properties(x))
    out += [rc(x(hmac_cmd(key, b"wrong"))) for _ in range(4)]            # 3 x AUTH_FAIL, LOCKOUT
    out.append(rc(x(hmac_cmd(key, b"key pw"))))                           # LOCKOUT
    out.append(da_properties(x))
    out.append(rc(x(lock_reset())))
    out.append(rc(x(hmac_cmd(key, b"key pw"))))
    out.append(rc(x(da_parameters(2, 5000, 4000))))
    out.append(da_properties(x))
    out += [rc(x(hmac_cmd(key, b"wrong"))) for _ in range(3)]
    out.append(rc(x(change_lockout_auth(b"lo"))))
    out.append(rc(x(lock_reset(b"bad"))))                                 # AUTH_FAIL
    out.append(rc(x(lock_reset(b"lo"))))                                  # LOCKOUT
    out.append(rc(x(da_parameters(3, 1, 1, b"lo"))))                      # LOCKOUT
    out.append(rc(x(cmd(0x139, handles=[RH_OWNER], sessions=[pw_session()]))))
    out.append(da_properties(x))
    out.append(rc(x(hmac_cmd(hmac_key(x, SIGNING | NODA), b"wrong"))))    # BAD_AUTH
    return out


@needs_swtpm
@pytest.mark.swtpm
def test_dictionary_attack_as_swtpm():
    tpm, _ = fresh()
    sw = Swtpm()
    try:
        assert rc(sw.execute(STARTUP_CLEAR)) == 0
        a = stream(tpm.execute)
        b = stream(retrying(sw.execute))
        assert a == b
        assert a[1:6] == [AUTH_FAIL] * 3 + [LOCKOUT] * 2
    finally:
        sw.close()


# -- tpm2-tools --------------------------------------------------------------------------------

@pytest.mark.tools
@pytest.mark.skipif(shutil.which("tpm2_dictionarylockout") is None, reason="tpm2-tools missing")
def test_tools_dictionarylockout(tmp_path):
    def run(*args):
        return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=tmp_path)

    def ok(*args):
        r = run(*args)
        assert r.returncode == 0, r.stderr
        return r.stdout
    with run_daemon("--mssim", "127.0.0.1:0", "--state", str(tmp_path / "state")) as d:
        t = d.tcti()
        ok("tpm2_startup", "-c", "-T", t)
        ok("tpm2_dictionarylockout", "-T", t, "-s", "-n", "5", "-t", "6", "-l", "7")
        out = ok("tpm2_getcap", "-T", t, "properties-variable")
        assert "TPM2_PT_MAX_AUTH_FAIL: 0x5" in out
        assert "TPM2_PT_LOCKOUT_INTERVAL: 0x6" in out
        assert "TPM2_PT_LOCKOUT_RECOVERY: 0x7" in out
        ok("tpm2_createprimary", "-T", t, "-C", "o", "-c", "p.ctx")
        ok("tpm2_create", "-T", t, "-C", "p.ctx", "-G", "hmac", "-p", "secret",
           "-u", "k.pub", "-r", "k.priv")
        ok("tpm2_load", "-T", t, "-C", "p.ctx", "-u", "k.pub", "-r", "k.priv", "-c", "k.ctx")
        (tmp_path / "msg").write_bytes(b"hello")
        for _ in range(5):
            r = run("tpm2_hmac", "-T", t, "-c", "k.ctx", "-p", "wrong", "-o", "mac", "msg")
            assert r.returncode != 0
        out = ok("tpm2_getcap", "-T", t, "properties-variable")
        assert "TPM2_PT_LOCKOUT_COUNTER: 0x5" in out
        assert "inLockout:                 1" in out
        r = run("tpm2_hmac", "-T", t, "-c", "k.ctx", "-p", "secret", "-o", "mac", "msg")
        assert r.returncode != 0 and "0x921" in r.stderr.lower(), r.stderr
        ok("tpm2_dictionarylockout", "-T", t, "-c")
        out = ok("tpm2_getcap", "-T", t, "properties-variable")
        assert "TPM2_PT_LOCKOUT_COUNTER: 0x0" in out and "inLockout:                 0" in out
        ok("tpm2_hmac", "-T", t, "-c", "k.ctx", "-p", "secret", "-o", "mac", "msg")


def da_after_shutdown(x, power_cycle):
    """Shutdown(STATE), then a DA-protected authorization before the power goes: that
    shutdown is no longer orderly (Resume refused, failedTries + 1); without one, it is."""
    out = []
    key = hmac_key(x)
    out.append(rc(x(hmac_cmd(key, b"key pw"))))
    out.append(rc(x(SHUTDOWN_STATE)))
    out.append(rc(x(cmd(0x17B, u16(8)))))                # not DA-protected: still orderly
    power_cycle()
    out.append(rc(x(STARTUP_STATE)))
    out.append(da_properties(x)[0])
    key = hmac_key(x)
    out.append(rc(x(SHUTDOWN_STATE)))
    out.append(rc(x(hmac_cmd(key, b"key pw"))))          # DA-protected, after Shutdown
    power_cycle()
    out.append(rc(x(STARTUP_CLEAR)))
    out.append(da_properties(x)[0])                      # the shutdown counted a failure
    key = hmac_key(x)
    out.append(rc(x(SHUTDOWN_STATE)))
    out.append(rc(x(hmac_cmd(key, b"key pw"))))
    power_cycle()
    out.append(rc(x(STARTUP_STATE)))                     # TPM_RC_VALUE: not orderly
    # (the reference's failed Resume already consumed SU_DA_USED, so its Startup(CLEAR)
    # then counts nothing; ctpm still counts the failure: only the RC is compared)
    out.append(rc(x(STARTUP_CLEAR)))
    return out


@needs_swtpm
@pytest.mark.swtpm
def test_da_use_after_shutdown_as_swtpm(tmp_path):
    clock = FakeClock()
    holder = {}

    def ctpm_cycle():
        holder["tpm"].power_off()
        holder["tpm"] = Tpm.manufacture(Platform(DirStore(tmp_path), clock_ns=clock),
                                        seed=b"da")

    holder["tpm"] = Tpm.manufacture(Platform(DirStore(tmp_path), clock_ns=clock), seed=b"da")
    assert rc(holder["tpm"].execute(STARTUP_CLEAR)) == 0
    sw = Swtpm()
    try:
        assert rc(sw.execute(STARTUP_CLEAR)) == 0

        def sw_cycle():
            sw.ctrl(2, struct.pack(">I", 0))             # CMD_INIT: power cycle
            if sw.sock is not None:
                sw.sock.close()
                sw.sock = None

        a = da_after_shutdown(lambda c: holder["tpm"].execute(c), ctpm_cycle)
        b = da_after_shutdown(retrying(sw.execute), sw_cycle)
        assert a == b
        assert a[3:5] == [0, 0] and a[7:9] == [0, 1] and a[-2:] == [0x1C4, 0]
        assert da_properties(holder["tpm"].execute)[0] == 2
    finally:
        sw.close()
