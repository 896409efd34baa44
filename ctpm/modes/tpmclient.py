"""A small synchronous TPM 2.0 client over `execute(command) -> response`.

What a mode does at boot and as the platform (create and persist the EKs and the AK, define
the report indices) it does with ordinary TPM commands through this client, exactly as
platform firmware would: the engine gets no mode-specific entry point (the evidence itself is
written through the engine's generic platform NV entry, `Tpm.platform_nv_write`). The
attester (ctpm/attest/evidence.py) uses it too, over a TCTI, for the report request. Only the
commands these need are here; tpm2-pytss is far too slow to import on the start-up path.
"""
import struct

ST_NO_SESSIONS = 0x8001
ST_SESSIONS = 0x8002
RS_PW = 0x40000009
RH_OWNER = 0x40000001
RH_NULL = 0x40000007
RH_ENDORSEMENT = 0x4000000B
RH_PLATFORM = 0x4000000C

CC = {"NV_DefineSpace": 0x12A, "EvictControl": 0x120, "CreatePrimary": 0x131,
      "NV_Write": 0x137, "NV_Read": 0x14E, "StartAuthSession": 0x176, "PolicySigned": 0x160,
      "LoadExternal": 0x167, "FlushContext": 0x165, "Startup": 0x144, "Shutdown": 0x145,
      "ReadPublic": 0x173, "NV_ReadPublic": 0x169, "PolicySecret": 0x151,
      "ActivateCredential": 0x147, "GetCapability": 0x17A,
      "Quote": 0x158, "PCR_Read": 0x17E}
TPM_CAP_HANDLES, TPM_CAP_TPM_PROPERTIES = 1, 6
TPM_PT_NV_BUFFER_MAX = 0x12C


# TPM_RC_RETRY, TPM_RC_YIELDED, TPM_RC_TESTING: the command was not started, send it again
# (libtpms answers RETRY to the first ActivateCredential with a new RSA EK)
_TRY_AGAIN = (0x922, 0x908, 0x90A)


class TpmCommandError(Exception):
    """A command the mode sent was refused: a bug or an unusable TPM state, never the guest's
    doing (the mode runs these before serving or under the instance's lock)."""

    def __init__(self, command: str, rc: int):
        super().__init__(f"TPM2_{command} answered TPM_RC {rc:#x}")
        self.command = command
        self.rc = rc

    @property
    def no_such_handle(self) -> bool:
        """TPM_RC_HANDLE for one of the command's handles (any handle number)."""
        return self.rc & 0xBF == 0x8B


def u16(v):
    return struct.pack(">H", v)


def u32(v):
    return struct.pack(">I", v)


def b2(data: bytes) -> bytes:
    return u16(len(data)) + data


def pw(password: bytes = b"", attrs: int = 0x01) -> bytes:
    """A password session (TPMS_AUTH_COMMAND with TPM_RS_PW)."""
    return u32(RS_PW) + u16(0) + bytes([attrs]) + b2(password)


def policy_session(handle: int, attrs: int = 0x00) -> bytes:
    """A policy session's TPMS_AUTH_COMMAND (no nonce, no HMAC: policy sessions without
    PolicyAuthValue/PolicyPassword need none)."""
    return u32(handle) + u16(0) + bytes([attrs]) + u16(0)


