"""The host's control protocol, client side (plain sockets: no trio, fast to import).

One JSON object per line each way over a unix stream socket. Requests carry `op` (`add`,
`remove`, `list`, `status`, `reload`, `adopt`); every answer has `ok` and, when false,
`error` (one line). `adopt` (the warm `ctpm run`) passes listening sockets along with the
request (SCM_RIGHTS); its connection stays open while the instance lives, and the host
sends `{"stopped": REASON}` and closes it when the instance stops (closing it from the
client's side removes the instance).
"""
import json
import os
import socket

ENV = "CTPM_HOST"
DEFAULT_PATH = "/run/ctpm/host.sock"
MAX_LINE = 1 << 16


class ControlError(Exception):
    """The host could not be reached or refused a request; str() is one line."""


def control_path(given=None) -> str:
    """`--host unix:PATH` / `--control PATH`, else $CTPM_HOST, else the default."""
    path = given or os.environ.get(ENV) or DEFAULT_PATH
    return path[5:] if path.startswith("unix:") else path


def connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.connect(path)
    except OSError as e:
        s.close()
        raise ControlError(f"cannot reach the host at {path}: {e.strerror}") from None
    return s


def send(sock, request: dict, fds=()):
    data = json.dumps(request).encode() + b"\n"
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                               bytes(_int_array(fds)))])
    else:
        sock.sendall(data)


def receive(sock, buf=b"") -> tuple:
    """(answer, rest of the buffer); ControlError if the host closed without one."""
    while b"\n" not in buf:
        chunk = sock.recv(MAX_LINE)
        if not chunk:
            raise ControlError("the host closed the control connection")
        buf += chunk
        if len(buf) > MAX_LINE:
            raise ControlError("answer too long")
    line, _, rest = buf.partition(b"\n")
    return json.loads(line), rest


def request(path: str, req: dict) -> dict:
    """One request, one answer; raises ControlError for `ok: false`."""
    with connect(path) as s:
        send(s, req)
        answer, _ = receive(s)
    if not answer.get("ok"):
        raise ControlError(answer.get("error", "refused"))
    return answer


def _int_array(values):
    import array
    return array.array("i", values)
