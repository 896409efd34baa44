"""Every kind of session a client can start survives ContextSave / ContextLoad, as a resource
manager saves each session between commands: HMAC, policy and trial sessions, bound or not,
salted or not, with every session cipher (NULL, XOR, AES-128/256-CFB, SM4-128-CFB) and every
authHash. Each is saved, loaded, used, saved and loaded again, used again, flushed; a blob of
a flushed session no longer loads.

tpm2-pytss ESAPI (libtss2 3.2) drives the SHA-1/256/384/512 sessions with NULL, XOR and AES
and checks every response HMAC and the parameter encryption itself. It has no SM4 parameter
encryption and no SM3 HMACs, so those sessions are driven by a raw client written here from
Part 1 §19/§21 with hashlib (SM3) and `cryptography` (SM4-CFB).
"""
import hashlib
import hmac
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

try:                                    # cryptography >= 43 keeps CFB among the decrepit modes
    from cryptography.hazmat.decrepit.ciphers.modes import CFB as CFBMode
except ImportError:                     # pragma: no cover
    from cryptography.hazmat.primitives.ciphers.modes import CFB as CFBMode

from ctpm.testing import with_esapi
from tests.tpmcmd import STARTUP_CLEAR, b2, cmd, params, rc, u16, u32

tpm2_pytss = pytest.importorskip("tpm2_pytss")
from tpm2_pytss import ESYS_TR, TSS2_Exception  # noqa: E402
from tpm2_pytss.constants import TPM2_ALG, TPM2_CC, TPM2_RC, TPM2_SE, TPMA_SESSION  # noqa: E402
from tpm2_pytss.types import (TPM2B_MAX_BUFFER, TPM2B_SENSITIVE_CREATE,  # noqa: E402
                              TPML_DIGEST_VALUES, TPML_PCR_SELECTION, TPMT_HA,
                              TPMT_SYM_DEF)

HASHES = {TPM2_ALG.SHA1: "sha1", TPM2_ALG.SHA256: "sha256", TPM2_ALG.SHA384: "sha384",
          TPM2_ALG.SHA512: "sha512"}


def sym_def(spec, auth_hash):
    if spec == "null":
        return TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL)
    if spec == "xor":
        s = TPMT_SYM_DEF(algorithm=TPM2_ALG.XOR)
        s.keyBits.exclusiveOr = auth_hash
        return s
    s = TPMT_SYM_DEF(algorithm=TPM2_ALG.AES)
    s.keyBits.aes = int(spec[3:])
    s.mode.aes = TPM2_ALG.CFB
    return s


def policy_digest(name, *codes_and_auth):
    """PolicyCommandCode(code) / PolicyAuthValue (None) from the zero digest, with hashlib."""
    digest = bytes(hashlib.new(name).digest_size)
    for code in codes_and_auth:
        if code is None:
            digest = hashlib.new(name, digest + u32(TPM2_CC.PolicyAuthValue)).digest()
        else:
            digest = hashlib.new(name, digest + u32(TPM2_CC.PolicyCommandCode) + u32(code)).digest()
    return digest


def salt_keys(esapi):
    rsa = esapi.create_primary(TPM2B_SENSITIVE_CREATE(), "rsa2048:aes128cfb")[0]
    ecc = esapi.create_primary(TPM2B_SENSITIVE_CREATE(), "ecc256:aes128cfb")[0]
    return {"unsalted": ESYS_TR.NONE, "rsa-salt": rsa, "ecc-salt": ecc}


def use(esapi, session, kind, name, step, encrypting):
    """Use the session once; True if what came back is what hashlib says."""
    if kind == TPM2_SE.HMAC:
        # an authorization (PCR 16, empty authValue; ESAPI checks the response HMAC), then
        # TPM2_Hash with the parameter encrypted both ways when the session has a cipher
        esapi.trsess_set_attributes(session, TPMA_SESSION.CONTINUESESSION)
        esapi.pcr_reset(ESYS_TR.PCR16)
        ha = TPMT_HA(hashAlg=TPM2_ALG.SHA256)
        ha.digest.sha256 = bytes([step]) * 32
        esapi.pcr_extend(ESYS_TR.PCR16, TPML_DIGEST_VALUES([ha]), session1=session)
        _, _, values = esapi.pcr_read(TPML_PCR_SELECTION.parse("sha256:16"))
        ok = bytes(values[0]) == hashlib.sha256(bytes(32) + bytes([step]) * 32).digest()
        if not encrypting:
            return ok
        esapi.trsess_set_attributes(session, TPMA_SESSION.CONTINUESESSION
                                    | TPMA_SESSION.DECRYPT | TPMA_SESSION.ENCRYPT)
        out, _ = esapi.hash(TPM2B_MAX_BUFFER(b"secret %d" % step), TPM2_ALG.SHA256,
                            ESYS_TR.NULL, session1=session)
        return ok and bytes(out) == hashlib.sha256(b"secret %d" % step).digest()
    if step == 1:
        esapi.policy_command_code(session, TPM2_CC.Hash)
    else:
        esapi.policy_auth_value(session)
    expected = policy_digest(name, *[TPM2_CC.Hash, None][:step])
    return bytes(esapi.policy_get_digest(session)) == expected


