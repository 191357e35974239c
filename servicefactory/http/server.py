"""A small threaded HTTP/1.1 WSGI server: keep-alive, bounded workers, no worker ever waits on a client.

One selector thread holds every connection that is idle, still sending its request, or slow to read
its answer; it reads, feeds each segment once to the connection's llhttp parser (`_http`), sends
`100 Continue` itself, and hands a connection to a worker only when a whole request, body decoded
and in memory, is queued on it. The worker runs the app and writes the answer without blocking: what
the client does not take at once goes back to the selector to write. After answering, a worker
keeps the connection for a moment in case the next request follows at once (the common case for a
keep-alive client), which saves two thread hand-offs per call, but only while no other connection
waits for a worker: a request queued with every worker busy, or a stop, ends a linger at once, and
pipelined requests are served one per connection per turn.

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
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from servicefactory.http._framing import Reject, answer, error_response, unavailable
from servicefactory._names import host_port
from servicefactory.http._selector import Connection, Selector, close_quietly
from servicefactory.errors import AddressInUse, StartupError

if TYPE_CHECKING:
    import ssl

logger = logging.getLogger(__name__)


def bind(host: str, port: int, backlog: int = 128, *, reuse_port: bool = False) -> socket.socket:
    """Bind and listen on (host, port); raise AddressInUse naming the address if taken. With
    `reuse_port`, other sockets of this user bound with it may share the port (the instances of one
    service): the kernel spreads new connections over them."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"cannot resolve host {host!r}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR lets a restarted service rebind past TIME_WAIT; it never allows two listeners
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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
                 linger: float = 0.005, ssl_context: "ssl.SSLContext | None" = None) -> None:
        self.app = app
        self.ssl_context = ssl_context  # server side; the handshake runs in the selector, never a worker
        self._would_block: tuple[type[BaseException], ...] = (BlockingIOError, InterruptedError)
        if ssl_context is not None:
            import ssl

            # a TLS socket that needs more bytes (or room) says so with these, both OSErrors
            self._would_block += (ssl.SSLWantReadError, ssl.SSLWantWriteError)
        self.socket = sock
        self.max_workers = max_workers
        self.max_body = max_body
        self.max_connections = max_connections
        self.header_timeout = header_timeout  # a whole request, body included, must arrive within this
        self.idle_timeout = idle_timeout
        self.io_timeout = io_timeout  # a client that takes none of its answer for this long is dropped
        self.linger = linger
        self.host, self.port = sock.getsockname()[:2]
        self._stopping = threading.Event()  # stop() was called
        # set by the selector once the listener is closed: from then on workers close connections
        # and refuse unstarted requests (earlier, a client told to close would reconnect into the
        # listener's backlog just before it closes, and be reset)
        self._draining = threading.Event()
        self._stop_deadline = 0.0
        self._lock = threading.Lock()
        self._jobs: collections.deque[Connection | None] = collections.deque()
        self._jobs_ready = threading.Condition(self._lock)
        self._all_idle = threading.Condition(self._lock)
        self._returned: collections.deque[Connection] = collections.deque()
        self._idle_workers = 0
        self._workers: list[threading.Thread] = []
        self._busy = 0
        self._selector_done = False
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        # readable while a job waits with every worker busy, or on stop: a lingering worker polls
        # it next to its connection, so a linger never delays another client's request nor a stop
        self._break_read, self._break_write = os.pipe()
        os.set_blocking(self._break_read, False)
        os.set_blocking(self._break_write, False)
        self._break_pending = False
        self._selector_thread: threading.Thread | None = None
        self._closed = False

    @property
    def url(self) -> str:
        """The base URL clients use to reach this server."""
        return format_url(self.host, self.port)

    def start(self) -> None:
        """Start serving in background threads; returns at once, the socket already listens."""
        self._selector_thread = threading.Thread(target=Selector(self).run, name="servicefactory-http",
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
        with self._lock:
            self._break_lingers()
        own = 1 if threading.current_thread() in self._workers else 0  # stop() called by a handler
        with self._lock:
            while (self._busy > own or self._jobs) and time.monotonic() < deadline:
                self._all_idle.wait(max(0.0, deadline - time.monotonic()))
        self._wake()  # the selector leaves once it has written what it holds (or at the deadline)
        if self._selector_thread is not None:
            self._selector_thread.join(max(0.0, deadline - time.monotonic()) + 0.5)
        else:
            self.socket.close()  # never started: the selector would have closed it
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
            for fd in (self._wake_read, self._wake_write, self._break_read, self._break_write):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _wake(self) -> None:
        try:
            os.write(self._wake_write, b"x")
        except (BlockingIOError, OSError):
            pass  # a full pipe already guarantees a wake-up

    def _send_fin(self, conn: Connection) -> bool:
        """Shut our sending side (after a TLS close_notify, best effort); False if the socket is gone."""
        sock = conn.sock
        if self.ssl_context is not None:
            try:
                sock.unwrap()  # sends close_notify; the peer's own may never come, which is fine
            except (OSError, ValueError):
                pass
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return False
        return True

    # -- hand-offs between the selector and the workers --

    def _dispatch(self, conn: Connection) -> None:
        """Queue a connection with a whole request for a worker (the selector or a worker calls this)."""
        with self._lock:
            self._jobs.append(conn)
            # more jobs waiting than idle workers to take them: grow the pool (up to its bound)
            if len(self._jobs) > self._idle_workers:
                if len(self._workers) < self.max_workers:
                    worker = threading.Thread(target=self._work, name=f"servicefactory-worker-{len(self._workers)}",
                                              daemon=True)
                    self._workers.append(worker)
                    worker.start()
                else:
                    self._break_lingers()  # every worker is busy: those lingering let go at once
            self._jobs_ready.notify()

    def _break_lingers(self) -> None:
        # called with the lock held; the byte stays until the job queue is empty again
        if not self._break_pending and not self._closed:
            self._break_pending = True
            try:
                os.write(self._break_write, b"x")
            except OSError:
                pass

    def _hand_back(self, conn: Connection) -> None:
        """Give a connection back to the selector (to wait, to be written to, or to be closed)."""
        conn.since = time.monotonic()
        with self._lock:
            taken = not self._selector_done
            if taken:
                self._returned.append(conn)
        if taken:
            self._wake()
        else:
            close_quietly(conn.sock)  # the selector has exited (a handler outlived the stop)

    # -- workers: run the app on a request already in memory, never wait on a client --

    def _work(self) -> None:
        poller = select.poll()
        poller.register(self._break_read, select.POLLIN)
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
                if self._break_pending and not self._jobs and not self._stopping.is_set():
                    self._break_pending = False  # the queue is served: lingering may resume
                    try:
                        os.read(self._break_read, 64)
                    except OSError:
                        pass
            try:
                self._serve(conn, poller)
            except BaseException:  # a request, even one whose handler called sys.exit, never kills a worker
                logger.exception("unexpected error serving %s", conn.peer)
                close_quietly(conn.sock)
            finally:
                with self._lock:
                    self._busy -= 1
                    if not self._busy and not self._jobs:
                        self._all_idle.notify_all()

    def _serve(self, conn: Connection, poller: Any) -> None:
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
                self.count_reject(item)
                conn.out = error_response(item.status, str(item))
                conn.close_after = True
                self._hand_back(conn)
                return
            if self._draining.is_set():  # received, not started: contract C3
                self._refuse_unstarted(conn)
                return
            environ, keep_alive = item
            status, headers, body = self._run_app(environ)
            if keep_alive and not requests and self._draining.is_set():
                keep_alive = False
            head_only = environ["REQUEST_METHOD"] == "HEAD"
            try:
                data, keep_alive = answer(status, headers, body, keep_alive, head_only)
            except (TypeError, ValueError) as exc:  # UnicodeEncodeError too: nothing of it is sent
                logger.error("WSGI app answered what HTTP cannot carry: %s", exc)
                data, keep_alive = answer(*_internal_error(), False, head_only)
            try:
                sent = sock.send(data)  # non-blocking; TLS sends all or raises, resumed by the selector
            except self._would_block:
                sent = 0
            except OSError:
                close_quietly(sock)
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
            if (self.linger and not self._jobs and not self._break_pending and not self._stopping.is_set()
                    and not reader.needs_continue()):
                poller.register(conn.fd, select.POLLIN)
                try:
                    ready = poller.poll(self.linger * 1000)
                finally:
                    poller.unregister(conn.fd)
                if len(ready) == 1 and ready[0][0] == conn.fd:  # not a break: this client, at once
                    try:
                        data = sock.recv(65536)
                    except self._would_block:  # TLS: only part of a record is here
                        data = None
                    except OSError:
                        data = b""
                    if data == b"":
                        if reader.in_message:  # half-closed mid-request: the selector says so
                            conn.out = error_response("400 Bad Request", "the request ended before it was complete")
                            conn.close_after = True
                            self._hand_back(conn)
                        else:
                            close_quietly(sock)
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

    def _refuse_unstarted(self, conn: Connection) -> None:
        reader = conn.reader
        reader.requests.clear()
        reader.pending = None
        reader.done = True
        conn.out = unavailable()
        conn.close_after = True
        self._hand_back(conn)

    def count_reject(self, reject: Reject) -> None:
        """Count a request refused before it reached the application (a body over the limit, a
        malformed head) as one that reached no action: the counters hold every answer given."""
        counters = getattr(self.app, "counters", None)
        if counters is not None:
            counters.record(None, int(reject.status.split(" ", 1)[0]), 0.0)

    def _run_app(self, environ: dict) -> tuple[str, list, bytes]:
        started: list = []

        def start_response(status: str, headers: list, exc_info: Any = None) -> Callable:
            started.append((status, headers))  # a second call (with exc_info) replaces the first
            return _no_write

        try:
            result = self.app(environ, start_response)
        except Exception:
            logger.exception("WSGI app failed")
            return _internal_error()
        try:
            body = b"".join(result)
            status, headers = started[-1]
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
