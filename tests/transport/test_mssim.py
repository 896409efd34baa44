"""The TCG simulator protocol against the in-process daemon: framing, signals, bad input."""
import trio

from .clients import (COMMAND_SIZE_ERROR, GET_RANDOM_8, GET_RANDOM_8_RESPONSE_SIZE, RC_BAD_TAG,
                      RC_COMMAND_CODE, RC_COMMAND_SIZE, RC_FAILURE, RC_INITIALIZE, RC_LOCALITY,
                      RC_SIZE, RC_SUCCESS, STARTUP_CLEAR, Mssim, pcr_reset, rc, u32)

POWER_ON, POWER_OFF, HASH_START, HASH_DATA, HASH_END = 1, 2, 5, 6, 7
CANCEL_ON, CANCEL_OFF, NV_ON, NV_OFF = 9, 10, 11, 12
REMOTE_HANDSHAKE, RESET, RESTART, SESSION_END, STOP = 15, 17, 18, 20, 21


async def connect(server):
    return await Mssim.tcp(server.mssim_port)


async def platform(server):
    return await Mssim.tcp(server.mssim_port + 1)


async def started(server):
    client = await connect(server)
    assert rc(await client.command(STARTUP_CLEAR)) == RC_SUCCESS
    return client


async def assert_serving(server):
    """A new client still gets random bytes: the daemon survived whatever came before."""
    client = await connect(server)
    response = await client.command(GET_RANDOM_8)
    assert rc(response) == RC_SUCCESS and len(response) == GET_RANDOM_8_RESPONSE_SIZE
    await client.aclose()


async def test_startup_then_get_random(ctpm_server):
    client = await connect(ctpm_server)
    assert await client.command(GET_RANDOM_8) == bytes.fromhex("80010000000a00000100")
    assert await client.command(STARTUP_CLEAR) == bytes.fromhex("80010000000a00000000")
    response = await client.command(GET_RANDOM_8)
    assert rc(response) == RC_SUCCESS
    assert response[10:12] == b"\x00\x08" and len(response) == GET_RANDOM_8_RESPONSE_SIZE


async def test_split_writes(ctpm_server):
    """The TCTI writes prefix and command separately; a stream may split anywhere."""
    client = await started(ctpm_server)
    message = u32(8) + b"\x00" + u32(len(GET_RANDOM_8)) + GET_RANDOM_8
    for cut in ([9], [1, 5, 12], list(range(1, len(message)))):
        pieces = [message[a:b] for a, b in zip([0] + cut, cut + [len(message)])]
        for piece in pieces:
            await client.send(piece)
            await trio.sleep(0.005)
        response = await client.framed_response()
        assert rc(response) == RC_SUCCESS and len(response) == GET_RANDOM_8_RESPONSE_SIZE


async def test_pipelined_commands_in_one_write(ctpm_server):
    client = await started(ctpm_server)
    one = u32(8) + b"\x00" + u32(len(GET_RANDOM_8)) + GET_RANDOM_8
    await client.send(one * 3)
    randoms = {(await client.framed_response())[12:] for _ in range(3)}
    assert len(randoms) == 3


async def test_concurrent_clients(ctpm_server):
    await started(ctpm_server)
    results = []

    async def worker():
        client = await connect(ctpm_server)
        for _ in range(20):
            response = await client.command(GET_RANDOM_8)
            assert rc(response) == RC_SUCCESS
            results.append(response[12:])
        await client.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(worker)
    assert len(results) == 200 and len(set(results)) == 200


async def test_locality_is_per_connection(ctpm_server):
    """PCR 20 may be reset from locality 2 only (PC Client), so the prefix's locality counts."""
    await started(ctpm_server)
    at0, at2 = await connect(ctpm_server), await connect(ctpm_server)
    assert rc(await at0.command(pcr_reset(20), locality=0)) == RC_LOCALITY
    assert rc(await at2.command(pcr_reset(20), locality=2)) == RC_SUCCESS
    assert rc(await at0.command(pcr_reset(20), locality=0)) == RC_LOCALITY


