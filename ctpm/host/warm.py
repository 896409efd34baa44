"""The warm path of `ctpm run`: a running host serves the TPM, this process only binds.

`ctpm run --host unix:PATH` (or with $CTPM_HOST set) binds its listeners itself (so "which
PID listens" is this process, as harnesses check with `ss -lntp`), hands the sockets to the
host over its control socket (SCM_RIGHTS), prints the usual ready line, and lives until the
instance stops (a client's SHUTDOWN or STOP, `ctpm host remove`, the host stopping), or until
SIGINT/SIGTERM, which stops the instance (NV saved) before exiting. No trio, no engine in
this process: start-up is the interpreter, argparse and a few sockets.
"""
import os
import signal
import sys

from . import control
from ..transport.bind import StartupError, Listening, bind_all

STOP_WAIT = 30.0


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop()


def run_warm(config, args, path: str) -> int:
    try:
        bindings = bind_all(config)
    except StartupError as e:
        print(f"ctpm: {e}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    sock = None
    try:
        sock = control.connect(path)
        request = {
            "op": "adopt", "pid": os.getpid(), "name": args.name,
            "config": os.path.abspath(args.config) if args.config else None,
            "mssim": [str(b).split(",")[0] for b in bindings.bound if b.kind == "mssim"],
            "swtpm": [str(b).split(",")[0] for b in bindings.bound if b.kind == "swtpm"],
            "svsm": [str(b) for b in bindings.bound if b.kind == "svsm"],
            "upstream": args.upstream, "anchor": args.anchor, "nv_range": args.nv_range,
            "persistent_range": args.persistent_range,
            "state": os.path.abspath(config.state_dir) if config.state_dir else None,
            "allow_remote": config.allow_remote,
            "resource_manager": config.resource_manager,
            "mode": config.mode, "ak": config.ak if config.mode != "standard" else None,
            "snp_provider": config.snp_provider if config.mode != "standard" else None,
            "snp_sim_dir": os.path.abspath(config.snp_sim_dir) if config.snp_sim_dir else None,
            "groups": [[kind, unix, label, len(first), len(second)]
                       for kind, unix, label, first, second in bindings.groups],
            "bound": [[b.kind, b.host, b.port, b.path] for b in bindings.bound],
        }
        control.send(sock, request, [s.fileno() for s in bindings.sockets()])
        answer, buf = control.receive(sock)
        if not answer.get("ok"):
            if answer.get("config_error"):
                print(f"ctpm: config error: {answer.get('error')}", file=sys.stderr)
                return 2
            print(f"ctpm: the host refused: {answer.get('error')}", file=sys.stderr)
            return 1
        try:
            print(f"ctpm: ready {Listening(bindings.bound)}", flush=True)
        except OSError:
            pass
        try:
            control.receive(sock, buf)          # {"stopped": ...} or the host went away
        except control.ControlError:
            pass
        return 0
    except _Stop:
        if sock is not None:                    # the host stops the instance, saves NV
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                sock.shutdown(2 - 1)            # SHUT_WR
                sock.settimeout(STOP_WAIT)
                control.receive(sock)
            except (OSError, control.ControlError):
                pass
        return 0
    except control.ControlError as e:
        print(f"ctpm: {e}", file=sys.stderr)
        return 1
    finally:
        if sock is not None:
            sock.close()
        bindings.close()
