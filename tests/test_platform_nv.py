"""The platform's own access to the NV indices it created (`Tpm.platform_nv_write` /
`platform_nv_read`), and a configured TPM_PT_NV_BUFFER_MAX (`EngineConfig.nv_buffer_max`):
the engine driven with raw commands, what a client sees checked with its own commands."""
import struct

import pytest

from ctpm.engine.config import EngineConfig
from ctpm.errors import TpmError
from tests.test_nv import (NO_DA, NV_AUTHORIZATION, NV_RANGE, NV_UNINITIALIZED, OWNER,
                           OWNERREAD, OWNERWRITE, PLATFORM, PLATFORMCREATE, POLICYWRITE,
                           PPWRITE, WRITTEN, COUNTER, define, read, read_public, write)
from tests.test_objects import started
from tests.tpmcmd import cmd, params, rc, u32

PLAT_RW = PLATFORMCREATE | PPWRITE | OWNERREAD | NO_DA
HANDLE, ATTRIBUTES, SIZE_P1, VALUE_P1 = 0x08B, 0x082, 0x1D5, 0x1C4


def code(fn, *args):
    with pytest.raises(TpmError) as e:
        fn(*args)
    return e.value.code


def data_of(rsp):
    body = params(rsp)
    return body[2:2 + struct.unpack(">H", body[:2])[0]]


def attributes(tpm, index):
    return struct.unpack(">I", params(tpm.execute(read_public(index)))[8:12])[0]


def test_platform_writes_what_clients_read():
    tpm = started()
    index = 0x01400010
    # a POLICYWRITE index whose policy no one can satisfy: clients cannot write it at all
    assert rc(tpm.execute(define(index, PLATFORMCREATE | POLICYWRITE | OWNERREAD | NO_DA, 2000,
                                 hierarchy=PLATFORM, policy=bytes(range(32))))) == 0
    assert rc(tpm.execute(write(index, b"guest", by=OWNER))) == NV_AUTHORIZATION
    assert code(tpm.platform_nv_read, index) == NV_UNINITIALIZED
    blob = bytes(range(256)) * 7 + b"tail"                   # 1796 bytes: one call
    tpm.platform_nv_write(index, blob)
    assert attributes(tpm, index) & WRITTEN
    got = b"".join(data_of(tpm.execute(read(index, min(1024, 2000 - off), off, by=OWNER)))
                   for off in range(0, 2000, 1024))
    assert got[:len(blob)] == blob and got[len(blob):] == b"\xff" * (2000 - len(blob))
    tpm.platform_nv_write(index, b"XY", 10)
    assert tpm.platform_nv_read(index)[8:14] == blob[8:10] + b"XY" + blob[12:14]
    assert data_of(tpm.execute(read(index, 4, 10, by=OWNER))) == b"XY" + blob[12:14]


def test_platform_access_is_refused_where_the_index_forbids_it():
    tpm = started()
    owners, counter, plain = 0x01000020, 0x01400021, 0x01400022
    assert rc(tpm.execute(define(owners, OWNERWRITE | OWNERREAD | NO_DA, 16))) == 0
    assert rc(tpm.execute(define(counter, PLAT_RW | COUNTER, 8, hierarchy=PLATFORM))) == 0
    assert rc(tpm.execute(define(plain, PLAT_RW, 16, hierarchy=PLATFORM))) == 0
    assert code(tpm.platform_nv_write, 0x01400099, b"x") == HANDLE          # no such index
    assert code(tpm.platform_nv_write, owners, b"x") == NV_AUTHORIZATION    # not the platform's
    assert code(tpm.platform_nv_read, owners) == NV_AUTHORIZATION
    assert code(tpm.platform_nv_write, counter, b"x" * 8) == ATTRIBUTES     # not ordinary
    assert code(tpm.platform_nv_write, plain, b"x" * 17) == NV_RANGE
    assert code(tpm.platform_nv_write, plain, b"x", 16) == NV_RANGE
    tpm.platform_nv_write(plain, b"x", 15)
    tpm.power_off()
    assert code(tpm.platform_nv_write, plain, b"x") == 0x101                # TPM_RC_FAILURE


def test_platform_write_takes_no_client_resources():
    """The platform's write is no command: it needs no session slot (all may be the
    client's), leaves the client's handles as they were and is not audited."""
    tpm = started(max_sessions=3)
    index = 0x01400030
    assert rc(tpm.execute(define(index, PLAT_RW, 64, hierarchy=PLATFORM))) == 0
    start = cmd(0x176, u32(0x40000007) + u32(0x40000007) + struct.pack(">H", 16) + bytes(16)
                + struct.pack(">H", 0) + bytes([0]) + struct.pack(">HH", 0x10, 0x0B))
    for _ in range(3):
        assert rc(tpm.execute(start)) == 0
    assert rc(tpm.execute(start)) == 0x903                                  # SESSION_MEMORY
    handles = cmd(0x17A, u32(1) + u32(0x02000000) + u32(64))
    before = params(tpm.execute(handles))
    tpm.platform_nv_write(index, b"p" * 64)
    assert params(tpm.execute(handles)) == before
    assert data_of(tpm.execute(read(index, 64, by=OWNER))) == b"p" * 64


def nv_buffer_max(tpm):
    body = params(tpm.execute(cmd(0x17A, u32(6) + u32(0x12C) + u32(1))))
    assert struct.unpack(">II", body[9:17])[0] == 0x12C
    return struct.unpack(">II", body[9:17])[1]


@pytest.mark.parametrize("limit", [1024, 2048])
def test_nv_buffer_max_is_what_nv_commands_allow(limit):
    tpm = started(nv_buffer_max=limit)
    assert nv_buffer_max(tpm) == limit
    index = 0x01000040
    assert rc(tpm.execute(define(index, OWNERWRITE | OWNERREAD | NO_DA, 2048))) == 0
    assert rc(tpm.execute(write(index, b"a" * limit, by=OWNER))) == 0
    if limit < 2048:        # one byte more: the data parameter is too large, as libtpms
        assert rc(tpm.execute(write(index, b"a" * (limit + 1), by=OWNER))) == SIZE_P1
        assert rc(tpm.execute(read(index, limit + 1, by=OWNER))) == VALUE_P1
    assert data_of(tpm.execute(read(index, limit, by=OWNER))) == b"a" * limit


def test_nv_buffer_max_is_bounded():
    for bad in (1023, 2049):
        with pytest.raises(ValueError):
            EngineConfig(nv_buffer_max=bad)
