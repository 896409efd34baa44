"""Run `ctpm run` as a real subprocess, for clients that must be separate programs
(tpm2-tools) and for testing the command itself.

    with run_daemon() as d:                 # mssim and swtpm on 127.0.0.1, free ports
        subprocess.run(["tpm2_getrandom", "-T", d.tcti("mssim"), "8"], check=True)

Ports are always chosen by the daemon (port 0) and read back from its ready line, because
other processes share the machine.
"""
import contextlib
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READY_PREFIX = "ctpm: ready "


def parse_ready_line(line: str) -> list:
    """`ctpm: ready mssim=H:P,P2 swtpm=unix:/x,/x.ctrl` -> [(kind, host, port, path), ...]"""
    if not line.startswith(READY_PREFIX):
        raise ValueError(f"not a ready line: {line!r}")
    endpoints = []
    for item in line[len(READY_PREFIX):].split():
        kind, _, value = item.partition("=")
        first = value.split(",")[0]
        if first.startswith("unix:"):
            endpoints.append((kind, None, None, first[5:]))
        else:
            host, _, port = first.rpartition(":")
            endpoints.append((kind, host.strip("[]"), int(port), None))
    return endpoints


class Daemon:
    """A running `ctpm run` process."""

    def __init__(self, proc, ready_line: str, stderr_file):
        self.proc = proc
        self.ready_line = ready_line
        self.endpoints = parse_ready_line(ready_line)
        self._stderr = stderr_file

    def endpoint(self, kind: str):
        for e in self.endpoints:
            if e[0] == kind:
                return e
        raise LookupError(f"the daemon has no {kind} listener")

    @property
    def mssim_port(self) -> int:
        return self.endpoint("mssim")[2]

    @property
    def swtpm_port(self) -> int:
        return self.endpoint("swtpm")[2]

    def tcti(self, kind: str = "mssim") -> str:
        """A TCTI string for tpm2-tools (`-T`) or tpm2-pytss: 'mssim' or 'swtpm'."""
        _, host, port, path = self.endpoint(kind)
        return f"{kind}:path={path}" if path else f"{kind}:host={host},port={port}"

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal the daemon and wait for it; returns its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def command(*args) -> list:
    """The argv of `ctpm ARGS...` with this interpreter (works without installing ctpm)."""
    return [sys.executable, "-m", "ctpm", *args]


def environment() -> dict:
    """os.environ with this ctpm importable in a child process."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def start(*args, timeout: float = 10.0, free_ports: bool = True) -> Daemon:
    """Start `ctpm run ARGS` and wait for its ready line.

    Unless ARGS name listeners (or `free_ports` is False), the daemon serves mssim and swtpm
    on 127.0.0.1 with ports of its choosing.
    """
    named = any(a.split("=")[0] in ("--mssim", "--swtpm", "--config") for a in args)
    if free_ports and not named:
        args = ("--mssim", "127.0.0.1:0", "--swtpm", "127.0.0.1:0") + args
    stderr = tempfile.TemporaryFile()
    proc = subprocess.Popen(command("run", *args), stdout=subprocess.PIPE, stderr=stderr,
                            stdin=subprocess.DEVNULL, env=environment())
    try:
        line = _read_line(proc, timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        stderr.seek(0)
        err = stderr.read().decode(errors="replace").strip()
        stderr.close()
        raise RuntimeError(f"ctpm run {' '.join(args)} did not become ready "
                           f"(exit status {proc.returncode}): {err}") from None
    return Daemon(proc, line, stderr)


def _read_line(proc, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    fd = proc.stdout.fileno()
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError("no ready line")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise EOFError("the daemon exited")
        data += chunk
    return data.decode().strip()


@contextlib.contextmanager
def run_daemon(*args, timeout: float = 10.0, free_ports: bool = True):
    """Context manager: a `Daemon` (see `start`) that is stopped (SIGTERM) on exit."""
    daemon = start(*args, timeout=timeout, free_ports=free_ports)
    try:
        yield daemon
    finally:
        daemon.stop()
        daemon.proc.stdout.close()
        daemon._stderr.close()


@contextlib.contextmanager
def run_host(control_path, *args, timeout: float = 20.0):
    """Context manager: a `ctpm host serve --control CONTROL_PATH ARGS` process, ready (its
    ready line read); stopped with SIGTERM on exit. Yields the Popen."""
    stderr = tempfile.TemporaryFile()
    proc = subprocess.Popen(command("host", "serve", "--control", str(control_path), *args),
                            stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
                            env=environment())
    try:
        try:
            _read_line(proc, timeout)
        except BaseException:
            proc.kill()
            proc.wait()
            stderr.seek(0)
            raise RuntimeError("ctpm host did not become ready: "
                               + stderr.read().decode(errors="replace").strip()) from None
        proc.stderr_file = stderr
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()
        stderr.close()
