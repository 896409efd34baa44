"""The cold `ctpm run` of a TPM in memory prints its ready line once its sockets listen,
before trio and the engine are imported: a client that connects at once is answered when
the engine is loaded, and a SIGTERM at once is a clean stop (exit 0, socket files removed).
Raw commands on the swtpm data channel are answered before trio is imported
(ctpm/transport/early.py); anything else hands the open connections over to the daemon."""
import signal
import socket
import struct
import subprocess
import time

from ctpm.testing.process import command, environment

STARTUP = bytes.fromhex("80010000000c000001440000")


def cold(*args):
    proc = subprocess.Popen(command("run", *args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=environment())
    return proc, proc.stdout.readline().decode()


def test_first_command_right_after_the_ready_line(tmp_path):
    path = tmp_path / "t.sock"
    proc, line = cold("--swtpm", f"unix:{path}")
    try:
        assert line == f"ctpm: ready swtpm=unix:{path},{path}.ctrl\n"
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(str(path))
            s.sendall(STARTUP)
            assert s.recv(64) == bytes.fromhex("80010000000a00000000")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert not path.exists() and not (tmp_path / "t.sock.ctrl").exists()


def test_stopped_before_the_engine_is_loaded(tmp_path):
    path = tmp_path / "t.sock"
    for signum in (signal.SIGTERM, signal.SIGINT):
        proc, line = cold("--swtpm", f"unix:{path}", "--log-level", "info")
        assert line.startswith("ctpm: ready swtpm=")
        proc.send_signal(signum)                # at once: trio is still being imported
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "Traceback" not in err.decode()
        assert not path.exists() and not (tmp_path / "t.sock.ctrl").exists()


def test_address_in_use_before_any_ready_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run(command("run", "--mssim", f"127.0.0.1:{port}"), capture_output=True,
                           text=True, env=environment(), timeout=60)
    assert r.returncode == 1 and r.stdout == "" and "cannot listen" in r.stderr


def test_state_directory_waits_for_the_store(tmp_path):
    """With a state directory the ready line comes after the state is opened, so a locked
    or damaged one is an error instead of a ready line."""
    first, line = cold("--mssim", "127.0.0.1:0", "--state", str(tmp_path / "st"))
    try:
        assert line.startswith("ctpm: ready mssim=")
        r = subprocess.run(command("run", "--mssim", "127.0.0.1:0", "--state",
                                   str(tmp_path / "st")), capture_output=True, text=True,
                           env=environment(), timeout=60)
        assert r.returncode == 1 and r.stdout == "" and "in use" in r.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
    assert first.returncode == 0
    struct.unpack(">I", (tmp_path / "st" / "nv.snap").read_bytes()[:4])


# The first command of a kind imports its handler's chapter (engine/handlers.py) and, for the
# asymmetric ones, gmpy2: a fresh daemon whose first commands after Startup are those.

def _esapi_to_cold_daemon(tmp_path):
    from tpm2_pytss import ESAPI
    path = tmp_path / "t.sock"
    proc, line = cold("--swtpm", f"unix:{path}")
    assert line.startswith("ctpm: ready swtpm=")
    return proc, ESAPI(f"swtpm:path={path}")


def _stop(proc, esapi):
    esapi.close()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert b"Traceback" not in err and b"internal error" not in err, err


def test_first_commands_ecc(tmp_path):
    """LoadExternal of our own P-256 key, then ECDH_KeyGen: z must be [d]R for the
    ephemeral R the TPM returns (checked with OpenSSL's ECDH)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from tpm2_pytss import (ESYS_TR, TPM2_SU, TPM2B_PUBLIC, TPM2B_SENSITIVE, TPMA_OBJECT)
    key = ec.derive_private_key(0x1234567890ABCDEF << 128 | 0xC0FFEE, ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    proc, esapi = _esapi_to_cold_daemon(tmp_path)
    try:
        esapi.startup(TPM2_SU.CLEAR)
        handle = esapi.load_external(
            TPM2B_PUBLIC.from_pem(pem, objectAttributes=TPMA_OBJECT.DECRYPT
                                  | TPMA_OBJECT.USERWITHAUTH),
            TPM2B_SENSITIVE.from_pem(pem), ESYS_TR.RH_NULL)
        z, r = esapi.ecdh_key_gen(handle)
        rx = int.from_bytes(bytes(r.point.x), "big")
        ry = int.from_bytes(bytes(r.point.y), "big")
        peer = ec.EllipticCurvePublicNumbers(rx, ry, ec.SECP256R1()).public_key()
        assert bytes(z.point.x).rjust(32, b"\0") == key.exchange(ec.ECDH(), peer)
        zx, zy = (int.from_bytes(bytes(v), "big") for v in (z.point.x, z.point.y))
        ec.EllipticCurvePublicNumbers(zx, zy, ec.SECP256R1()).public_key()   # on the curve
    finally:
        _stop(proc, esapi)


def test_first_commands_rsa(tmp_path):
    """LoadExternal of an RSA public key, then RSA_Encrypt (OAEP): our private key decrypts."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from tpm2_pytss import (ESYS_TR, TPM2_ALG, TPM2_SU, TPM2B_DATA, TPM2B_PUBLIC,
                            TPM2B_PUBLIC_KEY_RSA, TPMA_OBJECT, TPMT_RSA_DECRYPT)
    key = rsa.generate_private_key(65537, 2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    proc, esapi = _esapi_to_cold_daemon(tmp_path)
    try:
        esapi.startup(TPM2_SU.CLEAR)
        handle = esapi.load_external(
            TPM2B_PUBLIC.from_pem(pem, objectAttributes=TPMA_OBJECT.DECRYPT
                                  | TPMA_OBJECT.USERWITHAUTH),
            None, ESYS_TR.RH_NULL)
        scheme = TPMT_RSA_DECRYPT(scheme=TPM2_ALG.OAEP)
        scheme.details.oaep.hashAlg = TPM2_ALG.SHA256
        out = esapi.rsa_encrypt(handle, TPM2B_PUBLIC_KEY_RSA(b"cold start"), scheme,
                                TPM2B_DATA(b"label\0"))
        assert key.decrypt(bytes(out), padding.OAEP(padding.MGF1(hashes.SHA256()),
                                                    hashes.SHA256(), b"label\0")) == b"cold start"
    finally:
        _stop(proc, esapi)


GET_RANDOM_8 = bytes.fromhex("80010000000c0000017b0008")
RC_INITIALIZE = 0x100


def _response(sock):
    data = b""
    while len(data) < 10 or len(data) < struct.unpack(">I", data[2:6])[0]:
        chunk = sock.recv(4096)
        assert chunk, "the daemon closed the connection"
        data += chunk
    return data


def _rc(response):
    return struct.unpack(">I", response[6:10])[0]


def _data_socket(path):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(str(path))
    return s


def test_control_channel_hands_the_open_connections_over(tmp_path):
    """Startup is answered before trio; a control-channel command other than SET_LOCALITY
    makes the daemon take over, and the data connection opened before still reaches the
    same TPM (a second Startup is TPM_RC_INITIALIZE)."""
    path = tmp_path / "t.sock"
    proc, _line = cold("--swtpm", f"unix:{path}", "--log-level", "debug")
    try:
        with _data_socket(path) as data:
            data.sendall(STARTUP)
            assert _rc(_response(data)) == 0
            with socket.socket(socket.AF_UNIX) as ctrl:
                ctrl.settimeout(30)
                ctrl.connect(f"{path}.ctrl")
                ctrl.sendall(struct.pack(">I", 1))              # CMD_GET_CAPABILITY
                result, caps = struct.unpack(">II", ctrl.recv(8))
                assert result == 0 and caps != 0
            data.sendall(GET_RANDOM_8)
            random = _response(data)
            assert _rc(random) == 0 and len(random) == 20
            data.sendall(STARTUP)
            assert _rc(_response(data)) == RC_INITIALIZE
        with _data_socket(path) as again:                       # new connections too
            again.sendall(GET_RANDOM_8)
            assert _rc(_response(again)) == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert b"Traceback" not in err, err
    assert b"1 commands answered before trio; then a control-channel message" in err, err
    assert not path.exists() and not (tmp_path / "t.sock.ctrl").exists()


def test_partial_and_oversized_commands_are_handed_over(tmp_path):
    """A command split in two and a size beyond the limit are the daemon's to answer, with
    the bytes received so far: the command completes, the oversized one gets
    TPM_RC_COMMAND_SIZE, as they would without the early server."""
    path = tmp_path / "t.sock"
    proc, _line = cold("--swtpm", f"unix:{path}")
    try:
        with _data_socket(path) as data:
            data.sendall(STARTUP[:5])
            time.sleep(0.2)
            data.sendall(STARTUP[5:])
            assert _response(data) == bytes.fromhex("80010000000a00000000")
            data.sendall(GET_RANDOM_8)
            assert _rc(_response(data)) == 0
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        proc, _line = cold("--swtpm", f"unix:{path}")
        with _data_socket(path) as data:
            data.sendall(struct.pack(">HII", 0x8001, 1 << 20, 0x17B))
            assert _response(data) == bytes.fromhex("80010000000a00000142")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def test_mssim_connection_hands_over(tmp_path):
    """With mssim beside swtpm: the swtpm data channel is answered early, an mssim platform
    command ends that, and both channels then reach the same TPM."""
    path = tmp_path / "t.sock"
    proc, line = cold("--swtpm", f"unix:{path}", "--mssim", "127.0.0.1:0")
    port = int(line.split("mssim=127.0.0.1:")[1].split(",")[0])
    try:
        with _data_socket(path) as data:
            data.sendall(STARTUP)
            assert _rc(_response(data)) == 0
            with socket.create_connection(("127.0.0.1", port + 1), timeout=30) as platform:
                platform.sendall(struct.pack(">I", 11))         # NV_ON
                assert platform.recv(4) == bytes(4)
            with socket.create_connection(("127.0.0.1", port), timeout=30) as mssim:
                # TPM_SEND_COMMAND: locality, size, command
                mssim.sendall(struct.pack(">IBI", 8, 0, len(STARTUP)) + STARTUP)
                size = struct.unpack(">I", mssim.recv(4))[0]
                response = b""
                while len(response) < size:
                    response += mssim.recv(size)
                assert _rc(response) == RC_INITIALIZE
            data.sendall(GET_RANDOM_8)
            assert _rc(_response(data)) == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def _set_locality(ctrl, locality):
    ctrl.sendall(struct.pack(">IB", 5, locality))             # CMD_SET_LOCALITY
    return struct.unpack(">I", ctrl.recv(4))[0]


def test_set_locality_before_trio_and_after_the_handover(tmp_path):
    """tpm2-tss's swtpm TCTI sets the locality on the control channel before its first
    command: answered before trio, it applies to the data channel (PCR 20 resets only from
    locality 2-4), and the daemon that takes over keeps it."""
    from tests.transport.clients import pcr_reset
    path = tmp_path / "t.sock"
    proc, _line = cold("--swtpm", f"unix:{path}", "--log-level", "debug")
    try:
        with socket.socket(socket.AF_UNIX) as ctrl, _data_socket(path) as data:
            ctrl.settimeout(30)
            ctrl.connect(f"{path}.ctrl")
            data.sendall(STARTUP)
            assert _rc(_response(data)) == 0
            assert _set_locality(ctrl, 2) == 0
            data.sendall(pcr_reset(20))
            assert _rc(_response(data)) == 0
            assert _set_locality(ctrl, 0) == 0
            data.sendall(pcr_reset(20))
            assert _rc(_response(data)) == 0x907                # TPM_RC_LOCALITY
            assert _set_locality(ctrl, 2) == 0
            assert _set_locality(ctrl, 5) == 0x3D               # BAD_LOCALITY: the daemon's
            data.sendall(pcr_reset(20))                         # still 2, after the handover
            assert _rc(_response(data)) == 0
            ctrl.sendall(struct.pack(">I", 3))                  # CMD_SHUTDOWN: the daemon stops
            assert ctrl.recv(4) == bytes(4)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert b"3 commands answered before trio; then a control-channel message" in err, err
    assert not path.exists()


def test_tpm2_tools_before_trio(tmp_path):
    """tpm2-tools over the swtpm TCTI (SET_LOCALITY, then a connection per command) are
    served before trio from start to stop."""
    import shutil
    import pytest
    if shutil.which("tpm2_startup") is None:
        pytest.skip("tpm2-tools are not installed")
    path = tmp_path / "t.sock"
    proc, _line = cold("--swtpm", f"unix:{path}", "--log-level", "debug")
    tcti = f"swtpm:path={path}"
    try:
        for argv in (["tpm2_startup", "-c"], ["tpm2_getrandom", "8", "--hex"],
                     ["tpm2_pcrread", "sha256:0"], ["tpm2_getcap", "properties-fixed"],
                     ["tpm2_createprimary", "-C", "o", "-G", "ecc", "-c",
                      str(tmp_path / "p.ctx")]):
            r = subprocess.run(argv + ["-T", tcti], capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, (argv, r.stderr)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert b"commands answered before trio; then a stop signal" in err, err
    assert b"ctpm.daemon" not in err, err          # the daemon's own log: never started
