"""Dictionary-attack protection of sessions bound to a DA-protected entity (Part 1 §19.8, the
reference's isDaBound / isLockoutBound): in lockout such a session cannot be used at all,
whatever it authorizes, and a failed HMAC in it always counts (as lockoutAuth's failure if
it is bound to TPM_RH_LOCKOUT). HMACs are computed here from Part 1 §19.6; the same stream
goes to swtpm."""
import hashlib
import hmac
import struct

import pytest

from tests.peers import Swtpm, needs_swtpm
from tests.test_da import da_properties, fresh, lock_reset, retrying
from tests.test_nv import NO_DA, POLICYREAD, READ_POLICY, RW, WRITTEN, define, write
from tests.test_policy_nv import nv_name
from tests.test_sessions import kdfa, start_session
from tests.tpmcmd import STARTUP_CLEAR, b2, cmd, params, pw_session, rc, u16, u32

RH_NULL, RH_LOCKOUT = 0x40000007, 0x4000000A
SE_HMAC, SE_POLICY = 0, 1
CC_NV_Read, CC_GetRandom, CC_PolicyCommandCode, CC_Flush = 0x14E, 0x17B, 0x16C, 0x165
AUTH_FAIL, BAD_AUTH, LOCKOUT = 0x98E, 0x9A2, 0x921
D, E = 0x01600001, 0x01600002          # a DA-protected index, a NO_DA index with a policy
D_ATTRS, E_ATTRS = RW | WRITTEN, RW | NO_DA | POLICYREAD | WRITTEN
READ = u16(8) + u16(0)


class Session:
    """A session as a TSS drives it, started with a bind entity (or none)."""

    def __init__(self, execute, bind=RH_NULL, bind_auth=b"", se=SE_HMAC):
        self.execute = execute
        self.nonce_caller = hashlib.sha256(bytes([se]) + u32(bind)).digest()
        r = execute(start_session(bind=bind, nonce=self.nonce_caller, se=se))
        assert rc(r) == 0, hex(rc(r))
        self.handle = struct.unpack(">I", r[10:14])[0]
        self.nonce_tpm = r[16:48]
        self.key = kdfa(bind_auth, b"ATH", self.nonce_tpm, self.nonce_caller, 256) \
            if bind != RH_NULL else b""

    def run(self, code, handles, names, body=b"", auth=b"", attrs=0x01, tamper=False):
        """rc of the command with this session; `auth` the entity's authValue if the HMAC
        includes it."""
        self.nonce_caller = hashlib.sha256(self.nonce_caller).digest()
        cp = hashlib.sha256(u32(code) + b"".join(names) + body).digest()
        key = self.key + auth
        mac = hmac.new(key, cp + self.nonce_caller + self.nonce_tpm + bytes([attrs]),
                       "sha256").digest() if key else b""
        if tamper:
            mac = hmac.new(b"wrong", mac, "sha256").digest()
        area = u32(self.handle) + b2(self.nonce_caller) + bytes([attrs]) + b2(mac)
        r = self.execute(cmd(code, body, handles=handles, sessions=[area]))
        if rc(r) == 0:
            auth_area = r[14 + len(params(r)):]
            n = struct.unpack(">H", auth_area[:2])[0]
            self.nonce_tpm = auth_area[2:2 + n]
        return rc(r)

    def nv_read(self, index, auth=b"", tamper=False):
        name = nv_name(index, D_ATTRS if index == D else E_ATTRS, 8,
                       policy=b"" if index == D else READ_POLICY)
        return self.run(CC_NV_Read, [index, index], [name, name], READ, auth, tamper=tamper)

    def audit_only(self, tamper=False):
        """GetRandom with this session for audit only: it authorizes no entity."""
        return self.run(CC_GetRandom, [], [], u16(8), attrs=0x81, tamper=tamper)


def _policy(x, session):
    """PolicyRestart, PolicyCommandCode(NV_Read): E's authPolicy."""
    x(cmd(0x180, handles=[session.handle]))
    return rc(x(cmd(CC_PolicyCommandCode, u32(CC_NV_Read), handles=[session.handle])))


