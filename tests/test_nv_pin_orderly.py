"""PIN pass / PIN fail indices and orderly (RAM-backed) indices: the same command streams to
ctpm and swtpm (libtpms), engine checks of what reaches the NV image, ESAPI and tpm2-tools."""
import shutil
import struct
import subprocess

import pytest

from ctpm.engine.tpm import Tpm
from ctpm.platform import Platform
from ctpm.state.store import DirStore, MemoryStore
from ctpm.testing.process import run_daemon
from tests.peers import Swtpm, needs_swtpm, retrying
from tests.test_nv import (AUTHREAD, AUTHWRITE, COUNTER, GLOBALLOCK, NO_DA, ORDERLY, OWNERREAD,
                           OWNERWRITE, READ_STCLEAR, RW, WRITE_STCLEAR, WRITEDEFINE, data_of,
                           define, increment, read, read_lock, set_bits, undefine, write,
                           write_lock)
from tests.tpmcmd import (SHUTDOWN_CLEAR, SHUTDOWN_STATE, STARTUP_CLEAR, STARTUP_STATE, b2, cmd,
                          params, pw_session, rc, u16, u32)

PIN_FAIL, PIN_PASS = 0x80, 0x90
OWNER = 0x40000001
BAD_AUTH_S1, AUTH_FAIL_S1 = 0x9A2, 0x98E
POLICY_SESSION = 0x03000000
RETRY = 0x922


def pin(count, limit):
    return struct.pack(">II", count, limit)


START_POLICY = cmd(0x176, u32(0x40000007) + u32(0x40000007) + b2(b"\x11" * 16) + b2(b"")
                   + bytes([1]) + u16(0x10) + u16(0x000B))


def policy_secret(index, auth):
    """PolicySecret(authHandle=index) with a password session for the index."""
    return cmd(0x151, b2(b"") + b2(b"") + b2(b"") + u32(0),
               handles=[index, POLICY_SESSION], sessions=[pw_session(auth)])


F, P, Q, FO = 0x01000020, 0x01000021, 0x01000022, 0x01000023
FAIL_ATTRS = OWNERWRITE | OWNERREAD | AUTHREAD | NO_DA | PIN_FAIL
PASS_ATTRS = OWNERWRITE | OWNERREAD | PIN_PASS        # DA-protected, no AUTHREAD


