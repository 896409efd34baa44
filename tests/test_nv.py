"""NV storage (Part 3 §31): engine flows, error codes, and the same stream to swtpm."""
import hashlib
import shutil
import struct
import subprocess

import pytest

from ctpm.testing.process import run_daemon
from tests.peers import Swtpm, needs_swtpm, retrying
from tests.test_objects import started
from tests.tpmcmd import (SHUTDOWN_CLEAR, SHUTDOWN_STATE, STARTUP_CLEAR, b2, cmd, params,
                          pw_session, rc, u16, u32)

OWNER, PLATFORM, RS_PW = 0x40000001, 0x4000000C, 0x40000009
SHA256, SHA1 = 0x000B, 0x0004

PPWRITE, OWNERWRITE, AUTHWRITE, POLICYWRITE = 0x1, 0x2, 0x4, 0x8
COUNTER, BITS, EXTEND = 0x10, 0x20, 0x40
POLICY_DELETE, WRITELOCKED, WRITEALL, WRITEDEFINE = 0x400, 0x800, 0x1000, 0x2000
WRITE_STCLEAR, GLOBALLOCK = 0x4000, 0x8000
PPREAD, OWNERREAD, AUTHREAD, POLICYREAD = 0x10000, 0x20000, 0x40000, 0x80000
NO_DA, ORDERLY, CLEAR_STCLEAR, READLOCKED = 0x2000000, 0x4000000, 0x8000000, 0x10000000
WRITTEN, PLATFORMCREATE, READ_STCLEAR = 0x20000000, 0x40000000, 0x80000000
RW = OWNERWRITE | OWNERREAD | AUTHWRITE | AUTHREAD

NV_AUTHORIZATION, NV_UNINITIALIZED, NV_RANGE, NV_LOCKED = 0x149, 0x14A, 0x146, 0x148
NV_DEFINED, NV_SPACE, HANDLE_H2 = 0x14C, 0x14B, 0x18B


def nv_public(index, attrs, size, alg=SHA256, policy=b""):
    return u32(index) + u16(alg) + u32(attrs) + b2(policy) + u16(size)


def define(index, attrs, size, auth=b"", hierarchy=OWNER, alg=SHA256, policy=b"", raw=None):
    body = nv_public(index, attrs, size, alg, policy) if raw is None else raw
    return cmd(0x12A, b2(auth) + b2(body), handles=[hierarchy], sessions=[pw_session()])


def undefine(index, hierarchy=OWNER):
    return cmd(0x122, handles=[hierarchy, index], sessions=[pw_session()])


def read_public(index):
    return cmd(0x169, handles=[index])


def write(index, data, offset=0, auth=b"", by=None):
    return cmd(0x137, b2(data) + u16(offset), handles=[by or index, index],
               sessions=[pw_session(auth)])


def read(index, size, offset=0, auth=b"", by=None):
    return cmd(0x14E, u16(size) + u16(offset), handles=[by or index, index],
               sessions=[pw_session(auth)])


def increment(index, auth=b"", by=None):
    return cmd(0x134, handles=[by or index, index], sessions=[pw_session(auth)])


def extend(index, data, auth=b"", by=None):
    return cmd(0x136, b2(data), handles=[by or index, index], sessions=[pw_session(auth)])


def set_bits(index, bits, auth=b"", by=None):
    return cmd(0x135, struct.pack(">Q", bits), handles=[by or index, index],
               sessions=[pw_session(auth)])


def write_lock(index, auth=b"", by=None):
    return cmd(0x138, handles=[by or index, index], sessions=[pw_session(auth)])


def read_lock(index, auth=b"", by=None):
    return cmd(0x14F, handles=[by or index, index], sessions=[pw_session(auth)])


def nv_handles(execute):
    body = params(execute(cmd(0x17A, u32(1) + u32(0x01000000) + u32(64))))
    count = struct.unpack(">I", body[5:9])[0]
    return [struct.unpack(">I", body[9 + 4 * i:13 + 4 * i])[0] for i in range(count)]


def prop(execute, pt):
    body = params(execute(cmd(0x17A, u32(6) + u32(pt) + u32(1))))
    return struct.unpack(">II", body[9:17])


def data_of(rsp):
    """(rc, data) of an NV_Read."""
    return (rc(rsp), params(rsp)[2:].hex() if rc(rsp) == 0 else None)


