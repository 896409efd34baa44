"""TPM2_PolicyCapability and TPM2_PolicyParameters (Library rev 1.83, CC 0x19B/0x19C; no
libtss2 3.2.1 or tpm2-pytss call, so raw commands). The policy digests are computed here with
hashlib; the capability data compared is what GetCapability reports for the same property.
"""
import hashlib
import struct

from tests.test_nv import AUTHREAD, POLICYWRITE, define, nv_public, read
from tests.tpmcmd import b2, cmd, params, rc, u16, u32

CC_CAPABILITY, CC_PARAMETERS, CC_GET_DIGEST, CC_NV_WRITE = 0x19B, 0x19C, 0x189, 0x137
SE_POLICY, SE_TRIAL = 1, 3
CAP_ALGS, CAP_HANDLES, CAP_PCRS, CAP_TPM_PROPERTIES, CAP_COMMANDS = 0, 1, 5, 6, 2
PT_MANUFACTURER, PT_INPUT_BUFFER = 0x105, 0x10D
EQ, NEQ, UNSIGNED_GT, UNSIGNED_LT, BITSET = 0, 1, 3, 5, 0xA
POLICY, POLICY_FAIL_S1, CPHASH = 0x126, 0x99D, 0x151


def session(execute, kind=SE_POLICY):
    r = execute(cmd(0x176, u32(0x40000007) + u32(0x40000007) + b2(b"\x11" * 16) + b2(b"")
                    + bytes([kind]) + u16(0x10) + u16(0x0B)))
    assert rc(r) == 0
    return struct.unpack(">I", r[10:14])[0]


def policy_capability(handle, operand, offset, operation, capability, prop):
    return cmd(CC_CAPABILITY, b2(operand) + u16(offset) + u16(operation) + u32(capability)
               + u32(prop), handles=[handle])


def capability_digest(operand, offset, operation, capability, prop, old=bytes(32)):
    arg = hashlib.sha256(operand + struct.pack(">HHII", offset, operation, capability,
                                               prop)).digest()
    return hashlib.sha256(old + u32(CC_CAPABILITY) + arg).digest()


def digest_of(execute, handle):
    return params(execute(cmd(CC_GET_DIGEST, handles=[handle])))[2:]


def tpm_property(execute, prop):
    body = params(execute(cmd(0x17A, u32(CAP_TPM_PROPERTIES) + u32(prop) + u32(1))))
    assert struct.unpack(">I", body[9:13])[0] == prop
    return struct.unpack(">I", body[13:17])[0]


def test_policy_capability_assertions(ctpm_started_tpm):
    execute = ctpm_started_tpm.execute
    manufacturer = tpm_property(execute, PT_MANUFACTURER)
    tagged = u32(PT_MANUFACTURER) + u32(manufacturer)       # TPMS_TAGGED_PROPERTY
    cases = [
        # (operandB, offset, operation, capability, property) -> expected rc
        ((tagged, 0, EQ, CAP_TPM_PROPERTIES, PT_MANUFACTURER), 0),
        ((u32(manufacturer), 4, EQ, CAP_TPM_PROPERTIES, PT_MANUFACTURER), 0),
        ((u32(manufacturer + 1), 4, EQ, CAP_TPM_PROPERTIES, PT_MANUFACTURER), POLICY),
        ((u32(manufacturer - 1), 4, UNSIGNED_GT, CAP_TPM_PROPERTIES, PT_MANUFACTURER), 0),
        ((u32(manufacturer), 4, UNSIGNED_LT, CAP_TPM_PROPERTIES, PT_MANUFACTURER), POLICY),
        ((u16(0x000B), 0, EQ, CAP_ALGS, 0x000B), 0),                   # SHA-256 implemented
        ((b"\x00\x00\x00\x01", 2, BITSET, CAP_ALGS, 0x000B), POLICY),   # not an asymmetric alg
        ((b"", 0, NEQ, CAP_ALGS, 0x0099), 0),                          # no such algorithm
        ((u16(0x0099), 0, EQ, CAP_ALGS, 0x0099), POLICY),
        ((u32(0), 0, EQ, CAP_HANDLES, 0x00000000), 0),                 # PCR 0
        ((u32(0x40000001), 0, EQ, CAP_HANDLES, 0x40000001), 0),        # TPM_RH_OWNER
        ((u16(0x017B), 0, NEQ, CAP_COMMANDS, 0x017B), 0),              # TPMA_CC of GetRandom
        ((u32(0), 0, EQ, CAP_HANDLES, 0x04000000), 0x5CB),             # HANDLE, parameter 5
        ((u32(0), 0, EQ, CAP_PCRS, 0), 0x4C4),                         # VALUE, parameter 4
        ((u32(0), 0, EQ, 0x100, 0), 0x4C4),                            # vendor property
        ((u32(0), 9, EQ, CAP_TPM_PROPERTIES, PT_MANUFACTURER), 0x2C4),  # offset past the data
        ((tagged + b"\0", 0, EQ, CAP_TPM_PROPERTIES, PT_MANUFACTURER), 0x1D5),  # operandB long
    ]
    for args, expected in cases:
        s = session(execute)
        assert rc(execute(policy_capability(s, *args))) == expected, args
        if expected == 0:
            assert digest_of(execute, s) == capability_digest(*args), args
        assert rc(execute(cmd(0x165, u32(s)))) == 0


