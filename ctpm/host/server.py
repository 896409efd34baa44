"""The host: many independent TPM instances in one process, one trio event loop.

An instance is a name, a `Config` (listeners, state directory, limits: the same keys as
`ctpm run`'s file), a backend (ctpm.backend) and its sockets. Instances share nothing but the
event loop: each has its own engine, lock, counters and nursery; an exception in one is
logged with its name and ends that instance only; a client's SHUTDOWN (QEMU) or STOP stops
its instance only. Instances come from the instance directory (`NAME.toml`, read at start and
on SIGHUP / `ctpm host reload`), from `ctpm host add` (the control socket), and from the warm
path of `ctpm run --host`, which hands over sockets it bound itself (`adopt`).

Slow work never runs in the loop (see EngineBackend): building an instance (reading or
manufacturing its state) runs in a worker thread, as do RSA key generation and NV writes.
"""
import contextvars
import array
import json
import logging
import os
import re
import signal
import socket
import sys
import time

import trio

from ..config import ConfigError, load
from ..daemon import build_backend, sd_notify, serve_instance
from ..transport.bind import (Bindings, Bound, StartupError, bind_all, bind_unix,
                              unlink_quietly)
from ..transport.fastpath import EpollSet
from . import control

log = logging.getLogger("ctpm.host")

INSTANCE = contextvars.ContextVar("ctpm_instance", default="-")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
MAX_FDS = 64
# The GIL is handed over every 5 ms by default: a worker thread generating an RSA key would
# delay the event loop (every other instance) by that much. 0.5 ms keeps the stall small.
SWITCH_INTERVAL = 0.0005


class HostError(Exception):
    """A request the host refuses; str() is one line for the client."""


class InstanceFilter(logging.Filter):
    """Adds `instance` (the name of the instance whose task logs) to every record."""

    def filter(self, record):
        record.instance = INSTANCE.get()
        return True


class Instance:
    __slots__ = ("name", "config", "source", "stamp", "scope", "tpmhost", "listening",
                 "started", "stopped", "reason", "request", "worker")

    def __init__(self, name, config, source, stamp=None, request=None):
        self.name = name
        self.config = config
        self.source = source            # "dir", "runtime" or "warm"
        self.stamp = stamp              # the instance file's (mtime_ns, size) for reload
        self.request = request          # what defines `config` (a worker rebuilds it)
        self.worker = None              # the Worker serving it (a host with workers)
        self.scope = trio.CancelScope()
        self.tpmhost = None
        self.listening = None
        self.started = None
        self.stopped = trio.Event()
        self.reason = None

    def summary(self) -> dict:
        out = {"name": self.name, "source": self.source,
               "listening": str(self.listening) if self.listening else None,
               "state": self.config.state_dir}
        if self.worker is not None:
            out["worker"] = self.worker.index
        return out

    def status(self) -> dict:
        out = self.summary()
        out["uptime"] = round(time.time() - self.started, 3) if self.started else None
        if self.tpmhost is not None:
            out.update(self.tpmhost.counters.as_dict())
            out["backend"] = self.tpmhost.backend.describe()
        return out