CHANGE_AUTH_POLICY = hashlib.sha256(bytes(32) + u32(0x16C) + u32(0x13B)).digest()


READ_POLICY = hashlib.sha256(bytes(32) + u32(0x16C) + u32(0x14E)).digest()


def command_code_session(execute, code):
    """(handle, its authorization area, [rc of PolicyCommandCode(code)]) of a new unbound
    SHA-256 policy session, or (None, None, ("start", rc)) if StartAuthSession failed."""
    rsp = execute(cmd(0x176, u32(0x40000007) + u32(0x40000007) + b2(b"\x11" * 16) + b2(b"")
                      + bytes([1]) + u16(0x10) + u16(SHA256)))
    if rc(rsp):
        return None, None, ("start", rc(rsp))
    session = struct.unpack(">I", rsp[10:14])[0]
    auth = u32(session) + b2(b"\x22" * 16) + bytes([0]) + b2(b"")
    return session, auth, [rc(execute(cmd(0x16C, u32(code), handles=[session])))]


def policy_read(execute, index, code=0x14E):
    """NV_Read authorized by the index (its authHandle) in a policy session with
    PolicyCommandCode(code)."""
    session, auth, out = command_code_session(execute, code)
    if session is None:
        return out
    out.append(data_of(execute(cmd(0x14E, u16(4) + u16(0), handles=[index, index],
                                   sessions=[auth]))))
    execute(cmd(0x165, u32(session)))
    return out


def policy_change_auth(execute, index, new_auth):
    """NV_ChangeAuth in a policy session with PolicyCommandCode(NV_ChangeAuth)."""
    session, auth, out = command_code_session(execute, 0x13B)
    if session is None:
        return out
    out.append(rc(execute(cmd(0x13B, b2(new_auth), handles=[index], sessions=[auth]))))
    return out


DELETE_POLICY = hashlib.sha256(bytes(32) + u32(0x16C) + u32(0x11F)).digest()


def undefine_special(execute, index, code=0x11F, policy=True):
    """NV_UndefineSpaceSpecial: the index's ADMIN role in a policy session with
    PolicyCommandCode(code) (or a password when policy is False), plus platform auth."""
    if not policy:
        return rc(execute(cmd(0x11F, handles=[index, PLATFORM],
                              sessions=[pw_session(), pw_session()])))
    session, auth, out = command_code_session(execute, code)
    if session is None:
        return out
    out.append(rc(execute(cmd(0x11F, handles=[index, PLATFORM],
                              sessions=[auth, pw_session()]))))
    execute(cmd(0x165, u32(session)))
    return out


I1, I2, I3, I4, I5, I6, I7 = (0x01000001, 0x01000002, 0x01000003, 0x01000004, 0x01000005,
                              0x01000006, 0x01000007)


