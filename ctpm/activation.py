"""systemd socket activation: the listening sockets systemd passes (LISTEN_PID, LISTEN_FDS,
LISTEN_FDNAMES; sd_listen_fds(3)), each with a role given by its FileDescriptorName=.

A socket unit names all its sockets alike, so `swtpm` and `mssim` sockets pair up in the
order of their ListenStream= lines: the first `swtpm` socket is a data channel, the next
its control channel, and so on (mssim: command, then platform) - systemd/ctpm@.socket
lists /run/ctpm/NAME.sock, then /run/ctpm/NAME.sock.ctrl. Separate units may instead name
theirs `swtpm-ctrl` or `mssim-platform`.
"""
import os
import socket

from .daemon import ROLES, Prebound, StartupError

SD_LISTEN_FDS_START = 3


def listen_fds(environ=None) -> list:
    """[(fd, name)] passed to this process, [] when not socket-activated. The variables are
    removed from the environment so that children do not take the sockets as theirs."""
    env = os.environ if environ is None else environ
    pid, count = env.get("LISTEN_PID"), env.get("LISTEN_FDS")
    if count is None:
        return []
    if pid is not None and pid != str(os.getpid()):
        return []            # meant for another process (our parent, say)
    if not count.isdigit() or int(count) < 1:
        raise StartupError(f"LISTEN_FDS={count!r} is not a positive number")
    names = env.get("LISTEN_FDNAMES", "")
    names = names.split(":") if names else []
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(var, None)
    return [(SD_LISTEN_FDS_START + i, names[i] if i < len(names) else "unknown")
            for i in range(int(count))]


def prebound_from_environment(environ=None) -> list:
    """`Prebound` sockets for `daemon.serve`; StartupError (one line) for a socket without a
    known role or one that is not a listening stream socket."""
    out, seen = [], {"swtpm": 0, "mssim": 0}
    for fd, name in listen_fds(environ):
        role = name
        if name in seen:
            seen[name] += 1
            if seen[name] % 2 == 0:
                role = "swtpm-ctrl" if name == "swtpm" else "mssim-platform"
        if name not in ROLES:
            raise StartupError(f"socket-activated fd {fd} is named {name!r}; name it one of "
                               f"{', '.join(ROLES)} (FileDescriptorName=)")
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            raise StartupError(f"socket-activated fd {fd} ({name}): {e.strerror}") from None
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET,
                                                                 socket.SO_ACCEPTCONN):
            raise StartupError(f"socket-activated fd {fd} ({name}) is not a listening stream "
                               f"socket")
        sock.set_inheritable(False)
        where = sock.getsockname()
        label = (f"unix:{where}" if sock.family == socket.AF_UNIX
                 else f"{where[0]}:{where[1]}" if sock.family == socket.AF_INET
                 else f"[{where[0]}]:{where[1]}")
        out.append(Prebound(role, sock, f"{label} (fd {fd})"))
    return out