def pin_stream(x, cycle):
    out = []
    o = out.append
    # NV_DefineSpace rules for PIN indices
    o(rc(x(define(F, FAIL_ATTRS & ~NO_DA, 8))))                        # PIN fail needs noDA
    o(rc(x(define(F, FAIL_ATTRS | AUTHWRITE, 8))))
    o(rc(x(define(P, PASS_ATTRS | AUTHWRITE, 8))))
    o(rc(x(define(P, PASS_ATTRS | GLOBALLOCK, 8))))
    o(rc(x(define(P, PASS_ATTRS | WRITEDEFINE, 8))))
    o(rc(x(define(P, PASS_ATTRS, 4))))                                 # size must be 8
    o(rc(x(define(P, PASS_ATTRS, 16))))
    o(rc(x(define(P, RW | 0xA0, 8))))                                  # NT 10: no such type
    # PIN fail: counts failures, refuses once pinCount reaches pinLimit, 0 on success
    o(rc(x(define(F, FAIL_ATTRS, 8, auth=b"pin"))))
    o(params(x(cmd(0x169, handles=[F]))).hex())
    o(data_of(x(read(F, 8, auth=b"pin"))))                             # unwritten: unavailable
    o(rc(x(write(F, pin(0, 2), auth=b"pin"))))                         # no AUTHWRITE
    o(rc(x(increment(F, by=OWNER))))                                   # not a counter
    o(rc(x(set_bits(F, 1, by=OWNER))))
    o(rc(x(write(F, pin(0, 2) + b"x", by=OWNER))))                     # NV_RANGE
    o(rc(x(write(F, pin(1, 2), by=OWNER))))
    o(data_of(x(read(F, 8, auth=b"pin"))))                             # success: count 0
    o(rc(x(read(F, 8, auth=b"bad"))))                                  # BAD_AUTH (noDA)
    o(data_of(x(read(F, 8, by=OWNER))))                                # 1 failure
    o(rc(x(read(F, 8, auth=b"bad"))))
    o(data_of(x(read(F, 8, by=OWNER))))                                # 2 = pinLimit
    o(data_of(x(read(F, 8, auth=b"pin"))))                             # AUTH_UNAVAILABLE
    o(rc(x(read(F, 8, auth=b"bad"))))                                  # no more counting
    o(data_of(x(read(F, 8, by=OWNER))))
    o(rc(x(write(F, pin(1, 3), by=OWNER))))
    o(rc(x(read(F, 4, 2, auth=b"bad"))))
    o(rc(x(read_lock(F, auth=b"pin"))))                                # a read: counts success
    o(data_of(x(read(F, 8, by=OWNER))))
    # PolicySecret with the PIN index (the use PIN indices are for)
    o(rc(x(START_POLICY)))
    o(params(x(policy_secret(F, b"pin"))).hex())
    o(rc(x(policy_secret(F, b"bad"))))
    o(data_of(x(read(F, 8, by=OWNER))))
    x(cmd(0x165, u32(POLICY_SESSION)))
    # PIN pass: counts successes up to pinLimit; failures are DA failures
    o(rc(x(define(P, PASS_ATTRS, 8, auth=b"pass"))))
    o(rc(x(write(P, pin(0, 2), by=OWNER))))
    o(data_of(x(read(P, 8, auth=b"pass"))))                            # count 1 (read after)
    o(data_of(x(read(P, 8, auth=b"pass"))))
    o(data_of(x(read(P, 8, auth=b"pass"))))                            # AUTH_UNAVAILABLE
    o(rc(x(write(P, pin(0, 5), by=OWNER))))
    o(rc(x(read(P, 8, auth=b"bad"))))                                  # AUTH_FAIL (DA)
    o(data_of(x(read(P, 8, by=OWNER))))                                # not counted
    o(rc(x(write(P, pin(4, 5), by=P, auth=b"pass"))))                  # no AUTHWRITE
    o(rc(x(define(Q, PASS_ATTRS | NO_DA | AUTHREAD, 8, auth=b"q"))))
    o(rc(x(write(Q, b"\0\0\0\0", by=OWNER))))                          # a partial first write
    o(data_of(x(read(Q, 8, by=OWNER))))
    o(rc(x(read(Q, 8, auth=b"bad"))))                                  # noDA: BAD_AUTH
    o(rc(x(write(Q, pin(7, 7), by=OWNER))))
    o(data_of(x(read(Q, 8, auth=b"q"))))
    # the counts are in NV: they survive a TPM Reset
    o(rc(x(SHUTDOWN_CLEAR)))
    cycle()
    o(rc(x(STARTUP_CLEAR)))
    o(data_of(x(read(F, 8, by=OWNER))))
    o(data_of(x(read(P, 8, by=OWNER))))
    # an orderly PIN fail index counts in RAM, and is unwritten after a TPM Reset
    o(rc(x(define(FO, FAIL_ATTRS | ORDERLY, 8, auth=b"fo"))))
    o(rc(x(write(FO, pin(0, 3), by=OWNER))))
    o(rc(x(read(FO, 8, auth=b"bad"))))
    o(data_of(x(read(FO, 8, by=OWNER))))
    o(rc(x(SHUTDOWN_STATE)))
    cycle()
    o(rc(x(STARTUP_CLEAR)))                                            # TPM Restart: kept
    o(data_of(x(read(FO, 8, by=OWNER))))
    o(rc(x(read(FO, 8, auth=b"bad"))))
    cycle()                                                            # disorderly
    o(rc(x(STARTUP_CLEAR)))
    o(data_of(x(read(FO, 8, by=OWNER))))                               # unwritten
    o(data_of(x(read(FO, 8, auth=b"fo"))))
    for h in (F, P, Q, FO):
        o(rc(x(undefine(h))))
    return out


C1, C2, O1, N1, L1, L2 = 0x01000030, 0x01000031, 0x01000032, 0x01000033, 0x01000034, 0x01000035


