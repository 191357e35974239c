"""TLS on the builtin server: the handshake runs in the selector, so a client that never finishes
it holds no worker; requests, pipelining, large answers and the drain work as in plain HTTP."""
from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time

import pytest

from http_support import CountingApp, responses, serving


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """(server context, client context) for a self-signed certificate naming 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=30)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


def _connect(port: int, client: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return client.wrap_socket(raw, server_hostname="127.0.0.1")


def _read_answers(sock: ssl.SSLSocket, count: int) -> list[int]:
    data = b""
    while len(responses(data).statuses) < count:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return responses(data).statuses


def test_requests_over_tls_are_answered_on_a_kept_connection_and_pipelined(tls):
    server_context, client_context = tls
    app = CountingApp()
    with serving(app, ssl_context=server_context) as server:
        with _connect(server.port, client_context) as sock:
            for _ in range(3):
                sock.sendall(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
                assert _read_answers(sock, 1) == [200]
            sock.sendall(b"POST /two HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                         b"GET /three HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_answers(sock, 2) == [200, 200]
    assert [path for _, path, _ in app.seen] == ["/one"] * 3 + ["/two", "/three"]
    assert app.seen[3][2] == b"abc"
    assert app.environs[0]["wsgi.url_scheme"] == "https"


def test_clients_that_never_finish_the_handshake_hold_no_worker(tls):
    server_context, client_context = tls
    app = CountingApp()
    with serving(app, ssl_context=server_context, max_workers=2, header_timeout=1.0) as server:
        silent = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(8)]
        plain = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        try:
            plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # plain HTTP to a TLS port
            with _connect(server.port, client_context) as sock:
                started = time.monotonic()
                for _ in range(20):
                    sock.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
                    assert _read_answers(sock, 1) == [200]
                assert time.monotonic() - started < 2.0
            plain.settimeout(3)
            try:
                assert not plain.recv(100).startswith(b"HTTP/")  # no plain-text answer on a TLS port
            except ConnectionResetError:
                pass
            for sock in silent:  # the handshake deadline closes them
                sock.settimeout(5)
                try:
                    assert sock.recv(100) == b""
                except ConnectionResetError:
                    pass
        finally:
            for sock in silent + [plain]:
                sock.close()
    assert [path for _, path, _ in app.seen] == ["/ok"] * 20


def test_a_large_answer_to_a_slow_tls_reader_is_written_by_the_selector(tls):
    server_context, client_context = tls
    big = b"y" * (16 * 1024 * 1024)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [big if environ["PATH_INFO"] == "/big" else b"small"]

    with serving(app, ssl_context=server_context, max_workers=1) as server:
        with _connect(server.port, client_context) as slow, _connect(server.port, client_context) as other:
            slow.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.3)  # the single worker has handed the unsent rest to the selector
            other.sendall(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_answers(other, 1) == [200]
            parsed = responses(b"")
            while not parsed.statuses:
                chunk = slow.recv(1 << 20)
                assert chunk
                parsed.parser.feed_data(chunk)
            assert parsed.statuses == [200] and parsed.bodies[0] == big


def test_stop_answers_an_unstarted_tls_request_503_and_closes_idle_tls_connections(tls):
    server_context, client_context = tls
    app = CountingApp()
    server_cm = serving(app, ssl_context=server_context)
    server = server_cm.__enter__()
    try:
        idle = _connect(server.port, client_context)
        idle.sendall(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_answers(idle, 1) == [200]
        partial = _connect(server.port, client_context)
        partial.sendall(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab")
        time.sleep(0.2)
        server.stop(5)
        assert _read_answers(partial, 1) == [503]
        idle.settimeout(3)
        assert idle.recv(100) == b""  # close_notify, then FIN
        idle.close()
        partial.close()
    finally:
        server_cm.__exit__(None, None, None)
    assert [path for _, path, _ in app.seen] == ["/first"]
