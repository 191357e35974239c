"""Hostile input, idle and slow clients, tokens, and faults: the service survives, nothing hangs."""
from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from servicefactory import Service, TokenRequired, Unauthorized
from servicefactory.registry.local import LocalRegistry, write_atomically
from servicefactory.testing import running

from support import wait_until

CLI = [sys.executable, "-m", "servicefactory"]


@Service.API.endpoint(port=0, max_body=4096)
class Target(Service.base):
    def __init__(self):
        self.ticks = 0

    def loop(self):
        self.ticks += 1
        self.sleep(0.02)

    @Service.API.handle("echo")
    def echo(self, data):
        return data

    @Service.API.handle("ticks")
    def get_ticks(self, data):
        return self.ticks

    @Service.API.handle("boom")
    def boom(self, data):
        raise ValueError("handler raised on purpose")


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """One service shared by the fuzzing tests (hypothesis runs many examples per test)."""
    registry = LocalRegistry(tmp_path_factory.mktemp("home"))
    with running(Target(), registry=registry) as service:
        yield service


def _raw(address, payload: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


def _status(response: bytes) -> int | None:
    if not response.startswith(b"HTTP/1."):
        return None
    return int(response.split(b" ", 2)[1])


def _healthy(service) -> None:
    conn = http.client.HTTPConnection(*service.address, timeout=5)
    conn.request("POST", "/echo", body=b'{"still": "fine"}', headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read()) == {"still": "fine"}
    conn.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_get_a_5xx_and_the_service_answers_afterwards(target, garbage):
    status = _status(_raw(target.address, garbage))
    assert status is None or status < 500, status
    _healthy(target)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda children: st.lists(children) | st.dictionaries(st.text(), children),
                           max_leaves=30)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=json_values, action=st.text(max_size=20), method=st.sampled_from(["GET", "POST", "PUT", "OPTIONS"]))
def test_arbitrary_json_and_action_names_never_get_a_5xx_unless_the_handler_raised(target, value, action, method):
    body = json.dumps(value).encode()
    path = "/" + "".join(ch if ch.isascii() and ch.isprintable() and ch not in " ?#%" else "_" for ch in action)
    conn = http.client.HTTPConnection(*target.address, timeout=5)
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    conn.close()
    if path == "/boom" and method == "POST":  # actions are POST only
        assert response.status == 500
    else:
        assert response.status < 500, (path, method, response.status)
    # infinities and lone surrogates are refused with 400 (JSON has no such values)
    refused = b"Infinity" in body or re.search(rb"\\u[dD][89a-fA-F]", body)
    if path == "/echo" and method == "POST" and len(body) <= 4096 and not refused:
        assert response.status == 200
    _healthy(target)


def test_a_huge_header_block_is_refused_and_the_service_goes_on(target):
    payload = b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
    response = _raw(target.address, payload)
    assert _status(response) == 431
    _healthy(target)


