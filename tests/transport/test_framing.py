"""MessageReader and the transport's command checks, on in-memory streams."""
import pytest
import trio
import trio.testing

from ctpm.transport.framing import (COMMAND_SIZE_ERROR, MessageReader, Truncated,
                                    check_command, looks_like_tpm_command, read_raw_command)

GET_RANDOM_8 = bytes.fromhex("80010000000c0000017b0008")


def pair(stall=0.2):
    client, server = trio.testing.memory_stream_pair()
    return client, MessageReader(server, stall)


async def test_exact_reads_across_pieces():
    client, reader = pair()
    for b in GET_RANDOM_8:
        await client.send_all(bytes([b]))
    assert await reader.begin()
    header = await reader.read(10)
    assert await read_raw_command(reader, header, 4096) == (GET_RANDOM_8, None)


async def test_begin_waits_without_limit_then_message_has_deadline():
    client, reader = pair(stall=0.2)
    with trio.move_on_after(0.5) as idle:
        await reader.begin()                # an idle connection is not timed out
    assert idle.cancelled_caught
    await client.send_all(b"\x80\x01")
    assert await reader.begin()
    start = trio.current_time()
    with pytest.raises(Truncated):
        await reader.read(10)
    assert 0.15 < trio.current_time() - start < 1


async def test_end_of_stream():
    client, reader = pair()
    await client.send_all(b"\x80\x01\x00")
    await client.aclose()
    assert await reader.begin()
    with pytest.raises(Truncated):
        await reader.read(10)
    client, reader = pair()
    await client.aclose()
    assert not await reader.begin()         # clean EOF between messages


async def test_read_chunks_and_discard():
    client, reader = pair()
    await client.send_all(bytes(10_000) + b"next")
    assert await reader.begin()
    sizes = [len(part) async for part in reader.read_chunks(10_000)]
    assert sizes == [4096, 4096, 1808]
    assert reader.buffered == 4
    reader.discard_buffered()
    assert reader.buffered == 0


async def test_raw_sizes_outside_limits_are_errors():
    client, reader = pair()
    too_big = bytes.fromhex("80010000100100000000")
    too_small = bytes.fromhex("80010000000900000000")
    assert await read_raw_command(reader, too_big, 4096) == (None, COMMAND_SIZE_ERROR)
    assert await read_raw_command(reader, too_small, 4096) == (None, COMMAND_SIZE_ERROR)


def test_check_command():
    assert check_command(GET_RANDOM_8, 4096) is None
    assert check_command(GET_RANDOM_8 + b"\0", 4096) == COMMAND_SIZE_ERROR
    assert check_command(GET_RANDOM_8[:-1], 4096) == COMMAND_SIZE_ERROR
    assert check_command(b"\x80\x01", 4096) == COMMAND_SIZE_ERROR
    assert check_command(GET_RANDOM_8, 11) == COMMAND_SIZE_ERROR
    assert COMMAND_SIZE_ERROR == bytes.fromhex("80010000000a00000142")


def test_tpm_command_detection():
    assert looks_like_tpm_command(b"\x80\x01\x00\x00")
    assert looks_like_tpm_command(b"\x80\x02\x00\x00")
    assert not looks_like_tpm_command(b"\x00\x00\x00\x08")
    assert not looks_like_tpm_command(b"\x00\xc1\x00\x00")
