"""SetPrimaryPolicy, HierarchyControl, ChangeEPS and ChangePPS (Part 3 §24.5, §24.9-24.11):
the same command stream to ctpm and swtpm, engine-level checks of what survives which
Startup, and tpm2-tools against `ctpm run`."""
import shutil
import struct
import subprocess

import pytest

from ctpm.testing.process import run_daemon
from tests.peers import Swtpm, needs_swtpm
from tests.test_hierarchy import change_auth, clear, clear_control, flushed
from tests.test_objects import (EMPTY_PCRS, create_primary, evict, flush, primary_public,
                                sensitive_create, started, template)
from tests.test_policy import ZERO, f_command_code, policy, policy_auth, start
from tests.tpmcmd import (SHUTDOWN_CLEAR, SHUTDOWN_STATE, STARTUP_CLEAR, STARTUP_STATE, b2, cmd,
                          params, pw_session, rc, u16, u32)

RH_OWNER, RH_NULL, RH_LOCKOUT = 0x40000001, 0x40000007, 0x4000000A
RH_ENDORSEMENT, RH_PLATFORM, RH_PLATFORM_NV = 0x4000000B, 0x4000000C, 0x4000000D
SHA1, SHA256, ALG_NULL = 0x0004, 0x000B, 0x0010
CC_CreatePrimary, CC_ClearControl = 0x131, 0x127
HIERARCHY_H1, AUTH_TYPE, POLICY_FAIL_S1, POLICY_CC_S1 = 0x185, 0x124, 0x99D, 0x9A4
ECC = template("ecc256:aes128cfb")

D_CREATE_PRIMARY = f_command_code(ZERO, CC_CreatePrimary)
D_CLEAR_CONTROL = f_command_code(ZERO, CC_ClearControl)


def set_policy(handle, digest, alg=SHA256, auth=b""):
    return cmd(0x12E, b2(digest) + u16(alg), handles=[handle], sessions=[pw_session(auth)])


def hierarchy_control(auth_handle, enable, state, auth=b""):
    return cmd(0x121, u32(enable) + bytes([state]), handles=[auth_handle],
               sessions=[pw_session(auth)])


def change_eps(auth=b""):
    return cmd(0x124, handles=[RH_PLATFORM], sessions=[pw_session(auth)])


def change_pps(auth=b""):
    return cmd(0x125, handles=[RH_PLATFORM], sessions=[pw_session(auth)])


def getcap(cap, prop, count):
    return cmd(0x17A, u32(cap) + u32(prop) + u32(count))


def startup_clear_bits(x):
    """TPMA_STARTUP_CLEAR (TPM_PT_STARTUP_CLEAR)."""
    body = params(x(getcap(6, 0x201, 1)))
    assert body[9:13] == u32(0x201)
    return int.from_bytes(body[-4:], "big")


def auth_policies(x, first=0x40000000, count=20):
    """TPM_CAP_AUTH_POLICIES as (handle, hashAlg, digest) without the ACT handles (ctpm has
    ACTs, libtpms 0.9 none), then moreData; the rest must be byte for byte swtpm's."""
    r = x(getcap(9, first, count))
    body = params(r)
    if rc(r):
        return rc(r), body
    entries, i = [], 9
    for _ in range(int.from_bytes(body[5:9], "big")):
        handle, alg = int.from_bytes(body[i:i + 4], "big"), int.from_bytes(body[i + 4:i + 6], "big")
        size = {0x10: 0, 0x04: 20, 0x0B: 32, 0x0C: 48, 0x0D: 64, 0x12: 32}[alg]
        if not 0x40000110 <= handle <= 0x4000011F:
            entries.append((handle, alg, body[i + 6:i + 6 + size]))
        i += 6 + size
    return rc(r), body[0], entries


def primary(x, hierarchy, auth=b""):
    return flushed(x, x(create_primary(hierarchy, tmpl=ECC, auth=auth)))


def primary_pub(x, hierarchy, auth=b""):
    r = x(create_primary(hierarchy, tmpl=ECC, auth=auth))
    assert rc(r) == 0, hex(rc(r))
    handle, pub = primary_public(r)
    x(flush(handle))
    return pub


def policy_primary(x, hierarchy, code=CC_CreatePrimary):
    """CreatePrimary authorized by a policy session with PolicyCommandCode(code)."""
    s, _ = start(x)
    r1 = rc(x(policy("PolicyCommandCode", s, u32(code))))
    body = sensitive_create() + ECC + b2(b"") + EMPTY_PCRS
    r2 = flushed(x, x(cmd(0x131, body, handles=[hierarchy], sessions=[policy_auth(s)])))
    x(flush(s))
    return r1, r2


