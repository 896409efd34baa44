"""Policies on NV indices (Part 3 §23.9 PolicyNV, §23.20 PolicyNvWritten, §23.22
PolicyAuthorizeNV): trial digests against the Part 3 formulas (hashlib, index Names computed
here), every TPM_EO passing and failing, the error cases, objects and indices authorized
through these policies, the same streams against swtpm, ESAPI and tpm2-tools."""
import hashlib
import struct
import subprocess

import pytest

from ctpm.testing import with_esapi
from tests.peers import Swtpm, needs_swtpm
from tests.test_duplication import retrying
from tests.test_nv import (AUTHREAD, AUTHWRITE, NO_DA, OWNER, OWNERREAD, OWNERWRITE,
                           POLICYWRITE, PPREAD, READ_STCLEAR, READLOCKED, WRITTEN, define,
                           nv_public, read_lock, write)
from tests.test_objects import started
from tests.test_policy import (SE_TRIAL, ZERO, H, P, S, _sealed_with_policy, _unseal, daemon,
                               f_auth_value, f_command_code, get_digest, needs_tools,
                               policy_auth, start)
from tests.tpmcmd import STARTUP_CLEAR, b2, cmd, params, pw_session, rc, u16, u32

tpm2_pytss = pytest.importorskip("tpm2_pytss")
from tpm2_pytss import ESYS_TR, TSS2_Exception  # noqa: E402
from tpm2_pytss.constants import (TPM2_ALG, TPM2_CC, TPM2_EO, TPM2_SE,  # noqa: E402
                                  TPMA_NV)
from tpm2_pytss.types import TPM2B_NV_PUBLIC, TPMS_NV_PUBLIC, TPMT_SYM_DEF  # noqa: E402

__all__ = ["daemon"]        # the module fixture, shared with test_policy

CC_PolicyNV, CC_PolicyNvWritten, CC_PolicyAuthorizeNV = 0x149, 0x18F, 0x192
CC_NV_Write, CC_NV_Read, CC_Unseal, CC_PolicyRestart, CC_Flush = 0x137, 0x14E, 0x15E, 0x180, 0x165
SHA256, SHA1 = 0x000B, 0x0004
EQ, NEQ, SIGNED_GT, UNSIGNED_GT, SIGNED_LT, UNSIGNED_LT = 0, 1, 2, 3, 4, 5
SIGNED_GE, UNSIGNED_GE, SIGNED_LE, UNSIGNED_LE, BITSET, BITCLEAR = 6, 7, 8, 9, 10, 11

POLICY, VALUE, SIZE, HASH, INSUFFICIENT = 0x126, 0x084, 0x095, 0x083, 0x09A
NV_AUTHORIZATION, NV_UNINITIALIZED, NV_LOCKED = 0x149, 0x14A, 0x148
AUTH_UNAVAILABLE, POLICY_FAIL, BAD_AUTH, AUTH_FAIL = 0x12F, 0x09D, 0x9A2, 0x98E

RW = OWNERREAD | OWNERWRITE | AUTHREAD | AUTHWRITE
SEALED = b2(b"sealed by policy")         # Unseal's outData (test_policy's sealed object)
DATA = bytes.fromhex("0010400080 00c33c".replace(" ", ""))
I_DATA, I_OTHER, I_FRESH, I_LOCK, I_NOREAD, I_POL, I_ONCE, I_DA = (
    0x01500001, 0x01500002, 0x01500003, 0x01500004, 0x01500005, 0x01500006, 0x01500007,
    0x01500008)


# -- the Part 3 formulas ------------------------------------------------------------------------

def nv_name(index, attrs, size, policy=b""):
    """Name of an index: nameAlg || H(TPMS_NV_PUBLIC) (Part 1 §16)."""
    return u16(SHA256) + hashlib.sha256(nv_public(index, attrs, size, policy=policy)).digest()


def f_nv(d, operand, offset, op, name):
    return H(d, u32(CC_PolicyNV), H(operand, u16(offset), u16(op)), name)


def f_nv_written(d, yes):
    return H(d, u32(CC_PolicyNvWritten), bytes([yes]))


def f_authorize_nv(name):
    return H(ZERO, u32(CC_PolicyAuthorizeNV), name)


# -- raw commands -------------------------------------------------------------------------------

