"""Session audit and command audit (Part 1 §35, Part 3 §21.2), with the digests computed here
from Part 1 (auditDigest := H(auditDigest || cpHash || rpHash)), not with ctpm's code: the
digests ctpm holds are compared with this test's, swtpm's session audit digest (read with its
GetSessionAuditDigest) with this test's too, and both TPMs must agree on every response code,
on the response session attributes and on GetCapability(TPM_CAP_AUDIT_COMMANDS)."""
import hashlib
import hmac
import shutil
import struct
import subprocess

import pytest

from ctpm.engine.tpm import Tpm
from ctpm.testing.process import run_daemon
from tests.peers import Swtpm, needs_swtpm
from tests.test_sessions import SE_POLICY, start_session, kdfa
from tests.tpmcmd import STARTUP_CLEAR, b2, cmd, params, pw_session, rc, u16, u32

RH_NULL, RH_OWNER, RH_ENDORSEMENT = 0x40000007, 0x40000001, 0x4000000B
SHA1, SHA256, NULL = 0x04, 0x0B, 0x10
CONTINUE, EXCLUSIVE, RESET, AUDIT = 0x01, 0x02, 0x04, 0x80
CC_SET_AUDIT, CC_GET_RANDOM, CC_PCR_EXTEND, CC_SHUTDOWN = 0x140, 0x17B, 0x182, 0x145
CC_CONTEXT_SAVE, CC_CONTEXT_LOAD, CC_FLUSH = 0x162, 0x161, 0x165
RC_EXCLUSIVE, RC_ATTRIBUTES = 0x121, 0x082


def sha256(*parts):
    return hashlib.sha256(b"".join(parts)).digest()


class AuditClient:
    """An HMAC session (bound to PCR 23, empty authValue) used for audit, keeping its own
    copy of the session audit digest."""

    def __init__(self, execute):
        self.execute = execute
        self.nonce_caller = b"\x11" * 32
        r = execute(start_session(bind=23, nonce=self.nonce_caller))
        assert rc(r) == 0, hex(rc(r))
        self.handle = struct.unpack(">I", r[10:14])[0]
        self.nonce_tpm = r[16:16 + 32]
        self.key = kdfa(b"", b"ATH", self.nonce_tpm, self.nonce_caller, 256)
        self.digest = None            # not an audit session yet
        self.response_attrs = []

    def command(self, code, handles, body, attrs=CONTINUE | AUDIT, auth_handles=None):
        """Send with this session; returns the response code. The session authorizes the
        first `auth_handles` handles (all by default; 0: audit only)."""
        self.nonce_caller = hashlib.sha256(self.nonce_caller).digest()
        names = b"".join(struct.pack(">I", h) for h in handles)
        cp = sha256(struct.pack(">I", code), names, body)
        mac = hmac.new(self.key, cp + self.nonce_caller + self.nonce_tpm + bytes([attrs]),
                       "sha256").digest()
        session = (struct.pack(">I", self.handle) + b2(self.nonce_caller) + bytes([attrs])
                   + b2(mac))
        r = self.execute(cmd(code, body, handles=handles, sessions=[session]))
        if rc(r):
            return rc(r)
        rbody = params(r)
        auth = r[14 + len(rbody):]
        n = struct.unpack(">H", auth[:2])[0]
        nonce_tpm, r_attrs, r_mac = auth[2:2 + n], auth[2 + n], auth[5 + n:]
        rp = sha256(b"\0\0\0\0", struct.pack(">I", code), rbody)
        expect = hmac.new(self.key, rp + nonce_tpm + self.nonce_caller + bytes([r_attrs]),
                          "sha256").digest()
        assert r_mac == expect, "response HMAC does not verify"
        self.nonce_tpm = nonce_tpm
        self.response_attrs.append(r_attrs)
        if attrs & AUDIT:
            if self.digest is None or attrs & RESET:
                self.digest = b"\0" * 32
            self.digest = sha256(self.digest, cp, rp)
        return 0


def extend(pcr=16, digest=b"\x01" * 32):
    return u32(1) + u16(SHA256) + digest


def get_random(n=8):
    return cmd(CC_GET_RANDOM, u16(n))


def audit_run(execute):
    """A stream of audited commands and exclusivity changes; returns (codes, client)."""
    c = AuditClient(execute)
    codes = [c.command(CC_PCR_EXTEND, [16], extend()),              # first use: exclusive
             c.command(CC_GET_RANDOM, [], u16(16)),                  # audit only, no handle
             c.command(CC_PCR_EXTEND, [16], extend(), CONTINUE | AUDIT | EXCLUSIVE)]
    codes.append(rc(execute(get_random())))                         # exclusivity lost
    codes.append(c.command(CC_GET_RANDOM, [], u16(4), CONTINUE | AUDIT | EXCLUSIVE))
    codes.append(c.command(CC_GET_RANDOM, [], u16(4)))              # audited, not exclusive
    codes.append(c.command(CC_PCR_EXTEND, [16], extend(), CONTINUE))  # no audit: digest kept
    codes.append(c.command(CC_PCR_EXTEND, [16], extend(), CONTINUE | AUDIT | RESET))
    codes.append(c.command(CC_GET_RANDOM, [], u16(4), CONTINUE | AUDIT | EXCLUSIVE))
    return codes, c


EXPECTED_CODES = [0, 0, 0, 0, RC_EXCLUSIVE, 0, 0, 0, 0]
EXPECTED_ATTRS = [0x83, 0x83, 0x83, 0x81, 0x01, 0x87, 0x83]


def test_session_audit_digest_and_exclusivity():
    tpm = Tpm.manufacture(seed=b"audit")
    assert rc(tpm.execute(STARTUP_CLEAR)) == 0
    codes, c = audit_run(tpm.execute)
    assert codes == EXPECTED_CODES
    assert c.response_attrs == EXPECTED_ATTRS
    session = tpm.state.sessions[c.handle]
    assert session.audit_digest == c.digest
    assert tpm.state.exclusive_audit_session == c.handle
    # ContextSave/ContextLoad take no sessions: the digest and the exclusivity stay
    r = tpm.execute(cmd(CC_CONTEXT_SAVE, handles=[c.handle]))
    assert rc(r) == 0
    assert rc(tpm.execute(cmd(CC_CONTEXT_LOAD, params(r)))) == 0
    assert tpm.state.sessions[c.handle].audit_digest == c.digest
    assert c.command(CC_GET_RANDOM, [], u16(4), CONTINUE | AUDIT | EXCLUSIVE) == 0
    assert tpm.state.sessions[c.handle].audit_digest == c.digest
    # flushing the exclusive session ends exclusivity
    assert rc(tpm.execute(cmd(CC_FLUSH, u32(c.handle)))) == 0
    assert tpm.state.exclusive_audit_session is None


def session_audit_digest(execute, handle):
    """swtpm's TPM2_GetSessionAuditDigest (unsigned): (exclusiveSession, sessionDigest)."""
    r = execute(cmd(0x14D, b2(b"") + u16(NULL), handles=[RH_ENDORSEMENT, RH_NULL, handle],
                    sessions=[pw_session(), pw_session()]))
    assert rc(r) == 0, hex(rc(r))
    attest = params(r)[2:]
    i = 6
    i += 2 + struct.unpack(">H", attest[i:i + 2])[0]       # qualifiedSigner
    i += 2 + struct.unpack(">H", attest[i:i + 2])[0]       # extraData
    i += 17 + 8                                            # clockInfo, firmwareVersion
    exclusive = attest[i]
    n = struct.unpack(">H", attest[i + 1:i + 3])[0]
    return exclusive, attest[i + 3:i + 3 + n]


@needs_swtpm
@pytest.mark.swtpm
def test_session_audit_as_swtpm():
    ctpm = Tpm.manufacture(seed=b"audit")
    sw = Swtpm()
    try:
        results = []
        for execute in (ctpm.execute, sw.execute):
            assert rc(execute(STARTUP_CLEAR)) == 0
            codes, c = audit_run(execute)
            results.append((codes, c.response_attrs))
            if execute == sw.execute:
                # the last command asked for, and got, exclusivity
                assert session_audit_digest(execute, c.handle) == (1, c.digest)
        assert results[0] == results[1]
    finally:
        sw.close()