def orderly_stream(x, cycle):
    out = []
    o = out.append

    def counters():
        o((data_of(x(read(C1, 8))), data_of(x(read(C2, 8)))))
    o(rc(x(define(C1, RW | COUNTER | ORDERLY | NO_DA, 8))))
    o(rc(x(define(C2, RW | COUNTER | NO_DA, 8))))
    for _ in range(3):
        o((rc(x(increment(C1))), rc(x(increment(C2)))))
    counters()
    cycle()                                             # power lost: a disorderly shutdown
    o(rc(x(STARTUP_CLEAR)))
    counters()                                          # C1 jumped to ...ff
    o(rc(x(increment(C1))))                             # rolls over: 0x100, written to NV
    counters()
    o(rc(x(increment(C1))))
    o(rc(x(SHUTDOWN_CLEAR)))                            # orderly: saved
    cycle()
    o(rc(x(STARTUP_CLEAR)))
    counters()
    o(rc(x(increment(C1))))
    o(rc(x(SHUTDOWN_STATE)))
    cycle()
    o(rc(x(STARTUP_CLEAR)))                             # TPM Restart
    counters()
    o(rc(x(increment(C1))))
    o(rc(x(SHUTDOWN_CLEAR)))
    o(rc(x(increment(C1))))                             # after Shutdown: disorderly again
    cycle()
    o(rc(x(STARTUP_CLEAR)))
    counters()
    o(rc(x(SHUTDOWN_STATE)))
    o(rc(x(increment(C1))))
    cycle()
    o(rc(x(STARTUP_STATE)))                             # no Resume: the shutdown is void
    o(rc(x(STARTUP_CLEAR)))
    counters()
    # ordinary indices: the first write starts from an erased index (RAM: zeros)
    o(rc(x(define(O1, RW | ORDERLY | NO_DA, 16))))
    o(rc(x(define(N1, RW | NO_DA, 16))))
    o((rc(x(write(O1, b"abcd", 2))), rc(x(write(N1, b"abcd", 2)))))
    o((data_of(x(read(O1, 16))), data_of(x(read(N1, 16)))))
    o(rc(x(SHUTDOWN_STATE)))
    cycle()
    o(rc(x(STARTUP_STATE)))                             # Resume: kept
    o(data_of(x(read(O1, 16))))
    # attribute changes of an orderly index stay in RAM and do not void the shutdown (noDA:
    # in the reference a DA-protected authorization after a Shutdown voids it)
    o(rc(x(define(L1, RW | ORDERLY | WRITE_STCLEAR | READ_STCLEAR | NO_DA, 8))))
    o(rc(x(define(L2, RW | WRITE_STCLEAR | READ_STCLEAR | NO_DA, 8))))
    o((rc(x(write(L1, b"orderly1"))), rc(x(write(L2, b"ordinary")))))
    o(rc(x(SHUTDOWN_STATE)))
    o((rc(x(write_lock(L1))), rc(x(write_lock(L2)))))
    o((rc(x(read_lock(L1))), rc(x(read_lock(L2)))))
    cycle()
    o(rc(x(STARTUP_STATE)))
    o((rc(x(write(L1, b"orderly2"))), rc(x(write(L2, b"ordinar2")))))
    o((data_of(x(read(L1, 8))), data_of(x(read(L2, 8)))))
    o(rc(x(SHUTDOWN_STATE)))
    cycle()
    o(rc(x(STARTUP_CLEAR)))                             # Restart: orderly data kept
    o((data_of(x(read(O1, 16))), data_of(x(read(L1, 8)))))
    o(rc(x(write(O1, b"new!"))))
    o((data_of(x(read(O1, 16)))))
    cycle()
    o(rc(x(STARTUP_CLEAR)))                             # TPM Reset: orderly unwritten
    o((data_of(x(read(O1, 16))), data_of(x(read(N1, 16)))))
    o(rc(x(write(O1, b"xy", 14))))
    o(data_of(x(read(O1, 16))))
    o(params(x(cmd(0x169, handles=[C1]))).hex())
    o(rc(x(undefine(C1))))                              # its value is kept as the maximum
    o(rc(x(define(C1, RW | COUNTER | ORDERLY | NO_DA, 8))))
    o(rc(x(increment(C1))))
    counters()
    for h in (C1, C2, O1, N1, L1, L2):
        o(rc(x(undefine(h))))
    return out