class Host:
    def __init__(self, directory=None, control_path=None, workers=0, log_level="info"):
        self.directory = directory
        self.control_path = control_path
        self.instances = {}
        self.nursery = None
        self.epoll_set = None       # the swtpm fast paths of all instances share it
        # workers > 0: the instances live in that many worker processes (ctpm/host/
        # workers.py), this process is only the control plane
        self.worker_count = workers
        self.workers = []
        self.log_level = log_level

    # -- instances ------------------------------------------------------------------------

    async def add(self, name, config, *, source="runtime", stamp=None, bindings=None,
                  request=None):
        """Start an instance; returns its `Instance` once every socket listens."""
        if not NAME.match(name or ""):
            raise HostError(f"bad instance name {name!r} (letters, digits, _.@- ; 64 at most)")
        if name in self.instances:
            raise HostError(f"instance {name} exists")
        if config.state_dir:
            # the directory's lock is a POSIX lock, which one process holds once: two
            # instances of this process would both get it
            mine = os.path.realpath(config.state_dir)
            for other in self.instances.values():
                if other.config.state_dir and os.path.realpath(other.config.state_dir) == mine:
                    raise HostError(f"state directory {config.state_dir} is in use by "
                                    f"instance {other.name}")
        instance = Instance(name, config, source, stamp, request)
        self.instances[name] = instance
        try:
            await self.nursery.start(self._run, instance, bindings)
        except BaseException:
            if self.instances.get(name) is instance:
                del self.instances[name]
            raise
        return instance

    async def _run(self, instance, bindings, task_status=trio.TASK_STATUS_IGNORED):
        INSTANCE.set(instance.name)
        started = False

        def report(listening):
            nonlocal started
            started = True
            instance.listening = listening
            instance.started = time.time()
            task_status.started(instance)

        try:
            with instance.scope:
                if self.workers:
                    from .workers import run_in_worker
                    instance.reason = await run_in_worker(self.workers, instance, bindings,
                                                          report)
                    bindings = None             # handed over, or closed there
                    log.info("stopped (%s)", instance.reason or "removed")
                    return
                backend = await trio.to_thread.run_sync(build_backend, instance.config)
                if bindings is None:
                    bindings = bind_all(instance.config)
                status = _Status(report)
                instance.reason = await serve_instance(
                    instance.config, backend, bindings, name=instance.name,
                    on_host=lambda h: setattr(instance, "tpmhost", h),
                    epoll_set=self.epoll_set, task_status=status)
                log.info("stopped (%s)", instance.reason or "removed")
        except Exception as e:
            if not started:
                raise
            log.exception("instance failed: %s", e)     # this instance only
        finally:
            if bindings is not None and not started:
                bindings.close()
            if self.instances.get(instance.name) is instance:
                del self.instances[instance.name]
            instance.stopped.set()

    async def remove(self, name, why="removed"):
        instance = self.instances.get(name)
        if instance is None:
            raise HostError(f"no instance {name}")
        if instance.tpmhost is not None:
            instance.tpmhost.request_stop(why)      # a clean stop: NV saved
        else:           # not started yet, or in a worker (which stops it cleanly)
            instance.reason = instance.reason or why
            instance.scope.cancel()
        await instance.stopped.wait()

    # -- the instance directory -----------------------------------------------------------

    def _declared(self):
        """{name: (path, stamp)} of the instance files in the directory."""
        found = {}
        if not self.directory:
            return found
        try:
            entries = sorted(os.scandir(self.directory), key=lambda e: e.name)
        except OSError as e:
            log.error("instance directory %s: %s", self.directory, e.strerror)
            return found
        for entry in entries:
            if entry.name.endswith(".toml") and entry.is_file():
                st = entry.stat()
                found[entry.name[:-5]] = (entry.path, (st.st_mtime_ns, st.st_size))
        return found

    async def reload(self) -> dict:
        """Bring the running set in line with the directory: start new and stopped ones,
        restart changed ones, stop those whose file is gone. One bad file costs only its
        own instance (logged and reported)."""
        declared = self._declared()
        report = {"started": [], "stopped": [], "failed": {}}
        for name, instance in list(self.instances.items()):
            if instance.source != "dir":
                continue
            if name not in declared or declared[name][1] != instance.stamp:
                await self.remove(name, "instance file changed or removed")
                report["stopped"].append(name)
        for name, (path, stamp) in declared.items():
            if name in self.instances:
                if self.instances[name].source != "dir":
                    report["failed"][name] = "a runtime instance has this name"
                continue
            try:
                config = load(path, default_listener=False)
                await self.add(name, config, source="dir", stamp=stamp,
                               request={"config": path})
                report["started"].append(name)
            except (ConfigError, StartupError, HostError, OSError) as e:
                report["failed"][name] = _one_line(e)
                log.error("instance %s not started: %s", name, _one_line(e))
            except Exception as e:      # StoreError and the like: also this one only
                report["failed"][name] = _one_line(e)
                log.error("instance %s not started: %s", name, _one_line(e))
        return report

    # -- serving --------------------------------------------------------------------------

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED):
        listener = _bind_control(self.control_path)
        try:
            with trio.open_signal_receiver(signal.SIGHUP) as hups:
                async with trio.open_nursery() as nursery:
                    self.nursery = nursery
                    if self.worker_count:
                        from .workers import start_workers
                        self.workers = await start_workers(nursery, self.worker_count,
                                                           self.log_level)
                    else:
                        await trio.to_thread.run_sync(_preload)
                        self.epoll_set = EpollSet()
                        nursery.start_soon(self.epoll_set.watch)
                    report = await self.reload()
                    nursery.start_soon(self._control_loop, listener)
                    nursery.start_soon(self._on_hup, hups)
                    log.info("host ready: %d instances, control %s", len(self.instances),
                             self.control_path)
                    sd_notify(f"READY=1\nSTATUS={len(self.instances)} instances")
                    task_status.started(report)
        finally:
            sd_notify("STOPPING=1")
            listener.close()
            unlink_quietly(self.control_path)

    async def stop_all(self):
        """Stop every instance cleanly (each saves its NV), then the host."""
        async with trio.open_nursery() as nursery:
            for name in list(self.instances):
                nursery.start_soon(self.remove, name, "host stopping")
        if self.workers:
            from .workers import stop_workers
            await stop_workers(self.workers)
        self.nursery.cancel_scope.cancel()

    async def _on_hup(self, hups):
        async for _ in hups:
            log.info("SIGHUP: reloading %s", self.directory)
            await self.reload()

    async def _control_loop(self, listener):
        while True:
            sock, _ = await listener.accept()
            self.nursery.start_soon(self._control_connection, sock)

    async def _control_connection(self, sock):
        fds = []
        try:
            with sock:
                buf = b""
                while True:
                    data, ancdata, _flags, _addr = await sock.recvmsg(
                        control.MAX_LINE, socket.CMSG_SPACE(MAX_FDS * 4))
                    fds.extend(_fds(ancdata))
                    if not data:
                        return
                    buf += data
                    if len(buf) > control.MAX_LINE:
                        await sock.send(b'{"ok": false, "error": "request too long"}\n')
                        return
                    while b"\n" in buf:
                        line, _, buf = buf.partition(b"\n")
                        if not await self._request(sock, line, fds):
                            return
        except OSError as e:
            log.debug("control connection: %s", e)
        except Exception:
            log.exception("control connection failed")
        finally:
            for fd in fds:
                os.close(fd)

    async def _request(self, sock, line, fds) -> bool:
        """Answer one request; False ends the connection."""
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("not an object")
            op = req.get("op")
            if op == "adopt":
                return await self._adopt(sock, req, fds)
            answer = await self._answer(op, req)
        except (HostError, ConfigError, StartupError, ValueError, TypeError, KeyError,
                OSError) as e:
            answer = {"ok": False, "error": _one_line(e)}
        except Exception as e:      # StoreError and the like: refuse, keep serving
            answer = {"ok": False, "error": _one_line(e)}
        await _send_line(sock, answer)
        return True

    async def _answer(self, op, req) -> dict:
        if op == "list":
            return {"ok": True, "instances": [i.summary() for i in self.instances.values()]}
        if op == "status":
            name = req.get("name")
            chosen = [self.instances[name]] if name in self.instances else (
                list(self.instances.values()) if name is None else None)
            if chosen is None:
                raise HostError(f"no instance {name}")
            out = {"ok": True, "pid": os.getpid(), "rss_kib": _rss_kib(),
                   "instances": [i.status() for i in chosen]}
            if self.workers:
                from .workers import worker_status
                await worker_status(self.workers, out)
            return out
        if op == "add":
            config = _config(req)
            instance = await self.add(req["name"], config, request=_defining(req))
            return {"ok": True, "name": instance.name, "listening": str(instance.listening)}
        if op == "remove":
            await self.remove(req["name"])
            return {"ok": True}
        if op == "reload":
            return {"ok": True, **(await self.reload())}
        raise HostError(f"unknown op {op!r}")

    async def _adopt(self, sock, req, fds) -> bool:
        """The warm path: serve sockets bound by a `ctpm run --host` process, for as long as
        both it and the instance live."""
        try:
            config = _config(req)
            bindings = _bindings(req, fds)
            fds.clear()                                 # owned by the bindings now
            name = req.get("name") or f"run-{req.get('pid', 'x')}"
            instance = await self.add(name, config, source="warm", bindings=bindings,
                                      request=_defining(req))
        except Exception as e:
            await _send_line(sock, {"ok": False, "error": _one_line(e),
                                    "config_error": isinstance(e, ConfigError)})
            return False
        await _send_line(sock, {"ok": True, "name": instance.name,
                                "listening": str(instance.listening)})
        async with trio.open_nursery() as nursery:
            async def client_gone():
                said = b""          # a host with workers says why: {"stop": REASON}
                while data := await sock.recv(4096):
                    said = (said + data)[-1024:]
                why = "warm client gone"
                try:
                    why = str(json.loads(said)["stop"]) if said.strip() else why
                except (ValueError, KeyError, TypeError):
                    pass
                if self.instances.get(instance.name) is instance:
                    await self.remove(instance.name, why)
                nursery.cancel_scope.cancel()
            nursery.start_soon(client_gone)
            await instance.stopped.wait()
            nursery.cancel_scope.cancel()
        try:
            await _send_line(sock, {"stopped": instance.reason or "removed"})
        except OSError:
            pass
        return False


