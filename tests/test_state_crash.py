"""kill -9 at random points of an NV_Write / NV_Increment / EvictControl / HierarchyChangeAuth
workload: after each restart every acknowledged change is there and counters never go back.

The daemon is the real one (`daemon.serve` with a state directory, group commit, journal
compaction every few KiB so that kills land in compactions too), forked from the test
process so that a round costs milliseconds, not a Python start-up. The client speaks raw
mssim over TCP and keeps a model: for each change, the last acknowledged value and the one
in flight when the daemon died (either may be on disk after the crash; nothing older may).
"""
import dataclasses
import os
import random
import signal
import socket
import struct
import tempfile
import threading
import time

import pytest
import trio

from ctpm.config import load
from ctpm.daemon import serve
from ctpm.engine import tpm as _engine   # noqa: F401 - imported once, before the forks

from .tpmcmd import STARTUP_CLEAR, b2, cmd, params, pw_session, rc, u16, u32

ROUNDS = 200
OWNER = 0x40000001
DATA, COUNTER, PERSISTENT = 0x01500010, 0x01500011, 0x81000010
NO_DA = 0x02000000
DATA_ATTRS = 0x00060006 | NO_DA                 # owner/auth read and write
COUNTER_ATTRS = DATA_ATTRS | 0x10               # TPM_NT_COUNTER
ECC_STORAGE = (u16(0x0023) + u16(0x000B) + u32(0x00030072) + b2(b"")
               + u16(0x0006) + u16(128) + u16(0x0043) + u16(0x0010) + u16(0x0003)
               + u16(0x0010) + b2(b"") + b2(b""))


class Crashed(Exception):
    """The daemon went away mid-command."""


def _state_root():
    """tmpfs when there is one: the test is about process death, and fdatasync there is
    free; the durability of a disk flush itself is the kernel's business."""
    return "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


def _child(state_dir, wfd, protocol, key_file=None):
    config = dataclasses.replace(load(**{protocol: ["127.0.0.1:0"]}), state_dir=state_dir,
                                 compact_bytes=4096, state_key=key_file)

    async def main():
        async with trio.open_nursery() as nursery:
            listening = await nursery.start(serve, config)
            port = listening.first(protocol).port
            os.write(wfd, f"{port}\n".encode())
    try:
        trio.run(main)
    except BaseException as e:   # noqa: BLE001 - reported to the parent, which fails the test
        while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
            e = e.exceptions[0]
        os.write(wfd, f"ERR {type(e).__name__}: {e}\n".encode())


def start_daemon(state_dir, protocol="mssim", key_file=None):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            _child(state_dir, w, protocol, key_file)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        line = f.readline().strip()
    if not line.isdigit():
        os.waitpid(pid, 0)
        raise AssertionError(f"daemon did not start: {line or 'no output'}")
    return pid, int(line)


class Client:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)

    def __call__(self, command):
        try:
            self.sock.sendall(u32(8) + b"\0" + u32(len(command)) + command)
            size = struct.unpack(">I", self._recv(4))[0]
            rsp = self._recv(size)
            self._recv(4)
        except (OSError, struct.error) as e:
            raise Crashed() from e
        return rsp

    def _recv(self, n):
        buf = b""
        while len(buf) < n:
            part = self.sock.recv(n - len(buf))
            if not part:
                raise Crashed()
            buf += part
        return buf

    def ok(self, command):
        rsp = self(command)
        assert rc(rsp) == 0, f"rc {rc(rsp):#x} for command {command[6:10].hex()}"
        return rsp

    def close(self):
        self.sock.close()


class SwtpmClient(Client):
    """The swtpm data channel as tpm2-tss's swtpm TCTI uses it: a connection per command
    (the daemon's fast path: answered inline, NV flushed inline per epoll pass)."""

    def __init__(self, port):
        self.port = port
        self.sock = None

    def __call__(self, command):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                self.sock = s
                s.sendall(command)
                head = self._recv(10)
                return head + self._recv(struct.unpack(">I", head[2:6])[0] - 10)
        except (OSError, struct.error) as e:
            raise Crashed() from e
        finally:
            self.sock = None

    def close(self):
        pass


def nv_read(tpm, index, owner_auth):
    rsp = tpm.ok(cmd(0x14E, u16(8) + u16(0), handles=[index, index], sessions=[pw_session()]))
    return params(rsp)[2:10]


def define(tpm, owner_auth, index, attrs):
    public = u32(index) + u16(0x000B) + u32(attrs) + b2(b"") + u16(8)
    tpm.ok(cmd(0x12A, b2(b"") + b2(public), handles=[OWNER],
               sessions=[pw_session(owner_auth)]))


def owner_auth_is(tpm, auth):
    """HierarchyChangeAuth(owner, auth -> auth) succeeds only with the current owner auth."""
    return rc(tpm(cmd(0x129, b2(auth), handles=[OWNER], sessions=[pw_session(auth)]))) == 0


def persistent_exists(tpm):
    rsp = tpm.ok(cmd(0x17A, u32(1) + u32(PERSISTENT) + u32(1)))    # GetCapability(HANDLES)
    handles = params(rsp)[1 + 4 + 4:]
    return len(handles) >= 4 and struct.unpack(">I", handles[:4])[0] == PERSISTENT


