"""tpm2-pytss (ESAPI over the tpm2-tss mssim and swtpm TCTIs) against the in-process daemon.

ESAPI calls block their thread, so they run through `ctpm.testing.blocking`: the event loop
that serves them must stay free.
"""
import pytest
import trio

from ctpm.testing import blocking
from ctpm.testing.plugin import tcti_string

tpm2_pytss = pytest.importorskip("tpm2_pytss")
from tpm2_pytss import ESAPI, TSS2_Exception  # noqa: E402
from tpm2_pytss.constants import TPM2_RC, TPM2_SU  # noqa: E402


async def test_esapi_fixture_gets_random(ctpm_esapi):
    first = await blocking(ctpm_esapi.get_random, 16)
    second = await blocking(ctpm_esapi.get_random, 16)
    assert len(first) == 16 and len(second) == 16 and bytes(first) != bytes(second)


def esapi_session(tcti: str, startup: bool):
    esapi = ESAPI(tcti)
    if startup:
        esapi.startup(TPM2_SU.CLEAR)
    return esapi


@pytest.mark.parametrize("kind", ["swtpm", "swtpm-unix"])
async def test_swtpm_tcti(ctpm_server, kind):
    if kind == "swtpm":
        tcti = tcti_string(ctpm_server, "swtpm")
    else:
        tcti = f"swtpm:path={ctpm_server.first('swtpm', unix=True).path}"
    esapi = await blocking(esapi_session, tcti, True)
    try:
        random = await blocking(esapi.get_random, 32)
        assert len(random) == 32
    finally:
        await blocking(esapi.close)


async def test_not_started_until_startup(ctpm_server):
    esapi = await blocking(esapi_session, tcti_string(ctpm_server, "mssim"), False)
    try:
        with pytest.raises(TSS2_Exception) as e:
            await blocking(esapi.get_random, 8)
        assert e.value.rc == TPM2_RC.INITIALIZE
    finally:
        await blocking(esapi.close)


async def test_all_tctis_share_one_tpm(ctpm_server):
    """Started over swtpm, the same TPM answers an mssim client that never sent Startup."""
    swtpm = await blocking(esapi_session, tcti_string(ctpm_server, "swtpm"), True)
    mssim = await blocking(esapi_session, tcti_string(ctpm_server, "mssim"), False)
    try:
        results = []

        async def use(esapi):
            for _ in range(10):
                results.append(bytes(await blocking(esapi.get_random, 8)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(use, swtpm)
            nursery.start_soon(use, mssim)
        assert len(set(results)) == 20
    finally:
        await blocking(swtpm.close)
        await blocking(mssim.close)