def policy_nv(session, operand, offset, op, index=I_DATA, by=None, auth=b"nvpw"):
    return cmd(CC_PolicyNV, b2(operand) + u16(offset) + u16(op),
               handles=[by or index, index, session], sessions=[pw_session(auth)])


def authorize_nv(session, index, by=None, auth=b""):
    return cmd(CC_PolicyAuthorizeNV, handles=[by or index, index, session],
               sessions=[pw_session(auth)])


def nv_written(session, yes):
    return cmd(CC_PolicyNvWritten, bytes([yes]), handles=[session])


def flush(execute, handle):
    execute(cmd(CC_Flush, u32(handle)))


# Each TPM_EO once passing and once failing: (operation, operandB, offset, passes).
# DATA[1:3] = 10 40 (positive), DATA[4:6] = 80 00 (negative as a signed number).
EO_CASES = [
    (EQ, b"\x10\x40", 1, True), (EQ, b"\x10\x41", 1, False),
    (NEQ, b"\x10\x41", 1, True), (NEQ, b"\x10\x40", 1, False),
    (SIGNED_GT, b"\x10\x00", 1, True), (SIGNED_GT, b"\x20\x00", 1, False),
    (SIGNED_GT, b"\xf0\x00", 1, True), (SIGNED_GT, b"\x00\x01", 4, False),
    (UNSIGNED_GT, b"\x00\x01", 4, True), (UNSIGNED_GT, b"\xf0\x00", 1, False),
    (SIGNED_LT, b"\x00\x01", 4, True), (SIGNED_LT, b"\x10\x00", 1, False),
    (UNSIGNED_LT, b"\xf0\x00", 1, True), (UNSIGNED_LT, b"\x00\x01", 4, False),
    (SIGNED_GE, b"\x10\x40", 1, True), (SIGNED_GE, b"\x00\x00", 4, False),
    (UNSIGNED_GE, b"\x80\x00", 4, True), (UNSIGNED_GE, b"\x10\x41", 1, False),
    (SIGNED_LE, b"\x10\x40", 1, True), (SIGNED_LE, b"\x80\x00", 1, False),
    (UNSIGNED_LE, b"\x80\x00", 1, True), (UNSIGNED_LE, b"\x10\x40", 4, False),
    (BITSET, b"\x10\x00", 1, True), (BITSET, b"\x10\x01", 1, False),
    (BITCLEAR, b"\x01\x01", 1, True), (BITCLEAR, b"\x00\x40", 1, False),
    (EQ, DATA, 0, True), (UNSIGNED_LT, DATA[:7] + b"\x3d", 0, True),
    (EQ, b"", 8, True),                          # nothing left to compare: equal
]


def _setup(x):
    """The indices of the streams; returns the Name of the written data index."""
    out = [rc(x(define(I_DATA, RW | NO_DA, 8, auth=b"nvpw"))),
           rc(x(write(I_DATA, DATA, auth=b"nvpw"))),
           rc(x(define(I_OTHER, RW | NO_DA, 8, auth=b"other"))),
           rc(x(write(I_OTHER, DATA, auth=b"other"))),
           rc(x(define(I_FRESH, RW | NO_DA, 8, auth=b"nvpw"))),
           rc(x(define(I_LOCK, RW | NO_DA | READ_STCLEAR, 8, auth=b"nvpw"))),
           rc(x(write(I_LOCK, DATA, auth=b"nvpw"))),
           rc(x(read_lock(I_LOCK, auth=b"nvpw"))),
           rc(x(define(I_NOREAD, OWNERWRITE | AUTHWRITE | PPREAD | NO_DA, 8, auth=b"nvpw"))),
           rc(x(write(I_NOREAD, DATA, auth=b"nvpw"))),
           rc(x(define(I_DA, RW, 8, auth=b"dapw"))),
           rc(x(write(I_DA, DATA, auth=b"dapw")))]
    assert out == [0] * len(out), [hex(v) for v in out]