def _bound_codes(x):
    out = []
    o = out.append
    assert rc(x(define(D, RW, 8, auth=b"dpw"))) == 0
    assert rc(x(write(D, b"d" * 8, auth=b"dpw"))) == 0
    assert rc(x(define(E, RW | NO_DA | POLICYREAD, 8, auth=b"epw", policy=READ_POLICY))) == 0
    assert rc(x(write(E, b"e" * 8, auth=b"epw"))) == 0
    s = Session(x, D, b"dpw")               # bound to a DA-protected entity
    u = Session(x)                          # unbound
    s_e = Session(x, E, b"epw")             # bound to a NO_DA entity
    # a failure in a DA-bound session counts, even for a NO_DA entity or its bind entity
    o(("s E wrong", s.nv_read(E, b"epw", tamper=True)))
    o(("s E", s.nv_read(E, b"epw")))
    o(("s D(bound) wrong", s.nv_read(D, tamper=True)))
    o(("s D(bound)", s.nv_read(D)))
    o(("u E wrong", u.nv_read(E, b"epw", tamper=True)))
    o(("s_e E(bound) wrong", s_e.nv_read(E, tamper=True)))
    o(("u audit wrong", u.audit_only(tamper=True)))
    o(("da", da_properties(x)))
    o(("s audit wrong", s.audit_only(tamper=True)))       # the third failure: lockout
    o(("da", da_properties(x)))
    # in lockout a DA-bound session is refused whatever it authorizes (or if nothing)
    o(("s E", s.nv_read(E, b"epw")))
    o(("s audit", s.audit_only()))
    o(("u E", u.nv_read(E, b"epw")))
    o(("s_e E(bound)", s_e.nv_read(E)))
    o(("pw E", rc(x(cmd(CC_NV_Read, READ, handles=[E, E], sessions=[pw_session(b"epw")])))))
    o(("pw D", rc(x(cmd(CC_NV_Read, READ, handles=[D, D], sessions=[pw_session(b"dpw")])))))
    for h in (u, s_e):                      # (libtpms has 3 session slots)
        x(cmd(CC_Flush, u32(h.handle)))
    p = Session(x, D, b"dpw", SE_POLICY)    # a policy session started with bind = D
    q = Session(x, se=SE_POLICY)
    o(("p cc", _policy(x, p)))
    o(("p E", p.nv_read(E)))
    o(("q cc", _policy(x, q)))
    o(("q E", q.nv_read(E)))
    o(("lock reset", rc(x(lock_reset()))))
    o(("da", da_properties(x)))
    x(cmd(CC_Flush, u32(q.handle)))
    # bound to lockoutAuth: a failure disables lockoutAuth (failedTries stays), and the
    # session is then refused like lockoutAuth itself
    lo = Session(x, RH_LOCKOUT, b"")
    o(("lo E wrong", lo.nv_read(E, b"epw", tamper=True)))
    o(("da", da_properties(x)))
    o(("lock reset", rc(x(lock_reset()))))
    o(("lo E", lo.nv_read(E, b"epw")))
    o(("lo audit", lo.audit_only()))
    o(("s E", s.nv_read(E, b"epw")))
    # a policy session started with a DA-protected bind entity counts its failures
    o(("p cc", _policy(x, p)))
    o(("p E wrong", p.nv_read(E, tamper=True)))
    o(("p E", p.nv_read(E)))
    o(("da", da_properties(x)))
    return out


EXPECTED = [AUTH_FAIL, 0, AUTH_FAIL, 0, BAD_AUTH, BAD_AUTH, BAD_AUTH, (2, False),
            AUTH_FAIL, (3, True),
            LOCKOUT, LOCKOUT, 0, 0, 0, LOCKOUT, 0, LOCKOUT, 0, 0,
            0, (0, False),
            AUTH_FAIL, (0, False), LOCKOUT, LOCKOUT, LOCKOUT, 0,
            0, AUTH_FAIL, 0, (1, False)]


def test_sessions_bound_to_da_protected_entities():
    tpm, _ = fresh()
    got = [(v[0], v[4]) if k == "da" else v for k, v in _bound_codes(tpm.execute)]
    assert got == EXPECTED


@needs_swtpm
@pytest.mark.swtpm
def test_sessions_bound_to_da_protected_entities_as_swtpm():
    tpm, _ = fresh()
    sw = Swtpm()
    try:
        assert rc(sw.execute(STARTUP_CLEAR)) == 0
        ours, theirs = _bound_codes(tpm.execute), _bound_codes(retrying(sw.execute))
        diffs = [(i, a, b) for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
        assert not diffs and len(ours) == len(theirs)
    finally:
        sw.close()
