"""What the client puts on the wire and how it reads what comes back: headers, 503, retries, big bodies.

A scripted HTTP peer on a real socket plays the server where a test needs an exact answer (a 503
from a draining service, a connection dropped after the request): it records every request it got.
"""
from __future__ import annotations

import contextlib
import socket
import threading
from typing import Callable, Iterator

import pytest
import requests

from servicefactory import InvalidData, ProtocolError, Service, ServiceNotRunning

from servicefactory.http import client
from servicefactory.errors import ServiceUnavailable
from servicefactory.testing import running

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n\"ok\"\n"
DRAINING = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: 88\r\n\r\n"
            b'{"error": {"type": "ServiceUnavailable", "message": "stopping: not run; safe to retry"}}\n')


class Peer:
    """A one-thread HTTP peer: for each request it reads, `script` says what to send (None: drop it)."""

    def __init__(self, script: Callable[[int], bytes | None]) -> None:
        self.script = script
        self.requests: list[bytes] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.05)  # closing a socket does not wake an accept() in another thread
        self.closed = threading.Event()
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(0.05)
                self._connection(conn)

    def _connection(self, conn: socket.socket) -> None:
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                try:
                    data = conn.recv(65536)
                except socket.timeout:
                    if self.closed.is_set():
                        return
                    continue
                if not data:
                    return
                buffer += data
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                key, _, value = line.partition(b":")
                if key.strip().lower() == b"content-length":
                    length = int(value)
            while len(buffer) < length:
                try:
                    buffer += conn.recv(65536)
                except socket.timeout:
                    continue
            self.requests.append(head + b"\r\n\r\n" + buffer[:length])
            buffer = buffer[length:]
            answer = self.script(len(self.requests))
            if answer is None:
                return  # drop the connection without a word, as a crashing server would
            conn.sendall(answer)
            if b"Connection: close" in answer:
                return

    def close(self) -> None:
        self.closed.set()
        self.thread.join(5)
        self.listener.close()


@contextlib.contextmanager
def peer(script: Callable[[int], bytes | None]) -> Iterator[Peer]:
    server = Peer(script)
    try:
        yield server
    finally:
        client.close_connections()
        server.close()


def call(port: int, data=None, session=None):
    return client.perform("Named", "act", data, fallback=("127.0.0.1", port), session=session, timeout=5)


def header_lines(request: bytes) -> list[bytes]:
    return request.partition(b"\r\n\r\n")[0].lower().split(b"\r\n")[1:]


@pytest.mark.parametrize("session", [None, "requests"])
@pytest.mark.parametrize("data", [None, {"a": 1}])
def test_every_post_carries_json_content_type_and_the_service_name(session, data):
    with peer(lambda n: OK) as server:
        assert call(server.port, data, requests.Session() if session else None) == "ok"
    (request,) = server.requests
    assert request.startswith(b"POST /act HTTP/1.1\r\n")
    lines = header_lines(request)
    assert b"content-type: application/json" in lines
    assert b"servicefactory-service: named" in lines


@pytest.mark.parametrize("session", [None, "requests"])
def test_a_503_is_service_unavailable_a_not_running_error_and_is_retried_once(session):
    with peer(lambda n: DRAINING) as server:
        with pytest.raises(ServiceUnavailable, match="safe to retry") as caught:
            call(server.port, session=requests.Session() if session else None)
    assert isinstance(caught.value, ServiceNotRunning) and caught.value.exit_code == ServiceNotRunning.exit_code
    assert len(server.requests) == 2  # the call and one retry, no more


@pytest.mark.parametrize("session", [None, "requests"])
def test_a_503_then_an_answer_returns_the_answer(session):
    with peer(lambda n: DRAINING if n == 1 else OK) as server:
        assert call(server.port, 1, requests.Session() if session else None) == "ok"
    assert len(server.requests) == 2


@pytest.mark.parametrize("session", [None, "requests"])
def test_a_request_dropped_after_it_was_sent_is_never_retried(session):
    with peer(lambda n: None) as server:
        with pytest.raises(ProtocolError, match="may or may not have run"):
            call(server.port, 1, requests.Session() if session else None)
    assert len(server.requests) == 1


@Service.API.endpoint(port=0, max_body=64 * 1024)
class Small(Service.base):
    def loop(self) -> None:
        self.sleep(30)

    @Service.API.handle("size")
    def size(self, data) -> int:
        return len(data)