def stream(execute, restart):
    x = execute
    out = []
    o = out.append
    # NV_DefineSpace consistency checks
    o(rc(x(define(I1, RW, 2049))))                                   # too large
    o(rc(x(define(I1, RW | WRITEALL, 1025))))                        # writeAll > buffer
    o(rc(x(define(I1, RW | 0x30, 8))))                               # NT 3: unknown
    o(rc(x(define(I1, RW | COUNTER, 4))))                            # counter not 8 bytes
    o(rc(x(define(I1, RW | EXTEND, 20))))                            # extend != digest
    o(rc(x(define(I1, RW | COUNTER | CLEAR_STCLEAR, 8))))
    o(rc(x(define(I1, RW | WRITTEN, 8))))
    o(rc(x(define(I1, RW | READLOCKED, 8))))
    o(rc(x(define(I1, OWNERWRITE | AUTHWRITE, 8))))                  # no read
    o(rc(x(define(I1, OWNERREAD | AUTHREAD, 8))))                    # no write
    o(rc(x(define(I1, RW | CLEAR_STCLEAR | WRITEDEFINE, 8))))
    o(rc(x(define(I1, RW | PLATFORMCREATE, 8))))                     # owner + platformCreate
    o(rc(x(define(I1, RW, 8, hierarchy=PLATFORM))))                  # platform w/o it
    o(rc(x(define(I1, RW, 8, policy=b"\0" * 20))))                   # policy size
    o(rc(x(define(I1, RW, 8, auth=b"a" * 33))))                      # auth too long
    o(rc(x(define(I1, RW | 0x100, 8))))                              # reserved bit
    o(rc(x(define(0x81000001, RW, 8))))                              # not an NV handle
    o(rc(x(define(I1, RW, 8, alg=0x0010))))                          # bad nameAlg
    o(rc(x(cmd(0x12A, b2(b"") + b2(b""), handles=[OWNER], sessions=[pw_session()]))))
    o(rc(x(define(I1, RW, 8, raw=nv_public(I1, RW, 8) + b"\0"))))    # trailing byte
    # an ordinary index
    o(rc(x(define(I1, RW, 32, auth=b"index pw"))))
    o(rc(x(define(I1, RW, 32))))                                     # NV_DEFINED
    o(params(x(read_public(I1))).hex())
    o(rc(x(read_public(I2))))                                        # not defined
    o(data_of(x(read(I1, 4, auth=b"index pw"))))                     # not written
    o(rc(x(write(I1, b"abcd", auth=b"index pw"))))
    o(rc(x(write(I1, b"x" * 30, 4, auth=b"index pw"))))              # past the end
    o(rc(x(write(I1, b"x", 33, auth=b"index pw"))))                  # offset past the end
    o(rc(x(write(I1, b"wxyz", 28, auth=b"index pw"))))
    o(rc(x(write(I1, b"q", auth=b"wrong"))))
    o(data_of(x(read(I1, 4, auth=b"index pw"))))
    o(data_of(x(read(I1, 4, 28, by=OWNER))))
    o(data_of(x(read(I1, 5, 28, by=OWNER))))                         # NV_RANGE
    o(data_of(x(read(I1, 1, 33, by=OWNER))))                         # offset
    o(data_of(x(read(I1, 1, by=PLATFORM))))                          # no PPREAD
    o(rc(x(write(I1, b"q", by=PLATFORM))))
    o(params(x(read_public(I1))).hex())                              # WRITTEN now
    o(rc(x(write(I1, b"data" * 300, auth=b"index pw"))))              # > MAX_NV_BUFFER
    o(rc(x(increment(I1, auth=b"index pw"))))                        # not a counter
    # writeAll
    o(rc(x(define(I2, OWNERWRITE | OWNERREAD | WRITEALL | NO_DA, 16))))
    o(rc(x(write(I2, b"short", by=OWNER))))
    o(rc(x(write(I2, b"s" * 16, by=OWNER))))
    o(data_of(x(read(I2, 16, by=OWNER))))
    o(rc(x(write(I2, b"s", by=I2))))                                 # index auth not allowed
    # a counter: never goes back
    o(rc(x(define(I3, RW | COUNTER, 8))))
    o(data_of(x(read(I3, 8))))
    o(rc(x(increment(I3))))
    o(rc(x(increment(I3))))
    o(data_of(x(read(I3, 8))))
    o(rc(x(write(I3, bytes(8)))))                                    # ATTRIBUTES
    o(rc(x(undefine(I3))))
    o(rc(x(define(I3, RW | COUNTER, 8))))
    o(rc(x(increment(I3, by=OWNER))))
    o(data_of(x(read(I3, 8))))                                       # at least the old value
    # bit field
    o(rc(x(define(I4, RW | BITS, 8))))
    o(rc(x(set_bits(I4, 0x10))))
    o(rc(x(set_bits(I4, 0x8000000000000001))))
    o(data_of(x(read(I4, 8))))
    o(rc(x(set_bits(I3, 1))))
    # extend
    o(rc(x(define(I5, RW | EXTEND, 32))))
    o(rc(x(extend(I5, b"one"))))
    o(rc(x(extend(I5, b"two"))))
    o(data_of(x(read(I5, 32))))
    o(rc(x(define(I7, RW | EXTEND, 20, alg=SHA1))))
    o(rc(x(extend(I7, b"sha1"))))
    o(data_of(x(read(I7, 20))))
    # locks
    o(rc(x(define(I6, RW | WRITE_STCLEAR | READ_STCLEAR, 8))))
    o(rc(x(write_lock(I6))))
    o(rc(x(write(I6, b"12345678"))))                                 # NV_LOCKED
    o(rc(x(write_lock(I6))))                                         # already: success
    o(rc(x(write_lock(I1, auth=b"index pw"))))                       # no writeDefine/STCLEAR
    o(rc(x(read_lock(I6))))                                          # unwritten: uninitialized
    o(params(x(read_public(I6))).hex())
    restart()
    o(rc(x(STARTUP_CLEAR)))
    o(rc(x(write(I6, b"12345678"))))                                 # lock gone
    o(rc(x(read_lock(I6))))
    o(data_of(x(read(I6, 8))))                                       # NV_LOCKED
    o(rc(x(read_lock(I6))))                                          # already: success
    o(rc(x(read_lock(I1, auth=b"index pw"))))                        # ATTRIBUTES
    o(data_of(x(read(I3, 8))))
    o(params(x(read_public(I6))).hex())
    # writeDefine: locked for good once written
    o(rc(x(define(0x01000010, RW | WRITEDEFINE | CLEAR_STCLEAR, 8))))   # not together
    o(rc(x(define(0x01000010, RW | WRITEDEFINE, 8))))
    o(rc(x(write(0x01000010, b"abcdefgh"))))
    o(rc(x(write_lock(0x01000010))))
    restart()
    o(rc(x(STARTUP_CLEAR)))
    o(rc(x(write(0x01000010, b"abcdefgh"))))
    # clear_stclear: unwritten after a restart
    o(rc(x(define(0x01000011, RW | CLEAR_STCLEAR, 8))))
    o(rc(x(write(0x01000011, b"abcdefgh"))))
    restart()
    o(rc(x(STARTUP_CLEAR)))
    o(data_of(x(read(0x01000011, 8))))
    # ChangeAuth with a policy session
    o(rc(x(define(0x01000012, RW, 8, auth=b"old", policy=CHANGE_AUTH_POLICY))))
    o(rc(x(cmd(0x13B, b2(b"new"), handles=[0x01000012], sessions=[pw_session(b"old")]))))
    o(policy_change_auth(x, 0x01000012, b"new"))
    o(rc(x(write(0x01000012, b"abcdefgh", auth=b"old"))))
    o(rc(x(write(0x01000012, b"abcdefgh", auth=b"new"))))
    # platform indices
    o(rc(x(define(0x01400001, PPWRITE | PPREAD | PLATFORMCREATE, 8, hierarchy=PLATFORM))))
    o(rc(x(undefine(0x01400001))))                                   # NV_AUTHORIZATION
    o(rc(x(write(0x01400001, b"12345678", by=PLATFORM))))
    o(data_of(x(read(0x01400001, 8, by=PLATFORM))))
    o(rc(x(write(0x01400001, b"12345678", by=OWNER))))
    o(rc(x(undefine(0x01400001, PLATFORM))))
    # GlobalWriteLock
    o(rc(x(define(0x01000015, RW | GLOBALLOCK, 8))))
    o(rc(x(write(0x01000015, b"globally"))))
    o(rc(x(cmd(0x132, handles=[OWNER], sessions=[pw_session()]))))
    o(rc(x(write(0x01000015, b"globally"))))                         # NV_LOCKED
    o(rc(x(write(0x01000010 + 1, b"abcdefgh"))))                     # not GLOBALLOCK
    # ORDERLY: unwritten after a TPM Reset, kept by a Restart
    o(rc(x(define(0x01000016, RW | ORDERLY, 8))))
    o(rc(x(write(0x01000016, b"orderly!"))))
    restart()
    o(rc(x(STARTUP_CLEAR)))
    o(data_of(x(read(0x01000016, 8))))
    o(rc(x(SHUTDOWN_CLEAR)))
    restart(reset=True)
    o(rc(x(STARTUP_CLEAR)))
    o(data_of(x(read(0x01000016, 8))))                               # TPM Reset: unwritten
    o(data_of(x(read(0x01000011, 8, by=OWNER))))
    o(data_of(x(read(I3, 8))))                                       # counters stay
    # POLICYREAD / POLICYWRITE
    o(rc(x(define(0x01000013, OWNERWRITE | OWNERREAD | POLICYREAD, 8, policy=READ_POLICY))))
    o(rc(x(write(0x01000013, b"policy!!", by=OWNER))))
    o(policy_read(x, 0x01000013))
    o(policy_read(x, 0x01000013, 0x137))                             # wrong command code
    o(data_of(x(read(0x01000013, 4))))                               # no AUTHREAD
    o(rc(x(define(0x01000014, OWNERWRITE | OWNERREAD | POLICYWRITE, 8, policy=READ_POLICY))))
    o(rc(x(write(0x01000014, b"policy!!", by=OWNER))))
    o(policy_read(x, 0x01000014))                                    # no POLICYREAD
    # POLICY_DELETE: only platform indices, only NV_UndefineSpaceSpecial deletes them
    o(rc(x(define(0x01000017, RW | POLICY_DELETE, 8, policy=DELETE_POLICY))))
    pd = PPWRITE | PPREAD | PLATFORMCREATE | POLICY_DELETE
    o(rc(x(define(0x01400002, pd, 8, hierarchy=PLATFORM, policy=DELETE_POLICY))))
    o(rc(x(undefine(0x01400002, PLATFORM))))                         # ATTRIBUTES
    o(undefine_special(x, 0x01400002, policy=False))                 # ADMIN: policy only
    o(undefine_special(x, 0x01400002, code=0x137))                   # wrong command code
    o(rc(x(define(0x01400003, pd & ~POLICY_DELETE, 8, hierarchy=PLATFORM,
                  policy=DELETE_POLICY))))
    o(undefine_special(x, 0x01400003))                               # no POLICY_DELETE
    o(rc(x(undefine(0x01400003, PLATFORM))))
    o(undefine_special(x, 0x01400004))                               # not defined
    o(undefine_special(x, 0x01400002))
    o(rc(x(read_public(0x01400002))))                                # gone
    # the handle list and its counts
    o(nv_handles(x))
    o(prop(x, 0x202))                                                # HR_NV_INDEX
    o(prop(x, 0x20A))                                                # NV_COUNTERS
    for h in nv_handles(x):
        o(rc(x(undefine(h))))
    o(rc(x(undefine(I1))))                                           # gone
    o(nv_handles(x))
    return out


