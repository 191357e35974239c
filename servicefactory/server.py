"""A small threaded HTTP/1.1 WSGI server: keep-alive, bounded workers, no worker ever waits on a client.

One selector thread holds every connection that is idle, still sending its request, or slow to read
its answer; it reads, feeds each segment once to the connection's llhttp parser (`_http`), sends
`100 Continue` itself, and hands a connection to a worker only when a whole request, body decoded
and in memory, is queued on it. The worker runs the app and writes the answer without blocking: what
the client does not take at once goes back to the selector to write. After answering, a worker
keeps the connection for a moment in case the next request follows at once (the common case for a
keep-alive client), which saves two thread hand-offs per call, but only while no other connection
waits for a worker: pipelined requests are served one per connection per turn.

`stop()` drains: it stops accepting, lets running requests finish, answers every request already
received but not started with `503` + `Connection: close` (contract C3), and closes idle
connections with a FIN, never a reset.
"""
from __future__ import annotations

import collections
import errno
import logging
import os
import select
import selectors
import socket
import threading
import time
from typing import Any, Callable

from ._http import CONTINUE, Reject, RequestReader, asks_to_close, base_environ, error_response, response, unavailable
from ._names import host_port
from .errors import AddressInUse, StartupError

logger = logging.getLogger(__name__)

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_LINGER_CLOSE = 1.0  # after our FIN, how long a closing connection is drained before it is closed
_LINGER_STOPPING = 0.25  # the same while stopping, so a client that holds its socket open cannot delay a stop
# while stopping, idle connections stay open this long, and any request arriving on them is answered
# 503: a busy keep-alive caller gets a clear "not run" rather than a FIN racing its next request
_DRAIN_GRACE = 0.1
_DRAIN_LIMIT = 4 * 1024 * 1024


class _Conn:
    """One accepted connection; owned by exactly one of the selector, the job queue or a worker."""

    __slots__ = ("sock", "fd", "peer", "reader", "since", "out", "close_after", "closing_until", "drained",
                 "mask")

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


