"""Fixtures of the SVSM tests: a real `ctpm run --mode svsm --snp-provider simulated` process
(its SVSM socket and an mssim listener) per test module, and the simulated AMD-SP whose ARK
the verifier is told to trust (made once per session: RSA-4096 takes a few seconds)."""
import importlib.util
from dataclasses import dataclass

import pytest

from ctpm.testing.process import run_daemon


@dataclass
class Svsm:
    path: str           # the SVSM socket
    daemon: object      # ctpm.testing.process.Daemon (mssim listener too)


@pytest.fixture(scope="session")
def sp(tmp_path_factory):
    from ctpm.snp.simulator import SimulatedSP
    return SimulatedSP(str(tmp_path_factory.mktemp("svsm-amd-sp") / "sp"))


@pytest.fixture(scope="session")
def verifier(sp):
    from ctpm.snp.verify import Trust, Verifier
    return Verifier(Trust(extra_arks=(sp.ark,)))


def start_svsm(sp, directory):
    if importlib.util.find_spec("ctpm.snp.providers") is None:
        pytest.skip("ctpm.snp.providers (the SNP issue's report providers) is not here yet")
    path = str(directory / "svsm.sock")
    return path, run_daemon("--mode", "svsm", "--svsm", f"unix:{path}",
                            "--mssim", "127.0.0.1:0", "--snp-provider", "simulated",
                            "--snp-sim-dir", sp.directory, timeout=60)


@pytest.fixture(scope="module")
def svsm(sp, tmp_path_factory):
    path, running = start_svsm(sp, tmp_path_factory.mktemp("svsm"))
    with running as daemon:
        yield Svsm(path, daemon)
