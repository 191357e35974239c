"""A small threaded HTTP/1.1 WSGI server: keep-alive, bounded workers, limits enforced while reading.

Idle and half-sent connections wait in one selector thread, never in a worker, so hundreds of
slow or idle clients cannot starve the workers: a worker takes a connection only once a whole
request (head and Content-Length body) has arrived. It answers, then keeps the connection for a
moment in case the next request follows at once (the common case for a keep-alive client), which
saves two thread hand-offs per call. Message parsing lives in `_http`.
"""
from __future__ import annotations

import collections
import errno
import io
import logging
import os
import selectors
import socket
import threading
import time
from typing import Any, Callable

from . import _http
from ._http import Reject
from ._names import host_port
from .errors import AddressInUse, StartupError

logger = logging.getLogger(__name__)


class _Conn:
    __slots__ = ("sock", "buffer", "since", "peer", "info")

    def __init__(self, sock: socket.socket, peer: Any, buffer: bytes = b"") -> None:
        self.sock = sock
        self.peer = peer
        self.buffer = buffer
        self.since = time.monotonic()
        self.info: dict = {}  # contract C1: environ["servicefactory.connection"], one per connection


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
        self.header_timeout = header_timeout  # a whole request must arrive within this
        self.idle_timeout = idle_timeout
        self.io_timeout = io_timeout  # a chunked or 100-continue body, read by a worker, in all
        self.linger = linger
        self.host, self.port = sock.getsockname()[:2]
        self._stopping = threading.Event()
        self._returned: collections.deque[_Conn] = collections.deque()
        self._jobs: collections.deque[_Conn | None] = collections.deque()
        self._jobs_ready = threading.Condition(threading.Lock())
        self._idle_workers = 0
        self._workers: list[threading.Thread] = []
        self._busy = 0
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
        self._selector_thread = threading.Thread(target=self._select_loop, name="servicefactory-http",
                                                 daemon=True)
        self._selector_thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let running requests finish (up to `timeout`), close every connection."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._wake()
        deadline = time.monotonic() + timeout
        if self._selector_thread is not None:
            self._selector_thread.join(max(0.0, deadline - time.monotonic()))
        with self._jobs_ready:
            self._jobs.extend([None] * len(self._workers))
            self._jobs_ready.notify_all()
        for worker in list(self._workers):
            if worker is not threading.current_thread():
                worker.join(max(0.0, deadline - time.monotonic()))
        self._close_returned()
        running = [worker for worker in self._workers if worker.is_alive()]
        if running:
            # a handler overran the stop: leave our pipe open for it (closing would let its fd
            # number be reused under it) and say so
            logger.warning("%d request(s) still running after %.1f s; not waiting for them",
                           len(running), timeout)
        else:
            self._close_pipes()

    def _close_returned(self) -> None:
        while True:
            try:
                conn = self._returned.popleft()
            except IndexError:
                return
            _close(conn.sock)

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

    # -- the selector thread: accepts, and holds idle or half-sent connections --

    def _select_loop(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.socket, selectors.EVENT_READ, "listen")
        selector.register(self._wake_read, selectors.EVENT_READ, "wake")
        waiting: dict[socket.socket, _Conn] = {}
        listening = True
        paused_until = 0.0
        next_sweep = time.monotonic() + 1.0
        try:
            while not self._stopping.is_set():
                for key, _ in selector.select(0.1 if not listening else 1.0):
                    if key.data == "listen":
                        if not self._accept(selector, waiting):
                            paused_until = time.monotonic() + 0.1  # out of fds: back off, do not spin
                    elif key.data == "wake":
                        self._drain_wake(selector, waiting)
                    else:
                        self._read(selector, waiting, key.data)
                now = time.monotonic()
                if len(waiting) + self._busy >= self.max_connections:
                    self._shed_idle(selector, waiting)
                full = len(waiting) + self._busy >= self.max_connections or now < paused_until
                if listening and full:
                    selector.unregister(self.socket)
                    listening = False
                elif not listening and not full:
                    selector.register(self.socket, selectors.EVENT_READ, "listen")
                    listening = True
                if now >= next_sweep:
                    next_sweep = now + 1.0
                    self._sweep(selector, waiting, now)
        except Exception:  # pragma: no cover - a bug here must not pass silently
            logger.exception("HTTP server selector failed")
        finally:
            selector.close()
            for conn in waiting.values():
                _close(conn.sock)
            self._close_returned()
            self.socket.close()

    def _accept(self, selector: selectors.BaseSelector, waiting: dict) -> bool:
        for _ in range(64):
            try:
                sock, peer = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:  # EMFILE and friends: shed idle connections and pause accepting
                logger.warning("accept failed: %s", exc)
                self._shed_idle(selector, waiting)
                return False
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            conn = _Conn(sock, peer)
            waiting[sock] = conn
            selector.register(sock, selectors.EVENT_READ, conn)
        return True

    def _drain_wake(self, selector: selectors.BaseSelector, waiting: dict) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        while self._returned:
            conn = self._returned.popleft()
            if self._ready(conn.buffer):
                self._dispatch(conn)  # the rest of a request arrived while the worker handed it back
                continue
            conn.since = time.monotonic()
            waiting[conn.sock] = conn
            try:
                selector.register(conn.sock, selectors.EVENT_READ, conn)
            except (ValueError, OSError):
                waiting.pop(conn.sock, None)
                _close(conn.sock)

    def _read(self, selector: selectors.BaseSelector, waiting: dict, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._forget(selector, waiting, conn)
            _close(conn.sock)
            return
        if not conn.buffer:
            conn.since = time.monotonic()  # the request's own deadline starts with its first byte
        conn.buffer += data
        if self._ready(conn.buffer):
            self._forget(selector, waiting, conn)
            self._dispatch(conn)

    def _ready(self, buffer: bytes) -> bool:
        """Whether a worker should take the connection: a whole request is here, or an error to answer."""
        if not buffer:
            return False
        try:
            if _http.head_end(buffer) < 0:
                return False
        except Reject:
            return True
        return _http.complete_request_length(buffer, self.max_body) != -1

    def _forget(self, selector: selectors.BaseSelector, waiting: dict, conn: _Conn) -> None:
        waiting.pop(conn.sock, None)
        try:
            selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass

    def _sweep(self, selector: selectors.BaseSelector, waiting: dict, now: float) -> None:
        for conn in list(waiting.values()):
            limit = self.header_timeout if conn.buffer else self.idle_timeout
            if now - conn.since > limit:
                self._forget(selector, waiting, conn)
                _close(conn.sock)

    def _shed_idle(self, selector: selectors.BaseSelector, waiting: dict) -> None:
        # close the oldest quarter of the connections that sent nothing, as nginx does under pressure
        idle = sorted((c for c in waiting.values() if not c.buffer), key=lambda c: c.since)
        for conn in idle[: max(1, len(waiting) // 4)]:
            self._forget(selector, waiting, conn)
            _close(conn.sock)

    # -- workers --

    def _dispatch(self, conn: _Conn) -> None:
        with self._jobs_ready:
            self._jobs.append(conn)
            # more jobs waiting than idle workers to take them: grow the pool (up to its bound)
            if len(self._jobs) > self._idle_workers and len(self._workers) < self.max_workers:
                worker = threading.Thread(target=self._work, name=f"servicefactory-worker-{len(self._workers)}",
                                          daemon=True)
                self._workers.append(worker)
                worker.start()
            self._jobs_ready.notify()

    def _work(self) -> None:
        while True:
            with self._jobs_ready:
                while not self._jobs:
                    self._idle_workers += 1
                    self._jobs_ready.wait()
                    self._idle_workers -= 1
                conn = self._jobs.popleft()
                if conn is None:
                    return
                self._busy += 1
            try:
                self._serve_connection(conn)
            except BaseException:  # a request, even one whose handler called sys.exit, never kills a worker
                logger.exception("unexpected error serving %s", conn.peer)
                _close(conn.sock)
            finally:
                with self._jobs_ready:
                    self._busy -= 1

    def _serve_connection(self, conn: _Conn) -> None:
        sock = conn.sock
        sock.setblocking(True)
        buffer = conn.buffer
        while True:
            try:
                keep_alive, buffer = self._serve_one(sock, buffer, conn)
            except Reject as reject:
                _send_error(sock, reject.status, str(reject))
                _close(sock)
                return
            except (OSError, ValueError):
                _close(sock)
                return
            if not keep_alive or self._stopping.is_set():
                _close(sock)
                return
            if not self._ready(buffer):
                sock.settimeout(self.linger)
                try:
                    data = sock.recv(65536)
                except (socket.timeout, BlockingIOError):
                    data = None
                except OSError:
                    data = b""
                if data == b"":
                    _close(sock)
                    return
                buffer += data or b""
            if self._ready(buffer):
                continue  # the next request is already here (pipelined, or it followed at once)
            sock.setblocking(False)
            conn.buffer = buffer
            conn.since = time.monotonic()
            self._returned.append(conn)
            self._wake()
            if self._stopping.is_set():
                self._close_returned()  # the selector may have drained the queue before we added to it
            return

    def _serve_one(self, sock: socket.socket, buffer: bytes, conn: _Conn) -> tuple[bool, bytes]:
        end = _http.head_end(buffer)
        if end < 0:
            raise Reject("400 Bad Request", "incomplete request head")
        head, buffer = buffer[:end], buffer[end + 4:]
        environ, version = _http.parse_head(head, self.host, self.port)
        keep_alive = _http.wants_keep_alive(environ, version)
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = conn.peer[0], str(conn.peer[1])
        environ["servicefactory.connection"] = conn.info
        length = _http.body_length(environ, self.max_body)
        deadline = time.monotonic() + self.io_timeout

        def recv() -> bytes:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OSError("request body too slow")
            sock.settimeout(remaining)
            data = sock.recv(65536)
            if not data:
                raise ValueError("client closed mid-request")
            return data

        if (length is None or length > len(buffer)) and environ.get("HTTP_EXPECT", "").lower() == "100-continue":
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if length is None:
            body, buffer = _http.read_chunked(recv, buffer, self.max_body)
            environ["CONTENT_LENGTH"] = str(len(body))
        else:
            while len(buffer) < length:
                buffer += recv()
            body, buffer = buffer[:length], buffer[length:]
        environ["wsgi.input"] = io.BytesIO(body)
        sock.settimeout(self.io_timeout)
        keep_alive = self._respond(sock, environ, keep_alive)
        return keep_alive, buffer

    def _respond(self, sock: socket.socket, environ: dict, keep_alive: bool) -> bool:
        started: list = []

        def start_response(status: str, headers: list, exc_info: Any = None) -> Callable:
            started[:] = [status, headers]
            return lambda data: None

        try:
            result = self.app(environ, start_response)
        except Exception:
            logger.exception("WSGI app failed")
            raise Reject("500 Internal Server Error", "internal error") from None
        try:
            body = b"".join(result)
            status, headers = started
            # contract C1: an app answering `Connection: close` (after a 401) ends the connection
            if any(name.lower() == "connection" and "close" in value.lower() for name, value in headers):
                keep_alive = False
            sock.sendall(_http.response(status, headers, body, keep_alive,
                                        head_only=environ["REQUEST_METHOD"] == "HEAD"))
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    logger.exception("WSGI response close() failed")
        return keep_alive


def _send_error(sock: socket.socket, status: str, message: str) -> None:
    try:
        sock.settimeout(1.0)
        sock.sendall(_http.error_response(status, message))
        # closing with unread input makes the kernel send RST, which can destroy the answer before
        # the client reads it: shut our side, then drain what the client still sends, briefly
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 1.0
        drained = 0
        while drained < 4 * 1024 * 1024 and time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            drained += len(data)
    except OSError:
        pass


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