def _policy_nv_codes(x):
    """PolicyNV in real and trial sessions: rc and digest of each step."""
    _setup(x)
    out = []
    name = nv_name(I_DATA, RW | NO_DA | WRITTEN, 8)
    s, _ = start(x)
    d = ZERO
    for op, operand, offset, passes in EO_CASES:
        code = rc(x(policy_nv(s, operand, offset, op)))
        out.append(("eo", op, operand.hex(), offset, hex(code)))
        assert code == (0 if passes else POLICY), (op, operand.hex(), offset, hex(code))
        if passes:
            d = f_nv(d, operand, offset, op, name)
        assert get_digest(x, s) == d        # a failed assertion leaves the digest alone
    flush(x, s)
    s, _ = start(x)
    errors = [
        policy_nv(s, b"\x00", 9, EQ),                                # offset past the end
        policy_nv(s, b"\x00\x00", 7, EQ),                            # operandB past the end
        policy_nv(s, b"\x00", 8, EQ),
        policy_nv(s, b"\x00", 0, EQ, index=I_FRESH),                 # never written
        policy_nv(s, b"\x00", 0, EQ, index=I_LOCK),                  # read locked
        policy_nv(s, b"\x00", 0, EQ, by=OWNER, auth=b"", index=I_NOREAD),  # no OWNERREAD
        policy_nv(s, b"\x00", 0, EQ, index=I_NOREAD),                # no AUTHREAD
        policy_nv(s, b"\x00", 0, EQ, by=I_OTHER, auth=b"other"),     # another index
        policy_nv(s, b"\x00", 0, EQ, auth=b"wrong"),                 # NO_DA: BAD_AUTH
        policy_nv(s, b"\x00", 0, EQ, index=I_DA, auth=b"wrong"),     # DA: AUTH_FAIL
        policy_nv(s, b"\x00", 0, 12),                                # no such TPM_EO
        policy_nv(s, b"\x00" * 65, 0, EQ),                           # operandB too large
        policy_nv(s, b"\x00", 0, EQ, index=0x01500099, by=OWNER, auth=b""),   # no index
        policy_nv(0x02000000, b"\x00", 0, EQ),                       # an HMAC session handle
    ]
    for c in errors:
        out.append(("err", hex(rc(x(c)))))
    out.append(("ok-owner", hex(rc(x(policy_nv(s, DATA[:2], 0, EQ, by=OWNER, auth=b""))))))
    out.append(("ok-da", hex(rc(x(policy_nv(s, DATA[:2], 0, EQ, index=I_DA, auth=b"dapw"))))))
    out.append(("digest", get_digest(x, s).hex()))
    flush(x, s)
    # a trial session looks at no index: unwritten, locked, out of range all extend the digest
    t, _ = start(x, SE_TRIAL)
    d = ZERO
    locked = RW | NO_DA | READ_STCLEAR | WRITTEN | READLOCKED
    for index, attrs, operand, offset, op in [
            (I_FRESH, RW | NO_DA, b"\xff", 0, EQ),
            (I_LOCK, locked, b"\x01\x02", 7, SIGNED_GT),
            (I_DATA, RW | NO_DA | WRITTEN, b"\x33" * 12, 40, BITCLEAR)]:
        out.append(("trial", hex(rc(x(policy_nv(t, operand, offset, op, index=index))))))
        d = f_nv(d, operand, offset, op, nv_name(index, attrs, 8))
    out.append(("trial-digest", get_digest(x, t).hex(), get_digest(x, t) == d))
    flush(x, t)
    return out


def test_policy_nv_operations_errors_and_trial_digests():
    out = _policy_nv_codes(started(seed=b"policy-nv").execute)
    errs = [int(e[1], 16) for e in out if e[0] == "err"]
    assert errs == [P(VALUE, 2), P(SIZE, 1), P(SIZE, 1), NV_UNINITIALIZED, NV_LOCKED,
                    NV_AUTHORIZATION, AUTH_UNAVAILABLE, NV_AUTHORIZATION, BAD_AUTH,
                    AUTH_FAIL, P(VALUE, 3), P(SIZE, 1), 0x28B, 0x384]
    assert [e[1] for e in out if e[0].startswith("ok")] == ["0x0", "0x0"]
    assert [e for e in out if e[0] == "trial-digest"][0][2]