async def test_bad_commands_keep_the_connection(ctpm_server):
    """Framed by the prefix, a bad command is answered and the next one still works."""
    client = await started(ctpm_server)
    other = await connect(ctpm_server)             # a bystander, open all along
    bad = {
        "header size larger than sent": (bytes.fromhex("80010000000e0000017b0008"),
                                         RC_COMMAND_SIZE),
        "header size smaller than sent": (bytes.fromhex("80010000000a0000017b0008"),
                                          RC_COMMAND_SIZE),
        "shorter than a header": (bytes.fromhex("8001000000"), RC_COMMAND_SIZE),
        "empty": (b"", RC_COMMAND_SIZE),
        "parameter bytes left over": (GET_RANDOM_8[:5] + b"\x0e" + GET_RANDOM_8[6:]
                                      + b"\x00\x00", RC_SIZE),
        "wrong tag": (bytes.fromhex("00c10000000c0000017b0008"), RC_BAD_TAG),
        "unknown command code": (bytes.fromhex("80010000000c000009990008"), RC_COMMAND_CODE),
    }
    for what, (command, expected) in bad.items():
        response = await client.command(command)
        assert rc(response) == expected, what
        if expected == RC_COMMAND_SIZE:
            assert response == COMMAND_SIZE_ERROR, what
        assert rc(await client.command(GET_RANDOM_8)) == RC_SUCCESS, what
    assert rc(await other.command(GET_RANDOM_8)) == RC_SUCCESS


async def test_oversize_command_is_answered_then_closed(ctpm_server):
    client = await started(ctpm_server)
    await client.send(u32(8) + b"\x00" + u32(4097) + b"\x80\x01")
    assert await client.framed_response() == COMMAND_SIZE_ERROR
    await client.assert_eof()
    await assert_serving(ctpm_server)


async def test_max_size_command_is_accepted(ctpm_server):
    """4096 bytes is allowed: the engine, not the transport, judges its content."""
    client = await started(ctpm_server)
    command = bytes.fromhex("8001000010000000017b0008") + bytes(4096 - 12)  # GetRandom + junk
    response = await client.command(command)
    assert rc(response) not in (RC_COMMAND_SIZE, RC_SUCCESS)
    assert rc(await client.command(GET_RANDOM_8)) == RC_SUCCESS


async def test_truncated_command_then_eof(ctpm_server):
    client = await started(ctpm_server)
    await client.send(u32(8) + b"\x00" + u32(12) + GET_RANDOM_8[:7])
    await client.half_close()
    assert await client.framed_response() == COMMAND_SIZE_ERROR
    await client.assert_eof()
    await assert_serving(ctpm_server)


async def test_stalled_command_times_out(ctpm_server):
    """Half a header, then silence: answered after the stall timeout (0.3 s here), closed."""
    client = await started(ctpm_server)
    await client.send(u32(8) + b"\x00" + u32(12) + GET_RANDOM_8[:3])
    await assert_serving(ctpm_server)              # meanwhile, others are served
    assert await client.framed_response() == COMMAND_SIZE_ERROR
    await client.assert_eof()


async def test_raw_tpm_command_on_the_command_port(ctpm_server):
    """A swtpm-style client (no prefix) is answered in its own, raw, framing."""
    client = await started(ctpm_server)
    await client.send(GET_RANDOM_8)
    response = await client.tpm_response()
    assert rc(response) == RC_SUCCESS and len(response) == GET_RANDOM_8_RESPONSE_SIZE


async def test_unknown_code_closes_command_connection(ctpm_server):
    await started(ctpm_server)
    for garbage in (u32(99), b"\xff\xff\xff\xff", u32(0)):
        client = await connect(ctpm_server)
        await client.send(garbage)
        await client.assert_eof()
    await assert_serving(ctpm_server)


async def test_remote_handshake(ctpm_server):
    client = await connect(ctpm_server)
    await client.send(u32(REMOTE_HANDSHAKE) + u32(1))
    assert [await client.recv_u32() for _ in range(3)] == [1, 0x85, 0]
    await client.send(u32(REMOTE_HANDSHAKE) + u32(0))       # client version 0: refused
    await client.assert_eof()


async def test_hash_signals_on_the_command_port(ctpm_server):
    client = await started(ctpm_server)
    await client.send(u32(HASH_START))
    assert await client.recv_u32() == 0
    await client.send(u32(HASH_DATA) + u32(5) + b"hello")
    assert await client.recv_u32() == 0
    await client.send(u32(HASH_END))
    assert await client.recv_u32() == 0
    assert rc(await client.command(GET_RANDOM_8)) in (RC_SUCCESS, RC_INITIALIZE)


async def test_session_end_closes_only_that_connection(ctpm_server):
    client = await connect(ctpm_server)
    await client.send(u32(SESSION_END))
    await client.assert_eof()
    plat = await platform(ctpm_server)
    await plat.send(u32(SESSION_END))
    await plat.assert_eof()
    await started(ctpm_server)
    await assert_serving(ctpm_server)


