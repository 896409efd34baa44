"""`ctpm svsm-bridge --svsm unix:PATH --mssim HOST:PORT`: an SVSM-reached vTPM served as an
mssim TPM, so that tpm2-tools and tpm2-pytss reach it through the SVSM vTPM protocol end to
end (the role Linux's tpm_svsm driver plays for /dev/tpm0 in a guest).

The bridge is a `Backend` (ctpm/backend.py) whose commands go through the guest-side client
(client.py) as TPM_SEND_COMMAND; the existing mssim transport serves it. Like the kernel
driver, it has only TPM_SEND_COMMAND: the SVSM's vTPM is always powered and its NV always
on (coconut-svsm powers it before the guest runs), so mssim POWER_ON and NV_ON are accepted
as no-ops and the other platform signals are refused (the mssim protocol cannot say so; the
refusal is logged).
"""
import logging
import struct

from ..backend import Signal

# construct (protocol.py) is imported only when the bridge runs: `ctpm run` builds this
# module's parser and must start fast.
log = logging.getLogger("ctpm.svsm.bridge")

TPM_RC_FAILURE = 0x101
TPM_RC_COMMAND_SIZE = 0x142
TPM_RC_LOCALITY = 0x907


def _error(rc: int) -> bytes:
    return struct.pack(">HII", 0x8001, 10, rc)


class SvsmBridgeBackend:
    """A Backend whose TPM is behind an SVSM socket. One connection (one vCPU), commands in
    order; a lost connection is reopened for the next command."""

    max_command_size = 4087         # protocol.MAX_TPM_COMMAND: a page less the header
    write_pending = False
    established = False

    def __init__(self, path: str, client=None):
        import trio
        self.path = path
        self._client = client
        self._lock = trio.Lock()
        self.commands = 0

    async def connect(self) -> bool:
        """Open the connection and probe as tpm_svsm does; False if the SVSM lacks the vTPM."""
        from .client import AsyncSvsmClient
        self._client = await AsyncSvsmClient.connect(self.path)
        return await self._client.probe()

    def execute_inline(self, command: bytes, locality: int):
        return None

    async def execute(self, command: bytes, locality: int) -> bytes:
        import trio

        from . import protocol as p
        from .client import AsyncSvsmClient, ProtocolError
        if locality != 0:
            return _error(TPM_RC_LOCALITY)          # the SVSM vTPM has locality 0 only
        if len(command) > p.MAX_TPM_COMMAND:
            return _error(TPM_RC_COMMAND_SIZE)
        async with self._lock:
            for attempt in (1, 2):
                try:
                    if self._client is None:
                        self._client = await AsyncSvsmClient.connect(self.path)
                    response = await self._client.send_command(command)
                    self.commands += 1
                    return response
                except (OSError, ProtocolError, trio.BrokenResourceError,
                        trio.ClosedResourceError) as e:
                    # (not passed up: the mssim transport would take a broken SVSM stream
                    # for its own client's and drop that connection)
                    log.warning("SVSM at %s: %s%s", self.path, e,
                                "; reconnecting" if attempt == 1 else "")
                    await self._drop()
                except p.SvsmCallError as e:
                    log.warning("SVSM refused a TPM command: %s", e)
                    return _error(TPM_RC_COMMAND_SIZE if e.code == p.INVALID_PARAMETER
                                  else TPM_RC_FAILURE)
            return _error(TPM_RC_FAILURE)

    async def _drop(self):
        if self._client is not None:
            client, self._client = self._client, None
            try:
                await client.aclose()
            except Exception:
                pass

    async def flush(self):
        pass

    async def signal(self, signal: Signal, *args):
        if signal in (Signal.POWER_ON, Signal.NV_ON):
            return None
        return PermissionError(f"the SVSM vTPM protocol has no {signal.value} "
                               "(TPM_SEND_COMMAND only)")

    @property
    def powered(self) -> bool:
        return True

    async def get_state_blob(self, kind: int) -> bytes:
        raise PermissionError("the SVSM vTPM's state never leaves the SVSM")

    async def set_state_blob(self, kind: int, data: bytes):
        raise PermissionError("the SVSM vTPM's state cannot be replaced from outside")

    async def save(self):
        if self._client is not None:
            import trio
            with trio.CancelScope(shield=True):
                await self._drop()

    def describe(self) -> dict:
        return {"backend": "svsm-bridge", "svsm": f"unix:{self.path}", "powered": True,
                "commands": self.commands, "family": "2.0", "model": "ctpm (via SVSM)"}


def add_parser(commands):
    bridge = commands.add_parser(
        "svsm-bridge", help="serve a TPM reached through the SVSM vTPM protocol as mssim")
    bridge.add_argument("--svsm", metavar="unix:PATH", required=True,
                        help="the SVSM socket (of `ctpm run --mode svsm --svsm unix:PATH`)")
    bridge.add_argument("--mssim", metavar="HOST:PORT", action="append",
                        help="serve mssim here (default 127.0.0.1:2321)")
    bridge.add_argument("--log-level", metavar="LEVEL")
    return bridge


def run(args, run_daemon) -> int:
    """`ctpm svsm-bridge`: exit 2 for a usage mistake, 1 if the SVSM cannot be reached or
    offers no vTPM, 0 after a clean stop. `run_daemon` is `ctpm.cli.run` (passed in: the
    bridge does not import the CLI that imports it)."""
    import sys

    from ..config import ConfigError, load, parse_address
    try:
        address = parse_address(args.svsm, "--svsm", unix_ok=True)
        if not address.is_unix:
            raise ConfigError(f"--svsm: {address}: the SVSM is reached on unix:PATH only")
        config = load(mssim=args.mssim, log_level=args.log_level)
    except ConfigError as e:
        print(f"ctpm: config error: {e}", file=sys.stderr)
        return 2

    async def make_backend():
        from ..daemon import StartupError
        from .client import ProtocolError
        from .protocol import SvsmCallError
        backend = SvsmBridgeBackend(address.path)
        try:
            ok = await backend.connect()
        except (OSError, ConnectionError, ProtocolError, SvsmCallError) as e:
            raise StartupError(f"cannot reach the SVSM at unix:{address.path}: "
                               f"{getattr(e, 'strerror', None) or e}") from None
        if not ok:
            raise StartupError(f"the SVSM at unix:{address.path} offers no vTPM "
                               "(QUERY_PROTOCOL or VTPM QUERY)")
        return backend
    return run_daemon(config, make_backend=make_backend)
