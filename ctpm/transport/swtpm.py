"""The swtpm socket protocol: a raw TPM data channel and a control channel beside it.

Data channel: raw command in, raw response out. A command may also carry the mssim-style
prefix `u32 8 | u8 locality | u32 size` (swtpm's SEND_COMMAND_HEADER); it is recognised
because a TPM 2.0 command starts with tag 0x8001/0x8002, never with 0x0000.

Control channel (swtpm include/swtpm/tpm_ioctl.h, src/swtpm/ctrlchannel.c): `u32 cmd | body`
in, `u32 result | ...` out, each reply in one write because tpm2-tss reads it with one read.
Bodies are framed by the command's known size, so one connection may carry many commands
(QEMU keeps it open); a body that stalls gets BAD_PARAMETER and the connection is closed.
On a unix control socket, SET_DATAFD hands over the data channel as a descriptor (datafd.py).
"""
import json
import logging
import os
import struct

from ..backend import Signal
from .datafd import FdCollectingStream, serve_data_fd, stream_socket
from .frame import CMD_SET_LOCALITY, locality_allowed
from .framing import (U32, COMMAND_SIZE_ERROR, HEADER_SIZE, MessageReader, Truncated,
                      check_command, read_raw_command, send_quietly)

log = logging.getLogger("ctpm.transport.swtpm")

SEND_COMMAND_PREFIX = U32.pack(8)
_PREFIX_REST = struct.Struct(">BI")

# Control commands.
GET_CAPABILITY, INIT, SHUTDOWN, GET_TPMESTABLISHED = 0x01, 0x02, 0x03, 0x04
SET_LOCALITY = CMD_SET_LOCALITY                     # 0x05 (frame.py: early.py serves it too)
HASH_START, HASH_DATA, HASH_END, CANCEL_TPM_CMD = 0x06, 0x07, 0x08, 0x09
STORE_VOLATILE, RESET_TPMESTABLISHED, GET_STATEBLOB, SET_STATEBLOB = 0x0a, 0x0b, 0x0c, 0x0d
STOP, GET_CONFIG, SET_DATAFD, SET_BUFFERSIZE, GET_INFO, LOCK_STORAGE = (
    0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13)

# Results (TPM 1.2 style codes, as swtpm uses them).
SUCCESS, BAD_PARAMETER, FAIL, BAD_ORDINAL = 0x00, 0x03, 0x09, 0x0a
IOERROR, BAD_LOCALITY = 0x1f, 0x3d

# Capability bits of the commands implemented here, and only those: no LOCK_STORAGE (ctpm
# does not lock its state directory); SET_DATAFD on unix control sockets only (descriptors
# cannot cross TCP).
CAPS = (0x0001 | 0x0002 | 0x0004 | 0x0008      # INIT SHUTDOWN GET_TPMESTABLISHED SET_LOCALITY
        | 0x0010 | 0x0020 | 0x0040 | 0x0080    # HASHING CANCEL STORE_VOLATILE RESET_EST
        | 0x0100 | 0x0200                      # GET_STATEBLOB SET_STATEBLOB
        | 0x0400 | 0x0800                      # STOP GET_CONFIG
        | 0x2000 | 0x4000 | 0x8000)            # SET_BUFFERSIZE GET_INFO SEND_COMMAND_HEADER
CAP_SET_DATAFD = 0x1000

# Fixed body sizes, also of the commands not implemented, so that the stream stays framed.
BODY_SIZE = {INIT: 4, SET_LOCALITY: 1, RESET_TPMESTABLISHED: 1, GET_STATEBLOB: 12,
             SET_BUFFERSIZE: 4, GET_INFO: 16, LOCK_STORAGE: 4}
# Requests whose one-byte body QEMU sends as its 4-byte C union (ptm_loc, ptm_reset_est):
# swtpm reads one request per read(), so either form works there. Here the 3 padding bytes
# are dropped when they came with the request (a control client waits for each reply, so
# nothing else can be behind them).
PADDED_TO_4 = {SET_LOCALITY, RESET_TPMESTABLISHED}
NOT_IMPLEMENTED = {LOCK_STORAGE}
MAX_STATE_BLOB = 512 * 1024         # as swtpm: a larger SET_STATEBLOB is refused
STATE_FLAG_ENCRYPTED = 2

INFO_TPMSPECIFICATION, INFO_TPMATTRIBUTES = 1, 2


def result(code: int, *words: int) -> bytes:
    return struct.pack(f">{1 + len(words)}I", code, *words)


def frame_response(response: bytes) -> bytes:
    return U32.pack(len(response)) + response + U32.pack(0)


