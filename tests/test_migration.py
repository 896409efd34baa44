"""Moving a running TPM to another instance with the state blobs (what QEMU's live migration
does through swtpm's GET_STATEBLOB / SET_STATEBLOB / INIT): everything the source held goes
on in the destination without a TPM2_Startup - loaded keys at their handles, sessions with
their nonces and policy digests, PCRs, orderly NV data kept only in RAM, the clocks."""
import hashlib
import struct

import pytest

from ctpm.engine import migration
from ctpm.engine.tpm import Tpm
from ctpm.platform import Platform
from ctpm.state.store import DirStore
from tests.test_objects import create_primary, sensitive_create, template
from tests.tpmcmd import (STARTUP_CLEAR, b2, cmd, params, pcr_select, pw_session, rc, u16,
                          u32)

RH_OWNER, RH_NULL = 0x40000001, 0x40000007
SIGNING = 0x00040072            # fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|sign
NV_INDEX = 0x01500200
PW = [pw_session()]


def handle_of(rsp):
    return struct.unpack(">I", rsp[10:14])[0]


def source_with_state(tmp_path):
    tpm = Tpm.manufacture(Platform(DirStore(tmp_path / "a")), seed=b"migrate")
    assert rc(tpm.execute(STARTUP_CLEAR)) == 0
    x = tpm.execute
    key = handle_of(x(create_primary(RH_OWNER, template("rsa", objectAttributes=SIGNING),
                                     sensitive_create(b"pw"))))
    assert rc(x(cmd(0x182, u32(1) + u16(0x0B) + b"\x11" * 32, handles=[16],
                    sessions=PW))) == 0
    # a policy session with a digest so far
    r = x(cmd(0x176, u32(RH_NULL) + u32(RH_NULL) + b2(b"\x22" * 32) + b2(b"") + b"\x01"
              + u16(0x10) + u16(0x0B)))
    session = handle_of(r)
    assert rc(x(cmd(0x16C, u32(0x15D), handles=[session]))) == 0     # PolicyCommandCode
    # an orderly index: its data lives in RAM until Shutdown
    attrs = 0x00020002 | 0x00040000 | 0x04000000           # ownerwrite|ownerread|orderly
    public = u32(NV_INDEX) + u16(0x0B) + u32(attrs) + b2(b"") + u16(8)
    assert rc(x(cmd(0x12A, b2(b"") + b2(public), handles=[RH_OWNER], sessions=PW))) == 0
    assert rc(x(cmd(0x137, b2(b"ram-only") + u16(0), handles=[RH_OWNER, NV_INDEX],
                    sessions=PW))) == 0
    return tpm, key, session


def observe(tpm, key, session):
    """What must be the same on both sides: PCR 16, the session's digest, the index data,
    the key's public area; and a signature that works."""
    x = tpm.execute
    pcr = params(x(cmd(0x17E, pcr_select((0x0B, [16])))))
    digest = params(x(cmd(0x189, handles=[session])))
    data = params(x(cmd(0x14E, u16(8) + u16(0), handles=[RH_OWNER, NV_INDEX], sessions=PW)))
    public = params(x(cmd(0x173, handles=[key])))
    sign = x(cmd(0x15D, b2(hashlib.sha256(b"m").digest()) + u16(0x14) + u16(0x0B)
                 + u16(0x8024) + u32(RH_NULL) + u16(0), handles=[key],
                 sessions=[pw_session(b"pw")]))
    return pcr, digest, data, public, rc(sign)


def test_volatile_state_moves(tmp_path):
    source, key, session = source_with_state(tmp_path)
    clock_before = params(source.execute(cmd(0x181)))
    blobs = {kind: source.get_state_blob(kind) for kind in migration.TYPES}
    expected = observe(source, key, session)
    assert expected[2] == b"\0\x08ram-only" and expected[4] == 0

    dest = Tpm.manufacture(Platform(DirStore(tmp_path / "b")), seed=b"other")
    dest.power_off()
    for kind, blob in blobs.items():
        dest.set_state_blob(kind, blob)
    dest.power_on()
    # no Startup: the TPM goes on
    assert observe(dest, key, session) == expected
    clock_after = params(dest.execute(cmd(0x181)))
    time_before, clock_b = struct.unpack(">QQ", clock_before[:16])
    time_after, clock_a = struct.unpack(">QQ", clock_after[:16])
    assert time_after >= time_before and clock_a >= clock_b
    # the destination's store now holds the source's NV (its seeds): a restart of it keeps
    # the same primary keys
    assert (tmp_path / "b").exists()
    again = Tpm.manufacture(Platform(DirStore(tmp_path / "b")))
    assert again.state.nv["sps"] == source.state.nv["sps"]


