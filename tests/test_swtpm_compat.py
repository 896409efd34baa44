"""swtpm's command line on ctpm: the command lines libvirt and the test harnesses use
(copied from their sources), driven by tpm2-tools, a raw control-channel client (SET_DATAFD,
as QEMU) and a QEMU guest; unknown options are one line and exit status 1."""
import array
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time

import pytest

from ctpm.testing.process import command, environment

from . import guest
from .tpmcmd import cmd, rc, u16, u32

tools = pytest.mark.skipif(not shutil.which("tpm2_startup"), reason="tpm2-tools needed")


def free_pair():
    """Two adjacent free ports, below the ephemeral range (as the daemon picks them: port + 1
    of a bind(0) port is often a client's TIME_WAIT)."""
    from ctpm.transport.bind import _pair_candidates
    for port in _pair_candidates():
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                port = a.getsockname()[1]
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


def ctpm(*args, **kw):
    return subprocess.run(command(*args), capture_output=True, text=True, env=environment(),
                          timeout=60, **kw)


def wait_for(predicate, proc=None, timeout=15):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        assert proc is None or proc.poll() is None, proc.communicate()
        time.sleep(0.02)


def listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


# -- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["swtpm", "socket", "--tpm2", "--bogus"], "unrecognized option '--bogus'"),
    (["swtpm", "socket", "--tpm2", "--server", "type=tcp,port=1,foo=2"],
     "Error parsing server options: Unknown option 'foo=2'"),
    (["swtpm", "socket", "--tpm2", "--tpmstate", "dir=/x,color=red"], "Unknown option 'color=red'"),
    (["swtpm", "socket", "--server", "port=1"], "TPM 2.0 only: pass --tpm2"),
    (["swtpm", "chardev", "--tpm2"], "'socket' interface only"),
    (["swtpm", "socket", "--tpm2", "--ctrl", "type=unixio,clientfd=3"], "clientfd"),
    (["swtpm", "socket", "--tpm2", "--ctrl", "type=tcp,port=1", "--key",
      "file=/k,mode=aes-cbc"], "256-bit key"),
    (["swtpm-setup", "--tpm2", "--tpm-state", "/x", "--frobnicate"],
     "unrecognized option '--frobnicate'"),
    (["swtpm-setup", "--tpm2", "--tpm-state", "/x", "--take-ownership"], "--take-ownership"),
])
def test_bad_options_are_one_line_and_exit_1(argv, message):
    out = ctpm(*argv)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and message in out.stderr, out.stderr
    assert out.stdout == ""


def test_print_capabilities_as_libvirt_reads_them(tmp_path):
    caps = json.loads(ctpm("swtpm", "socket", "--print-capabilities").stdout)
    assert caps["type"] == "swtpm" and {"tpm-2.0", "cmdarg-pwd-fd"} <= set(caps["features"])
    setup = json.loads(ctpm("swtpm-setup", "--print-capabilities").stdout)
    assert setup["type"] == "swtpm_setup" and "cmdarg-pwdfile-fd" in setup["features"]
    states = json.loads(ctpm("swtpm", "socket", "--tpm2", "--print-states", "--tpmstate",
                             f"dir={tmp_path}").stdout)
    assert states == {"type": "swtpm", "states": []}


def test_shim_directory_stands_in_for_swtpm(tmp_path):
    assert ctpm("swtpm-shim", str(tmp_path / "bin")).returncode == 0
    out = subprocess.run([str(tmp_path / "bin" / "swtpm"), "socket", "--print-capabilities"],
                         capture_output=True, text=True, env=environment(), timeout=30)
    assert json.loads(out.stdout)["version"]
    out = subprocess.run([str(tmp_path / "bin" / "swtpm_setup"), "--print-capabilities"],
                         capture_output=True, text=True, env=environment(), timeout=30)
    assert json.loads(out.stdout)["type"] == "swtpm_setup"


# -- harness command lines, used by tpm2-tools -------------------------------------------------

HARNESSES = {
    # tpm2-tools test/integration/helpers.sh (start_sim, swtpm branch)
    "tpm2-tools": "socket --tpm2 --server port={port} --ctrl type=tcp,port={ctrl} "
                  "--log fd=2,level=5 --flags not-need-init --tpmstate dir={dir} "
                  "--seccomp action=none --locality allow-set-locality",
    # tpm2-tss script/int-log-compiler.sh (swtpm simulator)
    "tpm2-tss": "socket --tpm2 --server port={port} --ctrl type=tcp,port={ctrl} "
                "--log fd=1,level=5 --flags not-need-init --tpmstate dir={dir} "
                "--locality allow-set-locality",
    # tpm2-pytss tpm2_pytss/utils / test/TSS2_BaseTest.py (SwtpmSimulator)
    "tpm2-pytss": "socket --tpm2 --server port={port} --ctrl type=tcp,port={ctrl} "
                  "--log level=5 --flags not-need-init,startup-clear --tpmstate dir={dir}",
    # go-tpm-tools / keylime style: legacy -p
    "legacy -p": "socket --tpm2 -p {port} --ctrl type=tcp,port={ctrl} --tpmstate dir={dir} "
                 "--flags startup-clear",
}