def _session_errors(execute):
    """Refusals of the audit attributes, in the order of the reference's checks."""
    codes = []
    assert rc(execute(STARTUP_CLEAR)) == 0
    c = AuditClient(execute)
    # a password session cannot audit
    codes.append(rc(execute(cmd(CC_PCR_EXTEND, extend(), handles=[16],
                                sessions=[pw_session(attrs=CONTINUE | AUDIT)]))))
    # a policy session cannot audit
    r = execute(start_session(se=SE_POLICY))
    policy = struct.unpack(">I", r[10:14])[0]
    session = u32(policy) + b2(b"\x22" * 32) + bytes([CONTINUE | AUDIT]) + b2(b"")
    codes.append(rc(execute(cmd(CC_GET_RANDOM, u16(4), sessions=[session]))))
    # a session that neither authorizes, encrypts nor audits
    codes.append(c.command(CC_GET_RANDOM, [], u16(4), CONTINUE))
    # two audit sessions
    c2 = AuditClient(execute)
    s1 = u32(c.handle) + b2(b"\x22" * 32) + bytes([CONTINUE | AUDIT]) + b2(b"")
    s2 = u32(c2.handle) + b2(b"\x22" * 32) + bytes([CONTINUE | AUDIT]) + b2(b"")
    codes.append(rc(execute(cmd(CC_GET_RANDOM, u16(4), sessions=[s1, s2]))))
    # auditExclusive on the first use, and without audit: no refusal
    codes.append(c.command(CC_GET_RANDOM, [], u16(4), CONTINUE | AUDIT | EXCLUSIVE))
    codes.append(c2.command(CC_PCR_EXTEND, [16], extend(), CONTINUE | EXCLUSIVE))
    codes.append(c.command(CC_GET_RANDOM, [], u16(4), CONTINUE | AUDIT | EXCLUSIVE))
    codes.append(c2.command(CC_GET_RANDOM, [], u16(4), CONTINUE | AUDIT | EXCLUSIVE))
    codes.append(c.command(CC_GET_RANDOM, [], u16(4), CONTINUE | AUDIT | EXCLUSIVE))
    codes.append(c.command(CC_GET_RANDOM, [], u16(4), CONTINUE | AUDIT | RESET | EXCLUSIVE))
    return codes, c.response_attrs + c2.response_attrs


def test_audit_attribute_errors():
    tpm = Tpm.manufacture(seed=b"audit")
    codes, attrs = _session_errors(tpm.execute)
    assert codes == [0x982, 0x982, 0x982, 0xA82, 0, 0, RC_EXCLUSIVE, 0, RC_EXCLUSIVE, 0]
    assert attrs == [0x83, 0x87, 0x03, 0x83]


@needs_swtpm
@pytest.mark.swtpm
def test_audit_attribute_errors_as_swtpm():
    ctpm = Tpm.manufacture(seed=b"audit")
    sw = Swtpm()
    try:
        assert _session_errors(ctpm.execute) == _session_errors(sw.execute)
    finally:
        sw.close()


# --- command audit ----------------------------------------------------------------------------

def tpml_cc(*codes):
    return u32(len(codes)) + b"".join(u32(c) for c in codes)


def set_audit(alg=NULL, set_list=(), clear_list=()):
    body = u16(alg) + tpml_cc(*set_list) + tpml_cc(*clear_list)
    return cmd(CC_SET_AUDIT, body, handles=[RH_OWNER], sessions=[pw_session()]), body


def audit_commands(execute):
    return params(execute(cmd(0x17A, u32(4) + u32(0) + u32(64))))


def audit_counter(execute):
    body = params(execute(cmd(0x17A, u32(6) + u32(0x213) + u32(2))))
    return body[9:]


def _command_audit_stream(execute):
    out = [audit_commands(execute)]
    for alg, s, c in ((NULL, [CC_GET_RANDOM, CC_PCR_EXTEND, CC_SHUTDOWN, 0x1FF], []),
                      (NULL, [], [CC_SET_AUDIT, CC_PCR_EXTEND, 0x1FF]),
                      (SHA1, [CC_PCR_EXTEND], []),         # a new hash with a list: VALUE
                      (0x0005, [], []),                    # not a hash: HASH on parameter 1
                      (SHA1, [], []),
                      (SHA256, [], [CC_GET_RANDOM])):     # back to sha256 and ... VALUE
        out.append(rc(execute(set_audit(alg, s, c)[0])))
        out.append(audit_commands(execute))
    rsp = execute(cmd(CC_SET_AUDIT, u16(NULL) + tpml_cc() + tpml_cc(), handles=[RH_OWNER]))
    out.append(rc(rsp))
    out.append(audit_counter(execute))
    return out


@needs_swtpm
@pytest.mark.swtpm
def test_command_audit_as_swtpm():
    ctpm = Tpm.manufacture(seed=b"audit")
    sw = Swtpm()
    try:
        results = []
        for execute in (ctpm.execute, sw.execute):
            assert rc(execute(STARTUP_CLEAR)) == 0
            results.append(_command_audit_stream(execute))
        assert results[0] == results[1]
        assert results[0][0] == b"\0" + u32(4) + tpml_cc(CC_SET_AUDIT)
        assert [results[0][i] for i in (1, 3, 5, 7, 9, 11)] == [0, 0, 0x1C4, 0x1C3, 0, 0x1C4]
        assert results[0][2] == b"\0" + u32(4) + tpml_cc(CC_SET_AUDIT, CC_GET_RANDOM, CC_PCR_EXTEND)
        assert results[0][4] == b"\0" + u32(4) + tpml_cc(CC_SET_AUDIT, CC_GET_RANDOM)
    finally:
        sw.close()


