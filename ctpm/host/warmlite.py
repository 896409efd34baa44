"""The warm `ctpm run --host` of the common case, importing (almost) nothing.

A harness that starts a TPM per test waits for this process: whatever it imports is paid at
every start. It uses only builtin modules (`_socket`, `_signal`: the `socket` and `signal`
modules build IntEnums at import, ~5 ms here; `json` pulls in `re`) besides `os` and `sys`,
which the interpreter has already loaded, and parses the command line itself. It handles the
flags a harness passes (`--swtpm/--mssim/--svsm` with `unix:PATH` or a loopback literal
`127.0.0.1:PORT` / `[::1]:PORT`, `--state`, `--mode`, ...); for anything else (`--config`, a
key option, a host name, systemd's sockets) `run` returns None and `ctpm.cli` takes the full
path (`warm.py`), which behaves the same. The host checks the configuration (`_config` in
server.py); its refusal of a bad value is a config error here too (exit 2).

The request is the `adopt` of control.py: the sockets go with it (SCM_RIGHTS), the answer
comes back, the ready line goes out, and this process waits for `{"stopped": ...}` or for
SIGINT/SIGTERM, on which it shuts its side of the connection (the host stops the instance,
saving its NV) and waits for the host's last word.
"""
import os
import sys

import _signal
import _socket

STOP_WAIT = 30.0
# flag -> request key; "+" = repeatable list, "=" = takes a value, "!" = boolean
_FLAGS = {"--host": "=host", "--swtpm": "+swtpm", "--mssim": "+mssim", "--svsm": "+svsm",
          "--state": "=state", "--name": "=name", "--mode": "=mode", "--ak": "=ak",
          "--snp-provider": "=snp_provider", "--snp-sim-dir": "=snp_sim_dir",
          "--log-level": "=log_level", "--resource-manager": "!resource_manager",
          "--allow-remote": "!allow_remote"}
_LOOPBACK = {"127.0.0.1": _socket.AF_INET, "::1": _socket.AF_INET6}


class Fallback(Exception):
    """Not the common case: let the full path handle it."""


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop()


def parse_flags(argv) -> dict:
    """The flags of `_FLAGS` as {request key: value}; Fallback for anything else (argparse
    then parses: a flag it abbreviates, --help, a missing value). The cold `ctpm run` uses it
    too (cli.py)."""
    opts = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag, eq, value = arg.partition("=")
        spec = _FLAGS.get(flag)
        if spec is None:
            raise Fallback()
        if spec[0] == "!":
            if eq:
                raise Fallback()
            opts[spec[1:]] = True
            i += 1
            continue
        if not eq:
            if i + 1 >= len(argv):
                raise Fallback()
            value = argv[i + 1]
            i += 1
        i += 1
        if spec[0] == "+":
            opts.setdefault(spec[1:], []).append(value)
        else:
            opts[spec[1:]] = value
    return opts


def _address(text):
    """("unix", absolute path) or (family, host, port); Fallback for anything else."""
    if text.startswith("unix:"):
        path = text[5:]
        if not path or "\0" in path or "," in path or any(c.isspace() for c in path):
            raise Fallback()                # the full path names the problem
        path = os.path.abspath(path)
        if len((path + ".ctrl").encode()) > 107:
            raise Fallback()
        return ("unix", path)
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host not in _LOOPBACK or not port.isdigit() or int(port) > 65534:
        raise Fallback()
    return (_LOOPBACK[host], host, int(port))


class _Bound:
    def __init__(self):
        self.socks, self.paths = [], []

    def unix(self, path):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if (st.st_mode & 0o170000) != 0o140000:
                raise OSError(f"cannot listen on unix:{path}: File exists")
            probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except ConnectionRefusedError:
                os.unlink(path)              # left behind by a process that died
            else:
                raise OSError(f"cannot listen on unix:{path}: a server is running there")
            finally:
                probe.close()
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        self.socks.append(s)
        try:
            s.bind(path)
        except OSError as e:
            raise OSError(f"cannot listen on unix:{path}: {e.strerror}") from None
        self.paths.append(path)
        os.chmod(path, 0o600)
        s.listen(128)
        return s

    def tcp(self, family, host, port):
        s = _socket.socket(family, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        try:
            s.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
            if family == _socket.AF_INET6:
                s.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 1)
            s.bind((host, port))
            s.listen(128)
        except OSError:
            s.close()
            raise
        self.socks.append(s)
        return s

    def tcp_pair(self, family, host, port, text):
        """Ports P and P + 1; with 0, a free adjacent pair below the ephemeral range (as
        transport/bind.py, which says why)."""
        tries = [port] if port else [10000 + int.from_bytes(os.urandom(2), "big") % 22000
                                     for _ in range(50)] + [0] * 20
        for p in tries:
            try:
                first = self.tcp(family, host, p)
            except OSError as e:
                if port:
                    raise OSError(f"cannot listen on {text}: {e.strerror}") from None
                continue
            p = first.getsockname()[1]
            try:
                if p == 65535:
                    raise OSError("port 65536")
                second = self.tcp(family, host, p + 1)
            except OSError as e:
                self.socks.remove(first)
                first.close()
                if port:
                    raise OSError(f"cannot listen on port {p + 1} of {text}: "
                                  f"{e.strerror or e}") from None
                continue
            return p, first, second
        raise OSError(f"cannot listen on {text}: no free pair of adjacent ports found")

    def close(self):
        for s in self.socks:
            s.close()
        for path in self.paths:
            try:
                os.unlink(path)
            except OSError:
                pass


