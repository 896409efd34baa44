"""Authenticated Countdown Timers: TPM2_ACT_SetTimeout (Part 3 §33.2), the ACT handles'
authorization (platformAuth; their own authPolicy from SetPrimaryPolicy) and TPM_CAP_ACT.
libtpms 0.9 and swtpm have none, so the expectations come from the reference's ACT_spt.c and
its platform ACT code. The engine runs on a clock the test moves; one scenario goes through
tpm2-pytss ESAPI (Esys_ACT_SetTimeout) over the daemon.
"""
import hashlib
import struct

import pytest

from ctpm.engine.tpm import Tpm
from ctpm.platform import Platform
from ctpm.testing import with_esapi
from tests.tpmcmd import (SHUTDOWN_STATE, STARTUP_CLEAR, STARTUP_STATE, b2, cmd, params,
                          pw_session, rc, u16, u32)

ACT_0, ACT_1, ACT_A, RH_PLATFORM, RH_OWNER = 0x40000110, 0x40000111, 0x4000011A, 0x4000000C, \
    0x40000001
CAP_ACT, CAP_AUTH_POLICIES = 0xA, 0x9
MAX = 0xFFFFFFFF
SIGNALED, PRESERVE = 1, 2


class Clock:
    def __init__(self):
        self.ns = 10**12

    def __call__(self):
        return self.ns

    def advance(self, seconds):
        self.ns += int(seconds * 1e9)


def started():
    clock = Clock()
    tpm = Tpm.manufacture(Platform(clock_ns=clock), seed=b"act")
    assert rc(tpm.execute(STARTUP_CLEAR)) == 0
    return tpm, clock


def set_timeout(tpm, handle, value, auth=b""):
    return rc(tpm.execute(cmd(0x198, u32(value), handles=[handle],
                              sessions=[pw_session(auth)])))


def acts(tpm, first=ACT_0, count=16):
    """{handle: (timeout, attributes)} from GetCapability(TPM_CAP_ACT), and moreData."""
    body = params(tpm.execute(cmd(0x17A, u32(CAP_ACT) + u32(first) + u32(count))))
    n = struct.unpack(">I", body[5:9])[0]
    out = {}
    for i in range(n):
        h, t, a = struct.unpack(">III", body[9 + 12 * i:21 + 12 * i])
        out[h] = (t, a)
    return out, body[0]


def test_capability_lists_the_implemented_acts():
    tpm, _ = started()
    assert acts(tpm) == ({ACT_0: (0, 0), ACT_A: (0, 0)}, 0)
    assert acts(tpm, count=1) == ({ACT_0: (0, 0)}, 1)
    assert acts(tpm, first=ACT_1) == ({ACT_A: (0, 0)}, 0)
    assert acts(tpm, first=0x40000001) == ({}, 0)       # outside the ACT range: nothing


def test_countdown_signal_and_stop():
    tpm, clock = started()
    assert set_timeout(tpm, ACT_0, 5) == 0
    assert acts(tpm)[0][ACT_0] == (5, 0)
    clock.advance(2.5)
    assert acts(tpm)[0][ACT_0] == (3, 0)
    clock.advance(3)
    assert acts(tpm)[0][ACT_0] == (0, SIGNALED)
    assert acts(tpm)[0][ACT_A] == (0, 0)                # the other one did not move
    # a new count turns the signal off; 0xFFFFFFFF stops a signaled ACT only
    assert set_timeout(tpm, ACT_0, 100) == 0
    assert acts(tpm)[0][ACT_0] == (100, 0)
    assert set_timeout(tpm, ACT_0, MAX) == 0x1C4       # TPM_RC_VALUE, parameter 1
    clock.advance(100)
    assert acts(tpm)[0][ACT_0] == (0, SIGNALED)
    assert set_timeout(tpm, ACT_0, MAX) == 0
    clock.advance(10**6)
    assert acts(tpm)[0][ACT_0] == (MAX, 0)
    # 0 while counting expires it at once; 0 when stopped at 0 changes nothing
    assert set_timeout(tpm, ACT_A, 50) == 0
    assert set_timeout(tpm, ACT_A, 0) == 0
    assert acts(tpm)[0][ACT_A] == (0, SIGNALED)