# -- against swtpm -----------------------------------------------------------------------------




def _compare(stream_fn):
    ours = Tpm.manufacture(seed=b"pin-orderly")
    assert rc(ours.execute(STARTUP_CLEAR)) == 0
    sw = Swtpm()
    try:
        assert rc(sw.execute(STARTUP_CLEAR)) == 0

        def our_cycle():
            ours.power_off()
            ours.power_on()

        def sw_cycle():
            assert sw.ctrl(2, u32(0)) == u32(0)      # CMD_INIT: _TPM_Init
        a = stream_fn(ours.execute, our_cycle)
        b = stream_fn(retrying(sw.execute), sw_cycle)
    finally:
        sw.close()
    diffs = [(i, x, y) for i, (x, y) in enumerate(zip(a, b)) if x != y]
    assert not diffs, diffs
    assert len(a) == len(b)
    return a


@needs_swtpm
@pytest.mark.swtpm
def test_pin_indices_as_swtpm():
    out = _compare(pin_stream)
    assert out[:8] == [0x2C2] * 5 + [0x2D5, 0x2D5, 0x2C2]   # ATTRIBUTES/SIZE, parameter 2


@needs_swtpm
@pytest.mark.swtpm
def test_orderly_indices_as_swtpm():
    out = _compare(orderly_stream)
    assert out[5] == ((0, "0000000000000003"), (0, "0000000000000003"))
    assert out[7][0] == (0, "00000000000000ff")          # jumped past anything it showed


@needs_swtpm
@pytest.mark.swtpm
def test_orderly_indices_across_process_restarts_as_swtpm(tmp_path):
    """The same stream, but every power cycle kills the process (swtpm with SIGKILL, ctpm's
    engine dropped without a word) and starts it again on its state directory."""
    store = DirStore(str(tmp_path / "ctpm"))
    tpm = [Tpm.manufacture(Platform(store), seed=b"pin-orderly")]
    assert rc(tpm[0].execute(STARTUP_CLEAR)) == 0

    def our_cycle():
        tpm[0] = Tpm.manufacture(Platform(DirStore(store.path)))
    sw = Swtpm()
    try:
        assert rc(sw.execute(STARTUP_CLEAR)) == 0
        a = orderly_stream(lambda c: tpm[0].execute(c), our_cycle)
        b = orderly_stream(retrying(sw.execute), sw.restart)
    finally:
        sw.close()
    assert [(i, x, y) for i, (x, y) in enumerate(zip(a, b)) if x != y] == []
    assert a[7][0] == (0, "00000000000000ff")


# -- engine: what reaches the NV image ---------------------------------------------------------

class CountingStore(MemoryStore):
    """A MemoryStore that counts how often the engine writes its NV image."""

    def __init__(self):
        super().__init__()
        self.saves = 0

    def save(self, blob):
        self.saves += 1
        super().save(blob)


def _counting_tpm():
    store = CountingStore()
    # a clock that stands still: no periodic clock write gets in between
    tpm = Tpm.manufacture(Platform(store, clock_ns=lambda: 0), seed=b"writes")
    assert rc(tpm.execute(STARTUP_CLEAR)) == 0

    def writes(command):
        before = store.saves
        assert rc(tpm.execute(command)) == 0
        return store.saves - before
    return tpm, writes