def test_cipher_spec_helpers():
    assert sym_def("aes256", TPM2_ALG.SHA1).keyBits.aes == 256
    assert policy_digest("sha256", None) == hashlib.sha256(bytes(32) + u32(0x16B)).digest()


@pytest.mark.parametrize("kind", [TPM2_SE.HMAC, TPM2_SE.POLICY, TPM2_SE.TRIAL],
                         ids=["hmac", "policy", "trial"])
async def test_every_session_saved_loaded_used_flushed(ctpm_server, kind):
    def scenario(esapi):
        salts = salt_keys(esapi)
        results = {}
        for auth_hash, name in HASHES.items():
            for spec in ("null", "xor", "aes128", "aes256"):
                for bound in (ESYS_TR.NONE, ESYS_TR.OWNER):
                    for salt_name, salt in salts.items():
                        what = (name, spec, bound == ESYS_TR.OWNER, salt_name)
                        session = esapi.start_auth_session(salt, bound, kind,
                                                           sym_def(spec, auth_hash), auth_hash)
                        esapi.trsess_set_attributes(session, TPMA_SESSION.CONTINUESESSION)
                        checks = []
                        for step in (1, 2):
                            blob = esapi.context_save(session)
                            session = esapi.context_load(blob)
                            checks.append(use(esapi, session, kind, name, step, spec != "null"))
                        blob = esapi.context_save(session)
                        session = esapi.context_load(blob)
                        esapi.flush_context(session)
                        try:
                            esapi.context_load(blob)
                            checks.append("flushed blob loaded")
                        except TSS2_Exception as e:
                            checks.append(e.rc == TPM2_RC.HANDLE + TPM2_RC.P + TPM2_RC.RC1)
                        results[what] = checks
        return results

    results = await with_esapi(ctpm_server, scenario)
    assert len(results) == 4 * 4 * 2 * 3
    assert {k: v for k, v in results.items() if v != [True, True, True]} == {}


# -- SM4 and SM3_256, which ESAPI cannot drive: a raw client --------------------------------

SM3, SHA256, SM4, AES, XOR, NULL, CFB = 0x12, 0x0B, 0x13, 0x06, 0x0A, 0x10, 0x43
RH_NULL, RH_OWNER, PCR16 = 0x40000007, 0x40000001, 16
HASH_NAMES = {SM3: "sm3", SHA256: "sha256"}


