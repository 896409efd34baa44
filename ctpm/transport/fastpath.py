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
import math
import os
import select
import socket
import struct
import time

import trio

from .framing import HEADER, HEADER_SIZE, TPM_ST_NO_SESSIONS, TPM_ST_SESSIONS, check_command
from .mssim import SEND_COMMAND, frame_response

log = logging.getLogger("ctpm.transport.fastpath")

_RECV = 16384
_IDLE_EVENTS = select.EPOLLIN | select.EPOLLRDHUP
_BATCH = 8
_TAGS = (TPM_ST_NO_SESSIONS, TPM_ST_SESSIONS)    # what a raw TPM 2.0 command starts with
_MSSIM_SEND = struct.Struct(">IBI")             # mssim: u32 code | u8 locality | u32 size
_U32 = struct.Struct(">I")
_PIECES = 4         # waits for the rest of a command in one call, then a task reads it
_NOWAIT = socket.MSG_DONTWAIT
LINGER = 0.0002     # s: one wait on the set before going back to trio (see EpollSet.watch)
TURN = 0.002        # s: the longest the set keeps the loop before a checkpoint
PARK = 0.002        # s: an upstream answer waited for by select, then in the set proper
_SELECT_LIMIT = 1024  # select() takes descriptors below FD_SETSIZE only