def test_policy_capability_trial_asserts_nothing(ctpm_started_tpm):
    execute = ctpm_started_tpm.execute
    s = session(execute, SE_TRIAL)
    args = (u32(0xDEADBEEF), 4, EQ, CAP_TPM_PROPERTIES, PT_MANUFACTURER)
    assert rc(execute(policy_capability(s, *args))) == 0
    args2 = (u16(0x1234), 0, EQ, CAP_ALGS, 0x0099)
    assert rc(execute(policy_capability(s, *args2))) == 0
    assert digest_of(execute, s) == capability_digest(*args2, old=capability_digest(*args))


def test_policy_capability_authorizes_an_nv_write(ctpm_started_tpm):
    """An index whose authPolicy is PolicyCapability(TPM_PT_INPUT_BUFFER >= 1024): written with
    a policy session that asserted it."""
    execute = ctpm_started_tpm.execute
    args = (u32(1024), 4, 7, CAP_TPM_PROPERTIES, PT_INPUT_BUFFER)     # UNSIGNED_GE
    policy = capability_digest(*args)
    assert rc(execute(define(0x01500020, POLICYWRITE | AUTHREAD, 4, policy=policy))) == 0
    s = session(execute)
    assert rc(execute(policy_capability(s, *args))) == 0
    auth = u32(s) + b2(b"") + bytes([0]) + b2(b"")
    assert rc(execute(cmd(CC_NV_WRITE, b2(b"abcd") + u16(0), handles=[0x01500020, 0x01500020],
                          sessions=[auth]))) == 0
    assert params(execute(read(0x01500020, 4)))[2:] == b"abcd"


def nv_write_params(data, offset=0):
    return b2(data) + u16(offset)


def test_policy_parameters(ctpm_started_tpm):
    """pHash = H(commandCode || parameters): the index can be written with these bytes at
    this offset only."""
    execute = ctpm_started_tpm.execute
    p_hash = hashlib.sha256(u32(CC_NV_WRITE) + nv_write_params(b"only this")).digest()
    policy = hashlib.sha256(bytes(32) + u32(CC_PARAMETERS) + p_hash).digest()
    index = 0x01500021
    assert rc(execute(cmd(0x12A, b2(b"") + b2(nv_public(index, POLICYWRITE | AUTHREAD, 16,
                                                        policy=policy)),
                          handles=[0x40000001], sessions=[u32(0x40000009) + b2(b"") + b"\x01"
                                                         + b2(b"")]))) == 0

    def write_with_policy(data, offset=0, p=p_hash):
        s = session(execute)
        got = [rc(execute(cmd(CC_PARAMETERS, b2(p), handles=[s])))]
        if got[0] == 0:
            assert digest_of(execute, s) == hashlib.sha256(bytes(32) + u32(CC_PARAMETERS)
                                                           + p).digest()
        auth = u32(s) + b2(b"") + bytes([0]) + b2(b"")
        got.append(rc(execute(cmd(CC_NV_WRITE, nv_write_params(data, offset),
                                  handles=[index, index], sessions=[auth]))))
        execute(cmd(0x165, u32(s)))
        return got

    assert write_with_policy(b"other bytes") == [0, POLICY_FAIL_S1]
    assert write_with_policy(b"only this", 1) == [0, POLICY_FAIL_S1]
    assert write_with_policy(b"only this") == [0, 0]
    assert params(execute(read(index, 9)))[2:] == b"only this"
    # a pHash of the wrong size; a second cpHash-like condition
    s = session(execute)
    assert rc(execute(cmd(CC_PARAMETERS, b2(p_hash[:20]), handles=[s]))) == 0x1D5
    assert rc(execute(cmd(CC_PARAMETERS, b2(p_hash), handles=[s]))) == 0
    assert rc(execute(cmd(CC_PARAMETERS, b2(p_hash), handles=[s]))) == CPHASH
    assert rc(execute(cmd(0x16E, b2(p_hash), handles=[s]))) == CPHASH         # PolicyCpHash
    # PolicyRestart clears it
    assert rc(execute(cmd(0x180, handles=[s]))) == 0
    assert rc(execute(cmd(0x16E, b2(p_hash), handles=[s]))) == 0
