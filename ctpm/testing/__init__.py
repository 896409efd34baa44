"""Test helpers for ctpm and for projects that test against it.

- `ctpm.testing.plugin`: pytest fixtures (`ctpm_tpm`, `ctpm_started_tpm`, `ctpm_server`,
  `ctpm_esapi`), registered through the `pytest11` entry point.
- `ctpm.testing.process.run_daemon`: a real `ctpm run` subprocess on free ports.
- `tcti_string(listening, kind)`: the TCTI configuration string of an in-process daemon.
- `blocking(fn, *args)`: run a blocking call (tpm2-pytss) in a worker thread, so that the
  event loop can keep serving the in-process daemon that the call is talking to.
- `with_esapi(listening, scenario, kind="mssim")`: run `scenario(esapi)` in a worker thread
  with a fresh tpm2-pytss ESAPI connected to the in-process daemon, after TPM2_Startup.
"""
import functools

TEST_SEED = b"ctpm.testing: fixed seed, INSECURE, tests only"
STARTUP_CLEAR = bytes.fromhex("80010000000c000001440000")


async def blocking(fn, *args, **kwargs):
    """`await blocking(esapi.get_random, 8)`: run a blocking call without stalling trio."""
    import trio

    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


def tcti_string(listening, kind: str = "mssim") -> str:
    """The tpm2-tss TCTI configuration string for a `Listening`'s first `kind` listener."""
    bound = listening.first(kind)
    return f"{kind}:host={bound.host},port={bound.port}"


async def with_esapi(listening, scenario, kind: str = "mssim"):
    """`result = await with_esapi(ctpm_server, lambda esapi: esapi.get_random(8))`.

    The ESAPI is opened over `kind` ("mssim" or "swtpm"), Startup(CLEAR) is sent (ESAPI
    treats an already started TPM as success), and it is closed afterwards.
    """
    def run():
        from tpm2_pytss import ESAPI
        from tpm2_pytss.constants import TPM2_SU
        esapi = ESAPI(tcti_string(listening, kind))
        try:
            esapi.startup(TPM2_SU.CLEAR)
            return scenario(esapi)
        finally:
            esapi.close()
    return await blocking(run)


def manufacture_test_tpm(seed: bytes = TEST_SEED):
    """A fresh in-memory TPM with a fixed, INSECURE seed: powered on, not yet started."""
    from ..engine.tpm import Tpm

    return Tpm.manufacture(seed=seed)


def startup(tpm):
    """Send TPM2_Startup(CLEAR) to `tpm`; raise if it does not answer TPM_RC_SUCCESS."""
    response = tpm.execute(STARTUP_CLEAR)
    rc = int.from_bytes(response[6:10], "big")
    if rc != 0:
        raise RuntimeError(f"TPM2_Startup(CLEAR) failed: rc=0x{rc:03x}")
    return tpm
