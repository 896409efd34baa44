"""Objects and saved contexts through the real tpm2-tools, against a `ctpm run` process.

Every tool is its own client connection (the swtpm TCTI even opens one per command), and the
tools hand objects and sessions from one invocation to the next only as context files
(TPM2_ContextSave / ContextLoad): a primary made by tpm2_createprimary -c is a context the
next tool loads. Expected values are computed here (Names with hashlib, sealed data as
written), never read back from ctpm.
"""
import hashlib
import struct
import subprocess

import pytest

from ctpm.testing.process import run_daemon
from tests.integration.test_tools import fails, ok, power_cycle, tool, yaml_blocks

pytestmark = [pytest.mark.tools,
              pytest.mark.skipif(subprocess.run(["which", "tpm2_createprimary"],
                                                capture_output=True).returncode != 0,
                                 reason="tpm2-tools is not installed")]

# tpm2-tools context files: magic, version, hierarchy, savedHandle, sequence, then the
# TPMS_CONTEXT blob, which ESYS wraps as reserved UINT32 || TPM2B_CONTEXT_DATA(TPM's blob)
# || ESYS metadata.
CTX_MAGIC = 0xBADCC0DE
TPM_BLOB_OFFSET = 4 + 4 + 4 + 4 + 8 + 2 + 4 + 2


@pytest.fixture(scope="module")
def daemon():
    with run_daemon() as d:
        ok("tpm2_startup", "-c", "-T", d.tcti("mssim"))
        yield d


@pytest.fixture(params=["mssim", "swtpm"])
def via(request, daemon):
    """The shared daemon's TCTI, once per transport; no transient object left behind."""
    tcti = daemon.tcti(request.param)
    yield tcti
    ok("tpm2_flushcontext", "-t", "-T", tcti)


def run(tcti, tmp_path, *args):
    return ok(args[0], "-T", tcti, *args[1:], cwd=tmp_path)


def read_context(path):
    """(hierarchy, savedHandle, sequence) of a tpm2-tools context file (a session file
    carries one after its own header: session type, authHash)."""
    raw = path.read_bytes()
    start = raw.find(struct.pack(">I", CTX_MAGIC), 1)
    raw = raw[start:] if start > 0 else raw
    magic, _version, hierarchy, handle, sequence = struct.unpack(">IIIIQ", raw[:24])
    assert magic == CTX_MAGIC
    return hierarchy, handle, sequence


def handles(tcti, kind):
    text = ok("tpm2_getcap", "-T", tcti, f"handles-{kind}")
    return [int(line.strip("- "), 16) for line in text.split()
            if line.strip("- ").startswith("0x")]


def name_of(public_file) -> bytes:
    """Name of a TPM2B_PUBLIC file: nameAlg || H(TPMT_PUBLIC) (Part 1 §16)."""
    raw = public_file.read_bytes()
    size = struct.unpack(">H", raw[:2])[0]
    area = raw[2:2 + size]
    name_alg = struct.unpack(">H", area[2:4])[0]
    assert name_alg == 0x000B
    return area[2:4] + hashlib.sha256(area).digest()


def primary(tcti, tmp_path, alg="rsa", out="primary.ctx", hierarchy="o"):
    run(tcti, tmp_path, "tpm2_createprimary", "-C", hierarchy, "-g", "sha256", "-G", alg,
        "-c", out)
    pub = tmp_path / (out + ".pub")
    run(tcti, tmp_path, "tpm2_readpublic", "-c", out, "-o", pub.name)
    return pub.read_bytes()


