"""The passthrough mode: a guarded path to a (hardware) TPM.

Commands the guard (guard.py) lets through go to the upstream byte for byte, over one
connection of this instance's own, and the upstream's bytes are the answer. swtpm, mssim and
device upstreams are spoken to directly over a connection kept open (`RawUpstream`); other
TCTI strings (`tabrmd:...`, library names) go through tpm2-pytss's TCTI loader (`Upstream`).
A command is transmitted in the event loop and its answer taken when the connection is
readable (looked for 50 us without sleeping, then awaited in the event loop; the swtpm
fast path polls up to 2 ms), under a deadline; connecting through the loader runs in a
worker thread. The upstream's own failures become response codes and the connection is
opened again for the next command, so a guest never hangs:

* the upstream cannot be reached (nothing was sent): TPM_RC_RETRY (0x922), send it again;
* it failed after the command went out (connection lost, TCTI error, no answer within
  `upstream_timeout`, a malformed answer): TPM_RC_FAILURE (0x101): the outcome is unknown.

With `anchor`, the instance binds the upstream to the SNP report of the CVM it runs in: at
boot it makes the upstream's RSA EK (TCG template L-1) and ctpm's AK (identity.py), both
primaries of the endorsement hierarchy (so any client re-creates them with the same
templates; neither is left loaded), proves the AK is on the EK's TPM by credential
activation (credential.py), reads the vendor's EK certificate, and serves the NV
request/evidence pair of the ephemeral mode itself, on top of the upstream: NV_Write of
0x01400002, NV_Read and NV_ReadPublic of 0x01400001 and 0x01400002 are answered by ctpm and
never reach the upstream (`_serve_nv`, keeping the guest's HMAC sessions in step with it).
"""
import hashlib
import hmac
import logging
import os
import struct

from .guard import CC as GUARD_CC, Guard, Policy, response
from .tpmclient import RH_ENDORSEMENT, TpmClient

log = logging.getLogger("ctpm.passthrough")

RC_RETRY, RC_FAILURE, RC_INITIALIZE = 0x922, 0x101, 0x100
RC_HANDLE, RC_AUTH_UNAVAILABLE, RC_NV_RANGE = 0x08B, 0x12F, 0x146
RC_VALUE_P1, RC_VALUE_P2, RC_SIZE_P1 = 0x1C4, 0x2C4, 0x1D5  # TPM_RC_VALUE/SIZE + parameter
PT_NV_BUFFER_MAX = 0x12C        # TPM_PT_NV_BUFFER_MAX
NV_BUFFER_MAX = 1024            # ... when the upstream does not say (libtpms', the reference's)
MAX_RESPONSE = 16384
PIECES_WAIT = 2.0           # seconds a device may take to finish an answer it began
QUICK = 0.002                   # seconds to poll for an answer before awaiting it
SPIN = 0.00005                  # ... in a task (`_forward`): looked for, the loop never sleeps
RC_AUTH_MISSING = 0x125
# TPM_RC_BAD_AUTH + session 1: both served indices are TPMA_NV_NO_DA and ownerAuth is outside
# dictionary-attack protection (Part 1 §19.8), so a wrong value is never TPM_RC_AUTH_FAIL
RC_BAD_AUTH = 0x9A2
RC_ATTRIBUTES_S1 = 0x982                           # TPM_RC_ATTRIBUTES + session 1
RS_PW, OWNER = 0x40000009, 0x40000001
EVIDENCE_INDEX, REQUEST_INDEX = 0x01400001, 0x01400002
_NV_WRITTEN = 1 << 29


class UpstreamError(Exception):
    def __init__(self, message, *, sent: bool):
        super().__init__(message)
        self.sent = sent


def _descriptors() -> set:
    try:
        return {int(fd) for fd in os.listdir("/proc/self/fd")}
    except OSError:
        return set()


