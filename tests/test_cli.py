"""The `ctpm` command as a user (or a test harness, or systemd) runs it."""
import os
import signal
import socket
import subprocess
import time

import pytest

from ctpm import __version__
from ctpm.testing.process import command, environment, parse_ready_line, run_daemon, start

from .transport.clients import u32


def ctpm(*args, timeout=20):
    return subprocess.run(command(*args), capture_output=True, text=True, timeout=timeout,
                          env=environment(), stdin=subprocess.DEVNULL)


def test_version():
    result = ctpm("--version")
    assert result.returncode == 0 and result.stdout == f"ctpm {__version__}\n"


def test_no_command_is_a_usage_error():
    result = ctpm()
    assert result.returncode == 2 and result.stdout == "" and "usage: ctpm" in result.stderr


def test_ready_line_and_sigterm():
    t0 = time.monotonic()
    with run_daemon() as daemon:
        ready = time.monotonic() - t0
        kinds = [e[0] for e in daemon.endpoints]
        assert kinds == ["mssim", "swtpm"]
        assert daemon.ready_line == (f"ctpm: ready mssim=127.0.0.1:{daemon.mssim_port},"
                                     f"{daemon.mssim_port + 1} swtpm=127.0.0.1:"
                                     f"{daemon.swtpm_port},{daemon.swtpm_port + 1}")
        with socket.create_connection(("127.0.0.1", daemon.mssim_port + 1), timeout=5) as s:
            s.sendall(u32(11))                                     # NV_ON
            assert s.recv(4) == u32(0)
        assert daemon.stop(signal.SIGTERM) == 0
        assert daemon.proc.stdout.read() == b""                    # exactly one line
    assert ready < 5, f"ready after {ready:.2f} s"


def test_sigint_is_a_clean_stop_too():
    with run_daemon() as daemon:
        assert daemon.stop(signal.SIGINT) == 0
        assert "Traceback" not in daemon.stderr()


def test_default_listener_is_mssim_2321():
    """Without flags or config: mssim on 127.0.0.1:2321 (or a one-line error if taken)."""
    daemon = None
    try:
        daemon = start("--log-level", "error", free_ports=False)
    except RuntimeError as e:
        assert "cannot listen on 127.0.0.1:2321" in str(e)
        return
    try:
        assert daemon.ready_line == "ctpm: ready mssim=127.0.0.1:2321,2322"
    finally:
        daemon.stop()


def test_bad_config_is_one_line_exit_2(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[listen]\nmssim = ["abc"]\n')
    result = ctpm("run", "--config", str(path))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "ctpm: config error: [listen] mssim: 'abc' is not HOST:PORT\n"


def test_non_loopback_needs_allow_remote():
    result = ctpm("run", "--mssim", "0.0.0.0:0")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == ("ctpm: config error: --mssim: 0.0.0.0:0 is not a loopback address "
                             "(set [listen] allow_remote = true or pass --allow-remote)\n")
    with run_daemon("--mssim", "0.0.0.0:0", "--allow-remote") as daemon:
        assert daemon.endpoints[0][1] == "0.0.0.0"


@pytest.mark.parametrize("second", [False, True])
def test_port_in_use_is_one_line_exit_1(second):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1] - (1 if second else 0)
        result = ctpm("run", "--mssim", f"127.0.0.1:{port}")
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "cannot listen on" in lines[0], result.stderr
    assert "Address already in use" in lines[0]


def test_mssim_stop_exits_0_and_saves_state(tmp_path):
    state = tmp_path / "state"
    with run_daemon("--mssim", "127.0.0.1:0", "--state", str(state)) as daemon:
        with socket.create_connection(("127.0.0.1", daemon.mssim_port + 1), timeout=5) as s:
            s.sendall(u32(21))                                     # STOP
            assert s.recv(4) == b""
        assert daemon.proc.wait(10) == 0
    assert (state / "nv.snap").stat().st_size > 0


def test_swtpm_shutdown_exits_0():
    with run_daemon("--swtpm", "127.0.0.1:0") as daemon:
        with socket.create_connection(("127.0.0.1", daemon.swtpm_port + 1), timeout=5) as s:
            s.sendall(u32(3))                                      # SHUTDOWN
            assert s.recv(64) == u32(0)
        assert daemon.proc.wait(10) == 0


def test_unusable_state_dir_is_one_line_exit_1(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = ctpm("run", "--mssim", "127.0.0.1:0", "--state", str(blocker / "sub"))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("ctpm: state error: ") and result.stderr.count("\n") == 1


def test_sd_notify(tmp_path):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(10)
        os.environ["NOTIFY_SOCKET"] = path
        try:
            daemon = start()
        finally:
            del os.environ["NOTIFY_SOCKET"]
        ready = sock.recv(4096).decode()
        assert ready.startswith("READY=1\nSTATUS=serving mssim=127.0.0.1:")
        assert daemon.stop() == 0
        assert sock.recv(4096) == b"STOPPING=1"


def test_parse_ready_line():
    assert parse_ready_line("ctpm: ready mssim=[::1]:5,6 swtpm=unix:/x,/x.ctrl") == [
        ("mssim", "::1", 5, None), ("swtpm", None, None, "/x")]


@pytest.mark.parametrize("args", [("verifier", "keygen", "K"),
                                  ("verifier", "keygen", "--curve", "P-384", "K")])
def test_closed_stdout_is_no_traceback(tmp_path, args):
    """A reader that went away (`ctpm ... | head -1`): exit 1 quietly, no traceback."""
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run(command(*args), stdout=write, stderr=subprocess.PIPE,
                                text=True, timeout=20, env=environment(), cwd=tmp_path,
                                stdin=subprocess.DEVNULL)
    finally:
        os.close(write)
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, \
        result.stderr
    assert result.returncode == 1


@pytest.mark.parametrize("argv", [
    [], ["--swtpm", "unix:/tmp/ctpm-x/t.sock"],
    ["--swtpm=unix:/tmp/t.sock", "--mssim", "127.0.0.1:0", "--log-level", "debug"],
    ["--state", "/tmp/ctpm-state", "--allow-remote", "--mssim", "0.0.0.0:5000",
     "--mssim", "[::1]:6000"],
    ["--mode", "ephemeral", "--ak", "rsa", "--snp-provider", "simulated",
     "--snp-sim-dir", "/tmp/sim", "--swtpm", "127.0.0.1:0"],
    ["--resource-manager", "--log-level=info"],
])
def test_run_flags_without_argparse_mean_what_argparse_makes_of_them(argv, monkeypatch):
    """`ctpm run` parses the flags harnesses pass without argparse (cli._run_flags): the
    configuration must be the one argparse's path builds."""
    from ctpm import cli
    monkeypatch.delenv("CTPM_HOST", raising=False)
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    configs = []
    monkeypatch.setattr(cli, "run", lambda config, **kw: configs.append(config) or 0)
    assert cli._run_flags(argv) is not None
    assert cli._main(["run", *argv]) == 0
    monkeypatch.setattr(cli, "_run_flags", lambda argv: None)
    assert cli._main(["run", *argv]) == 0
    assert len(configs) == 2 and configs[0] == configs[1]


@pytest.mark.parametrize("argv", [["--sw", "unix:/tmp/t.sock"], ["--help"], ["--swtpm"],
                                  ["--host", "unix:/tmp/h"], ["--config", "/x.toml"],
                                  ["--allow-remote=yes"], ["extra"]])
def test_other_run_flags_go_to_argparse(argv, monkeypatch):
    from ctpm import cli
    monkeypatch.delenv("CTPM_HOST", raising=False)
    assert cli._run_flags(argv) is None
