"""The resource manager (`--resource-manager`) with raw mssim connections: each connection
has its own virtual transient handles and sessions, and cannot use another's."""
import dataclasses
import struct

import pytest
import trio

from ctpm.config import load
from tests.test_host import create_primary
from tests.tpmcmd import cmd, pw_session
from tests.transport.clients import STARTUP_CLEAR, Client, rc, u32


@pytest.fixture
def ctpm_config():
    config = load(mssim=["127.0.0.1:0"], resource_manager=True)
    return dataclasses.replace(config, stall_timeout=1.0)


class Conn:
    def __init__(self, client):
        self.client = client

    @classmethod
    async def open(cls, port):
        return cls(await Client.tcp(port))

    async def __call__(self, command):
        await self.client.send(u32(8) + b"\0" + u32(len(command)) + command)
        size = struct.unpack(">I", await self.client.recv_exact(4))[0]
        response = await self.client.recv_exact(size)
        await self.client.recv_exact(4)
        return response

    async def aclose(self):
        await self.client.stream.aclose()


def read_public(handle):
    return cmd(0x173, handles=[handle])


def start_hmac_session():
    body = (u32(0x40000007) + u32(0x40000007) + struct.pack(">H", 16) + bytes(16)
            + struct.pack(">H", 0) + bytes([0x01]) + struct.pack(">HH", 0x0010, 0x000B))
    return cmd(0x176, body)


def get_handles(first):
    return cmd(0x17A, u32(1) + u32(first) + u32(64))


def listed(response):
    count = struct.unpack(">I", response[15:19])[0]
    return [struct.unpack(">I", response[19 + 4 * i:23 + 4 * i])[0] for i in range(count)]


async def test_connections_see_only_their_own_handles(ctpm_server):
    port = ctpm_server.mssim_port
    a, b = await Conn.open(port), await Conn.open(port)
    assert rc(await a(STARTUP_CLEAR)) == 0
    ra = await a(create_primary("ecc256", b""))
    rb = await b(create_primary("ecc256", b"other key"))
    ha, hb = struct.unpack(">I", ra[10:14])[0], struct.unpack(">I", rb[10:14])[0]
    assert ha == hb and ha >> 16 == 0x80FF          # virtual, and per connection
    # each connection reads its own key under the same handle
    assert (await a(read_public(ha)))[10:] != (await b(read_public(hb)))[10:]
    assert listed(await a(get_handles(0x80000000))) == [ha]
    # a handle that is not the connection's own is not loaded, as far as it can tell
    assert rc(await b(read_public(ha + 1))) == 0x910
    assert rc(await b(cmd(0x165, u32(ha + 1)))) == 0x18B
    # sessions: B cannot use, flush or authorize with A's
    rs = await a(start_hmac_session())
    assert rc(rs) == 0
    session = struct.unpack(">I", rs[10:14])[0]
    assert rc(await b(cmd(0x165, u32(session)))) == 0x18B
    auth = (u32(session) + struct.pack(">H", 16) + bytes(16) + b"\x01"
            + struct.pack(">H", 32) + bytes(32))
    assert rc(await b(cmd(0x16E, handles=[0x40000001], sessions=[auth]))) == 0x918
    saved = listed(await b(get_handles(0x03000000)))
    assert [h & 0xFFFFFF for h in saved] == [session & 0xFFFFFF]     # it exists (A's, saved)
    # nothing of A's stays loaded between its commands, and all of it goes with A
    assert rc(await a(read_public(ha))) == 0
    await a.aclose()
    with trio.fail_after(5):
        while listed(await b(get_handles(0x03000000))):
            await trio.sleep(0.01)
    # B flushes its object; the handle is gone for B
    assert rc(await b(cmd(0x165, u32(hb)))) == 0
    assert rc(await b(read_public(hb))) == 0x910
    await b.aclose()


async def test_password_sessions_and_bad_input_pass_through(ctpm_server):
    port = ctpm_server.mssim_port
    a = await Conn.open(port)
    assert rc(await a(STARTUP_CLEAR)) == 0
    rsp = await a(create_primary("ecc256", b"x"))
    h = struct.unpack(">I", rsp[10:14])[0]
    # a password-authorized command on a virtual handle: Sign (ECDSA, SHA-256)
    sign = cmd(0x15D, handles=[h], sessions=[pw_session()],
               body=struct.pack(">H", 32) + bytes(32) + struct.pack(">HH", 0x18, 0x0B)
               + struct.pack(">HIH", 0x8024, 0x40000007, 0))
    assert rc(await a(sign)) == 0
    for junk in (b"\x80\x01\x00\x00\x00\x08", cmd(0x173), cmd(0x165),
                 cmd(0x173, handles=[h])[:-2]):
        assert rc(await a(junk)) != 0
    assert rc(await a(read_public(h))) == 0
    await a.aclose()
