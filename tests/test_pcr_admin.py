"""PCR_Allocate, PCR_SetAuthPolicy, PCR_SetAuthValue, ClockSet and ClockRateAdjust: engine
checks and the same command stream to ctpm and swtpm (libtpms)."""
import hashlib
import re
import shutil
import struct
import subprocess

import pytest

from ctpm.engine.tpm import Tpm
from ctpm.testing.process import run_daemon
from tests.peers import Swtpm, needs_swtpm
from tests.tpmcmd import (SHUTDOWN_CLEAR, SHUTDOWN_STATE, STARTUP_CLEAR, STARTUP_STATE, b2, cmd,
                          params, pcr_select, pw_session, rc, u16, u32)

SHA1, SHA256, SHA384, SHA512 = 0x04, 0x0B, 0x0C, 0x0D
RH_OWNER, RH_LOCKOUT, RH_PLATFORM = 0x40000001, 0x4000000A, 0x4000000C
RC_VALUE, RC_TYPE, RC_PCR, RC_AUTH_FAIL = 0x084, 0x08A, 0x127, 0x9A2
ALL = list(range(24))
POWER_CYCLE = "power-cycle"
POLICY_SESSION = 0x03000000
# PolicyCommandCode(PCR_Extend) in a SHA-256 policy session
EXTEND_POLICY = hashlib.sha256(bytes(32) + u32(0x16C) + u32(0x182)).digest()


def pw(password=b""):
    return [pw_session(password)]


def allocate(*banks, auth=b""):
    return cmd(0x12B, pcr_select(*banks), handles=[RH_PLATFORM], sessions=pw(auth))


def set_auth_policy(policy, alg, pcr, auth=b""):
    return cmd(0x12C, b2(policy) + u16(alg) + u32(pcr), handles=[RH_PLATFORM],
               sessions=pw(auth))


def set_auth_value(pcr, value, auth=b""):
    return cmd(0x183, b2(value), handles=[pcr], sessions=pw(auth))


def extend(pcr, sessions, value=b"\x01" * 32):
    return cmd(0x182, u32(1) + u16(SHA256) + value, handles=[pcr], sessions=sessions)


def read(*banks):
    return cmd(0x17E, pcr_select(*banks))


def getcap(cap, prop, count):
    return cmd(0x17A, u32(cap) + u32(prop) + u32(count))


def clock_set(new_time, handle=RH_OWNER):
    return cmd(0x128, struct.pack(">Q", new_time), handles=[handle], sessions=pw())


def rate_adjust(value, handle=RH_OWNER):
    return cmd(0x130, bytes([value & 0xFF]), handles=[handle], sessions=pw())


READ_CLOCK = cmd(0x181)
START_POLICY = cmd(0x176, u32(0x40000007) + u32(0x40000007) + b2(b"\x11" * 32) + b2(b"")
                   + bytes([1]) + u16(0x10) + u16(SHA256))
POLICY_CC_EXTEND = cmd(0x16C, u32(0x182), handles=[POLICY_SESSION])
POLICY_AUTH = [u32(POLICY_SESSION) + b2(b"") + bytes([0]) + b2(b"")]


def clock_of(rsp):
    return struct.unpack(">Q", rsp[18:26])[0]


def started():
    tpm = Tpm.manufacture(seed=b"pcr-admin")
    assert rc(tpm.execute(STARTUP_CLEAR)) == 0
    return tpm


# -- engine level --------------------------------------------------------------------------

def test_allocate_takes_effect_at_the_next_reset():
    tpm = started()
    r = tpm.execute(allocate((SHA1, []), (SHA256, ALL), (SHA384, []), (SHA512, [])))
    assert rc(r) == 0
    success, max_pcr, needed, _available = struct.unpack(">BIII", params(r))
    assert (success, max_pcr, needed) == (1, 24, 24 * 32)
    assert rc(tpm.execute(read((SHA1, [0])))) == 0
    assert len(tpm.state.pcrs) > 1                       # not yet
    assert rc(tpm.execute(SHUTDOWN_STATE)) == RC_TYPE + 0x140   # g_pcrReConfig
    assert rc(tpm.execute(SHUTDOWN_CLEAR)) == 0
    tpm.power_off()
    tpm.power_on()
    assert rc(tpm.execute(STARTUP_CLEAR)) == 0
    assert list(tpm.state.pcrs) == [SHA256]
    assert rc(tpm.execute(SHUTDOWN_STATE)) == 0           # allowed again


