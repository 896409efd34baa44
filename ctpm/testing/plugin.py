"""pytest fixtures for testing with (and against) ctpm; registered as the `ctpm` plugin.

- `ctpm_tpm`: a fresh in-memory TPM with a fixed, INSECURE seed. Powered on but NOT started,
  so a test sees the TPM exactly as firmware would: the first command must be TPM2_Startup.
- `ctpm_started_tpm`: the same TPM after TPM2_Startup(CLEAR) succeeded.
- `ctpm_config`: the in-process server's configuration (mssim and swtpm on 127.0.0.1, port
  0); override it in a conftest to change listeners or limits.
- `ctpm_server` (trio): the daemon serving `ctpm_tpm` in the test's event loop; gives a
  `ctpm.daemon.Listening` (`.mssim_port`, `.swtpm_port`, `.first(kind)`).
- `ctpm_esapi` (trio): a tpm2-pytss ESAPI connected to `ctpm_server` over the mssim TCTI,
  with TPM2_Startup(CLEAR) done. Its calls block: make them with
  `await ctpm.testing.blocking(esapi.get_random, 8)`, never directly, or the event loop that
  must answer them is the one they block.
"""
import dataclasses
import functools

import pytest

from . import blocking, manufacture_test_tpm, startup, tcti_string   # tcti_string: also imported from here



@pytest.fixture
def ctpm_tpm():
    return manufacture_test_tpm()


@pytest.fixture
def ctpm_started_tpm(ctpm_tpm):
    return startup(ctpm_tpm)


@pytest.fixture
def ctpm_config():
    from ..config import load

    config = load(mssim=["127.0.0.1:0"], swtpm=["127.0.0.1:0"])
    return dataclasses.replace(config, stall_timeout=1.0)   # fail stalled input quickly


@pytest.fixture
async def ctpm_server(nursery, ctpm_tpm, ctpm_config):
    from ..daemon import serve

    return await nursery.start(functools.partial(serve, ctpm_config, tpm=ctpm_tpm))


@pytest.fixture
async def ctpm_esapi(ctpm_server):
    from tpm2_pytss import ESAPI
    from tpm2_pytss.constants import TPM2_SU

    def open_esapi():
        esapi = ESAPI(tcti_string(ctpm_server, "mssim"))
        try:
            esapi.startup(TPM2_SU.CLEAR)
        except BaseException:
            esapi.close()
            raise
        return esapi

    esapi = await blocking(open_esapi)
    try:
        yield esapi
    finally:
        await blocking(esapi.close)