def test_orderly_counter_reaches_the_nv_image_only_now_and_then():
    tpm, writes = _counting_tpm()
    assert writes(define(C1, RW | COUNTER | ORDERLY | NO_DA, 8)) == 1
    assert writes(define(C2, RW | COUNTER | NO_DA, 8)) == 1
    assert [writes(increment(C2)) for _ in range(5)] == [1] * 5      # every increment
    assert writes(increment(C1)) == 1                                 # first value (WRITTEN)
    assert sum(writes(increment(C1)) for _ in range(254)) == 0        # ... up to 255 in RAM
    assert writes(increment(C1)) == 1                                 # 256: low bits roll over
    assert writes(increment(C1)) == 0
    assert writes(read(C1, 8)) == 0
    assert tpm.state.nv["nv_indices"][f"{C1:08x}"]["data"] == "0000000000000100"
    assert writes(SHUTDOWN_CLEAR) == 1                                # saved at Shutdown
    assert tpm.state.nv["nv_indices"][f"{C1:08x}"]["data"] == "0000000000000101"
    # an orderly write after Shutdown voids it (one write, of the orderly flag)
    assert writes(increment(C1)) == 1
    assert tpm.state.nv["orderly"] is None
    # other orderly indices: data and attribute changes stay in RAM
    assert writes(define(O1, RW | ORDERLY | NO_DA | WRITE_STCLEAR, 16)) == 1
    assert [writes(write(O1, bytes([i]) * 16)) for i in range(5)] == [0] * 5
    assert writes(write_lock(O1)) == 0
    assert writes(undefine(C1)) == 1


def test_orderly_indices_need_no_nv():
    """An orderly index is written in RAM, so NV being unavailable does not stop it (the
    first value of a counter and every 256th are written to NV, so they do need it)."""
    tpm, _writes = _counting_tpm()
    x = tpm.execute
    assert rc(x(define(O1, RW | ORDERLY | NO_DA, 8))) == 0
    assert rc(x(define(N1, RW | NO_DA, 8))) == 0
    assert rc(x(define(C1, RW | COUNTER | ORDERLY | NO_DA, 8))) == 0
    tpm.nv_off()
    assert rc(x(write(O1, b"in RAM!!"))) == 0
    assert rc(x(write(N1, b"needs NV"))) == 0x923                    # TPM_RC_NV_UNAVAILABLE
    assert rc(x(increment(C1))) == 0x923
    tpm.nv_on()
    assert rc(x(increment(C1))) == 0
    tpm.nv_off()
    assert rc(x(increment(C1))) == 0
    assert params(x(read(O1, 8)))[2:] == b"in RAM!!"


def test_pin_fail_counts_through_the_dispatcher_paths():
    """A PIN fail index counts failed passwords, starts over at 0 on success, and stops
    lending its authValue at pinLimit (HMAC and policy sessions: the ESAPI test)."""
    tpm, _writes = _counting_tpm()
    x = tpm.execute
    assert rc(x(define(F, FAIL_ATTRS, 8, auth=b"pin"))) == 0
    assert rc(x(write(F, pin(0, 9), by=OWNER))) == 0
    assert rc(x(read(F, 8, auth=b"bad"))) == BAD_AUTH_S1
    assert rc(x(read(F, 8, auth=b"bad"))) == BAD_AUTH_S1
    assert params(x(read(F, 8, by=OWNER)))[2:] == pin(2, 9)
    assert rc(x(read(F, 8, auth=b"pin"))) == 0
    assert params(x(read(F, 8, by=OWNER)))[2:] == pin(0, 9)
    assert rc(x(write(F, pin(3, 3), by=OWNER))) == 0
    assert rc(x(read(F, 8, auth=b"pin"))) == 0x12F                    # AUTH_UNAVAILABLE
    assert rc(x(read(F, 8, by=OWNER))) == 0                           # owner reads still


# -- tpm2-pytss ESAPI ----------------------------------------------------------------------------

