"""A real reverse proxy (HAProxy) in front of a live server: the smuggling classics sent through it.

Request smuggling needs two parsers that disagree: the proxy frames a byte stream one way, the
service another, and a request hidden in what the proxy took for a body runs unseen, or answers the
next client's request on a shared backend connection. So every case of the framing corpus goes
through HAProxy (keep-alive to the service, backend connections reused across clients), and then
fresh clients send requests of their own. The service's handler must run exactly the requests the
proxy forwarded, in order (each answer names the path it ran, and the proxy's own refusals name
none), and every later client must get the answer to its own request.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from http_support import responses, serving
from test_http_framing import CORPUS

HAPROXY = shutil.which("haproxy")
pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (.ci/run installs it)")

_CONFIG = """\
global
  nbthread 1
  maxconn 256
defaults
  mode http
  timeout connect 5s
  timeout client 5s
  timeout server 5s
  # keep-alive to the service, and any client's request may ride any idle backend connection:
  # the setting in which a desync poisons other clients
  http-reuse always
frontend front
  bind fd@{fd}
  default_backend service
backend service
  server live 127.0.0.1:{port}
"""


class PathApp:
    """A WSGI app that records each request it runs and names the path in its answer (X-Path)."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, environ: dict, start_response: Callable) -> list[bytes]:
        environ["wsgi.input"].read()
        path = environ["PATH_INFO"]
        with self.lock:
            self.seen.append(path)
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Path", path)])
        return [path.encode()]

    def take(self) -> list[str]:
        """The paths run since the last take."""
        with self.lock:
            seen, self.seen = self.seen, []
        return seen


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, PathApp]]:
    """(the proxy's port, the app behind it): HAProxy in front of a live server, both on free ports."""
    app = PathApp()
    with serving(app, max_body=4096) as server:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))  # ours, handed to HAProxy: no race for a free port
        listener.listen(128)
        config = Path(tmp_path_factory.mktemp("haproxy")) / "haproxy.cfg"
        config.write_text(_CONFIG.format(fd=listener.fileno(), port=server.port))
        check = subprocess.run([HAPROXY, "-c", "-f", str(config)], capture_output=True, text=True, timeout=30,
                               pass_fds=[listener.fileno()])
        assert check.returncode == 0, check.stdout + check.stderr
        log = (config.parent / "haproxy.log").open("wb")
        proxy = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], pass_fds=[listener.fileno()],
                                 stdout=log, stderr=subprocess.STDOUT)
        log.close()
        port = listener.getsockname()[1]
        listener.close()  # HAProxy holds its own copy
        try:
            assert _exchange(port, b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n") == [(200, "/ready")], \
                "HAProxy does not answer through to the service"
            assert app.take() == ["/ready"]
            yield port, app
        finally:
            proxy.terminate()
            try:
                proxy.wait(10)
            except subprocess.TimeoutExpired:
                proxy.kill()
                proxy.wait(10)


def _exchange(port: int, data: bytes) -> list[tuple[int, str | None]]:
    """Send raw bytes to the proxy, half-close, read to its FIN: (status, X-Path or None) per answer."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # the proxy refused early (a huge head) and closed: read what it said
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:  # the proxy's close with our bytes unread
                break
            if not chunk:
                break
            received += chunk
    parsed = responses(received)
    return [(status, headers.get("x-path")) for status, headers in zip(parsed.statuses, parsed.headers)]


def _follow_ups(port: int, app: PathApp, tag: str) -> None:
    """Fresh clients, whose requests may ride the backend connection the case left: each gets its own answer."""
    for number in range(3):
        path = f"/after-{tag}-{number}"
        answered = _exchange(port, b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answered == [(200, path)], f"a later client got another request's answer: {answered}"
    assert app.take() == [f"/after-{tag}-{number}" for number in range(3)]


@pytest.mark.parametrize("data", [row[1] for row in CORPUS], ids=[row[0] for row in CORPUS])
def test_behind_haproxy_the_service_runs_exactly_what_the_proxy_forwarded(proxied, data):
    port, app = proxied
    app.take()
    answered = _exchange(port, data)
    ran = app.take()
    # answers from the service name their path; the proxy's own refusals (and our 4xx) name none
    forwarded = [path for status, path in answered if path is not None]
    assert ran == forwarded, f"the service ran {ran}, the proxy delivered answers for {forwarded}"
    assert all(status == 200 for status, path in answered if path is not None)
    _follow_ups(port, app, "case")


def test_behind_haproxy_a_hidden_request_never_runs_in_the_classic_desyncs(proxied):
    """CL+TE, TE obfuscations, duplicate lengths, bare LF in trailers: /hidden never runs, unasked."""
    port, app = proxied
    hidden = b"GET /hidden HTTP/1.1\r\nHost: x\r\n\r\n"
    classics = [
        b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + hidden,
        b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n" + hidden,
        b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\xa0\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" + hidden,
        b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" + hidden,
        b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" + hidden,
        b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 34\r\n\r\n" + hidden,
        b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\n\n" + hidden,
        b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\n" + hidden,
        b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1;a=b\nz\r\n0\r\n\r\n" + hidden,
    ]
    for number, data in enumerate(classics):
        app.take()
        answered = _exchange(port, data)
        ran = app.take()
        forwarded = [path for _, path in answered if path is not None]
        assert ran == forwarded, (data, answered, ran)
        # the proxy may frame /hidden as a pipelined request of its own and get its answer; never
        # may it run while the client got no answer for it
        if "/hidden" in ran:
            assert (200, "/hidden") in answered, (data, answered)
        _follow_ups(port, app, f"classic-{number}")


def test_behind_haproxy_keep_alive_clients_share_backend_connections_cleanly(proxied):
    """Many clients, each a few keep-alive requests, interleaved: every answer is to its own request."""
    port, app = proxied
    app.take()
    errors: list[str] = []

    def client(number: int) -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                for call in range(5):
                    path = f"/c{number}-{call}"
                    sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                    data = b""
                    deadline = time.monotonic() + 10
                    while not (b"\r\n\r\n" in data and data.endswith(path.encode())) and time.monotonic() < deadline:
                        chunk = sock.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    parsed = responses(data)
                    if parsed.statuses != [200] or parsed.headers[0].get("x-path") != path:
                        errors.append(f"{path}: {data!r}")
        except OSError as exc:
            errors.append(f"client {number}: {exc}")

    threads = [threading.Thread(target=client, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert sorted(app.take()) == sorted(f"/c{number}-{call}" for number in range(8) for call in range(5))