class EpollSet:
    """One private epoll set and the one task that watches it, shared by the fast paths of
    every instance of a `ctpm host` (or owned by the one fast path of `ctpm run`): a wakeup
    serves whatever is ready across all instances in one pass, with no trio scheduling per
    connection or per instance. Besides listeners and connections, the set watches the
    descriptors of passthrough upstreams whose answer a fast path waits for (`wait_for`):
    in the select that waits on the set (below 1024, else registered in it), as
    registering each in the set and taking it out again cost two epoll_ctl calls per
    command."""

    def __init__(self):
        self.epoll = select.epoll()
        self.owners = {}                     # fd -> FastPath
        self.waits = {}                      # fd -> deadline (monotonic) of an upstream wait
        self.long_waits = {}                 # fd -> deadline of a long one (in the set)
        self.selected = set()                # upstream fds watched by the select
        self.holding = set()                 # fast paths with responses held for a flush
        self._asleep = None                  # the watcher's wait in trio, while it waits
        self._selectable = self.epoll.fileno() < _SELECT_LIMIT

    def register(self, fd, events, owner):
        self.epoll.register(fd, events)
        self.owners[fd] = owner

    def wait_for(self, fd, owner, deadline) -> bool:
        """Watch an upstream's `fd` for `owner` until `deadline`, then `owner.expire(fd)`;
        False if the set cannot (the descriptor is in it already)."""
        if fd in self.owners:
            return False
        if self._selectable and fd < _SELECT_LIMIT:
            self.selected.add(fd)
        else:
            try:
                self.epoll.register(fd, select.EPOLLIN)
            except (OSError, ValueError):
                return False
        self.owners[fd] = owner
        self.waits[fd] = deadline
        return True

    def wait_long(self, fd, owner, deadline) -> bool:
        """An upstream answer still awaited after its short wait: `fd` joins the set (the
        loop goes back to trio meanwhile) until `deadline`, then `owner.abandon(fd)`."""
        self.waits.pop(fd, None)
        if fd in self.selected or fd not in self.owners:    # not in the set yet
            self.selected.discard(fd)
            try:
                self.epoll.register(fd, select.EPOLLIN)
            except (OSError, ValueError):
                self.owners.pop(fd, None)
                return False
        self.owners[fd] = owner
        self.long_waits[fd] = deadline
        if self._asleep is not None:    # added from a task while the watcher sleeps in trio
            self._asleep.deadline = min(self._asleep.deadline, self._trio_deadline(deadline))
        return True

    @staticmethod
    def _trio_deadline(deadline):
        """A time.monotonic() deadline on trio's clock (which has an offset of its own)."""
        if deadline == math.inf:
            return math.inf
        return trio.current_time() + max(0.0, deadline - time.monotonic())

    def wait_inline(self, fd, timeout):
        """Wait up to `timeout` s for `fd` to become readable, unless the set (or an
        upstream it waits for) has something ready first: True when `fd` is readable, False
        when other work came first, None when the time ran out. A fast path waits here for
        an upstream's answer and for an answered client's close, which (on a quiet set) are
        then served without a pass through the set or an epoll_ctl."""
        if not self._selectable or fd >= _SELECT_LIMIT:
            return False
        ready = select.select((fd, self.epoll.fileno(), *self.selected), (), (), timeout)[0]
        if not ready:
            return None
        return fd in ready

    def forget(self, fd):
        """Forget `fd`, which is about to be closed (closing takes it out of the set)."""
        self.waits.pop(fd, None)
        self.long_waits.pop(fd, None)
        self.owners.pop(fd, None)
        self.selected.discard(fd)

    def unregister(self, fd):
        self.waits.pop(fd, None)
        self.long_waits.pop(fd, None)
        if self.owners.pop(fd, None) is not None:
            if fd in self.selected:
                self.selected.discard(fd)
                return
            try:
                self.epoll.unregister(fd)
            except (OSError, ValueError):
                pass

    async def watch(self):
        """Serve the set until cancelled.

        After a pass the set is waited on directly for up to `LINGER` before going back to
        trio: a client of the swtpm TCTI connects again some 50 us after its answer, and
        caught here that costs no round through trio's scheduler and epoll (about a third of
        a trivial command's time in ctpm). While an upstream answer is waited for (up to
        `PARK`) the set is waited on the same way, so other instances' connections are served
        meanwhile, in one wait (a wake-up every `LINGER` cost a signature ~35 us of CPU).
        Either way the loop's other tasks get a checkpoint at least every `TURN` (plus one
        wait, and a fast path's own waits: `wait_inline`), as long as the loop used to wait
        for an upstream answer in a 2 ms poll. Longer upstream waits (`wait_long`) are
        registered in the set and waited for in trio, up to their deadline."""
        try:
            while True:
                with trio.CancelScope() as self._asleep:
                    self._asleep.deadline = self._trio_deadline(
                        min(self.long_waits.values(), default=math.inf))
                    await trio.lowlevel.wait_readable(self.epoll.fileno())
                self._asleep = None
                turn_end = time.monotonic() + TURN
                if self.long_waits:
                    self._abandon(turn_end - TURN)
                events = self.epoll.poll(0)
                while events or self.waits:
                    if events and self._serve(events):
                        await trio.sleep(0.1)       # out of descriptors or memory: later
                        break
                    now = time.monotonic()
                    if self.waits:
                        self._expire(now)
                    if now >= turn_end:
                        await trio.lowlevel.checkpoint()
                        now = time.monotonic()
                        turn_end = now + TURN
                        if self.long_waits:         # a busy set still keeps deadlines
                            self._abandon(now)
                    # waiting for an upstream: until its answer (or deadline) in one wait
                    events = self._linger(min(self.waits.values()) - now if self.waits
                                          else LINGER)
        finally:
            for owner in set(self.owners.values()):
                owner.close()
            self.epoll.close()

    def _linger(self, timeout):
        """What becomes ready within `timeout` s: select (epoll's timeout counts whole ms)
        over the set and the descriptors it watches itself."""
        timeout = max(timeout, 0)
        fd = self.epoll.fileno()
        if not self._selectable:
            return self.epoll.poll(min(timeout, 0.001))
        if not self.selected:
            if not select.select((fd,), (), (), timeout)[0]:
                return ()
            return self.epoll.poll(0)
        ready = select.select((fd, *self.selected), (), (), timeout)[0]
        events = [(r, select.EPOLLIN) for r in ready if r != fd]
        if len(events) != len(ready):
            events += self.epoll.poll(0)
        return events

    def _expire(self, now):
        for fd, deadline in list(self.waits.items()):
            if now >= deadline:
                self.owners[fd].expire(fd)

    def _abandon(self, now):
        for fd, deadline in list(self.long_waits.items()):
            if now >= deadline:
                owner = self.owners[fd]
                self.unregister(fd)
                owner.abandon(fd)

    def _serve(self, events) -> bool:
        """One pass over what is ready; True when an accept must back off."""
        backoff = False
        owners = self.owners
        for fd, _events in events:
            owner = owners.get(fd)
            if owner is not None and not owner.ready(fd):
                backoff = True
        if self.holding:            # one flush for the pass's NV changes, then answers
            holding, self.holding = self.holding, set()
            for owner in holding:
                owner.release()
        return backoff


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
        self._families = {}                  # fd -> the listener's family, an int
        self._held = []                      # (sock, buf, response) waiting for durable NV
        self._waiting = {}                   # upstream fd -> (sock, buf from the command on)
        self._data_socks = set()             # the SET_DATAFD channel (at most one)
        # a passthrough backend can leave a command in flight for the set to wait on
        self._parks = hasattr(host.backend, "finish_inline")

    _nodelay = False    # one answer per swtpm TCTI connection: no setsockopt per command

    async def serve(self, listener, task_status=trio.TASK_STATUS_IGNORED):
        """Accept on `listener` (a trio socket) until cancelled."""
        sock = socket.socket(listener.family, listener.type, listener.proto,
                             fileno=os.dup(listener.fileno()))
        sock.setblocking(False)
        self._listeners[sock.fileno()] = sock
        self._families[sock.fileno()] = int(listener.family)
        self._set.register(sock.fileno(), select.EPOLLIN, self)
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self._listeners.pop(sock.fileno(), None)
            self._set.unregister(sock.fileno())
            sock.close()

    def adopt_data_fd(self, sock):
        """Serve the data channel SET_DATAFD handed over (QEMU's: one connection for the
        TPM's lifetime) here like any other connection (in a task of its own, each command
        cost about twice as much). `host.data_fd_active` is cleared when it closes."""
        self._data_socks.add(sock)
        self.adopt(sock)

    def adopt(self, sock, received=b"", unsent=b""):
        """Serve a connection accepted before trio was imported (early.py), with what it
        sent that was not answered and what is still to be sent to it."""
        sock.setblocking(False)
        if received or unsent:
            self._slow(sock, received, unsent)
        else:
            self._advance_in_task(sock, b"")

    def _advance_in_task(self, sock, buf, answered=False):
        """`_advance` from a task, not from the set's pass: the responses it held for their
        NV change go out here (no pass will release them)."""
        self._advance(sock, buf, answered)
        if self._held:
            self._set.holding.discard(self)
            self.release()

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
        for fd, (sock, _buf) in list(self._waiting.items()):
            self._set.unregister(fd)
            sock.close()
        self._waiting.clear()
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
        if fd in self._waiting:
            self._answer(fd)
            return True
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
            # socket.accept() converts family and type to enums on every call
            family = self._families[listener.fileno()]
            sock = socket.socket(family, socket.SOCK_STREAM, 0, listener._accept()[0])
            if self._nodelay and family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as e:
            if e.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS):
                log.error("%s: accept failed: %s", self.what, e.strerror)
                return True
            log.error("%s: accept failed (%s); retrying in 0.1 s", self.what, e.strerror)
            return False
        # left blocking (no ioctl): every call here passes MSG_DONTWAIT, and a task that
        # takes the connection over makes it non-blocking
        self._advance(sock, b"")
        return True

    def _advance(self, sock, buf, answered=False):
        """Serve what `sock` has sent; park it when idle, close it at EOF, else hand it on.

        A command left in flight upstream is waited for here while nothing else is ready
        (else the set waits for it: `_park`), and after an answer the client's close (a
        swtpm TCTI client closes some 10-50 us later) likewise: on a quiet set a connection
        is served from accept to close in this one call. At most `_BATCH` commands per call:
        a client that keeps the socket full must not keep the event loop (every other
        connection and instance) to itself; parked, it is ready again at the next poll,
        after the others had their turn."""
        served = pieces = 0
        host = self.host
        response = None
        try:
            while True:
                if answered:
                    answered = False
                    if not self._set.wait_inline(sock.fileno(), LINGER):
                        return self._wait_idle(sock)
                try:
                    data = sock.recv(_RECV, _NOWAIT)
                except (BlockingIOError, InterruptedError):
                    data = None
                if data == b"":                       # the client closed
                    if buf:
                        return self._slow(sock, buf)   # let the handler say what was wrong
                    self._drop(sock)
                    return
                if data:
                    buf += data
                while served < _BATCH:
                    found = self._command_at(buf)
                    if found is None:
                        break
                    command, locality, size = found
                    if self._parks:
                        response = host.execute_inline(command, locality, 0)
                        if response is None:
                            fd = host.backend.inline_pending()
                            if fd is None:
                                return self._slow(sock, buf)    # busy: wait in a task
                            ready = self._set.wait_inline(fd, PARK)
                            if not ready:       # other work first, or slow: the set waits
                                return self._park(sock, buf, fd, long=ready is None)
                            response = host.finish_inline()
                    else:
                        response = host.execute_inline(command, locality)
                        if response is None:
                            return self._slow(sock, buf)        # busy: wait in a task
                    buf = buf[size:]
                    served += 1
                    if not self._respond(sock, buf, self._frame(response)):
                        return
                if buf:
                    # the rest of a command is on its way (the mssim TCTI writes a frame's
                    # prefix and its command apart): waited for a little, else a task's
                    if pieces < _PIECES and served < _BATCH and self._incomplete(buf):
                        if self._nodelay:
                            _ack_now(sock)
                        if self._set.wait_inline(sock.fileno(), LINGER):
                            pieces += 1
                            continue
                    return self._slow(sock, buf)        # partial, or for the handler
                if not served or served >= _BATCH:
                    return self._wait_idle(sock)        # nothing (more) to read now
                answered = True
        except (BlockingIOError, InterruptedError):
            return self._slow(sock, buf, response)
        except OSError as e:                          # reset by the peer, and the like
            log.debug("%s: %s", self.what, e)
            self._drop(sock)
        except Exception:     # a bug costs this connection, never the listener
            log.exception("%s: connection failed", self.what)
            self._drop(sock)

    def _command_at(self, buf):
        """(command, locality, its frame's length) for the complete command at the head of
        `buf` this fast path answers; None when incomplete or anything else (the handler's:
        a prefix, a malformed size). Here raw TPM commands, at the swtpm locality."""
        if len(buf) < HEADER_SIZE:
            return None
        tag, size, _cc = HEADER.unpack_from(buf)
        if tag not in _TAGS or size < HEADER_SIZE or size > self.host.max_command_size \
                or len(buf) < size:
            return None
        return buf[:size], self.host.swtpm_locality, size

    def _incomplete(self, buf) -> bool:
        """Whether `buf` is the beginning of a command `_command_at` would answer."""
        if len(buf) < HEADER_SIZE:
            return len(buf) < 2 or HEADER.unpack_from(buf.ljust(HEADER_SIZE, b"\0"))[0] in _TAGS
        tag, size, _cc = HEADER.unpack_from(buf)
        return tag in _TAGS and len(buf) < size <= self.host.max_command_size

    @staticmethod
    def _frame(response: bytes) -> bytes:
        """A response as this protocol sends it."""
        return response

    def _wait_idle(self, sock):
        if sock.fileno() not in self._idle:
            self._idle[sock.fileno()] = sock
            self._set.register(sock.fileno(), _IDLE_EVENTS, self)

    def _respond(self, sock, buf, response) -> bool:
        """Send `response` (after the NV change it made is durable); False when the
        connection went elsewhere meanwhile (held for a flush, or handed to a task)."""
        if self.host.backend.write_pending:     # NV first, then the response
            if getattr(self.host.backend, "flush_now", None) is None:
                self._slow(sock, buf, response, flush=True)
                return False
            self._held.append((sock, buf, response))   # see `release`
            self._set.holding.add(self)
            return False
        sent = sock.send(response, _NOWAIT)
        if sent != len(response):
            self._slow(sock, buf, response[sent:])
            return False
        return True

    def _park(self, sock, buf, fd, long=False):
        """Wait in the set for the answer on `fd` to the command at the head of `buf`, which
        the backend left in flight and the fast path claimed: in the set's own select for
        the rest of `PARK` (a quick answer), or registered in the set when that time has
        passed (`long`; the loop waits in trio), until the backend's deadline."""
        if long:
            deadline = time.monotonic() + self.host.backend.inline_timeout
            parked = self._set.wait_long(fd, self, deadline)
        else:
            parked = self._set.wait_for(fd, self, time.monotonic() + PARK)
        if not parked:
            return self._slow(sock, buf, inflight=True)
        if self._idle.pop(sock.fileno(), None) is not None:
            self._set.unregister(sock.fileno())   # its next command waits for this answer
        self._waiting[fd] = (sock, buf)

    def _answer(self, fd):
        """The upstream answered the parked command on `fd`: answer its client, go on."""
        self._set.unregister(fd)
        self._reply_parked(fd, self.host.finish_inline)

    def _reply_parked(self, fd, take):
        """Send the client of the command parked on `fd` the response `take()` gives (the
        upstream's answer, or the backend's giving up on it), then serve the connection on."""
        sock, buf = self._waiting.pop(fd)
        try:
            response = self._frame(take())
            buf = buf[self._command_at(buf)[2]:]
            if self._respond(sock, buf, response):
                self._advance(sock, buf, answered=not buf)
        except (BlockingIOError, InterruptedError):
            self._slow(sock, buf, response)
        except OSError as e:                    # the client went away meanwhile
            log.debug("%s: %s", self.what, e)
            self._drop(sock)
        except Exception:     # a bug costs this connection, never the listener
            log.exception("%s: connection failed", self.what)
            self._drop(sock)

    def expire(self, fd):
        """The parked command's answer is slow (`PARK` passed): the set waits for it among
        its registered descriptors while the loop goes back to trio (a task awaiting it
        instead cost a signature ~0.2 ms more)."""
        if not self._set.wait_long(fd, self, time.monotonic()
                                   + self.host.backend.inline_timeout):
            sock, buf = self._waiting.pop(fd)
            self._slow(sock, buf, inflight=True)

    def abandon(self, fd):
        """No answer on `fd` within the backend's deadline: the backend gives up on it (its
        answer to the client says so), and the connection goes on."""
        self._reply_parked(fd, self.host.abandon_inline)

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
                response = self._frame(NV_UNAVAILABLE)      # not on disk: not acknowledged
            try:
                sent = sock.send(response, _NOWAIT)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as e:
                log.debug("%s: %s", self.what, e)
                self._drop(sock)
                continue
            if sent != len(response):
                self._slow(sock, buf, response[sent:])
            else:
                self._advance(sock, buf, answered=not buf)

    def _drop(self, sock):
        """Close a connection, out of the epoll set first if it is there."""
        if self._idle.pop(sock.fileno(), None) is not None:
            self._set.forget(sock.fileno())
        sock.close()
        self._data_closed(sock)

    def _data_closed(self, sock):
        if self._data_socks and sock in self._data_socks:
            self._data_socks.discard(sock)
            self.host.data_fd_active = False

    def _slow(self, sock, buf, pending=b"", flush=False, inflight=False):
        """Hand the connection to a task: `buf` is what it sent and nobody answered yet;
        `pending` a response to send first (after a `flush` of its NV change); `inflight`:
        the command at the head of `buf` is in flight upstream, its answer is awaited."""
        if self._idle.pop(sock.fileno(), None) is not None:
            self._set.unregister(sock.fileno())     # a task serves it from here on
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        self.nursery.start_soon(self._run_slow, stream, sock, bytes(buf), pending, flush,
                                inflight)

    async def _run_slow(self, stream, sock, buf, pending, flush, inflight=False):
        """Serve a connection the fast path handed over. When what made it slow is done (an
        answer awaited, a flush, the rest of a command read, one command run in a worker
        thread), the connection goes back to the fast path: a connection kept open (QEMU's
        data channel, an mssim client) would otherwise be served by this task, about twice
        as slowly, for good after its first slow command. What the fast path does not
        answer (mssim's other codes, a malformed command) stays with the handler."""
        from .host import serve_connection
        back = False
        try:
            if inflight:
                pending = self._frame(await self.host.wait_inline())
                buf = buf[self._command_at(buf)[2]:]
            elif not pending:
                buf = await self._rest_of_command(stream, sock, buf)
                found = self._command_at(buf)
                if found is not None:
                    pending = self._frame(await self.host.execute(found[0], found[1]))
                    buf = buf[found[2]:]
            if flush and await self.host.backend.flush() is False:
                from ..backend import NV_UNAVAILABLE
                pending = self._frame(NV_UNAVAILABLE)   # not on disk: not acknowledged
            if pending:
                await stream.send_all(pending)
                back = not buf or self._command_at(buf) is not None or self._incomplete(buf)
            else:               # nothing answered: the rest never came (closed, stalled)
                back = not buf
            if back:
                return
            await serve_connection(lambda s: self.slow_handler(s, initial=buf), stream, self.what)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            back = False
        finally:
            if back:
                self._advance_in_task(sock, buf, answered=not buf)
            else:
                stream.socket.close()
                self._data_closed(sock)

    async def _rest_of_command(self, stream, sock, buf):
        """`buf` and what follows until it holds a whole command (or not the beginning of
        one any more, or the client stalls or closes: then the handler has it)."""
        with trio.move_on_after(self.host.stall_timeout):
            while self._incomplete(buf):
                if self._nodelay:
                    _ack_now(sock)
                data = await stream.receive_some(_RECV)
                if not data:
                    break
                buf += data
        return buf


