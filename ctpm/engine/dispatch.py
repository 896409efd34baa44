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
from ..state.errors import StoreError
from ..wire.commands import Auth
from ..wire.constants import TPM_CC, TPM_HT, TPM_RC, TPM_RH, TPM_SE, TPM_ST, TPMA_SESSION
from ..wire.structures import TPM2B_AUTH, TPM2B_NONCE
from . import handlers
from .commands import ea
from .subsystems import audit, da, physical_presence
from .subsystems.sessions import (bind_value, command_hmac, cp_hash, crypt_parameter,
                                  response_hmac, rp_hash)

log = logging.getLogger("ctpm.engine")

_HDR = struct.Struct(">HII")
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")

MAX_SESSION_NUM = 3
_PW_RESPONSE_AUTH = b"\0\0\x01\0\0"     # empty nonce, continueSession, empty hmac
_SESSION_HANDLE_TYPES = (0x02, 0x03)     # HMAC and policy session handle ranges
# TPMA_SESSION bits 3 and 4 are reserved (Part 2 §8.4): the unmarshaling refuses them.
_RESERVED_SESSION_ATTRS = 0x18
# A password session cannot encrypt or audit (Part 1 §19.6.9).
_PW_FORBIDDEN_ATTRS = int(TPMA_SESSION.ENCRYPT | TPMA_SESSION.DECRYPT | TPMA_SESSION.AUDIT
                          | TPMA_SESSION.AUDITEXCLUSIVE | TPMA_SESSION.AUDITRESET)
# Top-level parameters have no enclosing structure whose fields a selector could name.
_NO_CONTEXT = Container()


class AuthEntry:
    """One TPMS_AUTH_COMMAND of a command, and what processing it found out."""

    __slots__ = ("handle", "nonce", "attrs", "auth", "session", "entity", "include_auth",
                 "decrypt", "encrypt")

    def __init__(self, handle, nonce, attrs, auth):
        self.handle = handle
        self.nonce = nonce
        self.attrs = attrs
        self.auth = auth
        self.session = None       # the loaded Session, None for a password
        self.entity = None        # the handle it authorizes, None for encrypt/decrypt only
        self.include_auth = False
        self.decrypt = self.encrypt = False


class CommandContext:
    """What a handler may want to know about the command besides its parameters."""

    __slots__ = ("code", "locality", "tag", "sessions", "command", "names", "cp_params",
                 "_cp_hashes", "evict")

    def __init__(self, code, locality, tag, command):
        self.code = code
        self.locality = locality
        self.tag = tag
        self.command = command
        self.sessions = ()
        self.names = ()           # Names of the handles before the command ran (for audit)
        self.cp_params = b""      # the parameter area as received (encrypted, if it was)
        self._cp_hashes = {}
        self.evict = []           # objects to flush once the response is made

    def flush_after_response(self, handle: int):
        """A command that ends the object it is authorized through (SequenceComplete,
        EventSequenceComplete) leaves it loaded until the response HMAC, which includes its
        authValue, is computed (the reference marks it evict and flushes it on the way out)."""
        self.evict.append(handle)

    def cp_of(self, alg) -> bytes:
        """cpHash of the command with a hash algorithm (Part 1 §18.7)."""
        if alg not in self._cp_hashes:
            self._cp_hashes[alg] = cp_hash(alg, self.code, self.names, self.cp_params)
        return self._cp_hashes[alg]