def bind(host: str, port: int, backlog: int = 128) -> socket.socket:
    """Bind and listen on (host, port); raise AddressInUse naming the address if taken."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"cannot resolve host {host!r}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR lets a restarted service rebind past TIME_WAIT; it never allows two listeners
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise AddressInUse(f"address {host}:{port} is already in use") from None
        raise StartupError(f"cannot bind {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def format_url(host: str, port: int) -> str:
    """`http://host:port`, with an IPv6 host in brackets."""
    return f"http://{host_port(host, port)}"


class Server:
    """Serve one WSGI app on a bound socket from background threads."""

    def __init__(self, app: Callable, sock: socket.socket, *, max_workers: int = 16,
                 max_body: int = 1024 * 1024, max_connections: int = 512,
                 header_timeout: float = 10.0, idle_timeout: float = 75.0, io_timeout: float = 10.0,
                 linger: float = 0.005) -> None:
        self.app = app
        self.socket = sock
        self.max_workers = max_workers
        self.max_body = max_body
        self.max_connections = max_connections
        self.header_timeout = header_timeout  # a whole request, body included, must arrive within this
        self.idle_timeout = idle_timeout
        self.io_timeout = io_timeout  # a client that takes none of its answer for this long is dropped
        self.linger = linger
        self.host, self.port = sock.getsockname()[:2]
        self._stopping = threading.Event()
        self._stop_deadline = 0.0
        self._lock = threading.Lock()
        self._jobs: collections.deque[_Conn | None] = collections.deque()
        self._jobs_ready = threading.Condition(self._lock)
        self._all_idle = threading.Condition(self._lock)
        self._returned: collections.deque[_Conn] = collections.deque()
        self._idle_workers = 0
        self._workers: list[threading.Thread] = []
        self._busy = 0
        self._selector_done = False
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._selector_thread: threading.Thread | None = None
        self._closed = False

    @property
    def url(self) -> str:
        """The base URL clients use to reach this server."""
        return format_url(self.host, self.port)

    def start(self) -> None:
        """Start serving in background threads; returns at once, the socket already listens."""
        self._selector_thread = threading.Thread(target=_Selector(self).run, name="servicefactory-http",
                                                 daemon=True)
        self._selector_thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Drain and stop: no new connections; running requests finish (up to `timeout`); requests
        received but not started get 503 + Connection: close; idle connections get a FIN."""
        if self._stopping.is_set():
            return
        deadline = time.monotonic() + timeout
        self._stop_deadline = deadline
        self._stopping.set()
        self._wake()
        own = 1 if threading.current_thread() in self._workers else 0  # stop() called by a handler
        with self._lock:
            while (self._busy > own or self._jobs) and time.monotonic() < deadline:
                self._all_idle.wait(max(0.0, deadline - time.monotonic()))
        self._wake()  # the selector leaves once it has written what it holds (or at the deadline)
        if self._selector_thread is not None:
            self._selector_thread.join(max(0.0, deadline - time.monotonic()) + 0.5)
        with self._lock:
            self._jobs.extend([None] * len(self._workers))
            self._jobs_ready.notify_all()
        for worker in list(self._workers):
            if worker is not threading.current_thread():
                worker.join(max(0.0, deadline - time.monotonic()))
        running = [worker for worker in self._workers if worker.is_alive()]
        if running:
            # a handler overran the stop: leave our pipe open for it (closing would let its fd
            # number be reused under it) and say so
            logger.warning("%d request(s) still running after %.1f s; not waiting for them",
                           len(running), timeout)
        else:
            self._close_pipes()

    def _close_pipes(self) -> None:
        if not self._closed:
            self._closed = True
            for fd in (self._wake_read, self._wake_write):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _wake(self) -> None:
        try:
            os.write(self._wake_write, b"x")
        except (BlockingIOError, OSError):
            pass  # a full pipe already guarantees a wake-up

    # -- hand-offs between the selector and the workers --

    def _dispatch(self, conn: _Conn) -> None:
        """Queue a connection with a whole request for a worker (the selector or a worker calls this)."""
        with self._lock:
            self._jobs.append(conn)
            # more jobs waiting than idle workers to take them: grow the pool (up to its bound)
            if len(self._jobs) > self._idle_workers and len(self._workers) < self.max_workers:
                worker = threading.Thread(target=self._work, name=f"servicefactory-worker-{len(self._workers)}",
                                          daemon=True)
                self._workers.append(worker)
                worker.start()
            self._jobs_ready.notify()

    def _hand_back(self, conn: _Conn) -> None:
        """Give a connection back to the selector (to wait, to be written to, or to be closed)."""
        conn.since = time.monotonic()
        with self._lock:
            taken = not self._selector_done
            if taken:
                self._returned.append(conn)
        if taken:
            self._wake()
        else:
            _close(conn.sock)  # the selector has exited (a handler outlived the stop)

    # -- workers: run the app on a request already in memory, never wait on a client --

    def _work(self) -> None:
        poller = select.poll()
        while True:
            with self._lock:
                while not self._jobs:
                    self._idle_workers += 1
                    self._jobs_ready.wait()
                    self._idle_workers -= 1
                conn = self._jobs.popleft()
                if conn is None:
                    return
                self._busy += 1
            try:
                self._serve(conn, poller)
            except BaseException:  # a request, even one whose handler called sys.exit, never kills a worker
                logger.exception("unexpected error serving %s", conn.peer)
                _close(conn.sock)
            finally:
                with self._lock:
                    self._busy -= 1
                    if not self._busy and not self._jobs:
                        self._all_idle.notify_all()

    def _serve(self, conn: _Conn, poller: Any) -> None:
        sock = conn.sock
        reader = conn.reader
        requests = reader.requests
        first = True
        while True:
            if not requests:
                if reader.pending is not None:
                    reader.pump()
                if not requests:
                    break
            if not first and self._jobs:
                self._dispatch(conn)  # others are waiting: one request per connection per turn
                return
            first = False
            item = requests.popleft()
            if type(item) is Reject:
                conn.out = error_response(item.status, str(item))
                conn.close_after = True
                self._hand_back(conn)
                return
            if self._stopping.is_set():  # received, not started: contract C3
                self._refuse_unstarted(conn)
                return
            environ, keep_alive = item
            status, headers, body = self._run_app(environ)
            if keep_alive and (asks_to_close(headers) or (self._stopping.is_set() and not requests)):
                keep_alive = False
            data = response(status, headers, body, keep_alive, head_only=environ["REQUEST_METHOD"] == "HEAD")
            try:
                sent = sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                _close(sock)
                return
            if not keep_alive:
                requests.clear()
                reader.done = True
                reader.pending = None
                conn.close_after = True
            if sent < len(data):
                conn.out = memoryview(data)[sent:]  # the selector writes the rest, as the client reads
                self._hand_back(conn)
                return
            if conn.close_after:
                self._hand_back(conn)
                return
            if requests or reader.pending is not None:
                continue
            if self.linger and not self._jobs and not self._stopping.is_set() and not reader.needs_continue():
                poller.register(conn.fd, select.POLLIN)
                try:
                    ready = poller.poll(self.linger * 1000)
                finally:
                    poller.unregister(conn.fd)
                if ready:
                    try:
                        data = sock.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        data = None
                    except OSError:
                        data = b""
                    if data == b"":
                        if reader.in_message:  # half-closed mid-request: the selector says so
                            conn.out = error_response("400 Bad Request", "the request ended before it was complete")
                            conn.close_after = True
                            self._hand_back(conn)
                        else:
                            _close(sock)
                        return
                    if data:
                        was_idle = not reader.in_message
                        reader.feed(data)
                        if reader.in_message and was_idle:
                            conn.since = time.monotonic()
                        first = True  # this request arrived on its own: serve it without a turn
                        continue
            break
        self._hand_back(conn)

    def _refuse_unstarted(self, conn: _Conn) -> None:
        reader = conn.reader
        reader.requests.clear()
        reader.pending = None
        reader.done = True
        conn.out = unavailable()
        conn.close_after = True
        self._hand_back(conn)

    def _run_app(self, environ: dict) -> tuple[str, list, bytes]:
        started: list = []

        def start_response(status: str, headers: list, exc_info: Any = None) -> Callable:
            started[:] = [status, headers]
            return _no_write

        try:
            result = self.app(environ, start_response)
        except Exception:
            logger.exception("WSGI app failed")
            return _internal_error()
        try:
            body = b"".join(result)
            status, headers = started
            return status, headers, body
        except Exception:
            logger.exception("WSGI app failed")
            return _internal_error()
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    logger.exception("WSGI response close() failed")


