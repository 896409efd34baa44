"""Configuration: defaults, TOML + flags, one-line errors, and conf/ctpm.toml's honesty."""
import re
from pathlib import Path

import pytest

from ctpm.config import Address, Config, ConfigError, load

CONF = Path(__file__).resolve().parents[1] / "conf" / "ctpm.toml"


def write(tmp_path, text):
    path = tmp_path / "ctpm.toml"
    path.write_text(text)
    return str(path)


def test_no_file_no_flags_is_the_default():
    assert load() == Config()
    assert Config().mssim == (Address("127.0.0.1", 2321),) and Config().swtpm == ()


def test_documented_config_file_is_the_default():
    assert load(str(CONF)) == Config()


def test_every_documented_default_equals_the_code(tmp_path):
    """Uncommenting every `#key = value` line of conf/ctpm.toml must change nothing."""
    text = CONF.read_text()
    uncommented = re.sub(r"(?m)^#(\w+ = .*)$", r"\1", text)
    assert uncommented.count("\n") == text.count("\n")
    keys = re.findall(r"(?m)^(\w+) = ", uncommented)
    assert sorted(keys) == sorted(["mssim", "swtpm", "allow_remote", "stall_timeout",
                                   "max_command_size", "max_objects", "max_sessions",
                                   "max_persistent", "max_nv_indices", "nv_space", "level",
                                   "mode", "ak", "svsm", "vtpm_proxy", "provider",
                                   "resource_manager", "durability", "compact_bytes"])
    assert load(write(tmp_path, uncommented)) == Config()


@pytest.mark.parametrize("key", ["max_objects", "max_sessions", "max_persistent",
                                 "max_nv_indices"])
def test_limits(tmp_path, key):
    assert getattr(load(write(tmp_path, f"[tpm]\n{key} = 200\n")), key) == 200
    for bad in ("2", "5000", '"many"'):
        with pytest.raises(ConfigError, match=key):
            load(write(tmp_path, f"[tpm]\n{key} = {bad}\n"))


def test_nv_buffer_max(tmp_path):
    assert load(write(tmp_path, "")).nv_buffer_max is None          # the mode's default
    for good in (1024, 2048):
        assert load(write(tmp_path, f"[tpm]\nnv_buffer_max = {good}\n")).nv_buffer_max == good
    for bad in ("1023", "2049", '"big"'):
        with pytest.raises(ConfigError, match="nv_buffer_max"):
            load(write(tmp_path, f"[tpm]\nnv_buffer_max = {bad}\n"))


def test_flags_override_the_file(tmp_path):
    path = write(tmp_path, '[listen]\nmssim = ["127.0.0.1:5000"]\nswtpm = ["unix:/tmp/x"]\n'
                           '[log]\nlevel = "INFO"\n[state]\ndir = "/tmp/s"\n')
    config = load(path)
    assert config.mssim == (Address("127.0.0.1", 5000),)
    assert config.swtpm == (Address(path="/tmp/x"),)
    assert config.log_level == "info" and config.state_dir == "/tmp/s"
    config = load(path, mssim=["[::1]:0"], state_dir="/tmp/t", log_level="debug")
    assert config.mssim == (Address("::1", 0),) and config.swtpm == (Address(path="/tmp/x"),)
    assert config.state_dir == "/tmp/t" and config.log_level == "debug"


def test_one_listener_given_replaces_the_default():
    assert load(swtpm=["127.0.0.1:0"]).mssim == ()
    assert load(mssim=["localhost:7000"]).swtpm == ()


