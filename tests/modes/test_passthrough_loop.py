"""Passthrough over mssim shares the event loop: a command waiting for the upstream's answer
(an RSA key generated on swtpm, tens of milliseconds) must not hold the loop, which serves
every other connection of the daemon and, in `ctpm host`, every other instance."""
import resource
import struct
import time
from functools import partial

import pytest
import trio

from tests.modes.test_passthrough_fastpath import rsa_primary
from tests.peers import SWTPM
from tests.tpmcmd import cmd, rc, u16, u32

pytestmark = pytest.mark.skipif(SWTPM is None, reason="swtpm is not installed")


class BlockingSteps(trio.abc.Instrument):
    """The task steps in which the event loop's thread went to sleep in the kernel (a
    voluntary context switch: a blocking poll, a read that waits), with how long they took.
    A step merely preempted by the scheduler on a busy machine is an involuntary switch and
    not counted, so a loop that never waits has none, however loaded the machine."""

    def __init__(self, skip):
        self.skip = skip            # the test's own task: the client
        self.blocked = []
        self._start = None

    def before_task_step(self, task):
        self._start = (resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw,
                       time.perf_counter())

    def after_task_step(self, task):
        if self._start is None or task is self.skip:
            return
        switches, t0 = self._start
        if resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw != switches:
            self.blocked.append((task.name, round((time.perf_counter() - t0) * 1000, 2)))
        self._start = None


async def mssim_call(port: int, command: bytes) -> bytes:
    """One TPM command in the mssim protocol (TPM_SEND_COMMAND, locality 0) on a new
    connection, as the mssim TCTI frames it; a task of the same loop (no thread: the
    GIL's hand-overs would be sleeps of the loop's thread too)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(struct.pack(">IBI", 8, 0, len(command)) + command)
        data = b""
        while len(data) < 4 or len(data) < 8 + struct.unpack(">I", data[:4])[0]:
            chunk = await stream.receive_some()
            assert chunk, "the daemon closed the connection"
            data += chunk
        return data[4:4 + struct.unpack(">I", data[:4])[0]]


async def test_slow_upstream_command_over_mssim_does_not_hold_the_loop(swtpm):
    """RSA-2048 CreatePrimary (fresh unique bytes: a new key each time), FlushContext and
    GetRandom over the daemon's mssim port: while swtpm works on them, no step of the
    daemon's tasks sleeps in the kernel (a blocking poll for the answer did, up to 2 ms per
    command, on the loop that serves every other connection and instance)."""
    from ctpm.config import load
    from ctpm.modes.passthrough import PassthroughBackend
    from ctpm.transport.host import TpmHost
    from ctpm.transport.mssim import MssimCommandPort

    backend = PassthroughBackend.build(load(mode="passthrough", upstream=swtpm.tcti,
                                            default_listener=False))
    host = TpmHost(backend)
    steps = BlockingSteps(trio.lowlevel.current_task())
    try:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(trio.serve_tcp, MssimCommandPort(host), 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]

            async def call(command):
                with trio.fail_after(60):
                    return await mssim_call(port, command)
            trio.lowlevel.add_instrument(steps)
            try:
                for _ in range(3):
                    t0 = time.perf_counter()
                    rsp = await call(rsa_primary())
                    assert rc(rsp) == 0, hex(rc(rsp))
                    assert time.perf_counter() - t0 > 0.004, "answered too fast to tell"
                    handle = struct.unpack(">I", rsp[10:14])[0]
                    assert rc(await call(cmd(0x165, u32(handle)))) == 0
                    assert rc(await call(cmd(0x17B, u16(8)))) == 0
            finally:
                trio.lowlevel.remove_instrument(steps)
            nursery.cancel_scope.cancel()
    finally:
        backend.close()
    assert steps.blocked == [], steps.blocked       # (task, ms) of each step that slept
