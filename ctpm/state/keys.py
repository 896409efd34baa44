"""The key that encrypts a state directory: AES-256-GCM, from a key file, a file descriptor
or a passphrase (scrypt, its parameters kept in the state's header).

A key check value in the header (HMAC of the state key over a fixed label) tells a wrong
key from damaged records, so that a wrong key or passphrase is one clear line.
"""
import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import StoreError

CIPHER = "AES-256-GCM"
KEY_SIZE = 32
NONCE_SIZE = 12
# scrypt with N=2^15, r=8: 32 MiB and about 0.1 s per derivation (RFC 7914's interactive
# choice, doubled); p=1. Stored in the header, so stronger settings later still open old
# states.
SCRYPT = {"n": 1 << 15, "r": 8, "p": 1}
MAX_PASSPHRASE = 4096


class StateKey:
    """A raw 256-bit key, or a passphrase whose key is derived with the header's salt."""

    def __init__(self, *, key: bytes | None = None, passphrase: bytes | None = None,
                 source: str = "key"):
        if (key is None) == (passphrase is None):
            raise ValueError("a key or a passphrase")
        self.source = source
        self._passphrase = passphrase
        self._key = key
        self._kdf = None
        self._gcm = None                # (key, AESGCM of it), see _aead
        self.alternatives = []          # [(key, adopt)]: tpmkey's half-finished rekey
        self.committed = None           # called once a rekey to this key is durable
        if key is not None and len(key) != KEY_SIZE:
            raise StoreError(f"{source}: a state key is {KEY_SIZE} bytes (or 64 hex digits)")

    # -- where keys come from ------------------------------------------------------------

    @classmethod
    def from_bytes(cls, data: bytes, source: str):
        """32 raw bytes, or 64 hex digits (a trailing newline allowed)."""
        if len(data) == KEY_SIZE:
            return cls(key=data, source=source)
        text = data.strip()
        try:
            key = bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            key = b""
        if len(key) != KEY_SIZE:
            raise StoreError(f"{source}: a state key is {KEY_SIZE} raw bytes or 64 hex digits")
        return cls(key=key, source=source)

    @classmethod
    def from_file(cls, path: str):
        try:
            with open(path, "rb") as f:
                data = f.read(256)
        except OSError as e:
            raise StoreError(f"state key file {path}: {e.strerror}") from None
        return cls.from_bytes(data, f"state key file {path}")

    @classmethod
    def from_fd(cls, fd: int, *, passphrase: bool = False):
        what = f"{'passphrase' if passphrase else 'state key'} fd {fd}"
        try:
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read(MAX_PASSPHRASE + 1)
        except OSError as e:
            raise StoreError(f"{what}: {e.strerror}") from None
        if not passphrase:
            return cls.from_bytes(data, what)
        data = data.rstrip(b"\r\n")
        if not data or len(data) > MAX_PASSPHRASE:
            raise StoreError(f"{what}: empty or longer than {MAX_PASSPHRASE} bytes")
        return cls(passphrase=data, source=what)

    @classmethod
    def from_tpm(cls, tcti: str, pcrs: str | None, state_dir: str, *, new=False):
        """The key sealed to the TPM at `tcti` (state/tpmkey.py): unsealed from
        DIR/state-key.tpm, or - for a new state, or `new` (a rekey) - a fresh key sealed now
        (a rekey's in state-key.tpm.new until `committed()`)."""
        from . import tpmkey
        path = os.path.join(state_dir, tpmkey.SEALED)
        source = f"state key sealed to TPM {tcti}"
        sealed = tpmkey.read_sealed(path)
        if sealed is not None and not new:
            if pcrs is not None and pcrs != sealed.get("pcrs"):
                raise StoreError(f"the state key in {path} is sealed to PCRs "
                                 f"{sealed.get('pcrs')}, not {pcrs} (rekey to change them)")
            key = cls(key=tpmkey.unseal(tcti, sealed, path), source=source)
            pending = tpmkey.read_sealed(path + ".new")
            if pending is not None:     # a rekey stopped before its last rename
                def adopt():
                    os.replace(path + ".new", path)
                try:
                    key.alternatives.append((tpmkey.unseal(tcti, pending, path + ".new"),
                                             adopt))
                except StoreError:
                    pass
            return key
        if not new and os.path.exists(os.path.join(state_dir, "nv.snap")):
            raise StoreError(f"the TPM state in {state_dir} has no sealed state key "
                             f"({tpmkey.SEALED}): move it to the TPM with `ctpm state rekey "
                             f"--state {state_dir} [its key] --new-state-key-tpm {tcti}`")
        data = os.urandom(KEY_SIZE)
        sealed = tpmkey.seal(tcti, pcrs or tpmkey.DEFAULT_PCRS, data)
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        key = cls(key=data, source=source)
        if new:
            tpmkey.write_sealed(path + ".new", sealed)
            key.committed = lambda: os.replace(path + ".new", path)
        else:
            tpmkey.write_sealed(path, sealed)
        return key

    @classmethod
    def from_passphrase_file(cls, path: str):
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_PASSPHRASE + 1).rstrip(b"\r\n")
        except OSError as e:
            raise StoreError(f"passphrase file {path}: {e.strerror}") from None
        if not data or len(data) > MAX_PASSPHRASE:
            raise StoreError(f"passphrase file {path}: empty or longer than {MAX_PASSPHRASE} "
                             f"bytes")
        return cls(passphrase=data, source=f"passphrase file {path}")

    # -- the header ----------------------------------------------------------------------

    def header(self) -> dict:
        """What a new state's header says about its encryption (derives the key first)."""
        if self._key is None:
            self._kdf = dict(SCRYPT, name="scrypt", salt=os.urandom(16).hex())
            self._key = _scrypt(self._passphrase, self._kdf)
        return {"alg": CIPHER, "kdf": self._kdf, "check": self._check_value().hex()}

    def unlock(self, cipher: dict, where: str):
        """Derive (passphrase) and verify the key against a state's header."""
        try:
            if cipher["alg"] != CIPHER:
                raise StoreError(f"TPM state in {where}: unknown cipher {cipher['alg']!r}")
            kdf = cipher.get("kdf")
            check = bytes.fromhex(cipher["check"])
        except (KeyError, TypeError, ValueError):
            raise StoreError(f"TPM state in {where} is damaged (bad encryption header)") from None
        if kdf and self._passphrase is None:
            raise StoreError(f"TPM state in {where} is encrypted with a passphrase, not a key")
        if not kdf and self._passphrase is not None:
            raise StoreError(f"TPM state in {where} is encrypted with a key, not a passphrase")
        if kdf:
            try:
                self._key = _scrypt(self._passphrase, kdf)
            except (KeyError, TypeError, ValueError, MemoryError):
                raise StoreError(f"TPM state in {where} is damaged (bad KDF parameters)") \
                    from None
            self._kdf = kdf
        if not kdf and not hmac.compare_digest(check, self._check_value()):
            for key, adopt in self.alternatives:
                if hmac.compare_digest(check, _check_value(key)):
                    self._key = key
                    adopt()
                    break
        if not hmac.compare_digest(check, self._check_value()):
            what = "passphrase" if kdf else "key"
            raise StoreError(f"wrong state {what} for {where} ({self.source})")

    def _check_value(self) -> bytes:
        return _check_value(self._key)

    # -- records -------------------------------------------------------------------------

    def _aead(self) -> AESGCM:
        """The cipher of the current key, kept (building one costs more than sealing a
        record); a new one when the key changes (unlock, a passphrase's KDF)."""
        gcm = self._gcm
        if gcm is None or gcm[0] is not self._key:
            gcm = self._gcm = (self._key, AESGCM(self._key))
        return gcm[1]

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead().encrypt(nonce, plaintext, aad)

    def open(self, payload: bytes, aad: bytes, where: str, name: str, seq: int) -> bytes:
        try:
            return self._aead().decrypt(payload[:NONCE_SIZE], payload[NONCE_SIZE:], aad)
        except (InvalidTag, ValueError):
            raise StoreError(f"TPM state in {where}: record {seq} of {name} fails "
                             f"authentication (moved, replayed or altered)") from None


