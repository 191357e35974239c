"""The service lifecycle: startup failures, per-class handlers, loop pacing, stop, finalize, concurrency, logging."""
from __future__ import annotations

import contextlib
import http.client
import logging
import signal
import socket
import sys
import threading
import time
from typing import Any, Iterator

import pytest

from support import PYTHON, free_port, wait_until
from servicefactory import AddressInUse, Service, UnknownAction
from servicefactory.http import client
from servicefactory.registry.local import LocalRegistry
from servicefactory.testing import running


@pytest.fixture(autouse=True)
def _close_client_connections() -> Iterator[None]:
    yield
    client.close_connections()


@contextlib.contextmanager
def serving(*services: Service.base) -> Iterator[None]:
    """Run `services` for the block; this thread's client connections are closed before they stop."""
    with contextlib.ExitStack() as stack:
        for service in services:
            stack.enter_context(running(service))
        try:
            yield
        finally:
            client.close_connections()


class ServiceThread:
    """run() in a background thread of this process, joined with a deadline."""

    def __init__(self, service: Service.base) -> None:
        self.service = service
        self.error: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.service.run()
        except BaseException as exc:
            self.error.append(exc)

    def start(self) -> "ServiceThread":
        self.thread.start()
        return self

    def wait_ready(self) -> "ServiceThread":
        wait_until(lambda: self.service._servicefactory_runtime is not None
                   and self.service._servicefactory_runtime.ready.is_set(), timeout=5, message="service ready")
        return self

    def stop_and_join(self, timeout: float = 5.0) -> float:
        started = time.monotonic()
        self.service.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "run() did not return"
        return time.monotonic() - started


# -- startup: the port is taken --

SERVICE_ON_PORT = '''
import time
from servicefactory import Service

@Service.API.endpoint(port={port})
class {name}(Service.base):
    def loop(self):
        print("loop ran", flush=True)
        time.sleep(0.1)

if __name__ == "__main__":
    {name}().run()
'''


def test_a_second_service_on_a_taken_port_exits_1_with_one_line_naming_the_address(spawn):
    port = free_port()
    first = spawn(args=[PYTHON, "first.py"], files={"first.py": SERVICE_ON_PORT.format(port=port, name="First")})
    first.wait_for("loop ran")
    second = spawn(args=[PYTHON, "second.py"], files={"second.py": SERVICE_ON_PORT.format(port=port, name="Second")})
    assert second.wait(timeout=10) == 1, second.output
    assert len(second.lines) == 1, second.output
    assert f"127.0.0.1:{port}" in second.lines[0]
    assert "Traceback" not in second.output
    assert "loop ran" not in second.output
    assert first.popen.poll() is None  # the first one is unharmed


def test_run_raises_address_in_use_and_the_loop_never_runs(sf_home, monkeypatch):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # run() may install its one-line reporter

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]

        @Service.API.endpoint(port=port)
        class Blocked(Service.base):
            loop_ran = False

            def loop(self) -> None:
                type(self).loop_ran = True
                self.stop()

        with pytest.raises(AddressInUse, match=f"127.0.0.1:{port}"):
            Blocked().run()
    assert Blocked.loop_ran is False
    registry = LocalRegistry(sf_home)
    assert registry.lookup("Blocked") is None
    assert not registry.is_held("Blocked")


# -- handlers belong to their class --

@Service.API.endpoint(port=0)
class Alpha(Service.base):
    def loop(self) -> None:
        self.sleep(30)

    @Service.API.handle("same")
    def same(self, data: Any) -> str:
        return "alpha"


@Service.API.endpoint(port=0)
class Beta(Service.base):
    def loop(self) -> None:
        self.sleep(30)

    @Service.API.handle("same")
    def same(self, data: Any) -> str:
        return "beta"


@Service.API.endpoint(port=0)
class Parent(Service.base):
    def loop(self) -> None:
        self.sleep(30)

    @Service.API.handle("same")
    def same(self, data: Any) -> str:
        return "parent"

    @Service.API.handle("inherited")
    def inherited(self, data: Any) -> str:
        return f"inherited by {type(self).__name__}"


class Child(Parent):
    @Service.API.handle("same")
    def child_same(self, data: Any) -> str:
        return "child"

    @Service.API.handle("extra")
    def extra(self, data: Any) -> str:
        return "child only"


def test_two_service_classes_in_one_process_each_answer_their_own_action():
    with serving(Alpha(), Beta()):
        for _ in range(3):
            assert Alpha.perform("same") == "alpha"
            assert Beta.perform("same") == "beta"