def test_signed_comparison_of_two_negative_numbers():
    """TPM_EO_SIGNED_* on two negative numbers is a two's complement comparison (the TCG
    reference's SignedCompareB; libtpms 0.9.2 inverts the order of two negatives)."""
    x = started(seed=b"policy-nv-neg").execute
    _setup(x)
    s, _ = start(x)
    # DATA[4:6] = 80 00 = -32768; ff ff = -1
    assert rc(x(policy_nv(s, b"\xff\xff", 4, SIGNED_LT))) == 0
    assert rc(x(policy_nv(s, b"\xff\xff", 4, SIGNED_GT))) == POLICY
    assert rc(x(policy_nv(s, b"\x80\x01", 4, SIGNED_LE))) == 0
    assert rc(x(policy_nv(s, b"\x80\x01", 4, SIGNED_GE))) == POLICY


# -- PolicyAuthorizeNV and PolicyNvWritten ------------------------------------------------------

def tpmt_ha(digest, alg=SHA256):
    return u16(alg) + digest


def _authorize_nv_codes(x):
    """PolicyAuthorizeNV: an object whose policy names an index unseals with whatever policy
    the index holds; PolicyNvWritten: a write-once index; the error cases."""
    out = []
    o = out.append
    attrs = RW | NO_DA
    idx, small, tiny = 0x01500010, 0x01500011, 0x01500012
    o(rc(x(define(idx, attrs, 34, auth=b"nvpw"))))
    t, _ = start(x, SE_TRIAL)                      # trial: the unwritten index is not read
    o(rc(x(authorize_nv(t, idx, auth=b"nvpw"))))
    o(get_digest(x, t) == f_authorize_nv(nv_name(idx, attrs, 34)))
    flush(x, t)
    cc_unseal = f_command_code(ZERO, CC_Unseal)
    o(rc(x(write(idx, tpmt_ha(cc_unseal), auth=b"nvpw"))))
    name = nv_name(idx, attrs | WRITTEN, 34)
    item = _sealed_with_policy(x, f_authorize_nv(name), auth=b"itempw")
    s, _ = start(x)
    o(rc(x(cmd(0x16C, u32(CC_Unseal), handles=[s]))))
    o(rc(x(authorize_nv(s, idx, auth=b"nvpw"))))
    o(get_digest(x, s) == f_authorize_nv(name))
    o(_unseal(x, item, s))
    # another policy in the index: the old one no longer passes, the new one does
    o(rc(x(write(idx, tpmt_ha(f_auth_value(ZERO)), auth=b"nvpw"))))
    o(rc(x(cmd(0x16C, u32(CC_Unseal), handles=[s]))))
    o(rc(x(authorize_nv(s, idx, auth=b"nvpw"))))                     # VALUE
    o(rc(x(cmd(CC_PolicyRestart, handles=[s]))))
    o(rc(x(cmd(0x18C, handles=[s]))))                                  # PolicyPassword
    o(rc(x(authorize_nv(s, idx, by=OWNER))))
    o(_unseal(x, item, s, auth=b"itempw"))
    o(rc(x(authorize_nv(s, idx, auth=b"nvpw"))))                     # zeros: VALUE
    # the index's TPMT_HA: another hash (HASH), no hash (HASH), too short (INSUFFICIENT)
    o(rc(x(write(idx, tpmt_ha(bytes(20), SHA1) + bytes(12), auth=b"nvpw"))))
    o(rc(x(authorize_nv(s, idx, auth=b"nvpw"))))
    o(rc(x(write(idx, u16(0x0010) + bytes(32), auth=b"nvpw"))))
    o(rc(x(authorize_nv(s, idx, auth=b"nvpw"))))
    o(rc(x(define(small, attrs, 20, auth=b"nvpw"))))
    o(rc(x(write(small, tpmt_ha(bytes(18)), auth=b"nvpw"))))
    o(rc(x(authorize_nv(s, small, auth=b"nvpw"))))
    o(rc(x(define(tiny, attrs, 1, auth=b"nvpw"))))
    o(rc(x(write(tiny, b"\x00", auth=b"nvpw"))))
    o(rc(x(authorize_nv(s, tiny, auth=b"nvpw"))))
    o(rc(x(define(0x01500013, attrs, 34, auth=b"nvpw"))))
    o(rc(x(authorize_nv(s, 0x01500013, auth=b"nvpw"))))               # NV_UNINITIALIZED
    o(rc(x(authorize_nv(s, idx, by=small, auth=b"nvpw"))))            # NV_AUTHORIZATION
    flush(x, s)

    # PolicyNvWritten: digests, a contrary second assertion, PolicyRestart forgets it
    t, _ = start(x, SE_TRIAL)
    o([rc(x(nv_written(t, 1))), rc(x(nv_written(t, 1))), rc(x(nv_written(t, 0))),
       rc(x(nv_written(t, 2)))])
    o(get_digest(x, t) == f_nv_written(f_nv_written(ZERO, 1), 1))
    o([rc(x(cmd(CC_PolicyRestart, handles=[t]))), rc(x(nv_written(t, 0)))])
    o(get_digest(x, t) == f_nv_written(ZERO, 0))
    flush(x, t)
    # a write-once index: NV_Write by its policy, only while it is not written
    once_policy = f_nv_written(f_command_code(ZERO, CC_NV_Write), 0)
    once = AUTHREAD | POLICYWRITE | NO_DA
    o(rc(x(define(I_ONCE, once, 4, policy=once_policy))))
    for _ in range(2):
        s, _ = start(x)
        o(rc(x(cmd(0x16C, u32(CC_NV_Write), handles=[s]))))
        o(rc(x(nv_written(s, 0))))
        o(rc(x(cmd(CC_NV_Write, b2(b"once") + u16(0), handles=[I_ONCE, I_ONCE],
                   sessions=[policy_auth(s)]))))
        flush(x, s)
    # the NV_Read of an object... PolicyNvWritten makes no sense for an object: POLICY_FAIL
    other = _sealed_with_policy(x, f_nv_written(ZERO, 1))
    s, _ = start(x)
    o(rc(x(nv_written(s, 1))))
    o(_unseal(x, other, s))
    flush(x, s)
    return out


