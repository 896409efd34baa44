"""The TCG reference simulator protocol ("mssim"): a command port and a platform port.

Facts from the TCG simulator (Simulator/src/TcpServer.c, TpmTcpProtocol.h): every request
starts with a big-endian u32 code; every handled request ends with a u32 0 acknowledgement;
SEND_COMMAND's reply is `u32 size | response | u32 0`. SESSION_END closes that connection
without a reply, STOP ends the server without a reply. An unknown code closes the connection
(the platform port answers 1 first). Unlike the simulator, a raw TPM command sent to the
command port (tag 0x8001/0x8002, as a swtpm-style client would send) is answered raw.
"""
import logging
import struct

from ..backend import Signal
from .framing import (U32, COMMAND_SIZE_ERROR, HEADER_SIZE, MessageReader, Truncated,
                      check_command, looks_like_tpm_command, read_raw_command, send_quietly)

log = logging.getLogger("ctpm.transport.mssim")

POWER_ON, POWER_OFF = 1, 2
PHYS_PRES_ON, PHYS_PRES_OFF = 3, 4
HASH_START, HASH_DATA, HASH_END = 5, 6, 7
SEND_COMMAND = 8
CANCEL_ON, CANCEL_OFF = 9, 10
NV_ON, NV_OFF = 11, 12
KEY_CACHE_ON, KEY_CACHE_OFF = 13, 14
REMOTE_HANDSHAKE = 15
SET_ALTERNATIVE_RESULT = 16
RESET, RESTART = 17, 18
SESSION_END, STOP = 20, 21

SERVER_VERSION = 1
# TpmEndPointInfo: tpmPlatformAvailable | tpmInRawMode | NoForceFailure (no code 30 here).
ENDPOINT_INFO = 0x01 | 0x04 | 0x80

ACK = U32.pack(0)
UNKNOWN = U32.pack(1)
_PREFIX_REST = struct.Struct(">BI")     # locality, size (after the u32 SEND_COMMAND)


def frame_response(response: bytes) -> bytes:
    return U32.pack(len(response)) + response + ACK


class MssimCommandPort:
    """One client connection on the command port; the locality comes with each command."""

    def __init__(self, host):
        self.host = host

    async def __call__(self, stream, initial: bytes = b""):
        """Serve `stream`; `initial` is what was already received from it (the fast path)."""
        reader = MessageReader(stream, self.host.stall_timeout, initial)
        client = self.host.client()
        try:
            while await reader.begin():
                if not await self._one(reader, stream, client):
                    return
        except Truncated as e:
            log.debug("command port: %s", e)
        finally:
            await client.close()

    async def _one(self, reader, stream, client) -> bool:
        first = await reader.read(4)
        if looks_like_tpm_command(first):
            return await self._raw(reader, stream, first, client)
        code = U32.unpack(first)[0]
        if code == SEND_COMMAND:
            return await self._send_command(reader, stream, client)
        if code == HASH_START:
            await self.host.signal(Signal.HASH_START)
        elif code == HASH_DATA:
            size = await reader.read_u32()
            async for part in reader.read_chunks(size):
                await self.host.signal(Signal.HASH_DATA, part)
        elif code == HASH_END:
            await self.host.signal(Signal.HASH_END)
        elif code == REMOTE_HANDSHAKE:
            if await reader.read_u32() == 0:    # the simulator refuses client version 0
                return False
            await stream.send_all(U32.pack(SERVER_VERSION) + U32.pack(ENDPOINT_INFO) + ACK)
            return True
        elif code == SET_ALTERNATIVE_RESULT:
            await reader.read(4)
        elif code == SESSION_END:
            return False
        elif code == STOP:
            self.host.request_stop("mssim STOP on the command port")
            return False
        else:
            log.info("command port: unknown code %#x, closing", code)
            return False
        await stream.send_all(ACK)
        return True

    async def _send_command(self, reader, stream, client) -> bool:
        try:
            locality, size = _PREFIX_REST.unpack(await reader.read(5))
            if size > self.host.max_command_size:
                # Cannot skip an unbounded body: answer, then drop the connection.
                await stream.send_all(frame_response(COMMAND_SIZE_ERROR))
                return False
            command = await reader.read(size)
        except Truncated:
            await send_quietly(stream, frame_response(COMMAND_SIZE_ERROR))
            raise
        error = check_command(command, self.host.max_command_size)
        response = error or await client.execute(command, locality)
        await stream.send_all(frame_response(response))
        return True

    async def _raw(self, reader, stream, first: bytes, client) -> bool:
        try:
            header = first + await reader.read(HEADER_SIZE - 4)
            command, error = await read_raw_command(reader, header, self.host.max_command_size)
        except Truncated:
            await send_quietly(stream, COMMAND_SIZE_ERROR)
            raise
        if error:
            await stream.send_all(error)
            return False
        await stream.send_all(await client.execute(command, 0))
        return True


class MssimPlatformPort:
    """One client connection on the platform port: power, NV, cancel, reset signals."""

    def __init__(self, host):
        self.host = host
        self.signals = {
            POWER_ON: Signal.POWER_ON, POWER_OFF: Signal.POWER_OFF, RESET: Signal.RESET,
            NV_ON: Signal.NV_ON, NV_OFF: Signal.NV_OFF,
            CANCEL_ON: Signal.CANCEL_ON, CANCEL_OFF: Signal.CANCEL_OFF,
            PHYS_PRES_ON: Signal.PHYS_PRES_ON, PHYS_PRES_OFF: Signal.PHYS_PRES_OFF,
        }
        # Accepted and acknowledged; nothing in the engine depends on them: RESTART (a
        # clock discontinuity in the simulator) needs no action as our clock is the host's,
        # no RSA key cache.
        self.no_ops = {RESTART, KEY_CACHE_ON, KEY_CACHE_OFF}

    async def __call__(self, stream):
        reader = MessageReader(stream, self.host.stall_timeout)
        try:
            while await reader.begin():
                code = await reader.read_u32()
                if code in self.signals:
                    await self.host.signal(self.signals[code])
                elif code in self.no_ops:
                    pass
                elif code == SESSION_END:
                    return
                elif code == STOP:
                    self.host.request_stop("mssim STOP on the platform port")
                    return
                else:
                    log.info("platform port: unknown signal %#x, closing", code)
                    await stream.send_all(UNKNOWN)
                    return
                await stream.send_all(ACK)
        except Truncated as e:
            log.debug("platform port: %s", e)
