"""A call never reaches the wrong service: not through a stale record, a warm cache, or a fixed port.

Every call names its service (`Servicefactory-Service`); a service of another name answers 421
and runs nothing. Each test counts the handler's runs in files the services write, from outside.
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import requests

from support import PYTHON, exchange, free_port, wait_until
from servicefactory import ServiceNotRunning
from servicefactory.http import client
from servicefactory.registry.local import LocalRegistry


# Each service appends one line per run of `action` to runs-<its name>.txt in the current directory.
SERVICES = '''
import os, sys
from servicefactory import Service


class Counting(Service.base):
    def loop(self):
        self.sleep(30)

    @Service.API.handle("action")
    def action(self, data):
        with open(f"runs-{self._servicefactory_runtime.name}.txt", "a") as handle:
            handle.write(f"{os.getpid()} {data}\\n")
        return os.getpid()


@Service.API.endpoint(port=0)
class Test(Counting):
    pass


@Service.API.endpoint(port=0)
class Other(Counting):
    pass


if __name__ == "__main__":
    cls = {"Test": Test, "Other": Other}[sys.argv[1]]
    port = int(sys.argv[2]) if len(sys.argv) > 2 else None
    cls().run(port=port)
'''


def runs(directory: Path, name: str) -> list[str]:
    path = directory / f"runs-{name}.txt"
    return path.read_text().splitlines() if path.exists() else []


def start(spawn, name: str, port: int | None = None):
    args = [PYTHON, "services.py", name] + ([str(port)] if port is not None else [])
    return spawn(args=args, files={"services.py": SERVICES})


def record_of(sf_home: Path, name: str, pid: int):
    return wait_until(lambda: (lambda r: r if r is not None and r.pid == pid and r.port else None)(
        LocalRegistry(sf_home).lookup(name)), timeout=15, message=f"{name}'s record with pid {pid}")


def kill_9(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def test_perform_of_a_killed_service_whose_port_another_took_exits_3_and_runs_nothing(sf, spawn, tmp_path, sf_home):
    """The operator's report: Test killed -9, Other run on Test's port; perform Test must not reach Other."""
    test = start(spawn, "Test")
    port = record_of(sf_home, "Test", test.pid).port
    assert sf("perform", "Test", "action", '"before"').returncode == 0
    kill_9(test)
    other = sf("run", "services.py:Other", "--port", str(port), "--daemon")
    assert other.returncode == 0, other.stdout + other.stderr
    assert f"127.0.0.1:{port}" in other.stdout
    try:
        for action, data in (("action", '"x"'), ("shutdown", None)):
            result = sf("perform", "Test", action, *([data] if data else []))
            assert result.returncode == 3, (action, result.stdout, result.stderr)
            assert "Test" in result.stderr and "Traceback" not in result.stderr
        assert runs(tmp_path, "Other") == []
        # Other was neither run nor shut down: it still answers its own name
        assert json.loads(sf("perform", "Other", "action", '"mine"').stdout) > 0
        assert len(runs(tmp_path, "Other")) == 1
    finally:
        sf("stop", "Other")
    assert runs(tmp_path, "Test") == [f"{test.pid} before"]


def test_a_warm_address_cache_after_a_restart_on_a_new_port_reaches_the_new_instance(spawn, tmp_path, sf_home):
    """The Python client cached Test's old port; Other took it and Test came back elsewhere."""
    first = start(spawn, "Test")
    old_port = record_of(sf_home, "Test", first.pid).port
    assert client.perform("Test", "action", "warm") == first.pid  # the address is now cached
    client.close_connections()
    kill_9(first)
    other = start(spawn, "Other", old_port)
    record_of(sf_home, "Other", other.pid)
    second = start(spawn, "Test")
    new_port = record_of(sf_home, "Test", second.pid).port
    assert new_port != old_port
    assert client.perform("Test", "action", "after") == second.pid
    assert runs(tmp_path, "Other") == []
    assert runs(tmp_path, "Test") == [f"{first.pid} warm", f"{second.pid} after"]


def test_a_warm_cache_pointing_at_another_service_raises_not_running_and_runs_nothing(spawn, tmp_path, sf_home):
    first = start(spawn, "Test")
    old_port = record_of(sf_home, "Test", first.pid).port
    assert client.perform("Test", "action", "warm") == first.pid
    kill_9(first)
    other = start(spawn, "Other", old_port)
    record_of(sf_home, "Other", other.pid)
    for session in (None, requests.Session()):
        with pytest.raises(ServiceNotRunning):
            client.perform("Test", "action", "lost", session=session)
        client.default._addresses[(str(sf_home), "Test")] = ("127.0.0.1", old_port)  # warm again, as before
    assert runs(tmp_path, "Other") == []


def test_a_fixed_port_fallback_taken_by_another_service_raises_not_running(spawn, tmp_path, sf_home):
    """A class with a fixed port and no record (the seed's case) falls back to its port: checked too."""
    port = free_port()
    other = start(spawn, "Other", port)
    record_of(sf_home, "Other", other.pid)
    with pytest.raises(ServiceNotRunning, match="another service"):
        client.perform("Test", "action", "lost", fallback=("127.0.0.1", port))
    assert runs(tmp_path, "Other") == []


def test_the_server_answers_421_to_a_call_naming_another_service_and_accepts_no_name(spawn, tmp_path, sf_home):
    other = start(spawn, "Other")
    port = record_of(sf_home, "Other", other.pid).port
    request = ("POST /action HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
               "{extra}Content-Length: 3\r\nConnection: close\r\n\r\n\"x\"")
    status, _, body = exchange(port, request.format(port=port, extra="Servicefactory-Service: Test\r\n").encode())
    assert status == 421
    assert json.loads(body)["error"]["type"] == "Misdirected"
    assert runs(tmp_path, "Other") == []
    status, _, _ = exchange(port, request.format(port=port, extra="Servicefactory-Service: Other\r\n").encode())
    assert status == 200
    status, _, _ = exchange(port, request.format(port=port, extra="").encode())  # curl sends no name
    assert status == 200
    assert len(runs(tmp_path, "Other")) == 2


def test_a_record_whose_process_has_exited_is_never_used(spawn, tmp_path, sf_home):
    """Even with nothing else on its port: the client says the record's pid has exited, without connecting."""
    test = start(spawn, "Test")
    record_of(sf_home, "Test", test.pid)
    kill_9(test)
    with pytest.raises(ServiceNotRunning, match="exited"):
        client.perform("Test", "action", "late")
    assert runs(tmp_path, "Test") == []


def test_the_werkzeug_backend_answers_421_too(tmp_path):
    from servicefactory import Service
    from servicefactory.testing import running

    ran = []

    @Service.API.endpoint(port=0, server="werkzeug")
    class Served(Service.base):
        def loop(self):
            self.sleep(30)

        @Service.API.handle("action")
        def action(self, data):
            ran.append(data)

    with running(Served()) as service:
        port = service.address[1]
        request = (f"POST /action HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                   f"Servicefactory-Service: Test\r\nContent-Length: 3\r\nConnection: close\r\n\r\n\"x\"").encode()
        status, _, _ = exchange(port, request)
        assert status == 421
        assert Served.perform("action", "mine") is None
    assert ran == ["mine"]
