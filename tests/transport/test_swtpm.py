"""The swtpm socket protocol against the in-process daemon: data and control channels."""
import json
import struct

import pytest
import trio

from .clients import (COMMAND_SIZE_ERROR, GET_RANDOM_8, GET_RANDOM_8_RESPONSE_SIZE, RC_BAD_TAG,
                      RC_COMMAND_CODE, RC_FAILURE, RC_INITIALIZE, RC_LOCALITY, RC_SUCCESS,
                      STARTUP_CLEAR, Swtpm, pcr_reset, rc, swtpm_command, swtpm_ctrl, u32)

GET_CAPABILITY, INIT, SHUTDOWN, GET_TPMESTABLISHED, SET_LOCALITY = 1, 2, 3, 4, 5
HASH_START, HASH_DATA, HASH_END, CANCEL_TPM_CMD, STORE_VOLATILE = 6, 7, 8, 9, 10
RESET_TPMESTABLISHED, GET_STATEBLOB, SET_STATEBLOB, STOP, GET_CONFIG = 11, 12, 13, 14, 15
SET_DATAFD, SET_BUFFERSIZE, GET_INFO = 16, 17, 18
OK, BAD_PARAMETER, BAD_ORDINAL, BAD_LOCALITY = u32(0), u32(3), u32(0x0a), u32(0x3d)


def data_port(server):
    return server.swtpm_port


def ctrl_port(server):
    return server.swtpm_port + 1


async def start(server):
    assert rc(await swtpm_command(data_port(server), STARTUP_CLEAR)) == RC_SUCCESS


async def assert_serving(server):
    response = await swtpm_command(data_port(server), GET_RANDOM_8)
    assert rc(response) == RC_SUCCESS and len(response) == GET_RANDOM_8_RESPONSE_SIZE
    assert await swtpm_ctrl(ctrl_port(server), GET_CONFIG) == OK + u32(0)


async def test_connection_per_command_like_the_tcti(ctpm_server):
    await start(ctpm_server)
    randoms = set()
    for _ in range(50):
        response = await swtpm_command(data_port(ctpm_server), GET_RANDOM_8)
        assert rc(response) == RC_SUCCESS
        randoms.add(response[12:])
    assert len(randoms) == 50


async def test_split_writes_and_many_commands_per_connection(ctpm_server):
    await start(ctpm_server)
    client = await Swtpm.tcp(data_port(ctpm_server))
    for cuts in ([2], [1, 9, 10, 11], list(range(1, len(GET_RANDOM_8)))):
        for a, b in zip([0] + cuts, cuts + [len(GET_RANDOM_8)]):
            await client.send(GET_RANDOM_8[a:b])
            await trio.sleep(0.005)
        response = await client.tpm_response()
        assert rc(response) == RC_SUCCESS and len(response) == GET_RANDOM_8_RESPONSE_SIZE
    await client.send(GET_RANDOM_8 * 3)                  # pipelined
    assert len({(await client.tpm_response())[12:] for _ in range(3)}) == 3


async def test_send_command_header_form(ctpm_server):
    """The optional mssim-style prefix: framed reply, and it sets the locality."""
    await start(ctpm_server)
    client = await Swtpm.tcp(data_port(ctpm_server))

    async def prefixed(command, locality):
        await client.send(u32(8) + bytes([locality]) + u32(len(command)) + command)
        size = await client.recv_u32()
        response = await client.recv_exact(size)
        assert await client.recv_u32() == 0
        return response

    assert rc(await prefixed(GET_RANDOM_8, 0)) == RC_SUCCESS
    assert rc(await prefixed(pcr_reset(20), 2)) == RC_SUCCESS
    assert rc(await prefixed(pcr_reset(20), 0)) == RC_LOCALITY
    assert await prefixed(b"\x80\x01\x00", 0) == COMMAND_SIZE_ERROR     # still framed
    assert rc(await prefixed(GET_RANDOM_8, 0)) == RC_SUCCESS


async def test_concurrent_clients_on_both_channels(ctpm_server):
    await start(ctpm_server)
    count = 0

    async def data_worker():
        nonlocal count
        for _ in range(15):
            assert rc(await swtpm_command(data_port(ctpm_server), GET_RANDOM_8)) == RC_SUCCESS
            count += 1

    async def ctrl_worker():
        for _ in range(15):
            reply = await swtpm_ctrl(ctrl_port(ctpm_server), GET_TPMESTABLISHED)
            assert reply[:4] == OK and len(reply) == 8

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(data_worker)
            nursery.start_soon(ctrl_worker)
    assert count == 120


