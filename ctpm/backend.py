"""The one seam between transports and whatever answers TPM commands.

Every transport (mssim, swtpm, the swtpm fast path, QEMU's data fd, the resource manager)
and every `ctpm host` instance talks to a `Backend` and to nothing else: the standard engine
today (`EngineBackend`), an ephemeral or SVSM-resident TPM or a hardware TPM behind a TCTI
(passthrough) later. A mode is a backend plus what it does at boot. The interface is kept
narrow on purpose, three things:

1. commands: `await execute(command, locality) -> response` (always a well-formed
   response; never raises for anything a client sent). `execute_inline` is the optional
   synchronous shortcut of the swtpm fast path: a backend that cannot answer right now
   without blocking returns None and the transport awaits `execute` instead. A backend
   whose command is at work elsewhere (passthrough) may also offer `execute_inline(...,
   wait=0)`, `inline_pending()` (the descriptor that becomes readable with the answer),
   `finish_inline()`, and for an answer that never comes `inline_timeout` (seconds) and
   `abandon_inline()` (the response saying so), so the fast path waits for that
   descriptor among its others.
2. platform signals: `await signal(Signal.X, *args)` (power, NV, cancel, D-RTM hash, reset,
   tpmEstablished); returns None or the exception that refused it (the mssim protocol cannot
   report it, the swtpm control channel maps it to a result code). `powered` and
   `established` are the two facts the control channel asks for.
3. state: `get_state_blob(kind)` / `set_state_blob(kind, data)` (swtpm's migration blobs, see
   engine/migration.py), `save()` (write the state now: STORE_VOLATILE, clean stop), and
   `describe()` (a dict for status output and swtpm GET_INFO).

Commands of one backend are serialized by the backend; different backends never wait for
each other (the host runs hundreds in one event loop).
"""
import enum
import logging
import time
from typing import Protocol

log = logging.getLogger("ctpm.backend")

_CODE = slice(6, 10)

# Command codes whose work can take milliseconds to seconds (RSA key generation and prime
# search, RSA private-key operations): run in a worker thread, so that other instances'
# commands go on meanwhile. Plain numbers: importing the wire tables costs start-up time.
SLOW_COMMANDS = frozenset({
    0x131,      # CreatePrimary
    0x153,      # Create
    0x191,      # CreateLoaded
    0x159,      # RSA_Decrypt
    0x156,      # Import (RSA-OAEP of the seed)
    0x147,      # ActivateCredential
})


class Signal(enum.Enum):
    """Platform signals (mssim platform port, swtpm control channel)."""

    POWER_ON = "power_on"
    POWER_OFF = "power_off"
    INIT = "init"                      # swtpm INIT: power off if on, then on (_TPM_Init)
    RESET = "reset"                    # mssim RESET: _TPM_Init while powered
    NV_ON = "nv_on"
    NV_OFF = "nv_off"
    CANCEL_ON = "cancel_on"
    CANCEL_OFF = "cancel_off"
    HASH_START = "hash_start"          # _TPM_Hash_Start
    HASH_DATA = "hash_data"            # _TPM_Hash_Data(bytes)
    HASH_END = "hash_end"              # _TPM_Hash_End
    RESET_ESTABLISHED = "reset_established"    # (locality)
    PHYS_PRES_ON = "phys_pres_on"      # _plat__Signal_PhysicalPresenceOn (mssim 3)
    PHYS_PRES_OFF = "phys_pres_off"    # _plat__Signal_PhysicalPresenceOff (mssim 4)


class Backend(Protocol):
    """What a transport may ask of a TPM (see the module docstring)."""

    max_command_size: int

    async def execute(self, command: bytes, locality: int) -> bytes: ...

    def execute_inline(self, command: bytes, locality: int) -> bytes | None: ...

    @property
    def write_pending(self) -> bool: ...   # a state write must finish (`flush`) before
                                           # the response of `execute_inline` may go out

    async def flush(self) -> bool: ...    # False: the write failed, do not acknowledge

    async def signal(self, signal: Signal, *args) -> Exception | None: ...

    @property
    def powered(self) -> bool: ...

    @property
    def established(self) -> bool: ...

    async def get_state_blob(self, kind: int) -> bytes: ...

    async def set_state_blob(self, kind: int, data: bytes) -> None: ...

    async def save(self) -> None: ...

    def describe(self) -> dict: ...