def test_a_subclass_inherits_handlers_and_overrides_some_while_the_parent_keeps_its_own():
    with serving(Parent(), Child()):
        assert Child.perform("same") == "child"
        assert Child.perform("inherited") == "inherited by Child"
        assert Child.perform("extra") == "child only"
        assert Parent.perform("same") == "parent"
        assert Parent.perform("inherited") == "inherited by Parent"
        with pytest.raises(UnknownAction):
            Parent.perform("extra")


# -- the loop --

@Service.API.endpoint(port=0)
class Flaky(Service.base):
    def __init__(self) -> None:
        self.failures_left = 2

    def loop(self) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise RuntimeError(f"tick failed, {self.failures_left} failures left")
        self.sleep(0.01)


def test_a_failing_loop_is_logged_with_traceback_counted_and_called_again(caplog):
    caplog.set_level(logging.INFO, logger="servicefactory")
    with serving(Flaky()):
        first = wait_until(lambda: (lambda h: h if h["iterations"] >= 3 else None)(Flaky.perform("health")),
                           timeout=8, message="the loop to run again after its failures")
        time.sleep(0.2)
        second = Flaky.perform("health")
    assert first["errors"] == second["errors"] == 2
    assert second["iterations"] > first["iterations"]
    assert "RuntimeError" in second["last_error"]
    failures = [record for record in caplog.records
                if record.levelno == logging.ERROR and record.name.endswith("Flaky") and record.exc_info]
    assert len(failures) == 2
    assert "Traceback" in caplog.text
    assert "tick failed, 0 failures left" in caplog.text


@Service.API.endpoint(port=0)
class Sleeper(Service.base):
    def __init__(self) -> None:
        self.sleeping = threading.Event()
        self.slept: bool | None = None

    def loop(self) -> None:
        self.sleeping.set()
        self.slept = self.sleep(30)


def test_self_sleep_returns_at_once_when_the_service_is_stopped():
    service = Sleeper()
    runner = ServiceThread(service).start().wait_ready()
    assert service.sleeping.wait(5)
    elapsed = runner.stop_and_join()
    assert elapsed < 0.5, f"stop() took {elapsed:.2f} s while the loop was in self.sleep(30)"
    assert service.slept is False
    assert not runner.error


def test_self_sleep_returns_true_when_the_time_is_up():
    class Napper(Service.base):
        def loop(self) -> None:
            self.results = (self.sleep(0.01), self.sleep(0))
            self.stop()

    service = Napper()
    ServiceThread(service).start().thread.join(5)
    assert service.results == (True, True)


@Service.API.endpoint(port=0)
class Finalizing(Service.base):
    def __init__(self) -> None:
        self.finalized: list[str] = []
        self.port = 0
        self.stopping_in_finalize: bool | None = None

    def loop(self) -> None:
        self.port = self.address[1]
        self.sleep(30)

    def finalize(self) -> None:
        self.stopping_in_finalize = self.stopping
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            self.finalized.append("API still answering")
        except ConnectionRefusedError:
            self.finalized.append("refused")


def test_finalize_runs_exactly_once_after_the_api_stopped():
    service = Finalizing()
    with serving(service):
        wait_until(lambda: service.port, timeout=5, message="the loop to start")
        assert Finalizing.perform("shutdown") is None
        service.stop()
        service.stop()
    assert service.finalized == ["refused"]
    assert service.stopping_in_finalize is True


def test_an_exception_in_finalize_is_logged_and_run_still_returns(caplog):
    class Broken(Service.base):
        def loop(self) -> None:
            self.stop()

        def finalize(self) -> None:
            raise RuntimeError("cannot release the frobnicator")

    runner = ServiceThread(Broken()).start()
    runner.thread.join(5)
    assert not runner.thread.is_alive()
    assert not runner.error
    failures = [record for record in caplog.records if record.exc_info and "finalize" in record.getMessage()]
    assert len(failures) == 1
    assert "cannot release the frobnicator" in caplog.text


def test_stopping_right_after_a_request_closes_the_servers_end_of_the_connection():
    """A keep-alive connection whose request just finished must not outlive the stopped server (no fd leak)."""
    request = b"POST /same HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\r\n"
    leaked = []
    for _ in range(3):
        service = Alpha()
        with running(service):
            server = service._servicefactory_runtime.server
            sock = socket.create_connection(service.address, timeout=2)
            sock.sendall(request)
            response = http.client.HTTPResponse(sock)
            response.begin()
            assert response.status == 200 and response.read() == b'"alpha"\n'
            response.close()
            # leave the block at once, while the server may still hold the connection for a next request
        try:
            sock.settimeout(0.5)
            try:
                closed = sock.recv(1) == b""
            except (socket.timeout, ConnectionResetError) as exc:
                closed = isinstance(exc, ConnectionResetError)
            if not closed:
                leaked.extend(repr(conn.sock) for conn in server._returned)
        finally:
            sock.close()
            for conn in list(server._returned):  # clean up what the server left, so later tests stay quiet
                conn.sock.close()
    assert not leaked, f"the stopped server still holds {len(leaked)} open connection(s): {leaked}"