class Dispatcher:
    def __init__(self, tpm):
        self.tpm = tpm
        self.table = handlers.table()
        self._functions = {}      # command code -> handler, resolved at the first command of it
        # what the parameters' bounds read from the configuration (wire.base.Tpm2b `limit`)
        self._params_context = Container(nv_buffer_max=tpm.config.nv_buffer_max)

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
            except (OSError, StoreError) as e:     # the daemon's store reports it
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
        cdef = entry[0]
        state = self.tpm.state
        if state.started == (code == TPM_CC.Startup):
            raise TpmError(TPM_RC.INITIALIZE)

        stream = io.BytesIO(cmd)
        stream.seek(10)
        # Handle area: each handle unmarshaled and range-checked by its interface type, then
        # it must name something that exists (EntityGetLoadStatus).
        handles = []
        for i, h in enumerate(cdef.handles, 1):
            try:
                handles.append(h.type._parsereport(stream, None, None))
            except TpmError as e:
                raise e.located(handle=i)
        for i, handle in enumerate(handles, 1):
            self.tpm.check_loaded(handle, i, code)
        ctx = CommandContext(code, locality, tag, cdef)

        # Authorization area.
        entities = [(h, d.auth) for h, d in zip(handles, cdef.handles) if d.auth != Auth.NONE]
        if tag == TPM_ST.SESSIONS:
            if not cdef.sessions:
                raise TpmError(TPM_RC.AUTH_CONTEXT)
            remaining = n - stream.tell()
            if remaining < 4:
                raise TpmError(TPM_RC.INSUFFICIENT)
            auth_size = _U32.unpack(stream.read(4))[0]
            if auth_size < 9 or auth_size > remaining - 4:
                raise TpmError(TPM_RC.SIZE)
            ctx.sessions = self._parse_sessions(cdef, io.BytesIO(stream.read(auth_size)),
                                                auth_size)
            if len(ctx.sessions) < len(entities):
                raise TpmError(TPM_RC.AUTH_MISSING)
            ctx.cp_params = cmd[stream.tell():]
            raw = self._authorize(code, handles, entities, ctx.sessions, ctx.cp_params,
                                  locality)
            stream = io.BytesIO(raw)
            n = len(raw)
        elif entities:
            raise TpmError(TPM_RC.AUTH_MISSING)
        else:
            ctx.cp_params = cmd[stream.tell():]
        # Names as they are before the command (FlushContext, EvictControl change them), for
        # the cpHash of an audit (the reference computes it before the command runs).
        if (audit.is_audited(state, code)
                or any(e.attrs & TPMA_SESSION.AUDIT for e in ctx.sessions)):
            ctx.names = [self.tpm.entity_name(h) for h in handles]

        # Parameters.
        params = []
        for i, (_name, con) in enumerate(cdef.params, 1):
            try:
                params.append(con._parsereport(stream, self._params_context, "(command)"))
            except TpmError as e:
                raise e.located(param=i)
            except ConstructError:
                raise TpmError(TPM_RC.INSUFFICIENT, param=i) from None
        if stream.tell() != n:
            raise TpmError(TPM_RC.SIZE)

        fn = self._functions.get(code)
        if fn is None:
            fn = self._functions[code] = handlers.function(entry[1])
        outputs = fn(self.tpm, ctx, *handles, *params)
        response = self._response(cdef, tag, ctx, outputs)
        for handle in ctx.evict:
            state.objects.pop(handle, None)
        return response

    def _parse_sessions(self, cdef, stream, auth_size):
        """TPMS_AUTH_COMMAND list (Part 1 §18.3) with the consistency checks of the
        reference TPM's RetrieveSessionData, in its order."""
        sessions = []
        loaded = self.tpm.state.sessions
        decrypt = encrypt = audit_entry = None
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
                if attrs & _RESERVED_SESSION_ATTRS:     # TPMA_SESSION_Unmarshal
                    raise TpmError(TPM_RC.RESERVED_BITS)
                auth = TPM2B_AUTH._parsereport(stream, None, None)
            except TpmError as e:
                raise e.located(session=idx)
            entry = AuthEntry(handle, nonce, attrs, auth)
            sessions.append(entry)
            if handle == TPM_RH.PW:
                if attrs & _PW_FORBIDDEN_ATTRS:
                    raise TpmError(TPM_RC.ATTRIBUTES, session=idx)
                if nonce:
                    raise TpmError(TPM_RC.NONCE, session=idx)
                continue
            session = loaded.get(handle)
            if session is None:
                raise TpmError(TPM_RC.REFERENCE_S0 + idx - 1)
            if (session.kind == TPM_SE.HMAC) != (handle >> 24 == TPM_HT.HMAC_SESSION):
                raise TpmError(TPM_RC.HANDLE, session=idx)
            if any(s.handle == handle for s in sessions[:-1]):
                raise TpmError(TPM_RC.HANDLE, session=idx)
            if session.kind == TPM_SE.TRIAL:
                raise TpmError(TPM_RC.ATTRIBUTES, session=idx)
            entry.session = session
            if attrs & TPMA_SESSION.DECRYPT:
                if not cdef.decrypt or decrypt is not None:
                    raise TpmError(TPM_RC.ATTRIBUTES, session=idx)
                if session.symmetric is None:
                    raise TpmError(TPM_RC.SYMMETRIC, session=idx)
                decrypt = entry
            if attrs & TPMA_SESSION.ENCRYPT:
                if not cdef.encrypt or encrypt is not None:
                    raise TpmError(TPM_RC.ATTRIBUTES, session=idx)
                if session.symmetric is None:
                    raise TpmError(TPM_RC.SYMMETRIC, session=idx)
                encrypt = entry
            if attrs & TPMA_SESSION.AUDIT:
                # one audit session, an HMAC session; auditExclusive asks that the session
                # still be the exclusive one (unless it starts over: first use, auditReset)
                if audit_entry is not None or session.kind != TPM_SE.HMAC:
                    raise TpmError(TPM_RC.ATTRIBUTES, session=idx)
                if (not attrs & TPMA_SESSION.AUDITRESET and session.is_audit
                        and attrs & TPMA_SESSION.AUDITEXCLUSIVE
                        and self.tpm.state.exclusive_audit_session != handle):
                    raise TpmError(TPM_RC.EXCLUSIVE)
                audit_entry = entry
        for e in sessions:
            e.decrypt = e is decrypt
            e.encrypt = e is encrypt
        return sessions

    def _authorize(self, code, handles, entities, sessions, raw, locality=0):
        """Check every session's authorization (Part 1 §19.6), then decrypt the first
        parameter if a session says so. Returns the parameter area to unmarshal."""
        tpm = self.tpm
        # Names go into cpHash, which only HMAC and policy sessions use (an index's Name is
        # a hash of its public area: not worth it for password sessions alone)
        names = ([tpm.entity_name(h) for h in handles]
                 if any(e.handle != TPM_RH.PW for e in sessions) else [])
        cp_hashes = {}

        def cp_of(alg):
            if alg not in cp_hashes:
                cp_hashes[alg] = cp_hash(alg, code, names, raw)
            return cp_hashes[alg]
        decrypt = next((e for e in sessions if e.decrypt), None)
        encrypt = next((e for e in sessions if e.encrypt), None)
        for idx, e in enumerate(sessions, 1):
            e.entity, role = entities[idx - 1] if idx <= len(entities) else (None, None)
            if (e.entity == TPM_RH.PLATFORM and not tpm.physical_presence
                    and physical_presence.is_required(tpm.state, code)):
                raise TpmError(TPM_RC.PP, session=idx)      # CheckAuthSession, first
            if e.session is not None and e.session.is_da_bound:
                # bound to a DA-protected entity: no use at all in lockout (ParseSessionBuffer)
                da.check_locked_out(tpm, e.session.is_lockout_bound)
            if e.entity is not None and not tpm.is_da_exempt(e.entity) and self._auth_used(e):
                # Part 1 §19.8: before the value
                da.check_locked_out(tpm, e.entity == TPM_RH.LOCKOUT)
            if e.entity is not None and (e.session is None or e.session.kind == TPM_SE.HMAC):
                refusal = tpm.auth_value_refusal(e.entity, role, code)
                if refusal is not None:
                    raise TpmError(refusal)
            if e.handle == TPM_RH.PW:
                if e.entity is None:          # a password must authorize a handle
                    raise TpmError(TPM_RC.HANDLE, session=idx)
                expected = tpm.entity_auth_value(e.entity)
                if not hmac.compare_digest(e.auth.rstrip(b"\0"), expected.rstrip(b"\0")):
                    raise self._auth_failure(e, idx)
                self._count_pin(e, True)
                continue
            session = e.session
            if e.entity is None:
                if not e.attrs & (TPMA_SESSION.DECRYPT | TPMA_SESSION.ENCRYPT
                                  | TPMA_SESSION.AUDIT):
                    raise TpmError(TPM_RC.ATTRIBUTES, session=idx)
            elif session.kind == TPM_SE.POLICY:
                # Part 1 §19.7: the entity's authPolicy and the session's other conditions
                # (the reference's IsAuthPolicyAvailable and CheckPolicyAuthSession) ...
                try:
                    ea.check_policy_session(tpm, code, session, e.entity, role, cp_of, names,
                                            locality, raw)
                except TpmError as err:
                    raise err.located(session=idx) from None
                e.include_auth = session.is_auth_value_needed or session.is_password_needed
                if session.is_password_needed:  # ... then PolicyPassword's cleartext auth
                    expected = tpm.entity_auth_value(e.entity)
                    if not hmac.compare_digest(e.auth.rstrip(b"\0"), expected.rstrip(b"\0")):
                        raise self._auth_failure(e, idx)
                    self._count_pin(e, True)
                    continue
            else:
                e.include_auth = session.bound != bind_value(tpm, e.entity)
            key = session.session_key + (self._auth_of(e) if e.include_auth else b"")
            if not key and not e.auth:         # Part 1 §19.6.5: empty key, empty HMAC
                self._count_pin(e, True)
                continue
            alg = session.auth_hash
            cp_of(alg)
            extra = []
            if idx == 1 and e.entity is not None:
                if decrypt is not None and decrypt is not e:
                    extra.append(decrypt.session.nonce_tpm)
                if encrypt is not None and encrypt is not e and encrypt is not decrypt:
                    extra.append(encrypt.session.nonce_tpm)
            expected = command_hmac(session, key, cp_hashes[alg], e.nonce, e.attrs, extra)
            if not hmac.compare_digest(e.auth, expected):
                raise self._auth_failure(e, idx)
            self._count_pin(e, True)
        if decrypt is not None:
            idx = sessions.index(decrypt) + 1
            if len(raw) < 2:
                raise TpmError(TPM_RC.INSUFFICIENT, session=idx)
            size = _U16.unpack_from(raw)[0]
            if size > len(raw) - 2:
                raise TpmError(TPM_RC.SIZE, session=idx)
            key = decrypt.session.session_key + self._auth_of(decrypt)
            clear = crypt_parameter(decrypt.session, key, decrypt.nonce,
                                    decrypt.session.nonce_tpm, raw[2:2 + size], encrypt=False)
            raw = raw[:2] + clear + raw[2 + size:]
        return raw

    def _auth_of(self, entry):
        """authValue (trailing zeros removed) of the entity a session authorizes, if any."""
        if entry.entity is None:
            return b""
        return self.tpm.entity_auth_value(entry.entity).rstrip(b"\0")

    def _auth_used(self, e):
        """Does this session use the entity's authValue (the reference's authUsed)?"""
        session = e.session
        if session is None:
            return True
        if session.kind == TPM_SE.POLICY:
            return session.is_auth_value_needed or session.is_password_needed
        return session.bound != bind_value(self.tpm, e.entity)

    def _count_pin(self, e, ok):
        """End of the reference's CheckAuthSession: a PIN index whose authValue the session
        used counts the success or failure."""
        if e.entity is not None and self._auth_used(e):
            self.tpm.auth_value_used(e.entity, ok)

    def _auth_failure(self, e, idx):
        # Part 1 §19.6.5, §19.8 (IncrementLockout): entities outside dictionary-attack
        # protection, and sessions that did not use the authValue, get BAD_AUTH; the others
        # count a failure (or lock out lockoutAuth) and get AUTH_FAIL. A session bound to a
        # DA-protected entity always counts, one bound to lockoutAuth as lockoutAuth's.
        self._count_pin(e, False)
        session = e.session
        handle = e.entity
        if session is not None and session.is_lockout_bound:
            handle = TPM_RH.LOCKOUT
        if not (session is not None and session.is_da_bound) and (
                handle is None or self.tpm.is_da_exempt(handle) or not self._auth_used(e)):
            return TpmError(TPM_RC.BAD_AUTH, session=idx)
        return TpmError(da.register_failure(self.tpm, handle), session=idx)

    def _response(self, cdef, tag, ctx, outputs):
        rhandle = b""
        out = io.BytesIO()
        if outputs:
            outs = iter(outputs)
            if cdef.response_handle:
                rhandle = _U32.pack(next(outs))
            for (_n, con), v in zip(cdef.response, outs):
                con._build(v, out, _NO_CONTEXT, "(response)")
        body = out.getvalue()
        if tag != TPM_ST.SESSIONS:
            audit.update(self.tpm, ctx, cdef.sessions, self._rp_of(ctx, body))
            return _HDR.pack(TPM_ST.NO_SESSIONS, 10 + len(rhandle) + len(body), 0) + rhandle + body
        return self._response_with_sessions(ctx, rhandle, body)

    @staticmethod
    def _rp_of(ctx, body):
        """rpHash of a successful response with a hash algorithm, computed once per alg."""
        rp_hashes = {}

        def rp_of(alg):
            if alg not in rp_hashes:
                rp_hashes[alg] = rp_hash(alg, ctx.code, body)
            return rp_hashes[alg]
        return rp_of

    def _response_with_sessions(self, ctx, rhandle, body):
        """New nonces, the encrypted first parameter, the response HMACs (Part 1 §19.6.16),
        and sessions without continueSession flushed."""
        sessions = ctx.sessions
        drbg = self.tpm.state.drbg
        for e in sessions:
            if e.session is not None:
                e.session.nonce_tpm = drbg.generate(len(e.session.nonce_tpm))
        encrypt = next((e for e in sessions if e.encrypt), None)
        if encrypt is not None and len(body) >= 2:
            size = _U16.unpack_from(body)[0]
            key = encrypt.session.session_key + self._auth_of(encrypt)
            body = body[:2] + crypt_parameter(encrypt.session, key, encrypt.session.nonce_tpm,
                                              encrypt.nonce, body[2:2 + size],
                                              encrypt=True) + body[2 + size:]
        rp_of = self._rp_of(ctx, body)
        # audit sessions and command audit (the response HMACs cover their attributes)
        audit.update(self.tpm, ctx, True, rp_of)
        areas = []
        for e in sessions:
            session = e.session
            if session is None:
                areas.append(_PW_RESPONSE_AUTH)
                continue
            key = session.session_key + (self._auth_of(e) if e.include_auth else b"")
            if not key and not e.auth or session.is_password_needed:
                mac = b""          # (PolicyPassword: no HMAC in the response either)
            else:
                mac = response_hmac(session, key, rp_of(session.auth_hash), e.nonce, e.attrs)
            areas.append(_U16.pack(len(session.nonce_tpm)) + session.nonce_tpm
                         + bytes((e.attrs,)) + _U16.pack(len(mac)) + mac)
            if not e.attrs & TPMA_SESSION.CONTINUESESSION:
                self.tpm.state.sessions.pop(session.handle, None)
                if self.tpm.state.exclusive_audit_session == session.handle:
                    self.tpm.state.exclusive_audit_session = None
            elif session.kind == TPM_SE.POLICY:
                # a policy is good for one command (the reference's UpdateInternalSession)
                ea.reset_policy(session, self.tpm.state.time())
        auth = b"".join(areas)
        size = 10 + len(rhandle) + 4 + len(body) + len(auth)
        return b"".join((_HDR.pack(TPM_ST.SESSIONS, size, 0), rhandle,
                         _U32.pack(len(body)), body, auth))