@pytest.mark.parametrize("alg", ["rsa", "ecc"])
def test_createprimary_and_its_context(via, tmp_path, alg):
    public = primary(via, tmp_path, alg)
    hierarchy, saved_handle, _ = read_context(tmp_path / "primary.ctx")
    assert (hierarchy, saved_handle) == (0x40000001, 0x80000000)
    area = public[2:]
    assert struct.unpack(">HHI", area[:8]) == ({"rsa": 0x01, "ecc": 0x23}[alg], 0x0B, 0x30072)
    # the context loads in another process and names the same key, every time
    for _ in range(2):
        run(via, tmp_path, "tpm2_readpublic", "-c", "primary.ctx", "-o", "again.pub",
            "-n", "name.bin")
        assert (tmp_path / "again.pub").read_bytes() == public
        assert (tmp_path / "name.bin").read_bytes() == name_of(tmp_path / "primary.ctx.pub")


@pytest.mark.parametrize("alg", ["rsa", "ecc"])
def test_createprimary_is_deterministic(via, tmp_path, alg):
    first = primary(via, tmp_path, alg, "a.ctx")
    assert primary(via, tmp_path, alg, "b.ctx") == first
    # another hierarchy, another key
    assert primary(via, tmp_path, alg, "e.ctx", hierarchy="e") != first


def test_createprimary_across_daemon_restarts(tmp_path):
    state, other = tmp_path / "state", tmp_path / "other"
    state.mkdir()
    other.mkdir()
    publics = []
    for directory in (state, state, other):
        with run_daemon("--state", str(directory)) as d:
            tcti = d.tcti("mssim")
            ok("tpm2_startup", "-c", "-T", tcti)
            publics.append(primary(tcti, tmp_path, "ecc"))
    assert publics[0] == publics[1]
    assert publics[2] != publics[0]


@pytest.mark.parametrize("alg", ["rsa", "ecc", "keyedhash"])
def test_create_load_readpublic(via, tmp_path, alg):
    primary(via, tmp_path, "ecc")
    run(via, tmp_path, "tpm2_create", "-C", "primary.ctx", "-G", alg, "-u", "key.pub",
        "-r", "key.priv")
    run(via, tmp_path, "tpm2_load", "-C", "primary.ctx", "-u", "key.pub", "-r", "key.priv",
        "-c", "key.ctx", "-n", "load-name.bin")
    assert (tmp_path / "load-name.bin").read_bytes() == name_of(tmp_path / "key.pub")
    assert read_context(tmp_path / "key.ctx")[:2] == (0x40000001, 0x80000000)
    run(via, tmp_path, "tpm2_readpublic", "-c", "key.ctx", "-o", "read.pub", "-n", "name.bin")
    assert (tmp_path / "read.pub").read_bytes() == (tmp_path / "key.pub").read_bytes()
    assert (tmp_path / "name.bin").read_bytes() == name_of(tmp_path / "key.pub")


def seal(tcti, tmp_path, data: bytes, password="secret"):
    primary(tcti, tmp_path, "rsa")
    (tmp_path / "data.bin").write_bytes(data)
    run(tcti, tmp_path, "tpm2_create", "-C", "primary.ctx", "-i", "data.bin", "-p", password,
        "-u", "seal.pub", "-r", "seal.priv")
    run(tcti, tmp_path, "tpm2_load", "-C", "primary.ctx", "-u", "seal.pub", "-r", "seal.priv",
        "-c", "seal.ctx")


@pytest.mark.parametrize("data", [b"my sealed data", bytes(range(128)), b"\0"],
                         ids=["text", "128-bytes", "zero"])
