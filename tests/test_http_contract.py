"""Contract C1: what the builtin server hands the app, and an app's `Connection: close`."""
from __future__ import annotations

import socket

from http_support import CountingApp, read_until_closed, responses, send_all_then_read, serving

GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"


def test_every_environ_names_both_ends_and_carries_one_dict_per_connection():
    app = CountingApp()
    with serving(app) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as first:
            first.sendall(GET * 2)
            first.shutdown(socket.SHUT_WR)
            assert responses(read_until_closed(first)).statuses == [200, 200]
            local_port = first.getsockname()[1]
        send_all_then_read(server.port, GET)
    one, two, other = app.environs
    assert one["REMOTE_ADDR"] == "127.0.0.1" and one["REMOTE_PORT"] == str(local_port)
    assert one["SERVER_NAME"] == "127.0.0.1" and one["SERVER_PORT"] == str(server.port)
    assert isinstance(one["servicefactory.connection"], dict)
    assert one["servicefactory.connection"] is two["servicefactory.connection"]
    assert other["servicefactory.connection"] is not one["servicefactory.connection"]
    assert one is not two  # per-request keys never leak from one request into the next


def test_what_the_app_caches_in_the_connection_dict_is_seen_by_the_next_request_only_on_that_connection():
    def remember(environ):
        cache = environ["servicefactory.connection"]
        environ["test.before"] = cache.get("uid")
        cache["uid"] = 1000
        return None

    app = CountingApp(remember)
    with serving(app) as server:
        send_all_then_read(server.port, GET * 2)
        send_all_then_read(server.port, GET)
    assert [environ["test.before"] for environ in app.environs] == [None, 1000, None]


def test_an_app_answering_connection_close_gets_the_header_sent_and_the_connection_closed():
    app = CountingApp(lambda environ: b"close" if environ["PATH_INFO"] == "/deny" else None)
    with serving(app) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            # no half-close: the server itself must end the connection after the answer
            sock.sendall(b"GET /deny HTTP/1.1\r\nHost: x\r\n\r\n" + GET)
            parsed = responses(read_until_closed(sock))
    assert parsed.statuses == [200]
    assert parsed.headers[0]["connection"] == "close"
    assert [path for _, path, _ in app.seen] == ["/deny"]  # the pipelined request after it never ran


def test_a_keep_alive_answer_says_nothing_about_the_connection():
    app = CountingApp()
    with serving(app) as server:
        parsed = responses(send_all_then_read(server.port, GET))
    assert parsed.statuses == [200] and "connection" not in parsed.headers[0]
    assert parsed.headers[0]["content-length"] == "0" and "date" in parsed.headers[0]


def _answering(status: str, headers: list):
    def app(environ, start_response):
        environ["wsgi.input"].read()
        start_response(status, headers)
        return [b"body"]
    return app


def test_an_app_header_or_status_with_a_line_break_is_never_sent_but_answered_500_and_closed():
    """A CR or LF in what the app answers (say, a caller's input echoed into a header) could write
    headers, or a whole second answer, of the caller's choosing: the server sends a 500 instead."""
    cases = [("200 OK", [("X-Echo", "a\r\nSet-Cookie: evil=1")]),
             ("200 OK", [("X-Echo", "a\nSet-Cookie: evil=1")]),
             ("200 OK", [("Set-Cookie: evil=1\r\nX", "a")]),
             ("200 OK\r\nSet-Cookie: evil=1", [])]
    for status, headers in cases:
        with serving(_answering(status, headers)) as server:
            data = send_all_then_read(server.port, GET * 2, half_close=False)
        parsed = responses(data)
        assert parsed.statuses == [500], (status, headers, data)
        assert parsed.headers[0]["connection"] == "close" and b"evil" not in data


def test_ordinary_app_headers_arrive_as_sent_and_ours_replace_its_length_and_date():
    app = _answering("201 Created", [("X-Tab", "a\tb"), ("Content-Length", "999"), ("Date", "yesterday"),
                                     ["X-List", "from a list"]])
    with serving(app) as server:
        parsed = responses(send_all_then_read(server.port, GET * 2))
    assert parsed.statuses == [201, 201]
    for headers in parsed.headers:
        assert headers["x-tab"] == "a\tb" and headers["x-list"] == "from a list"
        assert headers["content-length"] == "4" and headers["date"] != "yesterday"
    assert parsed.bodies == [b"body", b"body"]


def test_headers_given_as_a_constant_tuple_are_sent_checked_and_may_close_like_a_list():
    """api.App answers with one constant tuple of headers, encoded once; the same rules hold for it."""
    app = _answering("200 OK", (("X-Kind", "constant"), ("Content-Length", "999"), ["X-List", "in a tuple"]))
    with serving(app) as server:
        parsed = responses(send_all_then_read(server.port, GET * 3))
    assert parsed.statuses == [200, 200, 200]
    for headers in parsed.headers:
        assert headers["x-kind"] == "constant" and headers["x-list"] == "in a tuple"
        assert headers["content-length"] == "4" and "connection" not in headers
    for headers in [(("X-Echo", "a\r\nSet-Cookie: evil=1"),), (("Connection", "close"),)]:
        with serving(_answering("200 OK", headers)) as server:
            data = send_all_then_read(server.port, GET * 2, half_close=False)
        parsed = responses(data)
        assert len(parsed.statuses) == 1 and parsed.headers[0]["connection"] == "close" and b"evil" not in data
        assert parsed.statuses == ([500] if b"evil" in repr(headers).encode() else [200])
