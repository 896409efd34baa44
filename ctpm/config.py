"""The daemon's configuration: one frozen value, built once from TOML and CLI flags.

Everything is checked here, before anything starts, so that a mistake is reported as one line
naming the key (`[listen] mssim: 'abc' is not HOST:PORT`) instead of a traceback later.
Defaults live in `Config` and are documented, identically, in conf/ctpm.toml.
"""
import os
from dataclasses import dataclass

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
MIN_COMMAND_SIZE, MAX_COMMAND_SIZE = 1024, 65536


class ConfigError(Exception):
    """A configuration mistake; str() is the one line to show the user."""


@dataclass(frozen=True)
class Address:
    """A listening address: TCP `host:port` (port 0 = any free port) or a unix socket path."""

    host: str | None = None
    port: int | None = None
    path: str | None = None

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    def __str__(self):
        if self.is_unix:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Config:
    mssim: tuple = (Address("127.0.0.1", 2321),)   # used when no listener is configured
    swtpm: tuple = ()
    allow_remote: bool = False
    stall_timeout: float = 5.0
    state_dir: str | None = None                    # None: NV in memory only
    state_key: str | None = None                    # key file: the state is encrypted
    state_key_fd: int | None = None                 # ... or the key read from this fd
    state_passphrase_file: str | None = None        # ... or a passphrase (scrypt)
    state_passphrase_fd: int | None = None
    state_key_tpm: str | None = None                # ... or a key sealed to this TPM (TCTI)
    state_key_tpm_pcrs: str | None = None           # ... to these PCRs (default sha256:7)
    durability: str = "fdatasync"                   # or "write" (see conf/ctpm.toml)
    compact_bytes: int = 1 << 20                    # journal size that triggers a snapshot
    state_anchor: str | None = None                 # rollback anchor file (state/anchor.py)
    max_command_size: int = 4096
    max_objects: int = 64           # transient objects loaded at once (libtpms: 3)
    max_sessions: int = 64          # sessions loaded at once (libtpms: 3)
    max_persistent: int = 64        # persistent objects (EvictControl)
    max_nv_indices: int = 64        # NV indices (NV_DefineSpace)
    nv_space: int = 32768           # bytes of NV index data in all
    nv_buffer_max: int | None = None    # TPM_PT_NV_BUFFER_MAX; None: the mode's (1024/2048)
    resource_manager: bool = False  # per-connection handles on mssim (as /dev/tpmrm0)
    log_level: str = "warning"
    mode: str = "standard"          # standard | ephemeral | svsm (docs/modes.md)
    ak: str = "ecc"                 # the anchored AK: ecc (P-256 ECDSA) | rsa (RSASSA-2048)
    snp_provider: str = "auto"      # auto | configfs | sev-guest | simulated
    snp_sim_dir: str | None = None  # the simulated AMD-SP's directory (provider simulated)
    svsm: tuple = ()                # unix sockets of the SVSM protocol (mode svsm)
    vtpm_proxy: bool = False        # also be the kernel's TPM through /dev/vtpmx
    # passthrough mode (docs/modes.md "Passthrough"; the guard's policy in ctpm/modes/guard.py)
    upstream: str | None = None     # the TPM's TCTI, as tpm2-tools writes it
    upstream_force: bool = False    # accept a bare /dev/tpmN (no resource manager)
    upstream_timeout: float = 60.0  # seconds for one upstream command
    passthrough_anchor: bool = False    # bind the upstream's EK and an AK to the SNP report
    passthrough_nv_range: tuple | None = None           # this guest's NV indices
    passthrough_persistent_range: tuple | None = None   # this guest's persistent handles
    passthrough_shared: tuple = ((0x01C00000, 0x01C07FFF), (0x81010000, 0x810100FF))
    passthrough_refuse: tuple = ()  # () = the guard's DEFAULT_REFUSE
    passthrough_pcr_writes: bool = False
    # the upstream's ownerAuth / endorsementAuth: a file's bytes or what a descriptor gives
    # (never logged); empty when not given
    upstream_tcti_loader: bool = False  # always tpm2-pytss's TCTI loader (no native protocol)
    upstream_owner_auth_file: str | None = None
    upstream_owner_auth_fd: int | None = None
    upstream_endorsement_auth_file: str | None = None
    upstream_endorsement_auth_fd: int | None = None


DEFAULTS = Config()

