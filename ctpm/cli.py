"""The `ctpm` command.

Exit status: 0 after a clean stop (SIGINT, SIGTERM, mssim STOP, swtpm SHUTDOWN), 1 when the
daemon cannot start (address in use, unusable state directory), 2 for a usage or
configuration mistake. Exactly one line goes to stdout, when every socket listens:
`ctpm: ready mssim=HOST:PORT,PLATFORM_PORT swtpm=...`; logs go to stderr.
Start-up time matters (harnesses give a TPM about a second), so the heavy imports happen
only on the path that needs them.
"""
import os
import sys

from . import __version__


# Commands beside `run`, each in its own module, imported only when it is the one asked for
# (`ctpm run` must start fast: harnesses start a TPM per test).
_TOOLS = {
    "verify-report": ("ctpm.snp.verify_cli", "add_parser",
                      "verify an SEV-SNP attestation report (every check, named)"),
    "verify-ek": ("ctpm.modes.verify_ek_cli", "add_parser",
                  "verify that an SNP report anchors a TPM's EK (and AK)"),
    "attest": ("ctpm.attest.cli", "add_parsers",
               "composite evidence (TPM quote + SNP report) for a verifier's nonce"),
    "verify": ("ctpm.attest.cli", "add_parsers", "verify composite evidence against a policy"),
    "snp": ("ctpm.snp.cli", "add_parsers", "SEV-SNP reports from this machine (ctpm snp "
                                            "report)"),
    "svsm-bridge": ("ctpm.svsm.bridge", "add_parser",
                    "serve an SVSM-reached vTPM as an mssim TPM"),
    "state": ("ctpm.state.admin", "register",
              "state directory tools (rekey, check, anchor)"),
    "manufacture": ("ctpm.manufacture", "register",
                    "provision a state directory with EKs and EK certificates"),
    "verifier": ("ctpm.attest.service", "add_parsers",
                 "the attestation verifier service (serve, challenge, keygen)"),
    "token": ("ctpm.attest.relying", "add_parser", "check a verifier token (token verify)"),
    "secret": ("ctpm.channel.cli", "add_parsers",
               "secrets over the TEE<->TPM trusted channel (seal, get, put)"),
}


