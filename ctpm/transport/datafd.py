"""swtpm SET_DATAFD: the data channel handed over as a file descriptor (how QEMU connects).

QEMU makes a socketpair, sends one end over the unix control socket (SCM_RIGHTS, with the
SET_DATAFD command in the same message) and keeps the other end as the TPM data channel.
"""
import array
import os
import socket

import trio

from .host import serve_connection

MAX_FDS = 4


class FdCollectingStream:
    """A unix socket stream whose reads also keep the descriptors that came along."""

    def __init__(self, stream):
        self._stream = stream
        self.fds = []

    async def receive_some(self, max_bytes=65536):
        try:
            data, ancdata, _flags, _addr = await self._stream.socket.recvmsg(
                max_bytes, socket.CMSG_SPACE(MAX_FDS * 4))
        except OSError as e:
            raise trio.BrokenResourceError(str(e)) from e
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
                self.fds.extend(fds)
        return data

    async def send_all(self, data):
        await self._stream.send_all(data)

    def take_fd(self):
        """The oldest received descriptor not yet used, or None."""
        return self.fds.pop(0) if self.fds else None

    def close_fds(self):
        """Close descriptors nobody claimed (they would leak otherwise)."""
        while self.fds:
            os.close(self.fds.pop())


def stream_socket(fd):
    """A stream socket object owning `fd`, or None (fd closed) if `fd` is not one."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return None
    if sock.type != socket.SOCK_STREAM:
        sock.close()
        return None
    return sock


async def serve_data_fd(host, handler, sock):
    """Serve the handed-over data channel until its peer closes it."""
    host.data_fd_active = True
    try:
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        async with stream:
            await serve_connection(handler, stream, "swtpm data fd")
    finally:
        host.data_fd_active = False
