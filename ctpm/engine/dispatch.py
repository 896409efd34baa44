"""Command processing (Part 3 §5, in the order of the reference TPM's ExecuteCommand).

header -> command code -> TPM_RC_INITIALIZE check -> handle area -> authorization area ->
parameters -> handler -> response parameters -> response authorization area. All
unmarshaling and session work happens here, driven by the command table; handlers only do
the command's semantics and raise `TpmError` for failures.
"""
import hmac
import io
import logging
import struct

from construct import ConstructError, Container

from ..errors import TpmError
from ..wire.commands import Auth
from ..wire.constants import TPM_CC, TPM_RC, TPM_RH, TPM_ST, TPMA_SESSION
from ..wire.structures import TPM2B_AUTH, TPM2B_NONCE
from . import handlers

log = logging.getLogger("ctpm.engine")

_HDR = struct.Struct(">HII")
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")

MAX_SESSION_NUM = 3
_PW_RESPONSE_AUTH = b"\0\0\x01\0\0"     # empty nonce, continueSession, empty hmac
_SESSION_HANDLE_TYPES = (0x02, 0x03)     # HMAC and policy session handle ranges
# A password session cannot encrypt or audit (Part 1 §19.6.9).
_PW_FORBIDDEN_ATTRS = int(TPMA_SESSION.ENCRYPT | TPMA_SESSION.DECRYPT | TPMA_SESSION.AUDIT
                          | TPMA_SESSION.AUDITEXCLUSIVE | TPMA_SESSION.AUDITRESET)
# Top-level parameters have no enclosing structure whose fields a selector could name.
_NO_CONTEXT = Container()


class CommandContext:
    """What a handler may want to know about the command besides its parameters."""

    __slots__ = ("code", "locality", "tag", "sessions", "command")

    def __init__(self, code, locality, tag, command):
        self.code = code
        self.locality = locality
        self.tag = tag
        self.command = command
        self.sessions = ()