def test_permanent_blob_alone_is_a_fresh_power_on(tmp_path):
    source, key, session = source_with_state(tmp_path)
    dest = Tpm.manufacture(Platform(DirStore(tmp_path / "b")), seed=b"other")
    dest.power_off()
    dest.set_state_blob(migration.PERMANENT, source.get_state_blob(migration.PERMANENT))
    dest.power_on()
    assert rc(dest.execute(cmd(0x17B, u16(8)))) == 0x100           # TPM_RC_INITIALIZE
    assert rc(dest.execute(STARTUP_CLEAR)) == 0
    assert dest.state.nv["eps"] == source.state.nv["eps"]


def test_refusals(tmp_path):
    source, _key, _session = source_with_state(tmp_path)
    # blobs only while stopped
    with pytest.raises(migration.MigrationError):
        source.set_state_blob(migration.VOLATILE, b"{}")
    # a loaded hash sequence cannot move
    r = source.execute(cmd(0x186, b2(b"") + u16(0x0B)))               # HashSequenceStart
    assert rc(r) == 0
    with pytest.raises(migration.MigrationError, match="sequence"):
        source.get_state_blob(migration.VOLATILE)
    source.execute(cmd(0x165, u32(handle_of(r))))
    assert source.get_state_blob(migration.VOLATILE)
    # damaged blobs are refused, the destination keeps its own state
    dest = Tpm.manufacture(Platform(DirStore(tmp_path / "b")), seed=b"other")
    own = dest.state.nv["sps"]
    dest.power_off()
    dest.set_state_blob(migration.PERMANENT, b"not json")
    with pytest.raises(Exception):
        dest.power_on()
    assert dest.state.nv["sps"] == own
    dest.set_state_blob(migration.VOLATILE, b"{\"format\": \"something else\"}")
    with pytest.raises(migration.MigrationError):
        dest.power_on()
    with pytest.raises(migration.MigrationError):
        dest.set_state_blob(7, b"")


# -- through the swtpm control channel, between two `ctpm run` processes ----------------------

def _ctrl(port, code, body=b"", reply_extra=0):
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(struct.pack(">I", code) + body)
        data = b""
        want = 4 + reply_extra
        while len(data) < want:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if code == 0x0C and len(data) >= 16:          # GET_STATEBLOB: header, then blob
                want = 16 + struct.unpack(">I", data[12:16])[0]
        return data


def _tpm_command(port, command):
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(command)
        data = s.recv(4096)
        while len(data) < 10 or len(data) < struct.unpack(">I", data[2:6])[0]:
            data += s.recv(4096)
        return data


def test_migration_over_the_control_channel(tmp_path):
    """QEMU's sequence: GET_STATEBLOB x3 on the source; STOP, SET_STATEBLOB x3, INIT on the
    destination, which then answers without a Startup and with the source's PCRs."""
    from ctpm.testing.process import run_daemon
    GET, SET, STOP, INIT = 0x0C, 0x0D, 0x0E, 0x02
    with run_daemon("--swtpm", "127.0.0.1:0", "--state", str(tmp_path / "a")) as a, \
            run_daemon("--swtpm", "127.0.0.1:0", "--state", str(tmp_path / "b")) as b:
        pa, pb = a.swtpm_port, b.swtpm_port
        assert rc(_tpm_command(pa, STARTUP_CLEAR)) == 0
        assert rc(_tpm_command(pa, cmd(0x182, u32(1) + u16(0x0B) + b"\x33" * 32,
                                       handles=[16], sessions=PW))) == 0
        pcr = params(_tpm_command(pa, cmd(0x17E, pcr_select((0x0B, [16])))))
        blobs = {}
        for kind in migration.TYPES:
            reply = _ctrl(pa + 1, GET, u32(1) + u32(kind) + u32(0))
            assert reply[:4] == b"\0\0\0\0"
            flags, total, length = struct.unpack(">III", reply[4:16])
            assert flags == 0 and total == length == len(reply) - 16
            blobs[kind] = reply[16:]
        assert _ctrl(pb + 1, STOP) == b"\0\0\0\0"
        for kind, blob in blobs.items():
            body = u32(0) + u32(kind) + u32(len(blob)) + blob
            assert _ctrl(pb + 1, SET, body) == b"\0\0\0\0"
        assert _ctrl(pb + 1, INIT, u32(1)) == b"\0\0\0\0"           # DELETE_VOLATILE
        assert params(_tpm_command(pb, cmd(0x17E, pcr_select((0x0B, [16]))))) == pcr
        assert rc(_tpm_command(pb, cmd(0x17B, u16(8)))) == 0          # no Startup needed
        # and B keeps it: its state directory now holds A's NV
    assert (tmp_path / "b").exists()
