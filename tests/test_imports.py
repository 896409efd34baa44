"""Every ctpm module imports on its own, in a fresh interpreter: an import cycle shows only
when the first module imported is one inside the cycle, which the test suite's own import
order can hide."""
import concurrent.futures
import pkgutil
import subprocess
import sys

import ctpm


def modules():
    return sorted(m.name for m in pkgutil.walk_packages(ctpm.__path__, "ctpm.")
                  if not m.name.endswith("__main__"))


def test_every_module_imports_alone():
    def load(name):
        r = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True,
                           text=True, timeout=60)
        return name, r.returncode, r.stderr.strip().splitlines()[-1:] or [""]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        failures = [(n, err[0]) for n, code, err in pool.map(load, modules()) if code]
    assert not failures


_FIRST_COMMANDS = """
import sys
from ctpm.engine.tpm import Tpm
tpm = Tpm.manufacture()
tpm.power_on()
for c in ("80010000000c000001440000",                          # Startup(CLEAR)
          "8001000000160000017a000000060000010500000001",      # GetCapability(TPM_PROPERTIES)
          "8001000000140000017e00000001000b030f0000",          # PCR_Read(SHA-256 0-7)
          "80010000000c0000017b0008"):                         # GetRandom(8)
    assert tpm.execute(bytes.fromhex(c))[6:10] == bytes(4)
print(" ".join(sorted(sys.modules)))
"""


def test_first_commands_leave_the_slow_imports_for_later():
    """A harness's first commands (as tpm2-tools and tpm2-pytss start) load neither gmpy2
    (whose import reads package metadata, ~30 ms) nor the command chapters they do not use
    (engine/handlers.py imports a chapter at its first command)."""
    r = subprocess.run([sys.executable, "-c", _FIRST_COMMANDS], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    loaded = set(r.stdout.split())
    assert {"ctpm.engine.commands.startup", "ctpm.engine.commands.capability",
            "ctpm.engine.commands.pcr", "ctpm.engine.commands.random"} <= loaded
    unwanted = {"gmpy2", "importlib.metadata", "ctpm.engine.commands.asymmetric",
                "ctpm.engine.commands.object", "ctpm.engine.commands.nv",
                "ctpm.engine.commands.duplication", "ctpm.engine.commands.attest",
                "ctpm.engine.commands.x509"}
    assert loaded & unwanted == set()
