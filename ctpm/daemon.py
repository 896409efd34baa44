"""The daemon: one TPM instance, every configured listener, a clean stop.

`serve()` binds everything before it reports readiness (so that "ready" means "connect now"),
then serves until cancelled or until a client asks it to stop (mssim STOP, swtpm SHUTDOWN),
and on the way out writes the NV image. `ctpm run` serves one instance this way; `ctpm host`
(ctpm/host/) serves many, each through `serve_instance` with its own backend and sockets.
Binding lives in transport/bind.py (no trio there: the warm path of `ctpm run` binds
without it).
"""
import errno
import logging
import os
import socket
from dataclasses import dataclass

import trio

from .backend import EngineBackend
from .transport.bind import Bindings, Bound, Listening, StartupError, bind_all, unlink_quietly
from .transport.fastpath import FastPath, MssimFastPath
from .transport.host import TpmHost, serve_connection
from .transport.mssim import MssimCommandPort, MssimPlatformPort
from .transport.swtpm import SwtpmControlChannel, SwtpmDataChannel

__all__ = ["Bindings", "Bound", "Listening", "Prebound", "StartupError", "build_backend",
           "serve",
           "serve_instance", "sd_notify"]

log = logging.getLogger("ctpm.daemon")


def build_backend(config):
    """The backend of `config`'s mode (ctpm/modes/): standard, ephemeral or svsm."""
    from .modes import build_backend as build
    return build(config)


async def serve(config, *, tpm=None, backend=None, prebound=(), on_ready=None,
                terminate_on_ctrl_close=False, bindings=None, adopted=None,
                task_status=trio.TASK_STATUS_IGNORED):
    """Serve `config`'s listeners and the `prebound` sockets (systemd's, or those swtpm's
    command line names: `Prebound`) for one TPM (built from `config` unless a `tpm` engine
    or a `backend` is given).

    Reports a `Listening` through `task_status` once every socket is bound and listening,
    after `on_ready(tpm)` (run as the platform: swtpm's --flags startup-clear).
    `terminate_on_ctrl_close`: stop when a swtpm control connection ends (swtpm -t).
    Raises `StartupError` (before reporting) when a socket cannot be bound. `bindings`:
    `config`'s listeners already bound (`ctpm run`'s early ready line); `adopted`: the
    connections served before trio (a `transport.early.Handover`).
    """
    if backend is None:
        try:
            backend = EngineBackend(tpm) if tpm is not None else build_backend(config)
        except BaseException:
            if bindings is not None:
                bindings.close()
            raise
    if bindings is None:
        bindings = bind_all(config)
    add_prebound(bindings, prebound)
    if on_ready is not None:
        await backend.run_exclusive(on_ready)

    def on_host(host):
        host.terminate_on_ctrl_close = terminate_on_ctrl_close
    if not getattr(config, "vtpm_proxy", False):
        return await serve_instance(config, backend, bindings, task_status=task_status,
                                    notify=True, on_host=on_host, adopted=adopted)
    from .transport import vtpm_proxy
    try:
        fd, number = vtpm_proxy.create_device()
    except vtpm_proxy.VtpmProxyError as e:
        bindings.close()
        raise StartupError(str(e)) from None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(vtpm_proxy.serve_fd, backend, fd)

        def started(listening):
            task_status.started(Listening(listening + (
                Bound("vtpm-proxy", path=f"/dev/tpm{number}"),)))
        reason = await serve_instance(config, backend, bindings, task_status=_Started(started),
                                      notify=True, on_host=on_host)
        nursery.cancel_scope.cancel()
    return reason


@dataclass(frozen=True)
class Prebound:
    """A listening socket bound by someone else (systemd, the swtpm command line): `role`
    is "mssim", "mssim-platform", "swtpm" (data) or "swtpm-ctrl"; `sock` a socket.socket;
    `unlink` a unix socket path to remove on the way out (if ours)."""

    role: str
    sock: object
    label: str
    unlink: str | None = None


ROLES = ("mssim", "mssim-platform", "swtpm", "swtpm-ctrl")