def test_policy_authorize_nv_and_nv_written():
    out = _authorize_nv_codes(started(seed=b"policy-authnv").execute)
    assert out[:3] == [0, 0, True]
    assert out[4:8] == [0, 0, True, (0, SEALED)]
    assert out[8:16] == [0, 0, VALUE, 0, 0, 0, (0, SEALED), VALUE]
    assert out[16:30] == [0, HASH, 0, HASH, 0, 0, INSUFFICIENT, 0, 0, INSUFFICIENT, 0,
                          NV_UNINITIALIZED, NV_AUTHORIZATION,
                          [0, 0, P(VALUE), P(VALUE)]]
    assert out[30:33] == [True, [0, 0], True]
    assert out[33:] == [0, 0, 0, 0, 0, 0, S(POLICY_FAIL), 0, (S(POLICY_FAIL), None)]


def test_policy_nv_authorizes_an_unseal():
    """An object sealed to "the counter at the index is below 5" unseals until it is not."""
    x = started(seed=b"policy-nv-unseal").execute
    counter = 0x01500020
    attrs = OWNERREAD | OWNERWRITE | AUTHREAD | AUTHWRITE | NO_DA | 0x10    # TPM_NT_COUNTER
    assert rc(x(define(counter, attrs, 8))) == 0
    assert rc(x(cmd(0x134, handles=[counter, counter], sessions=[pw_session()]))) == 0
    limit = struct.pack(">Q", 5)
    item = _sealed_with_policy(x, f_nv(ZERO, limit, 0, UNSIGNED_LT,
                                       nv_name(counter, attrs | WRITTEN, 8)))
    got = []
    for _ in range(6):
        s, _ = start(x)
        code = rc(x(policy_nv(s, limit, 0, UNSIGNED_LT, index=counter, auth=b"")))
        got.append((code, _unseal(x, item, s)[0] if code == 0 else None))
        flush(x, s)
        x(cmd(0x134, handles=[counter, counter], sessions=[pw_session()]))
    assert got == [(0, 0)] * 4 + [(POLICY, None)] * 2


def test_nv_written_state_survives_context_save_and_load():
    x = started(seed=b"policy-nv-ctx").execute
    s, _ = start(x)
    assert rc(x(nv_written(s, 1))) == 0
    r = x(cmd(0x162, u32(s)))
    assert rc(r) == 0
    assert rc(x(cmd(0x161, params(r)))) == 0
    assert rc(x(nv_written(s, 0))) == P(VALUE)


# -- against swtpm ------------------------------------------------------------------------------

