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