def _restart_ours(tpm):
    def restart(reset=False):
        if not reset:
            tpm.execute(SHUTDOWN_STATE)
        tpm.power_off()
        tpm.power_on()
    return restart


@needs_swtpm
@pytest.mark.swtpm
def test_nv_stream_as_swtpm():
    ours = started(seed=b"nv")
    sw = Swtpm()
    try:
        assert rc(sw.execute(STARTUP_CLEAR)) == 0

        def sw_restart(reset=False):
            if not reset:
                sw.execute(SHUTDOWN_STATE)
            sw.ctrl(2, u32(0))
        a = stream(ours.execute, _restart_ours(ours))
        b = stream(retrying(sw.execute), sw_restart)
        diffs = [(i, x, y) for i, (x, y) in enumerate(zip(a, b)) if x != y]
        assert not diffs, diffs
        assert len(a) == len(b)
    finally:
        sw.close()


def test_nv_engine_flow_and_errors():
    t = started(seed=b"nv")
    x = t.execute
    out = stream(x, _restart_ours(t))
    assert out[:2] == [0x2D5, 0x2D5]        # TPM_RC_SIZE on publicInfo (parameter 2)
    assert rc(x(define(I1, RW, 8))) == 0
    assert rc(x(read(I1, 8))) == NV_UNINITIALIZED
    assert rc(x(write(I1, b"0123456789"))) == NV_RANGE
    assert rc(x(write(I1, b"01", 7))) == NV_RANGE
    assert rc(x(write(I1, b"01", 6))) == 0
    assert rc(x(read(I1, 2, 6))) == 0 and params(x(read(I1, 2, 6)))[2:] == b"01"
    assert rc(x(write(I1, b"", auth=b"wrong"))) == 0x98E        # AUTH_FAIL, session 1
    assert rc(x(read(0x01000099, 1))) == HANDLE_H2       # not defined


