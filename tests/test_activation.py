"""systemd socket activation: the sockets and environment that systemd-socket-activate(1)
sets up (as systemd does for ctpm@.socket), used by the real tpm2-tools over the swtpm
TCTI; a socket of unknown role is a one-line error."""
import os
import shutil
import socket
import subprocess
import time

import pytest

from ctpm.testing.process import command, environment

pytestmark = pytest.mark.skipif(not shutil.which("systemd-socket-activate"),
                                reason="systemd-socket-activate needed")


def activate(tmp_path, listen, names, *args):
    argv = ["systemd-socket-activate"]
    for address in listen:
        argv += ["-l", address]
    argv += [f"--fdname={names}", *command("run", *args)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=environment(), text=True)
    deadline = time.monotonic() + 10
    while not all(os.path.exists(a) for a in listen if a.startswith("/")):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    return proc


def test_swtpm_sockets_from_systemd_serve_tpm2_tools(tmp_path):
    sock = str(tmp_path / "vm.sock")
    proc = activate(tmp_path, [sock, sock + ".ctrl"], "swtpm:swtpm", "--state",
                    str(tmp_path / "state"))
    try:
        env = dict(os.environ, TPM2TOOLS_TCTI=f"swtpm:path={sock}")
        subprocess.run(["tpm2_startup", "-c"], env=env, check=True, timeout=30)
        out = subprocess.run(["tpm2_getrandom", "--hex", "8"], env=env, check=True,
                             capture_output=True, text=True, timeout=30)
        assert len(out.stdout.strip()) == 16
        # the control channel is the second socket: GET_CAPABILITY answers there
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(sock + ".ctrl")
            c.sendall(b"\0\0\0\x01")
            assert c.recv(8)[:4] == b"\0\0\0\0"
        assert (tmp_path / "state" / "nv.snap").exists()
        line = proc.stdout.readline()
        assert line.startswith("ctpm: ready swtpm=unix:") and "swtpm-ctrl=unix:" in line
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_socket_without_a_known_name_is_a_one_line_error(tmp_path):
    sock = str(tmp_path / "x.sock")
    proc = activate(tmp_path, [sock], "bogus")
    socket.socket(socket.AF_UNIX).connect(sock)          # systemd starts it on a connection
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    ours = [line for line in err.splitlines() if line.startswith("ctpm:")]
    assert len(ours) == 1 and "is named 'bogus'" in ours[0] and "FileDescriptorName" in ours[0]