class SwtpmDataChannel:
    """One client connection on the data channel (tpm2-tss opens one per command)."""

    def __init__(self, host):
        self.host = host

    async def __call__(self, stream, initial: bytes = b""):
        """Serve `stream`; `initial` is what was already received from it (the fast path)."""
        reader = MessageReader(stream, self.host.stall_timeout, initial)
        while await reader.begin():
            prefixed = False
            try:
                first = await reader.read(4)
                prefixed = first == SEND_COMMAND_PREFIX
                if prefixed:
                    keep_going = await self._prefixed(reader, stream)
                else:
                    keep_going = await self._raw(reader, stream, first)
            except Truncated as e:
                log.debug("data channel: %s", e)
                error = COMMAND_SIZE_ERROR
                await send_quietly(stream, frame_response(error) if prefixed else error)
                return
            if not keep_going:
                return

    async def _raw(self, reader, stream, first: bytes) -> bool:
        header = first + await reader.read(HEADER_SIZE - 4)
        command, error = await read_raw_command(reader, header, self.host.max_command_size)
        if error:
            await stream.send_all(error)
            return False
        await stream.send_all(await self.host.execute(command, self.host.swtpm_locality))
        return True

    async def _prefixed(self, reader, stream) -> bool:
        locality, size = _PREFIX_REST.unpack(await reader.read(5))
        if size > self.host.max_command_size:
            await stream.send_all(frame_response(COMMAND_SIZE_ERROR))
            return False
        command = await reader.read(size)
        self.host.swtpm_locality = locality         # as swtpm: the prefix sets it
        response = (check_command(command, self.host.max_command_size)
                    or await self.host.execute(command, locality))
        await stream.send_all(frame_response(response))
        return True