def kdfa(name, key, label, u, v, bits):
    out, i = b"", 1
    while len(out) * 8 < bits:
        out += hmac.new(key, u32(i) + label + b"\0" + u + v + u32(bits), name).digest()
        i += 1
    return out[:(bits + 7) // 8]


class RawSession:
    """One session driven as Part 1 §19 says, with SM3 or SHA-256 and SM4, AES, XOR or no
    parameter encryption."""

    def __init__(self, execute, se, auth_hash, sym, bind):
        self.execute, self.se, self.auth_hash, self.sym = execute, se, auth_hash, sym
        self.name = HASH_NAMES[auth_hash]
        size = hashlib.new(self.name).digest_size
        self.nonce_caller = b"\x5a" * size
        sym_bytes = u16(sym) + (u16(128) + u16(CFB) if sym in (SM4, AES) else
                                u16(auth_hash) if sym == XOR else b"")
        r = execute(cmd(0x176, b2(self.nonce_caller) + b2(b"") + bytes([se]) + sym_bytes
                        + u16(auth_hash), handles=[RH_NULL, bind]))
        assert rc(r) == 0, hex(rc(r))
        self.handle = struct.unpack(">I", r[10:14])[0]
        self.nonce_tpm = r[16:16 + size]
        # bound to the owner (empty authValue) or unbound, unsalted: key from nothing or ""
        self.key = (kdfa(self.name, b"", b"ATH", self.nonce_tpm, self.nonce_caller, size * 8)
                    if bind != RH_NULL else b"")

    def _crypt(self, data, newer, older, encrypt):
        if self.sym == XOR:
            mask = kdfa(self.name, self.key, b"XOR", newer, older, len(data) * 8)
            return bytes(a ^ b for a, b in zip(data, mask))
        material = kdfa(self.name, self.key, b"CFB", newer, older, 256)
        alg = algorithms.SM4 if self.sym == SM4 else algorithms.AES
        c = Cipher(alg(material[:16]), CFBMode(material[16:]))
        op = c.encryptor() if encrypt else c.decryptor()
        return op.update(data) + op.finalize()

    def pcr_event(self, data):
        """TPM2_PCR_Event(PCR 16) authorized by the session, the event data encrypted when the
        session has a cipher; returns the SHA-256 digest of the event after checking the
        response HMAC (cpHash and rpHash cover the parameters as sent, Part 1 §19.6.5)."""
        attrs = 0x01 | (0x20 if self.sym != NULL else 0)
        self.nonce_caller = hashlib.new(self.name, self.nonce_caller).digest()
        sent = data if self.sym == NULL else self._crypt(data, self.nonce_caller,
                                                           self.nonce_tpm, True)
        body = b2(sent)
        cp = hashlib.new(self.name, u32(0x13C) + u32(PCR16) + body).digest()
        mac = hmac.new(self.key, cp + self.nonce_caller + self.nonce_tpm + bytes([attrs]),
                       self.name).digest()
        r = self.execute(cmd(0x13C, body, handles=[PCR16],
                             sessions=[u32(self.handle) + b2(self.nonce_caller)
                                       + bytes([attrs]) + b2(mac)]))
        assert rc(r) == 0, hex(rc(r))
        out = params(r)
        auth = r[14 + len(out):]
        n = struct.unpack(">H", auth[:2])[0]
        self.nonce_tpm = auth[2:2 + n]
        rp = hashlib.new(self.name, u32(0) + u32(0x13C) + out).digest()
        expect = hmac.new(self.key, rp + self.nonce_tpm + self.nonce_caller + bytes([attrs]),
                          self.name).digest()
        assert auth[2 + n] == attrs and auth[5 + n:] == expect, "response HMAC does not verify"
        digests, i = {}, 4
        for _ in range(struct.unpack(">I", out[:4])[0]):
            alg = struct.unpack(">H", out[i:i + 2])[0]
            size = {0x04: 20, 0x0B: 32, 0x0C: 48, 0x0D: 64, 0x12: 32}[alg]
            digests[alg] = out[i + 2:i + 2 + size]
            i += 2 + size
        return digests[SHA256]

    def policy_step(self, step):
        """PolicyCommandCode(Hash), then PolicyAuthValue; the policyDigest after it."""
        r = self.execute(cmd(0x16C, u32(0x17D), handles=[self.handle]) if step == 1 else
                         cmd(0x16B, handles=[self.handle]))
        assert rc(r) == 0, hex(rc(r))
        return params(self.execute(cmd(0x189, handles=[self.handle])))[2:]

    def save_load(self):
        r = self.execute(cmd(0x162, handles=[self.handle]))
        assert rc(r) == 0, hex(rc(r))
        blob = params(r)
        r = self.execute(cmd(0x161, blob))
        assert rc(r) == 0 and struct.unpack(">I", params(r)[:4])[0] == self.handle, hex(rc(r))
        return blob


@pytest.mark.parametrize("se", [0, 1, 3], ids=["hmac", "policy", "trial"])
@pytest.mark.parametrize("auth_hash,sym", [(SM3, NULL), (SM3, XOR), (SM3, AES), (SM3, SM4),
                                           (SHA256, SM4)],
                         ids=["sm3-null", "sm3-xor", "sm3-aes128", "sm3-sm4", "sha256-sm4"])
@pytest.mark.parametrize("bind", [RH_NULL, RH_OWNER], ids=["unbound", "bound"])
def test_sm3_and_sm4_sessions_saved_loaded_used_flushed(ctpm_started_tpm, se, auth_hash, sym,
                                                        bind):
    execute = ctpm_started_tpm.execute
    s = RawSession(execute, se, auth_hash, sym, bind)
    name = HASH_NAMES[auth_hash]
    for step in (1, 2):
        s.save_load()
        if se == 0:
            data = b"secret %d" % step
            assert s.pcr_event(data) == hashlib.sha256(data).digest()
        else:
            assert s.policy_step(step) == policy_digest(name, *[0x17D, None][:step])
    blob = s.save_load()
    assert rc(execute(cmd(0x165, u32(s.handle)))) == 0
    assert rc(execute(cmd(0x161, blob))) == 0x1CB          # TPM_RC_HANDLE, parameter 1
    assert rc(execute(STARTUP_CLEAR)) == 0x100            # still running: TPM_RC_INITIALIZE