@needs_swtpm
@pytest.mark.swtpm
@pytest.mark.parametrize("codes", [_policy_nv_codes, _authorize_nv_codes],
                         ids=["policy-nv", "authorize-nv-and-nv-written"])
def test_nv_policies_as_swtpm(codes):
    sw = Swtpm()
    try:
        assert rc(sw.execute(STARTUP_CLEAR)) == 0
        ours = codes(started(seed=b"nv-policies").execute)
        theirs = codes(retrying(sw.execute))
        diffs = [(i, a, b) for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
        assert not diffs and len(ours) == len(theirs)
    finally:
        sw.close()


# -- ESAPI (which checks every response HMAC) ---------------------------------------------------

NO_SYM = TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL)


async def test_esapi_nv_policies(ctpm_server):
    def scenario(esapi):
        attrs = (TPMA_NV.OWNERREAD | TPMA_NV.OWNERWRITE | TPMA_NV.AUTHREAD | TPMA_NV.AUTHWRITE
                 | TPMA_NV.NO_DA)
        public = TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(
            nvIndex=0x01500030, nameAlg=TPM2_ALG.SHA256, attributes=attrs, dataSize=34))
        nv = esapi.nv_define_space(b"nvpw", public)
        esapi.nv_write(nv, tpmt_ha(f_command_code(ZERO, CC_Unseal)))
        _, name = esapi.nv_read_public(nv)
        out = []
        s = esapi.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, NO_SYM,
                                     TPM2_ALG.SHA256)
        esapi.tr_set_auth(nv, b"nvpw")
        # authHandle authorized by an HMAC session bound to the index (ESAPI checks the
        # response HMAC)
        h = esapi.start_auth_session(ESYS_TR.NONE, nv, TPM2_SE.HMAC, NO_SYM, TPM2_ALG.SHA256)
        esapi.policy_nv(nv, nv, s, b"\x00\x0b", TPM2_EO.EQ, 0, session1=h)
        esapi.flush_context(h)
        try:
            esapi.policy_nv(nv, nv, s, b"\x00\x0c", TPM2_EO.UNSIGNED_GE, 0)
        except TSS2_Exception as e:
            out.append(e.rc)
        esapi.policy_nv_written(s, True)
        out.append(bytes(esapi.policy_get_digest(s)))
        esapi.policy_restart(s)
        esapi.policy_command_code(s, TPM2_CC.Unseal)
        esapi.policy_authorize_nv(nv, s)
        out.append(bytes(esapi.policy_get_digest(s)))
        esapi.flush_context(s)
        return bytes(name), out

    name, out = await with_esapi(ctpm_server, scenario)
    assert name == nv_name(0x01500030, RW | NO_DA | WRITTEN, 34)
    assert out == [POLICY,
                   f_nv_written(f_nv(ZERO, b"\x00\x0b", 0, EQ, name), 1),
                   f_authorize_nv(name)]


# -- tpm2-tools ---------------------------------------------------------------------------------