class SwtpmControlChannel:
    """One client connection on the control channel."""

    def __init__(self, host, *, unix: bool = False):
        self.host = host
        self.unix = unix
        self.caps = CAPS | (CAP_SET_DATAFD if unix else 0)
        self.data_channel = SwtpmDataChannel(host)
        self.fast_path = None       # the data channel's fast path, which serves SET_DATAFD's
        self.handlers = {
            GET_CAPABILITY: self._get_capability, INIT: self._init, SHUTDOWN: self._shutdown,
            GET_TPMESTABLISHED: self._get_established, SET_LOCALITY: self._set_locality,
            HASH_START: self._hash_start, HASH_END: self._hash_end,
            CANCEL_TPM_CMD: self._cancel, STORE_VOLATILE: self._store_volatile,
            RESET_TPMESTABLISHED: self._reset_established, STOP: self._stop,
            GET_CONFIG: self._get_config, SET_BUFFERSIZE: self._set_buffersize,
            GET_INFO: self._get_info, GET_STATEBLOB: self._get_stateblob,
        }
        # Commands refused while the TPM is stopped (as swtpm: BAD_ORDINAL).
        self.need_running = {GET_TPMESTABLISHED, RESET_TPMESTABLISHED, HASH_START, HASH_DATA,
                             HASH_END, CANCEL_TPM_CMD, STORE_VOLATILE, GET_STATEBLOB}

    async def __call__(self, stream):
        if self.unix:
            stream = FdCollectingStream(stream)
        try:
            await self._serve(stream)
        finally:
            if self.unix:
                stream.close_fds()
            if self.host.terminate_on_ctrl_close:
                self.host.request_stop("control connection closed (--terminate)")

    async def _serve(self, stream):
        reader = MessageReader(stream, self.host.stall_timeout)
        while await reader.begin():
            try:
                code = await reader.read_u32()
                reply = await self._command(code, reader, stream)
            except Truncated as e:
                log.debug("control channel: %s", e)
                await send_quietly(stream, result(BAD_PARAMETER))
                return
            await stream.send_all(reply)
            if code == SHUTDOWN:
                self.host.request_stop("swtpm SHUTDOWN")
                return

    async def _command(self, code: int, reader, stream) -> bytes:
        if code == HASH_DATA:           # the only body of unbounded length
            return await self._hash_data(reader)
        if code == SET_DATAFD:
            return self._set_datafd(stream)
        if code == SET_STATEBLOB:
            return await self._set_stateblob(reader)
        body = await reader.read(BODY_SIZE.get(code, 0))
        if code in PADDED_TO_4 and reader.buffered == 3:
            reader.discard_buffered()
        handler = self.handlers.get(code)
        if handler is None:
            if code not in NOT_IMPLEMENTED:
                # Unknown: its body (if any) has no known length; drop what came with it.
                log.info("control channel: unknown command %#x", code)
                reader.discard_buffered()
            return result(BAD_ORDINAL)
        if code in self.need_running and not self.host.backend.powered:
            return result(BAD_ORDINAL)
        return await handler(body)

    async def _signal(self, signal, *args) -> bytes:
        error = await self.host.signal(signal, *args)
        return result(FAIL if error else SUCCESS)

    async def _get_capability(self, body):
        return result(SUCCESS, self.caps)

    def _set_datafd(self, stream) -> bytes:
        if not self.unix:
            return result(BAD_ORDINAL)
        fd = stream.take_fd()
        if fd is None:
            return result(BAD_PARAMETER)
        if self.host.data_fd_active or self.host.spawn is None:
            os.close(fd)                # as swtpm: one data channel at a time
            return result(IOERROR)
        sock = stream_socket(fd)
        if sock is None:
            return result(BAD_PARAMETER)
        self.host.data_fd_active = True
        if self.fast_path is not None:
            self.fast_path.adopt_data_fd(sock)
        else:
            self.host.spawn(serve_data_fd, self.host, self.data_channel, sock)
        return result(SUCCESS)

    async def _init(self, body):
        # flags (DELETE_VOLATILE) need no action: no volatile state file is kept.
        # restart the TPM from its NV state (or the state blobs set); Startup is next
        error = await self.host.signal(Signal.INIT)
        if error is not None:
            log.error("INIT: %s", error)
            return result(FAIL)
        return result(SUCCESS)

    async def _shutdown(self, body):
        return result(SUCCESS)          # the caller stops the daemon after replying

    async def _stop(self, body):
        await self.host.signal(Signal.POWER_OFF)
        return result(SUCCESS)

    async def _get_established(self, body):
        return result(SUCCESS) + bytes([int(self.host.backend.established), 0, 0, 0])

    async def _set_locality(self, body):
        if not locality_allowed(body[0]):
            return result(BAD_LOCALITY)
        self.host.swtpm_locality = body[0]
        return result(SUCCESS)

    async def _reset_established(self, body):
        error = await self.host.signal(Signal.RESET_ESTABLISHED, body[0])
        return result(BAD_LOCALITY if error else SUCCESS)

    async def _hash_start(self, body):
        return await self._signal(Signal.HASH_START)

    async def _hash_data(self, reader) -> bytes:
        length = await reader.read_u32()
        running = self.host.backend.powered
        error = None
        async for part in reader.read_chunks(length):   # always consumed: stay framed
            if running and error is None:
                error = await self.host.signal(Signal.HASH_DATA, part)
        if not running:
            return result(BAD_ORDINAL)
        return result(FAIL if error else SUCCESS)

    async def _hash_end(self, body):
        return await self._signal(Signal.HASH_END)

    async def _cancel(self, body):
        # Commands run to completion before the next request is read: nothing to cancel.
        return result(SUCCESS)

    async def _store_volatile(self, body):
        try:
            await self.host.backend.save()
        except Exception as e:      # StoreError, OSError: the state directory failed
            log.error("STORE_VOLATILE: %s", e)
            return result(IOERROR)
        return result(SUCCESS)

    async def _get_stateblob(self, body):
        """A state blob (engine/migration.py) from `offset` on, in this one reply."""
        _flags, kind, offset = struct.unpack(">III", body)
        try:
            blob = await self.host.backend.get_state_blob(kind)
        except Exception as e:      # MigrationError: e.g. a sequence that cannot move
            log.error("GET_STATEBLOB: %s", e)
            return result(FAIL)
        part = blob[offset:]
        return result(SUCCESS, 0, len(part), len(part)) + part

    async def _set_stateblob(self, reader) -> bytes:
        """A state blob for the next INIT (the TPM must be stopped); always consumed."""
        flags, kind, length = struct.unpack(">III", await reader.read(12))
        if length > MAX_STATE_BLOB:
            reader.discard_buffered()
            return result(FAIL)
        blob = b"".join([part async for part in reader.read_chunks(length)])
        if self.host.backend.powered:
            return result(BAD_ORDINAL)
        if flags & STATE_FLAG_ENCRYPTED:
            log.error("SET_STATEBLOB: encrypted blobs are not supported")
            return result(FAIL)
        try:
            await self.host.backend.set_state_blob(kind, blob)
        except Exception as e:      # MigrationError: unknown kind, TPM running
            log.error("SET_STATEBLOB: %s", e)
            return result(FAIL)
        return result(SUCCESS)

    async def _get_config(self, body):
        return result(SUCCESS, 0)       # no file key, no migration key

    async def _set_buffersize(self, body):
        wanted = U32.unpack(body)[0]
        if wanted and self.host.backend.powered:
            return result(BAD_ORDINAL)
        # The engine's buffer size is fixed at manufacture: min = max = current.
        size = self.host.max_command_size
        return result(SUCCESS, size, size, size)

    async def _get_info(self, body):
        flags, offset = struct.unpack(">QI", body[:12])
        text = info_json(self.host.backend.describe(), flags).encode() + b"\0"
        if offset >= len(text) - 1:
            return result(BAD_PARAMETER)
        chunk = text[offset:offset + 3072]
        return result(SUCCESS, len(text), len(chunk)) + chunk


def info_json(description: dict, flags: int) -> str:
    """GET_INFO's JSON document: the parts of swtpm's TPMLIB_GetInfo that ctpm can answer
    honestly (the TPM's specification and identity, from the backend's `describe()`)."""
    info = {}
    if flags & INFO_TPMSPECIFICATION:
        info["TPMSpecification"] = {"family": description["family"],
                                    "level": description["level"],
                                    "revision": description["revision"]}
    if flags & INFO_TPMATTRIBUTES:
        info["TPMAttributes"] = {
            "manufacturer": "id:" + description["manufacturer"],
            "version": "id:" + description["firmware_version"],
            "model": description["model"],
        }
    return json.dumps(info, separators=(",", ":"))