DOUBLE_INTERRUPT = '''
import time
from servicefactory import Service

@Service.API.endpoint(port=0)
class Stubborn(Service.base):
    def loop(self):
        print("looping", flush=True)
        time.sleep(5)

    def finalize(self):
        print("finalize started", flush=True)
        time.sleep(0.5)
        print("finalize done", flush=True)

if __name__ == "__main__":
    Stubborn().run()
'''


def test_a_second_ctrl_c_during_finalize_does_not_cut_it_short(spawn):
    service = spawn(args=[PYTHON, "stubborn.py"], files={"stubborn.py": DOUBLE_INTERRUPT})
    service.wait_for("^looping$")
    service.signal(signal.SIGINT)
    service.wait_for("^finalize started$", timeout=3)
    service.signal(signal.SIGINT)
    assert service.wait(timeout=5) == 0, service.output
    assert service.lines.count("finalize started") == 1
    assert "finalize done" in service.lines
    assert "Traceback" not in service.output


@Service.API.endpoint(port=0)
class Guarded(Service.base):
    def __init__(self) -> None:
        self.busy = False
        self.idle_sleep = 0.005
        self.in_long_sleep = threading.Event()
        self.long_sleep = False

    def loop(self) -> None:
        self.busy = True
        time.sleep(0.02)  # work that must not overlap an exclusive handler
        self.busy = False
        if self.long_sleep:
            self.in_long_sleep.set()
            self.sleep(10)
        else:
            self.sleep(self.idle_sleep)

    @Service.API.handle("exclusive", exclusive=True)
    def exclusive(self, data: Any) -> bool:
        seen = self.busy
        time.sleep(0.002)
        return seen or self.busy

    @Service.API.handle("shared")
    def shared(self, data: Any) -> bool:
        return self.busy