def _ack_now(sock):
    """TCP: acknowledge what came now. A client whose second write waits for the ACK of its
    first (Nagle: the mssim TCTI writes a frame's prefix, then the command) would otherwise
    wait for the delayed ACK, ~40 ms (trio's reader sets the same before each receive)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
    except OSError:
        pass                    # not TCP


class MssimFastPath(FastPath):
    """The same fast path for the mssim command port (tpm2-tss' mssim TCTI keeps its
    connection and sends SEND_COMMAND frames, one at a time): those are answered here,
    framed as the protocol frames them; anything else in the stream (the other codes, a
    raw command, a malformed frame) goes to `MssimCommandPort` with the bytes received so
    far. Not with a resource manager, whose handles are per connection."""

    _nodelay = True     # kept connections: no Nagle delay between answers (as trio sets)

    def _command_at(self, buf):
        if len(buf) < 9:
            return None
        code, locality, size = _MSSIM_SEND.unpack_from(buf)
        if code != SEND_COMMAND or size > self.host.max_command_size or len(buf) < 9 + size:
            return None
        command = buf[9:9 + size]
        if check_command(command, self.host.max_command_size) is not None:
            return None                 # the handler answers it (COMMAND_SIZE)
        return command, locality, 9 + size

    def _incomplete(self, buf) -> bool:
        if len(buf) < 9:
            return len(buf) < 4 or _U32.unpack_from(buf)[0] == SEND_COMMAND
        code, _locality, size = _MSSIM_SEND.unpack_from(buf)
        return code == SEND_COMMAND and len(buf) < 9 + size <= 9 + self.host.max_command_size

    _frame = staticmethod(frame_response)