class Dispatcher:
    def __init__(self, tpm):
        self.tpm = tpm
        self.table = handlers.table()

    def execute(self, command: bytes, locality: int) -> bytes:
        state = self.tpm.state
        try:
            rsp = self._execute(command, locality)
        except TpmError as e:
            rsp = _HDR.pack(TPM_ST.NO_SESSIONS, 10, e.code)
        except Exception:   # a bug must cost one command, never the daemon
            log.exception("internal error executing command %s", command[:10].hex())
            rsp = _HDR.pack(TPM_ST.NO_SESSIONS, 10, TPM_RC.FAILURE)
        if state.started:
            state.tick()
        if state.dirty:
            try:
                state.commit()
            except OSError as e:
                log.error("cannot write TPM state: %s", e)
        return rsp

    def _execute(self, cmd, locality):
        n = len(cmd)
        # Header (Part 1 §18.2): tag, then size (must equal what arrived), then code.
        if n < 2:
            raise TpmError(TPM_RC.INSUFFICIENT)
        tag = (cmd[0] << 8) | cmd[1]
        if tag != TPM_ST.NO_SESSIONS and tag != TPM_ST.SESSIONS:
            raise TpmError(TPM_RC.BAD_TAG)
        if n < 6:
            raise TpmError(TPM_RC.INSUFFICIENT)
        size = _U32.unpack_from(cmd, 2)[0]
        if size != n or size > self.tpm.config.max_command_size:
            raise TpmError(TPM_RC.COMMAND_SIZE)
        if n < 10:
            raise TpmError(TPM_RC.INSUFFICIENT)
        code = _U32.unpack_from(cmd, 6)[0]
        entry = self.table.get(code)
        if entry is None:
            raise TpmError(TPM_RC.COMMAND_CODE)
        cdef, fn = entry
        state = self.tpm.state
        if state.started == (code == TPM_CC.Startup):
            raise TpmError(TPM_RC.INITIALIZE)

        stream = io.BytesIO(cmd)
        stream.seek(10)
        # Handle area: each handle unmarshaled and range-checked by its interface type.
        handles = []
        for i, h in enumerate(cdef.handles, 1):
            try:
                handles.append(h.type._parsereport(stream, None, None))
            except TpmError as e:
                raise e.located(handle=i)
        ctx = CommandContext(code, locality, tag, cdef)

        # Authorization area.
        if tag == TPM_ST.SESSIONS:
            if not cdef.sessions:
                raise TpmError(TPM_RC.AUTH_CONTEXT)
            remaining = n - stream.tell()
            if remaining < 4:
                raise TpmError(TPM_RC.INSUFFICIENT)
            auth_size = _U32.unpack(stream.read(4))[0]
            if auth_size < 9 or auth_size > remaining - 4:
                raise TpmError(TPM_RC.SIZE)
            sessions = self._parse_sessions(io.BytesIO(stream.read(auth_size)), auth_size)
            ctx.sessions = sessions
            self._authorize(cdef, handles, sessions)
        elif cdef.auth_handles:
            raise TpmError(TPM_RC.AUTH_MISSING)

        # Parameters.
        params = []
        for i, (_name, con) in enumerate(cdef.params, 1):
            try:
                params.append(con._parsereport(stream, _NO_CONTEXT, "(command)"))
            except TpmError as e:
                raise e.located(param=i)
            except ConstructError:
                raise TpmError(TPM_RC.INSUFFICIENT, param=i) from None
        if stream.tell() != n:
            raise TpmError(TPM_RC.SIZE)

        outputs = fn(self.tpm, ctx, *handles, *params)
        return self._response(cdef, tag, ctx, outputs)

    def _parse_sessions(self, stream, auth_size):
        """TPMS_AUTH_COMMAND list (Part 1 §18.3); only password sessions exist so far."""
        sessions = []
        while stream.tell() < auth_size:
            idx = len(sessions) + 1
            if idx > MAX_SESSION_NUM:
                raise TpmError(TPM_RC.SIZE, session=idx)
            try:
                raw = stream.read(4)
                if len(raw) != 4:
                    raise TpmError(TPM_RC.INSUFFICIENT)
                handle = _U32.unpack(raw)[0]
                if handle != TPM_RH.PW and (handle >> 24) not in _SESSION_HANDLE_TYPES:
                    raise TpmError(TPM_RC.VALUE)
                nonce = TPM2B_NONCE._parsereport(stream, None, None)
                raw = stream.read(1)
                if not raw:
                    raise TpmError(TPM_RC.INSUFFICIENT)
                attrs = raw[0]
                auth = TPM2B_AUTH._parsereport(stream, None, None)
            except TpmError as e:
                raise e.located(session=idx)
            if handle == TPM_RH.PW:
                if attrs & _PW_FORBIDDEN_ATTRS:
                    raise TpmError(TPM_RC.ATTRIBUTES, session=idx)
                if nonce:
                    raise TpmError(TPM_RC.NONCE, session=idx)
            else:
                # No HMAC or policy session can be loaded yet (sessions come with StartAuthSession).
                raise TpmError(TPM_RC.REFERENCE_S0 + idx - 1)
            sessions.append((handle, nonce, attrs, auth))
        return sessions

    def _authorize(self, cdef, handles, sessions):
        auth_handles = [h for h, d in zip(handles, cdef.handles) if d.auth != Auth.NONE]
        if len(sessions) < len(auth_handles):
            raise TpmError(TPM_RC.AUTH_MISSING)
        for idx, (handle, _nonce, _attrs, auth) in enumerate(sessions, 1):
            if idx > len(auth_handles):
                if handle == TPM_RH.PW:   # a password session must authorize a handle
                    raise TpmError(TPM_RC.HANDLE, session=idx)
                continue
            entity = auth_handles[idx - 1]
            expected = self.tpm.entity_auth_value(entity)
            if not hmac.compare_digest(auth.rstrip(b"\0"), expected.rstrip(b"\0")):
                # Part 1 §19.6.5: entities outside dictionary-attack protection get BAD_AUTH.
                rc = TPM_RC.BAD_AUTH if self.tpm.is_da_exempt(entity) else TPM_RC.AUTH_FAIL
                raise TpmError(rc, session=idx)

    def _response(self, cdef, tag, ctx, outputs):
        body = b""
        rhandle = b""
        if outputs:
            outs = iter(outputs)
            if cdef.response_handle:
                rhandle = _U32.pack(next(outs))
            out = io.BytesIO()
            for (_n, con), v in zip(cdef.response, outs):
                con._build(v, out, _NO_CONTEXT, "(response)")
            body = out.getvalue()
        if tag == TPM_ST.SESSIONS:
            auth = _PW_RESPONSE_AUTH * len(ctx.sessions)
            size = 10 + len(rhandle) + 4 + len(body) + len(auth)
            return b"".join((_HDR.pack(TPM_ST.SESSIONS, size, 0), rhandle,
                             _U32.pack(len(body)), body, auth))
        return _HDR.pack(TPM_ST.NO_SESSIONS, 10 + len(rhandle) + len(body), 0) + rhandle + body