@pytest.mark.parametrize("what, message", [
    ("size below a header", bytes.fromhex("800100000009000001")),
    ("size zero", bytes.fromhex("80010000000000000000")),
    ("size above the maximum", bytes.fromhex("800100001001") + b"\x00" * 4),
    ("size 4 GiB", bytes.fromhex("8001ffffffff") + b"\x00" * 4),
])
async def test_unframeable_size_is_answered_then_closed(ctpm_server, what, message):
    await start(ctpm_server)
    client = await Swtpm.tcp(data_port(ctpm_server))
    await client.send(message)
    assert await client.tpm_response() == COMMAND_SIZE_ERROR
    await client.assert_eof()
    await assert_serving(ctpm_server)


@pytest.mark.parametrize("what, message", [
    ("truncated header", GET_RANDOM_8[:5]),
    ("header size larger than sent", bytes.fromhex("8001000000100000017b0008")),
    ("half a prefix", u32(8) + b"\x00\x00"),
])
async def test_truncated_at_eof_or_stall(ctpm_server, what, message):
    """Input that ends (half-close) or stalls mid-command: COMMAND_SIZE, then closed."""
    await start(ctpm_server)
    for half_close in (True, False):
        client = await Swtpm.tcp(data_port(ctpm_server))
        await client.send(message)
        if half_close:
            await client.half_close()
        else:
            await assert_serving(ctpm_server)           # others are served meanwhile
        if message.startswith(u32(8)):
            size = await client.recv_u32()
            assert await client.recv_exact(size + 4) == COMMAND_SIZE_ERROR + u32(0)
        else:
            assert await client.tpm_response() == COMMAND_SIZE_ERROR
        await client.assert_eof()
    await assert_serving(ctpm_server)


async def test_engine_errors_keep_the_connection(ctpm_server):
    await start(ctpm_server)
    client = await Swtpm.tcp(data_port(ctpm_server))
    assert rc(await client.command(bytes.fromhex("00c10000000c0000017b0008"))) == RC_BAD_TAG
    assert rc(await client.command(bytes.fromhex("80010000000c000009990008"))) == RC_COMMAND_CODE
    assert rc(await client.command(GET_RANDOM_8)) == RC_SUCCESS


async def test_trailing_bytes_become_the_next_command(ctpm_server):
    await start(ctpm_server)
    client = await Swtpm.tcp(data_port(ctpm_server))
    await client.send(GET_RANDOM_8 + b"\x01\x02\x03")
    await client.half_close()
    assert rc(await client.tpm_response()) == RC_SUCCESS
    assert await client.tpm_response() == COMMAND_SIZE_ERROR     # 3 bytes: no header
    await client.assert_eof()


async def test_get_capability_reports_what_is_implemented(ctpm_server):
    reply = await swtpm_ctrl(ctrl_port(ctpm_server), GET_CAPABILITY)
    assert len(reply) == 8 and reply[:4] == OK
    caps = struct.unpack(">I", reply[4:])[0]
    assert caps == 0xEFFF
    assert not caps & (0x1000 | 0x10000)    # SET_DATAFD (not over TCP), LOCK_STORAGE


async def test_stop_and_init(ctpm_server):
    await start(ctpm_server)
    port = ctrl_port(ctpm_server)
    assert await swtpm_ctrl(port, STOP) == OK
    assert rc(await swtpm_command(data_port(ctpm_server), GET_RANDOM_8)) == RC_FAILURE
    for code in (GET_TPMESTABLISHED, HASH_START, CANCEL_TPM_CMD, STORE_VOLATILE):
        assert await swtpm_ctrl(port, code) == BAD_ORDINAL, code
    assert await swtpm_ctrl(port, SET_BUFFERSIZE, u32(4096)) == OK + u32(4096) * 3
    assert await swtpm_ctrl(port, INIT, u32(1)) == OK
    assert rc(await swtpm_command(data_port(ctpm_server), GET_RANDOM_8)) == RC_INITIALIZE
    await start(ctpm_server)
    assert await swtpm_ctrl(port, INIT, u32(0)) == OK           # INIT while running: restart
    assert rc(await swtpm_command(data_port(ctpm_server), GET_RANDOM_8)) == RC_INITIALIZE


async def test_set_locality(ctpm_server):
    await start(ctpm_server)
    port, data = ctrl_port(ctpm_server), data_port(ctpm_server)
    assert await swtpm_ctrl(port, SET_LOCALITY, b"\x02") == OK
    assert rc(await swtpm_command(data, pcr_reset(20))) == RC_SUCCESS
    assert await swtpm_ctrl(port, SET_LOCALITY, b"\x00") == OK
    assert rc(await swtpm_command(data, pcr_reset(20))) == RC_LOCALITY
    assert await swtpm_ctrl(port, SET_LOCALITY, b"\x05") == BAD_LOCALITY


