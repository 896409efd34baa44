"""Fixtures of the SVSM tests: a real `ctpm run --mode svsm --snp-provider simulated` process
(its SVSM socket and an mssim listener) per test module, and the simulated AMD-SP whose ARK
the verifier is told to trust (made once per session: RSA-4096 takes a few seconds)."""
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
    path = str(directory / "svsm.sock")
    config = directory / "ctpm.toml"
    config.write_text("[listen]\nstall_timeout = 1.0\n")     # half frames give up soon
    return path, run_daemon("--config", str(config), "--mode", "svsm", "--svsm", f"unix:{path}",
                            "--mssim", "127.0.0.1:0", "--snp-provider", "simulated",
                            "--snp-sim-dir", sp.directory, timeout=60)


@pytest.fixture(scope="module")
def svsm(sp, tmp_path_factory):
    path, running = start_svsm(sp, tmp_path_factory.mktemp("svsm"))
    with running as daemon:
        yield Svsm(path, daemon)


def run_bridge(svsm_path: str, *extra, timeout: float = 20.0):
    """A `ctpm svsm-bridge --svsm unix:PATH --mssim 127.0.0.1:0` process, ready (a
    ctpm.testing.process.Daemon: `.tcti()`, `.stop()`)."""
    import subprocess
    import tempfile

    from ctpm.testing import process
    stderr = tempfile.TemporaryFile()
    proc = subprocess.Popen(process.command("svsm-bridge", "--svsm", f"unix:{svsm_path}",
                                            "--mssim", "127.0.0.1:0", *extra),
                            stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
                            env=process.environment())
    try:
        line = process._read_line(proc, timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        stderr.seek(0)
        raise RuntimeError("svsm-bridge did not become ready: "
                           + stderr.read().decode(errors="replace")) from None
    return process.Daemon(proc, line, stderr)


@pytest.fixture(scope="module")
def bridge(svsm):
    daemon = run_bridge(svsm.path)
    try:
        yield daemon
    finally:
        daemon.stop()
        daemon.proc.stdout.close()
        daemon._stderr.close()