def test_allocate_errors():
    tpm = started()
    # no bank would keep PCR 0 (H-CRTM) or PCR 17 (D-RTM)
    assert rc(tpm.execute(allocate((SHA1, []), (SHA256, list(range(1, 24))), (SHA384, []),
                                   (SHA512, [])))) == RC_PCR
    # a bank may hold only some PCRs (the others keep theirs)
    r = tpm.execute(allocate((SHA256, list(range(8)))))
    assert rc(r) == 0 and params(r)[0] == 1
    assert [0x0B, 0xFF] in tpm.state.nv["pcr_pending"]
    assert rc(tpm.execute(allocate((SHA256, ALL), auth=b"wrong"))) == RC_AUTH_FAIL
    assert rc(tpm.execute(cmd(0x12B, pcr_select((SHA256, ALL)), handles=[RH_OWNER],
                              sessions=pw()))) == RC_VALUE + 0x100   # TPM_RC_VALUE, handle 1


def test_pcr_auth_value_authorizes_the_auth_group():
    tpm = started()
    assert rc(tpm.execute(set_auth_value(0, b"x"))) == RC_VALUE
    assert rc(tpm.execute(set_auth_value(20, b"secret\0\0"))) == 0
    assert tpm.state.pcr_auth == b"secret"
    assert rc(tpm.execute(extend(20, pw()), 1)) == RC_AUTH_FAIL
    assert rc(tpm.execute(extend(20, pw(b"secret")), 1)) == 0
    # 21 and 22 share the group's authValue
    assert rc(tpm.execute(set_auth_value(22, b"other", auth=b"secret"))) == 0
    assert rc(tpm.execute(extend(21, pw(b"other")), 2)) == 0
    # state-clear data: kept by Resume, gone after Startup(CLEAR)
    assert rc(tpm.execute(SHUTDOWN_STATE)) == 0
    tpm.power_off()
    tpm.power_on()
    assert rc(tpm.execute(STARTUP_STATE)) == 0
    assert tpm.state.pcr_auth == b"other"
    assert rc(tpm.execute(SHUTDOWN_CLEAR)) == 0
    tpm.power_off()
    tpm.power_on()
    assert rc(tpm.execute(STARTUP_CLEAR)) == 0
    assert tpm.state.pcr_auth == b""
    assert rc(tpm.execute(extend(20, pw()), 1)) == 0


def test_pcr_auth_policy_authorizes_the_policy_group():
    tpm = started()
    assert rc(tpm.execute(set_auth_policy(EXTEND_POLICY[:20], SHA256, 20))) == 0x095 + 0x100 \
        + 0x40   # TPM_RC_SIZE, parameter 1
    assert rc(tpm.execute(set_auth_policy(EXTEND_POLICY, SHA256, 5))) == RC_VALUE + 0x340
    assert rc(tpm.execute(set_auth_policy(EXTEND_POLICY, SHA256, 21))) == 0
    assert rc(tpm.execute(START_POLICY)) == 0
    assert rc(tpm.execute(POLICY_CC_EXTEND)) == 0
    assert rc(tpm.execute(extend(22, POLICY_AUTH), 2)) == 0
    # the policy is persistent: it survives a TPM Reset, and ChangePPS clears it
    assert rc(tpm.execute(SHUTDOWN_CLEAR)) == 0
    tpm.power_off()
    tpm.power_on()
    assert rc(tpm.execute(STARTUP_CLEAR)) == 0
    assert tpm.state.pcr_policy() == (SHA256, EXTEND_POLICY)
    assert rc(tpm.execute(cmd(0x125, handles=[RH_PLATFORM], sessions=pw()))) == 0
    assert tpm.state.pcr_policy()[1] == b""


def test_pcr_properties_report_the_groups():
    tpm = started()
    r = params(tpm.execute(getcap(7, 0x13, 2)))
    assert r[5:] == u32(2) + u32(0x13) + b"\x03\x00\x00\x70" + u32(0x14) + b"\x03\x00\x00\x70"


