"""Round trips per second of TPM2_GetRandom(8): ctpm (mssim over TCP, swtpm protocol over a
unix socket) and swtpm (unix socket), the same blocking client, one run.

    python bench/roundtrip.py [SECONDS]
"""
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctpm.testing.process import run_daemon  # noqa: E402

STARTUP = bytes.fromhex("80010000000c000001440000")
GET_RANDOM = bytes.fromhex("80010000000c0000017b0008")


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return bytes(buf)


def raw_exchange(sock, command):
    sock.sendall(command)
    header = recv_exact(sock, 10)
    return header + recv_exact(sock, struct.unpack(">I", header[2:6])[0] - 10)


def mssim_exchange(sock, command):
    sock.sendall(struct.pack(">IBI", 8, 0, len(command)) + command)
    size = struct.unpack(">I", recv_exact(sock, 4))[0]
    response = recv_exact(sock, size + 4)[:-4]
    return response


def rate(sock, exchange, seconds):
    exchange(sock, STARTUP)
    assert exchange(sock, GET_RANDOM)[6:10] == bytes(4)
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        for _ in range(100):
            exchange(sock, GET_RANDOM)
        n += 100
    return n / elapsed


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    tmp = tempfile.mkdtemp(prefix="ctpm-bench-")
    results = {}
    with run_daemon("--mssim", "127.0.0.1:0", "--swtpm", f"unix:{tmp}/ctpm.sock") as d:
        with socket.create_connection(("127.0.0.1", d.mssim_port)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            results["ctpm mssim (tcp)"] = rate(s, mssim_exchange, seconds)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(f"{tmp}/ctpm.sock")
            results["ctpm swtpm protocol (unix)"] = rate(s, raw_exchange, seconds)
    if shutil.which("swtpm"):
        path = f"{tmp}/swtpm.sock"
        proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={tmp}",
             "--server", f"type=unixio,path={path}", "--ctrl",
             f"type=unixio,path={path}.ctrl", "--flags", "not-need-init"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while not os.path.exists(path):
                time.sleep(0.01)
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
                results["swtpm 0.7 (unix)"] = rate(s, raw_exchange, seconds)
        finally:
            proc.terminate()
            proc.wait()
    shutil.rmtree(tmp, ignore_errors=True)
    for name, r in results.items():
        print(f"{name:28s} {r:8.0f} GetRandom round trips/s  ({1e6 / r:.0f} us each)")


if __name__ == "__main__":
    main()
