"""Endorsement keys from the TCG EK templates (tpm2_createek: low-range L-1 RSA-2048 and L-2
ECC P-256 with the standard EK policy) and persistent handles through tpm2-tools."""
import shutil
import subprocess

import pytest

from ctpm.testing.process import run_daemon

pytestmark = [pytest.mark.tools,
              pytest.mark.skipif(shutil.which("tpm2_createek") is None,
                                 reason="tpm2-tools is not installed")]

# PolicySecret(TPM_RH_ENDORSEMENT), the authPolicy of the TCG EK templates L-1 and L-2
EK_POLICY = "837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa"


def ok(*args, cwd=None):
    r = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=cwd)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def tpm(tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    with run_daemon("--mssim", "127.0.0.1:0", "--state", str(state)) as d:
        ok("tpm2_startup", "-c", "-T", d.tcti())
        yield d, state


@pytest.mark.parametrize("alg", ["rsa", "ecc"])
def test_createek_uses_the_tcg_template_and_is_stable(tpm, tmp_path, alg):
    d, _ = tpm
    t = d.tcti()
    ok("tpm2_createek", "-T", t, "-c", "ek1.ctx", "-G", alg, "-u", "ek1.pub", cwd=tmp_path)
    ok("tpm2_createek", "-T", t, "-c", "ek2.ctx", "-G", alg, "-u", "ek2.pub", cwd=tmp_path)
    assert (tmp_path / "ek1.pub").read_bytes() == (tmp_path / "ek2.pub").read_bytes()
    info = ok("tpm2_readpublic", "-T", t, "-c", "ek1.ctx", cwd=tmp_path)
    assert EK_POLICY in info.replace(" ", "").lower()
    for attr in ("fixedtpm", "fixedparent", "sensitivedataorigin", "adminwithpolicy",
                 "restricted", "decrypt"):
        assert attr in info
    assert "userwithauth" not in info
    ok("tpm2_flushcontext", "-T", t, "-t")


def test_persistent_ek_survives_a_restart(tpm, tmp_path):
    d, state = tpm
    t = d.tcti()
    ok("tpm2_createek", "-T", t, "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub", cwd=tmp_path)
    ok("tpm2_evictcontrol", "-T", t, "-C", "o", "-c", "ek.ctx", "0x81010001", cwd=tmp_path)
    assert "0x81010001" in ok("tpm2_getcap", "-T", t, "handles-persistent")
    before = ok("tpm2_readpublic", "-T", t, "-c", "0x81010001")
    d.stop()
    with run_daemon("--mssim", "127.0.0.1:0", "--state", str(state)) as again:
        t2 = again.tcti()
        ok("tpm2_startup", "-c", "-T", t2)
        assert ok("tpm2_readpublic", "-T", t2, "-c", "0x81010001") == before
        ok("tpm2_evictcontrol", "-T", t2, "-C", "o", "-c", "0x81010001")
        assert "0x81010001" not in ok("tpm2_getcap", "-T", t2, "handles-persistent")
