"""The floor of a relay hop in Python: relay.c's loop (see there) with blocking sockets.
Usage: python relay.py LISTEN_PATH UPSTREAM_PATH"""
import socket
import sys


def read_message(sock):
    buf = sock.recv(8192)
    while len(buf) < 10 or len(buf) < int.from_bytes(buf[2:6], "big"):
        more = sock.recv(8192)
        if not more:
            return b""
        buf += more
    return buf


def main(listen_path, upstream_path):
    up = socket.socket(socket.AF_UNIX)
    up.connect(upstream_path)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(listen_path)
    listener.listen(64)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        command = read_message(conn)
        if command:
            up.sendall(command)
            conn.sendall(read_message(up))
        conn.close()


if __name__ == "__main__":
    main(*sys.argv[1:3])