@pytest.mark.parametrize("text, message", [
    ('[listen]\nmssim = ["abc"]', "[listen] mssim: 'abc' is not HOST:PORT"),
    ('[listen]\nmssim = ["unix:/x"]', "[listen] mssim: 'unix:/x' is not HOST:PORT"),
    ('[listen]\nmssim = ["127.0.0.1:65535"]',
     "[listen] mssim: '127.0.0.1:65535': port must be 0-65534 (port + 1 is used too)"),
    ('[listen]\nswtpm = ["::1:5"]',
     "[listen] swtpm: '::1:5': write IPv6 addresses as [ADDRESS]:PORT"),
    ('[listen]\nswtpm = ["unix:/a b"]',
     "[listen] swtpm: 'unix:/a b': no commas or spaces in socket paths"),
    ('[listen]\nswtpm = [5]', "[listen] swtpm: 5 is not HOST:PORT or unix:PATH"),
    ('[listen]\nmssim = []\nswtpm = []',
     "no listener configured ([listen] mssim / swtpm are both empty)"),
    ('[listen]\nmssim = ["0.0.0.0:2321"]',
     "[listen] mssim: 0.0.0.0:2321 is not a loopback address "
     "(set [listen] allow_remote = true or pass --allow-remote)"),
    ('[listen]\nallow_remote = "yes"', "[listen] allow_remote: expected true or false, got 'yes'"),
    ('[listen]\nstall_timeout = 0', "[listen] stall_timeout: 0 is not between 0 and 3600 seconds"),
    ('[tpm]\nmax_command_size = 100', "[tpm] max_command_size: 100 is not between 1024 and 65536"),
    ('[tpm]\nmax_command_size = true', "[tpm] max_command_size: expected an integer, got True"),
    ('[log]\nlevel = "loud"',
     "[log] level: 'loud' is not one of debug, info, warning, error, critical"),
    ('[state]\ndir = ""', "[state] dir: must not be empty"),
    ('[listen]\nport = 1', "unknown key 'port' in [listen]"),
    ('[network]\n', "unknown section [network]"),
    ('listen = 3', "listen must be a [listen] table"),
])
def test_errors_are_one_line_naming_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load(path)
    assert str(e.value).removeprefix(f"{path}: ") == message
    assert "\n" not in str(e.value)


def test_toml_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"ctpm.toml: .*line 1"):
        load(write(tmp_path, "[listen\n"))
    with pytest.raises(ConfigError, match="No such file or directory"):
        load(str(tmp_path / "missing.toml"))


def test_flag_errors_name_the_flag():
    with pytest.raises(ConfigError, match=r"^--mssim: 'abc' is not HOST:PORT$"):
        load(mssim=["abc"])
    with pytest.raises(ConfigError, match=r"^--swtpm: 10.1.2.3:0 is not a loopback"):
        load(swtpm=["10.1.2.3:0"])


def test_allow_remote():
    config = load(mssim=["0.0.0.0:0"], swtpm=["[::]:0"], allow_remote=True)
    assert config.allow_remote and config.mssim == (Address("0.0.0.0", 0),)
    assert load(mssim=["localhost:0", "[::1]:0", "127.0.0.2:0"]).allow_remote is False


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        Config().log_level = "debug"


def test_unix_paths_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load(swtpm=["unix:tpm.sock"]).swtpm == (Address(path=f"{tmp_path}/tpm.sock"),)


