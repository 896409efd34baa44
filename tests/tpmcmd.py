"""Build raw TPM 2.0 commands and read responses, for tests that must control every byte."""
import struct

ST_NO_SESSIONS = 0x8001
ST_SESSIONS = 0x8002
RS_PW = 0x40000009


def cmd(code: int, body: bytes = b"", *, handles=(), sessions=None, tag=None) -> bytes:
    """A command; `sessions` is a list of raw TPMS_AUTH_COMMAND byte strings."""
    hbytes = b"".join(struct.pack(">I", h) for h in handles)
    if sessions is None:
        t = tag or ST_NO_SESSIONS
        auth = b""
    else:
        t = tag or ST_SESSIONS
        area = b"".join(sessions)
        auth = struct.pack(">I", len(area)) + area
    payload = hbytes + auth + body
    return struct.pack(">HII", t, 10 + len(payload), code) + payload


def pw_session(password: bytes = b"", attrs: int = 0x01, nonce: bytes = b"") -> bytes:
    return (struct.pack(">IH", RS_PW, len(nonce)) + nonce + bytes([attrs])
            + struct.pack(">H", len(password)) + password)


def rc(rsp: bytes) -> int:
    return struct.unpack(">I", rsp[6:10])[0]


def tag(rsp: bytes) -> int:
    return struct.unpack(">H", rsp[:2])[0]


def u16(v):
    return struct.pack(">H", v)


def u32(v):
    return struct.pack(">I", v)


def b2(data: bytes) -> bytes:
    return u16(len(data)) + data


def params(rsp: bytes) -> bytes:
    """Response parameters (after parameterSize when the response has sessions)."""
    if tag(rsp) == ST_SESSIONS:
        size = struct.unpack(">I", rsp[10:14])[0]
        return rsp[14:14 + size]
    return rsp[10:]


STARTUP_CLEAR = cmd(0x144, u16(0))
STARTUP_STATE = cmd(0x144, u16(1))
SHUTDOWN_CLEAR = cmd(0x145, u16(0))
SHUTDOWN_STATE = cmd(0x145, u16(1))


def pcr_select(*banks) -> bytes:
    """TPML_PCR_SELECTION from (alg, [pcr numbers]) pairs, 3 select bytes each."""
    out = u32(len(banks))
    for alg, pcrs in banks:
        bits = bytearray(3)
        for p in pcrs:
            bits[p // 8] |= 1 << (p % 8)
        out += u16(alg) + bytes([3]) + bytes(bits)
    return out
