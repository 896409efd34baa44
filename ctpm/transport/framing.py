"""Reading whole messages off a trio byte stream (the framing rules themselves, which need
no trio, are frame.py's).

TCP delivers a command in as many pieces as it likes (the mssim TCTI writes its 9-byte prefix
and the command separately), so every read here is "exactly n bytes". Between messages a
client may stay idle for as long as it wants; once a message has begun, the rest must arrive
within `stall_timeout` seconds, so a client that sends half a header cannot pin a connection
(or a reader) forever.
"""
import socket

import trio

# The rules themselves, without trio (early.py serves with them before trio is imported);
# re-exported: the transports import them from here.
from .frame import (COMMAND_SIZE_ERROR, DEFAULT_MAX_COMMAND_SIZE, HEADER,  # noqa: F401
                    HEADER_SIZE, TPM_RC_COMMAND_SIZE, TPM_ST_NO_SESSIONS, TPM_ST_SESSIONS,
                    U32, check_command, error_response, looks_like_tpm_command)


class Truncated(Exception):
    """The peer closed, or stalled, in the middle of a message."""


class MessageReader:
    """Buffered exact reads from a trio stream, with a deadline per message."""

    def __init__(self, stream, stall_timeout: float, initial: bytes = b""):
        self._stream = stream
        self._buf = bytearray(initial)
        self._stall = stall_timeout
        self._deadline = float("inf")
        sock = getattr(stream, "socket", None)
        self._quickack = (sock is not None and hasattr(socket, "TCP_QUICKACK")
                          and sock.family in (socket.AF_INET, socket.AF_INET6))

    @property
    def buffered(self) -> int:
        return len(self._buf)

    async def _fill(self) -> bool:
        try:
            data = await self._stream.receive_some(16384)
        except trio.BrokenResourceError:
            data = b""          # connection reset: same as end of stream for a server
        if not data:
            return False
        if self._quickack:
            # Acknowledge at once: clients that write one message in two pieces (the mssim
            # TCTI's prefix, then the command) otherwise wait out Nagle + delayed ACK, 40 ms.
            try:
                self._stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            except OSError:
                self._quickack = False
        self._buf += data
        return True

    async def begin(self) -> bool:
        """Wait (without a time limit) for the first byte of the next message.

        Returns False at a clean end of stream. Starts the message's stall deadline.
        """
        if not self._buf and not await self._fill():
            return False
        self._deadline = trio.current_time() + self._stall
        return True

    async def read(self, n: int) -> bytes:
        """Exactly `n` bytes of the current message, or `Truncated`."""
        if len(self._buf) < n:
            with trio.move_on_at(self._deadline):
                while len(self._buf) < n:
                    if not await self._fill():
                        raise Truncated("end of stream inside a message")
            if len(self._buf) < n:
                raise Truncated(f"no complete message within {self._stall:g} s")
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    async def read_u32(self) -> int:
        return U32.unpack(await self.read(4))[0]

    async def read_chunks(self, n: int, chunk: int = 4096):
        """Yield the next `n` bytes in pieces of at most `chunk` (for unbounded payloads)."""
        while n:
            part = await self.read(min(n, chunk))
            n -= len(part)
            yield part

    def discard_buffered(self):
        """Drop what has been received but not read (after input that cannot be framed)."""
        self._buf.clear()


async def read_raw_command(reader: MessageReader, header: bytes, max_size: int):
    """Read the rest of a raw TPM command whose 10-byte header has been read.

    Returns (command, None) or (None, error_response). A size outside [10, max_size] leaves
    the stream unframeable: the caller answers the error and closes the connection.
    """
    size = HEADER.unpack(header)[1]
    if size < HEADER_SIZE or size > max_size:
        return None, COMMAND_SIZE_ERROR
    return header + await reader.read(size - HEADER_SIZE), None


async def send_quietly(stream, data: bytes):
    """Best-effort last words to a peer that may already be gone."""
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass

