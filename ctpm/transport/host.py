"""The one TPM that every listener of a daemon shares, and what the listeners share about it.

All commands and platform signals go through `TpmHost`, which serializes them: the engine is
synchronous and fast, so it runs directly in the event loop, where nothing else can run until
it returns (a command ever moved to a worker thread would need a lock here). The swtpm
locality is per TPM, as in swtpm; mssim connections carry their own locality in each
command prefix.
"""
import logging

import trio

from ..errors import TpmError
from .framing import DEFAULT_MAX_COMMAND_SIZE

log = logging.getLogger("ctpm.transport")


class TpmHost:
    """A `Tpm` plus the daemon-wide state of the transports around it."""

    def __init__(self, tpm, *, max_command_size: int = DEFAULT_MAX_COMMAND_SIZE,
                 stall_timeout: float = 5.0):
        self.tpm = tpm
        self.max_command_size = max_command_size
        self.stall_timeout = stall_timeout
        self.swtpm_locality = 0
        self.stop_requested = trio.Event()
        self.spawn = None               # nursery.start_soon of the serving daemon
        self.data_fd_active = False     # a SET_DATAFD data channel is being served

    async def execute(self, command: bytes, locality: int) -> bytes:
        # no await inside: nothing can interleave, and no lock (whose acquire is a trio
        # scheduling point) is needed
        return self.tpm.execute(command, locality)

    async def signal(self, fn, *args):
        """Run a platform signal (a `Tpm` method) in turn with the commands.

        Returns the `TpmError` the engine refused it with, or None: the mssim protocol has no
        way to report it, the swtpm control channel turns it into a result code.
        """
        try:
            fn(*args)
        except TpmError as e:
            log.debug("%s refused: %s", getattr(fn, "__name__", fn), e)
            return e
        return None

    def request_stop(self, why: str):
        """mssim STOP, swtpm SHUTDOWN: the daemon stops cleanly (and saves NV)."""
        log.info("stop requested: %s", why)
        self.stop_requested.set()


async def serve_connection(handler, stream, what: str):
    """Run one connection's protocol loop; nothing a client does may end the daemon."""
    try:
        await handler(stream)       # trio.serve_listeners closes the stream afterwards
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    except Exception:   # a bug in a handler ends that connection only, never the server
        log.exception("%s connection failed", what)
