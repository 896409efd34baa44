"""HMAC sessions byte by byte, with a client written here from Part 1 §19 (not ctpm's code):
the same streams go to ctpm and to swtpm, and both must agree on every response code, on the
PCR values and on verifiable response HMACs."""
import hashlib
import hmac
import struct

import pytest

from ctpm.engine.config import EngineConfig
from ctpm.engine.tpm import Tpm
from tests.peers import Swtpm, needs_swtpm
from tests.tpmcmd import (STARTUP_CLEAR, b2, cmd, params, pcr_select, pw_session, rc, u16, u32)

RH_NULL, RH_OWNER = 0x40000007, 0x40000001
SHA256, AES, CFB, CTR, XOR, NULL = 0x0B, 0x06, 0x43, 0x40, 0x0A, 0x10
SE_HMAC, SE_POLICY, SE_TRIAL = 0, 1, 3


def kdfa(key, label, u, v, bits):
    out = b""
    i = 1
    while len(out) * 8 < bits:
        out += hmac.new(key, struct.pack(">I", i) + label + b"\0" + u + v + struct.pack(">I", bits),
                        "sha256").digest()
        i += 1
    return out[:bits // 8]


def start_session(tpm_key=RH_NULL, bind=RH_NULL, nonce=b"\x11" * 32, salt=b"",
                  se=SE_HMAC, sym=u16(NULL), auth_hash=SHA256):
    return cmd(0x176, b2(nonce) + b2(salt) + bytes([se]) + sym + u16(auth_hash),
               handles=[tpm_key, bind])


class Client:
    """One HMAC session as a TSS would drive it."""

    def __init__(self, execute, bind=RH_NULL):
        self.execute = execute
        self.nonce_caller = b"\x11" * 32
        r = execute(start_session(bind=bind, nonce=self.nonce_caller))
        assert rc(r) == 0, hex(rc(r))
        self.handle = struct.unpack(">I", r[10:14])[0]
        self.nonce_tpm = r[16:16 + 32]
        self.key = kdfa(b"", b"ATH", self.nonce_tpm, self.nonce_caller, 256) if bind != RH_NULL else b""

    def command(self, code, handles, body, attrs=0x01, tamper=False):
        self.nonce_caller = hashlib.sha256(self.nonce_caller).digest()
        names = b"".join(struct.pack(">I", h) for h in handles)
        cp = hashlib.sha256(struct.pack(">I", code) + names + body).digest()
        mac = hmac.new(self.key, cp + self.nonce_caller + self.nonce_tpm + bytes([attrs]),
                       "sha256").digest()
        if tamper:
            mac = bytes([mac[0] ^ 1]) + mac[1:]
        session = (struct.pack(">I", self.handle) + b2(self.nonce_caller) + bytes([attrs])
                   + b2(mac))
        r = self.execute(cmd(code, body, handles=handles, sessions=[session]))
        if rc(r) == 0:
            self._check_response(code, r, attrs)
        return r

    def _check_response(self, code, r, attrs):
        body = params(r)
        auth = r[14 + len(body):]
        n = struct.unpack(">H", auth[:2])[0]
        nonce_tpm, r_attrs = auth[2:2 + n], auth[2 + n]
        mac = auth[5 + n:]
        rp = hashlib.sha256(b"\0\0\0\0" + struct.pack(">I", code) + body).digest()
        expect = hmac.new(self.key, rp + nonce_tpm + self.nonce_caller + bytes([attrs]),
                          "sha256").digest()
        assert r_attrs == attrs and mac == expect, "response HMAC does not verify"
        self.nonce_tpm = nonce_tpm


def extend(pcr, digest=b"\x01" * 32):
    return u32(1) + u16(SHA256) + digest


def read16(execute):
    return params(execute(cmd(0x17E, pcr_select((SHA256, [16, 23])))))[4:]


def flush_all(execute):
    """FlushContext every loaded session (listed by GetCapability)."""
    body = params(execute(cmd(0x17A, u32(1) + u32(0x02000000) + u32(64))))
    count = struct.unpack(">I", body[5:9])[0]
    for i in range(count):
        handle = struct.unpack(">I", body[9 + 4 * i:13 + 4 * i])[0]
        assert rc(execute(cmd(0x165, u32(handle)))) == 0


def both():
    ctpm = Tpm.manufacture(seed=b"sessions")
    sw = Swtpm()
    for t in (ctpm.execute, sw.execute):
        assert rc(t(STARTUP_CLEAR)) == 0
    return ctpm, sw


@needs_swtpm
@pytest.mark.swtpm
@pytest.mark.parametrize("bind", [RH_NULL, 23], ids=["unbound", "bound-to-pcr23"])
def test_hmac_authorized_commands_as_swtpm(bind):
    ctpm, sw = both()
    try:
        results = []
        for execute in (ctpm.execute, sw.execute):
            c = Client(execute, bind=bind)
            codes = [rc(c.command(0x182, [16], extend(16)))]
            codes.append(rc(c.command(0x182, [16], extend(16, b"\x02" * 32))))
            codes.append(rc(c.command(0x182, [16], extend(16), tamper=True)))
            codes.append(rc(c.command(0x182, [16], extend(16))))         # nonces still in step
            codes.append(rc(c.command(0x13D, [16], b"", attrs=0x00)))    # ends the session
            codes.append(rc(c.command(0x182, [16], extend(16))))         # gone: REFERENCE_S0
            results.append((codes, read16(execute)))
        assert results[0] == results[1]
        assert results[0][0] == [0, 0, 0x9A2, 0, 0, 0x918]
    finally:
        sw.close()


START_ERRORS = {
    "nonce-too-short": start_session(nonce=b"\x11" * 15),
    "salt-without-key": start_session(salt=b"\x01" * 16),
    "aes-not-cfb": start_session(sym=u16(AES) + u16(128) + u16(CTR)),
    "aes-64-bits": start_session(sym=u16(AES) + u16(64) + u16(CFB)),
    "bad-session-type": start_session(se=2),
    "hash-null": start_session(auth_hash=NULL),
    "tpmkey-not-loaded": start_session(tpm_key=0x80000000),
    "bind-not-loaded": start_session(bind=0x80000001),
    "bind-not-an-entity": start_session(bind=0x40000002),
    "bind-nv-undefined": start_session(bind=0x01000000),
    "xor-sha256": start_session(sym=u16(XOR) + u16(SHA256)),
    "policy": start_session(se=SE_POLICY),
    "trial": start_session(se=SE_TRIAL),
    "with-password-session": cmd(0x176, b2(b"\x11" * 16) + b2(b"") + b"\0" + u16(NULL)
                                 + u16(SHA256), handles=[RH_NULL, RH_NULL],
                                 sessions=[pw_session()]),
}


@needs_swtpm
@pytest.mark.swtpm
def test_session_errors_as_swtpm():
    ctpm, sw = both()
    try:
        mismatches = []

        def compare(name, c):
            a, b = ctpm.execute(c), sw.execute(c)
            if rc(a) != rc(b) or (rc(a) == 0) != (rc(b) == 0):
                mismatches.append(f"{name}: ctpm {rc(a):#x} swtpm {rc(b):#x}")
            return a, b

        for name, c in START_ERRORS.items():
            compare(name, c)
        for execute in (ctpm.execute, sw.execute):
            flush_all(execute)      # swtpm holds only 3 loaded sessions
        # sessions in a session area that cannot be used there
        for name, se, attrs in (("trial-in-area", SE_TRIAL, 0x01),
                                ("decrypt-no-tpm2b", SE_HMAC, 0x21),
                                ("encrypt-symmetric-null", SE_HMAC, 0x41),
                                ("policy-for-a-pcr", SE_POLICY, 0x01)):
            handles = []
            for execute in (ctpm.execute, sw.execute):
                r = execute(start_session(se=se))
                assert rc(r) == 0, (name, execute, hex(rc(r)))
                handles.append(struct.unpack(">I", r[10:14])[0])
            assert handles[0] == handles[1]
            session = struct.pack(">I", handles[0]) + b2(b"\x22" * 32) + bytes([attrs]) + b2(b"")
            code = 0x17B if attrs & 0x40 else 0x182
            body = u16(8) if code == 0x17B else extend(16)
            compare(name, cmd(code, body, handles=[16] if code == 0x182 else [],
                              sessions=[session]))
            for execute in (ctpm.execute, sw.execute):
                flush_all(execute)
        compare("flush-unknown", cmd(0x165, u32(0x02000010)))
        compare("flush-not-a-context", cmd(0x165, u32(0x01000000)))
        compare("flush-with-sessions", cmd(0x165, u32(0x02000000), sessions=[pw_session()]))
        compare("session-twice", cmd(0x182, extend(16), handles=[16], sessions=[
            struct.pack(">I", 0x02000000) + b2(b"\x22" * 32) + b"\x01" + b2(b""),
            struct.pack(">I", 0x02000000) + b2(b"\x22" * 32) + b"\x01" + b2(b"")]))
        assert not mismatches, "\n".join(mismatches)
    finally:
        sw.close()


def test_session_limit_is_configurable_and_reported():
    tpm = Tpm.manufacture(seed=b"limit", config=EngineConfig(max_sessions=8))
    assert rc(tpm.execute(STARTUP_CLEAR)) == 0
    handles = []
    for _ in range(8):
        r = tpm.execute(start_session())
        assert rc(r) == 0
        handles.append(struct.unpack(">I", r[10:14])[0])
    assert handles == [0x02000000 + i for i in range(8)]
    assert rc(tpm.execute(start_session())) == 0x903             # TPM_RC_SESSION_MEMORY
    assert rc(tpm.execute(cmd(0x165, u32(handles[3])))) == 0
    r = tpm.execute(start_session(se=SE_POLICY))
    assert struct.unpack(">I", r[10:14])[0] == 0x03000003         # the freed slot, policy range
    r = tpm.execute(cmd(0x17A, u32(1) + u32(0x02000000) + u32(20)))
    body = params(r)
    assert struct.unpack(">I", body[5:9])[0] == 8                   # 8 loaded sessions listed


def test_default_limit_is_64_loaded_sessions():
    tpm = Tpm.manufacture(seed=b"limit64")
    tpm.execute(STARTUP_CLEAR)
    codes = [rc(tpm.execute(start_session())) for _ in range(65)]
    assert codes[:64] == [0] * 64 and codes[64] == 0x903


def test_sessions_do_not_survive_a_reset():
    tpm = Tpm.manufacture(seed=b"reset")
    tpm.execute(STARTUP_CLEAR)
    c = Client(tpm.execute)
    assert rc(c.command(0x182, [16], extend(16))) == 0
    tpm.power_off()
    tpm.power_on()
    tpm.execute(STARTUP_CLEAR)
    assert rc(c.command(0x182, [16], extend(16))) == 0x918        # TPM_RC_REFERENCE_S0


@needs_swtpm
@pytest.mark.swtpm
@pytest.mark.parametrize("size", [16, 20, 32])
def test_nonce_tpm_is_as_long_as_nonce_caller(size):
    ctpm, sw = both()
    try:
        lengths = []
        for execute in (ctpm.execute, sw.execute):
            r = execute(start_session(nonce=b"\x11" * size))
            assert rc(r) == 0
            lengths.append(struct.unpack(">H", r[14:16])[0])
        assert lengths == [size, size]
    finally:
        sw.close()
