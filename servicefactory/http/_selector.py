"""The selector thread of the builtin server: every connection no worker is running a request for.

It accepts (and drives TLS handshakes), reads and feeds each segment once to the connection's
llhttp parser, sends `100 Continue`, hands a connection to the workers only once a whole request is
in memory, writes what a worker could not send at once, applies the timeouts and the connection
limit, and closes gently (our FIN, then a brief drain, so a reset never destroys an answer). On
stop it drains: unstarted requests are answered 503, idle connections get a FIN.

Each `Connection` is owned by exactly one of this thread, the job queue or one worker, so its parser
and buffers need no lock. This module is the other half of `server.Server`: it shares the server's
job queue, lock and hand-back queue, and reads its limits.
"""
from __future__ import annotations

import logging
import os
import selectors
import socket
import time
from typing import TYPE_CHECKING, Any

from servicefactory.http._framing import CONTINUE, Reject, RequestReader, base_environ, error_response, unavailable

if TYPE_CHECKING:
    from servicefactory.http.server import Server

logger = logging.getLogger(__name__)

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_LINGER_CLOSE = 1.0  # after our FIN, how long a closing connection is drained before it is closed
_LINGER_STOPPING = 0.25  # the same while stopping, so a client that holds its socket open cannot delay a stop
# while stopping, an idle connection is closed once it has been quiet this long; until then a
# request arriving on it is answered 503, so a busy keep-alive caller gets a clear "not run"
# rather than a FIN racing its next request
QUIET = 0.25
_DRAIN_LIMIT = 4 * 1024 * 1024


class Connection:
    """One accepted connection; owned by exactly one of the selector, the job queue or a worker."""

    __slots__ = ("sock", "fd", "peer", "reader", "since", "out", "close_after", "closing_until", "drained",
                 "mask", "handshaking")

    def __init__(self, sock: socket.socket, peer: Any, reader: RequestReader) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.reader = reader
        self.since = time.monotonic()  # start of the current wait (idle, request, write), for timeouts
        self.out: bytes | memoryview = b""  # answer bytes the client has not taken yet
        self.close_after = False  # close (FIN, then drain) once `out` is written
        self.closing_until = 0.0  # set once our FIN is sent: drain input until then, then close
        self.drained = 0
        self.mask = 0  # selector events registered; 0 = not in the selector
        self.handshaking = False  # a TLS handshake the selector is still driving