async def test_qemu_sends_one_byte_bodies_as_4_byte_unions(ctpm_server):
    """QEMU's tpm_emulator sends SET_LOCALITY and RESET_TPMESTABLISHED with the size of the
    C union (4 bytes, the first one meaningful), on one connection it keeps for every
    control command: the padding must not shift the next request."""
    await start(ctpm_server)
    port, data = ctrl_port(ctpm_server), data_port(ctpm_server)
    client = await Swtpm.tcp(port)
    try:
        assert await client.ctrl(SET_LOCALITY, b"\x02\xaa\xbb\xcc") == OK
        assert rc(await swtpm_command(data, pcr_reset(20))) == RC_SUCCESS
        assert await client.ctrl(RESET_TPMESTABLISHED, b"\x03\0\0\0") == OK
        assert await client.ctrl(SET_LOCALITY, b"\x00\0\0\0") == OK
        assert rc(await swtpm_command(data, pcr_reset(20))) == RC_LOCALITY
        assert await client.ctrl(GET_TPMESTABLISHED) == OK + bytes(4)
        # and tpm2-tss' one-byte form still works on the same connection
        assert await client.ctrl(SET_LOCALITY, b"\x02") == OK
        assert rc(await swtpm_command(data, pcr_reset(20))) == RC_SUCCESS
    finally:
        await client.aclose()


async def test_tpm_established(ctpm_server, ctpm_tpm):
    await start(ctpm_server)
    port = ctrl_port(ctpm_server)
    reply = await swtpm_ctrl(port, GET_TPMESTABLISHED)
    assert reply == OK + bytes([int(ctpm_tpm.established), 0, 0, 0])
    assert await swtpm_ctrl(port, RESET_TPMESTABLISHED, b"\x00") == BAD_LOCALITY
    assert await swtpm_ctrl(port, RESET_TPMESTABLISHED, b"\x07") == BAD_LOCALITY
    assert await swtpm_ctrl(port, RESET_TPMESTABLISHED, b"\x03") == OK
    assert await swtpm_ctrl(port, GET_TPMESTABLISHED) == OK + bytes(4)


async def test_buffer_size_config_info(ctpm_server, ctpm_tpm):
    port = ctrl_port(ctpm_server)
    assert await swtpm_ctrl(port, SET_BUFFERSIZE, u32(0)) == OK + u32(4096) * 3
    assert await swtpm_ctrl(port, SET_BUFFERSIZE, u32(2048)) == BAD_ORDINAL   # TPM running
    assert await swtpm_ctrl(port, GET_CONFIG) == OK + u32(0)
    reply = await swtpm_ctrl(port, GET_INFO, struct.pack(">QII", 3, 0, 0))
    assert reply[:4] == OK
    total, length = struct.unpack(">II", reply[4:12])
    assert total == length == len(reply) - 12
    info = json.loads(reply[12:].rstrip(b"\0"))
    manufacturer = ctpm_tpm.config.manufacturer.hex().upper()         # "CTPM": 4354504D
    version = ctpm_tpm.config.firmware_version[0]
    assert info == {"TPMSpecification": {"family": "2.0", "level": 0, "revision": 164},
                    "TPMAttributes": {"manufacturer": f"id:{manufacturer}",
                                      "version": f"id:{version:08X}", "model": "ctpm"}}
    assert await swtpm_ctrl(port, GET_INFO, struct.pack(">QII", 1, 10_000, 0)) == BAD_PARAMETER


async def test_hash_cancel_store(ctpm_server):
    await start(ctpm_server)
    port = ctrl_port(ctpm_server)
    assert await swtpm_ctrl(port, CANCEL_TPM_CMD) == OK
    assert await swtpm_ctrl(port, STORE_VOLATILE) == OK
    assert await swtpm_ctrl(port, SET_LOCALITY, b"\x04") == OK
    assert await swtpm_ctrl(port, HASH_START) == OK
    assert await swtpm_ctrl(port, HASH_DATA, u32(5000) + bytes(5000)) == OK
    assert await swtpm_ctrl(port, HASH_END) == OK
    assert await swtpm_ctrl(port, SET_LOCALITY, b"\x00") == OK
    await assert_serving(ctpm_server)


