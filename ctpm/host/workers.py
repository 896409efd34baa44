"""A host's instances sharded over worker processes (`ctpm host serve --workers N`).

One process runs one event loop on one core; with N workers the host process keeps the
control plane (control socket, instance directory, names, binding the sockets) and each
instance runs in one of N worker processes, each a plain `ctpm host serve` on a private
control socket. The hand-over is the warm path's `adopt` (server.py): the host binds the
instance's sockets, passes them with its defining request to the least loaded worker
(SCM_RIGHTS) and keeps that connection open while the instance lives; the worker answers
`{"stopped": REASON}` when a client stops it, and stops it cleanly (NV saved) when the host
closes its side. The host unlinks the socket files it made. A worker that dies ends its
instances (logged; state on disk is as after its last command) and is started again.
"""
import array
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

import trio

from ..transport.bind import bind_all, unlink_quietly

log = logging.getLogger("ctpm.host")
STOP_WAIT = 60.0


class WorkerRefused(Exception):
    """The worker refused an instance (its one-line reason), or went away."""


class Worker:
    def __init__(self, index, control):
        self.index = index
        self.control = control
        self.proc = None
        self.load = 0               # instances it serves
        self.stopping = False


def _spawn(worker, log_level):
    """Start worker's process; returns once it is ready (its ready line)."""
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)      # only the host speaks to systemd
    env.pop("LISTEN_FDS", None)
    argv = [sys.executable, "-m", "ctpm", "host", "serve", "--control", worker.control,
            "--log-level", log_level, "--worker-of", str(os.getpid())]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env,
                            start_new_session=True)    # the terminal's ^C goes to the host
    line = proc.stdout.readline()
    proc.stdout.close()
    if not line.startswith(b"ctpm host: ready"):
        proc.wait()
        raise RuntimeError(f"worker {worker.index} did not start (exit {proc.returncode})")
    worker.proc = proc


async def start_workers(nursery, count, log_level):
    directory = tempfile.mkdtemp(prefix="ctpm-host-workers-")      # mode 0700
    workers = [Worker(i, os.path.join(directory, f"w{i}.sock")) for i in range(count)]
    for w in workers:
        await trio.to_thread.run_sync(_spawn, w, log_level)
        nursery.start_soon(_watch, w, log_level, directory)
    log.info("%d worker processes: %s", count, ", ".join(str(w.proc.pid) for w in workers))
    return workers


async def _watch(worker, log_level, directory):
    """Start the worker again if it dies (its instances end with it)."""
    try:
        while True:
            status = await trio.to_thread.run_sync(worker.proc.wait, abandon_on_cancel=True)
            if worker.stopping:
                return
            log.error("worker %d (pid %d) exited with %s: its instances are gone; "
                      "starting it again", worker.index, worker.proc.pid, status)
            worker.load = 0
            while not worker.stopping:
                unlink_quietly(worker.control)
                try:
                    await trio.to_thread.run_sync(_spawn, worker, log_level)
                    break
                except (OSError, RuntimeError) as e:     # the others go on meanwhile
                    log.error("worker %d: %s; trying again in 1 s", worker.index, e)
                    await trio.sleep(1)
    finally:
        if worker.stopping and worker.index == 0:
            shutil.rmtree(directory, ignore_errors=True)


async def stop_workers(workers):
    """SIGTERM each worker (each stops what it still serves, saving NV) and wait."""
    for w in workers:
        w.stopping = True
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGTERM)
    for w in workers:
        try:
            await trio.to_thread.run_sync(w.proc.wait, STOP_WAIT)
        except subprocess.TimeoutExpired:
            log.error("worker %d did not stop in %d s: killed", w.index, STOP_WAIT)
            w.proc.kill()
            await trio.to_thread.run_sync(w.proc.wait)
    shutil.rmtree(os.path.dirname(workers[0].control), ignore_errors=True)


async def _connect(worker):
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.connect(worker.control)
    except OSError:
        sock.close()
        raise
    return sock


async def _line(sock, buf=b""):
    while b"\n" not in buf:
        chunk = await sock.recv(65536)
        if not chunk:
            return None, buf
        buf += chunk
    line, _, rest = buf.partition(b"\n")
    return json.loads(line), rest


async def _send(sock, data, fds=()):
    if fds:
        n = await sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                         array.array("i", fds).tobytes())])
        data = data[n:]
    while data:
        data = data[await sock.send(data):]


async def run_in_worker(workers, instance, bindings, report):
    """Serve `instance` in the least loaded worker until it stops; returns the reason.
    `bindings`: sockets already bound (the warm path's), else the host binds them."""
    from ..config import ConfigError
    worker = min(workers, key=lambda w: w.load)
    if bindings is None:
        bindings = bind_all(instance.config)
    sock = None
    worker.load += 1
    try:
        try:
            sock = await _connect(worker)
            request = {**instance.request, "op": "adopt", "name": instance.name,
                       "groups": [[kind, unix, label, len(first), len(second)]
                                  for kind, unix, label, first, second in bindings.groups],
                       "bound": [[b.kind, b.host, b.port, b.path] for b in bindings.bound]}
            await _send(sock, json.dumps(request).encode() + b"\n",
                        [s.fileno() for s in bindings.sockets()])
            answer, buf = await _line(sock)
        finally:
            for s in bindings.sockets():        # the worker has its own now
                s.close()
        if answer is None:
            raise WorkerRefused(f"worker {worker.index} closed the connection")
        if not answer.get("ok"):
            error = answer.get("error", "refused")
            raise ConfigError(error) if answer.get("config_error") else WorkerRefused(error)
        instance.worker = worker
        report(answer["listening"])
        try:
            answer, _ = await _line(sock, buf)
        except BaseException:
            # removed (cancelled): close our side, the worker stops it and says so
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + STOP_WAIT
                try:
                    await _send(sock, json.dumps({"stop": instance.reason or "removed"})
                                .encode() + b"\n")
                    sock.shutdown(socket.SHUT_WR)
                    await _line(sock, buf)
                except (OSError, ValueError):
                    pass
            raise
        if answer is None:
            return f"worker {worker.index} exited"
        return answer.get("stopped")
    finally:
        worker.load -= 1
        if sock is not None:
            sock.close()
        for path in bindings.unix_paths:
            unlink_quietly(path)


async def worker_status(workers, out):
    """Merge each worker's counters into a host `status` answer (`out`)."""
    by_name = {i["name"]: i for i in out["instances"]}
    out["workers"] = []
    for w in workers:
        try:
            sock = await _connect(w)
            with sock:
                await _send(sock, b'{"op": "status"}\n')
                answer, _ = await _line(sock)
        except (OSError, ValueError):
            answer = None
        out["workers"].append({"index": w.index, "pid": w.proc.pid,
                               "rss_kib": (answer or {}).get("rss_kib"),
                               "instances": w.load})
        for i in (answer or {}).get("instances", ()):
            mine = by_name.get(i["name"])
            if mine is not None:
                for key, value in i.items():
                    if key not in ("source", "worker"):
                        mine.setdefault(key, value)
