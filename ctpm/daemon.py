"""The daemon: one TPM, every configured listener, a clean stop.

`serve()` binds everything before it reports readiness (so that "ready" means "connect now"),
then serves until cancelled or until a client asks it to stop (mssim STOP, swtpm SHUTDOWN),
and on the way out writes the NV image. Each protocol has two channels on adjacent ports
(mssim: command P, platform P+1; swtpm: data P, control P+1) or, for a swtpm unix socket,
data on PATH and control on PATH.ctrl.
"""
import errno
import logging
import os
import random
import socket
import stat
from dataclasses import dataclass

import trio

from .transport.fastpath import FastPath
from .transport.host import TpmHost, serve_connection
from .transport.mssim import MssimCommandPort, MssimPlatformPort
from .transport.swtpm import SwtpmControlChannel, SwtpmDataChannel

log = logging.getLogger("ctpm.daemon")

PORT_PAIR_ATTEMPTS = 50


class StartupError(Exception):
    """The daemon cannot start (address in use, ...); str() is one line for the user."""


@dataclass(frozen=True)
class Bound:
    """One listening endpoint: `port` (TCP) or `path` (unix) of the first channel."""

    kind: str                   # "mssim" or "swtpm"
    host: str | None = None
    port: int | None = None
    path: str | None = None

    @property
    def second(self):
        """Where the second channel (mssim platform / swtpm control) listens."""
        return self.path + ".ctrl" if self.path else self.port + 1

    def __str__(self):
        if self.path:
            return f"unix:{self.path},{self.second}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port},{self.second}"


class Listening(tuple):
    """What `serve` reports when ready: a tuple of `Bound`, with shortcuts."""

    def first(self, kind: str, *, unix: bool = False) -> Bound:
        for b in self:
            if b.kind == kind and bool(b.path) == unix:
                return b
        raise LookupError(f"no {kind} listener")

    @property
    def mssim_port(self) -> int:
        return self.first("mssim").port

    @property
    def swtpm_port(self) -> int:
        return self.first("swtpm").port

    def __str__(self):
        return " ".join(f"{b.kind}={b}" for b in self)


def build_tpm(config):
    """The TPM for `config`: NV in the state directory, or in memory."""
    from .engine.config import EngineConfig
    from .engine.tpm import Tpm
    from .platform import Platform
    from .state.store import DirStore, MemoryStore

    store = DirStore(config.state_dir) if config.state_dir else MemoryStore()
    engine_config = EngineConfig(max_command_size=config.max_command_size,
                                 max_objects=config.max_objects,
                                 max_sessions=config.max_sessions,
                                 max_persistent=config.max_persistent,
                                 max_nv_indices=config.max_nv_indices,
                                 nv_space=config.nv_space)
    return Tpm.manufacture(Platform(store=store), config=engine_config)


async def serve(config, *, tpm=None, task_status=trio.TASK_STATUS_IGNORED):
    """Serve `config`'s listeners for one TPM (built from `config` unless given).

    Reports a `Listening` through `task_status` once every socket is bound and listening.
    Raises `StartupError` (before reporting) when a socket cannot be bound.
    """
    if tpm is None:
        tpm = build_tpm(config)
    host = TpmHost(tpm, max_command_size=config.max_command_size,
                   stall_timeout=config.stall_timeout)
    plans, bound, unix_paths = await _bind_all(config, host)
    try:
        async with trio.open_nursery() as nursery:
            host.spawn = nursery.start_soon
            for handler, what, sockets in plans:
                if isinstance(handler, SwtpmDataChannel):
                    fast = FastPath(host, handler, nursery, what)
                    nursery.start_soon(fast.watch)
                    for s in sockets:
                        nursery.start_soon(fast.serve, s)
                    continue
                for s in sockets:
                    nursery.start_soon(_accept_loop, trio.SocketListener(s), handler, what,
                                       nursery)
            listening = Listening(bound)
            log.info("listening: %s", listening)
            task_status.started(listening)
            sd_notify(f"READY=1\nSTATUS=serving {listening}")
            await host.stop_requested.wait()
            nursery.cancel_scope.cancel()
    finally:
        sd_notify("STOPPING=1")
        for path in unix_paths:
            _unlink_quietly(path)
        _save(tpm)


# accept() failures that mean "out of resources for now": wait and retry, never stop serving.
_TRANSIENT_ACCEPT_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


async def _accept_loop(listener, handler, what, nursery):
    """Accept connections for ever, one task each.

    Leaner than trio.serve_listeners, which matters here: the swtpm TCTI opens a connection
    per command, and the per-connection cost is most of a small command's round trip.
    """
    while True:
        try:
            stream = await listener.accept()
        except OSError as e:
            if e.errno not in _TRANSIENT_ACCEPT_ERRORS:
                raise
            log.error("%s: accept failed (%s); retrying in 0.1 s", what, e.strerror)
            await trio.sleep(0.1)
            continue
        nursery.start_soon(_serve_one, handler, stream, what)