# TOML layout: section -> key -> Config field.
SCHEMA = {
    "listen": {"mssim": "mssim", "swtpm": "swtpm", "allow_remote": "allow_remote",
               "stall_timeout": "stall_timeout"},
    "state": {"dir": "state_dir", "key": "state_key", "passphrase_file": "state_passphrase_file",
              "durability": "durability", "compact_bytes": "compact_bytes",
              "anchor": "state_anchor", "key_tpm": "state_key_tpm",
              "key_tpm_pcrs": "state_key_tpm_pcrs"},
    "tpm": {"max_command_size": "max_command_size", "max_objects": "max_objects",
            "max_sessions": "max_sessions", "max_persistent": "max_persistent",
            "max_nv_indices": "max_nv_indices", "nv_space": "nv_space",
            "nv_buffer_max": "nv_buffer_max",
            "resource_manager": "resource_manager"},
    "log": {"level": "log_level"},
    "mode": {"mode": "mode", "ak": "ak", "svsm": "svsm", "vtpm_proxy": "vtpm_proxy"},
    "snp": {"provider": "snp_provider", "sim_dir": "snp_sim_dir"},
    "passthrough": {"upstream": "upstream", "force": "upstream_force",
                    "timeout": "upstream_timeout", "anchor": "passthrough_anchor",
                    "nv_range": "passthrough_nv_range",
                    "persistent_range": "passthrough_persistent_range",
                    "shared": "passthrough_shared", "refuse": "passthrough_refuse",
                    "pcr_writes": "passthrough_pcr_writes",
                    "tcti_loader": "upstream_tcti_loader",
                    "owner_auth_file": "upstream_owner_auth_file",
                    "endorsement_auth_file": "upstream_endorsement_auth_file"},
}
MODES = ("standard", "ephemeral", "svsm", "passthrough")
SNP_PROVIDERS = ("auto", "configfs", "sev-guest", "simulated")


def parse_address(text, where: str, *, unix_ok: bool) -> Address:
    """`HOST:PORT`, `[V6]:PORT` or (if allowed) `unix:PATH`."""
    form = "HOST:PORT or unix:PATH" if unix_ok else "HOST:PORT"
    if not isinstance(text, str):
        raise ConfigError(f"{where}: {text!r} is not {form}")
    if text.startswith("unix:"):
        path = text[5:]
        if not unix_ok or not path or "\0" in path:
            raise ConfigError(f"{where}: {text!r} is not {form}")
        if "," in path or any(c.isspace() for c in path):
            # TCTI strings ("swtpm:path=P,...") and the ready line could not carry it.
            raise ConfigError(f"{where}: {text!r}: no commas or spaces in socket paths")
        path = os.path.abspath(path)        # the ready line and TCTI strings need it whole
        if len((path + ".ctrl").encode()) > 107:
            raise ConfigError(f"{where}: {text!r}: path too long for a unix socket")
        return Address(path=path)
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not _is_ip(host, 6):
            raise ConfigError(f"{where}: {text!r} is not {form}")
    elif ":" in host:
        raise ConfigError(f"{where}: {text!r}: write IPv6 addresses as [ADDRESS]:PORT")
    if not sep or not host or not port.isdigit() or any(c in host for c in " /,"):
        raise ConfigError(f"{where}: {text!r} is not {form}")
    if int(port) > 65534:       # the second channel listens on port + 1
        raise ConfigError(f"{where}: {text!r}: port must be 0-65534 (port + 1 is used too)")
    return Address(host=host, port=int(port))


def _is_ip(text: str, version: int | None = None) -> bool:
    import ipaddress    # here, not at the top: `ctpm run` start-up time
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    return version is None or ip.version == version


def _is_loopback(host: str, where: str) -> bool:
    if host in ("localhost", "127.0.0.1", "::1"):
        return True
    import ipaddress
    import socket
    if _is_ip(host):
        return ipaddress.ip_address(host).is_loopback
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        raise ConfigError(f"{where}: cannot resolve host {host!r}") from None
    return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def _check_type(value, kind, where):
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if not ok:
        names = {bool: "true or false", int: "an integer", str: "a string",
                 (int, float): "a number", list: "a list"}
        raise ConfigError(f"{where}: expected {names[kind]}, got {value!r}")
    return value


def read_toml(path) -> dict:
    """The TOML file as {field: (value, where)}; unknown sections and keys are errors."""
    import tomllib      # only when a file is given: keeps `ctpm run` start-up light
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    found = {}
    for section, table in doc.items():
        if section not in SCHEMA:
            raise ConfigError(f"{path}: unknown section [{section}]")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section} must be a [{section}] table")
        for key, value in table.items():
            if key not in SCHEMA[section]:
                raise ConfigError(f"{path}: unknown key {key!r} in [{section}]")
            found[SCHEMA[section][key]] = (value, f"[{section}] {key}")
    return found


KEY_SOURCES = ("state_key", "state_key_fd", "state_passphrase_file", "state_passphrase_fd",
               "state_key_tpm")


def load(path=None, *, mssim=None, swtpm=None, state_dir=None, log_level=None,
         allow_remote=False, resource_manager=False, mode=None, ak=None, snp_provider=None,
         snp_sim_dir=None, svsm=None, vtpm_proxy=False, state_key=None, state_key_fd=None,
         state_passphrase_fd=None, state_passphrase_file=None,
         default_listener=True, upstream=None, upstream_force=False, anchor=False,
         nv_range=None, persistent_range=None, upstream_auth=None,
         state_anchor=None, state_key_tpm=None, state_key_tpm_pcrs=None) -> Config:
    """Build and validate the configuration: TOML file first, then CLI flags over it.
    `default_listener=False` (socket activation): no mssim on 2321 when none is given."""
    raw = read_toml(path) if path is not None else {}
    flags = {"mssim": (mssim, "--mssim"), "swtpm": (swtpm, "--swtpm"),
             "state_dir": (state_dir, "--state"), "log_level": (log_level, "--log-level"),
             "mode": (mode, "--mode"), "ak": (ak, "--ak"),
             "snp_provider": (snp_provider, "--snp-provider"),
             "snp_sim_dir": (snp_sim_dir, "--snp-sim-dir"), "svsm": (svsm, "--svsm"),
             "state_key": (state_key, "--state-key"),
             "state_key_fd": (state_key_fd, "--state-key-fd"),
             "state_passphrase_file": (state_passphrase_file, "--state-passphrase-file"),
             "state_passphrase_fd": (state_passphrase_fd, "--state-passphrase-fd"),
             "state_anchor": (state_anchor, "--state-anchor"),
             "state_key_tpm": (state_key_tpm, "--state-key-tpm"),
             "state_key_tpm_pcrs": (state_key_tpm_pcrs, "--state-key-tpm-pcrs"),
             "upstream": (upstream, "--upstream"),
             "passthrough_nv_range": (nv_range, "--nv-range"),
             "passthrough_persistent_range": (persistent_range, "--persistent-range")}
    for (hierarchy, kind), value in (upstream_auth or {}).items():   # CLI: file or fd
        flag = f"--upstream-{hierarchy}-auth-{kind}"
        flags[f"upstream_{hierarchy}_auth_{kind}"] = (value, flag)
    if any(v is not None for v, _ in (flags[k] for k in KEY_SOURCES)):
        for k in KEY_SOURCES:      # a key on the command line replaces the file's
            raw.pop(k, None)
    for name, (value, where) in flags.items():
        if value is not None and value != []:
            raw[name] = (value, where)
    if allow_remote:
        raw["allow_remote"] = (True, "--allow-remote")
    if resource_manager:
        raw["resource_manager"] = (True, "--resource-manager")
    if vtpm_proxy:
        raw["vtpm_proxy"] = (True, "--vtpm-proxy")
    if upstream_force:
        raw["upstream_force"] = (True, "--upstream-force")
    if anchor:
        raw["passthrough_anchor"] = (True, "--anchor")

    values = {}
    if "mssim" in raw or "swtpm" in raw or raw.get("svsm", (None,))[0] or not default_listener:
        values["mssim"] = values["swtpm"] = ()     # the default mssim only without any
    for name, (value, where) in raw.items():
        values[name] = _validate(name, value, where)
    config = Config(**values)
    _check_mode(config, raw)
    given = [raw[k][1] for k in KEY_SOURCES if k in raw]
    if len(given) > 1:
        raise ConfigError(f"{given[1]}: only one state key source ({given[0]} was given)")
    if given and not config.state_dir:
        raise ConfigError(f"{given[0]}: a state key needs a state directory (--state)")
    if config.state_key_tpm_pcrs and not config.state_key_tpm:
        raise ConfigError(f"{raw['state_key_tpm_pcrs'][1]}: PCRs for a state key sealed to "
                          f"a TPM need that TPM (--state-key-tpm)")
    if config.state_anchor and not config.state_dir:
        raise ConfigError(f"{raw['state_anchor'][1]}: an anchor needs a state directory "
                          f"(--state)")
    if not config.mssim and not config.swtpm and not config.svsm and default_listener:
        raise ConfigError("no listener configured ([listen] mssim / swtpm are both empty)")
    if not config.allow_remote:
        for name in ("mssim", "swtpm"):
            value, where = raw.get(name, (None, f"[listen] {name}"))
            for address in getattr(config, name):
                if not address.is_unix and not _is_loopback(address.host, where):
                    raise ConfigError(
                        f"{where}: {address} is not a loopback address "
                        "(set [listen] allow_remote = true or pass --allow-remote)")
    return config


