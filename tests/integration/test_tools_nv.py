"""NV through the real tpm2-tools against a `ctpm run` process: platform indices, read and
write locks, a policy-protected index, and the edge cases users hit (writing past the end,
a wrong password, a counter that must never go back). Expected values are written here."""
import subprocess

import pytest

from ctpm.testing.process import run_daemon
from tests.integration.test_tools import ok, power_cycle, tool

pytestmark = [pytest.mark.tools,
              pytest.mark.skipif(subprocess.run(["which", "tpm2_nvdefine"],
                                                capture_output=True).returncode != 0,
                                 reason="tpm2-tools is not installed")]

NV_LOCKED, AUTH_FAIL = "0x148", "0x98e"


@pytest.fixture(scope="module")
def daemon():
    with run_daemon() as d:
        ok("tpm2_startup", "-c", "-T", d.tcti("mssim"))
        yield d


@pytest.fixture
def tcti(daemon):
    return daemon.tcti("mssim")


def run(tcti, cwd, *args, **kwargs):
    return ok(args[0], "-T", tcti, *args[1:], cwd=cwd, **kwargs)


def refused(tcti, cwd, rc: str, *args):
    """The tool fails and tpm2-tss reports TPM_RC `rc` (as 0x...)."""
    result = tool(args[0], "-T", tcti, *args[1:], cwd=cwd)
    assert result.returncode != 0
    assert f"({rc})" in result.stderr.lower() or f"0x{int(rc, 16):x}" in result.stderr.lower(), \
        result.stderr


def test_platform_index(tcti, tmp_path):
    index = "0x1500040"
    run(tcti, tmp_path, "tpm2_nvdefine", index, "-C", "p", "-s", "16",
        "-a", "ppwrite|ppread|platformcreate|authread")
    try:
        (tmp_path / "d").write_bytes(b"platform-data!!!")
        run(tcti, tmp_path, "tpm2_nvwrite", index, "-C", "p", "-i", "d")
        out = run(tcti, tmp_path, "tpm2_nvread", index, "-C", "p", "-s", "16")
        assert out == "platform-data!!!"
        # the owner may neither write nor undefine a platform index
        refused(tcti, tmp_path, "0x149", "tpm2_nvwrite", index, "-C", "o", "-i", "d")
        assert tool("tpm2_nvundefine", "-T", tcti, index, "-C", "o").returncode != 0
    finally:
        run(tcti, tmp_path, "tpm2_nvundefine", index, "-C", "p")


def test_write_lock_and_read_lock(daemon, tcti, tmp_path):
    w, r = "0x1500041", "0x1500042"
    run(tcti, tmp_path, "tpm2_nvdefine", w, "-C", "o", "-s", "8",
        "-a", "ownerwrite|ownerread|writedefine")
    run(tcti, tmp_path, "tpm2_nvdefine", r, "-C", "o", "-s", "8",
        "-a", "ownerwrite|ownerread|read_stclear")
    try:
        (tmp_path / "d").write_bytes(b"12345678")
        for index in (w, r):
            run(tcti, tmp_path, "tpm2_nvwrite", index, "-C", "o", "-i", "d")
        run(tcti, tmp_path, "tpm2_nvwritelock", w, "-C", "o")
        refused(tcti, tmp_path, NV_LOCKED, "tpm2_nvwrite", w, "-C", "o", "-i", "d")
        assert run(tcti, tmp_path, "tpm2_nvread", w, "-C", "o", "-s", "8") == "12345678"
        run(tcti, tmp_path, "tpm2_nvreadlock", r, "-C", "o")
        refused(tcti, tmp_path, NV_LOCKED, "tpm2_nvread", r, "-C", "o", "-s", "8")
        # read locks end with the next TPM Reset; writedefine locks never do
        run(tcti, tmp_path, "tpm2_shutdown", "-c")
        power_cycle(daemon, "mssim")
        run(tcti, tmp_path, "tpm2_startup", "-c")
        assert run(tcti, tmp_path, "tpm2_nvread", r, "-C", "o", "-s", "8") == "12345678"
        refused(tcti, tmp_path, NV_LOCKED, "tpm2_nvwrite", w, "-C", "o", "-i", "d")
    finally:
        for index in (w, r):
            run(tcti, tmp_path, "tpm2_nvundefine", index, "-C", "o")