def _parser(wanted=None):
    """The argument parser; of the commands in _TOOLS only `wanted` is built for real (the
    others are listed for --help)."""
    import argparse
    import importlib

    from .config import LOG_LEVELS
    parser = argparse.ArgumentParser(
        prog="ctpm", description="A TPM 2.0 emulator daemon.",
        epilog="swtpm's command line: ctpm swtpm socket --tpm2 ..., ctpm swtpm-setup --tpm2 "
               "..., ctpm swtpm-shim DIR (README, \"swtpm's command line\").")
    parser.add_argument("--version", action="version", version=f"ctpm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser("run", help="serve a TPM until stopped")
    run.add_argument("--config", metavar="FILE", help="TOML configuration file")
    run.add_argument("--mssim", metavar="HOST:PORT", action="append",
                     help="TCG simulator protocol: commands on PORT, platform on PORT+1 "
                          "(repeatable; default 127.0.0.1:2321 when no listener is given)")
    run.add_argument("--swtpm", metavar="HOST:PORT|unix:PATH", action="append",
                     help="swtpm socket protocol: data on PORT, control on PORT+1, or data "
                          "on PATH, control on PATH.ctrl (repeatable)")
    run.add_argument("--state", metavar="DIR", help="keep NV state in DIR (default: memory)")
    run.add_argument("--log-level", metavar="LEVEL", help="|".join(LOG_LEVELS))
    run.add_argument("--allow-remote", action="store_true",
                     help="allow listening on non-loopback addresses")
    run.add_argument("--resource-manager", action="store_true",
                     help="per-connection handles on mssim, as /dev/tpmrm0")
    run.add_argument("--host", metavar="unix:PATH",
                     help="warm path: a running `ctpm host` serves the TPM on sockets this "
                          "process binds (default $CTPM_HOST when set)")
    run.add_argument("--name", help=argparse.SUPPRESS)     # instance name in a warm host
    run.add_argument("--mode", metavar="MODE",
                     help="standard (default) | ephemeral | svsm | passthrough: see "
                          "docs/modes.md")
    run.add_argument("--ak", metavar="ecc|rsa", help="the anchored AK's algorithm (ecc)")
    run.add_argument("--snp-provider", metavar="P",
                     help="where SNP reports come from: auto (default) | configfs | "
                          "sev-guest | simulated (never trusted unless a verifier is told to)")
    run.add_argument("--snp-sim-dir", metavar="DIR",
                     help="the simulated AMD-SP's directory (--snp-provider simulated)")
    run.add_argument("--vtpm-proxy", action="store_true",
                     help="also be this machine's kernel TPM (/dev/tpmN) through /dev/vtpmx")
    run.add_argument("--svsm", metavar="unix:PATH", action="append",
                     help="serve the SVSM vTPM and attestation protocols on PATH (--mode svsm)")
    run.add_argument("--upstream", metavar="TCTI",
                     help="--mode passthrough: the TPM to guard (device:/dev/tpmrm0, tabrmd:, "
                          "mssim:..., swtpm:...)")
    run.add_argument("--upstream-force", action="store_true",
                     help="accept a bare /dev/tpmN upstream (no resource manager)")
    run.add_argument("--anchor", action="store_true",
                     help="--mode passthrough: bind the upstream's EK and an AK to the SNP "
                          "report (only meaningful inside the CVM)")
    run.add_argument("--nv-range", metavar="FIRST-LAST",
                     help="--mode passthrough: this guest's NV indices")
    run.add_argument("--persistent-range", metavar="FIRST-LAST",
                     help="--mode passthrough: this guest's persistent handles")
    for hierarchy in ("owner", "endorsement"):
        run.add_argument(f"--upstream-{hierarchy}-auth-file", metavar="FILE",
                         help=f"--mode passthrough: the upstream's {hierarchy} authorization "
                              "(the file's bytes)")
        run.add_argument(f"--upstream-{hierarchy}-auth-fd", metavar="N", type=int,
                         help=f"--mode passthrough: ... read from descriptor N")
    from .state import admin
    admin.add_key_options(run)
    admin.add_anchor_option(run)
    if wanted == "run":         # the others are only listed in `ctpm --help`: not built
        return parser
    commands.add_parser("host", help="serve many TPM instances in one process "
                                     "(ctpm host --help)", add_help=False)
    if wanted in _TOOLS:
        module, register, _ = _TOOLS[wanted]
        getattr(importlib.import_module(module), register)(commands)
    for name, (_, _, text) in _TOOLS.items():
        if name not in commands.choices:
            commands.add_parser(name, help=text, add_help=False)
    return parser


def main(argv=None) -> int:
    if argv is None and sys.argv[1:2] == ["run"]:
        _exit_now(_main(sys.argv[1:]))
    try:
        return _main(sys.argv[1:] if argv is None else list(argv))
    except BrokenPipeError:
        # the reader went away (`ctpm ... | head -1`): no traceback; stdout goes nowhere so
        # the interpreter's final flush does not fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1


def _exit_now(status):
    """End `ctpm run` without the interpreter's teardown of every module (~30-60 ms after
    trio and the engine): by now the state is saved and the sockets are closed."""
    if "logging" in sys.modules:            # the warm path never loads it
        sys.modules["logging"].shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(status)


def _main(argv) -> int:
    if argv[:1] == ["run"] and ("CTPM_HOST" in os.environ or any(
            a == "--host" or a.startswith("--host=") for a in argv)):
        from .host import warmlite          # the warm path's common case imports nothing
        status = warmlite.run(argv[1:])
        if status is not None:
            return status
    if argv[:1] == ["host"]:            # its own parser, built only when used
        from .host.cli import main as host_main
        return host_main(argv[1:])
    if argv[:1] and argv[0] in ("swtpm", "swtpm-setup", "swtpm_setup", "swtpm-shim"):
        from . import swtpm_compat          # swtpm's own option syntax, not argparse's
        return swtpm_compat.main(argv[0], argv[1:], run=run)
    if argv[:1] == ["run"]:
        light = _run_flags(argv[1:])
        if light is not None:
            return _run_config(**light)
    parser = _parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    if getattr(args, "main", None) is not None:      # a subcommand with its own module
        return args.main(args)
    if args.command == "verify-report":
        from .snp import verify_cli
        return verify_cli.run(args)
    if args.command in ("attest", "verify"):
        from .attest import cli as attest_cli
        return (attest_cli.run_attest if args.command == "attest" else
                attest_cli.run_verify)(args)
    if args.command == "verify-ek":
        from .modes import verify_ek_cli
        return verify_ek_cli.run(args)
    if args.command == "snp":
        from .snp import cli as snp_cli
        return snp_cli.run(args)
    if args.command == "svsm-bridge":
        from .svsm import bridge
        return bridge.run(args, run)
    if args.command != "run":
        parser.print_usage(sys.stderr)
        return 2
    return _run_config(
        args, args.config, mssim=args.mssim, swtpm=args.swtpm, state_dir=args.state,
        log_level=args.log_level, allow_remote=args.allow_remote,
        resource_manager=args.resource_manager, mode=args.mode, ak=args.ak,
        snp_provider=args.snp_provider, snp_sim_dir=args.snp_sim_dir, svsm=args.svsm,
        vtpm_proxy=args.vtpm_proxy, state_key=args.state_key, state_key_fd=args.state_key_fd,
        state_passphrase_fd=args.state_passphrase_fd,
        state_passphrase_file=args.state_passphrase_file, upstream=args.upstream,
        upstream_force=args.upstream_force, anchor=args.anchor, nv_range=args.nv_range,
        persistent_range=args.persistent_range,
        upstream_auth={(h, k): getattr(args, f"upstream_{h}_auth_{k}")
                       for h in ("owner", "endorsement") for k in ("file", "fd")},
        state_anchor=args.state_anchor, state_key_tpm=args.state_key_tpm,
        state_key_tpm_pcrs=args.state_key_tpm_pcrs)


def _run_flags(argv):
    """`ctpm run`'s flags as harnesses pass them (host/warmlite.py's set), without argparse
    (its import, gettext and the parser: 5-15 ms of every cold start): {"args": None, load's
    keyword arguments}, or None when argparse must parse (any other flag, --help, the warm
    path's --host or CTPM_HOST, a missing value)."""
    from .host import warmlite
    try:
        opts = warmlite.parse_flags(argv)
    except warmlite.Fallback:
        return None
    if "host" in opts or "name" in opts or os.environ.get("CTPM_HOST"):
        return None
    light = {"args": None, "path": None, "state_dir": opts.pop("state", None)}
    light.update(opts)
    return light


def _run_config(args, path, **flags) -> int:
    """Load the configuration of `ctpm run` (its flags over the file's) and run it."""
    from .config import ConfigError, load
    activated = "LISTEN_FDS" in os.environ           # systemd passes the sockets
    try:
        config = load(path, default_listener=not activated, **flags)
    except ConfigError as e:
        print(f"ctpm: config error: {e}", file=sys.stderr)
        return 2
    warm = args is not None and (args.host or os.environ.get("CTPM_HOST"))
    if warm:
        from .host.warm import run_warm
        return run_warm(config, args, warm[5:] if warm.startswith("unix:") else warm)
    return run(config, activated=activated)


def run(config, *, make_backend=None, activated=False, prepare=None, after_ready=None,
        log_setup=None, quiet=False) -> int:
    """Serve until stopped. `make_backend` (async, optional) builds the backend (ctpm
    svsm-bridge), else the config's mode does. `activated`: add systemd's sockets;
    `prepare()` -> extra keyword arguments of daemon.serve and `after_ready()`, both run
    inside the event loop so that their StartupError is reported like any other
    (swtpm_compat uses them, with `log_setup()` and `quiet`: no ready line, as swtpm)."""
    import logging

    sys.setswitchinterval(0.0005)       # see ctpm/host/server.py SWITCH_INTERVAL
    logging.basicConfig(stream=sys.stderr, level=config.log_level.upper(),
                        format="ctpm: %(levelname)s: %(name)s: %(message)s")
    if log_setup is not None:
        log_setup()
    early = None
    if _ready_early(config, activated, prepare, after_ready, quiet, make_backend):
        # SIGINT/SIGTERM before trio listens for them: noted, acted on once it does
        import signal
        stops = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda n, _f: stops.append(n))
        from .transport.bind import Listening, StartupError, bind_all
        try:
            early = bind_all(config)
        except StartupError as e:
            print(f"ctpm: {e}", file=sys.stderr)
            return 1
        try:
            print(f"ctpm: ready {Listening(early.bound)}", flush=True)
        except OSError as e:
            logging.getLogger("ctpm").warning("cannot write the ready line: %s", e)
        quiet = True
        backend = adopted = None
        if any(group[0] == "swtpm" for group in early.groups) and not os.environ.get(
                "NOTIFY_SOCKET"):
            # the first commands on the swtpm data channel, answered before trio is
            # imported (transport/early.py); the rest of the daemon when needed
            from .backend import EngineBackend
            from .transport.early import serve_early
            try:
                tpm = EngineBackend.engine(config)
                adopted = serve_early(tpm, early, stops, config.max_command_size)
            except BaseException:
                early.close()                   # a bug: at least no socket files left
                raise
            if adopted is None:
                early.close()
                logging.getLogger("ctpm").info("stopping on %s", signal.Signals(stops[0]).name)
                return 0
            backend = EngineBackend.build(config, tpm)
        early = (early, stops, backend, adopted)
    import trio

    from .daemon import StartupError
    from .errors import find_exception
    from .snp.errors import ProviderError
    from .state.store import StoreError
    try:
        trio.run(_run, config, activated, prepare, after_ready, quiet, make_backend, early)
    except (StartupError, StoreError, ProviderError, BaseExceptionGroup) as e:
        error = find_exception(e, (StartupError, StoreError, ProviderError))
        if error is None:
            raise
        prefix = {StoreError: "state error: ", ProviderError: "SNP report provider: "}.get(
            type(error), "")
        print(f"ctpm: {prefix}{error}", file=sys.stderr)
        return 1
    return 0


