"""Calling a service: finding it through the registry, typed errors, timeouts, data fidelity, connection reuse."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from typing import Any, Iterator

import psutil
import pytest
import requests

import servicefactory
from support import PYTHON, free_port, wait_until
from servicefactory import (ActionFailed, InvalidData, Service, ServiceFactoryError, ServiceNotRunning,
                            ProtocolError, ServiceTimeout, UnknownAction)
from servicefactory.http import client
from servicefactory.registry.base import ServiceRecord
from servicefactory.registry.local import LocalRegistry
from servicefactory.testing import running

QUICKLY = 1.0  # seconds: how long a caller may wait to learn that nothing runs


@pytest.fixture(autouse=True)
def _close_client_connections() -> Iterator[None]:
    yield
    client.close_connections()


@contextlib.contextmanager
def serving(service: Service.base) -> Iterator[Service.base]:
    """Run `service`; this thread's client connections are closed before it stops."""
    with running(service):
        try:
            yield service
        finally:
            client.close_connections()


@Service.API.endpoint(port=0)
class Remote(Service.base):
    """The service the tests call; in-process or (same name) in a subprocess."""

    def __init__(self) -> None:
        self.received: list[Any] = []
        self.release = threading.Event()

    def loop(self) -> None:
        self.sleep(30)

    @Service.API.handle("echo")
    def echo(self, data: Any) -> Any:
        self.received.append(data)
        return data

    @Service.API.handle("nothing")
    def nothing(self, data: Any) -> None:
        return None

    @Service.API.handle("ok")
    def ok(self, data: Any) -> str:
        return "ok"

    @Service.API.handle("fail")
    def fail(self, data: Any) -> None:
        raise KeyError("no such frobnicator")

    @Service.API.handle("slow")
    def slow(self, data: Any) -> str:
        self.release.wait(2)
        return "slow"


REMOTE_SCRIPT = '''
from servicefactory import Service

@Service.API.endpoint(port=0)
class Remote(Service.base):
    def loop(self):
        self.sleep(30)

    @Service.API.handle("echo")
    def echo(self, data):
        return {"pid": __import__("os").getpid(), "data": data}

if __name__ == "__main__":
    Remote().run()
'''


@pytest.fixture
def remote() -> Iterator[Remote]:
    with serving(Remote()) as service:
        yield service


def write_stale_record(sf_home, name: str, port: int) -> None:
    registry = LocalRegistry(sf_home)
    registry.ensure()
    record = ServiceRecord(name=name, pid=2 ** 22 + 7, host="127.0.0.1", port=port, create_time=1.0, started=1.0)
    registry.metadata_file(name).write_text(json.dumps(record.to_dict()))


# -- finding the service --

def test_perform_finds_a_port_0_service_in_another_process_through_the_registry(spawn, sf_home):
    service = spawn(args=[PYTHON, "remote.py"], files={"remote.py": REMOTE_SCRIPT})
    record = wait_until(lambda: LocalRegistry(sf_home).lookup("Remote"), timeout=10, message="the registry record")
    assert record.port and record.pid == service.pid
    answer = Remote.perform("echo", {"hello": "world"})
    assert answer == {"pid": service.pid, "data": {"hello": "world"}}


def test_perform_finds_a_service_again_after_it_restarts_on_another_port():
    first = Remote()
    with serving(first):
        assert Remote.perform("echo", 1) == 1
        old_port = first.address[1]
    second = Remote()
    with serving(second):
        assert second.address[1] != old_port
        assert Remote.perform("echo", 2) == 2
    assert second.received == [2]


def test_not_running_without_any_record_raises_service_not_running_quickly():
    started = time.monotonic()
    with pytest.raises(ServiceNotRunning, match="Remote"):
        Remote.perform("echo", 1)
    assert time.monotonic() - started < QUICKLY


def test_not_running_with_a_stale_record_raises_service_not_running_quickly(sf_home):
    write_stale_record(sf_home, "Remote", free_port())
    started = time.monotonic()
    with pytest.raises(ServiceNotRunning):
        Remote.perform("echo", 1)
    assert time.monotonic() - started < QUICKLY