def test_seal_and_unseal(via, tmp_path, data):
    seal(via, tmp_path, data, "pass word")
    run(via, tmp_path, "tpm2_unseal", "-c", "seal.ctx", "-p", "pass word", "-o", "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == data
    result = fails("tpm2_unseal", "-T", via, "-c", "seal.ctx", "-p", "wrong", cwd=tmp_path)
    assert "Esys_Unseal(0x98E)" in result.stderr, result.stderr     # TPM_RC_AUTH_FAIL, session 1
    # the failure counted (Part 1 §19.8); the module's daemon must not end in lockout
    run(via, tmp_path, "tpm2_dictionarylockout", "-c")
    # a hex password is the same bytes
    run(via, tmp_path, "tpm2_unseal", "-c", "seal.ctx", "-p", "hex:" + b"pass word".hex(),
        "-o", "out2.bin")
    assert (tmp_path / "out2.bin").read_bytes() == data


def test_hmac_session_kept_in_a_file(via, tmp_path):
    """A session lives in the TPM as a saved context between tool invocations."""
    seal(via, tmp_path, b"through a saved session")
    run(via, tmp_path, "tpm2_startauthsession", "--hmac-session", "-S", "session.ctx")
    hierarchy, saved_handle, _ = read_context(tmp_path / "session.ctx")
    assert hierarchy == 0x40000007 and saved_handle >> 24 == 0x02
    assert saved_handle in handles(via, "saved-session")
    assert saved_handle not in handles(via, "loaded-session")
    auth = "session:session.ctx+secret"
    for use in range(3):
        if use == 1:    # encrypt the response from now on: the session's cipher is kept too
            run(via, tmp_path, "tpm2_sessionconfig", "--enable-encrypt", "session.ctx")
        run(via, tmp_path, "tpm2_unseal", "-c", "seal.ctx", "-p", auth, "-o", "out.bin")
        assert (tmp_path / "out.bin").read_bytes() == b"through a saved session"
        assert saved_handle in handles(via, "saved-session")
    result = fails("tpm2_unseal", "-T", via, "-c", "seal.ctx", "-p", "session:session.ctx+no",
                   cwd=tmp_path)
    assert "Esys_Unseal(0x98E)" in result.stderr, result.stderr
    run(via, tmp_path, "tpm2_flushcontext", "session.ctx")
    assert saved_handle not in handles(via, "saved-session")
    result = fails("tpm2_unseal", "-T", via, "-c", "seal.ctx", "-p", auth, cwd=tmp_path)
    assert "Esys_ContextLoad(0x1CB)" in result.stderr, result.stderr  # TPM_RC_HANDLE, param 1


def test_external_key_through_its_context(via, tmp_path):
    """tpm2_loadexternal leaves a context; tpm2_sign loads it in another process, and the
    signature verifies with the key that never was in the TPM before."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "priv.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    (tmp_path / "pub.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "msg.txt").write_bytes(b"signed through a context")
    run(via, tmp_path, "tpm2_loadexternal", "-C", "n", "-G", "rsa", "-r", "priv.pem",
        "-c", "private.ctx")
    run(via, tmp_path, "tpm2_loadexternal", "-C", "o", "-G", "rsa", "-u", "pub.pem",
        "-c", "public.ctx")
    assert read_context(tmp_path / "private.ctx")[:2] == (0x40000007, 0x80000000)
    assert read_context(tmp_path / "public.ctx")[:2] == (0x40000001, 0x80000000)
    names = []
    for ctx in ("private.ctx", "public.ctx"):
        run(via, tmp_path, "tpm2_readpublic", "-c", ctx, "-n", "name.bin")
        names.append((tmp_path / "name.bin").read_bytes())
    assert names[0] == names[1]
    ok("tpm2_flushcontext", "-t", "-T", via)
    run(via, tmp_path, "tpm2_sign", "-c", "private.ctx", "-g", "sha256", "-s", "rsassa",
        "-f", "plain", "-o", "sig.bin", "msg.txt")
    key.public_key().verify((tmp_path / "sig.bin").read_bytes(), b"signed through a context",
                            padding.PKCS1v15(), hashes.SHA256())


def test_flushcontext_and_transient_handles(via, tmp_path):
    ok("tpm2_flushcontext", "-t", "-T", via)
    assert handles(via, "transient") == []
    primary(via, tmp_path, "ecc")           # createprimary + readpublic's ContextLoad
    loaded = handles(via, "transient")
    assert len(loaded) == 2 and all(h >> 24 == 0x80 for h in loaded)
    run(via, tmp_path, "tpm2_flushcontext", hex(loaded[0]))
    assert handles(via, "transient") == loaded[1:]
    result = fails("tpm2_flushcontext", "-T", via, hex(loaded[0]))
    # the tool looks the handle up first: TPM_RC_REFERENCE_H0
    assert "Esys_TR_FromTPMPublic(0x910)" in result.stderr, result.stderr
    ok("tpm2_flushcontext", "-t", "-T", via)
    assert handles(via, "transient") == []
    # the context outlives every loaded copy
    run(via, tmp_path, "tpm2_readpublic", "-c", "primary.ctx")


def test_tampered_context_file(via, tmp_path):
    primary(via, tmp_path, "ecc")
    raw = bytearray((tmp_path / "primary.ctx").read_bytes())
    for offset in (TPM_BLOB_OFFSET + 2 + 5, len(raw) // 2):
        bad = bytearray(raw)
        bad[offset] ^= 0x01
        (tmp_path / "bad.ctx").write_bytes(bytes(bad))
        result = fails("tpm2_readpublic", "-T", via, "-c", "bad.ctx", cwd=tmp_path)
        assert "0x1DF" in result.stderr, result.stderr          # TPM_RC_INTEGRITY, param 1


@pytest.mark.parametrize("kind", ["mssim", "swtpm"])
def test_contexts_do_not_survive_a_tpm_reset(tmp_path, kind):
    with run_daemon() as d:
        tcti = d.tcti(kind)
        ok("tpm2_startup", "-c", "-T", tcti)
        seal(tcti, tmp_path, b"before the reset")
        run(tcti, tmp_path, "tpm2_startauthsession", "--hmac-session", "-S", "session.ctx")
        power_cycle(d, kind)
        ok("tpm2_startup", "-c", "-T", tcti)
        for ctx in ("primary.ctx", "seal.ctx", "session.ctx"):
            result = tool("tpm2_flushcontext" if ctx == "session.ctx" else "tpm2_readpublic",
                          "-T", tcti, *(["-c"] if ctx != "session.ctx" else []), ctx,
                          cwd=tmp_path)
            assert result.returncode != 0 and "0x1DF" in result.stderr, (ctx, result.stderr)
        # the keys themselves are not lost: the same primary, the same blobs load again
        before = (tmp_path / "primary.ctx.pub").read_bytes()
        assert primary(tcti, tmp_path, "rsa", "again.ctx") == before
        run(tcti, tmp_path, "tpm2_load", "-C", "again.ctx", "-u", "seal.pub", "-r", "seal.priv",
            "-c", "seal2.ctx")
        run(tcti, tmp_path, "tpm2_unseal", "-c", "seal2.ctx", "-p", "secret", "-o", "out.bin")
        assert (tmp_path / "out.bin").read_bytes() == b"before the reset"


def test_contexts_survive_a_tpm_restart(tmp_path):
    with run_daemon() as d:
        tcti = d.tcti("mssim")
        ok("tpm2_startup", "-c", "-T", tcti)
        seal(tcti, tmp_path, b"over a restart")
        run(tcti, tmp_path, "tpm2_startauthsession", "--hmac-session", "-S", "session.ctx")
        ok("tpm2_shutdown", "-T", tcti)                 # Shutdown(STATE)
        power_cycle(d, "mssim")
        ok("tpm2_startup", "-c", "-T", tcti)            # Startup(CLEAR): TPM Restart
        run(tcti, tmp_path, "tpm2_unseal", "-c", "seal.ctx", "-p", "session:session.ctx+secret",
            "-o", "out.bin")
        assert (tmp_path / "out.bin").read_bytes() == b"over a restart"
        caps = yaml_blocks(ok("tpm2_getcap", "-T", tcti, "properties-variable"))
        assert int(caps["TPM2_PT_HR_ACTIVE"], 16) == 1
