"""A TPM client that does its own sessions: the TEE end of the trusted channel.

tpm2-tss salts a session with an ephemeral key it makes itself; the channel needs the salt to
come from the TEE's *attested* key Q_T, so this client builds commands, session areas, HMACs
and parameter encryption itself (TPM 2.0 Part 1 §19-§21), over any `execute(command) ->
response` (a TCTI, the SVSM vTPM protocol, a test relay). Everything here is the caller's
side of the protocol; the TPM's side is the engine's.

Only AES-CFB parameter encryption and SHA-256 sessions are built: that is what the channel
uses. Nothing here trusts the TPM's answers blindly: a response HMAC that does not verify
raises `ChannelError("response_hmac")`.
"""
import hashlib
import hmac
import os
import struct
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from ..crypto.kdf import kdfa
from ..crypto.secret import kdfe
from ..crypto.symcipher import cfb
from ..modes.tpmclient import b2, u16, u32

ST_NO_SESSIONS, ST_SESSIONS = 0x8001, 0x8002
RS_PW, RH_NULL, RH_OWNER, RH_ENDORSEMENT = 0x40000009, 0x40000007, 0x40000001, 0x4000000B
ALG_SHA256, ALG_AES, ALG_CFB, ALG_NULL, ALG_ECC = 0x000B, 0x0006, 0x0043, 0x0010, 0x0023
SE_HMAC, SE_POLICY = 0x00, 0x01
A_CONTINUE, A_DECRYPT, A_ENCRYPT = 0x01, 0x20, 0x40
SHA256 = 0x000B

CC = {"NV_Write": 0x137, "NV_Read": 0x14E, "NV_ReadPublic": 0x169, "CreatePrimary": 0x131,
      "Create": 0x153, "Load": 0x157, "Unseal": 0x15E, "Certify": 0x148, "Quote": 0x158,
      "StartAuthSession": 0x176, "PolicySigned": 0x160, "PolicyPCR": 0x17F,
      "PolicyAuthValue": 0x16B, "PolicyGetDigest": 0x189, "LoadExternal": 0x167,
      "FlushContext": 0x165, "ReadPublic": 0x173, "GetRandom": 0x17B, "PCR_Read": 0x17E,
      "EncryptDecrypt2": 0x193, "Startup": 0x144,
      "PCR_Extend": 0x182, "PCR_Reset": 0x13D, "NV_DefineSpace": 0x12A,
      "NV_UndefineSpace": 0x122, "NV_WriteLock": 0x138}


class ChannelError(Exception):
    """The channel refused something; `check` is a stable name (docs/channel.md)."""

    def __init__(self, check: str, message: str):
        super().__init__(f"{check}: {message}")
        self.check, self.message = check, message


class TpmError(ChannelError):
    """A TPM answered a command with a response code."""

    def __init__(self, command: str, rc: int):
        super().__init__("tpm_rc", f"TPM2_{command} answered TPM_RC {rc:#x}")
        self.command, self.rc = command, rc


def take_b2(buf: bytes, pos: int = 0):
    """(TPM2B contents, position after it)."""
    if pos + 2 > len(buf):
        raise ChannelError("tpm_format", "truncated TPM2B")
    size = struct.unpack_from(">H", buf, pos)[0]
    if pos + 2 + size > len(buf):
        raise ChannelError("tpm_format", "truncated TPM2B")
    return buf[pos + 2:pos + 2 + size], pos + 2 + size


def sha256(*parts) -> bytes:
    return hashlib.sha256(b"".join(bytes(p) for p in parts)).digest()


def handle_name(handle: int) -> bytes:
    """The Name of a handle whose Name is the handle (PCRs, sessions, hierarchies)."""
    return u32(handle)


def ecc_point(public_key: ec.EllipticCurvePublicKey) -> tuple[bytes, bytes]:
    n = public_key.public_numbers()
    size = (public_key.curve.key_size + 7) // 8
    return n.x.to_bytes(size, "big"), n.y.to_bytes(size, "big")


def ecc_salt(key_x: bytes, key_y: bytes, ephemeral: ec.EllipticCurvePrivateKey,
             name_alg: int = SHA256) -> tuple[bytes, bytes]:
    """(salt, encryptedSalt) of a session salted to the ECC key (key_x, key_y) with the
    caller's ephemeral key Q_e = `ephemeral` (Part 1 §11.4.10.3 and Annex C.6.1):

        Z = x([d_e] Q_K),  salt = KDFe(nameAlg, Z, "SECRET", x(Q_e), x(Q_K), digest bits)

    and encryptedSalt is the marshaled TPMS_ECC_POINT Q_e. The channel's salt key is the TEE's
    attested key, which is what binds the session to the TEE."""
    curve = ephemeral.curve
    peer = ec.EllipticCurvePublicNumbers(int.from_bytes(key_x, "big"),
                                         int.from_bytes(key_y, "big"), curve).public_key()
    z = ephemeral.exchange(ec.ECDH(), peer)
    qx, qy = ecc_point(ephemeral.public_key())
    bits = hashlib.new({SHA256: "sha256"}[name_alg]).digest_size * 8
    salt = kdfe(name_alg, z, b"SECRET\0", qx, key_x, bits)
    return salt, b2(qx) + b2(qy)