def test_handles_and_authorization():
    tpm, _ = started()
    assert set_timeout(tpm, ACT_1, 5) == 0x184               # not implemented: VALUE, handle 1
    assert set_timeout(tpm, RH_OWNER, 5) == 0x184            # not an ACT handle
    # the authValue is platformAuth
    assert rc(tpm.execute(cmd(0x129, b2(b"platform"), handles=[RH_PLATFORM],
                              sessions=[pw_session()]))) == 0
    assert set_timeout(tpm, ACT_0, 5) == 0x9A2               # BAD_AUTH, session 1
    assert set_timeout(tpm, ACT_0, 5, b"platform") == 0
    # the authPolicy is the ACT's own: SetPrimaryPolicy(ACT_0) and a policy session
    code = hashlib.sha256(bytes(32) + u32(0x16C) + u32(0x198)).digest()
    assert rc(tpm.execute(cmd(0x12E, b2(code) + u16(0x0B), handles=[ACT_0],
                              sessions=[pw_session(b"platform")]))) == 0
    body = params(tpm.execute(cmd(0x17A, u32(CAP_AUTH_POLICIES) + u32(ACT_0) + u32(8))))
    assert body[9:13] == u32(ACT_0) and body[13:15] == u16(0x0B) and body[15:47] == code
    r = tpm.execute(cmd(0x176, u32(0x40000007) + u32(0x40000007) + b2(b"\x11" * 16) + b2(b"")
                        + bytes([1]) + u16(0x10) + u16(0x0B)))
    s = struct.unpack(">I", r[10:14])[0]
    assert rc(tpm.execute(cmd(0x16C, u32(0x198), handles=[s]))) == 0
    auth = u32(s) + b2(b"") + bytes([1]) + b2(b"")
    assert rc(tpm.execute(cmd(0x198, u32(7), handles=[ACT_0], sessions=[auth]))) == 0
    assert acts(tpm)[0][ACT_0] == (7, 0)
    # ACT_A has no policy: a policy session cannot authorize it
    assert rc(tpm.execute(cmd(0x16C, u32(0x198), handles=[s]))) == 0
    assert rc(tpm.execute(cmd(0x198, u32(7), handles=[ACT_A], sessions=[auth]))) == 0x12F


def test_startup_and_shutdown():
    tpm, clock = started()
    assert set_timeout(tpm, ACT_0, 100) == 0
    assert set_timeout(tpm, ACT_A, 1) == 0
    clock.advance(2)                                          # ACT_A signaled
    # Shutdown(STATE) keeps counts and signals; ACT_0 was set since Startup: not halved
    assert rc(tpm.execute(SHUTDOWN_STATE)) == 0
    tpm.reset()
    assert rc(tpm.execute(STARTUP_STATE)) == 0
    assert acts(tpm)[0] == {ACT_0: (98, 0), ACT_A: (0, SIGNALED | PRESERVE)}
    # not set since this Startup: the next Shutdown(STATE) halves the count
    assert rc(tpm.execute(SHUTDOWN_STATE)) == 0
    tpm.reset()
    assert rc(tpm.execute(STARTUP_STATE)) == 0
    assert acts(tpm)[0][ACT_0] == (49, 0)
    # a new count clears preserveSignaled
    assert set_timeout(tpm, ACT_A, 10) == 0
    assert acts(tpm)[0][ACT_A] == (10, 0)
    # Startup(CLEAR) stops everything and drops the policies
    assert rc(tpm.execute(cmd(0x12E, b2(bytes(32)) + u16(0x0B), handles=[ACT_A],
                              sessions=[pw_session()]))) == 0
    assert rc(tpm.execute(cmd(0x145, u16(0), ))) == 0
    tpm.reset()
    assert rc(tpm.execute(STARTUP_CLEAR)) == 0
    assert acts(tpm)[0] == {ACT_0: (0, 0), ACT_A: (0, 0)}
    body = params(tpm.execute(cmd(0x17A, u32(CAP_AUTH_POLICIES) + u32(ACT_A) + u32(1))))
    assert body[9:15] == u32(ACT_A) + u16(0x10)              # TPM_ALG_NULL again
    # power lost: no preserveSignaled
    assert set_timeout(tpm, ACT_0, 1) == 0
    clock.advance(1)
    assert rc(tpm.execute(SHUTDOWN_STATE)) == 0
    tpm.power_off()
    tpm.power_on()
    assert rc(tpm.execute(STARTUP_STATE)) == 0
    assert acts(tpm)[0][ACT_0] == (0, SIGNALED)