def test_clock_set_and_rate_adjust():
    tpm = started()
    now = clock_of(tpm.execute(READ_CLOCK))
    assert rc(tpm.execute(clock_set(0))) == RC_VALUE + 0x140 or now == 0
    assert rc(tpm.execute(clock_set(0xFFFF000000000001))) == RC_VALUE + 0x140
    assert rc(tpm.execute(clock_set(10 ** 9))) == 0
    assert clock_of(tpm.execute(READ_CLOCK)) >= 10 ** 9
    assert rc(tpm.execute(clock_set(10 ** 9 - 1))) == RC_VALUE + 0x140
    assert rc(tpm.execute(clock_set(10 ** 10, RH_PLATFORM))) == 0
    assert rc(tpm.execute(clock_set(10 ** 11, RH_LOCKOUT))) == RC_VALUE + 0x100
    for adjust in (-3, -2, -1, 0, 1, 2, 3):
        assert rc(tpm.execute(rate_adjust(adjust))) == 0
    assert tpm.state.clock_adjust == 0
    assert rc(tpm.execute(rate_adjust(4))) == RC_VALUE + 0x140
    assert rc(tpm.execute(rate_adjust(-4))) == RC_VALUE + 0x140


# -- against swtpm ---------------------------------------------------------------------------

RC_ONLY = "rc-only"     # responses carrying a policy session's fresh nonceTPM, or clocks

STREAM = [
    STARTUP_CLEAR,
    getcap(7, 0, 100), getcap(7, 0x13, 1), getcap(7, 0x14, 5),
    # PCR_SetAuthValue
    set_auth_value(0, b"x"), set_auth_value(19, b"x"), set_auth_value(23, b"x"),
    set_auth_value(20, b"secret\0\0"),
    (extend(20, pw()), 1), (extend(20, pw(b"secret")), 1),
    set_auth_value(21, b"other", auth=b"bad"), set_auth_value(21, b"other", auth=b"secret"),
    (extend(21, pw(b"other")), 2), (extend(22, pw(b"secret")), 2),
    read((SHA256, [20, 21, 22])),
    # PCR_SetAuthPolicy
    set_auth_policy(EXTEND_POLICY[:20], SHA256, 21), set_auth_policy(EXTEND_POLICY, SHA256, 5),
    set_auth_policy(EXTEND_POLICY, SHA256, 23), set_auth_policy(EXTEND_POLICY, SHA1, 21),
    set_auth_policy(b"", 0x10, 21), set_auth_policy(EXTEND_POLICY, SHA256, 21, auth=b"bad"),
    cmd(0x12C, b2(EXTEND_POLICY) + u16(SHA256) + u32(21), handles=[RH_OWNER], sessions=pw()),
    set_auth_policy(EXTEND_POLICY, SHA256, 21),
    (RC_ONLY, START_POLICY), POLICY_CC_EXTEND, (RC_ONLY, (extend(22, POLICY_AUTH), 2)),
    (RC_ONLY, START_POLICY), (RC_ONLY, (extend(22, POLICY_AUTH), 2)),       # no PolicyCC
    cmd(0x165, u32(POLICY_SESSION)),
    read((SHA256, [20, 21, 22])),
    # ClockSet / ClockRateAdjust
    clock_set(0), clock_set(0xFFFF000000000001), clock_set(0xFFFFFFFFFFFFFFFF),
    clock_set(10 ** 9), (RC_ONLY, READ_CLOCK), clock_set(10 ** 9 - 1),
    clock_set(10 ** 10, RH_PLATFORM), clock_set(10 ** 11, RH_LOCKOUT),
    cmd(0x128, struct.pack(">Q", 10 ** 12), handles=[RH_OWNER], sessions=pw(b"bad")),
    rate_adjust(-3), rate_adjust(3), rate_adjust(0), rate_adjust(4), rate_adjust(-4),
    rate_adjust(1, RH_LOCKOUT), cmd(0x130, b"", handles=[RH_OWNER], sessions=pw()),
    # PCR_Allocate: SHA-256 only, from the next TPM Reset
    allocate((SHA1, []), (SHA256, list(range(1, 24))), (SHA384, []), (SHA512, [])),
    allocate((SHA256, ALL), auth=b"bad"),
    cmd(0x12B, pcr_select((SHA256, ALL)), handles=[RH_OWNER], sessions=pw()),
    allocate((SHA1, []), (SHA256, ALL), (SHA384, []), (SHA512, [])),
    getcap(5, 0, 1), read((SHA1, [0, 1]), (SHA256, [0, 1])),
    SHUTDOWN_STATE, SHUTDOWN_CLEAR,
    POWER_CYCLE, STARTUP_CLEAR,
    getcap(5, 0, 1),
    read((SHA1, ALL[:8])), read((SHA256, ALL[:8])), read((SHA256, ALL[8:16])),
    read((SHA256, ALL[16:])), read((SHA384, [0]), (SHA256, [0]), (SHA512, [0])),
    # the authValue is gone after Startup(CLEAR); the policy stays, and with it a password
    # no longer authorizes the group (TPM_RC_AUTH_TYPE)
    (extend(20, pw()), 1), (extend(21, pw()), 2), set_auth_value(20, b"x"),
    (RC_ONLY, START_POLICY), POLICY_CC_EXTEND, (RC_ONLY, (extend(22, POLICY_AUTH), 2)),
    read((SHA256, [20, 21, 22])),
    SHUTDOWN_STATE, POWER_CYCLE, STARTUP_STATE, getcap(5, 0, 1), read((SHA256, [0, 20])),
    (RC_ONLY, READ_CLOCK),
]


