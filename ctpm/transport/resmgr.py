"""A resource manager in front of a backend (`--resource-manager`), as /dev/tpmrm0 and
tpm2-abrmd: each connection sees only its own transient objects and sessions.

Built from TPM commands only (ContextSave / ContextLoad / FlushContext through the
instance's backend), so it works in front of any backend, a hardware TPM included. Between
two commands of a connection none of its objects or sessions is loaded in the TPM: each lives
as a saved context kept here, so many clients (and many tool invocations that never flush)
never fill the TPM's slots. For each command:

1. the handles the command names (handle area, authorization area, FlushContext's
   parameter) are checked against the connection's own: a transient handle is one of its
   virtual handles (0x80FFxxxx), a session handle one it started or loaded; anything else is
   answered TPM_RC_REFERENCE_H0/S0 + n as a TPM answers for a handle that is not loaded;
2. its objects and sessions are loaded (ContextLoad) and the handles rewritten;
3. after the command, a new transient handle in the response is given a virtual one, and
   every object used is saved and flushed, every session saved;
4. when the connection ends, its sessions are flushed and its saved objects dropped.

A session the client saves itself (ContextSave: tpm2-tools' `-S session.ctx`) becomes
nobody's until some connection loads it again, as with tpm2-abrmd. GetCapability(HANDLES)
for transient objects lists the connection's own virtual handles. The RM serves the mssim
command port (one connection per client); the swtpm TCTI opens a connection per command,
so there a connection is not a client and the TPM is shared as it is.
"""
import struct

import trio

_HDR = struct.Struct(">HII")
_U32 = struct.Struct(">I")
SUCCESS = b"\0\0\0\0"
VIRTUAL_BASE = 0x80FF0000
TRANSIENT, HMAC_SESSION, POLICY_SESSION = 0x80, 0x02, 0x03
CC_FLUSH, CC_LOAD, CC_SAVE, CC_GETCAP = 0x165, 0x161, 0x162, 0x17A
RC_REFERENCE_H0, RC_REFERENCE_S0 = 0x910, 0x918
RC_HANDLE_P1 = 0x18B                  # TPM_RC_HANDLE + TPM_RC_P + TPM_RC_1
TPM_CAP_HANDLES = 1
ST_NO_SESSIONS, ST_SESSIONS = 0x8001, 0x8002


def _error(rc: int) -> bytes:
    return _HDR.pack(ST_NO_SESSIONS, 10, rc)


def _rc(response: bytes) -> int:
    return _U32.unpack_from(response, 6)[0] if len(response) >= 10 else 0x101


class ResourceManager:
    """Shared by the connections of one instance; `client()` for each connection."""

    def __init__(self, host):
        from ..wire.commands import BY_CODE

        self.host = host
        self.commands = BY_CODE
        self.lock = trio.Lock()         # one client's load/execute/save at a time

    def client(self):
        return RmClient(self)