class Model:
    """What the TPM must show: per item, the acknowledged value and the one in flight."""

    def __init__(self):
        self.acked = {"data": bytes(8), "counter": None, "auth": b"", "persistent": False}
        self.inflight = {}

    def allowed(self, key):
        values = [self.acked[key]]
        if key in self.inflight:
            values.append(self.inflight[key])
        return values


def _verify(tpm, model):
    data = nv_read(tpm, DATA, model.acked["auth"])
    assert data in model.allowed("data"), "an acknowledged NV_Write was lost"
    counter = struct.unpack(">Q", nv_read(tpm, COUNTER, model.acked["auth"]))[0]
    assert counter in model.allowed("counter"), \
        f"counter {counter}, acknowledged {model.acked['counter']}: went back or jumped"
    auth = next((a for a in model.allowed("auth") if owner_auth_is(tpm, a)), None)
    assert auth is not None, "the owner auth is neither the acknowledged nor the new one"
    assert persistent_exists(tpm) in model.allowed("persistent"), "EvictControl lost"
    model.acked.update(data=data, counter=counter, auth=auth,
                       persistent=persistent_exists(tpm))
    model.inflight = {}


def _workload(tpm, model, rng):
    """Random changes until the daemon dies; each acknowledged one goes into the model."""
    while True:
        op = rng.randrange(6)
        auth = model.acked["auth"]
        if op <= 1:
            value = rng.randbytes(8)
            model.inflight = {"data": value}
            tpm.ok(cmd(0x137, b2(value) + u16(0), handles=[DATA, DATA],
                       sessions=[pw_session()]))
            model.acked["data"] = value
        elif op <= 3:
            model.inflight = {"counter": model.acked["counter"] + 1}
            tpm.ok(cmd(0x134, handles=[COUNTER, COUNTER], sessions=[pw_session()]))
            model.acked["counter"] += 1
        elif op == 4:
            new = rng.randbytes(rng.randrange(1, 16))
            model.inflight = {"auth": new}
            tpm.ok(cmd(0x129, b2(new), handles=[OWNER], sessions=[pw_session(auth)]))
            model.acked["auth"] = new
        else:
            if model.acked["persistent"]:
                model.inflight = {"persistent": False}
                tpm.ok(cmd(0x120, u32(PERSISTENT), handles=[OWNER, PERSISTENT],
                           sessions=[pw_session(auth)]))
                model.acked["persistent"] = False
            else:
                rsp = tpm.ok(cmd(0x131, b2(u16(0) + u16(0)) + b2(ECC_STORAGE) + b2(b"")
                                 + u32(0), handles=[OWNER], sessions=[pw_session(auth)]))
                handle = struct.unpack(">I", rsp[10:14])[0]
                model.inflight = {"persistent": True}
                tpm.ok(cmd(0x120, u32(PERSISTENT), handles=[OWNER, handle],
                           sessions=[pw_session(auth)]))
                model.acked["persistent"] = True
                model.inflight = {}
                tpm.ok(cmd(0x165, u32(handle)))                     # FlushContext


@pytest.mark.parametrize("seed,protocol,rounds,encrypted", [
    (14, "mssim", ROUNDS, False), (15, "swtpm", 100, False), (16, "swtpm", 40, True)])
def test_kill_9_never_loses_an_acknowledged_change(seed, protocol, rounds, encrypted):
    """(encrypted: the same with a state key, every record AES-256-GCM.)"""
    rng = random.Random(seed)
    client = Client if protocol == "mssim" else SwtpmClient
    with tempfile.TemporaryDirectory(prefix="ctpm-crash-", dir=_state_root()) as state, \
            tempfile.TemporaryDirectory(prefix="ctpm-crash-key-") as keys:
        key_file = None
        if encrypted:
            key_file = os.path.join(keys, "state.key")
            with open(key_file, "wb") as f:
                f.write(os.urandom(32))
        model = Model()
        pid, port = start_daemon(state, protocol, key_file)
        tpm = client(port)
        tpm.ok(STARTUP_CLEAR)
        define(tpm, b"", DATA, DATA_ATTRS)
        define(tpm, b"", COUNTER, COUNTER_ATTRS)
        tpm.ok(cmd(0x137, b2(bytes(8)) + u16(0), handles=[DATA, DATA], sessions=[pw_session()]))
        tpm.ok(cmd(0x134, handles=[COUNTER, COUNTER], sessions=[pw_session()]))
        model.acked["counter"] = struct.unpack(">Q", nv_read(tpm, COUNTER, b""))[0]
        kills_mid_command = 0
        try:
            for _ in range(rounds):
                delay = rng.uniform(0, 0.012)
                killer = threading.Timer(delay, os.kill, (pid, signal.SIGKILL))
                killer.start()
                try:
                    _workload(tpm, model, rng)
                except Crashed:
                    kills_mid_command += bool(model.inflight)
                killer.join()
                os.waitpid(pid, 0)
                tpm.close()
                pid, port = start_daemon(state, protocol, key_file)
                tpm = client(port)
                tpm.ok(STARTUP_CLEAR)
                _verify(tpm, model)
        finally:
            tpm.close()
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        assert kills_mid_command > rounds // 2          # the kills did land mid-workload
        assert model.acked["counter"] > rounds           # and the workload did progress
        assert "nv.snap" in os.listdir(state)
        if encrypted:       # and it was encrypted: no record's plaintext in the files
            for name in ("nv.snap", "nv.journal"):
                with open(os.path.join(state, name), "rb") as f:
                    assert b"nv_indices" not in f.read()