def _check_value(key: bytes) -> bytes:
    return hmac.new(key, b"ctpm state key check", hashlib.sha256).digest()[:16]


def _scrypt(passphrase: bytes, kdf: dict) -> bytes:
    if kdf.get("name") != "scrypt":
        raise ValueError("unknown KDF")
    salt = bytes.fromhex(kdf["salt"])
    n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
    return hashlib.scrypt(passphrase, salt=salt, n=n, r=r, p=p, maxmem=256 * n * r + (1 << 20),
                          dklen=KEY_SIZE)


def key_from_config(config):
    """The `StateKey` a `ctpm.config.Config` names, or None (read once, before serving)."""
    if getattr(config, "state_key", None) is not None:
        return StateKey.from_file(config.state_key)
    if getattr(config, "state_key_fd", None) is not None:
        return StateKey.from_fd(config.state_key_fd)
    if getattr(config, "state_passphrase_fd", None) is not None:
        return StateKey.from_fd(config.state_passphrase_fd, passphrase=True)
    if getattr(config, "state_passphrase_file", None) is not None:
        return StateKey.from_passphrase_file(config.state_passphrase_file)
    if getattr(config, "state_key_tpm", None) is not None:
        return StateKey.from_tpm(config.state_key_tpm, config.state_key_tpm_pcrs,
                                 config.state_dir)
    return None
