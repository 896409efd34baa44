"""A relay in the host path: a real TCP proxy for the TCG simulator (mssim) protocol between a
TPM client and ctpm, recording every byte both ways and letting a test rewrite commands and
responses - what a hostile host that carries the TPM's traffic can do."""
import socket
import struct
import threading

from tests.peers import _recv_exact

SEND_COMMAND = 8


def _bind_pair():
    """Two listening sockets on consecutive ports (mssim: commands on P, platform on P+1),
    drawn below the ephemeral range as the daemon does (bind(0) gives even ports whose odd
    neighbours outgoing connections keep taking)."""
    from ctpm.transport.bind import _pair_candidates
    for candidate in _pair_candidates():
        a, b = socket.socket(), socket.socket()
        try:
            a.bind(("127.0.0.1", candidate))
            port = a.getsockname()[1]
            b.bind(("127.0.0.1", port + 1))
        except OSError:
            a.close()
            b.close()
            continue
        a.listen(8)
        b.listen(8)
        return a, b, port
    raise RuntimeError("no two consecutive free ports")


class Relay:
    """`on_command(bytes) -> bytes` and `on_response(command, response) -> bytes` may rewrite;
    `wire` is every byte seen (commands and responses, both ports)."""

    def __init__(self, upstream_port: int, on_command=None, on_response=None):
        self.upstream = upstream_port
        self.on_command = on_command
        self.on_response = on_response
        self.wire = bytearray()
        self.commands = []
        self._lock = threading.Lock()
        self._cmd, self._plat, self.port = _bind_pair()
        self._stop = False
        for listener, handler in ((self._cmd, self._serve_command), (self._plat, self._pipe)):
            threading.Thread(target=self._accept, args=(listener, handler), daemon=True).start()

    @property
    def tcti(self) -> str:
        return f"mssim:host=127.0.0.1,port={self.port}"

    def _record(self, data: bytes):
        with self._lock:
            self.wire += data

    def _accept(self, listener, handler):
        while not self._stop:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handler, args=(conn, listener is self._plat),
                             daemon=True).start()

    def _pipe(self, conn, platform):
        up = socket.create_connection(("127.0.0.1", self.upstream + 1))

        def pump(src, dst):
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    self._record(data)
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
        threading.Thread(target=pump, args=(up, conn), daemon=True).start()
        pump(conn, up)

    def _serve_command(self, conn, _platform):
        up = socket.create_connection(("127.0.0.1", self.upstream))
        try:
            while True:
                code = struct.unpack(">I", _recv_exact(conn, 4))[0]
                if code != SEND_COMMAND:
                    up.sendall(struct.pack(">I", code))     # session end and the like
                    if code == 20:
                        return
                    continue
                locality = _recv_exact(conn, 1)
                size = struct.unpack(">I", _recv_exact(conn, 4))[0]
                command = _recv_exact(conn, size)
                self._record(command)
                if self.on_command:
                    command = self.on_command(command)
                with self._lock:
                    self.commands.append(command)
                up.sendall(struct.pack(">I", SEND_COMMAND) + locality
                           + struct.pack(">I", len(command)) + command)
                rsize = struct.unpack(">I", _recv_exact(up, 4))[0]
                response = _recv_exact(up, rsize)
                ack = _recv_exact(up, 4)
                self._record(response)
                if self.on_response:
                    response = self.on_response(command, response)
                conn.sendall(struct.pack(">I", len(response)) + response + ack)
        except (ConnectionError, OSError):
            pass
        finally:
            conn.close()
            up.close()

    def close(self):
        self._stop = True
        self._cmd.close()
        self._plat.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def command_code(command: bytes) -> int:
    return struct.unpack(">I", command[6:10])[0]