def test_policy_protected_index(tcti, tmp_path):
    """An index read only through its policy (PolicyCommandCode NV_Read), written by the
    owner."""
    index = "0x1500043"
    run(tcti, tmp_path, "tpm2_startauthsession", "-S", "trial.ctx")
    run(tcti, tmp_path, "tpm2_policycommandcode", "-S", "trial.ctx", "-L", "policy.dat",
        "TPM2_CC_NV_Read")
    run(tcti, tmp_path, "tpm2_flushcontext", "trial.ctx")
    run(tcti, tmp_path, "tpm2_nvdefine", index, "-C", "o", "-s", "4", "-L", "policy.dat",
        "-a", "policyread|ownerwrite")
    try:
        (tmp_path / "d").write_bytes(b"pol!")
        run(tcti, tmp_path, "tpm2_nvwrite", index, "-C", "o", "-i", "d")
        run(tcti, tmp_path, "tpm2_startauthsession", "--policy-session", "-S", "s.ctx")
        run(tcti, tmp_path, "tpm2_policycommandcode", "-S", "s.ctx", "TPM2_CC_NV_Read")
        out = run(tcti, tmp_path, "tpm2_nvread", index, "-C", index, "-s", "4",
                  "-P", "session:s.ctx")
        assert out == "pol!"
        run(tcti, tmp_path, "tpm2_flushcontext", "s.ctx")
        # the owner has no read access, and the index's password is not a way in
        refused(tcti, tmp_path, "0x149", "tpm2_nvread", index, "-C", "o", "-s", "4")
        assert tool("tpm2_nvread", "-T", tcti, index, "-C", index, "-s", "4").returncode != 0
    finally:
        run(tcti, tmp_path, "tpm2_nvundefine", index, "-C", "o")


def test_edges(tcti, tmp_path):
    index, counter = "0x1500044", "0x1500045"
    run(tcti, tmp_path, "tpm2_nvdefine", index, "-C", "o", "-s", "32", "-p", "pw",
        "-a", "authread|authwrite|ownerread|ownerwrite")
    try:
        (tmp_path / "d").write_bytes(b"12345678")
        # (tpm2-tools refuses a range past the end itself; the TPM's TPM_RC_NV_RANGE is
        # checked against swtpm in tests/test_nv.py)
        assert tool("tpm2_nvwrite", "-T", tcti, index, "-C", "o", "-i", "d", "--offset", "28",
                    cwd=tmp_path).returncode != 0
        run(tcti, tmp_path, "tpm2_nvwrite", index, "-C", "o", "-i", "d", "--offset", "24")
        # partial write: only bytes 24..31 written; a read of it works, the rest too (0xFF)
        assert run(tcti, tmp_path, "tpm2_nvread", index, "-C", "o", "-s", "8",
                   "--offset", "24") == "12345678"
        # the first (partial) write left the bytes around it erased (0xFF), as the reference
        raw = subprocess.run(["tpm2_nvread", "-T", tcti, index, "-C", "o", "-s", "26"],
                             capture_output=True, check=True).stdout
        assert raw == b"\xff" * 24 + b"12"
        refused(tcti, tmp_path, AUTH_FAIL, "tpm2_nvread", index, "-C", index, "-P", "nope",
                "-s", "4")
        assert run(tcti, tmp_path, "tpm2_nvread", index, "-C", index, "-P", "pw",
                   "-s", "4", "--offset", "24") == "1234"
    finally:
        run(tcti, tmp_path, "tpm2_nvundefine", index, "-C", "o")
        run(tcti, tmp_path, "tpm2_dictionarylockout", "--clear-lockout")

    def value(handle):
        out = subprocess.run(["tpm2_nvread", "-T", tcti, handle, "-C", "o", "-s", "8"],
                             capture_output=True, check=True).stdout
        return int.from_bytes(out, "big")

    run(tcti, tmp_path, "tpm2_nvdefine", counter, "-C", "o", "-s", "8",
        "-a", "nt=counter|ownerread|ownerwrite")
    for _ in range(5):
        run(tcti, tmp_path, "tpm2_nvincrement", counter, "-C", "o")
    first = value(counter)
    run(tcti, tmp_path, "tpm2_nvundefine", counter, "-C", "o")
    # a counter defined again starts past every value a counter has shown
    run(tcti, tmp_path, "tpm2_nvdefine", counter, "-C", "o", "-s", "8",
        "-a", "nt=counter|ownerread|ownerwrite")
    try:
        run(tcti, tmp_path, "tpm2_nvincrement", counter, "-C", "o")
        assert value(counter) > first >= 5
    finally:
        run(tcti, tmp_path, "tpm2_nvundefine", counter, "-C", "o")