def test_too_many_header_fields_are_refused(target):
    headers = b"".join(b"X-%d: v\r\n" % index for index in range(500))
    response = _raw(target.address, b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n")
    assert _status(response) == 431
    _healthy(target)


def test_a_lying_content_length_is_refused_without_reading_the_body(target):
    started = time.monotonic()
    response = _raw(target.address, b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                                    b"Content-Length: 10000000000\r\n\r\n")
    assert _status(response) == 413
    assert time.monotonic() - started < 2.0
    _healthy(target)


def test_an_oversized_chunked_body_is_refused_while_streaming(target):
    chunk = b"1000\r\n" + b"1" * 0x1000 + b"\r\n"
    payload = (b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 3 + b"0\r\n\r\n")
    assert _status(_raw(target.address, payload)) == 413
    _healthy(target)


def test_content_length_with_transfer_encoding_is_refused_as_smuggling(target):
    payload = (b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert _status(_raw(target.address, payload)) == 400


def test_hundreds_of_idle_and_slow_clients_block_neither_calls_nor_the_loop_nor_shutdown(spawn):
    service = spawn(files={"svc.py": """
        from servicefactory import Service

        @Service.API.endpoint(port=0)
        class Slow(Service.base):
            def __init__(self):
                self.ticks = 0
            def loop(self):
                self.ticks += 1
                self.sleep(0.05)
            def finalize(self):
                self.log("finalized")
            @Service.API.handle("ticks")
            def get_ticks(self, data):
                return self.ticks

        if __name__ == "__main__":
            Slow().run()
        """}, args=[sys.executable, "svc.py"])
    from servicefactory.http import client
    wait_until(lambda: _try(lambda: client.perform("Slow", "ticks", timeout=1)) is not None, message="Slow ready")
    address = client.resolve("Slow")
    hogs = []
    try:
        for index in range(400):
            sock = socket.create_connection(address, timeout=5)
            if index % 2:
                sock.sendall(b"POST /ticks HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # never finished
            hogs.append(sock)
        before = client.perform("Slow", "ticks", timeout=2)
        started = time.monotonic()
        for _ in range(20):
            client.perform("Slow", "ticks", timeout=2)
        assert time.monotonic() - started < 2.0
        time.sleep(0.5)
        after = client.perform("Slow", "ticks", timeout=2)
        assert after - before >= 5  # the loop kept its pace (about 10 ticks in 0.5 s + the calls)
        stop_started = time.monotonic()
        client.perform("Slow", "shutdown", timeout=2)
        assert service.wait(timeout=5) == 0
        assert time.monotonic() - stop_started < 3.0
        assert "Slow : finalized" in service.output
    finally:
        for sock in hogs:
            sock.close()


def _try(function):
    try:
        return function()
    except Exception:
        return None


def test_binding_a_public_address_without_a_token_is_refused():
    @Service.API.endpoint(host="0.0.0.0", port=0)
    class Exposed(Service.base):
        pass

    with pytest.raises(TokenRequired, match="SERVICEFACTORY_TOKEN"):
        Exposed().run()


def test_with_a_token_requests_without_it_get_401_and_perform_sends_it(monkeypatch):
    monkeypatch.setenv("SERVICEFACTORY_TOKEN", "s3cret-token-of-enough-entropy-Xq7vR2kP9wZ")

    @Service.API.endpoint(port=0, require_token=True)
    class Guarded(Service.base):
        @Service.API.handle("secret")
        def secret(self, data):
            return "the secret"

    with running(Guarded()) as service:
        conn = http.client.HTTPConnection(*service.address, timeout=5)
        conn.request("POST", "/secret", headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 401
        response.read()
        conn.request("POST", "/secret", headers={"Authorization": "Bearer wrong", "Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 401
        response.read()
        conn.close()
        assert Guarded.perform("secret") == "the secret"
        from servicefactory.http import client
        with pytest.raises(Unauthorized):
            client.perform("Guarded", "secret", token="wrong")


def test_a_state_directory_owned_by_another_user_is_refused(tmp_path):
    home = tmp_path / "theirs"
    home.mkdir(mode=0o700)
    os.chown(home, 12345, 12345)
    result = subprocess.run(CLI + ["status"], env=dict(os.environ, SERVICEFACTORY_HOME=str(home)),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 10
    assert "owned by uid 12345" in result.stderr and "Traceback" not in result.stderr


def test_a_state_directory_writable_by_others_is_refused(tmp_path):
    home = tmp_path / "open"
    home.mkdir()
    home.chmod(0o777)
    result = subprocess.run(CLI + ["status"], env=dict(os.environ, SERVICEFACTORY_HOME=str(home)),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 10 and "writable by others" in result.stderr


def test_an_interrupted_metadata_write_leaves_the_old_file_and_no_debris(tmp_path, monkeypatch):
    path = tmp_path / "Svc.json"
    write_atomically(path, b'{"name": "Svc", "pid": 1}')

    def fail(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError):
        write_atomically(path, b'{"name": "Svc", "pid": 2, "port": 99' + b" " * 100_000)
    assert json.loads(path.read_bytes()) == {"name": "Svc", "pid": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Svc.json"]


def test_a_half_written_metadata_file_is_never_read_as_valid(sf_home):
    registry = LocalRegistry()
    registry.ensure()
    registry.metadata_file("Half").write_text('{"name": "Half", "pid": 12')
    assert registry.lookup("Half") is None
    result = subprocess.run(CLI + ["status", "Half", "--json"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 3, result.stderr
    assert json.loads(result.stdout)[0]["state"] == "stale"
    result = subprocess.run(CLI + ["perform", "Half", "health"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 3 and "Traceback" not in result.stderr


SLEEPER = """
import time
from servicefactory import Service

@Service.API.endpoint(port=0)
class Sleeper(Service.base):
    def loop(self):
        time.sleep(30)
    def finalize(self):
        self.log("finalizing")
        time.sleep(float(open("finalize_seconds").read()))

if __name__ == "__main__":
    Sleeper().run()
"""


def _start_standalone(spawn, finalize_seconds: float):
    from servicefactory.http import client
    proc = spawn(files={"sleeper.py": SLEEPER, "finalize_seconds": str(finalize_seconds)},
                 args=[sys.executable, "sleeper.py"])
    wait_until(lambda: _try(lambda: client.perform("Sleeper", "health", timeout=1)), message="Sleeper ready")
    return proc


def test_a_sigstopped_service_is_killed_after_the_stop_timeout(spawn):
    proc = _start_standalone(spawn, 0)
    os.kill(proc.pid, signal.SIGSTOP)
    started = time.monotonic()
    result = subprocess.run(CLI + ["stop", "Sleeper", "--timeout", "1"], capture_output=True, text=True, timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "killed" in result.stderr and "warning" in result.stderr
    assert elapsed < 12  # 1 s of timeout, the rest a net for a loaded machine's slow CLI start
    assert proc.wait(timeout=5) == -signal.SIGKILL
    assert not (Path(os.environ["SERVICEFACTORY_HOME"]) / "Sleeper.pid").exists()


def test_a_hanging_finalize_cannot_make_stop_hang(spawn):
    proc = _start_standalone(spawn, 60)
    started = time.monotonic()
    result = subprocess.run(CLI + ["stop", "Sleeper", "--timeout", "1.5"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0
    assert "killed" in result.stderr
    assert time.monotonic() - started < 12  # finalize hangs 60 s; 12 s is a loaded machine's net
    assert proc.wait(timeout=5) == -signal.SIGKILL
    assert "Sleeper : finalizing" in proc.output


def test_stop_returns_at_once_when_the_service_is_killed_while_the_cli_waits(spawn):
    proc = _start_standalone(spawn, 60)
    stopper = subprocess.Popen(CLI + ["stop", "Sleeper", "--timeout", "30"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        proc.wait_for("Sleeper : finalizing")
        time.sleep(0.2)
        started = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        out, err = stopper.communicate(timeout=10)
        assert time.monotonic() - started < 2.0
        assert stopper.returncode == 0, err
        assert "Sleeper stopped" in out
    finally:
        stopper.kill()
        stopper.wait(5)


def test_a_full_disk_for_the_log_does_not_stop_the_service(tmp_path):
    module = tmp_path / "chatty.py"
    module.write_text(
        "from servicefactory import Service\n"
        "@Service.API.endpoint(port=0)\n"
        "class Chatty(Service.base):\n"
        "    def loop(self):\n"
        "        self.log('x' * 200)\n"
        "        self.sleep(0.01)\n")
    run = subprocess.run(CLI + ["run", "chatty.py", "--daemon", "--log-file", "/dev/full"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    try:
        assert run.returncode == 0, run.stderr
        time.sleep(0.5)
        result = subprocess.run(CLI + ["perform", "Chatty", "health"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["iterations"] > 5
    finally:
        subprocess.run(CLI + ["stop", "--all", "--timeout", "3"], capture_output=True, timeout=60)


def test_deleting_the_state_directory_leaves_services_running_and_the_cli_says_so(tmp_path, sf_home):
    module = tmp_path / "lonely.py"
    module.write_text(
        "from servicefactory import Service\n"
        "@Service.API.endpoint(port=0)\n"
        "class Lonely(Service.base):\n"
        "    def loop(self):\n"
        "        self.sleep(1)\n")
    run = subprocess.run(CLI + ["run", "lonely.py", "--daemon"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    pid = int(run.stdout.split("pid ")[1].split(",")[0])
    import shutil
    shutil.rmtree(sf_home)
    try:
        time.sleep(0.3)
        os.kill(pid, 0)  # still alive
        result = subprocess.run(CLI + ["perform", "Lonely", "health"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 3
        assert "state directory" in result.stderr and "does not exist" in result.stderr
        result = subprocess.run(CLI + ["status"], capture_output=True, text=True, timeout=30)
        assert "does not exist" in result.stdout
        result = subprocess.run(CLI + ["stop", "Lonely"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and "does not exist" in result.stdout
    finally:
        import psutil
        try:
            process = psutil.Process(pid)
            for proc in [process.parent()] + process.children(recursive=True) + [process]:
                if proc is not None and "servicefactory" in " ".join(proc.cmdline()):
                    proc.kill()
        except psutil.NoSuchProcess:
            pass


def test_signals_at_random_moments_always_stop_cleanly(tmp_path, sf_home):
    """SIGINT or SIGTERM landing anywhere (in print, in time.sleep, in the framework) never shows a traceback."""
    import random
    script = tmp_path / "seedling.py"
    script.write_text(Path(__file__).resolve().parent.parent.joinpath("servicefactory", "TestService.py")
                      .read_text().replace("port=1234", "port=0"))
    env = dict(os.environ, PYTHONUNBUFFERED="1", SERVICEFACTORY_HOME=str(sf_home))
    randomness = random.Random(1234)
    for attempt in range(25):
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env)
        try:
            first = proc.stdout.readline()
            time.sleep(randomness.random() * 0.03)
            proc.send_signal(randomness.choice([signal.SIGINT, signal.SIGTERM]))
            output = (first + proc.stdout.read()).decode()
            assert proc.wait(timeout=5) == 0, output
        finally:
            proc.kill()
            proc.wait(5)
            proc.stdout.close()
        assert "Traceback" not in output and output.endswith("Test : finalizing...\n"), (attempt, output)


@Service.API.endpoint(port=0, workers=4)
class Sturdy(Service.base):
    @Service.API.handle("exit")
    def exit(self, data):
        raise SystemExit(3)

    @Service.API.handle("slow")
    def slow(self, data):
        time.sleep(1.5)
        return "slow"

    @Service.API.handle("fast")
    def fast(self, data):
        return "fast"


def test_a_handler_calling_sys_exit_gets_500_and_kills_no_worker():
    with running(Sturdy()) as service:
        for _ in range(10):  # more than the 4 workers
            conn = http.client.HTTPConnection(*service.address, timeout=5)
            conn.request("POST", "/exit", headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            assert response.status == 500 and json.loads(response.read())["error"]["type"] == "SystemExit"
            conn.close()
        assert Sturdy.perform("fast") == "fast"


def test_a_fast_request_does_not_wait_behind_a_slow_one_that_arrived_with_it():
    with running(Sturdy()) as service:
        Sturdy.perform("fast")  # one idle worker in the pool
        slow = socket.create_connection(service.address, timeout=5)
        fast = socket.create_connection(service.address, timeout=5)
        try:
            slow.sendall(b"POST /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\r\n")
            fast.sendall(b"POST /fast HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\r\n")
            started = time.monotonic()
            assert b'"fast"' in fast.recv(65536)
            assert time.monotonic() - started < 1.0
        finally:
            slow.close()
            fast.close()


def test_clients_sending_their_bodies_slowly_do_not_starve_the_workers():
    with running(Sturdy()) as service:
        hogs = []
        try:
            for _ in range(12):  # three times the workers
                sock = socket.create_connection(service.address, timeout=5)
                sock.sendall(b"POST /fast HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 10\r\n\r\n12")
                hogs.append(sock)
            started = time.monotonic()
            for _ in range(5):
                assert Sturdy.perform("fast", timeout=2) == "fast"
            assert time.monotonic() - started < 2.0
        finally:
            for sock in hogs:
                sock.close()


@pytest.mark.parametrize("request_bytes, status", [
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent_Length: 5\r\n\r\n", 400),
    # chunked not the final coding: RFC 9112 6.1 says 400 (MUST), as llhttp answers
    (b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0x1\r\n1\r\n0\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n1\r\n1XX0\r\n\r\n", 400),
    (b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Evil: a\x00b\r\n\r\n", 400),
    (b"GET /echo HTTP/1.9\r\nHost: 127.0.0.1\r\n\r\n", 505),
    # not a version at all but a malformed request line: 400 (RFC 9112 3), as llhttp frames it
    (b"GET /echo HTTP/1.1junk\r\nHost: 127.0.0.1\r\n\r\n", 400),
])
def test_ambiguous_requests_that_could_be_smuggled_are_refused(target, request_bytes, status):
    assert _status(_raw(target.address, request_bytes)) == status
    _healthy(target)


def test_a_bare_lf_request_head_is_answered_at_once_not_after_a_timeout(target):
    started = time.monotonic()
    assert _status(_raw(target.address, b"GET /echo HTTP/1.1\nHost: 127.0.0.1\n\n")) == 400
    assert time.monotonic() - started < 2.0


def test_running_out_of_file_descriptors_neither_spins_nor_stops_the_service(spawn):
    spawn(files={"tight.py": """
        import resource
        from servicefactory import Service

        @Service.API.endpoint(port=0)
        class Tight(Service.base):
            @Service.API.handle("cpu")
            def cpu(self, data):
                import os
                times = os.times()
                return times.user + times.system

        if __name__ == "__main__":
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
            Tight().run()
        """}, args=[sys.executable, "tight.py"])
    from servicefactory.http import client
    wait_until(lambda: _try(lambda: client.perform("Tight", "cpu", timeout=1)) is not None, message="Tight ready")
    address = client.resolve("Tight")
    client.close_connections()
    hogs = []
    try:
        for _ in range(120):
            try:
                hogs.append(socket.create_connection(address, timeout=2))
            except OSError:
                break
        time.sleep(1.5)
        for sock in hogs:
            sock.close()
        hogs = []
        before = client.perform("Tight", "cpu", timeout=5)
        time.sleep(1.0)
        after = client.perform("Tight", "cpu", timeout=5)
        assert after - before < 0.5  # idle again: no accept() spinning left behind
    finally:
        for sock in hogs:
            sock.close()
        client.close_connections()


def test_sighup_to_a_script_finalizes_and_releases_its_name(spawn, sf_home):
    proc = _start_standalone(spawn, 0)
    proc.signal(signal.SIGHUP)
    assert proc.wait(timeout=5) == 0, proc.output
    assert "Sleeper : finalizing" in proc.output
    assert not (sf_home / "Sleeper.pid").exists()