def test_limits_reach_the_engine(tmp_path):
    from ctpm.daemon import build_backend
    config = load(write(tmp_path, "[tpm]\nmax_objects = 5\nmax_sessions = 7\nmax_persistent = 9\n"
                                  "max_nv_indices = 11\nnv_space = 4096\n"))
    engine = build_backend(config).tpm.config
    assert (engine.max_objects, engine.max_sessions, engine.max_persistent,
            engine.max_nv_indices, engine.nv_space) == (5, 7, 9, 11, 4096)
    with pytest.raises(ConfigError, match="nv_space"):
        load(write(tmp_path, "[tpm]\nnv_space = 100\n"))


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(mode="ephemeral", state_dir="/tmp/s"), "--state: the ephemeral mode keeps no state"),
    (dict(mode="svsm", state_dir="/tmp/s"), "--state: the svsm mode keeps no state"),
    (dict(mode="svsm"), "--mode: svsm needs an SVSM socket"),
    (dict(svsm=["unix:/tmp/a.svsm"]), "--svsm: SVSM sockets need --mode svsm"),
    (dict(mode="svsm", svsm=["127.0.0.1:5"]), "served on unix:PATH only"),
    (dict(snp_provider="simulated"), "the standard mode has no SNP anchor"),
    (dict(ak="rsa"), "--ak: the standard mode has no SNP anchor"),
    (dict(mode="ephemeral", snp_provider="simulated"), "needs a directory"),
    (dict(mode="ephemeral", snp_sim_dir="/tmp/d"), "only with the simulated provider"),
    (dict(mode="turbo"), "'turbo' is not one of standard, ephemeral, svsm"),
    (dict(mode="ephemeral", snp_provider="magic"), "'magic' is not one of auto"),
])
def test_mode_combinations_are_one_line_errors(kwargs, fragment):
    with pytest.raises(ConfigError) as e:
        load(**kwargs)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_modes_from_the_file(tmp_path):
    path = write(tmp_path, '[mode]\nmode = "ephemeral"\nak = "rsa"\n'
                           '[snp]\nprovider = "simulated"\nsim_dir = "/tmp/sp"\n')
    config = load(path)
    assert (config.mode, config.ak, config.snp_provider, config.snp_sim_dir) == \
        ("ephemeral", "rsa", "simulated", "/tmp/sp")


def test_state_key_options(tmp_path):
    path = write(tmp_path, '[state]\ndir = "/tmp/s"\nkey = "/k"\ndurability = "write"\n')
    config = load(path)
    assert (config.state_key, config.durability) == ("/k", "write")
    # a key on the command line replaces the file's
    assert load(path, state_passphrase_fd=5).state_key is None
    with pytest.raises(ConfigError, match="--state-key-fd: only one state key source"):
        load(state_dir="/tmp/s", state_key="/k", state_key_fd=3)
    with pytest.raises(ConfigError, match="needs a state directory"):
        load(state_key="/k")
    with pytest.raises(ConfigError, match=r"\[state\] durability: 'sometimes'"):
        load(write(tmp_path, '[state]\ndurability = "sometimes"\n'))


def test_svsm_listener_replaces_the_default_mssim(tmp_path):
    """`--mode svsm --svsm unix:PATH` serves the SVSM socket only (docs/svsm.md then starts
    `ctpm svsm-bridge --mssim 127.0.0.1:2321`, which the default mssim would collide with);
    an empty svsm list is no listener."""
    config = load(mode="svsm", svsm=["unix:/tmp/x.sock"])
    assert config.mssim == () and config.swtpm == ()
    config = load(write(tmp_path, '[mode]\nmode = "svsm"\nsvsm = ["unix:/tmp/y.sock"]\n'))
    assert config.mssim == () and len(config.svsm) == 1
    config = load(mode="svsm", svsm=["unix:/tmp/x.sock"], mssim=["127.0.0.1:0"])
    assert config.mssim == (Address("127.0.0.1", 0),)
    assert load(write(tmp_path, "[mode]\nsvsm = []\n")).mssim == (Address("127.0.0.1", 2321),)


def test_every_config_key_is_in_the_documented_file():
    """Each key the loader accepts (ctpm.config.SCHEMA) is shown, as `key = ...` (commented
    or not), in its own section of conf/ctpm.toml, and the file has no section the loader
    refuses."""
    from ctpm.config import SCHEMA
    text = CONF.read_text()
    sections = re.split(r"(?m)^\[(\w+)\]$", text)
    tables = dict(zip(sections[1::2], sections[2::2]))
    assert sorted(tables) == sorted(SCHEMA)
    missing = [f"[{section}] {key}" for section, keys in SCHEMA.items() for key in keys
               if not re.search(rf"(?<![\w.]){key} = ", tables[section])]
    assert not missing, missing