def _link(fd: int) -> str:
    """What descriptor `fd` is ('socket:[inode]', a path), '' if it is not open."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def _pollable(fd: int) -> bool:
    return _link(fd).startswith("socket:")


class Upstream:
    """One TCTI connection, opened on first use and again after any failure. Synchronous:
    called from worker threads, one call at a time."""

    def __init__(self, tcti: str, timeout: float):
        self.tcti = tcti
        self.timeout = timeout
        self._ctx = None
        self._locality = 0
        self.reconnects = 0
        self._hint = None

    def _open(self):
        from tpm2_pytss import TCTILdr
        before = _descriptors()
        try:
            self._ctx = TCTILdr.parse(self.tcti)
        except Exception as e:
            raise UpstreamError(f"cannot open {self.tcti}: {e}", sent=False) from None
        self._locality = 0
        self.reconnects += 1
        self.fd = None
        try:        # the fd to wait on in the event loop (no worker thread per command)
            handles = self._ctx.get_poll_handles()
            if len(handles) == 1:
                self.fd = handles[0].fd
        except Exception:
            # Not passed on by mssim and swtpm (whose receive timeouts are not implemented
            # either: a receive blocks until the answer). mssim opens its command socket,
            # then its platform socket, at start: the lower new descriptor is the one to poll.
            # swtpm connects anew for every command: `send` finds its socket each time (a
            # new socket, usually on the descriptor the last one had).
            new = sorted(fd for fd in _descriptors() - before if _pollable(fd))
            if self.tcti.partition(":")[0] == "mssim" and len(new) == 2:
                self.fd = new[0]

    @property
    def connected(self) -> bool:
        return self._ctx is not None

    def drop(self):
        self.fd = None
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            try:
                ctx.close()
            except Exception:   # a dead connection may fail to close: it is gone either way
                pass

    fd = None

    def call(self, command: bytes, locality: int = 0) -> bytes:
        """Send and receive, blocking (a worker thread's way)."""
        self.send(command, locality)
        return self.receive(self.timeout)

    def send(self, command: bytes, locality: int = 0) -> int | None:
        """Transmit; returns the descriptor the answer will be readable on, if known (a
        TCTI that connects for each command, as swtpm's: the one new socket)."""
        if self._ctx is None:
            self._open()
        ctx = self._ctx
        hint = before = None
        if self.fd is None:
            if self._hint is not None:
                hint = (self._hint, _link(self._hint))
            else:
                before = {fd: _link(fd) for fd in _descriptors()}
        try:
            if locality != self._locality:
                try:
                    ctx.set_locality(locality)
                    self._locality = locality
                except Exception as e:      # the device TCTI has no localities
                    log.debug("upstream locality %d: %s", locality, e)
            ctx.transmit(bytes(command))
        except Exception as e:
            self.drop()
            raise UpstreamError(f"transmit: {e}", sent=True) from None
        if self.fd is not None:
            return self.fd
        if hint is not None:        # the descriptor the last command's socket had
            fd, link = hint
            now = _link(fd)
            if now.startswith("socket:") and now != link:
                return fd
            self._hint = None       # look everywhere next time
            return None
        new = [fd for fd in _descriptors() if _link(fd).startswith("socket:")
               and _link(fd) != before.get(fd)]
        self._hint = new[0] if len(new) == 1 else None
        return self._hint

    def receive(self, timeout: float) -> bytes:
        """The response (`timeout` is passed on; mssim and swtpm TCTIs ignore it, so it is
        called in the event loop only once the fd is readable)."""
        try:
            rsp = bytes(self._ctx.receive(MAX_RESPONSE, int(timeout * 1000)))
        except Exception as e:
            self.drop()
            raise UpstreamError(f"receive: {e}", sent=True) from None
        if len(rsp) < 10 or struct.unpack(">I", rsp[2:6])[0] != len(rsp):
            self.drop()
            raise UpstreamError(f"malformed response of {len(rsp)} bytes", sent=True)
        return rsp


def _tcti_options(conf: str) -> dict:
    """'host=H,port=P' / 'path=P' / a bare path -> {key: value} (the TCTI's own syntax)."""
    out = {}
    for part in filter(None, conf.split(",")):
        key, eq, value = part.partition("=")
        if eq:
            out[key.strip()] = value.strip()
        else:
            out["path"] = part.strip()
    return out


class RawUpstream:
    """The swtpm, mssim and device protocols spoken directly over one connection kept open
    (the TCTI string parsed as the TCTIs parse it). Through the TCTI loader each command cost
    ~135 us of Python/cffi and, for swtpm, a connection of its own; here ~20 us. Same
    interface as `Upstream`."""

    def __init__(self, tcti: str, timeout: float):
        self.tcti = tcti
        self.timeout = timeout
        self.kind, _, conf = tcti.partition(":")
        self.options = _tcti_options(conf)
        self._ctx = None            # the socket (swtpm, mssim) or the device's descriptor
        self.fd = None
        self.reconnects = 0
        self._locality = 0

    @classmethod
    def supports(cls, tcti: str) -> bool:
        kind, _, conf = tcti.partition(":")
        known = {"swtpm": {"path", "host", "port"}, "mssim": {"host", "port"},
                 "device": {"path"}}.get(kind)
        return known is not None and set(_tcti_options(conf)) <= known

    @property
    def connected(self) -> bool:
        return self._ctx is not None

    def _connect(self, port_offset=0):
        import socket
        o = self.options
        if "path" in o and self.kind == "swtpm":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            where = o["path"] + (".ctrl" if port_offset else "")
        else:
            host, port = o.get("host", "localhost"), int(o.get("port", 2321)) + port_offset
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                 socket.SOCK_STREAM)
            where = (host, port)
        sock.settimeout(self.timeout)
        try:
            sock.connect(where)
        except OSError:
            sock.close()
            raise
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _platform(self, *signals):
        """mssim platform signals (what the mssim TCTI sends when it connects: power on, NV
        on), each acknowledged with a zero."""
        sock = self._connect(1)
        try:
            for sig in signals:
                sock.sendall(struct.pack(">I", sig))
                if _exact(sock, 4) != bytes(4):
                    raise OSError(f"platform signal {sig} refused")
        finally:
            sock.close()

    def _open(self):
        try:
            if self.kind == "device":
                self._ctx = os.open(self.options.get("path", "/dev/tpm0"), os.O_RDWR)
                self.fd = self._ctx
            else:
                if self.kind == "mssim":
                    self._platform(1, 11)                 # POWER_ON, NV_ON
                self._ctx = self._connect()
                self.fd = self._ctx.fileno()
        except (OSError, ValueError) as e:
            raise UpstreamError(f"cannot open {self.tcti}: {e}", sent=False) from None
        self._locality = 0
        self.reconnects += 1

    def drop(self):
        ctx, self._ctx, self.fd = self._ctx, None, None
        if ctx is None:
            return
        try:
            if isinstance(ctx, int):
                os.close(ctx)
            else:
                ctx.close()
        except OSError:
            pass

    def call(self, command: bytes, locality: int = 0) -> bytes:
        self.send(command, locality)
        return self.receive(self.timeout)

    def send(self, command: bytes, locality: int = 0) -> int:
        if self._ctx is None:
            self._open()
        try:
            if self.kind == "device":
                os.write(self._ctx, command)
            elif self.kind == "mssim":
                self._ctx.sendall(struct.pack(">IBI", 8, locality, len(command)) + command)
            else:
                if locality != self._locality:
                    self._set_locality(locality)
                self._send(command)
        except OSError as e:
            self.drop()
            raise UpstreamError(f"transmit: {e}", sent=True) from None
        return self.fd

    def _read_device(self, timeout: float) -> bytes:
        rsp = os.read(self._ctx, MAX_RESPONSE)
        if len(rsp) >= 10 and struct.unpack(">I", rsp[2:6])[0] == len(rsp):
            return rsp                              # whole, as the kernel's devices answer
        return _device_rest(self._ctx, rsp, timeout)

    # A socket with a timeout polls before every send and receive; the first attempt here
    # goes to the (non-blocking) descriptor directly, the socket call only waits for the rest.

    def _send(self, command: bytes):
        try:
            sent = os.write(self.fd, command)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent < len(command):
            self._ctx.sendall(command[sent:])

    def _recv(self) -> bytes:
        try:
            return os.read(self.fd, MAX_RESPONSE)
        except (BlockingIOError, InterruptedError):
            return self._ctx.recv(MAX_RESPONSE)

    def _set_locality(self, locality):
        """swtpm's control channel: CMD_SET_LOCALITY (a failure is logged, as the device has
        no localities either)."""
        try:
            sock = self._connect(1)
            try:
                sock.sendall(struct.pack(">IB", 11, locality))
                _exact(sock, 4)
            finally:
                sock.close()
            self._locality = locality
        except OSError as e:
            log.debug("upstream locality %d: %s", locality, e)

    def receive(self, timeout: float) -> bytes:
        try:
            if self.kind == "device":
                rsp = self._read_device(timeout)
            elif self.kind == "mssim":
                size = struct.unpack(">I", _exact(self._ctx, 4))[0]
                if size > MAX_RESPONSE:
                    raise OSError(f"a response of {size} bytes")
                rsp = _exact(self._ctx, size + 4)[:size]
            else:           # usually whole in one read: one system call, not two
                rsp = self._recv()
                if len(rsp) < 10:
                    rsp += _exact(self._ctx, 10 - len(rsp))
                size = int.from_bytes(rsp[2:6], "big")
                if size == len(rsp) and size <= MAX_RESPONSE:
                    return rsp                      # whole (10 bytes at least)
                if not 10 <= size <= MAX_RESPONSE or len(rsp) > size:
                    raise OSError(f"a response of {size} bytes, {len(rsp)} read")
                rsp += _exact(self._ctx, size - len(rsp))
        except OSError as e:
            self.drop()
            raise UpstreamError(f"receive: {e}", sent=True) from None
        if len(rsp) < 10 or struct.unpack(">I", rsp[2:6])[0] != len(rsp):
            self.drop()
            raise UpstreamError(f"malformed response of {len(rsp)} bytes", sent=True)
        return rsp


