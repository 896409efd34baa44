"""One-command connections served without a task each (the swtpm data channel).

tpm2-tss' swtpm TCTI opens a connection, sends one command, reads the response and closes,
for every command. A trio task per connection costs more than the command itself, so
complete raw commands are answered inline (the engine is synchronous) and idle connections
wait in one private epoll set, watched by a single task. Anything else - a partial command,
the mssim-style prefix, a malformed size - goes to the ordinary per-connection handler with
the bytes received so far, so the protocol rules live in one place (`SwtpmDataChannel`).
"""
import errno
import logging
import select
import socket

import trio

from .framing import HEADER, HEADER_SIZE, looks_like_tpm_command

log = logging.getLogger("ctpm.transport.fastpath")

_RECV = 16384
_IDLE_EVENTS = select.EPOLLIN | select.EPOLLRDHUP


class FastPath:
    """Accepts on some listeners and serves their connections; see the module docstring."""

    def __init__(self, host, slow_handler, nursery, what):
        self.host = host
        self.slow_handler = slow_handler     # async (stream, initial: bytes) -> None
        self.nursery = nursery
        self.what = what
        self._epoll = select.epoll()
        self._idle = {}                      # fd -> socket.socket

    async def serve(self, listener, task_status=trio.TASK_STATUS_IGNORED):
        """Accept on `listener` (a trio socket) for ever."""
        task_status.started()
        while True:
            try:
                conn, _ = await listener.accept()
            except OSError as e:
                if e.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS):
                    raise
                log.error("%s: accept failed (%s); retrying in 0.1 s", self.what, e.strerror)
                await trio.sleep(0.1)
                continue
            sock = socket.socket(conn.family, conn.type, conn.proto, fileno=conn.detach())
            sock.setblocking(False)
            self._advance(sock, b"")

    async def watch(self):
        """Wake idle connections when they have data or were closed."""
        try:
            while True:
                await trio.lowlevel.wait_readable(self._epoll.fileno())
                for fd, _events in self._epoll.poll(0):
                    sock = self._idle.pop(fd, None)
                    self._epoll.unregister(fd)
                    if sock is not None:
                        self._advance(sock, b"")
        finally:
            for sock in self._idle.values():
                sock.close()
            self._idle.clear()
            self._epoll.close()

    def _advance(self, sock, buf):
        """Serve what `sock` has sent; park it when idle, close it at EOF, else hand it on."""
        try:
            while True:
                try:
                    data = sock.recv(_RECV)
                except (BlockingIOError, InterruptedError):
                    data = None
                if data == b"":                       # the client closed
                    if buf:
                        return self._slow(sock, buf)   # let the handler say what was wrong
                    sock.close()
                    return
                if data:
                    buf += data
                while len(buf) >= HEADER_SIZE and looks_like_tpm_command(buf[:4]):
                    size = HEADER.unpack_from(buf)[1]
                    if size < HEADER_SIZE or size > self.host.max_command_size or len(buf) < size:
                        break
                    response = self.host.tpm.execute(bytes(buf[:size]), self.host.swtpm_locality)
                    buf = buf[size:]
                    sent = sock.send(response)
                    if sent != len(response):
                        return self._slow(sock, buf, response[sent:])
                if buf:
                    return self._slow(sock, buf)        # partial or not a raw command
                if data is None:
                    self._idle[sock.fileno()] = sock
                    self._epoll.register(sock.fileno(), _IDLE_EVENTS)
                    return
        except (BlockingIOError, InterruptedError):
            return self._slow(sock, buf, response)
        except OSError as e:                          # reset by the peer, and the like
            log.debug("%s: %s", self.what, e)
            sock.close()
        except Exception:     # a bug costs this connection, never the listener
            log.exception("%s: connection failed", self.what)
            sock.close()

    def _slow(self, sock, buf, pending=b""):
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        self.nursery.start_soon(self._run_slow, stream, bytes(buf), pending)

    async def _run_slow(self, stream, buf, pending):
        from .host import serve_connection
        try:
            if pending:
                await stream.send_all(pending)
            await serve_connection(lambda s: self.slow_handler(s, initial=buf), stream, self.what)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            stream.socket.close()
