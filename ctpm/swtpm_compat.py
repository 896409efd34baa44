"""swtpm's command line on ctpm: `ctpm swtpm socket ...` and `ctpm swtpm-setup ...` (and
the console scripts ctpm-swtpm / ctpm-swtpm-setup; `ctpm swtpm-shim DIR` writes `swtpm` and
`swtpm_setup` there, so that DIR on PATH makes libvirt and test harnesses start ctpm).

The options accepted are those libvirt and the common harnesses (tpm2-tss, tpm2-tools,
tpm2-pytss, QEMU's tests) pass; what ctpm cannot do is refused with one line rather than
ignored when ignoring it would change behaviour. An unknown option is one line naming it,
exit status 1, as swtpm. The state is ctpm's own (a journal, ctpm/state/journal.py), not
swtpm's files; --key and the passphrase options encrypt it with ctpm's AES-256-GCM (a
key file holds 32 bytes, raw or hex; swtpm's 128-bit keys are refused).
"""
import json
import logging
import os
import shlex
import socket
import sys

from . import __version__

SOCKET_FLAGS = {"-t": "terminate", "-d": "daemon", "-h": "help"}
SOCKET_ARGS = {"-p": "port", "-f": "fd", "-r": "runas", "-R": "chroot"}
SOCKET_LONG_FLAGS = {"terminate", "daemon", "help", "tpm2", "print-capabilities",
                     "print-capabilites", "print-states", "version"}
SOCKET_LONG_ARGS = {"port", "fd", "ctrl", "server", "tpmstate", "flags", "locality", "log",
                    "key", "migration-key", "pid", "runas", "chroot", "seccomp", "migration"}

CAPABILITIES = ["tpm-2.0", "tpm-send-command-header", "flags-opt-startup", "cmdarg-seccomp",
                "cmdarg-key-fd", "cmdarg-pwd-fd", "cmdarg-print-states", "nvram-backend-dir"]
SETUP_CAPABILITIES = ["tpm-2.0", "cmdarg-keyfile-fd", "cmdarg-pwdfile-fd",
                      "cmdarg-write-ek-cert-files", "tpm2-rsa-keysize-2048"]


class UsageError(Exception):
    """One line; exit status 1 (swtpm's)."""


def parse_argv(argv, flags, args, long_flags, long_args, prog):
    """getopt_long as swtpm uses it: -x, -x VALUE, --name, --name VALUE, --name=VALUE."""
    out = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if a.startswith("--"):
            name, eq, value = a[2:].partition("=")
            if name in long_flags and not eq:
                out[name] = True
                continue
            if name not in long_args:
                raise UsageError(f"{prog}: unrecognized option '{a}'")
        elif a in flags:
            out[flags[a]] = True
            continue
        elif a in args:
            name, eq = args[a], ""
        else:
            raise UsageError(f"{prog}: unrecognized option '{a}'" if a.startswith("-")
                             else f"{prog}: unexpected argument '{a}'")
        if not eq:
            if i >= len(argv):
                raise UsageError(f"{prog}: option '{a}' requires an argument")
            value = argv[i]
            i += 1
        out.setdefault(name, [])
        if isinstance(out[name], list):
            out[name].append(value)
    return out


def suboptions(text, option, allowed, flags=()):
    """'type=tcp,port=1,disconnect' -> dict; an unknown key is one line naming it."""
    out = {}
    for part in filter(None, text.split(",")):
        key, eq, value = part.partition("=")
        if not eq and key in flags:
            out[key] = True
        elif eq and key in allowed:
            out[key] = value
        else:
            raise UsageError(f"swtpm: Error parsing {option} options: Unknown option '{part}'")
    return out


def _int(value, what):
    try:
        return int(value, 0)
    except (TypeError, ValueError):
        raise UsageError(f"swtpm: {what}: {value!r} is not a number") from None


def _mode(value, what):
    """File mode bits, octal as swtpm takes them ('0600')."""
    try:
        mode = int(value, 8)
    except (TypeError, ValueError):
        raise UsageError(f"swtpm: {what}: {value!r} is not an octal mode") from None
    if mode > 0o7777:
        raise UsageError(f"swtpm: {what}: {value!r} is not an octal mode")
    return mode