class EngineBackend:
    """The standard backend: a ctpm `Tpm` engine in this process.

    The engine is synchronous. Quick commands run right in the event loop; `SLOW_COMMANDS`
    run in a worker thread under the instance's lock, so this instance's commands stay in
    order while other instances' run. With a state directory (ctpm/state/journal.py) the
    engine's NV changes are queued as journal records and made durable in a worker thread,
    batched (`state.groupcommit.GroupCommit`), before a response leaves (`flush`).
    """

    def __init__(self, tpm, *, max_command_size: int | None = None):
        import trio

        self._tpm = tpm
        self.max_command_size = max_command_size or tpm.config.max_command_size
        self._lock = trio.Lock()
        self._commit = None
        self._owns_store = False
        store = tpm.platform.store
        if hasattr(store, "deferred"):      # a DirStore: acknowledge only what is on disk
            from .state.groupcommit import GroupCommit
            self._commit = GroupCommit(store)

    @classmethod
    def build(cls, config, tpm=None):
        """The backend for a `ctpm.config.Config`: NV in its state directory, or in memory;
        `tpm`: the engine `engine(config)` built already (the cold `ctpm run`, before trio)."""
        backend = cls(tpm if tpm is not None else cls.engine(config),
                      max_command_size=config.max_command_size)
        backend._owns_store = True
        return backend

    @staticmethod
    def engine(config):
        """The engine of a `ctpm.config.Config`, without trio (ctpm/transport/early.py)."""
        from .engine.config import EngineConfig
        from .engine.tpm import Tpm
        from .platform import Platform
        from .state.store import DirStore, MemoryStore

        from .state.keys import key_from_config

        store = (DirStore(config.state_dir, key=key_from_config(config),
                          durability=config.durability, compact_bytes=config.compact_bytes,
                          anchor=config.state_anchor)
                 if config.state_dir else MemoryStore())
        engine_config = EngineConfig(max_command_size=config.max_command_size,
                                     max_objects=config.max_objects,
                                     max_sessions=config.max_sessions,
                                     max_persistent=config.max_persistent,
                                     max_nv_indices=config.max_nv_indices,
                                     nv_space=config.nv_space,
                                     nv_buffer_max=config.nv_buffer_max or 1024)
        return Tpm.manufacture(Platform(store=store), config=engine_config)

    # -- commands -------------------------------------------------------------------------

    def execute_inline(self, command: bytes, locality: int) -> bytes | None:
        if self._lock.locked() or bytes(command[_CODE]) in _SLOW_CODES:
            return None
        return self._tpm.execute(command, locality)

    async def execute(self, command: bytes, locality: int) -> bytes:
        slow = bytes(command[_CODE]) in _SLOW_CODES
        if slow or self._lock.locked():
            import trio

            async with self._lock:
                if slow:
                    response = await trio.to_thread.run_sync(self._tpm.execute, command,
                                                             locality)
                else:
                    response = self._tpm.execute(command, locality)
        else:
            # no await between here and the return: nothing can interleave, no lock needed
            response = self._tpm.execute(command, locality)
        if self.write_pending and not await self.flush():
            return NV_UNAVAILABLE       # not on disk: not acknowledged
        return response

    async def run_exclusive(self, fn):
        """Run `fn(tpm)` with no other command in between and return its result: what a mode
        does as the platform (boot provisioning, writing its evidence index) through ordinary
        TPM commands on `tpm.execute`. `fn` must be quick and must not block."""
        async with self._lock:
            result = fn(self._tpm)
        if self.write_pending:
            await self.flush()
        return result

    @property
    def write_pending(self) -> bool:
        return self._commit is not None and self._commit.pending()

    def flush_now(self):
        """`flush` without awaiting, for the swtpm fast path, if a flush is quick now:
        True (durable), False (the store failed, logged), None (await `flush`)."""
        if self._commit is None:
            return True
        from .state.errors import StoreError
        try:
            return self._commit.flush_inline()
        except StoreError as e:
            log.error("%s", e)
            return False

    async def flush(self) -> bool:
        """Make every NV change so far durable (group commit in a worker thread). False if
        that is impossible (the store failed, logged): the caller must not acknowledge."""
        if self._commit is None:
            return True
        from .state.errors import StoreError
        try:
            await self._commit.wait()
        except StoreError as e:
            log.error("%s", e)
            return False
        return True

    # -- platform signals -----------------------------------------------------------------

    async def signal(self, signal: Signal, *args):
        from .engine.migration import MigrationError
        from .errors import TpmError
        from .state.store import StoreError

        if self._lock.locked():
            async with self._lock:
                error = self._signal(signal, args, (TpmError, MigrationError, StoreError))
        else:
            error = self._signal(signal, args, (TpmError, MigrationError, StoreError))
        if self.write_pending and not await self.flush():
            return StoreError("the TPM state could not be written")
        return error

    def _signal(self, signal, args, refusals):
        tpm = self._tpm
        try:
            if signal is Signal.INIT:
                if tpm.powered:
                    tpm.power_off()
                tpm.power_on()
            else:
                getattr(tpm, signal.value)(*args)
        except refusals as e:
            log.debug("%s refused: %s", signal.value, e)
            return e
        return None

    @property
    def powered(self) -> bool:
        return self._tpm.powered

    @property
    def established(self) -> bool:
        return self._tpm.established

    # -- state ----------------------------------------------------------------------------

    async def get_state_blob(self, kind: int) -> bytes:
        async with self._lock:
            return self._tpm.get_state_blob(kind)

    async def set_state_blob(self, kind: int, data: bytes):
        async with self._lock:
            self._tpm.set_state_blob(kind, data)

    async def save(self):
        async with self._lock:
            self._tpm.save_state()
        await self.flush()

    def save_now(self):
        """`save` without the event loop (the last write of a stopping daemon)."""
        self._tpm.save_state()
        if self._commit is not None:
            self._commit.store.flush()

    def close(self):
        """The instance stops: everything written; a state directory this backend opened is
        closed (its lock released), one it was given goes back to writing synchronously."""
        if self._commit is None:
            return
        store = self._commit.store
        store.deferred = False
        if self._owns_store:
            store.close()
        else:
            store.flush()

    def describe(self) -> dict:
        from .engine.commands import capability

        config = self._tpm.config
        store = self._tpm.platform.store
        return {"backend": "engine", "state": store.describe(), "powered": self.powered,
                "family": "2.0", "level": capability.SPEC_LEVEL,
                "revision": capability.SPEC_REVISION,
                "manufacturer": config.manufacturer.hex().upper(),
                "firmware_version": f"{config.firmware_version[0]:08X}", "model": "ctpm"}

    @property
    def tpm(self):
        """The engine itself, for in-process tests; transports must not use it."""
        return self._tpm


# TPM_RC_NV_UNAVAILABLE: the change could not be made durable.
NV_UNAVAILABLE = b"\x80\x01\x00\x00\x00\x0a\x00\x00\x09\x23"

_SLOW_CODES = frozenset(c.to_bytes(4, "big") for c in SLOW_COMMANDS)


class Counters:
    """Per-instance counters for `ctpm host status`: commands, error responses, last use."""

    __slots__ = ("commands", "errors", "last_use")

    def __init__(self):
        self.commands = 0
        self.errors = 0
        self.last_use = None

    def count(self, response: bytes):
        self.commands += 1
        if response[6:10] != b"\0\0\0\0":
            self.errors += 1
        self.last_use = time.time()

    def as_dict(self) -> dict:
        return {"commands": self.commands, "errors": self.errors, "last_use": self.last_use}