def test_nv_space_limit_and_persistence(tmp_path):
    t = started(seed=b"nv", nv_space=100, max_nv_indices=2)
    x = t.execute
    assert rc(x(define(I1, RW, 64))) == 0
    assert rc(x(define(I2, RW, 64))) == NV_SPACE
    assert rc(x(define(I2, RW | COUNTER, 8))) == 0
    assert rc(x(define(I3, RW | COUNTER, 8))) == NV_SPACE
    assert rc(x(increment(I2))) == 0
    assert "nv_indices" in t.state.nv
    assert prop(x, 0x20A) == (0x20A, 1)
    # Clear removes owner indices
    assert rc(x(cmd(0x126, handles=[0x4000000A], sessions=[pw_session()]))) == 0
    assert nv_handles(x) == []


def test_counter_survives_undefine_and_redefine():
    t = started(seed=b"nv")
    x = t.execute
    assert rc(x(define(I3, RW | COUNTER, 8))) == 0
    for _ in range(5):
        assert rc(x(increment(I3))) == 0
    assert params(x(read(I3, 8)))[2:] == struct.pack(">Q", 5)
    assert rc(x(undefine(I3))) == 0
    assert rc(x(define(I3, RW | COUNTER, 8))) == 0
    assert rc(x(increment(I3))) == 0
    assert struct.unpack(">Q", params(x(read(I3, 8)))[2:])[0] >= 6