def test_not_running_on_a_fixed_port_raises_service_not_running_quickly():
    @Service.API.endpoint(port=free_port())
    class Fixed(Service.base):
        pass

    started = time.monotonic()
    with pytest.raises(ServiceNotRunning):
        Fixed.perform("anything")
    assert time.monotonic() - started < QUICKLY


def test_not_running_through_a_requests_session_raises_service_not_running_quickly(sf_home):
    write_stale_record(sf_home, "Remote", free_port())
    started = time.monotonic()
    with requests.Session() as session, pytest.raises(ServiceNotRunning):
        Remote.perform("echo", 1, session=session)
    assert time.monotonic() - started < QUICKLY


# -- typed errors --

def test_an_unknown_action_raises_unknown_action(remote):
    with pytest.raises(UnknownAction, match="nope"):
        Remote.perform("nope")


def test_a_failing_handler_raises_action_failed_with_the_remote_type_and_message(remote):
    with pytest.raises(ActionFailed) as caught:
        Remote.perform("fail", {"x": 1})
    assert caught.value.remote_type == "KeyError"
    assert "no such frobnicator" in caught.value.remote_message
    assert caught.value.status == 500


def test_data_that_is_not_json_raises_invalid_data_before_sending(remote):
    with pytest.raises(InvalidData):
        Remote.perform("echo", object())
    assert remote.received == []


def test_a_slow_handler_raises_service_timeout_and_the_next_call_works(remote):
    started = time.monotonic()
    with pytest.raises(ServiceTimeout):
        Remote.perform("slow", timeout=0.3)
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 1.0, f"timeout=0.3 took {elapsed:.2f} s"
    remote.release.set()
    assert Remote.perform("echo", "next") == "next"
    assert Remote.perform("echo", "and the next") == "and the next"


def test_service_timeout_is_also_a_timeout_error():
    assert issubclass(ServiceTimeout, TimeoutError)


def test_every_servicefactory_error_subclasses_service_factory_error():
    errors = [getattr(servicefactory, name) for name in servicefactory.__all__
              if isinstance(getattr(servicefactory, name), type)
              and issubclass(getattr(servicefactory, name), BaseException)]
    assert len(errors) >= 14
    for error in errors:
        assert issubclass(error, ServiceFactoryError), error


def test_every_error_perform_raises_is_caught_as_service_factory_error(remote):
    for action, data in [("nope", None), ("fail", None), ("echo", object())]:
        with pytest.raises(ServiceFactoryError):
            Remote.perform(action, data)
    with pytest.raises(ServiceFactoryError):
        Remote.perform("slow", timeout=0.1)
    remote.release.set()


# -- data fidelity --

@pytest.mark.parametrize("value", [0, "", [], {}, False, 0.0], ids=repr)
def test_falsy_data_arrives_as_itself(remote, value):
    result = Remote.perform("echo", value)
    assert result == value and type(result) is type(value)
    assert remote.received == [value]
    assert type(remote.received[0]) is type(value)


def test_rich_data_round_trips(remote):
    value = {"text": "héllo ✓ \u0000 \"quoted\"", "list": [1, -2.5, None, True, [], {}], "big": 2 ** 62}
    assert Remote.perform("echo", value) == value


def test_a_handler_returning_none_gives_none_and_one_returning_ok_gives_ok(remote):
    assert Remote.perform("nothing") is None
    assert Remote.perform("ok") == "ok"
    with requests.Session() as session:
        assert Remote.perform("nothing", session=session) is None
        assert Remote.perform("ok", session=session) == "ok"


def test_no_data_arrives_as_none(remote):
    Remote.perform("echo")
    assert remote.received == [None]


# -- the transport --