def test_an_exclusive_handler_never_runs_while_loop_runs():
    seen_busy: list[bool] = []
    control: list[bool] = []

    def call(action: str, into: list[bool], times: int) -> None:
        try:
            for _ in range(times):
                into.append(Guarded.perform(action))
        finally:
            client.close_connections()

    def watch(into: list[bool], deadline: float) -> None:
        # the control: a non-exclusive handler does see the loop at work, so the check below can fail
        try:
            while time.monotonic() < deadline and not any(into):
                into.append(Guarded.perform("shared"))
        finally:
            client.close_connections()

    with serving(Guarded()):
        threads = [threading.Thread(target=call, args=("exclusive", seen_busy, 25)) for _ in range(4)]
        threads.append(threading.Thread(target=watch, args=(control, time.monotonic() + 10)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert not any(thread.is_alive() for thread in threads)
    assert len(seen_busy) == 100
    assert not any(seen_busy), f"{sum(seen_busy)} exclusive calls overlapped loop()"
    assert any(control), "the non-exclusive control never saw the loop at work: the test proves nothing"


def test_an_exclusive_handler_runs_while_the_loop_is_in_self_sleep():
    service = Guarded()
    service.long_sleep = True
    with serving(service):
        assert service.in_long_sleep.wait(5)
        started = time.monotonic()
        assert Guarded.perform("exclusive", timeout=3) is False
        assert time.monotonic() - started < 1.0


# -- concurrency --

@Service.API.endpoint(port=0)
class Ticker(Service.base):
    TICK = 0.05

    def __init__(self) -> None:
        self.ticks = 0

    def loop(self) -> None:
        self.ticks += 1
        self.sleep(self.TICK)

    @Service.API.handle("add")
    def add(self, data: Any) -> int:
        return data["a"] + data["b"]


def test_eight_clients_get_correct_answers_while_the_loop_keeps_its_pace():
    threads_count, calls = 8, 200
    wrong: list[Any] = []
    failures: list[BaseException] = []
    done = [0]

    def hammer(number: int) -> None:
        try:
            for index in range(calls):
                result = Ticker.perform("add", {"a": index, "b": number * 1000})
                if result != index + number * 1000:
                    wrong.append((number, index, result))
                done[0] += 1
        except BaseException as exc:
            failures.append(exc)
        finally:
            client.close_connections()

    service = Ticker()
    with serving(service):
        Ticker.perform("add", {"a": 0, "b": 0})
        threads = [threading.Thread(target=hammer, args=(number,)) for number in range(threads_count)]
        ticks_before, started = service.ticks, time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        elapsed = time.monotonic() - started
        ticks = service.ticks - ticks_before
        health = Ticker.perform("health")
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert wrong == []
    assert done[0] == threads_count * calls
    assert health["errors"] == 0
    expected = elapsed / Ticker.TICK
    assert expected / 2 - 1 <= ticks <= expected + 2, f"{ticks} ticks in {elapsed:.2f} s, expected about {expected:.0f}"


# -- logging --

LOGGING_SERVICE = '''
import logging, sys
{setup}
from servicefactory import Service

class Chatty(Service.base):
    def __init__(self):
        self.count = 0

    def loop(self):
        self.count += 1
        self.log("tick %s of %s", self.count, 2)
        if self.count == 2:
            self.stop()

if __name__ == "__main__":
    Chatty().run()
    print("package handlers", logging.getLogger("servicefactory").handlers)
    print("root handlers", len(logging.getLogger().handlers))
'''


def test_self_log_writes_name_colon_message(spawn):
    proc = spawn(args=[PYTHON, "chatty.py"], files={"chatty.py": LOGGING_SERVICE.format(setup="")})
    assert proc.wait(timeout=10) == 0, proc.output
    assert proc.lines[:3] == ["Chatty : tick 1 of 2", "Chatty : tick 2 of 2", "Chatty : shutdown requested"]


def test_a_service_leaves_logging_alone_when_the_application_configured_it(spawn):
    setup = 'logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="APP|%(name)s|%(message)s")'
    proc = spawn(args=[PYTHON, "chatty.py"], files={"chatty.py": LOGGING_SERVICE.format(setup=setup)})
    assert proc.wait(timeout=10) == 0, proc.output
    assert "APP|servicefactory.service.Chatty|tick 1 of 2" in proc.lines
    assert "APP|servicefactory.service.Chatty|tick 2 of 2" in proc.lines
    assert not any(line.startswith("Chatty : ") for line in proc.lines), proc.output
    assert "package handlers []" in proc.lines
    assert "root handlers 1" in proc.lines


BUSY_THEN_BLOCKED = '''
import time
from servicefactory import Service

class Worker(Service.base):
    def loop(self):
        if open("mode").read() == "busy":
            print("start", flush=True)
            started = time.perf_counter()
            while time.perf_counter() - started < 0.03:  # 30 ms of computing, calling functions
                sum(range(100))
            print("iteration complete", flush=True)
        else:
            print("blocking", flush=True)
            time.sleep(30)

if __name__ == "__main__":
    Worker().run()
'''


@contextlib.contextmanager
def cpu_hogs(count: int) -> Iterator[None]:
    """Processes that keep every CPU busy: a loaded machine, where a computing thread waits for a CPU."""
    import subprocess
    hogs = [subprocess.Popen(["taskset", "-c", "0", PYTHON, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait(timeout=5)


@pytest.mark.parametrize("mode", ["busy", "blocked", "busy-on-a-loaded-machine"])
def test_a_busy_iteration_gets_to_finish_and_a_blocked_one_is_cut_short(spawn, mode):
    loaded = mode.endswith("loaded-machine")
    mode = mode.split("-")[0]
    # loaded: the service and the hogs share one CPU, where its threads often wait for their turn
    pin = ["taskset", "-c", "0"] if loaded else []
    service = spawn(args=[*pin, PYTHON, "worker.py"], files={"worker.py": BUSY_THEN_BLOCKED, "mode": mode})
    service.wait_for("iteration complete" if mode == "busy" else "blocking")
    with cpu_hogs(4 if loaded else 0):
        if loaded:
            time.sleep(0.3)  # let the hogs take the CPUs: the stop must come while the loop waits for one
        started = time.monotonic()
        service.signal(signal.SIGTERM)
        assert service.wait(timeout=10) == 0, service.output
    elapsed = time.monotonic() - started
    assert "Traceback" not in service.output
    if mode == "busy":
        # every iteration that started also completed: none was cut short mid-computation
        # (print writes "start" and its newline separately: another thread's log line may fall between)
        starts = sum(line.startswith("start") for line in service.lines)
        assert starts == service.lines.count("iteration complete"), service.lines[-4:]
    else:
        assert elapsed < 1.0
