"""Drivers for the HTTP server tests: a real Server on port 0 with a counting app, raw exchanges."""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import httptools

from servicefactory.http.server import Server, bind


class CountingApp:
    """A WSGI app that records every request it runs (method, path, body) and answers 200 at once."""

    def __init__(self, handler: Callable[[dict], bytes] | None = None) -> None:
        self.seen: list[tuple[str, str, bytes]] = []
        self.environs: list[dict] = []
        self.lock = threading.Lock()
        self.handler = handler

    def __call__(self, environ: dict, start_response: Callable) -> list[bytes]:
        body = environ["wsgi.input"].read()
        with self.lock:
            self.seen.append((environ["REQUEST_METHOD"], environ["PATH_INFO"], body))
            self.environs.append(environ)
        extra = self.handler(environ) if self.handler else None
        headers = [("Content-Type", "text/plain")]
        if extra == b"close":
            headers.append(("Connection", "close"))
        start_response("200 OK", headers)
        return [b""]


@contextmanager
def serving(app: Callable, **options) -> Iterator[Server]:
    """A started Server for `app` on 127.0.0.1:0, stopped (briefly) on exit."""
    server = Server(app, bind("127.0.0.1", 0), **options)
    server.start()
    try:
        yield server
    finally:
        server.stop(timeout=2.0)


def send_all_then_read(port: int, data: bytes, timeout: float = 5.0, half_close: bool = True) -> bytes:
    """Send raw bytes, half-close, and read until the server closes; the bytes it answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return read_until_closed(sock, timeout)


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the peer sends until its FIN (a reset fails: the server must never reset)."""
    chunks = []
    deadline = time.monotonic() + timeout
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


class _Responses:
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.statuses: list[int] = []
        self.headers: list[dict[str, str]] = []
        self.bodies: list[bytes] = []
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.statuses.append(self.parser.get_status_code())
        self.headers.append(self._headers)
        self.bodies.append(b"".join(self._body))
        self._headers, self._body = {}, []


def responses(data: bytes) -> _Responses:
    """The HTTP responses in `data`, in order (statuses, lower-cased headers, bodies)."""
    parsed = _Responses()
    if data:
        parsed.parser.feed_data(data)
    return parsed


def statuses(data: bytes) -> list[int]:
    """The status codes of the HTTP responses in `data`, in order (interim 100s included)."""
    return responses(data).statuses


def framed_by_httptools(data: bytes) -> int:
    """How many complete requests a bare httptools parser frames from `data` before any error."""
    class Count:
        complete = 0

        def on_message_complete(self) -> None:
            Count.complete += 1

    try:
        httptools.HttpRequestParser(Count()).feed_data(data)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        pass
    return Count.complete


def timed_health_call(sock: socket.socket) -> float:
    """Send GET /health on a kept-open connection, read its (empty-bodied) 200; seconds it took."""
    started = time.perf_counter()
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while not data.endswith(b"\r\n\r\n"):  # the app answers an empty body
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    assert data.startswith(b"HTTP/1.1 200 "), data
    return time.perf_counter() - started