async def test_pin_indices_through_esapi(ctpm_server):
    """HMAC sessions (ESAPI checks every response HMAC, over a Name that changes with the
    index's attributes) and PolicySecret authorized by PIN indices; an orderly counter."""
    pytss = pytest.importorskip("tpm2_pytss")
    from ctpm.testing import with_esapi
    from tpm2_pytss.constants import TPM2_ALG, TPM2_NT, TPM2_SE, TPMA_NV, TPMA_SESSION
    from tpm2_pytss.types import (TPM2B_AUTH, TPM2B_MAX_NV_BUFFER, TPM2B_NV_PUBLIC,
                                  TPMS_NV_PIN_COUNTER_PARAMETERS, TPMS_NV_PUBLIC, TPMT_SYM_DEF)
    ESYS_TR = pytss.ESYS_TR

    def public(index, attrs, nt):
        return TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(
            nvIndex=index, nameAlg=TPM2_ALG.SHA256, dataSize=8,
            attributes=attrs | (nt << TPMA_NV.TPM2_NT_SHIFT)))

    def counts(esapi, index, count, limit):
        esapi.nv_write(index, TPM2B_MAX_NV_BUFFER(TPMS_NV_PIN_COUNTER_PARAMETERS(
            pinCount=count, pinLimit=limit).marshal()), 0, auth_handle=ESYS_TR.OWNER)

    def scenario(esapi):
        out = {}

        def rc_of(fn):
            try:
                fn()
                return 0
            except pytss.TSS2_Exception as e:
                return e.rc & 0xFFF

        def hmac_session():
            s = esapi.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.HMAC,
                                         TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                                         TPM2_ALG.SHA256)
            esapi.trsess_set_attributes(s, TPMA_SESSION.CONTINUESESSION)
            return s
        base = TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.NO_DA
        fail = esapi.nv_define_space(TPM2B_AUTH(b"1234"), public(
            0x01500020, base | TPMA_NV.AUTHREAD, TPM2_NT.PIN_FAIL))
        counts(esapi, fail, 0, 2)
        session = hmac_session()
        esapi.tr_set_auth(fail, b"1234")
        out["ok"] = bytes(esapi.nv_read(fail, 8, auth_handle=fail, session1=session))
        esapi.tr_set_auth(fail, b"0000")
        out["wrong"] = [rc_of(lambda: esapi.nv_read(fail, 8, auth_handle=fail,
                                                     session1=session)) for _ in range(3)]
        esapi.tr_set_auth(fail, b"1234")
        out["locked"] = rc_of(lambda: esapi.nv_read(fail, 8, auth_handle=fail,
                                                     session1=session))
        out["after"] = bytes(esapi.nv_read(fail, 8, auth_handle=ESYS_TR.OWNER))
        counts(esapi, fail, 0, 2)
        policy = esapi.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY,
                                          TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                                          TPM2_ALG.SHA256)
        esapi.tr_set_auth(fail, b"0000")
        out["secret_wrong"] = rc_of(lambda: esapi.policy_secret(fail, policy,
                                                                session1=session))
        esapi.tr_set_auth(fail, b"1234")
        esapi.policy_secret(fail, policy, session1=session)
        out["secret_after"] = bytes(esapi.nv_read(fail, 8, auth_handle=ESYS_TR.OWNER))
        esapi.flush_context(policy)
        # PIN pass: DA-protected here, so a wrong value is a DA failure and is not counted
        passes = esapi.nv_define_space(TPM2B_AUTH(b"go"), public(
            0x01500021, TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD, TPM2_NT.PIN_PASS))
        counts(esapi, passes, 0, 2)
        esapi.tr_set_auth(passes, b"go")
        out["passes"] = [rc_of(lambda: esapi.nv_read(passes, 8, auth_handle=passes,
                                                      session1=session)) for _ in range(3)]
        out["passes_after"] = bytes(esapi.nv_read(passes, 8, auth_handle=ESYS_TR.OWNER))
        # an orderly counter: WRITTEN (and so its Name) comes from RAM
        counter = esapi.nv_define_space(TPM2B_AUTH(b""), public(
            0x01500022, base | TPMA_NV.ORDERLY, TPM2_NT.COUNTER))
        for _ in range(3):
            esapi.nv_increment(counter, auth_handle=ESYS_TR.OWNER, session1=session)
        out["counter"] = bytes(esapi.nv_read(counter, 8, auth_handle=ESYS_TR.OWNER,
                                             session1=session))
        esapi.flush_context(session)
        for index in (fail, passes, counter):
            esapi.nv_undefine_space(index)
        return out

    out = await with_esapi(ctpm_server, scenario, "mssim")
    assert out["ok"] == pin(0, 2)
    assert out["wrong"] == [0x9A2, 0x9A2, 0x12F]     # BAD_AUTH twice, then unavailable
    assert out["locked"] == 0x12F
    assert out["after"] == pin(2, 2)
    assert out["secret_wrong"] == 0x9A2
    assert out["secret_after"] == pin(0, 2)           # success starts over at 0
    assert out["passes"] == [0, 0, 0x12F]
    assert out["passes_after"] == pin(2, 2)
    assert out["counter"] == struct.pack(">Q", 3)


# -- tpm2-tools against a `ctpm run` process -------------------------------------------------------

@pytest.mark.tools
@pytest.mark.skipif(shutil.which("tpm2_nvdefine") is None, reason="tpm2-tools missing")
def test_tools_pin_and_orderly(tmp_path):
    def run(*args, check=True):
        r = subprocess.run(args, capture_output=True, timeout=60, cwd=tmp_path)
        if check:
            assert r.returncode == 0, (args, r.stderr.decode("utf-8", "replace"))
        return r
    state = str(tmp_path / "state")
    (tmp_path / "pin.bin").write_bytes(pin(0, 2))
    with run_daemon("--mssim", "127.0.0.1:0", "--state", state) as d:
        t = d.tcti()
        run("tpm2_startup", "-c", "-T", t)
        run("tpm2_nvdefine", "-T", t, "0x1500030", "-C", "o", "-s", "8", "-p", "1234",
            "-a", "ownerread|ownerwrite|authread|no_da|nt=pinfail")
        r = run("tpm2_nvdefine", "-T", t, "0x1500031", "-C", "o", "-s", "8",
                "-a", "ownerread|ownerwrite|authread|nt=pinfail", check=False)
        assert r.returncode != 0 and b"0x2C2" in r.stderr          # PIN fail needs noDA
        run("tpm2_nvwrite", "-T", t, "0x1500030", "-C", "o", "-i", "pin.bin")
        r = run("tpm2_nvread", "-T", t, "0x1500030", "-C", "0x1500030", "-P", "0000",
                "-s", "8", check=False)
        assert r.returncode != 0 and b"0x9A2" in r.stderr
        assert run("tpm2_nvread", "-T", t, "0x1500030", "-C", "o", "-s", "8").stdout \
            == pin(1, 2)
        run("tpm2_startauthsession", "-T", t, "--policy-session", "-S", "s.ctx")
        run("tpm2_policysecret", "-T", t, "-S", "s.ctx", "-c", "0x1500030", "1234")
        run("tpm2_flushcontext", "-T", t, "s.ctx")
        assert run("tpm2_nvread", "-T", t, "0x1500030", "-C", "o", "-s", "8").stdout \
            == pin(0, 2)
        # an orderly counter, then the daemon stops without TPM2_Shutdown
        run("tpm2_nvdefine", "-T", t, "0x1500032", "-C", "o", "-s", "8",
            "-a", "ownerread|ownerwrite|orderly|no_da|nt=counter")
        for _ in range(3):
            run("tpm2_nvincrement", "-T", t, "0x1500032", "-C", "o")
    with run_daemon("--mssim", "127.0.0.1:0", "--state", state) as d:
        t = d.tcti()
        run("tpm2_startup", "-c", "-T", t)
        assert run("tpm2_nvread", "-T", t, "0x1500032", "-C", "o", "-s", "8").stdout \
            == struct.pack(">Q", 0xFF)                              # moved past 3
        run("tpm2_nvincrement", "-T", t, "0x1500032", "-C", "o")
        run("tpm2_nvincrement", "-T", t, "0x1500032", "-C", "o")
        run("tpm2_shutdown", "-c", "-T", t)
    with run_daemon("--mssim", "127.0.0.1:0", "--state", state) as d:
        t = d.tcti()
        run("tpm2_startup", "-c", "-T", t)
        assert run("tpm2_nvread", "-T", t, "0x1500032", "-C", "o", "-s", "8").stdout \
            == struct.pack(">Q", 0x101)                             # orderly: exact
        assert run("tpm2_nvread", "-T", t, "0x1500030", "-C", "o", "-s", "8").stdout \
            == pin(0, 2)