def add_prebound(bindings, prebound):
    """Add `Prebound` sockets to `bindings` as groups of their own (a swtpm control socket
    is a unix one, with SET_DATAFD, when its family says so)."""
    for p in prebound:
        if p.role not in ROLES:
            raise StartupError(f"{p.label}: unknown socket role {p.role!r}")
        kind, second = p.role.split("-")[0], "-" in p.role
        unix = p.sock.family == socket.AF_UNIX
        socks = ([], [p.sock]) if second else ([p.sock], [])
        bindings.groups.append((kind, unix, f"{p.role} {p.label}", *socks))
        bindings.bound = bindings.bound + (Bound(p.role, other=p.label),)
        if p.unlink:
            bindings.unix_paths.append(p.unlink)


class _Started:
    """A task_status that passes what is reported through a function."""

    def __init__(self, fn):
        self.started = fn


async def serve_instance(config, backend, bindings, *, name=None, notify=False,
                         on_host=None, epoll_set=None, adopted=None,
                         task_status=trio.TASK_STATUS_IGNORED):
    """Serve one instance on already bound sockets until it is asked to stop or cancelled;
    then close (and unlink) its sockets and save its state. Returns the stop reason (None
    when cancelled). `epoll_set`: the host's shared `transport.fastpath.EpollSet`;
    `adopted`: a `transport.early.Handover`, the swtpm connections served before trio."""
    host = TpmHost(backend, max_command_size=config.max_command_size,
                   stall_timeout=config.stall_timeout, name=name,
                   resource_manager=getattr(config, "resource_manager", False))
    if on_host is not None:
        on_host(host)
    if adopted is not None:
        host.swtpm_locality = adopted.locality
    try:
        async with trio.open_nursery() as nursery:
            host.spawn = nursery.start_soon
            for i, (kind, unix, label, first, second) in enumerate(bindings.groups):
                if kind == "mssim":
                    handlers = (MssimCommandPort(host), MssimPlatformPort(host))
                elif kind == "svsm":
                    from .svsm.server import SvsmPort
                    handlers = (SvsmPort(host), None)       # one channel
                else:
                    handlers = (SwtpmDataChannel(host), SwtpmControlChannel(host, unix=unix))
                for handler, socks, what in ((handlers[0], first, label),
                                             (handlers[1], second, label + " (second channel)")):
                    if isinstance(handler, MssimCommandPort) and host.resource_manager is None:
                        fast = MssimFastPath(host, handler, nursery, what, epoll_set)
                        nursery.start_soon(fast.watch)
                        for s in socks:
                            nursery.start_soon(fast.serve, trio.socket.from_stdlib_socket(s))
                        continue
                    if isinstance(handler, SwtpmDataChannel):
                        fast = FastPath(host, handler, nursery, what, epoll_set)
                        handlers[1].fast_path = fast
                        nursery.start_soon(fast.watch)
                        for s in socks:
                            nursery.start_soon(fast.serve, trio.socket.from_stdlib_socket(s))
                        for conn in adopted.data.get(i, ()) if adopted is not None else ():
                            fast.adopt(*conn)
                        continue
                    for s in socks:
                        listener = trio.SocketListener(trio.socket.from_stdlib_socket(s))
                        nursery.start_soon(_accept_loop, listener, handler, what, nursery)
                    if isinstance(handler, SwtpmControlChannel) and adopted is not None:
                        for s in adopted.control.get(i, ()):
                            stream = trio.SocketStream(trio.socket.from_stdlib_socket(s))
                            nursery.start_soon(_serve_one, handler, stream, what)
            listening = Listening(bindings.bound)
            log.info("listening: %s", listening)
            task_status.started(listening)
            if notify:
                sd_notify(f"READY=1\nSTATUS=serving {listening}")
            await host.stop_requested.wait()
            nursery.cancel_scope.cancel()
    finally:
        if notify:
            sd_notify("STOPPING=1")
        bindings.close()
        with trio.CancelScope(shield=True):
            await _save(backend)
        close = getattr(backend, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                log.exception("could not close the state")
    return host.stop_reason


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


async def _save(backend):
    try:
        await backend.save()
    except Exception:   # a failed save must not hide why we are stopping
        log.exception("could not write the NV state")


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