def policy_clear_control(x, disable):
    s, _ = start(x)
    r1 = rc(x(policy("PolicyCommandCode", s, u32(CC_ClearControl))))
    r2 = rc(x(cmd(0x127, bytes([disable]), handles=[RH_LOCKOUT], sessions=[policy_auth(s)])))
    x(flush(s))
    return r1, r2


def endorsement_object_flushed(x):
    r = x(create_primary(RH_ENDORSEMENT, tmpl=ECC))
    handle = struct.unpack(">I", r[10:14])[0]
    out = [rc(r), rc(x(hierarchy_control(RH_ENDORSEMENT, RH_ENDORSEMENT, 0))),
           rc(x(cmd(0x173, handles=[handle]))),                  # ReadPublic: gone
           rc(x(cmd(0x167, u16(0) + ECC + u32(RH_ENDORSEMENT)))),  # LoadExternal
           startup_clear_bits(x),
           rc(x(hierarchy_control(RH_ENDORSEMENT, RH_ENDORSEMENT, 1))),   # eh is off
           rc(x(hierarchy_control(RH_PLATFORM, RH_ENDORSEMENT, 1)))]
    return out


def persistent_in_disabled_owner(x):
    r = x(create_primary(RH_OWNER, tmpl=ECC))
    handle = struct.unpack(">I", r[10:14])[0]
    out = [rc(r), rc(x(evict(RH_OWNER, handle, 0x81000010))), rc(x(flush(handle))),
           rc(x(hierarchy_control(RH_PLATFORM, RH_OWNER, 0))),
           rc(x(cmd(0x173, handles=[0x81000010]))),
           rc(x(hierarchy_control(RH_PLATFORM, RH_OWNER, 1))),
           rc(x(cmd(0x173, handles=[0x81000010]))),
           rc(x(evict(RH_OWNER, 0x81000010, 0x81000010)))]
    return out


def change_eps_step(x):
    before = primary_pub(x, RH_ENDORSEMENT, b"eauth")
    r = rc(x(change_eps()))
    after = primary_pub(x, RH_ENDORSEMENT)           # endorsementAuth is empty again
    return r, before != after


def change_pps_step(x):
    before = primary_pub(x, RH_PLATFORM, b"pauth")
    r = rc(x(change_pps(b"pauth")))
    after = primary_pub(x, RH_PLATFORM, b"pauth")    # platformAuth stays
    return r, before != after


STREAM = [
    startup_clear_bits,
    auth_policies,
    lambda x: rc(x(set_policy(RH_OWNER, b"\0" * 20))),                 # SIZE
    lambda x: rc(x(set_policy(RH_OWNER, b""))),                        # SIZE
    lambda x: rc(x(set_policy(RH_OWNER, b"", ALG_NULL))),
    lambda x: rc(x(set_policy(RH_NULL, b""))),                         # not a policy handle
    lambda x: rc(x(set_policy(RH_OWNER, D_CREATE_PRIMARY))),
    lambda x: rc(x(set_policy(RH_LOCKOUT, D_CLEAR_CONTROL))),
    lambda x: rc(x(set_policy(RH_ENDORSEMENT, b"\x11" * 20, SHA1))),
    lambda x: rc(x(set_policy(RH_PLATFORM, D_CREATE_PRIMARY))),
    auth_policies,
    lambda x: auth_policies(x, RH_ENDORSEMENT, 1),                     # paging: moreData
    lambda x: auth_policies(x, 0x81000000, 1),                         # not permanent
    lambda x: policy_primary(x, RH_OWNER),
    lambda x: policy_primary(x, RH_OWNER, CC_ClearControl),            # POLICY_CC
    lambda x: policy_primary(x, RH_ENDORSEMENT),                       # sha1 policy: FAIL
    lambda x: policy_primary(x, RH_PLATFORM),
    lambda x: policy_clear_control(x, 1),
    lambda x: rc(x(clear(RH_LOCKOUT))),                                # DISABLED
    lambda x: rc(x(clear_control(RH_PLATFORM, 0))),
    lambda x: primary(x, RH_OWNER),                                    # password still works
    lambda x: rc(x(hierarchy_control(RH_OWNER, RH_OWNER, 0))),
    lambda x: primary(x, RH_OWNER),                                    # HIERARCHY
    lambda x: policy_primary(x, RH_OWNER),
    startup_clear_bits,
    lambda x: rc(x(hierarchy_control(RH_OWNER, RH_OWNER, 1))),         # HIERARCHY
    lambda x: rc(x(hierarchy_control(RH_ENDORSEMENT, RH_PLATFORM, 0))),  # AUTH_TYPE
    lambda x: rc(x(hierarchy_control(RH_ENDORSEMENT, RH_PLATFORM_NV, 0))),
    lambda x: rc(x(hierarchy_control(RH_PLATFORM, RH_NULL, 1))),       # VALUE
    lambda x: rc(x(hierarchy_control(RH_PLATFORM, RH_OWNER, 2))),      # VALUE
    lambda x: rc(x(hierarchy_control(RH_PLATFORM, RH_OWNER, 1))),
    lambda x: rc(x(hierarchy_control(RH_PLATFORM, RH_OWNER, 1))),      # no change
    lambda x: primary(x, RH_OWNER),
    endorsement_object_flushed,
    persistent_in_disabled_owner,
    lambda x: rc(x(hierarchy_control(RH_PLATFORM, RH_PLATFORM_NV, 0))),
    startup_clear_bits,
    lambda x: rc(x(hierarchy_control(RH_PLATFORM, RH_PLATFORM_NV, 1))),
    lambda x: rc(x(change_auth(RH_ENDORSEMENT, b"eauth"))),
    lambda x: rc(x(change_eps(b"wrong"))),                              # BAD_AUTH
    lambda x: rc(x(cmd(0x124, handles=[RH_OWNER], sessions=[pw_session()]))),  # VALUE
    change_eps_step,
    auth_policies,                                                     # endorsement cleared
    lambda x: rc(x(change_auth(RH_PLATFORM, b"pauth"))),
    change_pps_step,
    auth_policies,                                                     # platform cleared
    lambda x: rc(x(hierarchy_control(RH_PLATFORM, RH_PLATFORM, 0, b"pauth"))),
    lambda x: primary(x, RH_PLATFORM, b"pauth"),                       # HIERARCHY
    lambda x: rc(x(hierarchy_control(RH_PLATFORM, RH_PLATFORM, 1, b"pauth"))),
    lambda x: rc(x(change_pps(b"pauth"))),
    startup_clear_bits,
    lambda x: rc(x(clear(RH_LOCKOUT))),
    auth_policies,                                                     # all cleared
]


