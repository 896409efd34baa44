"""What every listener of one TPM instance shares: its backend and the transport state
around it.

Transports talk to the TPM only through `TpmHost`, and `TpmHost` only through the instance's
`ctpm.backend.Backend` (which serializes the instance's commands and keeps slow ones off the
event loop). The swtpm locality is per TPM, as in swtpm; mssim connections carry their own
locality in each command prefix. `client()` gives a connection its own view of the TPM: the
host itself, or a resource-manager client (`--resource-manager`) with its own handles.
"""
import logging

import trio

from ..backend import Counters
from .framing import DEFAULT_MAX_COMMAND_SIZE

log = logging.getLogger("ctpm.transport")


class TpmHost:
    """A backend plus the instance-wide state of the transports around it."""

    def __init__(self, backend, *, max_command_size: int = DEFAULT_MAX_COMMAND_SIZE,
                 stall_timeout: float = 5.0, name: str | None = None,
                 resource_manager: bool = False):
        self.backend = backend
        self.name = name
        self.max_command_size = max_command_size
        self.stall_timeout = stall_timeout
        self.swtpm_locality = 0
        self.stop_requested = trio.Event()
        self.stop_reason = None
        self.spawn = None               # nursery.start_soon of the serving daemon
        self.data_fd_active = False     # a SET_DATAFD data channel is being served
        self.terminate_on_ctrl_close = False    # swtpm --terminate
        self.counters = Counters()
        self.resource_manager = None
        if resource_manager:
            from .resmgr import ResourceManager
            self.resource_manager = ResourceManager(self)

    async def execute(self, command: bytes, locality: int) -> bytes:
        response = await self.backend.execute(command, locality)
        self.counters.count(response)
        return response

    def execute_inline(self, command: bytes, locality: int, wait=None) -> bytes | None:
        if wait is None:
            response = self.backend.execute_inline(command, locality)
        else:               # positional: a call with keywords costs a dict per command
            response = self.backend.execute_inline(command, locality, wait)
        if response is not None:
            self.counters.count(response)
        return response

    def finish_inline(self) -> bytes:
        """The answer to the command `execute_inline` left in flight (see the backend)."""
        response = self.backend.finish_inline()
        self.counters.count(response)
        return response

    def abandon_inline(self) -> bytes:
        """The answer for the command `execute_inline` left in flight when it never came."""
        response = self.backend.abandon_inline()
        self.counters.count(response)
        return response

    async def wait_inline(self) -> bytes:
        response = await self.backend.wait_inline()
        self.counters.count(response)
        return response

    async def signal(self, signal, *args):
        """A platform signal in turn with the commands; None or the refusal (see backend)."""
        return await self.backend.signal(signal, *args)

    def client(self):
        """The view of the TPM one connection gets (`execute`, `close`)."""
        if self.resource_manager is not None:
            return self.resource_manager.client()
        return _Shared(self)

    def request_stop(self, why: str):
        """mssim STOP, swtpm SHUTDOWN: this instance stops cleanly (and saves NV)."""
        log.info("stop requested%s: %s", f" for {self.name}" if self.name else "", why)
        self.stop_reason = why
        self.stop_requested.set()


class _Shared:
    """A connection without a resource manager: the TPM as it is, shared by all."""

    __slots__ = ("host",)

    def __init__(self, host):
        self.host = host

    async def execute(self, command: bytes, locality: int) -> bytes:
        return await self.host.execute(command, locality)

    async def close(self):
        pass


async def serve_connection(handler, stream, what: str):
    """Run one connection's protocol loop; nothing a client does may end the daemon."""
    try:
        await handler(stream)       # trio.serve_listeners closes the stream afterwards
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    except Exception:   # a bug in a handler ends that connection only, never the server
        log.exception("%s connection failed", what)