class RmClient:
    def __init__(self, rm):
        self.rm = rm
        self.objects = {}               # virtual handle -> saved context (TPMS_CONTEXT)
        self.sessions = {}              # session handle -> saved context
        self.next_virtual = VIRTUAL_BASE

    async def _tpm(self, command, locality):
        return await self.rm.host.execute(command, locality)

    async def execute(self, command: bytes, locality: int) -> bytes:
        async with self.rm.lock:
            return await self._execute(bytes(command), locality)

    async def close(self):
        if not self.sessions:
            self.objects.clear()
            return
        with trio.CancelScope(shield=True):
            async with self.rm.lock:
                for handle in list(self.sessions):
                    await self._flush(handle, 0)
                self.sessions.clear()
                self.objects.clear()

    # -- one command ----------------------------------------------------------------------

    async def _execute(self, command, locality):
        if len(command) < 10:
            return await self._tpm(command, locality)
        tag, size, code = _HDR.unpack_from(command)
        spec = self.rm.commands.get(code)
        if spec is None or size != len(command):
            return await self._tpm(command, locality)
        if code == CC_FLUSH:
            return await self._flush_command(command, locality)
        if code == CC_GETCAP and len(command) >= 22:
            cap, prop, count = struct.unpack_from(">III", command, 10)
            if cap == TPM_CAP_HANDLES and prop >> 24 == TRANSIENT:
                return self._list_handles(prop, count)
        n = len(spec.handles)
        if len(command) < 10 + 4 * n:
            return await self._tpm(command, locality)
        buf = bytearray(command)
        loaded_objects = {}             # virtual -> real
        used_sessions = []
        try:
            for i in range(n):
                handle = _U32.unpack_from(buf, 10 + 4 * i)[0]
                kind = handle >> 24
                if kind == TRANSIENT:
                    if handle not in self.objects:
                        return _error(RC_REFERENCE_H0 + i)
                    if handle not in loaded_objects:
                        real = await self._load(self.objects[handle], locality)
                        if isinstance(real, bytes):
                            return real
                        loaded_objects[handle] = real
                    _U32.pack_into(buf, 10 + 4 * i, loaded_objects[handle])
                elif kind in (HMAC_SESSION, POLICY_SESSION):
                    if handle not in self.sessions:
                        return _error(RC_REFERENCE_H0 + i)
                    used_sessions.append(handle)
            if tag == ST_SESSIONS:
                for i, handle in enumerate(_auth_sessions(buf, 10 + 4 * n)):
                    if handle >> 24 in (HMAC_SESSION, POLICY_SESSION):
                        if handle not in self.sessions:
                            return _error(RC_REFERENCE_S0 + i)
                        used_sessions.append(handle)
            for handle in dict.fromkeys(used_sessions):
                error = await self._load_session(handle, locality)
                if error is not None:
                    return error
            response = await self._tpm(bytes(buf), locality)
            if _rc(response) == 0:
                response = self._after(code, spec, command, response, loaded_objects,
                                       used_sessions)
            return response
        finally:
            await self._put_away(loaded_objects, used_sessions, locality)

    def _after(self, code, spec, command, response, loaded_objects, used_sessions):
        """A new handle in the response: virtualize an object, adopt a session."""
        if code == CC_SAVE:
            handle = _U32.unpack_from(command, 10)[0]
            if handle >> 24 in (HMAC_SESSION, POLICY_SESSION):
                self.sessions.pop(handle, None)     # saved by the client: its own now
                while handle in used_sessions:
                    used_sessions.remove(handle)
        if not spec.response_handle or len(response) < 14:
            return response
        handle = _U32.unpack_from(response, 10)[0]
        if handle >> 24 == TRANSIENT:
            virtual = self._new_virtual()
            self.objects[virtual] = None
            loaded_objects[virtual] = handle
            response = bytearray(response)
            _U32.pack_into(response, 10, virtual)
            return bytes(response)
        if handle >> 24 in (HMAC_SESSION, POLICY_SESSION):
            self.sessions[handle] = None
            used_sessions.append(handle)
        return response

    async def _put_away(self, loaded_objects, used_sessions, locality):
        """Save and flush the objects this command loaded, save its sessions."""
        for virtual, real in loaded_objects.items():
            blob = await self._save(real, locality)
            await self._flush(real, locality)
            if blob is None:
                self.objects.pop(virtual, None)     # the command flushed it (sequences)
            else:
                self.objects[virtual] = blob
        for handle in dict.fromkeys(used_sessions):
            if handle not in self.sessions:
                continue
            blob = await self._save(handle, locality)
            if blob is None:
                del self.sessions[handle]           # continueSession clear: it is gone
            else:
                self.sessions[handle] = blob

    # -- context commands -----------------------------------------------------------------

    async def _load(self, context, locality):
        """ContextLoad: the real handle, or the error response."""
        cmd = _HDR.pack(ST_NO_SESSIONS, 10 + len(context), CC_LOAD) + context
        rsp = await self._tpm(cmd, locality)
        if _rc(rsp) != 0 or len(rsp) < 14:
            return rsp
        return _U32.unpack_from(rsp, 10)[0]

    async def _load_session(self, handle, locality):
        context = self.sessions.get(handle)
        if context is None:
            return None                             # loaded already
        real = await self._load(context, locality)
        if isinstance(real, bytes):
            return real
        self.sessions[handle] = None
        return None

    async def _save(self, handle, locality):
        cmd = _HDR.pack(ST_NO_SESSIONS, 14, CC_SAVE) + _U32.pack(handle)
        rsp = await self._tpm(cmd, locality)
        return rsp[10:] if _rc(rsp) == 0 else None

    async def _flush(self, handle, locality):
        cmd = _HDR.pack(ST_NO_SESSIONS, 14, CC_FLUSH) + _U32.pack(handle)
        return await self._tpm(cmd, locality)

    async def _flush_command(self, command, locality):
        if len(command) != 14:
            return await self._tpm(command, locality)
        handle = _U32.unpack_from(command, 10)[0]
        kind = handle >> 24
        if kind == TRANSIENT:
            if handle not in self.objects:
                return _error(RC_HANDLE_P1)
            del self.objects[handle]                # saved, not loaded: nothing in the TPM
            return _HDR.pack(ST_NO_SESSIONS, 10, 0)
        if kind in (HMAC_SESSION, POLICY_SESSION):
            if handle not in self.sessions:
                return _error(RC_HANDLE_P1)
            response = await self._tpm(command, locality)
            if _rc(response) == 0:
                del self.sessions[handle]
            return response
        return await self._tpm(command, locality)

    def _list_handles(self, first, count):
        handles = sorted(h for h in self.objects if h >= first)[:min(count, 64)]
        more = len([h for h in self.objects if h >= first]) > len(handles)
        body = (bytes([int(more)]) + _U32.pack(TPM_CAP_HANDLES) + _U32.pack(len(handles))
                + b"".join(_U32.pack(h) for h in handles))
        return _HDR.pack(ST_NO_SESSIONS, 10 + len(body), 0) + body

    def _new_virtual(self):
        while self.next_virtual in self.objects:
            self.next_virtual += 1
        handle = self.next_virtual
        self.next_virtual = VIRTUAL_BASE + (self.next_virtual + 1 - VIRTUAL_BASE) % 0xFFFF
        return handle


def _auth_sessions(buf, offset):
    """Session handles of a command's authorization area (empty if it is malformed: the
    TPM then answers the command with the right error itself)."""
    if offset + 4 > len(buf):
        return []
    size = _U32.unpack_from(buf, offset)[0]
    pos, end, handles = offset + 4, offset + 4 + size, []
    if end > len(buf):
        return []
    while pos < end:
        if pos + 4 + 2 > end:
            return []
        handles.append(_U32.unpack_from(buf, pos)[0])
        pos += 4
        nonce = struct.unpack_from(">H", buf, pos)[0]
        pos += 2 + nonce + 1
        if pos + 2 > end:
            return []
        hmac = struct.unpack_from(">H", buf, pos)[0]
        pos += 2 + hmac
    return handles if pos == end else []