class _Status:
    """A task_status that lets the host note the instance as started."""

    def __init__(self, report):
        self.started = report


def _config(req):
    if not isinstance(req.get("name") or "", str):
        raise HostError("name must be a string")
    return load(req.get("config"), mssim=req.get("mssim"), swtpm=req.get("swtpm"),
                state_dir=req.get("state"), allow_remote=bool(req.get("allow_remote")),
                resource_manager=bool(req.get("resource_manager")), mode=req.get("mode"),
                ak=req.get("ak"), snp_provider=req.get("snp_provider"),
                snp_sim_dir=req.get("snp_sim_dir"), upstream=req.get("upstream"),
                anchor=bool(req.get("anchor")), nv_range=req.get("nv_range"),
                persistent_range=req.get("persistent_range"), svsm=req.get("svsm") or None,
                default_listener=False)


_DEFINING = ("config", "mssim", "swtpm", "svsm", "state", "allow_remote", "resource_manager",
             "mode", "ak", "snp_provider", "snp_sim_dir", "upstream", "anchor", "nv_range",
             "persistent_range")


def _defining(req) -> dict:
    """The keys of an add/adopt request that `_config` builds the configuration from."""
    return {k: req[k] for k in _DEFINING if req.get(k) is not None}


def _bindings(req, fds) -> Bindings:
    """Sockets handed over by the warm path, laid out as the client's `Bindings`."""
    groups, used, made = [], 0, []
    try:
        for kind, unix, label, n_first, n_second in req["groups"]:
            if kind not in ("mssim", "swtpm", "svsm") or used + n_first + n_second > len(fds):
                raise HostError("bad socket layout")
            socks = []
            for fd in fds[used:used + n_first + n_second]:
                s = socket.socket(fileno=fd)
                made.append(s)
                if s.type != socket.SOCK_STREAM:
                    raise HostError("a handed-over descriptor is not a stream socket")
                socks.append(s)
            groups.append((kind, bool(unix), str(label), socks[:n_first], socks[n_first:]))
            used += n_first + n_second
    except BaseException:
        for s in made:
            s.detach()          # the descriptors are still closed by the caller
        raise
    bound = tuple(Bound(kind, host=host, port=port, path=path)
                  for kind, host, port, path in req["bound"])
    # the client owns (and removes) its socket files
    return Bindings(groups, bound, [])


