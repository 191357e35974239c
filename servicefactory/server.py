"""A small threaded HTTP/1.1 WSGI server: keep-alive, bounded workers, limits enforced while reading.

Idle and half-sent connections wait in one selector thread, never in a worker, so hundreds of
slow or idle clients cannot starve the workers. A worker takes a connection only once a whole
request head has arrived, answers it, and keeps the connection for a moment in case the next
request follows at once (the common case for a keep-alive client), which saves two thread
hand-offs per call.
"""
from __future__ import annotations

import collections
import io
import json
import logging
import os
import selectors
import socket
import sys
import threading
import time
from typing import Any, Callable
from urllib.parse import unquote_to_bytes

from .errors import AddressInUse, StartupError

logger = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
MAX_HEADERS = 100


class _Conn:
    __slots__ = ("sock", "buffer", "since", "peer")

    def __init__(self, sock: socket.socket, peer: Any, buffer: bytes = b"") -> None:
        self.sock = sock
        self.peer = peer
        self.buffer = buffer
        self.since = time.monotonic()


class _Reject(Exception):
    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


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
        if exc.errno in (98, 48):  # EADDRINUSE on Linux, macOS
            raise AddressInUse(f"address {host}:{port} is already in use") from None
        raise StartupError(f"cannot bind {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


class Server:
    """Serve one WSGI app on a bound socket from background threads."""

    def __init__(self, app: Callable, sock: socket.socket, *, max_workers: int = 16,
                 max_body: int = 1024 * 1024, max_connections: int = 512,
                 header_timeout: float = 10.0, idle_timeout: float = 75.0, io_timeout: float = 30.0,
                 linger: float = 0.005) -> None:
        self.app = app
        self.socket = sock
        self.max_workers = max_workers
        self.max_body = max_body
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.io_timeout = io_timeout
        self.linger = linger
        host, port = sock.getsockname()[:2]
        self.host, self.port = host, port
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
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

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
        next_sweep = time.monotonic() + 1.0
        try:
            while not self._stopping.is_set():
                for key, _ in selector.select(1.0):
                    if key.data == "listen":
                        self._accept(selector, waiting)
                    elif key.data == "wake":
                        self._drain_wake(selector, waiting)
                    else:
                        self._read_head(selector, waiting, key.data)
                open_count = len(waiting) + self._busy
                if listening and open_count >= self.max_connections:
                    self._shed_idle(selector, waiting)
                now = time.monotonic()
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

    def _accept(self, selector: selectors.BaseSelector, waiting: dict) -> None:
        for _ in range(64):
            try:
                sock, peer = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: shed idle connections and go on
                logger.warning("accept failed: %s", exc)
                self._shed_idle(selector, waiting)
                return
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            conn = _Conn(sock, peer)
            waiting[sock] = conn
            selector.register(sock, selectors.EVENT_READ, conn)

    def _drain_wake(self, selector: selectors.BaseSelector, waiting: dict) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        while self._returned:
            conn = self._returned.popleft()
            conn.since = time.monotonic()
            waiting[conn.sock] = conn
            try:
                selector.register(conn.sock, selectors.EVENT_READ, conn)
            except (ValueError, OSError):
                waiting.pop(conn.sock, None)
                _close(conn.sock)

    def _read_head(self, selector: selectors.BaseSelector, waiting: dict, conn: _Conn) -> None:
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
        conn.buffer += data
        if b"\r\n\r\n" in conn.buffer or len(conn.buffer) > MAX_HEAD:
            self._forget(selector, waiting, conn)
            self._dispatch(conn)

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
        idle = sorted((c for c in waiting.values()), key=lambda c: (bool(c.buffer) is False, c.since))
        # close the oldest quarter of the connections that sent nothing, as nginx does under pressure
        victims = [c for c in idle if not c.buffer][: max(1, len(waiting) // 4)]
        for conn in victims:
            self._forget(selector, waiting, conn)
            _close(conn.sock)

    # -- workers --

    def _dispatch(self, conn: _Conn) -> None:
        with self._jobs_ready:
            self._jobs.append(conn)
            if self._idle_workers == 0 and len(self._workers) < self.max_workers:
                worker = threading.Thread(target=self._work, name=f"servicefactory-worker-{len(self._workers)}",
                                          daemon=True)
                self._workers.append(worker)
                worker.start()
            else:
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
            except Exception:  # pragma: no cover - keep the worker alive whatever a request did
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
            sock.settimeout(self.io_timeout)
            try:
                keep_alive, buffer = self._serve_one(sock, buffer)
            except _Reject as reject:
                _send_error(sock, reject.status, str(reject))
                _close(sock)
                return
            except (OSError, ValueError):
                _close(sock)
                return
            if not keep_alive or self._stopping.is_set():
                _close(sock)
                return
            if b"\r\n\r\n" in buffer:
                continue  # a pipelined request is already here
            sock.settimeout(self.linger)
            try:
                data = sock.recv(65536)
            except (socket.timeout, BlockingIOError):
                data = None
            except OSError:
                _close(sock)
                return
            if data == b"":
                _close(sock)
                return
            if data:
                buffer += data
                if b"\r\n\r\n" in buffer:
                    continue
            sock.setblocking(False)
            conn.buffer = buffer
            self._returned.append(conn)
            self._wake()
            if self._stopping.is_set():
                self._close_returned()  # the selector may have drained the queue before we added to it
            return

    def _serve_one(self, sock: socket.socket, buffer: bytes) -> tuple[bool, bytes]:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            raise _Reject("431 Request Header Fields Too Large", "request head too large")
        if end > MAX_HEAD:
            raise _Reject("431 Request Header Fields Too Large", "request head too large")
        head, buffer = buffer[:end], buffer[end + 4:]
        environ, version = self._environ(head)
        keep_alive = _wants_keep_alive(environ, version)
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        length_text = environ.get("CONTENT_LENGTH", "")
        if chunked and length_text:
            raise _Reject("400 Bad Request", "both Content-Length and Transfer-Encoding")
        if environ.get("HTTP_TRANSFER_ENCODING") and not chunked:
            raise _Reject("501 Not Implemented", "unsupported Transfer-Encoding")
        if length_text:
            if not (length_text.isascii() and length_text.isdigit()):
                raise _Reject("400 Bad Request", "invalid Content-Length")
            length = int(length_text)
            if length > self.max_body:
                raise _Reject("413 Content Too Large", f"body over the {self.max_body} byte limit")
        else:
            length = 0
        if (chunked or length) and environ.get("HTTP_EXPECT", "").lower() == "100-continue":
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if chunked:
            body, buffer = self._read_chunked(sock, buffer)
            environ["CONTENT_LENGTH"] = str(len(body))
        else:
            while len(buffer) < length:
                data = sock.recv(min(65536, length - len(buffer)))
                if not data:
                    raise ValueError("client closed mid-body")
                buffer += data
            body, buffer = buffer[:length], buffer[length:]
        environ["wsgi.input"] = io.BytesIO(body)
        self._respond(sock, environ, keep_alive)
        return keep_alive, buffer

    def _read_chunked(self, sock: socket.socket, buffer: bytes) -> tuple[bytes, bytes]:
        body = bytearray()
        while True:
            while b"\r\n" not in buffer:
                if len(buffer) > 1024:
                    raise _Reject("400 Bad Request", "invalid chunk header")
                buffer += _recv(sock)
            line, buffer = buffer.split(b"\r\n", 1)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _Reject("400 Bad Request", "invalid chunk size") from None
            if size < 0:
                raise _Reject("400 Bad Request", "invalid chunk size")
            if len(body) + size > self.max_body:
                raise _Reject("413 Content Too Large", f"body over the {self.max_body} byte limit")
            if size == 0:
                while b"\r\n" not in buffer:  # trailers end with an empty line
                    buffer += _recv(sock)
                while not buffer.startswith(b"\r\n"):
                    _, buffer = buffer.split(b"\r\n", 1)
                    while b"\r\n" not in buffer:
                        buffer += _recv(sock)
                return bytes(body), buffer[2:]
            while len(buffer) < size + 2:
                buffer += _recv(sock)
            body += buffer[:size]
            buffer = buffer[size + 2:]

    def _environ(self, head: bytes) -> tuple[dict, str]:
        lines = head.split(b"\r\n")
        try:
            method, target, version = lines[0].decode("latin-1").split(" ")
        except ValueError:
            raise _Reject("400 Bad Request", "malformed request line") from None
        if not version.startswith("HTTP/1.") or not method.isalpha():
            raise _Reject("400 Bad Request", "malformed request line")
        if len(lines) > MAX_HEADERS + 1:
            raise _Reject("431 Request Header Fields Too Large", "too many header fields")
        if target.startswith(("http://", "https://")):
            target = "/" + target.split("://", 1)[1].partition("/")[2]
        path, _, query = target.partition("?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query,
            "SERVER_NAME": self.host,
            "SERVER_PORT": str(self.port),
            "SERVER_PROTOCOL": version,
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for raw in lines[1:]:
            name, colon, value = raw.partition(b":")
            if not colon or not name or name != name.strip() or raw[:1] in (b" ", b"\t"):
                raise _Reject("400 Bad Request", "malformed header line")
            key = name.decode("latin-1").upper().replace("-", "_")
            text = value.strip().decode("latin-1")
            if key == "CONTENT_TYPE" or key == "CONTENT_LENGTH":
                if key in environ and environ[key] != text:
                    raise _Reject("400 Bad Request", f"conflicting {name.decode('latin-1')} headers")
                environ[key] = text
            else:
                key = "HTTP_" + key
                environ[key] = environ[key] + "," + text if key in environ else text
        return environ, version

    def _respond(self, sock: socket.socket, environ: dict, keep_alive: bool) -> None:
        started: list = []

        def start_response(status: str, headers: list, exc_info: Any = None) -> Callable:
            started[:] = [status, headers]
            return lambda data: None

        try:
            result = self.app(environ, start_response)
        except Exception:
            logger.exception("WSGI app failed")
            raise _Reject("500 Internal Server Error", "internal error") from None
        try:
            body = b"".join(result)
            status, headers = started
            lines = [f"HTTP/1.1 {status}"]
            lines.extend(f"{name}: {value}" for name, value in headers
                         if name.lower() not in ("content-length", "connection"))
            lines.append(f"Content-Length: {len(body)}")
            lines.append(f"Date: {_http_date()}")
            if not keep_alive:
                lines.append("Connection: close")
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
            sock.sendall(head + body if environ["REQUEST_METHOD"] != "HEAD" else head)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    logger.exception("WSGI response close() failed")


def _wants_keep_alive(environ: dict, version: str) -> bool:
    connection = environ.get("HTTP_CONNECTION", "").lower()
    if version == "HTTP/1.0":
        return "keep-alive" in connection
    return "close" not in connection


def _recv(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise ValueError("client closed mid-request")
    return data


def _send_error(sock: socket.socket, status: str, message: str) -> None:
    body = ('{"error": {"type": "HTTPError", "message": %s}}\n' % _json_string(message)).encode()
    head = (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode("latin-1")
    try:
        sock.settimeout(1.0)
        sock.sendall(head + body)
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


def _json_string(text: str) -> str:
    return json.dumps(text)


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


_date_cache = [0, ""]


def _http_date() -> str:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[:] = [now, time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now))]
    return _date_cache[1]