async def test_nv_through_esapi(ctpm_server):
    """ESAPI computes an index's Name itself (and again after the first write sets
    TPMA_NV_WRITTEN) and checks every HMAC over it, so a wrong Name or authValue fails."""
    pytss = pytest.importorskip("tpm2_pytss")
    from ctpm.testing import with_esapi
    from tpm2_pytss.constants import TPM2_ALG, TPM2_SE, TPMA_NV, TPMA_SESSION
    from tpm2_pytss.types import (TPM2B_AUTH, TPM2B_MAX_NV_BUFFER, TPM2B_NV_PUBLIC,
                                  TPMS_NV_PUBLIC, TPMT_SYM_DEF)
    ESYS_TR = pytss.ESYS_TR

    def public(index, attrs, size):
        return TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(
            nvIndex=index, nameAlg=TPM2_ALG.SHA256, attributes=attrs, dataSize=size))

    def scenario(esapi):
        out = {}
        rw = (TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.AUTHWRITE | TPMA_NV.AUTHREAD)
        index = esapi.nv_define_space(TPM2B_AUTH(b"nv secret"), public(0x01500001, rw, 64))
        esapi.tr_set_auth(index, b"nv secret")
        sym = TPMT_SYM_DEF(algorithm=TPM2_ALG.AES)
        sym.keyBits.aes = 128
        sym.mode.aes = TPM2_ALG.CFB
        session = esapi.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.HMAC, sym,
                                           TPM2_ALG.SHA256)
        esapi.trsess_set_attributes(session, TPMA_SESSION.CONTINUESESSION
                                    | TPMA_SESSION.DECRYPT | TPMA_SESSION.ENCRYPT)
        esapi.nv_write(index, TPM2B_MAX_NV_BUFFER(b"hello nv"), 0, session1=session)
        out["hmac_read"] = bytes(esapi.nv_read(index, 8, 0, session1=session))
        out["owner_read"] = bytes(esapi.nv_read(index, 8, 0, auth_handle=ESYS_TR.OWNER))
        pub, name = esapi.nv_read_public(index)
        out["written"] = bool(pub.nvPublic.attributes & TPMA_NV.WRITTEN)
        out["name"] = bytes(name)
        try:
            esapi.nv_write(index, TPM2B_MAX_NV_BUFFER(b"x" * 60), 8)
        except pytss.TSS2_Exception as e:
            out["range"] = e.rc & 0xFFF
        counter = esapi.nv_define_space(TPM2B_AUTH(b""), public(
            0x01500002, rw | (1 << 4), 8))
        for _ in range(3):
            esapi.nv_increment(counter, session1=session)
        out["counter"] = bytes(esapi.nv_read(counter, 8))
        esapi.flush_context(session)
        esapi.nv_undefine_space(index)
        esapi.nv_undefine_space(counter)
        # a POLICY_DELETE platform index, deleted by PolicyCommandCode + PolicyAuthValue:
        # the policy session's HMAC is keyed by the index's authValue (ADMIN role)
        policy = hashlib.sha256(DELETE_POLICY + u32(0x16B)).digest()
        special = esapi.nv_define_space(TPM2B_AUTH(b"delete me"), TPM2B_NV_PUBLIC(
            nvPublic=TPMS_NV_PUBLIC(nvIndex=0x01500003, nameAlg=TPM2_ALG.SHA256,
                                    attributes=TPMA_NV.PPWRITE | TPMA_NV.PPREAD
                                    | TPMA_NV.PLATFORMCREATE | TPMA_NV.POLICY_DELETE,
                                    authPolicy=policy, dataSize=8)),
            auth_handle=ESYS_TR.PLATFORM)
        for auth in (b"not it", b"delete me"):
            esapi.tr_set_auth(special, auth)
            ps = esapi.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY,
                                          TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                                          TPM2_ALG.SHA256)
            esapi.policy_command_code(ps, 0x11F)
            esapi.policy_auth_value(ps)
            try:
                esapi.nv_undefine_space_special(special, ps)
                out["special"] = out.get("special", []) + [0]
            except pytss.TSS2_Exception as e:
                out["special"] = out.get("special", []) + [e.rc & 0xFFF]
                esapi.flush_context(ps)
        try:
            esapi.tr_from_tpmpublic(0x01500003)       # asks the TPM (NV_ReadPublic)
        except pytss.TSS2_Exception as e:
            out["gone"] = e.rc & 0xFFF
        return out

    out = await with_esapi(ctpm_server, scenario, "mssim")
    assert out["hmac_read"] == out["owner_read"] == b"hello nv"
    assert out["written"] and len(out["name"]) == 34
    assert out["range"] == NV_RANGE
    assert out["counter"] == struct.pack(">Q", 3)
    assert out["special"] == [0x98E, 0]            # AUTH_FAIL on session 1, then deleted
    assert out["gone"] == 0x18B                    # TPM_RC_HANDLE, handle 1: no such index