def _last(opts, name):
    v = opts.get(name)
    return v[-1] if isinstance(v, list) else v


# -- swtpm socket ------------------------------------------------------------------------------

class SocketPlan:
    """What `swtpm socket ARGS` asks for, checked before anything starts."""

    def __init__(self, argv):
        opts = parse_argv(argv, SOCKET_FLAGS, SOCKET_ARGS, SOCKET_LONG_FLAGS, SOCKET_LONG_ARGS,
                          "swtpm socket")
        self.opts = opts
        self.info = None
        if opts.get("help"):
            self.info = "usage: ctpm swtpm socket --tpm2 [swtpm's options]; see README"
            return
        if opts.get("version"):
            self.info = f"TPM emulator (ctpm {__version__}), swtpm command line"
            return
        if opts.get("print-capabilities") or opts.get("print-capabilites"):
            self.info = json.dumps({"type": "swtpm", "features": CAPABILITIES,
                                    "version": __version__})
            return
        self.state_dir = self._tpmstate(opts)
        if opts.get("print-states"):
            states = ([{"name": "permall", "size": os.path.getsize(
                os.path.join(self.state_dir, "nv.snap"))}]
                if self.state_dir and os.path.exists(os.path.join(self.state_dir, "nv.snap"))
                else [])
            self.info = json.dumps({"type": "swtpm", "states": states})
            return
        if not opts.get("tpm2"):
            raise UsageError("swtpm: ctpm emulates a TPM 2.0 only: pass --tpm2")
        for unsupported, why in (("fd", "a connected data channel (-f/--fd)"),
                                 ("chroot", "--chroot"),
                                 ("migration-key", "--migration-key (ctpm's state blobs are "
                                                   "its own)"),
                                 ("migration", "--migration")):
            if unsupported in opts:
                raise UsageError(f"swtpm: ctpm does not support {why}")
        self.server = self._server(opts)
        self.ctrl = self._ctrl(opts)
        if self.server is None and self.ctrl is None:
            raise UsageError("swtpm: give --server or --ctrl (or -p PORT)")
        flags = suboptions(_last(opts, "flags") or "", "flags", (),
                           ("not-need-init", "startup-clear", "startup-state",
                            "startup-deactivated", "startup-none", "disable-auto-shutdown"))
        if "startup-deactivated" in flags:
            raise UsageError("swtpm: startup-deactivated is a TPM 1.2 flag")
        self.startup = 0 if "startup-clear" in flags else 1 if "startup-state" in flags \
            else None
        suboptions(_last(opts, "locality") or "", "locality", (),
                   ("reject-locality-4", "allow-set-locality"))
        seccomp = suboptions(_last(opts, "seccomp") or "", "seccomp", ("action",))
        if seccomp.get("action", "none") not in ("none", "kill", "log"):
            raise UsageError(f"swtpm: seccomp action {seccomp['action']!r} is not none, "
                             f"kill or log")
        self.log = suboptions(_last(opts, "log") or "", "log",
                              ("file", "fd", "level", "prefix"), ("truncate",))
        self.pid = suboptions(_last(opts, "pid") or "", "pid", ("file", "fd"))
        self.key = self._key(opts)
        self.terminate = bool(opts.get("terminate")) or bool(self.ctrl and
                                                             self.ctrl.get("terminate"))
        self.daemon = bool(opts.get("daemon"))
        self.runas = _last(opts, "runas")

    @staticmethod
    def _tpmstate(opts):
        spec = _last(opts, "tpmstate")
        if spec is None:
            return os.environ.get("TPM_PATH")
        o = suboptions(spec, "tpmstate", ("dir", "mode", "backend-uri"), ("lock",))
        if "backend-uri" in o:
            uri = o["backend-uri"]
            if not uri.startswith("dir://"):
                raise UsageError(f"swtpm: backend-uri {uri!r}: ctpm keeps a directory "
                                 f"(dir://) only")
            return uri[len("dir://"):]
        if "mode" in o:
            _mode(o["mode"], "tpmstate mode")       # ctpm's state files are 0600 always
        return o.get("dir")

    @staticmethod
    def _server(opts):
        spec = _last(opts, "server")
        port = _last(opts, "port")
        if spec is None and port is None:
            return None
        o = suboptions(spec or "", "server", ("type", "port", "bindaddr", "ifname", "fd",
                                              "path", "mode", "uid", "gid"), ("disconnect",))
        if port is not None:
            o.setdefault("port", port)
        o.setdefault("type", "tcp")
        if o["type"] not in ("tcp", "unixio"):
            raise UsageError(f"swtpm: server type {o['type']!r} is not tcp or unixio")
        if "fd" not in o and ("path" if o["type"] == "unixio" else "port") not in o:
            raise UsageError(f"swtpm: --server type={o['type']} needs "
                             f"{'path' if o['type'] == 'unixio' else 'port'}= or fd=")
        return o

    @staticmethod
    def _ctrl(opts):
        spec = _last(opts, "ctrl")
        if spec is None:
            return None
        o = suboptions(spec, "ctrl", ("type", "port", "bindaddr", "ifname", "fd", "clientfd",
                                      "path", "mode", "uid", "gid"), ("terminate",))
        if o.get("type") not in ("tcp", "unixio"):
            raise UsageError("swtpm: --ctrl needs type=tcp or type=unixio")
        if "clientfd" in o:
            raise UsageError("swtpm: ctpm does not support --ctrl clientfd= (give path= or fd=)")
        if "fd" not in o and ("path" if o["type"] == "unixio" else "port") not in o:
            raise UsageError(f"swtpm: --ctrl type={o['type']} needs "
                             f"{'path' if o['type'] == 'unixio' else 'port'}= or fd=")
        return o

    @staticmethod
    def _key(opts):
        spec = _last(opts, "key")
        if spec is None:
            return {}
        o = suboptions(spec, "key", ("file", "fd", "pwdfile", "pwdfd", "mode", "format",
                                     "remove", "kdf"))
        if o.get("mode", "aes-256-cbc") not in ("aes-256-cbc", "aes-cbc", "aes-128-cbc"):
            raise UsageError(f"swtpm: key mode {o['mode']!r} is not known")
        if o.get("mode") in ("aes-cbc", "aes-128-cbc") and ("file" in o or "fd" in o):
            raise UsageError("swtpm: ctpm encrypts its state with a 256-bit key: give a "
                             "32-byte key (mode=aes-256-cbc)")
        sources = [k for k in ("file", "fd", "pwdfile", "pwdfd") if k in o]
        if len(sources) != 1:
            raise UsageError("swtpm: --key needs one of file=, fd=, pwdfile=, pwdfd=")
        return o

    def config(self):
        from .config import DEFAULTS, Config
        import dataclasses
        level = self.log.get("level")
        log_level = "warning" if level is None else "debug" if _int(level, "log level") >= 5 \
            else "info" if _int(level, "log level") >= 1 else "warning"
        fields = dict(mssim=(), swtpm=(), state_dir=self.state_dir, log_level=log_level)
        k = self.key
        if "file" in k:
            fields["state_key"] = k["file"]
        elif "fd" in k:
            fields["state_key_fd"] = _int(k["fd"], "key fd")
        elif "pwdfile" in k:
            fields["state_passphrase_file"] = k["pwdfile"]
        elif "pwdfd" in k:
            fields["state_passphrase_fd"] = _int(k["pwdfd"], "key pwdfd")
        config = dataclasses.replace(DEFAULTS, **fields)
        assert isinstance(config, Config)
        return config