async def _serve_one(handler, stream, what):
    try:
        await serve_connection(handler, stream, what)
    finally:
        stream.socket.close()   # synchronous close: no cancel scope and checkpoint per connection


def _save(tpm):
    try:
        tpm.save_state()
    except Exception:   # a failed save must not hide why we are stopping
        log.exception("could not write the NV state")


async def _bind_all(config, host):
    """Bind every listener; on any failure close what was bound and raise StartupError."""
    plans, bound, unix_paths, opened = [], [], [], []
    handlers = {("mssim", False): (MssimCommandPort(host), MssimPlatformPort(host)),
                ("swtpm", False): (SwtpmDataChannel(host), SwtpmControlChannel(host)),
                ("swtpm", True): (SwtpmDataChannel(host),
                                  SwtpmControlChannel(host, unix=True))}
    try:
        for kind in ("mssim", "swtpm"):
            for address in getattr(config, kind):
                first_handler, second_handler = handlers[kind, address.is_unix]
                if address.is_unix:
                    first = [await _bind_unix(address.path)]
                    unix_paths.append(address.path)
                    opened.extend(first)
                    second = [await _bind_unix(address.path + ".ctrl")]
                    unix_paths.append(address.path + ".ctrl")
                    opened.extend(second)
                    bound.append(Bound(kind, path=address.path))
                else:
                    port, first, second = await _bind_port_pair(address)
                    opened.extend(first + second)
                    bound.append(Bound(kind, host=address.host, port=port))
                plans.append((first_handler, f"{kind} {address}", first))
                plans.append((second_handler, f"{kind} {address} (second channel)", second))
    except BaseException:
        for s in opened:
            s.close()
        for path in unix_paths:
            _unlink_quietly(path)
        raise
    return plans, bound, unix_paths


async def _bind_port_pair(address):
    """Bind `port` and `port + 1`; with port 0, find a free adjacent pair.

    Port 0 does not simply mean bind(0) then port + 1: Linux gives bind(0) odd ports and
    outgoing connections even ones, so port + 1 is often held by some client's TIME_WAIT.
    Candidates are drawn below the ephemeral range instead, where only listeners live.
    """
    candidates = _pair_candidates() if address.port == 0 else [address.port]
    for port in candidates:
        try:
            first = await _bind_tcp(address, port)
        except StartupError:
            if address.port == 0:
                continue
            raise
        port = first[0].getsockname()[1]
        try:
            if port == 65535:
                raise StartupError(f"cannot listen on port 65536 of {address}")
            second = await _bind_tcp(address, port + 1, what=f"port {port + 1} of ")
        except StartupError:
            for s in first:
                s.close()
            if address.port == 0:
                continue
            raise
        return port, first, second
    raise StartupError(f"cannot listen on {address}: no free pair of adjacent ports found")


def _pair_candidates():
    """Random ports p (p + 1 free too) between 10000 and the ephemeral range, then bind(0)."""
    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    if low > 10002:
        for _ in range(PORT_PAIR_ATTEMPTS):
            yield random.randrange(10000, low - 1)
    for _ in range(PORT_PAIR_ATTEMPTS):
        yield 0


async def _bind_tcp(address, port, what=""):
    """Listening sockets on every address `host` resolves to, all on the same port."""
    try:
        infos = await trio.socket.getaddrinfo(address.host, port, type=socket.SOCK_STREAM,
                                              flags=socket.AI_PASSIVE)
    except OSError as e:
        raise StartupError(f"cannot listen on {address}: {e.strerror or e}") from None
    sockets, seen = [], set()
    try:
        for family, type_, proto, _, sockaddr in infos:
            if sockaddr[0] in seen:
                continue
            seen.add(sockaddr[0])
            s = trio.socket.socket(family, type_, proto)
            sockets.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # With port 0, the first socket picks the port and the others follow it.
            await s.bind((sockaddr[0], port) + tuple(sockaddr[2:]))
            s.listen(128)
            port = s.getsockname()[1]
        return sockets
    except OSError as e:
        for s in sockets:
            s.close()
        raise StartupError(f"cannot listen on {what}{address}: {e.strerror or e}") from None


async def _bind_unix(path):
    """A listening unix socket at `path` (owner-only); a stale socket file is replaced."""
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except ConnectionRefusedError:
                os.unlink(path)                  # left behind by a process that died
            else:
                raise StartupError(f"cannot listen on unix:{path}: a server is running there")
            finally:
                probe.close()
    except FileNotFoundError:
        pass
    except OSError as e:
        raise StartupError(f"cannot listen on unix:{path}: {e.strerror}") from None
    s = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await s.bind(path)
        os.chmod(path, 0o600)
        s.listen(128)
    except OSError as e:
        s.close()
        raise StartupError(f"cannot listen on unix:{path}: {e.strerror}") from None
    return s


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def sd_notify(state: str):
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or address[0] not in "/@":
        return
    if address[0] == "@":
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(state.encode())
    except OSError as e:
        log.warning("sd_notify to %s failed: %s", address, e)
