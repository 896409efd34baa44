"""The first commands of a cold `ctpm run`, answered before trio is imported.

A harness starts a TPM, sends a few commands on the swtpm channels and stops it; trio takes
100-250 ms to import on a busy machine, longer than the engine and the commands together.
So, for a TPM in memory (`ctpm run` decides when: cli.py), once the sockets listen and the
engine is built, `serve_early` answers with one selector and the synchronous engine what a
harness sends first: complete raw TPM commands on the swtpm data channel (as the fast path,
fastpath.py, would), and CMD_SET_LOCALITY on the control channel (tpm2-tss's swtpm TCTI sends
it before its first command). Anything else ends it: a connection on another channel (mssim,
SVSM), any other control command (only peeked at, so nothing of it is consumed - not even
the file descriptors SET_DATAFD passes), a partial, prefixed or oversized TPM command, a
response the client does not take at once, an accept error. The daemon then imports trio
and serves as always, first taking over the open connections (`Handover`) with what they
have sent and what is still to be sent to them, so the protocol rules stay in one place.
A stop signal before that is a clean stop: nothing to save, the TPM is in memory. No trio.
"""
import logging
import selectors
import signal
import socket

from .frame import CMD_SET_LOCALITY, CTRL_SUCCESS, U32, command_size, locality_allowed

log = logging.getLogger("ctpm.transport.early")

_RECV = 16384


class Handover:
    """What the daemon takes over: open connections by group (index in `bindings.groups`)
    and channel, and the swtpm locality the control channel set."""

    def __init__(self):
        self.data = {}          # group -> [(socket, received, unsent)]
        self.control = {}       # group -> [socket] (nothing of their next command read)
        self.locality = 0


def serve_early(tpm, bindings, stops, max_command_size):
    """Serve until a stop signal (`stops` not empty: returns None) or until something needs
    the full daemon: returns the `Handover`."""
    sel = selectors.DefaultSelector()
    wake_r, wake_w = socket.socketpair()
    for s in (wake_r, wake_w):
        s.setblocking(False)
    previous = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    handover = Handover()
    conns = {}                          # socket -> (channel, group)
    done = None                         # what ended it
    answered = 0
    try:
        sel.register(wake_r, selectors.EVENT_READ, "wakeup")
        for s in bindings.sockets():
            s.setblocking(False)    # a connection reset before accept() must not block it
        for i, (kind, _unix, label, first, second) in enumerate(bindings.groups):
            swtpm = kind == "swtpm"
            for s in first:
                sel.register(s, selectors.EVENT_READ, ("data", i) if swtpm else label)
            for s in second:
                sel.register(s, selectors.EVENT_READ,
                             ("control", i) if swtpm else label + " (second channel)")
        while not stops and not done:
            for key, _events in sel.select():
                sock = key.fileobj
                if key.data == "wakeup":                # a signal: `stops` says which
                    _drain(sock)
                elif isinstance(key.data, str):
                    done = "a connection on " + key.data
                elif sock in conns:
                    channel, group = conns[sock]
                    if channel == "data":
                        keep, n, received, unsent = _serve_data(tpm, sock, max_command_size,
                                                                handover.locality)
                        answered += n
                    else:
                        keep = _serve_control(sock, handover)
                    if keep:
                        continue
                    sel.unregister(sock)
                    del conns[sock]
                    if sock.fileno() == -1:             # closed: nothing to hand over
                        continue
                    if channel == "data":
                        handover.data.setdefault(group, []).append((sock, received, unsent))
                    else:
                        handover.control.setdefault(group, []).append(sock)
                    done = f"a {channel}-channel message for the daemon"
                else:
                    try:
                        conn, _ = sock.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as e:
                        done = f"accept failed: {e}"    # the daemon retries as it does
                        continue
                    conn.setblocking(False)
                    conns[conn] = key.data
                    sel.register(conn, selectors.EVENT_READ)
        for sock, (channel, group) in conns.items():
            if channel == "data":
                handover.data.setdefault(group, []).append((sock, b"", b""))
            else:
                handover.control.setdefault(group, []).append(sock)
        log.debug("%d commands answered before trio; then %s", answered,
                  "a stop signal" if stops else done)
        if stops:
            for sockets in handover.data.values():
                for sock, _received, _unsent in sockets:
                    sock.close()
            for sockets in handover.control.values():
                for sock in sockets:
                    sock.close()
            return None
        return handover
    finally:
        signal.set_wakeup_fd(previous)
        sel.close()
        wake_r.close()
        wake_w.close()


def _drain(sock):
    try:
        while sock.recv(4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def _serve_data(tpm, sock, max_command_size, locality):
    """Answer the complete commands `sock` has sent: (keep, commands answered, received,
    unsent). keep True: serve it here on; else hand it over with what it sent that is not
    answered and what is still to be sent to it, or, `sock` closed (reset, or closed by the
    client), drop it."""
    try:
        buf = sock.recv(_RECV)
    except (BlockingIOError, InterruptedError):
        return True, 0, b"", b""
    except OSError as e:                                # reset by the peer, and the like
        log.debug("data channel before trio: %s", e)
        sock.close()
        return False, 0, b"", b""
    if not buf:                                         # the client closed
        sock.close()
        return False, 0, b"", b""
    n = 0
    while buf:
        size = command_size(buf, max_command_size)
        if size is None or len(buf) < size:
            break
        response = tpm.execute(buf[:size], locality)
        buf = buf[size:]
        n += 1
        try:
            sent = sock.send(response)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as e:
            log.debug("data channel before trio: %s", e)
            sock.close()
            return False, n, b"", b""
        if sent != len(response):
            return False, n, buf, response[sent:]
    return not buf, n, buf, b""


def _serve_control(sock, handover) -> bool:
    """Answer a CMD_SET_LOCALITY to an allowed locality (frame.py); True to keep serving
    `sock` here, False to hand it over (with its next command unread) or drop it (closed)."""
    try:
        head = sock.recv(5, socket.MSG_PEEK)
    except (BlockingIOError, InterruptedError):
        return True
    except OSError as e:
        log.debug("control channel before trio: %s", e)
        sock.close()
        return False
    if not head:
        sock.close()
        return False
    if (len(head) < 5 or U32.unpack_from(head)[0] != CMD_SET_LOCALITY
            or not locality_allowed(head[4])):
        return False
    sock.recv(5)
    handover.locality = head[4]
    try:
        if sock.send(CTRL_SUCCESS) == len(CTRL_SUCCESS):
            return True
    except (BlockingIOError, InterruptedError):
        pass
    except OSError as e:
        log.debug("control channel before trio: %s", e)
    sock.close()                        # the answer could not go out whole
    return False