def _fds(ancdata):
    out = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            a = array.array("i")
            a.frombytes(payload[:len(payload) - len(payload) % a.itemsize])
            out.extend(a)
    return out


async def _send_line(sock, obj):
    data = json.dumps(obj).encode() + b"\n"
    while data:
        n = await sock.send(data)
        data = data[n:]


def _bind_control(path):
    return trio.socket.from_stdlib_socket(bind_unix(path))


def _rss_kib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _preload():
    """Import what every instance needs before the host says it is ready, so the first
    `add` or warm `ctpm run` does not wait ~130 ms for the engine's imports."""
    from .. import modes  # noqa: F401
    from ..engine import tpm  # noqa: F401
    from ..svsm import server  # noqa: F401
    from ..transport import resmgr  # noqa: F401


def _one_line(e) -> str:
    return (str(e) or type(e).__name__).splitlines()[0]


def raise_fd_limit():
    """Hundreds of instances need thousands of descriptors: take the hard limit."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def main(directory, control_path, workers=0, log_level="info", worker_of=None):
    """`ctpm host serve`: until SIGINT/SIGTERM (every instance saves its state first).
    `worker_of`: this is a worker of that host process, and stops (cleanly) without it."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    raise_fd_limit()
    host = Host(directory, control_path, workers, log_level)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as stops:
        async with trio.open_nursery() as nursery:
            await nursery.start(host.serve)
            if worker_of is not None:
                async def orphaned():
                    while os.getppid() == worker_of:
                        await trio.sleep(1)
                    log.error("the host process %d is gone: stopping", worker_of)
                    await host.stop_all()
                    nursery.cancel_scope.cancel()
                nursery.start_soon(orphaned)
            try:
                print(f"ctpm host: ready control={control_path} "
                      f"instances={len(host.instances)}", flush=True)
            except OSError:
                pass
            async for signum in stops:
                log.info("stopping on %s", signal.Signals(signum).name)
                await host.stop_all()
                break
            nursery.cancel_scope.cancel()