@needs_swtpm
@pytest.mark.swtpm
def test_hierarchy_policies_and_enables_as_swtpm():
    ours = started()
    sw = Swtpm()
    try:
        assert rc(sw.execute(STARTUP_CLEAR)) == 0
        a = [step(ours.execute) for step in STREAM]
        b = [step(sw.execute) for step in STREAM]
        for i, (x, y) in enumerate(zip(a, b)):
            assert x == y, (i, x, y)
        assert a[2:4] == [0x1D5, 0x1D5] and a[5] == 0x184
        assert a[13] == (0, 0) and a[15] == (0, POLICY_FAIL_S1) and a[17:19] == [(0, 0), 0x120]
        assert a[22] == HIERARCHY_H1 and a[23] == (0, HIERARCHY_H1) and a[26] == AUTH_TYPE
        assert a[33] == [0, 0, 0x910, 0x3C5, 0x8000000B, HIERARCHY_H1, 0]
        assert a[34][4] == 0x18B
        assert a[41] == (0, True) and a[44] == (0, True)
        assert a[-1][2][-1] == (0x4000000C, 0x10, b"")            # platform: none
    finally:
        sw.close()


def test_enables_and_platform_policy_across_startups():
    tpm = started()
    x = tpm.execute
    assert rc(x(set_policy(RH_PLATFORM, D_CREATE_PRIMARY))) == 0
    assert rc(x(set_policy(RH_OWNER, D_CREATE_PRIMARY))) == 0
    assert rc(x(hierarchy_control(RH_PLATFORM, RH_ENDORSEMENT, 0))) == 0
    assert rc(x(hierarchy_control(RH_PLATFORM, RH_PLATFORM, 0))) == 0
    assert startup_clear_bits(x) & 0xF == 0x2 | 0x8      # shEnable, phEnableNV
    # Resume: phEnable again; ehEnable and the platform policy as they were
    assert rc(x(SHUTDOWN_STATE)) == 0
    tpm.power_off()
    tpm.power_on()
    assert rc(x(STARTUP_STATE)) == 0
    assert startup_clear_bits(x) & 0xF == 0x1 | 0x2 | 0x8
    assert primary(x, RH_ENDORSEMENT) == HIERARCHY_H1
    assert policy_primary(x, RH_PLATFORM) == (0, 0)
    # Restart (Shutdown(STATE), Startup(CLEAR)): everything enabled, platform policy gone
    assert rc(x(SHUTDOWN_STATE)) == 0
    tpm.power_off()
    tpm.power_on()
    assert rc(x(STARTUP_CLEAR)) == 0
    assert startup_clear_bits(x) & 0xF == 0xF
    assert policy_primary(x, RH_PLATFORM) == (0, 0x12F)  # AUTH_UNAVAILABLE
    assert policy_primary(x, RH_OWNER) == (0, 0)         # the owner's is in NV
    assert rc(x(SHUTDOWN_CLEAR)) == 0