def test_performs_from_one_thread_reuse_one_connection(remote):
    port = remote.address[1]
    Remote.perform("echo", 0)
    pool = client.default._local.pool
    assert len(pool) == 1
    connection = next(iter(pool.values()))
    local_port = connection.sock.getsockname()[1]
    for number in range(1, 30):
        assert Remote.perform("echo", number) == number
        assert list(pool.values()) == [connection]
        assert connection.open
        assert connection.sock.getsockname()[1] == local_port
    ours = [c for c in psutil.Process(os.getpid()).net_connections(kind="tcp")
            if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED]
    assert len(ours) == 1, ours


def test_each_thread_uses_its_own_connection(remote):
    sockets: list[Any] = []

    def call() -> None:
        try:
            Remote.perform("echo", 1)
            sockets.append(next(iter(client.default._local.pool.values())).sock.getsockname())
        finally:
            client.close_connections()

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(set(sockets)) == 3


def test_perform_through_a_requests_session_works(remote):
    with requests.Session() as session:
        assert Remote.perform("echo", {"via": "requests"}, session=session) == {"via": "requests"}
        for value in (0, "", [], {}, False):
            result = Remote.perform("echo", value, session=session)
            assert result == value and type(result) is type(value)
        with pytest.raises(UnknownAction):
            Remote.perform("nope", session=session)
        with pytest.raises(ActionFailed) as caught:
            Remote.perform("fail", session=session)
        assert caught.value.remote_type == "KeyError"
        with pytest.raises(ServiceTimeout):
            Remote.perform("slow", timeout=0.3, session=session)
        remote.release.set()
        assert Remote.perform("echo", "after", session=session) == "after"


def _fake_server(behaviour):
    """A one-shot raw TCP server on a free port; `behaviour(conn, requests_seen)` runs per connection."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    seen: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                behaviour(conn, seen)

    threading.Thread(target=serve, daemon=True).start()
    return listener, seen


def _read_request(conn) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    return data


def test_a_request_the_server_received_is_never_sent_twice():
    """The server reads the POST and closes without answering: perform fails, it does not resend."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n1\n"

    def behaviour(conn, seen):
        while True:
            request = _read_request(conn)
            if not request:
                return
            seen.append(request)
            if len(seen) == 2:
                return  # got the second POST, and hang up without answering it
            conn.sendall(answer)

    listener, seen = _fake_server(behaviour)
    try:
        address = listener.getsockname()
        assert client.perform("Fake", "once", 1, fallback=address) == 1
        with pytest.raises(ServiceFactoryError, match="may or may not have run"):
            client.perform("Fake", "once", 2, fallback=address)
        time.sleep(0.2)
        assert len(seen) == 2
    finally:
        listener.close()
        client.close_connections()


def test_a_malformed_content_length_in_an_answer_is_a_protocol_error():
    def behaviour(conn, seen):
        _read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1e9\r\n\r\n")

    listener, _ = _fake_server(behaviour)
    try:
        with pytest.raises(ProtocolError):
            client.perform("Fake", "bad", fallback=listener.getsockname(), timeout=2)
    finally:
        listener.close()
        client.close_connections()


@pytest.mark.parametrize("action", ["日本", "a b", "x\r\nX-Injected: 1", "../up", ""])
def test_an_invalid_action_name_is_refused_before_anything_is_sent(action):
    with pytest.raises(InvalidData):
        client.perform("Anything", action, fallback=("127.0.0.1", 9))


def test_an_interrupted_call_does_not_leave_its_half_read_connection_for_the_next_call(remote):
    """A BaseException (a stop interrupting the loop) mid-call must not desynchronise the pool."""
    import signal as signal_module
    Remote.perform("echo", "warm")

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal_module.signal(signal_module.SIGALRM, interrupt)
    try:
        signal_module.setitimer(signal_module.ITIMER_REAL, 0.2)
        with pytest.raises(KeyboardInterrupt):
            Remote.perform("slow", 1.0, timeout=5)
    finally:
        signal_module.setitimer(signal_module.ITIMER_REAL, 0)
        signal_module.signal(signal_module.SIGALRM, previous)
    assert Remote.perform("echo", "next") == "next"