class TpmClient:
    def __init__(self, execute):
        self._execute = execute

    def call(self, name: str, body: bytes = b"", *, handles=(), sessions=None) -> bytes:
        """Send one command; return its response parameters (after parameterSize), or raise
        `TpmCommandError`. The response handle, if any, is the first 4 bytes."""
        hbytes = b"".join(u32(h) for h in handles)
        if sessions is None:
            payload, tag = hbytes + body, ST_NO_SESSIONS
        else:
            area = b"".join(sessions)
            payload, tag = hbytes + u32(len(area)) + area + body, ST_SESSIONS
        command = struct.pack(">HII", tag, 10 + len(payload), CC[name]) + payload
        for _ in range(8):
            rsp = self._execute(command)
            rc = struct.unpack(">I", rsp[6:10])[0]
            if rc not in _TRY_AGAIN:
                break
        if rc:
            raise TpmCommandError(name, rc)
        return rsp[10:]

    @staticmethod
    def _split(rsp: bytes, n_handles: int):
        """(handles, parameters) of a response with sessions (parameterSize after handles)."""
        handles = [struct.unpack(">I", rsp[4 * i:4 * i + 4])[0] for i in range(n_handles)]
        rest = rsp[4 * n_handles:]
        size = struct.unpack(">I", rest[:4])[0]
        return handles, rest[4:4 + size]

    # -- the commands ------------------------------------------------------------------------

    def startup(self, clear=True):
        self.call("Startup", u16(0 if clear else 1))

    def shutdown(self, clear=True):
        self.call("Shutdown", u16(0 if clear else 1))

    def create_primary(self, hierarchy: int, template: bytes,
                       auth: bytes = b"") -> tuple[int, bytes, bytes]:
        """(handle, TPMT_PUBLIC bytes, Name) of a primary key made from `template`
        (a marshalled TPMT_PUBLIC); `auth` is the hierarchy's authorization value."""
        body = b2(u16(0) + u16(0)) + b2(template) + u16(0) + u32(0)
        rsp = self.call("CreatePrimary", body, handles=[hierarchy],
                        sessions=[pw(auth)])
        (handle,), params = self._split(rsp, 1)
        size = struct.unpack(">H", params[:2])[0]
        public = params[2:2 + size]
        rest = params[2 + size:]
        rest = rest[2 + struct.unpack(">H", rest[:2])[0]:]          # creationData
        rest = rest[2 + struct.unpack(">H", rest[:2])[0]:]          # creationHash
        rest = rest[8 + struct.unpack(">H", rest[6:8])[0]:]         # creationTicket
        name = rest[2:2 + struct.unpack(">H", rest[:2])[0]]
        return handle, public, name

    def evict_control(self, auth: int, handle: int, persistent: int):
        self.call("EvictControl", u32(persistent), handles=[auth, handle], sessions=[pw()])

    def flush(self, handle: int):
        self.call("FlushContext", u32(handle))

    def read_public(self, handle: int) -> tuple[bytes, bytes]:
        """(TPMT_PUBLIC bytes, Name)."""
        rsp = self.call("ReadPublic", handles=[handle])
        size = struct.unpack(">H", rsp[:2])[0]
        public = rsp[2:2 + size]
        rest = rsp[2 + size:]
        return public, rest[2:2 + struct.unpack(">H", rest[:2])[0]]

    def nv_define(self, auth: int, index: int, attributes: int, size: int,
                  auth_policy: bytes = b"", name_alg: int = 0x000B):
        public = u32(index) + u16(name_alg) + u32(attributes) + b2(auth_policy) + u16(size)
        self.call("NV_DefineSpace", b2(b"") + b2(public), handles=[auth], sessions=[pw()])

    def nv_read(self, auth: int, index: int, size: int, offset: int = 0,
                password: bytes = b"") -> bytes:
        rsp = self.call("NV_Read", u16(size) + u16(offset), handles=[auth, index],
                        sessions=[pw(password)])
        _, params = self._split(rsp, 0)
        return params[2:2 + struct.unpack(">H", params[:2])[0]]

    def nv_data_size(self, index: int) -> int:
        """dataSize of an NV index (NV_ReadPublic)."""
        rsp = self.call("NV_ReadPublic", handles=[index])
        policy = struct.unpack(">H", rsp[12:14])[0]       # after size, nvIndex, alg, attrs
        return struct.unpack(">H", rsp[14 + policy:16 + policy])[0]

    def nv_write(self, auth: int, index: int, data: bytes, offset: int = 0, session=None):
        self.call("NV_Write", b2(data) + u16(offset), handles=[auth, index],
                  sessions=[session or pw()])

    def tpm_property(self, prop: int) -> int | None:
        """One TPM_CAP_TPM_PROPERTIES value (Part 2 §6.13), None if the TPM has no such
        property (it answers with the next one it has, or none)."""
        rsp = self.call("GetCapability", u32(TPM_CAP_TPM_PROPERTIES) + u32(prop) + u32(1))
        # moreData, capability, TPML_TAGGED_TPM_PROPERTY (count, then property/value pairs)
        count = struct.unpack(">I", rsp[5:9])[0] if len(rsp) >= 9 else 0
        if count < 1 or len(rsp) < 17:
            return None
        got, value = struct.unpack(">II", rsp[9:17])
        return value if got == prop else None

    def handles(self, first: int, last: int) -> list[int]:
        """The handles from `first` to `last` the TPM has (TPM_CAP_HANDLES, one call)."""
        rsp = self.call("GetCapability", u32(TPM_CAP_HANDLES) + u32(first)
                        + u32(last - first + 1))
        count = struct.unpack(">I", rsp[5:9])[0]         # moreData, capability, TPML_HANDLE
        return [h for h in struct.unpack(f">{count}I", rsp[9:9 + 4 * count])
                if first <= h <= last]

    def quote(self, key: int, qualifying: bytes, selection: bytes,
              password: bytes = b"") -> tuple[bytes, bytes]:
        """(TPMS_ATTEST, TPMT_SIGNATURE) of TPM2_Quote by `key` with its own scheme over the
        marshalled TPML_PCR_SELECTION `selection`."""
        rsp = self.call("Quote", b2(qualifying) + u16(0x0010) + selection, handles=[key],
                        sessions=[pw(password)])
        _, params = self._split(rsp, 0)
        size = struct.unpack(">H", params[:2])[0]
        return params[2:2 + size], params[2 + size:]

    def pcr_read(self, selection: bytes) -> list[bytes]:
        """The digests TPM2_PCR_Read gives for the marshalled TPML_PCR_SELECTION (at most
        eight: the TPM reads what fits and says so in its pcrSelectionOut)."""
        rsp = self.call("PCR_Read", selection)
        pos = 8                             # after pcrUpdateCounter and the selections' count
        for _ in range(struct.unpack(">I", rsp[4:8])[0]):
            pos += 3 + rsp[pos + 2]         # hash, sizeofSelect, the bitmap
        digests = []
        for _ in range(struct.unpack(">I", rsp[pos:pos + 4])[0]):
            size = struct.unpack(">H", rsp[pos + 4:pos + 6])[0]
            digests.append(rsp[pos + 6:pos + 6 + size])
            pos += 2 + size
        return digests

    def load_external_public(self, public: bytes) -> tuple[int, bytes]:
        """(handle, Name) of a public key loaded in the NULL hierarchy."""
        rsp = self.call("LoadExternal", u16(0) + b2(public) + u32(RH_NULL))
        handle = struct.unpack(">I", rsp[:4])[0]
        name = rsp[4:]
        return handle, name[2:2 + struct.unpack(">H", name[:2])[0]]

    def start_policy_session(self, hash_alg: int = 0x000B) -> tuple[int, bytes]:
        """(handle, nonceTPM) of an unbound, unsalted policy session."""
        nonce_caller = bytes(16)
        body = (u32(RH_NULL) + u32(RH_NULL) + b2(nonce_caller) + b2(b"") + bytes([0x01])
                + u16(0x0010) + u16(hash_alg))
        rsp = self.call("StartAuthSession", body)
        handle = struct.unpack(">I", rsp[:4])[0]
        return handle, rsp[6:6 + struct.unpack(">H", rsp[4:6])[0]]

    def policy_signed(self, key_handle: int, session: int, nonce_tpm: bytes,
                      signature: bytes):
        """PolicySigned with no cpHash, no policyRef, expiration 0; `signature` is a
        marshalled TPMT_SIGNATURE over H(nonceTPM || 0x00000000)."""
        body = b2(nonce_tpm) + b2(b"") + b2(b"") + u32(0) + signature
        self.call("PolicySigned", body, handles=[key_handle, session])


class TctiTransport:
    """Raw commands through a TCTI: the bytes go out as built here, untouched by ESAPI."""

    def __init__(self, tcti, timeout_ms: int = 120_000):
        """`tcti`: a TCTI string, or an open tpm2-pytss TCTI (e.g. an ESAPI's, `esapi.tcti`,
        between its commands)."""
        if isinstance(tcti, str):
            from tpm2_pytss import TCTILdr
            tcti = TCTILdr.parse(tcti)
        self._tcti = tcti
        self._timeout = timeout_ms

    def __call__(self, command: bytes) -> bytes:
        self._tcti.transmit(bytes(command))
        return bytes(self._tcti.receive(-1, self._timeout))

    def close(self):
        tcti, self._tcti = self._tcti, None
        if tcti is not None:
            tcti.close()
