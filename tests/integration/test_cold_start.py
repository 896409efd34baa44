"""The cold `ctpm run` of a TPM in memory prints its ready line once its sockets listen,
before trio and the engine are imported: a client that connects at once is answered when
they are loaded, and a SIGTERM at once is a clean stop (exit 0, socket files removed)."""
import signal
import socket
import struct
import subprocess

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
    assert not path.exists()


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
