"""The HTTP/JSON API: every status code, over a real socket, against a service running in this process."""
from __future__ import annotations

import http.client
import json
import re
import socket
from typing import Any, Iterator

import pytest

from support import exchange
from servicefactory import Service
from servicefactory.http import client
from servicefactory.testing import running

MAX_BODY = 200_000


@Service.API.endpoint(port=0, max_body=MAX_BODY)
class Echo(Service.base):
    """A service whose handlers record what they were called with."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def loop(self) -> None:
        self.sleep(30)

    @Service.API.handle("echo")
    def echo(self, data: Any) -> Any:
        """Answer what was sent."""
        self.calls.append(("echo", data))
        return {"got": data}

    @Service.API.handle("nothing")
    def nothing(self, data: Any) -> None:
        self.calls.append(("nothing", data))

    @Service.API.handle("fail")
    def fail(self, data: Any) -> None:
        self.calls.append(("fail", data))
        raise ValueError("broken on purpose")


@pytest.fixture(autouse=True)
def _close_client_connections() -> Iterator[None]:
    yield
    client.close_connections()


@pytest.fixture
def echo() -> Iterator[Echo]:
    with running(Echo()) as service:
        yield service


def port_of(service: Service.base) -> int:
    assert service.address is not None
    return service.address[1]


def request(port: int, method: str, path: str, body: Any = None, headers: dict | None = None,
            **options: Any) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path, body=body, headers=headers or {}, **options)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def post_json(port: int, path: str, raw: bytes, **headers: str) -> tuple[int, dict, bytes]:
    return request(port, "POST", path, raw, {"Content-Type": "application/json", **headers})


def error_of(body: bytes) -> dict:
    payload = json.loads(body)
    assert set(payload) == {"error"}
    assert set(payload["error"]) >= {"type", "message"}
    return payload["error"]


def assert_still_serving(service: Echo) -> None:
    """After a bad request the service answers a good one normally."""
    before = len(service.calls)
    status, _, body = post_json(port_of(service), "/echo", b'"after"')
    assert status == 200
    assert json.loads(body) == {"got": "after"}
    assert service.calls[before:] == [("echo", "after")]


# -- 200 --

def test_a_handler_result_is_answered_as_json(echo):
    status, headers, body = post_json(port_of(echo), "/echo", b'{"a": [1, 2.5, "x", null, true]}')
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"got": {"a": [1, 2.5, "x", None, True]}}


def test_a_handler_returning_none_answers_plain_ok_to_curl(echo):
    status, headers, body = post_json(port_of(echo), "/nothing", b"1", Accept="*/*")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    assert body == b"ok\n"
    assert echo.calls == [("nothing", 1)]


def test_a_handler_returning_none_answers_json_null_to_a_json_client(echo):
    status, headers, body = post_json(port_of(echo), "/nothing", b"1", Accept="application/json")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert json.loads(body) is None


def test_get_calls_an_action_that_opts_in_with_none():
    @Service.API.endpoint(port=0)
    class Readable(Service.base):
        @Service.API.handle("peek", methods=("GET", "POST"))
        def peek(self, data: Any) -> Any:
            return {"got": data}

    with running(Readable()) as service:
        status, _, body = request(port_of(service), "GET", "/peek")
    assert status == 200
    assert json.loads(body) == {"got": None}


def test_post_without_a_body_calls_the_handler_with_none(echo):
    status, _, body = request(port_of(echo), "POST", "/echo", b"", {"Content-Type": "application/json"})
    assert status == 200
    assert json.loads(body) == {"got": None}


# -- 4xx --

def test_unknown_action_is_404_naming_the_action(echo):
    status, headers, body = post_json(port_of(echo), "/no-such-action", b"1")
    assert status == 404
    assert headers["content-type"] == "application/json"
    error = error_of(body)
    assert error["type"] == "UnknownAction"
    assert "no-such-action" in error["message"]
    assert_still_serving(echo)


def test_malformed_json_is_400_and_the_handler_is_not_called(echo):
    status, _, body = post_json(port_of(echo), "/echo", b'{"a": ')
    assert status == 400
    assert error_of(body)["message"]
    assert echo.calls == []
    assert_still_serving(echo)


def test_a_body_over_the_limit_is_413_and_the_handler_is_not_called(echo):
    payload = json.dumps("x" * (MAX_BODY + 10)).encode()
    status, _, body = post_json(port_of(echo), "/echo", payload)
    assert status == 413
    assert echo.calls == []
    assert_still_serving(echo)


def test_a_lying_content_length_is_413_at_once_without_reading_the_body(echo):
    head = (b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000000\r\n\r\n" + b'"x"')
    status, _, _ = exchange(port_of(echo), head, timeout=3)
    assert status == 413
    assert echo.calls == []
    assert_still_serving(echo)


def test_a_chunked_body_over_the_limit_is_413(echo):
    chunk = b"x" * (MAX_BODY + 1)
    data = (b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(chunk):x}\r\n".encode())
    status, _, _ = exchange(port_of(echo), data, timeout=3)
    assert status == 413
    assert echo.calls == []
    assert_still_serving(echo)


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_methods_other_than_get_and_post_are_405(echo, method):
    status, headers, body = request(port_of(echo), method, "/echo", b'"x"', {"Content-Type": "application/json"})
    assert status == 405
    assert "POST" in headers["allow"]
    assert error_of(body)
    assert echo.calls == []
    assert_still_serving(echo)


def test_a_form_body_is_415_and_the_handler_is_not_called(echo):
    status, _, body = request(port_of(echo), "POST", "/echo", b"a=1&b=2",
                              {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415
    assert error_of(body)["type"]
    assert echo.calls == []
    assert_still_serving(echo)


def test_a_text_plain_body_is_415(echo):
    status, _, _ = request(port_of(echo), "POST", "/echo", b'"x"', {"Content-Type": "text/plain"})
    assert status == 415
    assert echo.calls == []


@pytest.mark.parametrize("header", [{"Host": "evil.example"}, {"Origin": "http://evil.example"}],
                         ids=["foreign Host (DNS rebinding)", "foreign Origin"])
def test_a_foreign_host_or_origin_is_403(echo, header):
    status, _, body = post_json(port_of(echo), "/echo", b'"x"', **header)
    assert status == 403
    assert error_of(body)["type"] == "Forbidden"
    assert echo.calls == []
    assert_still_serving(echo)


def test_a_local_origin_is_allowed(echo):
    port = port_of(echo)
    status, _, _ = post_json(port, "/echo", b'"x"', Origin=f"http://localhost:{port}")
    assert status == 200


def test_a_cross_site_fetch_is_403(echo):
    status, _, _ = post_json(port_of(echo), "/echo", b'"x"', **{"Sec-Fetch-Site": "cross-site"})
    assert status == 403
    assert echo.calls == []


def test_json_with_a_charset_parameter_is_accepted(echo):
    status, _, body = post_json(port_of(echo), "/echo", b'"x"', **{"Content-Type": "application/json; charset=utf-8"})
    assert status == 200
    assert json.loads(body) == {"got": "x"}


def test_content_length_together_with_chunked_is_400(echo):
    data = (b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n1\r\n1\r\n0\r\n\r\n")
    status, _, _ = exchange(port_of(echo), data)
    assert status == 400
    assert echo.calls == []
    assert_still_serving(echo)


@pytest.mark.parametrize("length", [b"-1", b"1x", b"\xb9"], ids=["negative", "junk", "superscript-one"])
def test_an_invalid_content_length_is_400(echo, length):
    data = (b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + length + b"\r\n\r\n1")
    status, _, _ = exchange(port_of(echo), data)
    assert status == 400
    assert echo.calls == []
    assert_still_serving(echo)


def test_deeply_nested_json_is_400_not_a_crash(echo):
    status, _, body = post_json(port_of(echo), "/echo", b"[" * 100_000)
    assert status == 400
    assert error_of(body)
    assert echo.calls == []
    assert_still_serving(echo)


def test_invalid_utf8_is_400(echo):
    status, _, body = post_json(port_of(echo), "/echo", b'"\xff\xfe\xfa"')
    assert status == 400
    assert error_of(body)
    assert echo.calls == []
    assert_still_serving(echo)


@pytest.mark.parametrize("path", ["/..", "/../echo", "/echo/..", "/a..b", "/%2E%2E", "/%00", "/echo%00",
                                  "/%C3%A9cho", "/%E2%80%8Becho", "/echo/", "//echo", "/"])
def test_strange_action_names_are_404(echo, path):
    status, _, body = post_json(port_of(echo), path, b'"x"')
    assert status == 404
    assert error_of(body)["type"] == "UnknownAction"
    assert echo.calls == []
    assert_still_serving(echo)


# -- 500 --

def test_a_handler_exception_is_500_with_its_type_and_message(echo):
    status, headers, body = post_json(port_of(echo), "/fail", b"7")
    assert status == 500
    assert headers["content-type"] == "application/json"
    assert error_of(body) == {"type": "ValueError", "message": "broken on purpose"}
    assert echo.calls == [("fail", 7)]
    assert_still_serving(echo)


# -- the HTTP/1.1 the clients send --

def test_a_chunked_request_body_works(echo):
    status, _, body = request(port_of(echo), "POST", "/echo", iter([b'{"chunked"', b": ", b"true}"]),
                              {"Content-Type": "application/json"}, encode_chunked=True)
    assert status == 200
    assert json.loads(body) == {"got": {"chunked": True}}


def test_expect_100_continue_gets_100_then_the_answer(echo):
    payload = b'"continued"'
    head = (b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: " + str(len(payload)).encode() + b"\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port_of(echo)), timeout=5) as sock:
        sock.sendall(head)
        interim = b""
        while b"\r\n\r\n" not in interim:
            data = sock.recv(1)
            assert data, "connection closed before 100 Continue"
            interim += data
        assert interim.startswith(b"HTTP/1.1 100")
        assert echo.calls == []  # nothing ran before the body was sent
        sock.sendall(payload)
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
            assert response.status == 200
            assert json.loads(response.read()) == {"got": "continued"}
        finally:
            response.close()


def test_keep_alive_serves_several_requests_on_one_connection(echo):
    connection = http.client.HTTPConnection("127.0.0.1", port_of(echo), timeout=5)
    try:
        sockets = []
        for number in range(10):
            connection.request("POST", "/echo", body=json.dumps(number), headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            assert response.status == 200
            assert json.loads(response.read()) == {"got": number}
            assert connection.sock is not None, "the server closed the keep-alive connection"
            sockets.append(connection.sock)
        assert all(sock is sockets[0] for sock in sockets)
    finally:
        connection.close()


def test_keep_alive_survives_an_error_answer(echo):
    connection = http.client.HTTPConnection("127.0.0.1", port_of(echo), timeout=5)
    try:
        for path, expected in [("/echo", 200), ("/missing", 404), ("/fail", 500), ("/echo", 200)]:
            connection.request("POST", path, body=b"1", headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            assert response.status == expected
    finally:
        connection.close()


def test_pipelined_requests_are_answered_in_order(echo):
    one = b'POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1\r\n\r\n1'
    two = b'POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1\r\n\r\n2'
    with socket.create_connection(("127.0.0.1", port_of(echo)), timeout=5) as sock:
        sock.sendall(one + two)
        stream = b""
        answers = []
        while len(answers) < 2:
            head_end = stream.find(b"\r\n\r\n")
            if head_end >= 0:
                head = stream[:head_end].decode("latin-1")
                length = int(re.search(r"(?im)^content-length:\s*(\d+)", head).group(1))
                if len(stream) >= head_end + 4 + length:
                    answers.append((head.split(" ", 2)[1], stream[head_end + 4:head_end + 4 + length]))
                    stream = stream[head_end + 4 + length:]
                    continue
            data = sock.recv(65536)
            assert data, f"connection closed after {len(answers)} answers"
            stream += data
    assert [(status, json.loads(body)) for status, body in answers] == [("200", {"got": 1}), ("200", {"got": 2})]


def test_an_http10_request_without_host_is_answered(echo):
    status, _, body = exchange(port_of(echo), b"POST /echo HTTP/1.0\r\nContent-Type: application/json\r\n\r\n")
    assert status == 200
    assert json.loads(body) == {"got": None}


def test_garbage_instead_of_http_is_400_and_the_service_survives(echo):
    status, _, _ = exchange(port_of(echo), b"hello there\r\n\r\n")
    assert status == 400
    assert_still_serving(echo)


# -- built-in actions --

def test_health_reports_name_pid_uptime_iterations_errors_version(echo):
    import os

    import servicefactory

    status, _, body = request(port_of(echo), "GET", "/health")
    assert status == 200
    health = json.loads(body)
    assert health["name"] == "Echo"
    assert health["pid"] == os.getpid()
    assert isinstance(health["uptime"], (int, float)) and health["uptime"] >= 0
    assert isinstance(health["iterations"], int)
    assert health["errors"] == 0
    assert health["version"] == servicefactory.__version__


def test_actions_lists_the_users_actions_and_the_builtins(echo):
    status, _, body = request(port_of(echo), "GET", "/actions")
    assert status == 200
    names = {entry["name"] for entry in json.loads(body)}
    assert names == {"echo", "nothing", "fail", "health", "actions", "shutdown"}
    entry = next(entry for entry in json.loads(body) if entry["name"] == "echo")
    assert entry["doc"] == "Answer what was sent."


def test_a_user_handler_named_like_a_builtin_is_refused_at_class_creation():
    with pytest.raises(TypeError, match="health"):
        class Impostor(Service.base):
            @Service.API.handle("health")
            def my_health(self, data: Any) -> str:
                return "fine"


@pytest.mark.parametrize("builtin", ["health", "actions", "shutdown"])
def test_every_builtin_action_name_is_protected(builtin):
    with pytest.raises(TypeError, match=builtin):
        type("Impostor", (Service.base,), {"mine": Service.API.handle(builtin)(lambda self, data: None)})


def test_a_builtin_may_be_replaced_with_override_true():
    @Service.API.endpoint(port=0)
    class Custom(Service.base):
        def loop(self) -> None:
            self.sleep(30)

        @Service.API.handle("health", override=True)
        def my_health(self, data: Any) -> dict:
            return {"custom": True}

    with running(Custom()) as service:
        status, _, body = post_json(port_of(service), "/health", b"")
    assert status == 200
    assert json.loads(body) == {"custom": True}


@pytest.mark.parametrize("reserved", ["run", "log", "sleep", "stop"])
def test_a_user_method_shadowing_the_framework_is_refused_at_class_creation(reserved):
    with pytest.raises(TypeError, match=reserved):
        type("Shadowing", (Service.base,), {reserved: lambda self: None})


def test_nan_and_infinity_are_not_json_and_get_400():
    @Service.API.endpoint(port=0)
    class Strict(Service.base):
        @Service.API.handle("echo")
        def echo(self, data):
            return data

    with running(Strict()) as service:
        for body in (b"NaN", b"[1, Infinity]", b"-Infinity"):
            conn = http.client.HTTPConnection(*service.address, timeout=5)
            conn.request("POST", "/echo", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            assert response.status == 400, body
            response.read()
            conn.close()