async def test_several_commands_on_one_control_connection(ctpm_server):
    """QEMU keeps the control connection; bodies are framed by their known sizes."""
    client = await Swtpm.tcp(ctrl_port(ctpm_server))
    assert await client.ctrl(GET_CAPABILITY) == OK + u32(0xEFFF)
    assert await client.ctrl(SET_LOCALITY, b"\x01") == OK
    assert await client.ctrl(GET_STATEBLOB, u32(1) + u32(9) + u32(0)) == u32(9)   # FAIL: type
    # while the TPM runs: refused, but the blob is consumed
    assert await client.ctrl(SET_STATEBLOB, u32(0) + u32(1) + u32(3) + b"abc") == BAD_ORDINAL
    assert await client.ctrl(0x99) == BAD_ORDINAL                    # unknown
    assert await client.ctrl(SET_DATAFD) == BAD_ORDINAL              # not over TCP
    assert await client.ctrl(SET_LOCALITY, b"\x00") == OK            # still in step
    await client.send(u32(GET_CONFIG) + u32(SET_LOCALITY) + b"\x00")  # two in one write
    assert await client.recv_exact(12) == OK + u32(0) + OK


@pytest.mark.parametrize("message", [
    b"\x00\x00",                                # half a command code
    u32(INIT) + b"\x00\x00",                    # half a body
    u32(HASH_DATA) + u32(100) + b"short",       # data shorter than announced
])
async def test_truncated_control_input(ctpm_server, message):
    await start(ctpm_server)
    for half_close in (True, False):
        client = await Swtpm.tcp(ctrl_port(ctpm_server))
        await client.send(message)
        if half_close:
            await client.half_close()
        assert await client.recv_once() == BAD_PARAMETER
        await client.assert_eof()
    await assert_serving(ctpm_server)


async def test_garbage_on_the_control_channel(ctpm_server):
    await start(ctpm_server)
    client = await Swtpm.tcp(ctrl_port(ctpm_server))
    assert await client.ctrl(0, b"GET / HTTP/1.0\r\n\r\n") == BAD_ORDINAL
    assert await client.ctrl(GET_CONFIG) == OK + u32(0)
    await assert_serving(ctpm_server)


async def test_unix_sockets(ctpm_server):
    path = ctpm_server.first("swtpm", unix=True).path
    control = await Swtpm.unix(path + ".ctrl")
    assert await control.ctrl(GET_CAPABILITY) == OK + u32(0xEFFF | 0x1000)  # + SET_DATAFD
    assert await control.ctrl(SET_LOCALITY, b"\x00") == OK
    data = await Swtpm.unix(path)
    assert rc(await data.command(STARTUP_CLEAR)) == RC_SUCCESS
    assert rc(await data.command(GET_RANDOM_8)) == RC_SUCCESS


async def test_shutdown_stops_the_server(ctpm_server):
    client = await Swtpm.tcp(ctrl_port(ctpm_server))
    assert await client.ctrl(SHUTDOWN) == OK
    await client.assert_eof()
    with trio.fail_after(5):
        while True:
            try:
                await (await Swtpm.tcp(data_port(ctpm_server))).aclose()
            except OSError:
                break
            await trio.sleep(0.01)


async def test_many_idle_connections_then_commands(ctpm_server):
    """Connections that connect and wait are parked (no task each) and served later."""
    await start(ctpm_server)
    clients = [await Swtpm.tcp(data_port(ctpm_server)) for _ in range(200)]
    await trio.sleep(0.05)
    for c in clients[::-1]:
        await c.send(GET_RANDOM_8)
    for c in clients:
        response = await c.tpm_response()
        assert rc(response) == RC_SUCCESS and len(response) == GET_RANDOM_8_RESPONSE_SIZE
    await assert_serving(ctpm_server)


async def test_whole_commands_then_a_partial_one_in_one_write(ctpm_server):
    """Answered inline up to the partial command, which the per-connection path completes."""
    await start(ctpm_server)
    client = await Swtpm.tcp(data_port(ctpm_server))
    await client.send(GET_RANDOM_8 * 2 + GET_RANDOM_8[:5])
    first, second = await client.tpm_response(), await client.tpm_response()
    assert rc(first) == rc(second) == RC_SUCCESS and first != second
    await trio.sleep(0.05)
    await client.send(GET_RANDOM_8[5:])
    assert rc(await client.tpm_response()) == RC_SUCCESS


async def test_client_gone_before_the_answer(ctpm_server):
    """A client that sends and closes at once costs nothing but its own answer."""
    await start(ctpm_server)
    for _ in range(20):
        client = await Swtpm.tcp(data_port(ctpm_server))
        await client.send(GET_RANDOM_8)
        await client.stream.aclose()
    await assert_serving(ctpm_server)