@needs_swtpm
@pytest.mark.swtpm
def test_same_responses_as_swtpm():
    ctpm = Tpm.manufacture(seed=b"pcr-admin")
    sw = Swtpm()
    mismatches = []
    try:
        for i, c in enumerate(STREAM):
            if c == POWER_CYCLE:
                ctpm.power_off()
                ctpm.power_on()
                assert sw.ctrl(2, u32(0)) == u32(0)      # CMD_INIT: _TPM_Init
                continue
            only_rc = isinstance(c, tuple) and c[0] == RC_ONLY
            if only_rc:
                c = c[1]
            c, loc = c if isinstance(c, tuple) else (c, 0)
            ours, theirs = ctpm.execute(c, loc), sw.execute(c, loc)
            if c == READ_CLOCK and rc(ours) == 0:
                assert clock_of(ours) >= 10 ** 9 and clock_of(theirs) >= 10 ** 9
            same = (rc(ours), len(ours)) == (rc(theirs), len(theirs)) if only_rc \
                else ours == theirs
            if not same:
                mismatches.append(f"#{i} cmd={c.hex()}\n  ctpm ={ours.hex()}\n"
                                  f"  swtpm={theirs.hex()}")
    finally:
        sw.close()
    assert not mismatches, "\n".join(mismatches)


@pytest.mark.tools
@pytest.mark.skipif(shutil.which("tpm2_pcrallocate") is None, reason="tpm2-tools missing")
def test_tools_pcrallocate_setclock_clockrateadjust(tmp_path):
    def tool(*args):
        return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=tmp_path)

    def ok(*args):
        r = tool(*args)
        assert r.returncode == 0, r.stderr
        return r.stdout
    state = str(tmp_path / "state")
    with run_daemon("--mssim", "127.0.0.1:0", "--state", state) as d:
        t = d.tcti()
        ok("tpm2_startup", "-c", "-T", t)
        ok("tpm2_setclock", "-T", t, "5000000000")
        assert int(re.search(r"clock: (\d+)", ok("tpm2_readclock", "-T", t))[1]) >= 5000000000
        assert "0x1C4" in tool("tpm2_setclock", "-T", t, "100").stderr   # TPM_RC_VALUE
        ok("tpm2_clockrateadjust", "-T", t, "ss")
        ok("tpm2_clockrateadjust", "-T", t, "fff")
        ok("tpm2_pcrallocate", "-T", t, "sha1:none+sha256:all+sha384:none+sha512:none")
        assert "0x1CA" in tool("tpm2_shutdown", "-T", t).stderr          # STATE: TPM_RC_TYPE
        ok("tpm2_shutdown", "-c", "-T", t)
    with run_daemon("--mssim", "127.0.0.1:0", "--state", state) as d:
        t = d.tcti()
        ok("tpm2_startup", "-c", "-T", t)
        pcrs = ok("tpm2_getcap", "-T", t, "pcrs")
        assert "sha1: [ ]" in pcrs and "sha384: [ ]" in pcrs and "sha512: [ ]" in pcrs
        assert "sha256: [ 0, 1, 2" in pcrs
        assert int(re.search(r"clock: (\d+)", ok("tpm2_readclock", "-T", t))[1]) >= 5000000000
