"""tpm2-abrmd, the resource manager most tpm2-tools users run, in front of ctpm: it reads
each command's attributes from GetCapability(COMMANDS) and ContextSaves, ContextLoads and
FlushContexts every object and session around every client command (`--flush-all`), so
nothing works behind it unless those do. tpm2-tools then talk to abrmd over D-Bus
(`tabrmd:bus_type=session`, a private session bus from dbus-run-session)."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ctpm.testing.process import run_daemon

TABRMD_TCTI = Path("/usr/lib/x86_64-linux-gnu/libtss2-tcti-tabrmd.so.0")
MISSING = next((what for what, ok in (
    ("tpm2-abrmd", shutil.which("tpm2-abrmd") or os.path.exists("/usr/sbin/tpm2-abrmd")),
    ("dbus-run-session", shutil.which("dbus-run-session")),
    ("the tabrmd TCTI (libtss2-tcti-tabrmd0)", TABRMD_TCTI.exists()),
    ("tpm2-tools", shutil.which("tpm2_createprimary"))) if not ok), None)

pytestmark = [pytest.mark.tools, pytest.mark.skipif(MISSING is not None,
                                                    reason=f"{MISSING} is not installed")]

SCRIPT = r"""
set -e
abrmd=$(command -v tpm2-abrmd || echo /usr/sbin/tpm2-abrmd)
root=""; [ "$(id -u)" = 0 ] && root=--allow-root
"$abrmd" --session $root --tcti="$CTPM_TCTI" --flush-all 2>abrmd.log &
pid=$!
trap 'kill $pid 2>/dev/null' EXIT
export TPM2TOOLS_TCTI=tabrmd:bus_type=session
for i in $(seq 100); do tpm2_getrandom 1 >/dev/null 2>&1 && break; sleep 0.05; done
echo "STEP getrandom $(tpm2_getrandom --hex 8)"
tpm2_createprimary -Q -C o -c prim.ctx
tpm2_create -Q -C prim.ctx -G ecc -u key.pub -r key.priv
tpm2_load -Q -C prim.ctx -u key.pub -r key.priv -c key.ctx
echo "signed data" > msg
tpm2_sign -c key.ctx -g sha256 -o sig msg
tpm2_verifysignature -c key.ctx -g sha256 -m msg -s sig && echo "STEP sign"
# a sealed object under a PCR policy, unsealed in a policy session
tpm2_startauthsession -S trial.ctx
tpm2_policypcr -Q -S trial.ctx -l sha256:0,1 -L pcr.policy
tpm2_flushcontext trial.ctx
echo -n "sealed secret" | tpm2_create -Q -C prim.ctx -L pcr.policy -i- -u seal.pub -r seal.priv
tpm2_load -Q -C prim.ctx -u seal.pub -r seal.priv -c seal.ctx
tpm2_startauthsession --policy-session -S policy.ctx
tpm2_policypcr -Q -S policy.ctx -l sha256:0,1
echo "STEP unseal $(tpm2_unseal -c seal.ctx -p session:policy.ctx)"
tpm2_flushcontext policy.ctx
# parameter encryption in an HMAC session that abrmd saves and loads around each command
tpm2_startauthsession --hmac-session -S hmac.ctx
tpm2_sessionconfig hmac.ctx --enable-encrypt
echo "STEP encrypted $(tpm2_getrandom -S hmac.ctx --hex 8)"
tpm2_flushcontext hmac.ctx
tpm2_nvdefine -Q 0x1500050 -C o -s 16 -a "ownerread|ownerwrite"
echo -n "0123456789abcdef" | tpm2_nvwrite -Q 0x1500050 -C o -i-
echo "STEP nv $(tpm2_nvread 0x1500050 -C o -s 16)"
tpm2_nvundefine -Q 0x1500050 -C o
echo "STEP transient $(tpm2_getcap handles-transient | wc -l)"
"""


def test_tpm2_tools_through_abrmd(tmp_path):
    with run_daemon("--swtpm", "127.0.0.1:0") as d:
        env = dict(os.environ, CTPM_TCTI=d.tcti("swtpm"))
        subprocess.run(["tpm2_startup", "-c", "-T", d.tcti("swtpm")], check=True)
        r = subprocess.run(["dbus-run-session", "--", "bash", "-c", SCRIPT], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=120)
    log = (tmp_path / "abrmd.log").read_text() if (tmp_path / "abrmd.log").exists() else ""
    assert r.returncode == 0, r.stdout + r.stderr + log
    steps = {}
    for line in r.stdout.splitlines():
        if line.startswith("STEP "):
            name, _, value = line[5:].partition(" ")
            steps[name] = value
    assert len(bytes.fromhex(steps["getrandom"])) == 8
    assert "sign" in steps
    assert steps["unseal"] == "sealed secret"
    assert len(bytes.fromhex(steps["encrypted"])) == 8
    assert steps["nv"] == "0123456789abcdef"
    assert steps["transient"] == "0"          # abrmd flushed everything behind the clients