def test_act_survives_migration():
    from ctpm.engine import migration
    tpm, clock = started()
    assert set_timeout(tpm, ACT_0, 300) == 0
    clock.advance(100)
    blobs = {k: tpm.get_state_blob(k) for k in (migration.PERMANENT, migration.VOLATILE)}
    other = Tpm.manufacture(Platform(clock_ns=clock), seed=b"other")
    other.power_off()
    for kind, blob in blobs.items():
        other.set_state_blob(kind, blob)
    other.power_on()
    assert acts(other)[0][ACT_0] == (200, 0)


async def test_act_set_timeout_through_esapi(ctpm_tpm, ctpm_server):
    """(tpm2-pytss cannot unmarshal TPML_ACT_DATA: the capability is read in-process.)"""
    pytest.importorskip("tpm2_pytss")
    from tpm2_pytss import ESYS_TR, TSS2_Exception

    def scenario(esapi):
        esapi.act_set_timeout(ESYS_TR.RH_ACT_0, 1000, session1=ESYS_TR.PASSWORD)
        try:
            esapi.act_set_timeout(ESYS_TR.RH_ACT_A, MAX, session1=ESYS_TR.PASSWORD)
        except TSS2_Exception as e:
            return e.rc

    assert await with_esapi(ctpm_server, scenario) == 0x1C4    # ACT_A not signaled: VALUE
    found, _more = acts(ctpm_tpm)
    assert found[ACT_0][0] in (999, 1000) and found[ACT_0][1] == 0
    assert found[ACT_A] == (0, 0)


def test_policy_capability_on_an_act():
    """PolicyCapability(TPM_CAP_ACT): the TPMS_ACT_DATA of one ACT (handle, timeout,
    attributes); an ACT the TPM does not have satisfies only NEQ."""
    tpm, clock = started()
    assert set_timeout(tpm, ACT_0, 1) == 0
    clock.advance(1)
    r = tpm.execute(cmd(0x176, u32(0x40000007) + u32(0x40000007) + b2(b"\x11" * 16) + b2(b"")
                        + bytes([1]) + u16(0x10) + u16(0x0B)))
    s = struct.unpack(">I", r[10:14])[0]

    def check(operand, offset, op, prop):
        return rc(tpm.execute(cmd(0x19B, b2(operand) + u16(offset) + u16(op) + u32(CAP_ACT)
                                  + u32(prop), handles=[s])))
    assert check(u32(ACT_0) + u32(0) + u32(SIGNALED), 0, 0, ACT_0) == 0
    assert check(u32(SIGNALED), 8, 0xA, ACT_0) == 0                   # BITSET signaled
    assert check(u32(SIGNALED), 8, 0xA, ACT_A) == 0x126               # not signaled: POLICY
    assert check(b"", 0, 1, ACT_1) == 0                               # no ACT_1: NEQ holds
    assert check(u32(0), 0, 0, 0x40000001) == 0x5C4                   # not an ACT: VALUE, P5
