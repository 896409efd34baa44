"""Reserved TPMA_SESSION bits (3 and 4) are refused while the session area is unmarshaled,
TPM_RC_RESERVED_BITS for that session, before the checks of what the session may do - as the
reference's RetrieveSessionData and swtpm answer. The commands go through tpm2-tss's own
mssim TCTI to the daemon (a real client's transport) and the same bytes to swtpm."""
import struct

import pytest

from ctpm.testing.plugin import tcti_string
from ctpm.testing import blocking
from tests.peers import Swtpm, needs_swtpm
from tests.test_sessions import start_session
from tests.tpmcmd import STARTUP_CLEAR, b2, cmd, rc, u16, u32

tpm2_pytss = pytest.importorskip("tpm2_pytss")
from tpm2_pytss.TCTILdr import TCTILdr  # noqa: E402

RS_PW, PCR16 = 0x40000009, 16
RESERVED_BITS_S1 = 0x9A1
EXTEND16 = u32(1) + u16(0x0B) + b"\x01" * 32


def session(handle, attrs, nonce=b"", hmac=b""):
    return u32(handle) + b2(nonce) + bytes([attrs]) + b2(hmac)


def reserved_cases(hmac_handle, policy_handle):
    """(name, command, response code) - the reserved bits alone and with other faults."""
    pw = lambda attrs, **kw: session(RS_PW, attrs, **kw)      # noqa: E731
    cases = []
    for attrs in (0x08, 0x10, 0x18, 0xFF, 0x09, 0x19):
        cases.append((f"pw-{attrs:02x}", cmd(0x182, EXTEND16, handles=[PCR16],
                                             sessions=[pw(attrs)])))
        cases.append((f"hmac-{attrs:02x}", cmd(0x182, EXTEND16, handles=[PCR16],
                                               sessions=[session(hmac_handle, attrs,
                                                                 b"\x11" * 32, b"\0" * 32)])))
        cases.append((f"policy-{attrs:02x}", cmd(0x182, EXTEND16, handles=[PCR16],
                                                 sessions=[session(policy_handle, attrs,
                                                                   b"\x11" * 32)])))
    # reserved bits beat a nonce on a password session and the encrypt attribute
    cases.append(("pw-nonce-reserved", cmd(0x182, EXTEND16, handles=[PCR16],
                                           sessions=[pw(0x19, nonce=b"\x01")])))
    # a password session with a nonce and encrypt: which check comes first
    cases.append(("pw-nonce-encrypt", cmd(0x182, EXTEND16, handles=[PCR16],
                                          sessions=[pw(0x41, nonce=b"\x01")])))
    # the second and third session
    cases.append(("second", cmd(0x182, EXTEND16, handles=[PCR16],
                                sessions=[pw(0x01), pw(0xFF)])))
    cases.append(("third", cmd(0x182, EXTEND16, handles=[PCR16],
                               sessions=[pw(0x01), pw(0x01), pw(0x18)])))
    # a bad session handle is found first (its unmarshaling comes first)
    cases.append(("bad-handle", cmd(0x182, EXTEND16, handles=[PCR16],
                                    sessions=[session(0x01000000, 0xFF)])))
    # a command without handles: the session is still unmarshaled first
    cases.append(("get-random", cmd(0x17B, u16(8), sessions=[pw(0xFF)])))
    return cases


def run_all(execute):
    assert rc(execute(STARTUP_CLEAR)) in (0, 0x100)
    hmac = execute(start_session())
    policy = execute(start_session(se=1))
    assert rc(hmac) == 0 and rc(policy) == 0
    handles = [struct.unpack(">I", r[10:14])[0] for r in (hmac, policy)]
    return {name: rc(execute(c)) for name, c in reserved_cases(*handles)}


@needs_swtpm
@pytest.mark.swtpm
async def test_reserved_session_attribute_bits_as_swtpm(ctpm_server):
    def over_tcti():
        tcti = TCTILdr.parse(tcti_string(ctpm_server, "mssim"))
        try:
            def execute(command):
                tcti.transmit(command)
                return bytes(tcti.receive())
            return run_all(execute)
        finally:
            tcti.close()

    ours = await blocking(over_tcti)
    sw = Swtpm()
    try:
        theirs = run_all(sw.execute)
    finally:
        sw.close()
    assert {k: (hex(v), hex(theirs[k])) for k, v in ours.items() if v != theirs[k]} == {}
    for attrs in ("08", "10", "18", "ff", "09", "19"):
        for kind in ("pw", "hmac", "policy"):
            assert ours[f"{kind}-{attrs}"] == RESERVED_BITS_S1
    assert ours["pw-nonce-reserved"] == RESERVED_BITS_S1
    assert ours["second"] == RESERVED_BITS_S1 + 0x100
    assert ours["third"] == RESERVED_BITS_S1 + 0x200
    assert ours["get-random"] == RESERVED_BITS_S1
