"""The pytest plugin's fixtures and helpers, used as a project testing against ctpm would."""
from ctpm.testing import STARTUP_CLEAR, manufacture_test_tpm, startup

GET_RANDOM_8 = bytes.fromhex("80010000000c0000017b0008")


def test_ctpm_tpm_is_not_started(ctpm_tpm):
    assert ctpm_tpm.powered and not ctpm_tpm.started
    assert ctpm_tpm.execute(GET_RANDOM_8) == bytes.fromhex("80010000000a00000100")


def test_ctpm_started_tpm(ctpm_started_tpm):
    assert ctpm_started_tpm.started
    assert ctpm_started_tpm.execute(GET_RANDOM_8)[6:12] == bytes.fromhex("000000000008")


def test_fixed_seed_is_deterministic():
    a, b = startup(manufacture_test_tpm()), startup(manufacture_test_tpm())
    assert a.execute(GET_RANDOM_8) == b.execute(GET_RANDOM_8)
    c = startup(manufacture_test_tpm(seed=b"another seed"))
    assert c.execute(GET_RANDOM_8) != a.execute(GET_RANDOM_8)


def test_startup_helper_raises_on_failure(ctpm_started_tpm):
    try:
        startup(ctpm_started_tpm)               # a second Startup: TPM_RC_INITIALIZE
    except RuntimeError as e:
        assert "rc=0x100" in str(e)
    else:
        raise AssertionError("startup() accepted a failed TPM2_Startup")
    assert STARTUP_CLEAR == bytes.fromhex("80010000000c000001440000")


async def test_ctpm_server_serves_ctpm_tpm(ctpm_server, ctpm_tpm):
    import trio

    stream = await trio.open_tcp_stream("127.0.0.1", ctpm_server.mssim_port)
    await stream.send_all(b"\x00\x00\x00\x08\x00\x00\x00\x00\x0c" + STARTUP_CLEAR)
    reply = b""
    while len(reply) < 18:
        reply += await stream.receive_some(100)
    assert reply == bytes.fromhex("0000000a80010000000a0000000000000000")
    assert ctpm_tpm.started                     # the fixture's TPM is the served one
    await stream.aclose()