def _listener(spec, role, what):
    """A `daemon.Prebound` for a --server / --ctrl specification."""
    from .daemon import Prebound, StartupError
    from .transport.bind import bind_unix
    if "fd" in spec:
        fd = _int(spec["fd"], f"{what} fd")
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            raise StartupError(f"{what} fd={fd}: {e.strerror}") from None
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise StartupError(f"{what} fd={fd} is not a listening socket")
        return Prebound(role, sock, f"fd:{fd}")
    if spec["type"] == "unixio":
        path = os.path.abspath(spec["path"])
        sock = bind_unix(path)
        os.chmod(path, _mode(spec.get("mode", "0600"), f"{what} mode"))
        if "uid" in spec or "gid" in spec:
            os.chown(path, _int(spec.get("uid", "-1"), "uid"), _int(spec.get("gid", "-1"), "gid"))
        return Prebound(role, sock, f"unix:{path}", unlink=path)
    host = spec.get("bindaddr", "127.0.0.1")
    port = _int(spec["port"], f"{what} port")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port} ({what}): {e.strerror}") from None
    host = f"[{host}]" if ":" in host else host
    return Prebound(role, sock, f"{host}:{sock.getsockname()[1]}")


def _setup_logging(plan):
    log = plan.log
    if "file" in log and log["file"] != "-":
        mode = "w" if log.get("truncate") else "a"
        handler = logging.FileHandler(log["file"], mode=mode)
    elif "fd" in log:
        handler = logging.StreamHandler(os.fdopen(_int(log["fd"], "log fd"), "w", buffering=1))
    else:
        return
    handler.setFormatter(logging.Formatter(log.get("prefix", "") + "ctpm: %(levelname)s: "
                                                                    "%(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)


def _drop_privileges(user):
    import pwd
    try:
        entry = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
    except KeyError:
        raise UsageError(f"swtpm: no user {user!r}") from None
    if os.geteuid() != entry.pw_uid:
        try:
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
        except PermissionError:
            raise UsageError(f"swtpm: --runas {user}: not permitted") from None


def socket_main(argv, run) -> int:
    """`swtpm socket ARGV`; `run` is cli.run (passed in: this module does not import cli)."""
    try:
        plan = SocketPlan(argv)
    except UsageError as e:
        print(e, file=sys.stderr)
        return 1
    if plan.info is not None:
        print(plan.info)
        return 0
    if plan.runas:
        try:
            _drop_privileges(plan.runas)
        except UsageError as e:
            print(e, file=sys.stderr)
            return 1
    ready_pipe = _daemonize() if plan.daemon else None
    config = plan.config()

    def on_ready(tpm):
        if plan.startup is not None:        # --flags startup-clear / startup-state
            rsp = tpm.execute(bytes.fromhex("80010000000c00000144") + bytes([0, plan.startup]))
            if rsp[6:10] != b"\0\0\0\0":
                logging.getLogger("ctpm.swtpm").warning(
                    "--flags startup-*: TPM2_Startup answered %s", rsp[6:10].hex())

    def prepare():
        prebound = []
        try:
            if plan.server is not None:
                prebound.append(_listener(plan.server, "swtpm", "--server"))
            if plan.ctrl is not None:
                prebound.append(_listener(plan.ctrl, "swtpm-ctrl", "--ctrl"))
        except BaseException:
            for p in prebound:
                p.sock.close()
            raise
        return {"prebound": prebound, "on_ready": on_ready,
                "terminate_on_ctrl_close": plan.terminate}

    def after_ready():
        _write_pid(plan.pid)
        if ready_pipe is not None:
            os.write(ready_pipe, b"ok\n")
            os.close(ready_pipe)
            _quiet_stdio()

    return run(config, prepare=prepare, after_ready=after_ready,
               log_setup=lambda: _setup_logging(plan), quiet=True)


def _write_pid(pid):
    text = f"{os.getpid()}\n".encode()
    if "file" in pid:
        tmp = pid["file"] + ".tmp"
        with open(tmp, "wb") as f:
            f.write(text)
        os.replace(tmp, pid["file"])
    elif "fd" in pid:
        fd = _int(pid["fd"], "pid fd")
        os.write(fd, text)
        os.close(fd)


def _daemonize():
    """Fork; the parent exits 0 once the child serves (1 if it fails first). Returns the
    child's end of the readiness pipe."""
    r, w = os.pipe()
    if os.fork() > 0:
        os.close(w)
        with os.fdopen(r, "rb") as f:
            ok = f.readline() == b"ok\n"
        os._exit(0 if ok else 1)
    os.close(r)
    os.setsid()
    return w


def _quiet_stdio():
    """A daemon lets go of the terminal or pipes it was started with (daemon(3))."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


# -- swtpm_setup -------------------------------------------------------------------------------

SETUP_FLAGS = {"tpm2", "createek", "allow-signing", "decryption", "ecc", "take-ownership",
               "owner-well-known", "srk-well-known", "create-ek-cert", "create-platform-cert",
               "create-spk", "lock-nvram", "display", "overwrite", "not-overwrite",
               "print-capabilities", "reconfigure", "help", "version"}
SETUP_ARGS = {"runas", "tpm-state", "tpmstate", "tpm", "swtpm_ioctl", "ownerpass", "srkpass",
              "config", "logfile", "keyfile", "keyfile-fd", "pwdfile", "pwdfile-fd", "cipher",
              "pcr-banks", "rsa-keysize", "write-ek-cert-files", "tcsd-system-ps-file",
              "create-config-files", "vmid", "ca-key", "ca-cert", "ca-dir"}


def setup_main(argv) -> int:
    try:
        opts = parse_argv(argv, {"-h": "help"}, {}, SETUP_FLAGS, SETUP_ARGS, "swtpm_setup")
        return _setup(opts)
    except UsageError as e:
        print(e, file=sys.stderr)
        return 1


def _setup(opts) -> int:
    from .manufacture import STATE_FILES, ManufactureError, manufacture
    from .state.errors import StoreError
    from .state.keys import StateKey
    if opts.get("help"):
        print("usage: ctpm swtpm-setup --tpm2 --tpmstate DIR [swtpm_setup's options]; see "
              "README")
        return 0
    if opts.get("version"):
        print(f"TPM emulator setup tool (ctpm {__version__}), swtpm_setup command line")
        return 0
    if opts.get("print-capabilities"):
        print(json.dumps({"type": "swtpm_setup", "features": SETUP_CAPABILITIES,
                          "version": __version__}))
        return 0
    if not opts.get("tpm2"):
        raise UsageError("swtpm_setup: ctpm emulates a TPM 2.0 only: pass --tpm2")
    for unsupported in ("take-ownership", "create-spk", "allow-signing", "reconfigure",
                        "create-config-files"):
        if opts.get(unsupported):
            raise UsageError(f"swtpm_setup: ctpm does not support --{unsupported}")
    state = _last(opts, "tpm-state") or _last(opts, "tpmstate")
    if not state:
        raise UsageError("swtpm_setup: --tpm-state DIR is required")
    if state.startswith("dir://"):
        state = state[len("dir://"):]
    elif "://" in state:
        raise UsageError(f"swtpm_setup: {state}: ctpm keeps a directory (dir://) only")
    banks = _last(opts, "pcr-banks")
    if banks not in (None, "-") and set(banks.split(",")) - {"sha1", "sha256", "sha384",
                                                               "sha512"}:
        raise UsageError(f"swtpm_setup: unknown PCR bank in {banks!r}")
    size = _last(opts, "rsa-keysize")
    if size not in (None, "2048"):
        raise UsageError(f"swtpm_setup: RSA EK key size {size}: ctpm makes 2048-bit EKs")
    cipher = _last(opts, "cipher") or "aes-256-cbc"
    if cipher not in ("aes-256-cbc", "aes-128-cbc"):
        raise UsageError(f"swtpm_setup: cipher {cipher!r} is not known")
    exists = any(os.path.exists(os.path.join(state, f)) for f in STATE_FILES)
    if exists and opts.get("not-overwrite"):
        return 0
    if opts.get("logfile"):
        logging.basicConfig(filename=_last(opts, "logfile"), level="INFO")
    try:
        key = None
        if _last(opts, "keyfile"):
            key = StateKey.from_file(_last(opts, "keyfile"))
        elif _last(opts, "keyfile-fd"):
            key = StateKey.from_fd(_int(_last(opts, "keyfile-fd"), "keyfile-fd"))
        elif _last(opts, "pwdfile"):
            key = StateKey.from_passphrase_file(_last(opts, "pwdfile"))
        elif _last(opts, "pwdfile-fd"):
            key = StateKey.from_fd(_int(_last(opts, "pwdfile-fd"), "pwdfile-fd"),
                                   passphrase=True)
        certs = bool(opts.get("create-ek-cert") or opts.get("create-platform-cert"))
        ca = manufacture(state, key=key, ca_key=_last(opts, "ca-key"),
                         ca_cert=_last(opts, "ca-cert"), ca_dir=_localca(opts),
                         overwrite=bool(opts.get("overwrite")), certificates=certs,
                         lock_nvram=bool(opts.get("lock-nvram")),
                         rsa=True, ecc=True,
                         create_eks=bool(opts.get("createek") or certs),
                         platform_cert=bool(opts.get("create-platform-cert")))
        out = _last(opts, "write-ek-cert-files")
        if out and certs:
            _write_cert_files(state, key, out)
    except (ManufactureError, StoreError) as e:
        raise UsageError(f"swtpm_setup: {e}") from None
    print(f"Successfully authored TPM state (ctpm){'; CA: ' + ca if ca else ''}")
    return 0


def _localca(opts):
    """The local CA shared by all TPMs set up here (swtpm_localca keeps one too): --ca-dir,
    $CTPM_LOCALCA_DIR, /var/lib/ctpm/localca for root, else ~/.config/ctpm/localca."""
    given = _last(opts, "ca-dir") or os.environ.get("CTPM_LOCALCA_DIR")
    if given:
        return given
    if os.geteuid() == 0:
        return "/var/lib/ctpm/localca"
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return os.path.join(base, "ctpm", "localca")


def _write_cert_files(state, key, directory):
    """ek-rsa2048.crt / ek-secp256r1.crt (DER) as swtpm_setup --write-ek-cert-files."""
    from .manufacture import EK_ECC_CERT_INDEX, EK_RSA_CERT_INDEX
    from .state.journal import DirStore
    store = DirStore(state, key=key)
    try:
        nv = store.load_nv()
    finally:
        store.close()
    for index, name in ((EK_RSA_CERT_INDEX, "ek-rsa2048.crt"),
                        (EK_ECC_CERT_INDEX, "ek-secp256r1.crt")):
        entry = nv.get("nv_indices", {}).get(f"{index:08x}")
        if entry is not None:
            with open(os.path.join(directory, name), "wb") as f:
                f.write(bytes.fromhex(entry["data"]))


# -- entry points ------------------------------------------------------------------------------

def main(command, argv, run) -> int:
    """`ctpm swtpm ...`, `ctpm swtpm-setup ...`, `ctpm swtpm-shim DIR`; `run`: cli.run."""
    if command == "swtpm":
        if not argv or argv[0] != "socket":
            what = argv[0] if argv else "(none)"
            print(f"swtpm: ctpm supports the 'socket' interface only, not {what!r}",
                  file=sys.stderr)
            return 1
        return socket_main(argv[1:], run)
    if command in ("swtpm-setup", "swtpm_setup"):
        return setup_main(argv)
    if command == "swtpm-shim":
        return shim_main(argv)
    raise AssertionError(command)


def shim_main(argv) -> int:
    """Write `swtpm` and `swtpm_setup` into a directory: put it first on PATH."""
    if len(argv) != 1:
        print("usage: ctpm swtpm-shim DIR", file=sys.stderr)
        return 2
    directory = argv[0]
    os.makedirs(directory, exist_ok=True)
    python = shlex.quote(sys.executable)
    for name, sub in (("swtpm", "swtpm"), ("swtpm_setup", "swtpm-setup")):
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write(f"#!/bin/sh\nexec {python} -m ctpm {sub} \"$@\"\n")
        os.chmod(path, 0o755)
    print(f"ctpm: {directory}/swtpm and {directory}/swtpm_setup run ctpm")
    return 0