def _check_mode(config, raw):
    """The combinations a mode cannot have, each a one-line error."""
    where = raw.get("mode", (None, "[mode] mode"))[1]
    if config.mode != "standard" and config.state_dir is not None:
        why = ("its state is the upstream TPM's" if config.mode == "passthrough" else
               "every start is a new TPM")
        raise ConfigError(f"{raw['state_dir'][1]}: the {config.mode} mode keeps no state "
                          f"({why}); drop it or use {where} standard")
    if config.mode == "svsm" and not config.svsm:
        raise ConfigError(f"{where}: svsm needs an SVSM socket (--svsm unix:PATH, "
                          "[mode] svsm)")
    if config.svsm and config.mode != "svsm":
        raise ConfigError(f"{raw['svsm'][1]}: SVSM sockets need --mode svsm")
    _check_passthrough(config, raw, where)
    if config.mode == "standard" or (config.mode == "passthrough"
                                     and not config.passthrough_anchor):
        for name in ("snp_provider", "snp_sim_dir", "ak"):
            if name in raw and getattr(config, name) != getattr(DEFAULTS, name):
                raise ConfigError(f"{raw[name][1]}: the {config.mode} mode has no SNP "
                                  "anchor (use --mode ephemeral or svsm, or passthrough "
                                  "with --anchor)")
    if config.snp_provider == "simulated" and not config.snp_sim_dir:
        raise ConfigError(f"{raw['snp_provider'][1]}: simulated needs a directory for the "
                          "simulated AMD-SP's keys (--snp-sim-dir DIR, [snp] sim_dir)")
    if config.snp_sim_dir and config.snp_provider != "simulated":
        raise ConfigError(f"{raw['snp_sim_dir'][1]}: only with the simulated provider "
                          "(--snp-provider simulated)")


def _check_passthrough(config, raw, where):
    if config.mode != "passthrough":
        for name in SCHEMA["passthrough"].values():
            if name in raw:
                raise ConfigError(f"{raw[name][1]}: only with --mode passthrough")
        return
    if not config.upstream:
        raise ConfigError(f"{where}: passthrough needs the TPM's TCTI (--upstream TCTI, "
                          "[passthrough] upstream)")
    name, _, conf = config.upstream.partition(":")
    if name in ("device", "libtss2-tcti-device.so.0") and not config.upstream_force:
        import re
        path = conf.split(",")[0] or "/dev/tpm0"
        if path.startswith("path="):
            path = path[5:]
        if re.fullmatch(r"/dev/tpm\d+", path):
            raise ConfigError(f"{raw['upstream'][1]}: {path} has no resource manager (guests "
                              "would share transient objects and sessions): use /dev/tpmrmN "
                              "or tabrmd, or --upstream-force")
    for hierarchy in ("owner", "endorsement"):
        given = [raw[f"upstream_{hierarchy}_auth_{k}"][1] for k in ("file", "fd")
                 if f"upstream_{hierarchy}_auth_{k}" in raw]
        if len(given) > 1:
            raise ConfigError(f"{given[1]}: only one source of the {hierarchy} "
                              f"authorization ({given[0]} was given)")