def _device_rest(fd: int, rsp: bytes, timeout: float) -> bytes:
    """The rest of a response a device gave in pieces. The kernel's TPM devices answer whole
    in one read; a device that does not (a tty or CUSE stand-in, a driver bug) gets
    `timeout` (at most PIECES_WAIT: the pieces of one answer follow each other at once, and
    this wait holds the event loop) to finish the response its header announces."""
    import select
    import time
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    deadline = time.monotonic() + min(timeout, PIECES_WAIT)
    while len(rsp) < 10 or len(rsp) < struct.unpack(">I", rsp[2:6])[0]:
        if len(rsp) >= 6 and not 10 <= struct.unpack(">I", rsp[2:6])[0] <= MAX_RESPONSE:
            break                                   # malformed: the caller says so
        left = deadline - time.monotonic()
        if left <= 0 or not poll.poll(left * 1000):
            raise OSError(f"a partial response ({len(rsp)} bytes) and no more")
        more = os.read(fd, MAX_RESPONSE - len(rsp))
        if not more:
            raise OSError(f"the device closed after {len(rsp)} bytes of a response")
        rsp += more
    return rsp


def _readable(fd: int, spin: float = SPIN) -> bool:
    """Whether the answer on `fd` is there within `spin` seconds, looked for without
    sleeping: a sleep in the kernel, however short, holds the event loop, and on a busy
    machine the process may not get a CPU back for milliseconds. SPIN catches the
    upstream's quick answers (GetRandom, PCR_Read), which the loop's own wait would make
    ~10% slower over mssim (bench/passthrough.py --mssim)."""
    import select
    import time
    poll = select.poll()
    try:
        poll.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
        end = time.perf_counter() + spin
        while not poll.poll(0):
            if time.perf_counter() >= end:
                return False
        return True
    except (OSError, ValueError):
        return False            # closed under us: `receive` or `_wait` says what happened


