"""tpm2-tools against a real `ctpm run` process, over both TCTIs."""
import hashlib
import shutil
import subprocess

import pytest

from ctpm.testing.process import run_daemon

pytestmark = [pytest.mark.tools,
              pytest.mark.skipif(shutil.which("tpm2_getrandom") is None,
                                 reason="tpm2-tools is not installed")]


def tool(*args):
    return subprocess.run(args, capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    sock = tmp_path_factory.mktemp("ctpm") / "swtpm.sock"
    with run_daemon("--mssim", "127.0.0.1:0", "--swtpm", "127.0.0.1:0",
                    "--swtpm", f"unix:{sock}") as d:
        result = tool("tpm2_startup", "-c", "-T", d.tcti("mssim"))
        assert result.returncode == 0, result.stderr
        yield d


@pytest.mark.parametrize("tcti", ["mssim", "swtpm", "swtpm-unix"])
def test_getrandom(daemon, tcti):
    if tcti == "swtpm-unix":
        tcti = f"swtpm:path={daemon.endpoints[2][3]}"
    else:
        tcti = daemon.tcti(tcti)
    result = tool("tpm2_getrandom", "-T", tcti, "--hex", "16")
    assert result.returncode == 0, result.stderr
    assert len(bytes.fromhex(result.stdout.strip())) == 16


def test_pcr_extend_seen_over_the_other_tcti(daemon):
    digest = "11" * 32
    result = tool("tpm2_pcrextend", "-T", daemon.tcti("swtpm"), f"16:sha256={digest}")
    assert result.returncode == 0, result.stderr
    result = tool("tpm2_pcrread", "-T", daemon.tcti("mssim"), "sha256:16")
    assert result.returncode == 0, result.stderr
    expected = hashlib.sha256(bytes(32) + bytes.fromhex(digest)).hexdigest().upper()
    assert expected in result.stdout.upper()