def test_change_eps_and_pps_flush_their_hierarchy():
    tpm = started()
    x = tpm.execute
    eh = struct.unpack(">I", x(create_primary(RH_ENDORSEMENT, tmpl=ECC))[10:14])[0]
    ph = struct.unpack(">I", x(create_primary(RH_PLATFORM, tmpl=ECC))[10:14])[0]
    oh = struct.unpack(">I", x(create_primary(RH_OWNER, tmpl=ECC))[10:14])[0]
    assert rc(x(evict(RH_OWNER, eh, 0x81010001))) == 0
    assert rc(x(evict(RH_PLATFORM, ph, 0x81800001))) == 0
    proofs = dict(tpm.state.nv)
    assert rc(x(change_eps())) == 0
    assert eh not in tpm.state.objects and 0x81010001 not in tpm.state.persistent
    assert {ph, oh} <= set(tpm.state.objects) and 0x81800001 in tpm.state.persistent
    assert tpm.state.nv["eh_proof"] != proofs["eh_proof"]
    assert rc(x(change_pps())) == 0
    assert set(tpm.state.objects) == {oh} and not tpm.state.persistent
    assert tpm.state.nv["ph_proof"] != proofs["ph_proof"]
    assert tpm.state.nv["sh_proof"] == proofs["sh_proof"]


def test_hierarchy_control_flushes_objects_and_lockout_stays_available():
    tpm = started()
    x = tpm.execute
    oh = struct.unpack(">I", x(create_primary(RH_OWNER, tmpl=ECC))[10:14])[0]
    assert rc(x(hierarchy_control(RH_OWNER, RH_OWNER, 0))) == 0
    assert oh not in tpm.state.objects
    assert rc(x(clear_control(RH_LOCKOUT, 1))) == 0      # lockout has no enable
    assert rc(x(clear_control(RH_PLATFORM, 0))) == 0
    assert rc(x(clear(RH_LOCKOUT))) == 0                  # Clear enables sh and eh again
    assert startup_clear_bits(x) & 0xF == 0xF


@pytest.mark.tools
@pytest.mark.skipif(shutil.which("tpm2_hierarchycontrol") is None, reason="tpm2-tools missing")
def test_tools_setprimarypolicy_hierarchycontrol_changeeps_changepps(tmp_path):
    def run(*args, ok=True):
        r = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=tmp_path)
        if ok:
            assert r.returncode == 0, (args, r.stderr)
        else:
            assert r.returncode != 0, args
        return r.stdout + r.stderr
    with run_daemon("--mssim", "127.0.0.1:0", "--state", str(tmp_path / "state")) as d:
        t = d.tcti()
        run("tpm2_startup", "-c", "-T", t)
        (tmp_path / "policy.dat").write_bytes(D_CREATE_PRIMARY)
        run("tpm2_setprimarypolicy", "-T", t, "-C", "o", "-L", "policy.dat", "-g", "sha256")
        run("tpm2_startauthsession", "-T", t, "--policy-session", "-S", "s.ctx")
        run("tpm2_policycommandcode", "-T", t, "-S", "s.ctx", "TPM2_CC_CreatePrimary")
        run("tpm2_createprimary", "-T", t, "-C", "o", "-G", "ecc", "-P", "session:s.ctx",
            "-c", "p.ctx")
        run("tpm2_flushcontext", "-T", t, "s.ctx")
        run("tpm2_flushcontext", "-T", t, "-t")
        run("tpm2_hierarchycontrol", "-T", t, "-C", "p", "shEnable", "clear")
        assert "shEnable:                  0" in run("tpm2_getcap", "-T", t,
                                                     "properties-variable")
        run("tpm2_createprimary", "-T", t, "-C", "o", "-G", "ecc", "-c", "q.ctx", ok=False)
        run("tpm2_hierarchycontrol", "-T", t, "-C", "p", "shEnable", "set")
        run("tpm2_createprimary", "-T", t, "-C", "e", "-G", "ecc", "-c", "e.ctx")
        run("tpm2_readpublic", "-T", t, "-c", "e.ctx", "-o", "e1.pub")
        run("tpm2_flushcontext", "-T", t, "-t")
        run("tpm2_changeeps", "-T", t)
        run("tpm2_createprimary", "-T", t, "-C", "e", "-G", "ecc", "-c", "e.ctx")
        run("tpm2_readpublic", "-T", t, "-c", "e.ctx", "-o", "e2.pub")
        assert (tmp_path / "e1.pub").read_bytes() != (tmp_path / "e2.pub").read_bytes()
        run("tpm2_flushcontext", "-T", t, "-t")
        run("tpm2_changepps", "-T", t)