def _json(value) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        out = ['"']
        for c in value:
            if c in '"\\':
                out.append("\\" + c)
            elif c < " " or c > "~":
                out.append("\\u%04x" % ord(c) if ord(c) < 0x10000 else
                           "\\u%04x\\u%04x" % (0xD800 + ((ord(c) - 0x10000) >> 10),
                                               0xDC00 + ((ord(c) - 0x10000) & 0x3FF)))
            else:
                out.append(c)
        return "".join(out) + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_json(v) for v in value) + "]"
    return "{" + ", ".join(f"{_json(k)}: {_json(v)}" for k, v in value.items()) + "}"


def _line(sock, buf=b""):
    while b"\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return None, buf
        buf += chunk
    line, _, rest = buf.partition(b"\n")
    return line, rest


def run(argv):
    """`ctpm run ARGV` through the host, or None when the full path must handle it."""
    if "LISTEN_FDS" in os.environ:
        return None
    try:
        opts = parse_flags(argv)
        host = opts.get("host") or os.environ.get("CTPM_HOST")
        if not host:
            return None
        listeners = {kind: [_address(a) for a in opts.get(kind, ())]
                     for kind in ("mssim", "swtpm", "svsm")}
        if any(a[0] != "unix" for a in listeners["svsm"]) or opts.get("log_level") not in (
                None, "debug", "info", "warning", "error", "critical"):
            return None
    except Fallback:
        return None
    if not any(listeners.values()):
        listeners["mssim"] = [(_socket.AF_INET, "127.0.0.1", 2321)]
    path = host[5:] if host.startswith("unix:") else host
    bound = _Bound()
    layout, ready = [], []      # the adopt request's socket layout; the ready line
    try:
        for kind in ("mssim", "swtpm", "svsm"):
            for a in listeners[kind]:
                if a[0] == "unix":
                    bound.unix(a[1])
                    second = [bound.unix(a[1] + ".ctrl")] if kind != "svsm" else []
                    layout.append([kind, True, f"{kind} unix:{a[1]}", 1, len(second)])
                    ready.append((kind, [kind, None, None, a[1]],
                                  f"unix:{a[1]}" + (f",{a[1]}.ctrl" if second else "")))
                else:
                    family, h, port = a
                    shown = f"[{h}]" if ":" in h else h
                    port, _, _ = bound.tcp_pair(family, h, port, f"{shown}:{a[2]}")
                    layout.append([kind, False, f"{kind} {shown}:{a[2]}", 1, 1])
                    ready.append((kind, [kind, h, port, None], f"{shown}:{port},{port + 1}"))
    except OSError as e:
        bound.close()
        print(f"ctpm: {e.args[0] if e.args and isinstance(e.args[0], str) else e}",
              file=sys.stderr)
        return 1
    _signal.signal(_signal.SIGTERM, _raise_stop)
    _signal.signal(_signal.SIGINT, _raise_stop)
    sock = None
    try:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        try:
            sock.connect(path)
        except OSError as e:
            print(f"ctpm: cannot reach the host at {path}: {e.strerror}", file=sys.stderr)
            return 1
        absolute = {k: os.path.abspath(opts[k]) if opts.get(k) else None
                    for k in ("state", "snp_sim_dir")}
        request = {
            "op": "adopt", "pid": os.getpid(), "name": opts.get("name"), "config": None,
            "mssim": [r[2].split(",")[0] for r in ready if r[0] == "mssim"],
            "swtpm": [r[2].split(",")[0] for r in ready if r[0] == "swtpm"],
            "svsm": [r[2] for r in ready if r[0] == "svsm"],
            "state": absolute["state"], "allow_remote": bool(opts.get("allow_remote")),
            "resource_manager": bool(opts.get("resource_manager")),
            "mode": opts.get("mode"), "ak": opts.get("ak"),
            "snp_provider": opts.get("snp_provider"), "snp_sim_dir": absolute["snp_sim_dir"],
            "groups": layout, "bound": [r[1] for r in ready],
        }
        # SCM_RIGHTS wants the descriptors as native ints: 4 bytes each, little-endian here
        fds = b"".join(s.fileno().to_bytes(4, sys.byteorder, signed=True) for s in bound.socks)
        sock.sendmsg([_json(request).encode() + b"\n"],
                     [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        line, buf = _line(sock)
        if line is None or not line.startswith(b'{"ok": true'):
            import json
            answer = json.loads(line) if line else {"error": "the host closed the connection"}
            if answer.get("config_error"):
                print(f"ctpm: config error: {answer.get('error')}", file=sys.stderr)
                return 2
            print(f"ctpm: the host refused: {answer.get('error')}", file=sys.stderr)
            return 1
        try:
            print("ctpm: ready " + " ".join(f"{r[0]}={r[2]}" for r in ready), flush=True)
        except OSError:
            pass
        _line(sock, buf)                # {"stopped": ...}, or the host went away
        return 0
    except _Stop:
        if sock is not None:            # the host stops the instance, saves NV
            _signal.signal(_signal.SIGTERM, _signal.SIG_IGN)
            _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
            try:
                sock.shutdown(_socket.SHUT_WR)
                sock.settimeout(STOP_WAIT)
                _line(sock)
            except OSError:
                pass
        return 0
    except OSError as e:
        print(f"ctpm: the host connection failed: {e.strerror or e}", file=sys.stderr)
        return 1
    finally:
        if sock is not None:
            sock.close()
        bound.close()
