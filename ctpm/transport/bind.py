"""Binding a TPM instance's listening sockets, without trio (so that `ctpm run --host`, the
warm path, binds and hands over its sockets without importing it).

Each protocol has two channels on adjacent ports (mssim: command P, platform P+1; swtpm:
data P, control P+1) or, for a swtpm unix socket, data on PATH and control on PATH.ctrl.
The SVSM protocol (ctpm/svsm/) has one channel, a unix socket.
"""
import os
import socket
import stat
from dataclasses import dataclass


class StartupError(Exception):
    """The daemon cannot start (address in use, ...); str() is one line for the user."""


PORT_PAIR_ATTEMPTS = 50


@dataclass(frozen=True)
class Bound:
    """One listening endpoint: `port` (TCP) or `path` (unix) of the first channel."""

    kind: str                   # "mssim", "swtpm" or "svsm"
    host: str | None = None
    port: int | None = None
    path: str | None = None
    other: str | None = None    # a socket bound elsewhere (systemd, swtpm's command line):
                                # what the ready line says about it

    @property
    def second(self):
        """Where the second channel (mssim platform / swtpm control) listens."""
        return self.path + ".ctrl" if self.path else self.port + 1

    def __str__(self):
        if self.other is not None:
            return self.other
        if self.kind == "vtpm-proxy":
            return f"{self.path},{self.path.replace('/tpm', '/tpmrm')}"
        if self.kind == "svsm":
            return f"unix:{self.path}"         # one channel
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



@dataclass
class Bindings:
    """Every listening socket of one instance: `groups` is a list of (kind, is_unix, label,
    first channel sockets, second channel sockets); `bound` what the ready line shows;
    `unix_paths` the socket files to remove when the instance stops."""

    groups: list
    bound: tuple
    unix_paths: list

    def sockets(self):
        for _kind, _unix, _label, first, second in self.groups:
            yield from first
            yield from second

    def close(self, *, unlink=True):
        for s in self.sockets():
            s.close()
        if unlink:
            for path in self.unix_paths:
                unlink_quietly(path)


def bind_all(config) -> Bindings:
    """Bind every listener of `config`; on any failure close what was bound and raise
    StartupError."""
    groups, bound, unix_paths, opened = [], [], [], []
    try:
        for kind in ("mssim", "swtpm"):
            for address in getattr(config, kind):
                if address.is_unix:
                    first = [bind_unix(address.path)]
                    unix_paths.append(address.path)
                    opened.extend(first)
                    second = [bind_unix(address.path + ".ctrl")]
                    unix_paths.append(address.path + ".ctrl")
                    opened.extend(second)
                    bound.append(Bound(kind, path=address.path))
                else:
                    port, first, second = _bind_port_pair(address)
                    opened.extend(first + second)
                    bound.append(Bound(kind, host=address.host, port=port))
                groups.append((kind, address.is_unix, f"{kind} {address}", first, second))
        for address in getattr(config, "svsm", ()):
            first = [bind_unix(address.path)]
            unix_paths.append(address.path)
            opened.extend(first)
            bound.append(Bound("svsm", path=address.path))
            groups.append(("svsm", True, f"svsm {address}", first, []))
    except BaseException:
        for s in opened:
            s.close()
        for path in unix_paths:
            unlink_quietly(path)
        raise
    return Bindings(groups, tuple(bound), unix_paths)


def _bind_port_pair(address):
    """Bind `port` and `port + 1`; with port 0, find a free adjacent pair.

    Port 0 does not simply mean bind(0) then port + 1: Linux gives bind(0) odd ports and
    outgoing connections even ones, so port + 1 is often held by some client's TIME_WAIT.
    Candidates are drawn below the ephemeral range instead, where only listeners live.
    """
    candidates = _pair_candidates() if address.port == 0 else [address.port]
    for port in candidates:
        try:
            first = _bind_tcp(address, port)
        except StartupError:
            if address.port == 0:
                continue
            raise
        port = first[0].getsockname()[1]
        try:
            if port == 65535:
                raise StartupError(f"cannot listen on port 65536 of {address}")
            second = _bind_tcp(address, port + 1, what=f"port {port + 1} of ")
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
        import random
        for _ in range(PORT_PAIR_ATTEMPTS):
            yield random.randrange(10000, low - 1)
    for _ in range(PORT_PAIR_ATTEMPTS):
        yield 0


def _bind_tcp(address, port, what=""):
    """Listening sockets on every address `host` resolves to, all on the same port."""
    try:
        infos = socket.getaddrinfo(address.host, port, type=socket.SOCK_STREAM,
                                              flags=socket.AI_PASSIVE)
    except OSError as e:
        raise StartupError(f"cannot listen on {address}: {e.strerror or e}") from None
    sockets, seen = [], set()
    try:
        for family, type_, proto, _, sockaddr in infos:
            if sockaddr[0] in seen:
                continue
            seen.add(sockaddr[0])
            s = socket.socket(family, type_, proto)
            sockets.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # With port 0, the first socket picks the port and the others follow it.
            s.bind((sockaddr[0], port) + tuple(sockaddr[2:]))
            s.listen(128)
            port = s.getsockname()[1]
        return sockets
    except OSError as e:
        for s in sockets:
            s.close()
        raise StartupError(f"cannot listen on {what}{address}: {e.strerror or e}") from None


def bind_unix(path):
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
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(path)
        os.chmod(path, 0o600)
        s.listen(128)
    except OSError as e:
        s.close()
        raise StartupError(f"cannot listen on unix:{path}: {e.strerror}") from None
    return s


def unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass
