"""One-command connections served without a task each (the swtpm data channel).

tpm2-tss' swtpm TCTI opens a connection, sends one command, reads the response and closes,
for every command. A trio task per connection costs more than the command itself, so
complete raw commands are answered inline (the engine is synchronous), and the listeners
and idle connections wait in one private epoll set, watched by a single task. Anything else
- a partial command, the mssim-style prefix, a malformed size - goes to the ordinary
per-connection handler with the bytes received so far, so the protocol rules live in one
place (`SwtpmDataChannel`).
"""
import errno
import logging
import os
import select
import socket

import trio

from .framing import HEADER, HEADER_SIZE, looks_like_tpm_command

log = logging.getLogger("ctpm.transport.fastpath")

_RECV = 16384
_IDLE_EVENTS = select.EPOLLIN | select.EPOLLRDHUP


class FastPath:
    """Accepts on some listeners and serves their connections; see the module docstring.

    The listeners and the idle connections share one epoll set watched by one task, so a
    connection costs no trio scheduling of its own: a wakeup accepts, answers, or closes
    whatever is ready, in one pass."""

    def __init__(self, host, slow_handler, nursery, what):
        self.host = host
        self.slow_handler = slow_handler     # async (stream, initial: bytes) -> None
        self.nursery = nursery
        self.what = what
        self._epoll = select.epoll()
        self._idle = {}                      # fd -> socket.socket
        self._listeners = {}                 # fd -> socket.socket (a dup of the listener)

    async def serve(self, listener, task_status=trio.TASK_STATUS_IGNORED):
        """Accept on `listener` (a trio socket) until cancelled."""
        sock = socket.socket(listener.family, listener.type, listener.proto,
                             fileno=os.dup(listener.fileno()))
        sock.setblocking(False)
        self._listeners[sock.fileno()] = sock
        self._epoll.register(sock.fileno(), select.EPOLLIN)
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self._listeners.pop(sock.fileno(), None)
            try:
                self._epoll.unregister(sock.fileno())
            except (OSError, ValueError):
                pass                         # the watcher closed the epoll set first
            sock.close()

    async def watch(self):
        """Accept new connections, wake idle ones when they have data or were closed."""
        try:
            while True:
                await trio.lowlevel.wait_readable(self._epoll.fileno())
                for fd, _events in self._epoll.poll(0):
                    listener = self._listeners.get(fd)
                    if listener is not None:
                        if not self._accept(listener):
                            await trio.sleep(0.1)   # out of descriptors or memory: later
                        continue
                    sock = self._idle.pop(fd, None)
                    self._epoll.unregister(fd)
                    if sock is not None:
                        self._advance(sock, b"")
        finally:
            for sock in self._idle.values():
                sock.close()
            self._idle.clear()
            self._epoll.close()

    def _accept(self, listener) -> bool:
        """Accept and serve one pending connection (the epoll set is level-triggered: more
        come at the next poll); False after a transient failure."""
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as e:
            if e.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS):
                log.error("%s: accept failed: %s", self.what, e.strerror)
                return True
            log.error("%s: accept failed (%s); retrying in 0.1 s", self.what, e.strerror)
            return False
        sock.setblocking(False)
        self._advance(sock, b"")
        return True

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
                    response = self.host.execute_inline(bytes(buf[:size]),
                                                        self.host.swtpm_locality)
                    if response is None:                # the backend is busy: wait in a task
                        return self._slow(sock, buf)
                    buf = buf[size:]
                    if self.host.backend.write_pending:  # NV first, then the response
                        return self._slow(sock, buf, response, flush=True)
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

    def _slow(self, sock, buf, pending=b"", flush=False):
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        self.nursery.start_soon(self._run_slow, stream, bytes(buf), pending, flush)

    async def _run_slow(self, stream, buf, pending, flush):
        from .host import serve_connection
        try:
            if flush and await self.host.backend.flush() is False:
                from ..backend import NV_UNAVAILABLE
                pending = NV_UNAVAILABLE        # not on disk: not acknowledged
            if pending:
                await stream.send_all(pending)
            await serve_connection(lambda s: self.slow_handler(s, initial=buf), stream, self.what)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            stream.socket.close()