def _ready_early(config, activated, prepare, after_ready, quiet, make_backend) -> bool:
    """Whether the ready line may go out once the sockets listen, before trio and the engine
    are imported (~150-250 ms): only when nothing after binding can fail for a reason of the
    user's (a TPM in memory, standard mode, no systemd sockets, no swtpm command line or
    bridge hooks). Until the engine is loaded, connections wait in the listen backlog."""
    return (config.mode == "standard" and config.state_dir is None and not activated
            and not config.vtpm_proxy and prepare is None and after_ready is None
            and not quiet and make_backend is None)


async def _run(config, activated=False, prepare=None, after_ready=None, quiet=False,
               make_backend=None, early=None):
    import logging
    import signal

    import trio

    from .daemon import StartupError, serve
    extra = prepare() if prepare is not None else {}
    if activated:
        from .activation import prebound_from_environment
        extra["prebound"] = list(extra.get("prebound", ())) + prebound_from_environment()
        if not extra["prebound"] and not (config.mssim or config.swtpm):
            raise StartupError("socket-activated without sockets (LISTEN_FDS) and no listener")

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            async def serve_then_stop(task_status=trio.TASK_STATUS_IGNORED):
                backend = await make_backend() if make_backend else None
                if early:                   # bound, and perhaps served, before trio
                    backend = early[2]
                    extra.update(bindings=early[0], adopted=early[3])
                await serve(config, backend=backend, task_status=task_status, **extra)
                nursery.cancel_scope.cancel()           # a client asked us to stop

            listening = await nursery.start(serve_then_stop)
            try:
                if not quiet:
                    print(f"ctpm: ready {listening}", flush=True)
            except OSError as e:    # nobody reads stdout (closed pipe): keep serving
                logging.getLogger("ctpm").warning("cannot write the ready line: %s", e)
            if after_ready is not None:
                after_ready()
            if early and early[1]:
                logging.getLogger("ctpm").info("stopping on %s", signal.Signals(early[1][0]).name)
                nursery.cancel_scope.cancel()
                return
            async for signum in signals:
                logging.getLogger("ctpm").info("stopping on %s", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def swtpm_entry():
    """The ctpm-swtpm console script: `ctpm swtpm ...`."""
    sys.exit(main(["swtpm", *sys.argv[1:]]))


def swtpm_setup_entry():
    """The ctpm-swtpm-setup console script: `ctpm swtpm-setup ...`."""
    sys.exit(main(["swtpm-setup", *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
