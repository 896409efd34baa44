"""Raw protocol clients for transport tests: every byte under the test's control."""
import struct

import trio

from tests.tpmcmd import cmd, pw_session

STARTUP_CLEAR = bytes.fromhex("80010000000c000001440000")
GET_RANDOM_8 = bytes.fromhex("80010000000c0000017b0008")
GET_RANDOM_8_RESPONSE_SIZE = 10 + 2 + 8

RC_SUCCESS, RC_BAD_TAG, RC_INITIALIZE, RC_FAILURE = 0x000, 0x01E, 0x100, 0x101
RC_SIZE, RC_LOCALITY, RC_COMMAND_SIZE, RC_COMMAND_CODE = 0x095, 0x907, 0x142, 0x143
COMMAND_SIZE_ERROR = bytes.fromhex("80010000000a00000142")


def u32(v: int) -> bytes:
    return struct.pack(">I", v)


def rc(response: bytes) -> int:
    return struct.unpack(">I", response[6:10])[0]


def pcr_reset(pcr: int) -> bytes:
    """TPM2_PCR_Reset: its locality rules make a connection's locality observable."""
    return cmd(0x13D, handles=[pcr], sessions=[pw_session()])


class Client:
    """A TCP (or unix) connection with exact reads and EOF detection."""

    def __init__(self, stream):
        self.stream = stream
        self.buf = bytearray()

    @classmethod
    async def tcp(cls, port: int):
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    @classmethod
    async def unix(cls, path: str):
        return cls(await trio.open_unix_socket(path))

    async def send(self, data: bytes):
        await self.stream.send_all(data)

    async def half_close(self):
        await self.stream.send_eof()

    async def recv_exact(self, n: int, timeout: float = 5) -> bytes:
        with trio.fail_after(timeout):
            while len(self.buf) < n:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError(f"EOF after {len(self.buf)} of {n} bytes")
                self.buf += data
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def recv_u32(self) -> int:
        return struct.unpack(">I", await self.recv_exact(4))[0]

    async def recv_once(self, timeout: float = 5) -> bytes:
        """One receive: what a client that reads once (the tpm2-tss control path) gets."""
        with trio.fail_after(timeout):
            return await self.stream.receive_some(65536)

    async def assert_eof(self, timeout: float = 5):
        with trio.fail_after(timeout):
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
        assert data == b"", f"expected EOF, got {data!r}"

    async def tpm_response(self) -> bytes:
        header = await self.recv_exact(10)
        size = struct.unpack(">I", header[2:6])[0]
        return header + await self.recv_exact(size - 10)

    async def aclose(self):
        await self.stream.aclose()


class Mssim(Client):
    async def command(self, command: bytes, locality: int = 0) -> bytes:
        await self.send(u32(8) + bytes([locality]) + u32(len(command)) + command)
        return await self.framed_response()

    async def framed_response(self) -> bytes:
        size = await self.recv_u32()
        response = await self.recv_exact(size)
        assert await self.recv_u32() == 0, "missing trailing u32 0"
        return response

    async def signal(self, code: int) -> int:
        await self.send(u32(code))
        return await self.recv_u32()


class Swtpm(Client):
    async def command(self, command: bytes) -> bytes:
        await self.send(command)
        return await self.tpm_response()

    async def ctrl(self, code: int, body: bytes = b"") -> bytes:
        """One control command, its reply read with ONE receive (as tpm2-tss does)."""
        await self.send(u32(code) + body)
        return await self.recv_once()


async def swtpm_ctrl(port: int, code: int, body: bytes = b"") -> bytes:
    """A control command on its own connection, as tpm2-tss sends every control command."""
    client = await Swtpm.tcp(port)
    try:
        return await client.ctrl(code, body)
    finally:
        await client.aclose()


async def swtpm_command(port: int, command: bytes) -> bytes:
    """A TPM command on its own connection, as the tpm2-tss swtpm TCTI sends every command."""
    client = await Swtpm.tcp(port)
    try:
        return await client.command(command)
    finally:
        await client.aclose()