@pytest.mark.tools
@pytest.mark.skipif(shutil.which("tpm2_nvdefine") is None, reason="tpm2-tools missing")
def test_tools_nv(tmp_path):
    def run(*args, check=True):
        r = subprocess.run(args, capture_output=True, timeout=60, cwd=tmp_path)
        r.stderr = r.stderr.decode("utf-8", "replace")
        if check:
            assert r.returncode == 0, (args, r.stderr)
        return r
    with run_daemon("--mssim", "127.0.0.1:0", "--state", str(tmp_path / "state")) as d:
        t = d.tcti()
        run("tpm2_startup", "-c", "-T", t)
        run("tpm2_nvdefine", "-T", t, "0x1500010", "-C", "o", "-s", "32", "-p", "idxpw",
            "-a", "ownerread|ownerwrite|authread|authwrite")
        (tmp_path / "in.bin").write_bytes(b"tools wrote this")
        run("tpm2_nvwrite", "-T", t, "0x1500010", "-C", "0x1500010", "-P", "idxpw",
            "-i", "in.bin")
        r = run("tpm2_nvread", "-T", t, "0x1500010", "-C", "o", "-s", "16")
        assert r.stdout == b"tools wrote this"
        assert run("tpm2_nvwrite", "-T", t, "0x1500010", "-C", "0x1500010", "-P", "wrong",
                   "-i", "in.bin", check=False).returncode != 0
        run("tpm2_nvdefine", "-T", t, "0x1500011", "-C", "o", "-s", "8",
            "-a", "ownerread|ownerwrite|nt=counter")
        run("tpm2_nvincrement", "-T", t, "0x1500011", "-C", "o")
        run("tpm2_nvincrement", "-T", t, "0x1500011", "-C", "o")
        r = run("tpm2_nvread", "-T", t, "0x1500011", "-C", "o", "-s", "8")
        assert r.stdout == struct.pack(">Q", 2)
        run("tpm2_nvdefine", "-T", t, "0x1500012", "-C", "o", "-s", "8",
            "-a", "ownerread|ownerwrite|nt=bits")
        run("tpm2_nvsetbits", "-T", t, "0x1500012", "-C", "o", "-i", "0x5")
        r = run("tpm2_nvread", "-T", t, "0x1500012", "-C", "o", "-s", "8")
        assert r.stdout == struct.pack(">Q", 5)
        run("tpm2_nvdefine", "-T", t, "0x1500013", "-C", "o", "-s", "32", "-g", "sha256",
            "-a", "ownerread|ownerwrite|nt=extend")
        (tmp_path / "ext.bin").write_bytes(b"measure")
        run("tpm2_nvextend", "-T", t, "0x1500013", "-C", "o", "-i", "ext.bin")
        r = run("tpm2_nvread", "-T", t, "0x1500013", "-C", "o", "-s", "32")
        assert r.stdout == hashlib.sha256(bytes(32) + b"measure").digest()
        out = run("tpm2_nvreadpublic", "-T", t).stdout.decode()
        for h in ("0x1500010", "0x1500011", "0x1500012", "0x1500013"):
            assert h in out
        assert "nv_written" in out or "written" in out
        for h in ("0x1500010", "0x1500011", "0x1500012", "0x1500013"):
            run("tpm2_nvundefine", "-T", t, h, "-C", "o")
        assert "0x15000" not in run("tpm2_nvreadpublic", "-T", t).stdout.decode()