def _cfb(key: bytes, iv: bytes, data: bytes, encrypt: bool) -> bytes:
    return cfb(ALG_AES, key, iv, data, encrypt)


@dataclass
class Session:
    """A session the caller holds the key of."""

    handle: int
    session_key: bytes
    nonce_tpm: bytes
    nonce_caller: bytes
    kind: int = SE_POLICY
    sym_bits: int = 128             # AES-CFB key size; 0: no parameter encryption
    auth_value: bytes = b""         # the entity's authValue when the HMAC needs it
    needs_hmac: bool = True         # False for a policy session without PolicyAuthValue

    def hmac_key(self, with_auth: bool) -> bytes:
        return self.session_key + (self.auth_value if with_auth else b"")

    def cfb_key(self, nonce_newer: bytes, nonce_older: bytes, with_auth: bool):
        bits = self.sym_bits + 128
        out = kdfa(SHA256, self.hmac_key(with_auth), b"CFB", nonce_newer, nonce_older, bits)
        return out[:self.sym_bits // 8], out[self.sym_bits // 8:]


class TpmChannel:
    """Commands over `execute(bytes) -> bytes`, with caller-side sessions."""

    def __init__(self, execute):
        self._execute = execute
        self.commands = 0

    # -- the command layer -------------------------------------------------------------------

    RETRY_CODES = (0x908, 0x90A, 0x922)       # TPM_RC_YIELDED, TESTING, RETRY

    def raw(self, command: bytes) -> bytes:
        """One command; a TPM that asks to be asked again (libtpms answers TPM_RC_RETRY
        after writing its DA state, for example) gets the same bytes again: the command did
        not run, so no session nonce moved."""
        for attempt in range(20):
            self.commands += 1
            rsp = self._execute(command)
            if len(rsp) < 10 or int.from_bytes(rsp[6:10], "big") not in self.RETRY_CODES:
                return rsp
            time.sleep(min(0.001 * 2 ** attempt, 0.1))
        return rsp

    def call(self, name: str, params: bytes = b"", *, handles=(), names=None, auths=(),
             session: Session | None = None, session_attrs: int = A_CONTINUE,
             auth_with_value: bool = True, n_out_handles: int = 0):
        """Run one command; (response handles, response parameters, decrypted).

        `auths`: one entry per authorized handle - bytes (a password) or the `session`
        (an HMAC or policy session the caller holds the key of). `session` may also be given
        without an auth slot, as a non-authorization session for parameter encryption
        (`session_attrs` with A_DECRYPT / A_ENCRYPT) - that proves the TPM holds its key."""
        cc = CC[name]
        handle_bytes = b"".join(u32(h) for h in handles)
        enc_params = params
        cmd_nonce = None
        if session is not None:
            cmd_nonce = os.urandom(16)
            if session_attrs & A_DECRYPT:
                first, pos = take_b2(params)
                key, iv = session.cfb_key(cmd_nonce, session.nonce_tpm,
                                          _auth_in_key(session, auths, auth_with_value))
                enc_params = b2(_cfb(key, iv, first, True)) + params[pos:]
        areas = []
        for auth in auths:
            if isinstance(auth, Session):
                continue
            areas.append(u32(RS_PW) + u16(0) + bytes([A_CONTINUE]) + b2(auth))
        cp_hash = None
        if session is not None:
            names = names if names is not None else [handle_name(h) for h in handles]
            cp_hash = sha256(u32(cc), *names, enc_params)
            with_auth = _auth_in_key(session, auths, auth_with_value)
            if session in auths and session.kind == SE_POLICY and not session.needs_hmac:
                mac = b""               # a policy session without PolicyAuthValue: no HMAC
            else:
                mac = hmac.new(session.hmac_key(with_auth), cp_hash + cmd_nonce
                               + session.nonce_tpm + bytes([session_attrs]), "sha256").digest()
            area = u32(session.handle) + b2(cmd_nonce) + bytes([session_attrs]) + b2(mac)
            if session in auths:
                areas.insert([a is session for a in auths].index(True), area)
            else:
                areas.append(area)
        if areas:
            area_bytes = b"".join(areas)
            body = handle_bytes + u32(len(area_bytes)) + area_bytes + enc_params
            tag = ST_SESSIONS
        else:
            body, tag = handle_bytes + enc_params, ST_NO_SESSIONS
        rsp = self.raw(struct.pack(">HII", tag, 10 + len(body), cc) + body)
        if len(rsp) < 10:
            raise ChannelError("tpm_format", f"TPM2_{name}: a response of {len(rsp)} bytes")
        rtag, rsize, rc = struct.unpack(">HII", rsp[:10])
        if rc:
            if rc == 0x100:
                raise ChannelError("tpm_not_started", f"TPM2_{name}: the TPM has not been "
                                                      "started (TPM2_Startup; --startup)")
            raise TpmError(name, rc)
        if rsize != len(rsp):
            raise ChannelError("tpm_format", f"TPM2_{name}: responseSize {rsize} is not "
                                             f"{len(rsp)}")
        pos = 10
        out_handles = []
        for _ in range(n_out_handles):
            out_handles.append(struct.unpack_from(">I", rsp, pos)[0])
            pos += 4
        if rtag == ST_SESSIONS:
            psize = struct.unpack_from(">I", rsp, pos)[0]
            rparams = rsp[pos + 4:pos + 4 + psize]
            rsess = rsp[pos + 4 + psize:]
        else:
            rparams, rsess = rsp[pos:], b""
        if session is None:
            return out_handles, rparams
        # the response session: the last area when the session was not an authorization
        areas_out = _split_response_sessions(rsess, len(areas))
        idx = [a is session for a in auths].index(True) if session in auths else len(areas) - 1
        nonce_tpm, attrs, mac = areas_out[idx]
        session.nonce_caller, session.nonce_tpm = cmd_nonce, nonce_tpm
        with_auth = _auth_in_key(session, auths, auth_with_value)
        rp_hash = sha256(u32(0), u32(cc), rparams)
        want = hmac.new(session.hmac_key(with_auth), rp_hash + nonce_tpm + cmd_nonce
                        + bytes([attrs]), "sha256").digest()
        if not hmac.compare_digest(want, mac):
            raise ChannelError("response_hmac", f"TPM2_{name}: the response HMAC does not "
                                                "verify with the session key: the session is "
                                                "not the one this side salted")
        if session_attrs & A_ENCRYPT:
            first, p2 = take_b2(rparams)
            key, iv = session.cfb_key(nonce_tpm, cmd_nonce,
                                      _auth_in_key(session, auths, auth_with_value))
            rparams = b2(_cfb(key, iv, first, False)) + rparams[p2:]
        return out_handles, rparams

    # -- sessions ----------------------------------------------------------------------------

    def start_session(self, *, kind: int = SE_POLICY, tpm_key: int = RH_NULL,
                      key_xy: tuple | None = None, ephemeral=None, sym_bits: int = 128,
                      tpm_key_name: bytes | None = None) -> Session:
        """A session salted to `tpm_key` (an ECC decryption key whose public point is
        `key_xy`) with the caller's `ephemeral` private key, AES-`sym_bits`-CFB, SHA-256."""
        nonce_caller = os.urandom(32)
        if tpm_key != RH_NULL:
            salt, secret = ecc_salt(*key_xy, ephemeral)
        else:
            salt, secret = b"", b""
        sym = u16(ALG_AES) + u16(sym_bits) + u16(ALG_CFB) if sym_bits else u16(ALG_NULL)
        params = b2(nonce_caller) + b2(secret) + bytes([kind]) + sym + u16(SHA256)
        handles, rparams = self.call("StartAuthSession", params, handles=[tpm_key, RH_NULL],
                                     n_out_handles=1)
        nonce_tpm, _ = take_b2(rparams)
        key = kdfa(SHA256, salt, b"ATH", nonce_tpm, nonce_caller, 256) if salt else b""
        return Session(handles[0], key, nonce_tpm, nonce_caller, kind, sym_bits,
                       needs_hmac=kind == SE_HMAC)

    def confirm(self, session: Session) -> bytes:
        """Prove the TPM holds `session`'s key: GetRandom with the session as an encrypt
        session. The response HMAC verifies only with the key this side derived; the
        session's nonceTPM after it is one the relay cannot have chosen."""
        _, rparams = self.call("GetRandom", u16(16), session=session,
                               session_attrs=A_CONTINUE | A_ENCRYPT)
        data, _ = take_b2(rparams)
        return data

    def flush(self, handle: int):
        try:
            self.call("FlushContext", u32(handle))
        except TpmError:
            pass


def _auth_in_key(session: Session, auths, auth_with_value: bool) -> bool:
    """Whether the entity's authValue is part of the parameter-encryption key: only when the
    session authorizes that entity (and, for a policy session, PolicyAuthValue was used)."""
    if session not in auths:
        return False
    return auth_with_value and (session.kind == SE_HMAC or session.needs_hmac)


def _split_response_sessions(buf: bytes, count: int):
    out, pos = [], 0
    for _ in range(count):
        nonce, pos = take_b2(buf, pos)
        if pos >= len(buf):
            raise ChannelError("tpm_format", "truncated response session")
        attrs = buf[pos]
        mac, pos = take_b2(buf, pos + 1)
        out.append((nonce, attrs, mac))
    return out