@needs_tools
@pytest.mark.tools
def test_tools_policynv_policyauthorizenv_policynvwritten(daemon, tmp_path):
    """The tpm2-tools man page examples of the three tools, against `ctpm run`."""
    t = daemon.tcti("mssim")

    def run(*args, stdin=None):
        return subprocess.run(args, capture_output=True, timeout=60, cwd=tmp_path, input=stdin)

    def tool(*args, stdin=None):
        r = run(*args, "-T", t, stdin=stdin)
        assert r.returncode == 0, f"{args}: {r.stderr.decode()}"
        return r.stdout

    # tpm2_policynv: a 1-byte index holding 0xAA
    tool("tpm2_nvdefine", "-C", "o", "-p", "nvpass", "0x1500101", "-a", "authread|authwrite",
         "-s", "1")
    tool("tpm2_nvwrite", "-P", "nvpass", "-i-", "0x1500101", stdin=b"\xaa")
    tool("tpm2_startauthsession", "-S", "s.ctx", "--policy-session")
    r = run("tpm2_policynv", "-T", t, "-S", "s.ctx", "-L", "p.nv", "-i-", "0x1500101", "eq",
            "-P", "nvpass", stdin=b"\xbb")
    assert r.returncode != 0 and b"0x126" in r.stderr.lower(), r.stderr
    tool("tpm2_policynv", "-S", "s.ctx", "-L", "p.nv", "-i-", "0x1500101", "eq", "-P", "nvpass",
         stdin=b"\xaa")
    tool("tpm2_flushcontext", "s.ctx")
    name = nv_name(0x01500101, AUTHREAD | AUTHWRITE | WRITTEN, 1)
    assert (tmp_path / "p.nv").read_bytes() == f_nv(ZERO, b"\xaa", 0, EQ, name)

    # tpm2_policyauthorizenv: PolicyPassword's digest in an index, an object sealed to it
    tool("tpm2_nvdefine", "-C", "o", "-p", "nvpass", "0x1500102", "-a", "authread|authwrite",
         "-s", "34")
    tool("tpm2_startauthsession", "-S", "s.ctx")
    tool("tpm2_policypassword", "-S", "s.ctx", "-L", "p.pass")
    tool("tpm2_flushcontext", "s.ctx")
    tool("tpm2_nvwrite", "-C", "0x1500102", "-P", "nvpass", "0x1500102", "-i-",
         stdin=u16(SHA256) + (tmp_path / "p.pass").read_bytes())
    tool("tpm2_startauthsession", "-S", "s.ctx")
    tool("tpm2_policyauthorizenv", "-S", "s.ctx", "-C", "0x1500102", "-P", "nvpass",
         "-L", "p.anv", "0x1500102")
    tool("tpm2_flushcontext", "s.ctx")
    name = nv_name(0x01500102, AUTHREAD | AUTHWRITE | WRITTEN, 34)
    assert (tmp_path / "p.anv").read_bytes() == f_authorize_nv(name)
    tool("tpm2_createprimary", "-C", "o", "-c", "prim.ctx")
    tool("tpm2_create", "-C", "prim.ctx", "-u", "key.pub", "-r", "key.priv", "-a",
         "fixedtpm|fixedparent|adminwithpolicy", "-L", "p.anv", "-i-",
         stdin=b"secretdata")
    tool("tpm2_load", "-C", "prim.ctx", "-u", "key.pub", "-r", "key.priv", "-c", "key.ctx")
    tool("tpm2_flushcontext", "-t")
    tool("tpm2_startauthsession", "-S", "s.ctx", "--policy-session")
    tool("tpm2_policypassword", "-S", "s.ctx")
    tool("tpm2_policyauthorizenv", "-S", "s.ctx", "-C", "0x1500102", "-P", "nvpass",
         "0x1500102")
    assert tool("tpm2_unseal", "-c", "key.ctx", "-p", "session:s.ctx") == b"secretdata"
    tool("tpm2_flushcontext", "s.ctx")
    tool("tpm2_flushcontext", "-t")

    # tpm2_policynvwritten: a write-once index
    tool("tpm2_startauthsession", "-S", "s.ctx")
    tool("tpm2_policycommandcode", "-S", "s.ctx", "TPM2_CC_NV_Write")
    tool("tpm2_policynvwritten", "-S", "s.ctx", "-L", "p.once", "c")
    tool("tpm2_flushcontext", "s.ctx")
    assert (tmp_path / "p.once").read_bytes() == f_nv_written(
        f_command_code(ZERO, CC_NV_Write), 0)
    tool("tpm2_nvdefine", "0x1500103", "-s", "1", "-a", "authread|policywrite", "-p", "rd",
         "-L", "p.once")
    results = []
    for _ in range(2):
        tool("tpm2_startauthsession", "-S", "s.ctx", "--policy-session")
        tool("tpm2_policycommandcode", "-S", "s.ctx", "TPM2_CC_NV_Write")
        tool("tpm2_policynvwritten", "-S", "s.ctx", "c")
        r = run("tpm2_nvwrite", "-T", t, "0x1500103", "-i-", "-P", "session:s.ctx",
                stdin=b"\xaa")
        results.append((r.returncode, r.stderr))
        tool("tpm2_flushcontext", "s.ctx")
    assert results[0][0] == 0, results[0][1]
    assert results[1][0] != 0 and b"0x99d" in results[1][1].lower(), results[1][1]
    for h in ("0x1500101", "0x1500102", "0x1500103"):
        tool("tpm2_nvundefine", h)