class Selector:
    """The selector thread: accepts, reads and parses, writes what workers could not, closes."""

    def __init__(self, server: "Server") -> None:
        self.server = server
        self.selector = selectors.DefaultSelector()
        self.waiting: dict[int, Connection] = {}
        self.listening = False
        self.paused_until = 0.0
        self.draining = False

    def run(self) -> None:
        """The thread's body: serve until the server's stop has drained (or its deadline)."""
        server = self.server
        selector = self.selector
        selector.register(server._wake_read, _READ, None)
        self._listen(True)
        next_sweep = time.monotonic() + 1.0
        try:
            while True:
                if server._stopping.is_set() and not self.draining:
                    self._begin_drain()
                if self.draining and self._drained():
                    return
                for key, events in selector.select(0.02 if self.draining else 0.1 if not self.listening else 1.0):
                    conn = key.data
                    if conn is None:
                        self._take_returned()
                    elif conn is self:
                        if not self._accept():
                            self.paused_until = time.monotonic() + 0.1  # out of fds: back off, do not spin
                    elif events & _WRITE:
                        self._write(conn)
                    else:
                        self._read(conn)
                now = time.monotonic()
                if not self.draining:
                    self._regulate(now)
                if now >= next_sweep or self.draining:
                    next_sweep = now + 1.0
                    self._sweep(now)
        except Exception:  # pragma: no cover - a bug here must not pass silently
            logger.exception("HTTP server selector failed")
        finally:
            with server._lock:
                server._selector_done = True
                returned = list(server._returned)
                server._returned.clear()
            for conn in list(self.waiting.values()) + returned:
                close_quietly(conn.sock)
            self.waiting.clear()
            self._listen(False)
            server.socket.close()
            selector.close()

    # -- accepting --

    def _listen(self, on: bool) -> None:
        if on and not self.listening:
            self.selector.register(self.server.socket, _READ, self)
        elif not on and self.listening:
            self.selector.unregister(self.server.socket)
        self.listening = on

    def _regulate(self, now: float) -> None:
        server = self.server
        if len(self.waiting) + server._busy + len(server._jobs) >= server.max_connections:
            self._shed_idle()
        full = len(self.waiting) + server._busy + len(server._jobs) >= server.max_connections
        self._listen(not (full or now < self.paused_until))

    def _accept(self, drain: bool = False) -> bool:
        """Accept up to 64 connections; False if accepting failed (or, with `drain`, once none is left)."""
        server = self.server
        for _ in range(64):
            try:
                sock, peer = server.socket.accept()
            except (BlockingIOError, InterruptedError):
                return not drain
            except OSError as exc:  # EMFILE and friends: shed idle connections and pause accepting
                logger.warning("accept failed: %s", exc)
                self._shed_idle()
                return False
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            environ = base_environ(server.host, server.port, peer, {})
            if server.ssl_context is None:
                self._place(Connection(sock, peer, RequestReader(environ, server.max_body)))
                continue
            environ["wsgi.url_scheme"] = "https"
            try:
                sock = server.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            except OSError:
                close_quietly(sock)
                continue
            conn = Connection(sock, peer, RequestReader(environ, server.max_body))
            conn.handshaking = True
            self._handshake(conn)
        return True

    def _handshake(self, conn: Connection) -> None:
        import ssl

        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._watch(conn, _READ)
        except ssl.SSLWantWriteError:
            self._watch(conn, _WRITE)
        except OSError:  # not TLS, a bad certificate, a reset: nothing to answer in
            self._drop(conn)
        else:
            conn.handshaking = False
            conn.since = time.monotonic()
            self._place(conn)

    # -- the state machine of a connection the selector holds --

    def _watch(self, conn: Connection, mask: int) -> None:
        if conn.mask == mask:
            return
        if conn.mask:
            self.selector.modify(conn.sock, mask, conn)
        else:
            self.selector.register(conn.sock, mask, conn)
            self.waiting[conn.fd] = conn
        conn.mask = mask

    def _unwatch(self, conn: Connection) -> None:
        if conn.mask:
            self.selector.unregister(conn.sock)
            del self.waiting[conn.fd]
            conn.mask = 0

    def _drop(self, conn: Connection) -> None:
        self._unwatch(conn)
        close_quietly(conn.sock)

    def _place(self, conn: Connection) -> None:
        """Decide what a connection the selector holds waits for next."""
        if conn.out:
            self._watch(conn, _WRITE)
            return
        if conn.closing_until:
            return
        if conn.close_after:
            self._close_gently(conn)
            return
        reader = conn.reader
        if not reader.requests and reader.pending is not None:
            reader.pump()
        if reader.requests:
            item = reader.requests[0]
            if type(item) is Reject:
                self.server.count_reject(item)
                reader.requests.clear()
                self._answer_and_close(conn, error_response(item.status, str(item)))
            elif self.draining:
                self._answer_and_close(conn, unavailable())
            else:
                self._unwatch(conn)
                self.server._dispatch(conn)
            return
        if self.draining and reader.in_message:  # part of a request is here: say it will not run
            self._answer_and_close(conn, unavailable())
            return
        if reader.needs_continue():
            reader.continue_sent = True
            conn.out = CONTINUE
            self._watch(conn, _WRITE)
            return
        self._watch(conn, _READ)

    def _answer_and_close(self, conn: Connection, data: bytes) -> None:
        reader = conn.reader
        reader.requests.clear()
        reader.pending = None
        reader.done = True
        conn.out = data
        conn.close_after = True
        conn.since = time.monotonic()
        self._watch(conn, _WRITE)

    def _close_gently(self, conn: Connection) -> None:
        # closing with unread input makes the kernel send RST, which can destroy the answer before
        # the client reads it: send our FIN, then read and discard what still comes, briefly
        if not self.server._send_fin(conn):
            self._drop(conn)
            return
        limit = _LINGER_CLOSE
        if self.draining:
            limit = min(_LINGER_STOPPING, max(0.0, self.server._stop_deadline - time.monotonic()))
        conn.closing_until = time.monotonic() + limit
        self._watch(conn, _READ)

    def _read(self, conn: Connection) -> None:
        if conn.handshaking:
            self._handshake(conn)
            return
        try:
            data = conn.sock.recv(65536)
        except self.server._would_block:
            return
        except OSError:
            data = b""
        if not data:
            if conn.reader.in_message and not conn.closing_until:
                # the client half-closed in the middle of a request: say so rather than vanish
                self._answer_and_close(conn, error_response("400 Bad Request", "the request ended before it was complete"))
            else:
                self._drop(conn)
            return
        if conn.closing_until:
            conn.drained += len(data)
            if conn.drained > _DRAIN_LIMIT:
                self._drop(conn)
            return
        reader = conn.reader
        was_idle = not reader.in_message
        completed = reader.completed
        reader.feed(data)
        if reader.in_message and (was_idle or reader.completed != completed):
            conn.since = time.monotonic()  # the request's own deadline starts with its first byte
        self._place(conn)

    def _write(self, conn: Connection) -> None:
        if conn.handshaking:
            self._handshake(conn)
            return
        try:
            sent = conn.sock.send(conn.out)
        except self.server._would_block:
            return
        except OSError:
            self._drop(conn)
            return
        conn.since = time.monotonic()
        out = conn.out[sent:]
        conn.out = out if out else b""
        if not out:
            self._place(conn)

    def _take_returned(self) -> None:
        server = self.server
        try:
            while os.read(server._wake_read, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        while server._returned:
            conn = server._returned.popleft()
            try:
                self._place(conn)
            except (ValueError, OSError):  # closed under us
                self.waiting.pop(conn.fd, None)
                close_quietly(conn.sock)

    def _sweep(self, now: float) -> None:
        server = self.server
        for conn in list(self.waiting.values()):
            if conn.closing_until:
                if now > conn.closing_until:
                    self._drop(conn)
            elif conn.handshaking:
                if now - conn.since > server.header_timeout:
                    self._drop(conn)
            elif conn.out:
                if now - conn.since > server.io_timeout:
                    self._drop(conn)  # it does not read its answers
            elif conn.reader.in_message:
                if now - conn.since > server.header_timeout:
                    self._answer_and_close(conn, error_response("408 Request Timeout", "request too slow"))
            elif now - conn.since > server.idle_timeout:
                self._close_gently(conn)

    def _shed_idle(self) -> None:
        # close the oldest quarter of the connections that sent nothing, as nginx does under pressure
        idle = sorted((c for c in self.waiting.values()
                       if not c.reader.in_message and not c.out and not c.closing_until), key=lambda c: c.since)
        for conn in idle[: max(1, len(self.waiting) // 4)]:
            self._drop(conn)

    # -- draining on stop --

    def _begin_drain(self) -> None:
        self.draining = True
        # closing a listener resets the connections the kernel has completed but we have not
        # accepted, though their clients may have sent a request: take them first (their requests
        # get 503 like any other), then close, so new connections are refused from now on
        while self._accept(drain=True):
            pass
        self._listen(False)
        self.server.socket.close()
        server = self.server
        server._draining.set()
        with server._lock:
            queued = [conn for conn in server._jobs if conn is not None]
            server._jobs.clear()
            server._all_idle.notify_all()
        for conn in queued:
            self._answer_and_close(conn, unavailable())
        for conn in list(self.waiting.values()):
            self._place(conn)

    def _drained(self) -> bool:
        """Whether the drain is over. Meanwhile each idle connection gets its FIN once it has been
        quiet for QUIET: one in use now most likely sends its next request soon, which is answered
        503, rather than crossing our FIN (a request sent after a FIN can only be lost)."""
        server = self.server
        now = time.monotonic()
        if now >= server._stop_deadline:
            return True
        for conn in list(self.waiting.values()):
            if conn.closing_until or conn.out or now - conn.since < QUIET:
                continue
            if not conn.handshaking:
                self._read(conn)  # a request that just arrived is answered 503, not lost behind our FIN
            if conn.mask and not conn.closing_until and not conn.out and not conn.reader.in_message:
                # our FIN, then close at once: nothing was asked, so there is no answer for a reset
                # to destroy, and a client holding its socket cannot delay the stop
                if not conn.handshaking:
                    server._send_fin(conn)
                self._drop(conn)
        with server._lock:
            if server._busy or server._jobs or server._returned:
                return False
        return not self.waiting


def close_quietly(sock: socket.socket) -> None:
    """Close a socket, ignoring errors: it is being given up on."""
    try:
        sock.close()
    except OSError:
        pass