def test_command_audit_digest_and_counter():
    tpm = Tpm.manufacture(seed=b"audit")
    state = tpm.state
    assert rc(tpm.execute(STARTUP_CLEAR)) == 0
    assert state.command_audit_digest == b""
    # changing the hash is not audited; the digest starts over with the next audited command
    command, _ = set_audit(SHA256)
    assert rc(tpm.execute(command)) == 0
    assert state.command_audit_digest == b"" and audit_counter(tpm.execute) == u32(0x213) + u32(0) \
        + u32(0x214) + u32(0)
    digest = b"\0" * 32
    command, body = set_audit(NULL, [CC_GET_RANDOM])
    assert rc(tpm.execute(command)) == 0
    digest = sha256(digest, sha256(u32(CC_SET_AUDIT), u32(RH_OWNER), body),
                    sha256(u32(0), u32(CC_SET_AUDIT)))
    assert state.command_audit_digest == digest
    r = tpm.execute(get_random(16))
    digest = sha256(digest, sha256(u32(CC_GET_RANDOM), u16(16)),
                    sha256(u32(0), u32(CC_GET_RANDOM), params(r)))
    assert state.command_audit_digest == digest
    tpm.execute(cmd(CC_PCR_EXTEND, extend(), handles=[16], sessions=[pw_session()]))
    assert state.command_audit_digest == digest                 # not audited
    assert audit_counter(tpm.execute) == u32(0x213) + u32(0) + u32(0x214) + u32(1)
    assert state.nv["audit_commands"] == [CC_SET_AUDIT, CC_GET_RANDOM]


@pytest.mark.tools
@pytest.mark.skipif(shutil.which("tpm2_setcommandauditstatus") is None,
                    reason="tpm2-tools missing")
def test_tools_setcommandauditstatus_and_audit_session(tmp_path):
    def ok(*args):
        r = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        return r.stdout
    state = tmp_path / "state"
    with run_daemon("--mssim", "127.0.0.1:0", "--state", str(state)) as d:
        t = d.tcti()
        ok("tpm2_startup", "-c", "-T", t)
        ok("tpm2_setcommandauditstatus", "-T", t, "-g", "sha256")
        ok("tpm2_setcommandauditstatus", "-T", t, "TPM2_CC_GetRandom")
        ok("tpm2_setcommandauditstatus", "-T", t, "TPM2_CC_Unseal")
        ok("tpm2_setcommandauditstatus", "-T", t, "-c", "TPM2_CC_Unseal")
        ok("tpm2_getrandom", "-T", t, "8", "--hex")
        # an audit session: ESAPI checks the response HMACs over the TPM's attributes
        ok("tpm2_startauthsession", "-T", t, "--audit-session", "-S", "s.ctx")
        ok("tpm2_getrandom", "-T", t, "8", "--hex", "-S", "s.ctx")
        ok("tpm2_getrandom", "-T", t, "8", "--hex", "-S", "s.ctx")
        ok("tpm2_flushcontext", "-T", t, "s.ctx")
    from ctpm.state.store import DirStore
    store = DirStore(state)
    nv = store.load_nv()
    store.close()
    assert nv is not None
    assert nv["audit_commands"] == [CC_SET_AUDIT, CC_GET_RANDOM]
    assert nv["audit_hash_alg"] == SHA256
    assert nv["audit_counter"] == 1


def test_command_audit_digest_survives_restart_not_reset():
    """CommandAuditStartup: TPM Restart and Resume keep the digest, a TPM Reset starts over;
    the counter, the list and the hash are NV."""
    tpm = Tpm.manufacture(seed=b"audit")
    state = tpm.state
    assert rc(tpm.execute(STARTUP_CLEAR)) == 0
    assert rc(tpm.execute(set_audit(NULL, [CC_GET_RANDOM])[0])) == 0
    tpm.execute(get_random())
    digest = state.command_audit_digest
    assert len(digest) == 64                     # the default audit hash: SHA-512
    assert rc(tpm.execute(cmd(CC_SHUTDOWN, u16(1)))) == 0       # Shutdown(STATE)
    tpm.reset()
    assert rc(tpm.execute(STARTUP_CLEAR)) == 0                  # TPM Restart
    assert state.command_audit_digest == digest
    assert rc(tpm.execute(cmd(CC_SHUTDOWN, u16(0)))) == 0       # Shutdown(CLEAR)
    tpm.reset()
    assert rc(tpm.execute(STARTUP_CLEAR)) == 0                  # TPM Reset
    assert state.command_audit_digest == b""
    tpm.execute(get_random())
    assert audit_counter(tpm.execute) == u32(0x213) + u32(0) + u32(0x214) + u32(2)
    assert state.nv["audit_commands"] == [CC_SET_AUDIT, CC_GET_RANDOM]