async def test_power_cycle(ctpm_server):
    client = await started(ctpm_server)
    plat = await platform(ctpm_server)
    assert await plat.signal(POWER_OFF) == 0
    assert rc(await client.command(GET_RANDOM_8)) == RC_FAILURE     # unpowered
    assert await plat.signal(POWER_ON) == 0
    assert await plat.signal(NV_ON) == 0
    assert rc(await client.command(GET_RANDOM_8)) == RC_INITIALIZE  # needs Startup again
    assert rc(await client.command(STARTUP_CLEAR)) == RC_SUCCESS
    assert rc(await client.command(GET_RANDOM_8)) == RC_SUCCESS


async def test_reset_needs_startup_again(ctpm_server):
    client = await started(ctpm_server)
    plat = await platform(ctpm_server)
    assert await plat.signal(RESET) == 0
    assert rc(await client.command(GET_RANDOM_8)) == RC_INITIALIZE
    assert rc(await client.command(STARTUP_CLEAR)) == RC_SUCCESS


async def test_other_signals_are_acknowledged(ctpm_server):
    client = await started(ctpm_server)
    plat = await platform(ctpm_server)
    for code in (NV_OFF, NV_ON, CANCEL_ON, CANCEL_OFF, RESTART, POWER_ON, 3, 4, 13, 14):
        assert await plat.signal(code) == 0, code
    assert rc(await client.command(GET_RANDOM_8)) == RC_SUCCESS     # POWER_ON while on: no-op


async def test_unknown_signal_answered_1_and_closed(ctpm_server):
    for garbage in (u32(99), u32(8), b"GET / HTTP/1.0\r\n\r\n"):
        plat = await platform(ctpm_server)
        await plat.send(garbage)
        assert await plat.recv_u32() == 1
        await plat.assert_eof()
    plat = await platform(ctpm_server)
    assert await plat.signal(NV_ON) == 0
    await started(ctpm_server)


async def test_truncated_signal(ctpm_server):
    plat = await platform(ctpm_server)
    await plat.send(b"\x00\x00")
    await plat.half_close()
    await plat.assert_eof()
    plat = await platform(ctpm_server)
    await plat.send(b"\x00\x00")                    # and stalled: closed after the timeout
    await plat.assert_eof()
    assert await (await platform(ctpm_server)).signal(POWER_ON) == 0


async def test_stop_on_platform_port_stops_the_server(ctpm_server, ctpm_tpm):
    plat = await platform(ctpm_server)
    await plat.send(u32(STOP))
    await plat.assert_eof()
    with trio.fail_after(5):
        while True:
            try:
                client = await connect(ctpm_server)
            except OSError:
                break
            await client.aclose()
            await trio.sleep(0.01)
    assert ctpm_tpm.platform.store.load() is not None    # NV written on the way out


async def test_stop_on_command_port_stops_the_server(ctpm_server):
    client = await connect(ctpm_server)
    await client.send(u32(STOP))
    await client.assert_eof()
    with trio.fail_after(5):
        while True:
            try:
                await (await platform(ctpm_server)).aclose()
            except OSError:
                break
            await trio.sleep(0.01)


def test_physical_presence_through_the_platform_port():
    """PHYS_PRES_ON/OFF (3/4) reach the engine: PP_Commands (which needs physical presence on
    a new TPM) is refused with TPM_RC_PP before, accepted while asserted, refused after."""
    import socket
    import struct

    from ctpm.testing.process import run_daemon
    from tests.tpmcmd import STARTUP_CLEAR, cmd, pw_session, rc

    def send(sock, command):
        sock.sendall(struct.pack(">IBI", 8, 0, len(command)) + command)
        size = struct.unpack(">I", sock.recv(4))[0]
        body = b""
        while len(body) < size + 4:
            body += sock.recv(size + 4 - len(body))
        return body[:size]

    def platform(sock, code):
        sock.sendall(struct.pack(">I", code))
        assert struct.unpack(">I", sock.recv(4))[0] == 0

    pp_commands = cmd(0x12D, struct.pack(">II", 1, 0x126) + struct.pack(">I", 0),
                      handles=[0x4000000C], sessions=[pw_session()])   # set: Clear
    with run_daemon() as d:
        with socket.create_connection(("127.0.0.1", d.mssim_port)) as tpm, \
                socket.create_connection(("127.0.0.1", d.mssim_port + 1)) as plat:
            platform(plat, 1)                       # POWER_ON
            assert rc(send(tpm, STARTUP_CLEAR)) == 0
            assert rc(send(tpm, pp_commands)) == 0x990     # TPM_RC_PP, session 1
            platform(plat, 3)
            assert rc(send(tpm, pp_commands)) == 0
            platform(plat, 4)
            assert rc(send(tpm, pp_commands)) == 0x990
