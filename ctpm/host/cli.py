"""`ctpm host ...`: serve many instances, or talk to a running host's control socket.

    ctpm host serve [--dir DIR] [--control PATH] [--log-level LEVEL] [--workers N]
    ctpm host add NAME [--config FILE] [--mssim A]... [--swtpm A]... [--state DIR]
                       [--resource-manager] [--allow-remote] [--mode M] [--ak A]
                       [--snp-provider P] [--snp-sim-dir DIR] [--svsm unix:PATH]...
    ctpm host remove NAME | list | status [NAME] | reload     [--control PATH]

The control socket is `--control PATH`, else $CTPM_HOST, else /run/ctpm/host.sock.
"""
import json
import os
import sys

from ..config import LOG_LEVELS


def parser():
    import argparse

    host = argparse.ArgumentParser(prog="ctpm host",
                                   description="Serve many TPM instances in one process.")
    sub = host.add_subparsers(dest="host_command", metavar="ACTION")
    serve = sub.add_parser("serve", help="run the host (until SIGINT/SIGTERM)")
    serve.add_argument("--dir", metavar="DIR",
                       help="instance files NAME.toml (read at start and on SIGHUP)")
    serve.add_argument("--log-level", metavar="LEVEL", default="info",
                       help="|".join(LOG_LEVELS))
    serve.add_argument("--workers", metavar="N", type=int, default=0,
                       help="serve the instances in N worker processes (one core each; "
                            "default 0: in this process)")
    serve.add_argument("--worker-of", type=int, help=argparse.SUPPRESS)   # parent's pid
    add = sub.add_parser("add", help="start an instance; returns once it listens")
    add.add_argument("name")
    add.add_argument("--config", metavar="FILE")
    add.add_argument("--mssim", metavar="HOST:PORT", action="append")
    add.add_argument("--swtpm", metavar="HOST:PORT|unix:PATH", action="append")
    add.add_argument("--state", metavar="DIR")
    add.add_argument("--resource-manager", action="store_true")
    add.add_argument("--mode", metavar="MODE",
                     help="standard (default) | ephemeral | svsm | passthrough (--upstream)")
    add.add_argument("--upstream", metavar="TCTI", help="passthrough: the TPM to guard")
    add.add_argument("--anchor", action="store_true", help="passthrough: bind it to the SNP "
                                                          "report")
    add.add_argument("--nv-range", metavar="FIRST-LAST")
    add.add_argument("--persistent-range", metavar="FIRST-LAST")
    add.add_argument("--ak", metavar="ecc|rsa")
    add.add_argument("--snp-provider", metavar="P")
    add.add_argument("--snp-sim-dir", metavar="DIR")
    add.add_argument("--svsm", metavar="unix:PATH", action="append")
    add.add_argument("--allow-remote", action="store_true")
    sub.add_parser("remove", help="stop an instance (its NV is saved)").add_argument("name")
    sub.add_parser("list", help="the running instances")
    sub.add_parser("status", help="per-instance counters").add_argument("name", nargs="?")
    sub.add_parser("reload", help="re-read the instance directory")
    for parser in (serve, add, *sub.choices.values()):
        if not any(a.dest == "control" for a in parser._actions):
            parser.add_argument("--control", metavar="PATH",
                                help="the host's control socket (default $CTPM_HOST or "
                                     "/run/ctpm/host.sock)")
    return host


def main(argv) -> int:
    from . import control

    args = parser().parse_args(argv)
    path = control.control_path(args.control)
    if args.host_command == "serve":
        return _serve(args, path)
    if args.host_command is None:
        print("ctpm host: an action is needed (serve, add, remove, list, status, reload)",
              file=sys.stderr)
        return 2
    req = {"op": args.host_command}
    if args.host_command == "add":
        req.update(name=args.name, mssim=_absolute(args.mssim), swtpm=_absolute(args.swtpm),
                   svsm=_absolute(args.svsm),
                   state=os.path.abspath(args.state) if args.state else None,
                   config=os.path.abspath(args.config) if args.config else None,
                   resource_manager=args.resource_manager, allow_remote=args.allow_remote,
                   mode=args.mode, ak=args.ak, snp_provider=args.snp_provider,
                   upstream=args.upstream, anchor=args.anchor, nv_range=args.nv_range,
                   persistent_range=args.persistent_range,
                   snp_sim_dir=os.path.abspath(args.snp_sim_dir) if args.snp_sim_dir else None)
    elif args.host_command in ("remove", "status"):
        req["name"] = args.name
    try:
        answer = control.request(path, req)
    except control.ControlError as e:
        print(f"ctpm host: {e}", file=sys.stderr)
        return 1
    answer.pop("ok")
    if args.host_command == "add":
        print(f"ctpm: ready {answer['listening']}")
    elif args.host_command == "list":
        for i in answer["instances"]:
            print(f"{i['name']}\t{i['source']}\t{i['listening']}")
    elif args.host_command != "remove":
        print(json.dumps(answer, indent=1))
    return 0


def _absolute(addresses):
    """unix:PATH made absolute here: the host's working directory is not ours."""
    if not addresses:
        return addresses
    return ["unix:" + os.path.abspath(a[5:]) if a.startswith("unix:") else a
            for a in addresses]


def _serve(args, path) -> int:
    import logging

    import trio

    from .server import InstanceFilter, main as serve_main

    if args.log_level not in LOG_LEVELS:
        print(f"ctpm host: --log-level: {args.log_level!r} is not one of "
              f"{', '.join(LOG_LEVELS)}", file=sys.stderr)
        return 2
    if not 0 <= args.workers <= 256:
        print(f"ctpm host: --workers: {args.workers} is not 0-256", file=sys.stderr)
        return 2
    if args.dir and not os.path.isdir(args.dir):
        print(f"ctpm host: --dir: {args.dir} is not a directory", file=sys.stderr)
        return 2
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(InstanceFilter())
    handler.setFormatter(logging.Formatter(
        "ctpm host: %(levelname)s: [%(instance)s] %(name)s: %(message)s"))
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    from ..transport.bind import StartupError
    try:
        trio.run(serve_main, args.dir, path, args.workers, args.log_level, args.worker_of)
    except (StartupError, BaseExceptionGroup) as e:
        from ..errors import find_exception      # (not ..cli: ctpm.cli imports this module)
        error = find_exception(e, (StartupError,))
        if error is None:
            raise
        print(f"ctpm host: {error}", file=sys.stderr)
        return 1
    return 0
