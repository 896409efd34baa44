"""swtpm SET_DATAFD over the unix control socket: the way QEMU attaches a TPM."""
import array
import os
import socket

import trio

from .clients import GET_RANDOM_8, RC_SUCCESS, STARTUP_CLEAR, Swtpm, rc, u32

GET_CAPABILITY, INIT, GET_TPMESTABLISHED, SET_LOCALITY, STOP = 1, 2, 4, 5, 14
GET_CONFIG, SET_DATAFD, SET_BUFFERSIZE = 15, 16, 17
OK, BAD_PARAMETER, IOERROR = u32(0), u32(3), u32(0x1f)
READ_CLOCK = bytes.fromhex("80010000000a00000181")
QEMU_CAPS = 0x348F


async def control(server):
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.connect(server.first("swtpm", unix=True).path + ".ctrl")
    return sock


async def ctrl(sock, code, body=b"", fd=None):
    """One control command, an optional descriptor riding along, the reply in one read."""
    ancillary = []
    if fd is not None:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
    await sock.sendmsg([u32(code) + body], ancillary)
    with trio.fail_after(5):
        return await sock.recv(64)


async def hand_over_data_channel(sock):
    ours, theirs = socket.socketpair()
    try:
        reply = await ctrl(sock, SET_DATAFD, fd=theirs.fileno())
    finally:
        theirs.close()                     # the daemon holds its own duplicate now
    return reply, Swtpm(trio.SocketStream(trio.socket.from_stdlib_socket(ours)))


async def reopened_data_channel(sock):
    """A new data channel once the daemon noticed the old one closed (IOERROR until then)."""
    with trio.fail_after(5):
        while True:
            reply, data = await hand_over_data_channel(sock)
            if reply == OK:
                return data
            await data.aclose()
            await trio.sleep(0.01)


def open_fds():
    return len(os.listdir("/proc/self/fd"))


async def test_qemu_like_session(ctpm_server):
    sock = await control(ctpm_server)
    caps = await ctrl(sock, GET_CAPABILITY)
    assert caps[:4] == OK and int.from_bytes(caps[4:], "big") & QEMU_CAPS == QEMU_CAPS
    reply, data = await hand_over_data_channel(sock)
    assert reply == OK
    probe = await data.command(READ_CLOCK)                 # QEMU's probe: any well-formed answer
    assert probe[:2] == b"\x80\x01" and len(probe) == int.from_bytes(probe[2:6], "big")
    # What QEMU does at each VM reset, then the firmware's Startup.
    assert await ctrl(sock, STOP) == OK
    assert await ctrl(sock, SET_BUFFERSIZE, u32(0)) == OK + u32(4096) * 3
    assert await ctrl(sock, STOP) == OK
    assert await ctrl(sock, SET_BUFFERSIZE, u32(4096)) == OK + u32(4096) * 3
    assert await ctrl(sock, INIT, u32(0)) == OK
    assert rc(await data.command(STARTUP_CLEAR)) == RC_SUCCESS
    assert await ctrl(sock, SET_LOCALITY, b"\x00") == OK
    response = await data.command(GET_RANDOM_8)
    assert rc(response) == RC_SUCCESS and len(response) == 20
    assert (await ctrl(sock, GET_TPMESTABLISHED))[:4] == OK
    # One data channel at a time; a new one once the old one is closed.
    second, extra = await hand_over_data_channel(sock)
    assert second == IOERROR
    await extra.aclose()
    await data.aclose()
    data = await reopened_data_channel(sock)
    assert rc(await data.command(GET_RANDOM_8)) == RC_SUCCESS
    await data.aclose()
    sock.close()


async def test_data_channel_after_a_slow_command(ctpm_server):
    """A command run in a worker thread (an RSA key generated) hands the data channel to a
    task; once answered the channel goes back to the fast path and serves on: quick
    commands one by one and two in one write, then the channel closes and a new one opens."""
    from tests.modes.test_passthrough_fastpath import flush, rsa_primary
    sock = await control(ctpm_server)
    reply, data = await hand_over_data_channel(sock)
    assert reply == OK
    assert await ctrl(sock, INIT, u32(0)) == OK
    assert rc(await data.command(STARTUP_CLEAR)) == RC_SUCCESS
    for _ in range(2):
        key = await data.command(rsa_primary())
        assert rc(key) == RC_SUCCESS
        for _ in range(3):
            assert rc(await data.command(GET_RANDOM_8)) == RC_SUCCESS
        assert rc(await data.command(flush(int.from_bytes(key[10:14], "big")))) == RC_SUCCESS
    await data.send(GET_RANDOM_8 + READ_CLOCK)
    first = await data.tpm_response()
    second = await data.tpm_response()
    assert rc(first) == RC_SUCCESS and len(first) == 20 and rc(second) == RC_SUCCESS
    await data.aclose()
    data = await reopened_data_channel(sock)
    assert rc(await data.command(GET_RANDOM_8)) == RC_SUCCESS
    await data.aclose()
    sock.close()


async def test_set_datafd_without_a_stream_socket(ctpm_server):
    sock = await control(ctpm_server)
    assert await ctrl(sock, SET_DATAFD) == BAD_PARAMETER             # no descriptor
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        assert await ctrl(sock, SET_DATAFD, fd=a.fileno()) == BAD_PARAMETER
    sock.close()


async def test_unclaimed_descriptors_are_closed(ctpm_server):
    sock = await control(ctpm_server)
    await ctrl(sock, GET_CONFIG)                                       # warm up
    before = open_fds()
    r, w = os.pipe()
    try:
        assert await ctrl(sock, GET_CONFIG, fd=r) == OK + u32(0)   # fd rides along, unused
        assert open_fds() == before + 3                            # pipe ends + daemon's copy
    finally:
        os.close(r)
        os.close(w)
    sock.close()
    with trio.fail_after(5):
        while open_fds() != before - 2:                 # both ends of the control connection
            await trio.sleep(0.01)
