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
_BATCH = 8


class EpollSet:
    """One private epoll set and the one task that watches it, shared by the fast paths of
    every instance of a `ctpm host` (or owned by the one fast path of `ctpm run`): a wakeup
    serves whatever is ready across all instances in one pass, with no trio scheduling per
    connection or per instance."""

    def __init__(self):
        self.epoll = select.epoll()
        self.owners = {}                     # fd -> FastPath

    def register(self, fd, events, owner):
        self.epoll.register(fd, events)
        self.owners[fd] = owner

    def unregister(self, fd):
        if self.owners.pop(fd, None) is not None:
            try:
                self.epoll.unregister(fd)
            except (OSError, ValueError):
                pass

    async def watch(self):
        try:
            while True:
                await trio.lowlevel.wait_readable(self.epoll.fileno())
                backoff = False
                served = set()
                for fd, _events in self.epoll.poll(0):
                    owner = self.owners.get(fd)
                    if owner is not None:
                        served.add(owner)
                        if not owner.ready(fd):
                            backoff = True
                for owner in served:        # one flush for the pass's NV changes, then answers
                    owner.release()
                if backoff:
                    await trio.sleep(0.1)       # out of descriptors or memory: later
        finally:
            for owner in set(self.owners.values()):
                owner.close()
            self.epoll.close()


class FastPath:
    """Accepts on some listeners and serves their connections; see the module docstring.

    The listeners and the idle connections wait in an `EpollSet` (the host's shared one, or
    a private one that `watch` then watches), so a connection costs no trio scheduling of its
    own: a wakeup accepts, answers, or closes whatever is ready, in one pass."""

    def __init__(self, host, slow_handler, nursery, what, epoll_set=None):
        self.host = host
        self.slow_handler = slow_handler     # async (stream, initial: bytes) -> None
        self.nursery = nursery
        self.what = what
        self._own = epoll_set is None
        self._set = EpollSet() if self._own else epoll_set
        self._idle = {}                      # fd -> socket.socket
        self._listeners = {}                 # fd -> socket.socket (a dup of the listener)
        self._held = []                      # (sock, buf, response) waiting for durable NV

    async def serve(self, listener, task_status=trio.TASK_STATUS_IGNORED):
        """Accept on `listener` (a trio socket) until cancelled."""
        sock = socket.socket(listener.family, listener.type, listener.proto,
                             fileno=os.dup(listener.fileno()))
        sock.setblocking(False)
        self._listeners[sock.fileno()] = sock
        self._set.register(sock.fileno(), select.EPOLLIN, self)
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self._listeners.pop(sock.fileno(), None)
            self._set.unregister(sock.fileno())
            sock.close()

    def adopt(self, sock, received=b"", unsent=b""):
        """Serve a connection accepted before trio was imported (early.py), with what it
        sent that was not answered and what is still to be sent to it."""
        sock.setblocking(False)
        if received or unsent:
            self._slow(sock, received, unsent)
        else:
            self._advance(sock, b"")

    async def watch(self):
        """Watch the private epoll set; with a shared one, wait, and on the way out (the
        instance stops) close this fast path's idle connections."""
        try:
            if self._own:
                await self._set.watch()
            else:
                await trio.sleep_forever()
        finally:
            self.close()

    def close(self):
        for fd, sock in list(self._idle.items()):
            self._set.unregister(fd)
            sock.close()
        self._idle.clear()
        for sock, _buf, _response in self._held:
            if sock.fileno() != -1:
                sock.close()
        self._held.clear()

    def ready(self, fd) -> bool:
        """`fd` (a listener or an idle connection of this fast path) is readable; False
        after a transient accept failure."""
        listener = self._listeners.get(fd)
        if listener is not None:
            return self._accept(listener)
        sock = self._idle.get(fd)           # stays registered while it is served inline
        if sock is None:
            self._set.unregister(fd)
        else:
            self._advance(sock, b"")
        return True

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
        """Serve what `sock` has sent; park it when idle, close it at EOF, else hand it on.

        At most `_BATCH` commands per call: a client that keeps the socket full must not keep
        the event loop (every other connection and instance) to itself; parked, it is ready
        again at the next poll, after the others had their turn."""
        served = 0
        try:
            while True:
                try:
                    data = sock.recv(_RECV)
                except (BlockingIOError, InterruptedError):
                    data = None
                if data == b"":                       # the client closed
                    if buf:
                        return self._slow(sock, buf)   # let the handler say what was wrong
                    self._drop(sock)
                    return
                if data:
                    buf += data
                while (len(buf) >= HEADER_SIZE and looks_like_tpm_command(buf[:4])
                       and served < _BATCH):
                    size = HEADER.unpack_from(buf)[1]
                    if size < HEADER_SIZE or size > self.host.max_command_size or len(buf) < size:
                        break
                    response = self.host.execute_inline(bytes(buf[:size]),
                                                        self.host.swtpm_locality)
                    if response is None:                # the backend is busy: wait in a task
                        return self._slow(sock, buf)
                    buf = buf[size:]
                    served += 1
                    if self.host.backend.write_pending:  # NV first, then the response
                        if getattr(self.host.backend, "flush_now", None) is None:
                            return self._slow(sock, buf, response, flush=True)
                        self._held.append((sock, buf, response))   # see `release`
                        return
                    sent = sock.send(response)
                    if sent != len(response):
                        return self._slow(sock, buf, response[sent:])
                if buf:
                    return self._slow(sock, buf)        # partial or not a raw command
                if data is None or served >= _BATCH:
                    if sock.fileno() not in self._idle:
                        self._idle[sock.fileno()] = sock
                        self._set.register(sock.fileno(), _IDLE_EVENTS, self)
                    return
        except (BlockingIOError, InterruptedError):
            return self._slow(sock, buf, response)
        except OSError as e:                          # reset by the peer, and the like
            log.debug("%s: %s", self.what, e)
            self._drop(sock)
        except Exception:     # a bug costs this connection, never the listener
            log.exception("%s: connection failed", self.what)
            self._drop(sock)

    def release(self):
        """After an epoll pass: the responses held for their NV changes go out once one
        inline flush made those durable (group commit across the pass's connections); if a
        flush is not quick now, each connection waits for it in a task, as before."""
        while self._held:       # answering may serve a connection's next command
            held, self._held = self._held, []
            self._release(held, self.host.backend.flush_now())

    def _release(self, held, done):
        for sock, buf, response in held:
            if done is None:
                self._slow(sock, buf, response, flush=True)
                continue
            if done is False:
                from ..backend import NV_UNAVAILABLE
                response = NV_UNAVAILABLE           # not on disk: not acknowledged
            try:
                sent = sock.send(response)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as e:
                log.debug("%s: %s", self.what, e)
                self._drop(sock)
                continue
            if sent != len(response):
                self._slow(sock, buf, response[sent:])
            else:
                self._advance(sock, buf)

    def _drop(self, sock):
        """Close a connection, out of the epoll set first if it is there."""
        if self._idle.pop(sock.fileno(), None) is not None:
            self._set.unregister(sock.fileno())
        sock.close()

    def _slow(self, sock, buf, pending=b"", flush=False):
        if self._idle.pop(sock.fileno(), None) is not None:
            self._set.unregister(sock.fileno())     # a task serves it from here on
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
