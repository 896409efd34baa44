"""serve(): binding, readiness, port pairs, unix sockets, NV on stop."""
import dataclasses
import os
import socket
from functools import partial

import pytest
import trio

from ctpm.config import load
from ctpm.daemon import Bound, Listening, StartupError, serve


async def test_ready_reports_real_ports_and_pairs(nursery, tmp_path):
    config = load(mssim=["127.0.0.1:0", "localhost:0"],
                  swtpm=["127.0.0.1:0", f"unix:{tmp_path}/s"])
    listening = await nursery.start(serve, config)
    assert isinstance(listening, Listening) and len(listening) == 4
    for bound in listening:
        if bound.path:
            assert os.stat(bound.path).st_mode & 0o777 == 0o600
            assert os.path.exists(bound.path + ".ctrl")
            continue
        assert 0 < bound.port < 65535 and bound.second == bound.port + 1
        for port in (bound.port, bound.second):         # both channels accept
            (await trio.open_tcp_stream("127.0.0.1", port)).socket.close()
    assert str(listening).startswith(f"mssim=127.0.0.1:{listening.mssim_port},")
    assert listening.first("swtpm", unix=True) == Bound("swtpm", path=f"{tmp_path}/s")


async def test_explicit_port_pair_and_port_in_use():
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        for taken in (port, port - 1):                  # the port itself, or its + 1
            with pytest.raises(StartupError, match="Address already in use"):
                await serve(load(mssim=[f"127.0.0.1:{taken}"]))


async def test_failed_start_closes_what_was_bound(tmp_path):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        config = load(swtpm=[f"unix:{tmp_path}/a", f"127.0.0.1:{blocker.getsockname()[1]}"])
        with pytest.raises(StartupError):
            await serve(config)
    assert not os.path.exists(f"{tmp_path}/a") and not os.path.exists(f"{tmp_path}/a.ctrl")


async def test_stale_unix_socket_is_replaced_live_one_is_not(nursery, tmp_path):
    path = f"{tmp_path}/s"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()                                       # file left behind, nobody listens
    config = load(swtpm=[f"unix:{path}"])
    await nursery.start(serve, config)
    with pytest.raises(StartupError, match="a server is running there"):
        await serve(config)
    assert os.path.exists(path)                         # the running one keeps its socket


async def test_stop_saves_state_and_removes_sockets(tmp_path):
    state = tmp_path / "state"
    config = dataclasses.replace(load(swtpm=[f"unix:{tmp_path}/s"]), state_dir=str(state))
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, config)
        stream = await trio.open_unix_socket(f"{tmp_path}/s.ctrl")
        await stream.send_all(b"\x00\x00\x00\x03")       # SHUTDOWN: serve() returns
        assert await stream.receive_some(64) == b"\x00\x00\x00\x00"
    assert (state / "nv.snap").stat().st_size > 0
    assert not os.path.exists(f"{tmp_path}/s")


async def test_cancelled_serve_saves_state(tmp_path, ctpm_tpm):
    config = load(mssim=["127.0.0.1:0"])
    saved = []
    ctpm_tpm.save_state = partial(saved.append, "saved")  # observe the call itself
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve, config, tpm=ctpm_tpm))
        nursery.cancel_scope.cancel()
    assert saved == ["saved"]


def _has_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
async def test_ipv6_listener(nursery):
    listening = await nursery.start(serve, load(mssim=["[::1]:0"]))
    assert str(listening) == f"mssim=[::1]:{listening.mssim_port},{listening.mssim_port + 1}"
    stream = await trio.open_tcp_stream("::1", listening.mssim_port + 1)
    await stream.send_all(b"\x00\x00\x00\x0b")                 # NV_ON
    assert await stream.receive_some(4) == b"\x00\x00\x00\x00"
    await stream.aclose()