# Run in a child process: tens of MiB of test data would otherwise stay in this process's peak RSS,
# which every later subprocess inherits as its own ru_maxrss (tests that measure memory read that).
BIG_BODIES = """
import json, sys
import requests
from servicefactory import InvalidData, Service
from servicefactory.http import client
from servicefactory.testing import running

@Service.API.endpoint(port=0, max_body=64 * 1024)
class Small(Service.base):
    def loop(self):
        self.sleep(30)

    @Service.API.handle("size")
    def size(self, data):
        return len(data)

mebibytes, session = int(sys.argv[1]), sys.argv[2] == "requests"
with running(Small()):
    kwargs = {"session": requests.Session()} if session else {}
    outcome = {"before": Small.perform("size", "x" * 1000, **kwargs)}  # a kept connection, reused next
    try:
        Small.perform("size", "x" * (mebibytes << 20), **kwargs)
    except InvalidData as exc:
        outcome["error"] = [type(exc).__name__, str(exc), exc.exit_code]
    except Exception as exc:
        outcome["error"] = [type(exc).__name__, str(exc), getattr(exc, "exit_code", None)]
    outcome["after"] = Small.perform("size", "y" * 10, **kwargs)  # and the next call is unharmed
    client.close_connections()
print(json.dumps(outcome))
"""


@pytest.mark.parametrize("session", [None, "requests"])
@pytest.mark.parametrize("mebibytes", [2, 8, 32])
def test_a_body_far_over_the_limit_is_refused_as_over_the_limit_not_as_a_dropped_connection(session, mebibytes,
                                                                                             sf_home):
    """Issue 9.11: from 8 MiB on, the 413 the server sent before closing was lost in a broken pipe."""
    import json
    import os
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", BIG_BODIES, str(mebibytes), session or "raw"],
                            env=dict(os.environ, SERVICEFACTORY_HOME=str(sf_home)), capture_output=True,
                            text=True, timeout=100)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    kind, message, exit_code = outcome["error"]
    assert (kind, exit_code) == ("InvalidData", 2), message
    assert "limit" in message
    assert (outcome["before"], outcome["after"]) == (1000, 10)


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan"), "5", None])
def test_a_timeout_that_is_not_a_positive_finite_number_is_invalid_data(timeout):
    with pytest.raises(InvalidData, match="timeout"):
        client.perform("Named", "act", timeout=timeout, fallback=("127.0.0.1", 9))


def test_the_cli_reports_an_8_mib_body_as_over_the_limit_with_exit_2(spawn, tmp_path, sf_home):
    import os
    import subprocess
    import sys

    from support import PYTHON, wait_until
    from servicefactory.registry.local import LocalRegistry

    script = ("from servicefactory import Service\n"
              "@Service.API.endpoint(port=0)\n"
              "class Small(Service.base):\n"
              "    def loop(self):\n"
              "        self.sleep(30)\n"
              "Small().run()\n")
    service = spawn(args=[PYTHON, "small.py"], files={"small.py": script})
    wait_until(lambda: (LocalRegistry(sf_home).lookup("Small") or None) and
               LocalRegistry(sf_home).lookup("Small").pid == service.pid, timeout=15, message="Small's record")
    data = '"' + "x" * (8 << 20) + '"'
    result = subprocess.run([sys.executable, "-m", "servicefactory", "perform", "Small", "health", "-"], input=data,
                            cwd=tmp_path, env=dict(os.environ, SERVICEFACTORY_HOME=str(sf_home)),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "limit" in result.stderr and "Traceback" not in result.stderr


def test_a_forked_child_opens_its_own_connections_and_never_reads_its_parents_answers():
    """multiprocessing (fork), gunicorn's preload: children must not share the parent's kept sockets."""
    import os
    import warnings

    with running(Small()):
        assert Small.perform("size", "warm") == 4  # the parent now keeps a connection open
        children = []
        for index in range(4):
            with warnings.catch_warnings():  # 3.12+ warns of fork() in a process with threads: meant here
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
            if pid == 0:  # the child: many calls at once with the parent's, each checked
                code = 0
                try:
                    for number in range(300):
                        if Small.perform("size", "x" * (index * 1000 + number)) != index * 1000 + number:
                            code = 1
                except BaseException:
                    code = 2
                os._exit(code)
            children.append(pid)
        wrong = sum(Small.perform("size", "y" * number) != number for number in range(300))
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
        client.close_connections()
    assert (wrong, codes) == (0, [0, 0, 0, 0])