def _exact(sock, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise OSError("the upstream closed the connection")
        out += chunk
    return out


def open_upstream(config):
    """`RawUpstream` for swtpm, mssim and device TCTI strings it can read, else the TCTI
    loader (`Upstream`); `[passthrough] tcti_loader = true` always takes the loader."""
    if not getattr(config, "upstream_tcti_loader", False) and RawUpstream.supports(
            config.upstream):
        return RawUpstream(config.upstream, config.upstream_timeout)
    return Upstream(config.upstream, config.upstream_timeout)


def _crypt(symmetric, hash_id: int, key: bytes, nonce_newer: bytes, nonce_older: bytes,
           data: bytes, encrypt: bool) -> bytes:
    """Session parameter encryption (Part 1 §21) with an unsalted, unbound session, whose
    sessionKey is empty: the key is the entity's authValue alone. `nonce_newer` is the
    sender's nonce (nonceCaller for a command, nonceTPM for a response). AES-CFB or XOR."""
    from ..crypto.kdf import kdfa
    if symmetric[0] == "xor":
        mask = kdfa(hash_id, key, b"XOR", nonce_newer, nonce_older, 8 * len(data))
        return bytes(a ^ b for a, b in zip(data, mask))
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    bits = symmetric[1]
    material = kdfa(hash_id, key, b"CFB", nonce_newer, nonce_older, bits + 128)
    cipher = Cipher(algorithms.AES(material[:bits // 8]), modes.CFB(material[bits // 8:]))
    op = cipher.encryptor() if encrypt else cipher.decryptor()
    return op.update(data) + op.finalize()


def _handle_counts(client_call) -> tuple[dict, frozenset]:
    """({command code: handles in its handle area}, {codes whose response has a handle})
    from the upstream's TPMA_CC list."""
    counts, rhandle, first = {}, set(), 0x11F
    while True:
        rsp = client_call(struct.pack(">HIIIII", 0x8001, 22, 0x17A, 2, first, 256))
        rc = struct.unpack(">I", rsp[6:10])[0]
        if rc:
            raise UpstreamError(f"GetCapability(COMMANDS) answered {rc:#x}", sent=True)
        more, _, count = struct.unpack(">BII", rsp[10:19])
        attrs = struct.unpack(f">{count}I", rsp[19:19 + 4 * count])
        for a in attrs:
            code = a & 0xFFFF | (0x20000000 if a & (1 << 29) else 0)
            counts[code] = a >> 25 & 7
            if a & (1 << 28):
                rhandle.add(code)
        if not more or not attrs:
            return counts, frozenset(rhandle)
        first = (attrs[-1] & 0x2000FFFF) + 1


def read_auth(config, hierarchy: str) -> bytes:
    """The upstream's `hierarchy` ('owner', 'endorsement') authorization value from its file
    or descriptor (read once, the descriptor closed), b'' if none is configured. Errors name
    the source, never the value."""
    path = getattr(config, f"upstream_{hierarchy}_auth_file")
    fd = getattr(config, f"upstream_{hierarchy}_auth_fd")
    try:
        if path is not None:
            with open(path, "rb") as f:
                value = f.read(65)
        elif fd is not None:
            with os.fdopen(fd, "rb", closefd=True) as f:
                value = f.read(65)
        else:
            return b""
    except OSError as e:
        from ..transport.bind import StartupError
        where = path if path is not None else f"descriptor {fd}"
        raise StartupError(f"the upstream's {hierarchy} authorization ({where}): "
                           f"{e.strerror or e}") from None
    if len(value) > 64:
        from ..transport.bind import StartupError
        raise StartupError(f"the upstream's {hierarchy} authorization is longer than 64 "
                           "bytes (a TPM's authValue is at most a digest)")
    return value


class PassthroughBackend:
    """The Backend of the passthrough mode (see the module docstring)."""

    mode = "passthrough"

    def __init__(self, upstream: Upstream, guard: Guard, *, max_command_size=4096):
        import trio
        self.upstream = upstream
        self.guard = guard
        self.max_command_size = max_command_size
        self._slot = trio.Semaphore(1)  # one command at a time on the upstream connection
        self._inflight = None           # a command execute_inline sent, not yet answered
        self._claimed = False           # ... and the fast path awaits it (`inline_pending`)
        self._fresh = None              # the descriptor of the last execute_inline's command
        self._powered = True
        self.anchor = None
        self.reports = 0
        self.failures = 0
        self.properties = {}
        self._sessions = {}         # HMAC sessions the served indices can answer (_reply)
        self.response_handles = frozenset()     # command codes whose response has a handle
        self.owner_auth = b""       # the upstream's ownerAuth (served indices' HMACs)

    @classmethod
    def build(cls, config, provider=None):
        from .guard import DEFAULT_REFUSE
        refuse = config.passthrough_refuse or DEFAULT_REFUSE
        policy = Policy(refuse=frozenset(GUARD_CC[n] for n in refuse),
                        nv_range=config.passthrough_nv_range,
                        persistent_range=config.passthrough_persistent_range,
                        shared=config.passthrough_shared,
                        pcr_writes=config.passthrough_pcr_writes)
        upstream = open_upstream(config)
        client = TpmClient(upstream.call)
        fixed = struct.pack(">HIIIII", 0x8001, 22, 0x17A, 6, 0x100, 0x10)
        try:
            rsp = upstream.call(fixed)
            if struct.unpack(">I", rsp[6:10])[0] == RC_INITIALIZE:
                log.warning("the upstream TPM was not started: sending TPM2_Startup(CLEAR)")
                client.startup()
                rsp = upstream.call(fixed)
            counts, rhandle = _handle_counts(upstream.call)
        except UpstreamError as e:
            from ..transport.bind import StartupError
            raise StartupError(f"upstream {config.upstream}: {e}") from None
        backend = cls(upstream, Guard(policy, counts),
                      max_command_size=config.max_command_size)
        backend.response_handles = rhandle
        backend.owner_auth = read_auth(config, "owner")
        if rsp[6:10] == bytes(4):
            count = struct.unpack(">I", rsp[15:19])[0]
            backend.properties = dict(struct.unpack(">II", rsp[19 + 8 * i:27 + 8 * i])
                                      for i in range(count))
        if config.passthrough_anchor:
            try:        # the served indices refuse larger reads and writes as it does
                buffer_max = client.tpm_property(PT_NV_BUFFER_MAX)
            except Exception as e:      # UpstreamError, TpmCommandError: its default
                log.warning("the upstream's TPM_PT_NV_BUFFER_MAX: %s", e)
                buffer_max = None
            if buffer_max:
                backend.properties[PT_NV_BUFFER_MAX] = buffer_max
            if provider is None:
                from .report import open_report_provider
                provider = open_report_provider(config)
            backend._bind(client, provider, config.ak, read_auth(config, "endorsement"))
        return backend

    # -- binding to the TEE ---------------------------------------------------------------

    def _bind(self, client, provider, ak_kind, endorsement_auth=b""):
        """Make the EKs (RSA L-1, ECC L-2) and the AK on the upstream, prove the AK is on the
        RSA EK's TPM (a credential ctpm makes for that EK and the AK's Name, opened by the
        TPM), read the EK certificates the vendor left (0x01C00002, 0x01C0000A, and the
        chain of intermediates at 0x01C00100-0x01C001FF), and get the first report."""
        from .anchor import Anchor, encode_evidence
        from .credential import (ECC_EK_CERT_INDEX, RSA_EK_CERT_INDEX, CredentialError,
                                 prove_same_tpm, read_ek_chain, read_nv)
        from .identity import Identity, ak_template, ek_ecc_template, ek_rsa_template
        from .tpmclient import TpmCommandError
        from ..transport.bind import StartupError
        loaded = []
        try:
            made = []
            for template in (ek_rsa_template(), ek_ecc_template(), ak_template(ak_kind)):
                handle, public, name = client.create_primary(RH_ENDORSEMENT, template,
                                                             endorsement_auth)
                loaded.append(handle)
                made.append((handle, public, name))
            (ek, ek_public, ek_name), (_, ecc_public, _), (ak, ak_public, ak_name) = made
            prove_same_tpm(client, ek, ek_public, ak, ak_name,
                           endorsement_auth=endorsement_auth)
            certs = tuple((index, der) for index in (RSA_EK_CERT_INDEX, ECC_EK_CERT_INDEX)
                          if (der := read_nv(client, index)))
            if certs:
                try:
                    certs += read_ek_chain(client)
                except CredentialError as e:    # verifiers with an EK CA will say so
                    log.warning("the EK certificate chain is not carried: %s", e)
        except TpmCommandError as e:
            raise StartupError(f"binding the upstream TPM: {e}") from None
        except CredentialError as e:
            raise StartupError(f"the AK is not on the EK's TPM: {e}") from None
        finally:
            for handle in loaded:
                client.flush(handle)
        identity = Identity(ek_rsa=ek_public, ek_ecc=ecc_public, ak=ak_public, ek_certs=certs,
                            activation=ek_name + ak_name)
        log.info("upstream EK %s, AK %s activated against it; EK certificates: %s",
                 ek_name.hex()[:16], ak_name.hex()[:16],
                 ", ".join(f"{index:#010x}" for index, _ in certs) or "none")
        self.anchor = Anchor(identity, provider)
        self._encode = encode_evidence
        self.request = bytes(64)
        self.evidence = self._evidence(self.request)
        self.evidence_size = max(8192, len(self.evidence))

    def _evidence(self, nonce):
        evidence, manifest = self.anchor.attest(nonce, 1)
        self.reports += 1
        return self._encode(nonce, evidence, manifest, 1)

    def _nv_public(self, index):
        size = 64 if index == REQUEST_INDEX else self.evidence_size
        from .ephemeral import EVIDENCE_ATTRS, REQUEST_ATTRS
        attrs = (REQUEST_ATTRS if index == REQUEST_INDEX else EVIDENCE_ATTRS) | _NV_WRITTEN
        public = struct.pack(">IHIH", index, 0x0B, attrs, 0) + struct.pack(">H", size)
        return public, struct.pack(">H", 0x0B) + hashlib.sha256(public).digest()

    def _served(self, command: bytes) -> bool:
        if self.anchor is None or len(command) < 14:
            return False
        cc = struct.unpack(">I", command[6:10])[0]
        if cc == GUARD_CC["NV_ReadPublic"]:
            index = struct.unpack(">I", command[10:14])[0]
        elif cc in (GUARD_CC["NV_Read"], GUARD_CC["NV_Write"]) and len(command) >= 18:
            index = struct.unpack(">I", command[14:18])[0]
        else:
            return False
        return index in (EVIDENCE_INDEX, REQUEST_INDEX)

    async def _serve_nv(self, command: bytes) -> bytes:
        """NV_ReadPublic / NV_Read / NV_Write of the request/evidence pair, answered here as
        the TPM would: one authorization session, a password or an HMAC session ctpm saw
        started unbound and unsalted (`_track_sessions`), checked against ownerAuth (the
        upstream's, `owner_auth`) or the indices' empty authValue. The answer leaves the
        session's nonceTPM as it was, so the upstream, which never saw this command, still
        holds the nonce the guest will use next."""
        tag, _, cc = struct.unpack(">HII", command[:10])
        if cc == GUARD_CC["NV_ReadPublic"]:
            if tag != 0x8001:
                return response(RC_AUTH_UNAVAILABLE)
            public, name = self._nv_public(struct.unpack(">I", command[10:14])[0])
            body = struct.pack(">H", len(public)) + public + struct.pack(">H", len(name)) + name
            return struct.pack(">HII", 0x8001, 10 + len(body), 0) + body
        auth, index = struct.unpack(">II", command[10:18])
        if tag != 0x8002:
            return response(RC_AUTH_MISSING)
        if auth not in (index, OWNER):
            return response(RC_HANDLE | 0x100)
        auth_size = struct.unpack(">I", command[18:22])[0]
        area, params = command[22:22 + auth_size], command[22 + auth_size:]
        handle, nonce_size = struct.unpack(">IH", area[:6])
        nonce_caller = area[6:6 + nonce_size]
        attrs = area[6 + nonce_size]
        hmac_size = struct.unpack(">H", area[7 + nonce_size:9 + nonce_size])[0]
        proof = area[9 + nonce_size:9 + nonce_size + hmac_size]
        if 9 + nonce_size + hmac_size != len(area) or len(proof) != hmac_size:
            return response(RC_AUTH_UNAVAILABLE)      # one session, and only one
        auth_value = self.owner_auth if auth == OWNER else b""
        names = [self._name(auth), self._name(index)]
        if handle == RS_PW:
            if not hmac.compare_digest(proof, auth_value):
                return response(RC_BAD_AUTH)
        else:
            if handle not in self._sessions or attrs & 0x80:
                return response(RC_AUTH_UNAVAILABLE)       # not ours, or an audit session
            alg, nonce_tpm, symmetric, alg_id = self._sessions[handle]
            if attrs & 0x60 and (symmetric is None or symmetric[0] not in ("xor", 0x06)
                                 or symmetric[0] == 0x06 and symmetric[2] != 0x43):
                return response(RC_AUTH_UNAVAILABLE)       # only AES-CFB and XOR here
            if (attrs & 0x20 and cc != GUARD_CC["NV_Write"]) or (
                    attrs & 0x40 and cc != GUARD_CC["NV_Read"]):
                return response(RC_ATTRIBUTES_S1)          # no sized first parameter
            cp = hashlib.new(alg, struct.pack(">I", cc) + b"".join(names) + params).digest()
            expected = hmac.new(auth_value, cp + nonce_caller + nonce_tpm + bytes([attrs]),
                                alg).digest()
            if not hmac.compare_digest(proof, expected):
                return response(RC_BAD_AUTH)
            if attrs & 0x20:        # the guest encrypted NV_Write's data
                size = struct.unpack(">H", params[:2])[0]
                params = params[:2] + _crypt(symmetric, alg_id, auth_value, nonce_caller,
                                             nonce_tpm, params[2:2 + size], False) \
                    + params[2 + size:]
        buffer_max = self.properties.get(PT_NV_BUFFER_MAX, NV_BUFFER_MAX)
        if cc == GUARD_CC["NV_Read"]:
            size, offset = struct.unpack(">HH", params[:4])
            data = (self.request if index == REQUEST_INDEX
                    else self.evidence.ljust(self.evidence_size, b"\0"))
            # Part 3 §31.13 (TPM2_NV_Read), in the TPM's order, after authorization
            if size > buffer_max:
                return response(RC_VALUE_P1)        # more than one answer can carry
            if offset > len(data):
                return response(RC_VALUE_P2)
            if offset + size > len(data):
                return response(RC_NV_RANGE)
            chunk = data[offset:offset + size]
            if handle != RS_PW and attrs & 0x40:   # the guest wants the data encrypted
                alg, nonce_tpm, symmetric, alg_id = self._sessions[handle]
                chunk = _crypt(symmetric, alg_id, auth_value, nonce_tpm, nonce_caller, chunk,
                               True)
            body = struct.pack(">IH", 2 + len(chunk), len(chunk)) + chunk
        else:
            size = struct.unpack(">H", params[:2])[0]
            if size > buffer_max:           # TPM2B_MAX_NV_BUFFER unmarshaled: too large
                return response(RC_SIZE_P1)
            if index != REQUEST_INDEX:
                return response(0x149)      # TPM_RC_NV_AUTHORIZATION: EVIDENCE is ctpm's
            data = params[2:2 + size]
            offset = struct.unpack(">H", params[2 + size:4 + size])[0]
            if offset > 64:                 # Part 3 §31.7 (TPM2_NV_Write), in its order
                return response(RC_VALUE_P2)
            if offset + size > 64:
                return response(RC_NV_RANGE)
            import trio
            nonce = self.request[:offset] + data + self.request[offset + size:]
            try:
                evidence = await trio.to_thread.run_sync(self._evidence, nonce)
            except Exception:
                log.exception("cannot get a report for the evidence index")
                return response(RC_FAILURE)
            self.request, self.evidence = nonce, evidence
            self.evidence_size = max(self.evidence_size, len(evidence))
            body = struct.pack(">I", 0)
        body += self._reply(cc, body[4:], handle, nonce_caller, attrs, auth_value)
        if handle != RS_PW and not attrs & 1:
            # the guest ends the session with this command: end it on the upstream too
            self._sessions.pop(handle, None)
            await self._forward(struct.pack(">HIII", 0x8001, 14, 0x165, handle), 0)
        return struct.pack(">HII", 0x8002, 10 + len(body), 0) + body

    def _name(self, handle: int) -> bytes:
        if handle >> 24 == 0x01:
            return self._nv_public(handle)[1]
        return struct.pack(">I", handle)

    def _reply(self, cc, params, handle, nonce_caller, attrs, auth_value):
        """The TPMS_AUTH_RESPONSE for the session of a command answered here: none for a
        password; for an HMAC session (sessionKey empty: unbound, unsalted) the HMAC with the
        entity's authValue over the unchanged nonceTPM."""
        if handle == RS_PW:
            return b"\0\0" + bytes([attrs & 1]) + b"\0\0"
        alg, nonce_tpm = self._sessions[handle][:2]
        rp = hashlib.new(alg, struct.pack(">II", 0, cc) + params).digest()
        mac = hmac.new(auth_value, rp + nonce_tpm + nonce_caller + bytes([attrs & 1]),
                       alg).digest()
        return struct.pack(">H", len(nonce_tpm)) + nonce_tpm + bytes([attrs & 1]) + \
            struct.pack(">H", len(mac)) + mac

    _HASHES = {0x04: "sha1", 0x0B: "sha256", 0x0C: "sha384", 0x0D: "sha512"}

    def _track_sessions(self, command: bytes, rsp: bytes):
        """Follow the unbound, unsalted HMAC sessions the guest starts: their nonceTPM as the
        upstream rolls it (read from each response's authorization area), so that the
        indices served here answer with the nonce the upstream holds; forgotten when the
        upstream flushes them."""
        cc = command[6:10]
        ok = rsp[6:10] == bytes(4)
        if cc == b"\0\0\x01\x76":                                   # StartAuthSession
            if not ok:
                return
            tpm_key, bind = struct.unpack(">II", command[10:18])
            pos = 18
            for _ in range(2):                                          # nonceCaller, salt
                pos += 2 + struct.unpack(">H", command[pos:pos + 2])[0]
            kind = command[pos]
            sym = struct.unpack(">H", command[pos + 1:pos + 3])[0]
            if sym == 0x10:
                symmetric, pos = None, pos + 3
            elif sym == 0x0A:                                       # XOR: its hash
                symmetric, pos = ("xor", 0, 0), pos + 5
            else:
                bits, mode = struct.unpack(">HH", command[pos + 3:pos + 7])
                symmetric, pos = (sym, bits, mode), pos + 7
            alg_id = struct.unpack(">H", command[pos:pos + 2])[0]
            alg = self._HASHES.get(alg_id)
            if tpm_key == bind == 0x40000007 and kind == 0 and alg:
                handle, size = struct.unpack(">IH", rsp[10:16])
                self._sessions[handle] = (alg, rsp[16:16 + size], symmetric, alg_id)
        elif not self._sessions:
            return
        elif cc == b"\0\0\x01\x65":                                   # FlushContext
            if ok:
                self._sessions.pop(struct.unpack(">I", command[10:14])[0], None)
        elif command[:2] == b"\x80\x02" and ok and rsp[:2] == b"\x80\x02":
            code = struct.unpack(">I", cc)[0]
            pos = 10 + 4 * self.guard.handle_counts.get(code, 0)
            end = pos + 4 + struct.unpack(">I", command[pos:pos + 4])[0]
            pos += 4
            used = []
            while pos < end:
                handle, nonce = struct.unpack(">IH", command[pos:pos + 6])
                pos += 6 + nonce
                used.append((handle, command[pos] & 1))
                pos += 3 + struct.unpack(">H", command[pos + 1:pos + 3])[0]
            # the response: handle?, parameterSize, parameters, one auth per session
            pos = 14 if code in self.response_handles else 10
            pos += 4 + struct.unpack(">I", rsp[pos:pos + 4])[0]
            for handle, keep in used:
                size = struct.unpack(">H", rsp[pos:pos + 2])[0]
                nonce_tpm = rsp[pos + 2:pos + 2 + size]
                pos += 3 + size
                pos += 2 + struct.unpack(">H", rsp[pos:pos + 2])[0]
                if handle in self._sessions:
                    if keep:
                        self._sessions[handle] = (self._sessions[handle][0], nonce_tpm,
                                                  *self._sessions[handle][2:])
                    else:
                        del self._sessions[handle]

    # -- commands -------------------------------------------------------------------------

    def execute_inline(self, command: bytes, locality: int, wait: float = QUICK):
        """The swtpm fast path: answered right here when the upstream answers within `wait`
        seconds. A command the upstream is still working on stays in flight, holding the
        instance's slot: the fast path either waits for `inline_pending()` among its other
        descriptors and takes the answer with `finish_inline` (it passes `wait=0`: no
        blocking here), or calls `execute` with it, which awaits the answer."""
        self._fresh = None
        if self._slot.value == 0 or not self.upstream.connected or self._served(command):
            return None
        try:
            refusal = self.guard.check(command)
        except (struct.error, IndexError):
            return response(0x09A)
        if refusal is not None:
            return refusal
        self._slot.acquire_nowait()
        try:
            fd = self.upstream.send(self.guard.forwarded(command), locality)
            if fd is None or not wait or not self._quick(fd, wait):
                self._inflight = (command, fd)
                self._claimed = False
                self._fresh = fd
                return None
            rsp = self.upstream.receive(self.upstream.timeout)
        except UpstreamError as e:
            rsp = self._failed(e)
        finally:
            if self._inflight is None:
                self._slot.release()
        return self._after(command, rsp)

    def inline_pending(self):
        """Right after an `execute_inline` that returned None: the descriptor whose
        readability answers its command, now in flight, which the caller then owns: it takes
        the answer with `finish_inline` or `wait_inline` (`execute` leaves it alone, even
        for a command of the same bytes). None: that command is not in flight, or there is
        no descriptor to wait on (then `execute` with the command takes it over)."""
        fd, self._fresh = self._fresh, None
        if fd is not None:
            self._claimed = True
        return fd

    def finish_inline(self) -> bytes:
        """The answer to the claimed command in flight, once its descriptor is readable."""
        command, _fd = self._inflight
        self._inflight = None
        try:
            rsp = self.upstream.receive(self.upstream.timeout)
        except UpstreamError as e:
            rsp = self._failed(e)
        finally:
            self._slot.release()
        return self._after(command, rsp)

    @property
    def inline_timeout(self) -> float:
        """How long a command in flight may wait for its answer (`[passthrough] timeout`)."""
        return self.upstream.timeout

    def abandon_inline(self) -> bytes:
        """The claimed command in flight got no answer within `inline_timeout`: the upstream
        connection is dropped (reopened at the next command) and the answer is
        TPM_RC_FAILURE, as from `execute`."""
        self._inflight = None
        self.upstream.drop()
        self._slot.release()
        return self._failed(UpstreamError(
            f"no answer in {self.upstream.timeout:.1f} s", sent=True))

    async def wait_inline(self) -> bytes:
        """The answer to the claimed command in flight, awaited (within the timeout)."""
        command, fd = self._inflight
        self._inflight = None
        try:
            return self._after(command, await self._wait(fd))
        finally:
            self._slot.release()

    async def execute(self, command: bytes, locality: int) -> bytes:
        if (self._inflight is not None and not self._claimed
                and self._inflight[0] == command):
            return await self.wait_inline()     # sent by execute_inline: its answer is ours
        try:
            if self._served(command):
                return await self._serve_nv(command)
            refusal = self.guard.check(command)
        except (struct.error, IndexError):
            return response(0x09A)           # TPM_RC_INSUFFICIENT: cut short
        if refusal is not None:
            return refusal
        return self._after(command, await self._forward(self.guard.forwarded(command),
                                                        locality))

    def _quick(self, fd: int, wait: float = QUICK) -> bool:
        """Whether the answer on `fd` is readable within `wait` seconds (one poll object
        per descriptor: a RawUpstream keeps its descriptor)."""
        if self._poll_fd != fd:
            import select
            self._poll = select.poll()
            self._poll.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
            self._poll_fd = fd
        return bool(self._poll.poll(wait * 1000))

    _poll_fd = None

    def _after(self, command: bytes, rsp: bytes) -> bytes:
        if command[6:10] == b"\0\0\x01\x7a":
            rsp = self.guard.filter_capability(command, rsp)
        if self.anchor is not None:
            try:
                self._track_sessions(command, rsp)
            except (struct.error, IndexError):
                pass                        # malformed: the upstream refused it anyway
        return rsp

    def _failed(self, e: UpstreamError) -> bytes:
        self.failures += 1
        log.warning("upstream %s: %s", self.upstream.tcti, e)
        return response(RC_FAILURE if e.sent else RC_RETRY)

    async def _wait(self, fd) -> bytes:
        """The answer to the command in flight: awaited in the event loop on `fd`, or
        without one in a worker thread abandoned when it overruns."""
        import trio
        upstream = self.upstream
        try:
            if fd is not None:
                with trio.move_on_after(upstream.timeout):
                    await trio.lowlevel.wait_readable(fd)
                    return upstream.receive(upstream.timeout)
            else:
                with trio.move_on_after(upstream.timeout + 2):
                    return await trio.to_thread.run_sync(upstream.receive, upstream.timeout,
                                                         abandon_on_cancel=True)
                upstream._ctx = None        # the abandoned thread still holds it
            upstream.drop()
            raise UpstreamError(f"no answer in {upstream.timeout:.1f} s", sent=True)
        except UpstreamError as e:
            return self._failed(e)

    async def _forward(self, command: bytes, locality: int) -> bytes:
        """One command to the upstream. Connected: transmit here (a command fits the socket
        buffer), take an answer that is readable within SPIN (50 us, never sleeping), else
        await it in the loop (`_wait`), which serves other connections and instances
        meanwhile (a 2 ms poll that slept held them all before). Not connected: opening the
        TCTI and the whole call in a worker thread, abandoned when it overruns."""
        import trio
        upstream = self.upstream
        with trio.move_on_after(2 * upstream.timeout + 5) as scope:
            await self._slot.acquire()
        if scope.cancelled_caught:          # a command in flight nobody came back for
            self._inflight = None
            upstream.drop()
            self._slot.release()
            return self._failed(UpstreamError("a command in flight was abandoned", sent=False))
        try:
            if upstream.connected:
                try:
                    fd = upstream.send(command, locality)
                    if fd is not None and _readable(fd):
                        return upstream.receive(upstream.timeout)
                    return await self._wait(fd)
                except UpstreamError as e:
                    return self._failed(e)
            with trio.move_on_after(upstream.timeout + 2):
                try:
                    return await trio.to_thread.run_sync(upstream.call, command, locality,
                                                         abandon_on_cancel=True)
                except UpstreamError as e:
                    return self._failed(e)
            # the TCTI call itself hung (connect, transmit); the abandoned thread keeps the
            # old context
            upstream._ctx = None
            return self._failed(UpstreamError(f"no answer in {upstream.timeout:.0f} s",
                                              sent=True))
        finally:
            self._slot.release()

    # -- platform signals and state: the hardware TPM's own ---------------------------------

    async def signal(self, signal, *args):
        from ..backend import Signal
        if signal in (Signal.POWER_ON, Signal.INIT, Signal.RESET):
            self._powered = True
            return None
        if signal is Signal.POWER_OFF:
            self._powered = False
            return None
        if signal in (Signal.NV_ON, Signal.NV_OFF, Signal.CANCEL_ON, Signal.CANCEL_OFF):
            return None
        return PermissionError(f"{signal.value}: not passed to a shared hardware TPM")

    @property
    def powered(self) -> bool:
        return self._powered

    @property
    def established(self) -> bool:
        return False

    write_pending = False

    def close(self):
        """The instance stops: its upstream connection goes (swtpm serves one at a time)."""
        self.upstream.drop()

    async def flush(self):
        return None

    async def get_state_blob(self, kind: int) -> bytes:
        raise PermissionError("a hardware TPM's state never leaves it")

    async def set_state_blob(self, kind: int, data: bytes):
        raise PermissionError("a hardware TPM's state cannot be replaced")

    async def save(self):
        return None

    def save_now(self):
        return None

    def describe(self) -> dict:
        p = self.properties       # the upstream's TPM_PT_FIXED properties, read at boot
        info = {"backend": "passthrough", "mode": self.mode, "upstream": self.upstream.tcti,
                "state": "upstream TPM", "powered": self._powered, "family": "2.0",
                "level": p.get(0x101, 0), "revision": p.get(0x102, 0),
                "manufacturer": p.get(0x105, 0).to_bytes(4, "big").hex().upper(),
                "firmware_version": f"{p.get(0x10B, 0):08X}", "model": "passthrough",
                "connections": self.upstream.reconnects, "failures": self.failures}
        if self.anchor is not None:
            identity = self.anchor.identity
            info.update(snp_provider=self.anchor.provider.name, reports=self.reports,
                        activated=identity.activated(),
                        ek_certificates=[f"{i:#010x}" for i, _ in identity.ek_certs])
        return info
