"""HierarchyChangeAuth, Clear and ClearControl: the same command stream to ctpm and swtpm."""
import shutil
import struct
import subprocess

import pytest

from ctpm.testing.process import run_daemon
from tests.peers import Swtpm, needs_swtpm
from tests.test_objects import create_primary, flush, primary_public, started
from tests.tpmcmd import STARTUP_CLEAR, SHUTDOWN_CLEAR, b2, cmd, params, pw_session, rc, u32

RH_OWNER, RH_LOCKOUT, RH_ENDORSEMENT, RH_PLATFORM = 0x40000001, 0x4000000A, 0x4000000B, 0x4000000C


def change_auth(handle, new, old=b""):
    return cmd(0x129, b2(new), handles=[handle], sessions=[pw_session(old)])


def clear(handle, auth=b""):
    return cmd(0x126, handles=[handle], sessions=[pw_session(auth)])


def clear_control(handle, disable, auth=b""):
    return cmd(0x127, bytes([disable]), handles=[handle], sessions=[pw_session(auth)])


def flushed(execute, rsp):
    if rc(rsp) == 0:
        execute(flush(struct.unpack(">I", rsp[10:14])[0]))
    return rc(rsp)


def permanent(execute):
    """TPMA_PERMANENT without tpmGeneratedEPS (ctpm's test TPM has a fixed seed)."""
    value = int.from_bytes(params(execute(cmd(0x17A, u32(6) + u32(0x200) + u32(1))))[-4:], "big")
    return value & ~0x400


STREAM = [
    lambda x: rc(x(change_auth(RH_OWNER, b"owner pw"))),
    lambda x: flushed(x, x(create_primary(RH_OWNER, auth=b"wrong"))),        # BAD_AUTH
    lambda x: flushed(x, x(create_primary(RH_OWNER, auth=b"owner pw"))),
    lambda x: rc(x(change_auth(RH_OWNER, b"second", b"owner pw"))),
    lambda x: rc(x(change_auth(RH_ENDORSEMENT, b"e" * 65))),                   # too long
    lambda x: rc(x(change_auth(RH_PLATFORM, b"platform pw"))),
    lambda x: flushed(x, x(create_primary(RH_PLATFORM, auth=b"platform pw"))),
    lambda x: rc(x(change_auth(RH_LOCKOUT, b"lockout pw"))),
    lambda x: rc(x(cmd(0x17A, u32(6) + u32(0x200) + u32(1)))),               # TPM_PT_PERMANENT
    lambda x: permanent(x),
    lambda x: rc(x(clear_control(RH_LOCKOUT, 1, b"lockout pw"))),
    lambda x: rc(x(clear(RH_LOCKOUT, b"lockout pw"))),                         # DISABLED
    lambda x: rc(x(clear_control(RH_LOCKOUT, 0, b"lockout pw"))),              # AUTH_FAIL
    lambda x: rc(x(clear_control(RH_PLATFORM, 0, b"platform pw"))),
    lambda x: rc(x(clear(RH_OWNER, b"second"))),                               # not a clear handle
    lambda x: rc(x(clear(RH_LOCKOUT, b"lockout pw"))),
    lambda x: flushed(x, x(create_primary(RH_OWNER))),                         # auth gone
    lambda x: permanent(x),
    lambda x: params(x(cmd(0x181)))[16:24],                                     # reset/restart 0
    lambda x: flushed(x, x(create_primary(RH_PLATFORM, auth=b"platform pw"))),  # platform kept
]


@needs_swtpm
@pytest.mark.swtpm
def test_hierarchy_administration_as_swtpm():
    ours = started()
    sw = Swtpm()
    try:
        assert rc(sw.execute(STARTUP_CLEAR)) == 0
        a = [step(ours.execute) for step in STREAM]
        b = [step(sw.execute) for step in STREAM]
        assert a == b
        assert a[:3] == [0, 0x9A2, 0] and a[11] == 0x120 and a[12] == 0x08E
    finally:
        sw.close()


def test_clear_changes_the_storage_seed_and_empties_the_owner_hierarchy():
    tpm = started()
    before_handle, before = primary_public(tpm.execute(create_primary(RH_OWNER)))
    endorsement = primary_public(tpm.execute(create_primary(RH_ENDORSEMENT)))[1]
    assert rc(tpm.execute(cmd(0x120, u32(0x81000001), handles=[RH_OWNER, before_handle],
                              sessions=[pw_session()]))) == 0
    assert rc(tpm.execute(clear(RH_LOCKOUT))) == 0
    assert not tpm.state.objects and not tpm.state.persistent
    assert primary_public(tpm.execute(create_primary(RH_OWNER)))[1] != before
    assert primary_public(tpm.execute(create_primary(RH_ENDORSEMENT)))[1] == endorsement


def test_platform_auth_lasts_until_startup_clear():
    tpm = started()
    assert rc(tpm.execute(change_auth(RH_PLATFORM, b"p"))) == 0
    assert rc(tpm.execute(SHUTDOWN_CLEAR)) == 0
    tpm.power_off()
    tpm.power_on()
    assert rc(tpm.execute(STARTUP_CLEAR)) == 0
    assert flushed(tpm.execute, tpm.execute(create_primary(RH_PLATFORM))) == 0


@pytest.mark.tools
@pytest.mark.skipif(shutil.which("tpm2_changeauth") is None, reason="tpm2-tools missing")
def test_tools_changeauth_and_clear(tmp_path):
    def ok(*args):
        r = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        return r.stdout
    with run_daemon("--mssim", "127.0.0.1:0", "--state", str(tmp_path / "state")) as d:
        t = d.tcti()
        ok("tpm2_startup", "-c", "-T", t)
        ok("tpm2_changeauth", "-T", t, "-c", "o", "newowner")
        ok("tpm2_createprimary", "-T", t, "-C", "o", "-P", "newowner", "-c", "p.ctx")
        assert "ownerAuthSet:              1" in ok("tpm2_getcap", "-T", t,
                                                    "properties-variable")
        ok("tpm2_clear", "-T", t, "-c", "p")
        assert "ownerAuthSet:              0" in ok("tpm2_getcap", "-T", t,
                                                    "properties-variable")
        ok("tpm2_createprimary", "-T", t, "-C", "o", "-c", "p2.ctx")