@tools
@pytest.mark.parametrize("harness", sorted(HARNESSES))
def test_harness_command_lines_serve_tpm2_tools(tmp_path, harness):
    port = free_pair()
    argv = HARNESSES[harness].format(port=port, ctrl=port + 1, dir=tmp_path).split()
    proc = subprocess.Popen(command("swtpm", *argv), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=environment())
    try:
        wait_for(lambda: listening(port) and listening(port + 1), proc)
        env = dict(os.environ, TPM2TOOLS_TCTI=f"swtpm:host=127.0.0.1,port={port}")
        subprocess.run(["tpm2_startup", "-c"], env=env, check=True, timeout=30,
                       capture_output=True)
        out = subprocess.run(["tpm2_pcrread", "sha256:0"], env=env, check=True, timeout=30,
                             capture_output=True, text=True)
        assert "0x0000000000000000000000000000000000000000000000000000000000000000" \
            in out.stdout
        assert (tmp_path / "nv.snap").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


# -- libvirt: swtpm_setup, then swtpm socket with a unix control channel -----------------------

def libvirt_setup(tmp_path, pwd_fd):
    """qemuTPMEmulatorRunSetup's command line (encrypted state, passphrase on an fd)."""
    state = tmp_path / "tpm2"
    return (["swtpm-setup", "--tpm2", "--tpm-state", str(state), "--vmid",
             "vm1:3b7f7c5e-6e2e-4a5e-9a43-6c6f2a000001", "--logfile", str(tmp_path / "setup.log"),
             "--createek", "--create-ek-cert", "--create-platform-cert", "--lock-nvram",
             "--not-overwrite", "--pcr-banks", "sha256", "--pwdfile-fd", str(pwd_fd),
             "--cipher", "aes-256-cbc"], state)


def libvirt_socket(tmp_path, state, pwd_fd, ctrl):
    """qemuTPMEmulatorBuildCommand's command line."""
    return ["swtpm", "socket", "--ctrl", f"type=unixio,path={ctrl},mode=0600", "--tpmstate",
            f"dir={state},mode=0600", "--log", f"file={tmp_path / 'swtpm.log'}", "--terminate",
            "--tpm2", "--key", f"pwdfd={pwd_fd},mode=aes-256-cbc", "--pid",
            f"file={tmp_path / 'swtpm.pid'}"]


def passphrase_fd():
    r, w = os.pipe()
    os.write(w, b"vm1 secret\n")
    os.close(w)
    return r


def setup(tmp_path):
    fd = passphrase_fd()
    argv, state = libvirt_setup(tmp_path, fd)
    out = subprocess.run(command(*argv), capture_output=True, text=True, timeout=60,
                         env=dict(environment(), CTPM_LOCALCA_DIR=str(tmp_path / "ca")),
                         pass_fds=(fd,))
    os.close(fd)
    assert out.returncode == 0, out.stderr
    return state


def start_socket(tmp_path, state, ctrl):
    fd = passphrase_fd()
    proc = subprocess.Popen(command(*libvirt_socket(tmp_path, state, fd, ctrl)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=environment(), pass_fds=(fd,))
    os.close(fd)
    wait_for(lambda: (tmp_path / "swtpm.pid").exists(), proc)
    assert oct(os.stat(ctrl).st_mode & 0o777) == "0o600"
    return proc


def test_libvirt_setup_and_socket_with_a_data_fd_as_qemu_passes_it(tmp_path):
    state = setup(tmp_path)
    assert b"nv_indices" not in (state / "nv.journal").read_bytes()      # encrypted
    # --not-overwrite: a second run leaves the state alone
    before = (state / "nv.snap").read_bytes()
    setup(tmp_path)
    assert (state / "nv.snap").read_bytes() == before
    ctrl = tmp_path / "vm1-swtpm.sock"
    proc = start_socket(tmp_path, state, ctrl)
    assert int((tmp_path / "swtpm.pid").read_text()) == proc.pid
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(str(ctrl))
        ours, theirs = socket.socketpair()
        fds = array.array("i", [theirs.fileno()])
        c.sendmsg([u32(0x10)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])   # SET_DATAFD
        assert c.recv(4) == b"\0\0\0\0"
        theirs.close()
        ours.sendall(cmd(0x144, u16(0)))                                      # Startup
        assert rc(ours.recv(64)) == 0
        for handle in (0x81010001, 0x81010002):                               # ReadPublic
            ours.sendall(cmd(0x173, handles=[handle]))
            rsp = ours.recv(4096)
            assert rc(rsp) == 0 and struct.unpack(">I", rsp[2:6])[0] == len(rsp)
        for index in (0x01C00002, 0x01C0000A, 0x01C08000):                    # NV_ReadPublic
            ours.sendall(cmd(0x169, handles=[index]))
            assert rc(ours.recv(4096)) == 0
        ours.close()
    # --terminate: the control connection is gone, so is the TPM
    assert proc.wait(10) == 0
    assert not ctrl.exists()


def test_daemon_flag_returns_once_serving(tmp_path):
    port = free_pair()
    out = ctpm("swtpm", "socket", "--tpm2", "--daemon", "--server", f"port={port}",
               "--ctrl", f"type=tcp,port={port + 1}", "--tpmstate", f"dir={tmp_path}",
               "--pid", f"file={tmp_path / 'pid'}")
    assert out.returncode == 0, out.stderr
    pid = int((tmp_path / "pid").read_text())
    try:
        assert listening(port) and listening(port + 1)
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not listening(port))


@pytest.mark.guest
@pytest.mark.skipif(guest.missing() is not None, reason=str(guest.missing()))
def test_qemu_guest_on_libvirts_command_line(tmp_path):
    state = setup(tmp_path)
    ctrl = tmp_path / "vm1-swtpm.sock"
    proc = start_socket(tmp_path, state, ctrl)
    try:
        result = guest.boot(str(ctrl), tmp_path)
    finally:
        if proc.poll() is None:
            proc.wait(10)
    assert result.done, result.console[-3000:]
    assert result.version == "2"
    assert proc.returncode == 0
