"""Fixtures of the mode tests: swtpm as the chip behind passthrough (started, its
connection released for the daemon), and a simulated AMD-SP per module."""
import pytest

from tests.peers import TctiSwtpm
from tests.tpmcmd import STARTUP_CLEAR, rc


@pytest.fixture
def swtpm():
    sw = TctiSwtpm()
    assert rc(sw.execute(STARTUP_CLEAR)) == 0
    sw.disconnect()
    yield sw
    sw.close()


@pytest.fixture(scope="module")
def sp(tmp_path_factory):
    from ctpm.snp.simulator import SimulatedSP
    return SimulatedSP(str(tmp_path_factory.mktemp("sim") / "amd-sp"), "milan")