def _validate(name, value, where):
    if name in ("passthrough_nv_range", "passthrough_persistent_range"):
        from .modes.guard import parse_range
        try:
            lo, hi = parse_range(_check_type(value, str, where), where)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        kind = 0x01 if name == "passthrough_nv_range" else 0x81
        if lo >> 24 != kind or hi >> 24 != kind:
            raise ConfigError(f"{where}: {value!r}: handles must start with {kind:#04x}")
        return (lo, hi)
    if name == "passthrough_shared":
        from .modes.guard import parse_range
        try:
            return tuple(parse_range(v, where) for v in _check_type(value, list, where))
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if name == "passthrough_refuse":
        from .modes.guard import CC
        for v in _check_type(value, list, where):
            if v not in CC:
                raise ConfigError(f"{where}: {v!r} is not a command the guard knows "
                                  f"({', '.join(sorted(CC))})")
        return tuple(value)
    if name == "upstream":
        if not _check_type(value, str, where) or "\0" in value:
            raise ConfigError(f"{where}: must not be empty")
        return value
    if name == "upstream_timeout":
        value = _check_type(value, (int, float), where)
        if not 0 < value <= 600:
            raise ConfigError(f"{where}: {value!r} is not between 0 and 600 seconds")
        return float(value)
    if name in ("upstream_force", "passthrough_anchor", "passthrough_pcr_writes",
                "upstream_tcti_loader"):
        return _check_type(value, bool, where)
    if name in ("mode", "ak", "snp_provider"):
        allowed = {"mode": MODES, "ak": ("ecc", "rsa"), "snp_provider": SNP_PROVIDERS}[name]
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(allowed)}")
        return value
    if name == "snp_sim_dir":
        if not _check_type(value, str, where):
            raise ConfigError(f"{where}: must not be empty")
        return value
    if name == "svsm":
        if isinstance(value, str):
            value = [value]
        _check_type(value, list, where)
        addresses = tuple(parse_address(v, where, unix_ok=True) for v in value)
        for a in addresses:
            if not a.is_unix:
                raise ConfigError(f"{where}: {a}: the SVSM protocol is served on unix:PATH only")
        return addresses
    if name in ("mssim", "swtpm"):
        if isinstance(value, str):
            value = [value]
        _check_type(value, list, where)
        return tuple(parse_address(v, where, unix_ok=name == "swtpm") for v in value)
    if name in ("allow_remote", "resource_manager", "vtpm_proxy"):
        return _check_type(value, bool, where)
    if name == "stall_timeout":
        value = _check_type(value, (int, float), where)
        if not 0 < value <= 3600:
            raise ConfigError(f"{where}: {value!r} is not between 0 and 3600 seconds")
        return float(value)
    if name == "state_dir":
        if not _check_type(value, str, where):
            raise ConfigError(f"{where}: must not be empty")
        return value
    if name in ("state_key", "state_passphrase_file", "upstream_owner_auth_file",
                "upstream_endorsement_auth_file", "state_anchor", "state_key_tpm",
                "state_key_tpm_pcrs"):
        if not _check_type(value, str, where):
            raise ConfigError(f"{where}: must not be empty")
        return value
    if name in ("state_key_fd", "state_passphrase_fd", "upstream_owner_auth_fd",
                "upstream_endorsement_auth_fd"):
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        value = _check_type(value, int, where)
        if value < 0:
            raise ConfigError(f"{where}: {value} is not a file descriptor")
        return value
    if name == "durability":
        if _check_type(value, str, where) not in ("fdatasync", "write"):
            raise ConfigError(f"{where}: {value!r} is not fdatasync or write")
        return value
    if name == "compact_bytes":
        value = _check_type(value, int, where)
        if not 4096 <= value <= 1 << 30:
            raise ConfigError(f"{where}: {value} is not between 4096 and 1073741824")
        return value
    if name == "max_command_size":
        value = _check_type(value, int, where)
        if not MIN_COMMAND_SIZE <= value <= MAX_COMMAND_SIZE:
            raise ConfigError(f"{where}: {value} is not between {MIN_COMMAND_SIZE} "
                              f"and {MAX_COMMAND_SIZE}")
        return value
    if name == "nv_space":
        value = _check_type(value, int, where)
        if not 2048 <= value <= 16 * 1024 * 1024:
            raise ConfigError(f"{where}: {value} is not between 2048 and 16777216 bytes")
        return value
    if name == "nv_buffer_max":
        value = _check_type(value, int, where)
        if not 1024 <= value <= 2048:
            raise ConfigError(f"{where}: {value} is not between 1024 and 2048 bytes")
        return value
    if name in ("max_objects", "max_sessions", "max_persistent", "max_nv_indices"):
        value = _check_type(value, int, where)
        if not 3 <= value <= 4096:     # 3: the least a PC Client TPM must hold
            raise ConfigError(f"{where}: {value} is not between 3 and 4096")
        return value
    if name == "log_level":
        level = _check_type(value, str, where).lower()
        if level not in LOG_LEVELS:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(LOG_LEVELS)}")
        return level
    raise AssertionError(name)