def _internal_error() -> tuple[str, list, bytes]:
    # the app itself failed (not a handler: api.App answers those): do not trust this connection
    return ("500 Internal Server Error", [("Content-Type", "application/json"), ("Connection", "close")],
            b'{"error": {"type": "HTTPError", "message": "internal error"}}\n')


def _no_write(data: bytes) -> None:
    raise NotImplementedError("write() is not supported; return the body instead")


class _Selector:
    """The selector thread: accepts, reads and parses, writes what workers could not, closes."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.selector = selectors.DefaultSelector()
        self.waiting: dict[int, _Conn] = {}
        self.listening = False
        self.paused_until = 0.0
        self.draining = False
        self.drain_started = 0.0

    def run(self) -> None:
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
                _close(conn.sock)
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

    def _accept(self) -> bool:
        server = self.server
        for _ in range(64):
            try:
                sock, peer = server.socket.accept()
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:  # EMFILE and friends: shed idle connections and pause accepting
                logger.warning("accept failed: %s", exc)
                self._shed_idle()
                return False
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            reader = RequestReader(base_environ(server.host, server.port, peer, {}), server.max_body)
            self._place(_Conn(sock, peer, reader))
        return True

    # -- the state machine of a connection the selector holds --

    def _watch(self, conn: _Conn, mask: int) -> None:
        if conn.mask == mask:
            return
        if conn.mask:
            self.selector.modify(conn.sock, mask, conn)
        else:
            self.selector.register(conn.sock, mask, conn)
            self.waiting[conn.fd] = conn
        conn.mask = mask

    def _unwatch(self, conn: _Conn) -> None:
        if conn.mask:
            self.selector.unregister(conn.sock)
            del self.waiting[conn.fd]
            conn.mask = 0

    def _drop(self, conn: _Conn) -> None:
        self._unwatch(conn)
        _close(conn.sock)

    def _place(self, conn: _Conn) -> None:
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

    def _answer_and_close(self, conn: _Conn, data: bytes) -> None:
        reader = conn.reader
        reader.requests.clear()
        reader.pending = None
        reader.done = True
        conn.out = data
        conn.close_after = True
        conn.since = time.monotonic()
        self._watch(conn, _WRITE)

    def _close_gently(self, conn: _Conn) -> None:
        # closing with unread input makes the kernel send RST, which can destroy the answer before
        # the client reads it: send our FIN, then read and discard what still comes, briefly
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._drop(conn)
            return
        limit = _LINGER_CLOSE
        if self.draining:
            limit = min(_LINGER_STOPPING, max(0.0, self.server._stop_deadline - time.monotonic()))
        conn.closing_until = time.monotonic() + limit
        self._watch(conn, _READ)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
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

    def _write(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
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
                _close(conn.sock)

    def _sweep(self, now: float) -> None:
        server = self.server
        for conn in list(self.waiting.values()):
            if conn.closing_until:
                if now > conn.closing_until:
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
        self.drain_started = time.monotonic()
        self._listen(False)
        self.server.socket.close()  # refuse new connections at once, not after a backlog wait
        server = self.server
        with server._lock:
            queued = [conn for conn in server._jobs if conn is not None]
            server._jobs.clear()
            server._all_idle.notify_all()
        for conn in queued:
            self._answer_and_close(conn, unavailable())
        for conn in list(self.waiting.values()):
            self._place(conn)

    def _drained(self) -> bool:
        """Whether the drain is over; once nothing runs, idle connections get their FIN."""
        server = self.server
        now = time.monotonic()
        if now >= server._stop_deadline:
            return True
        with server._lock:
            working = server._busy or server._jobs or server._returned
        if working:
            return False
        idle = [conn for conn in self.waiting.values() if not conn.closing_until and not conn.out]
        if idle and now < self.drain_started + _DRAIN_GRACE:
            return False
        for conn in idle:
            self._read(conn)  # a request that just arrived is answered 503, not lost behind our FIN
            if conn.mask and not conn.closing_until and not conn.out:
                # idle: our FIN, then close at once (nothing was asked, so there is no answer for
                # a reset to destroy, and a client holding its socket cannot delay the stop)
                try:
                    conn.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                self._drop(conn)
        return not self.waiting


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
