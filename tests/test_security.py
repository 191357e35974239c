"""The control API's access model, each attack of issue 16 replayed from outside.

Loopback services answer their own user and root only (a second Unix user, created here when the
tests run as root, gets 403); names are resolved before a bind counts as loopback; tokens must be
strong and guessing them is slowed down; actions are POST + JSON only; error text is bounded;
JSON that Python would decode into values JSON does not have never reaches a handler.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import socket
import subprocess
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from support import PYTHON, exchange
from servicefactory import Service
from servicefactory.http import client
from servicefactory.http._guard import MIN_TOKEN_BITS, token_bits
from servicefactory.errors import StartupError, TokenRequired
from servicefactory.testing import running

STRONG_TOKEN = "q3J0c2v1bW9yZS1yYW5kb20tdGhhbi10aGlzLXJlYWxseQ"
SYSTEM_PYTHON = "/usr/bin/python3"  # readable by every user, unlike a venv under /root


@pytest.fixture(autouse=True)
def _close_client_connections() -> Iterator[None]:
    yield
    client.close_connections()


@Service.API.endpoint(port=0)
class Guarded(Service.base):
    """A loopback service recording what it was asked."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def loop(self) -> None:
        self.sleep(30)

    @Service.API.handle("action")
    def action(self, data: Any) -> Any:
        self.calls.append(data)
        return None

    @Service.API.handle("boom")
    def boom(self, data: Any) -> None:
        raise ValueError("x" * (1024 * 1024))


def port_of(service: Service.base) -> int:
    assert service.address is not None
    return service.address[1]


def raw_post(path: str, body: bytes = b"", content_type: str | None = "application/json", method: str = "POST",
             extra: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


# -- a second local user -----------------------------------------------------------------

_AS_USER = textwrap.dedent("""
    import http.client, json, socket, sys
    port, requests, host = int(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
    answers = []
    sock = None
    for request in requests:  # one keep-alive connection for all, as long as the server keeps it
        sock = sock or socket.create_connection((host, port), timeout=5)
        sock.sendall(request.encode("latin-1"))
        response = http.client.HTTPResponse(sock)
        response.begin()
        answers.append([response.status, response.read().decode(errors="replace")])
        if response.will_close:
            sock.close()
            sock = None
    if sock:
        sock.close()
    print(json.dumps(answers))
""")


@pytest.fixture(scope="module")
def other_user() -> Iterator[str]:
    """A fresh unprivileged Unix user (removed afterwards); skips where the tests cannot create one."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a second Unix user (useradd) and act as it (runuser)")
    if not (shutil.which("useradd") and shutil.which("userdel") and shutil.which("runuser")):
        pytest.skip("useradd, userdel or runuser is missing")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} is missing: the second user needs a Python it may run")
    name = f"sfsec{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def as_user(user: str, port: int, *requests: bytes, host: str = "127.0.0.1") -> list[tuple[int, str]]:
    """Send `requests` on one connection as `user`, from a process of that user; the answers."""
    done = subprocess.run(["runuser", "-u", user, "--", SYSTEM_PYTHON, "-I", "-c", _AS_USER, str(port),
                           json.dumps([request.decode("latin-1") for request in requests]), host],
                          capture_output=True, text=True, timeout=20, cwd="/")
    assert done.returncode == 0, done.stderr
    return [tuple(answer) for answer in json.loads(done.stdout)]


@pytest.mark.parametrize("server", ["builtin", "werkzeug"])
def test_another_local_user_gets_403_for_shutdown_and_actions_and_the_service_runs_on(other_user, server, caplog):
    @Service.API.endpoint(port=0, server=server)
    class Mine(Guarded):
        pass

    caplog.set_level(logging.WARNING, logger="servicefactory.http._gate")
    with running(Mine()) as service:
        answers = as_user(other_user, port_of(service), raw_post("/shutdown"), raw_post("/action", b'"hi"'),
                          raw_post("/health"), raw_post("/health", method="GET", content_type=None))
        assert [status for status, _ in answers] == [403, 403, 403, 403]
        assert "own user" in answers[0][1]
        assert not service.stopping and service.calls == []
        # the service's own user is served as before, without a token
        status, _, body = exchange(port_of(service), raw_post("/action", b'"hello world"'))
        assert (status, body) == (200, b"ok\n")
        assert service.calls == ["hello world"]
    refusals = [r for r in caplog.records if "refused a connection" in r.getMessage()]
    # one line per refused connection; werkzeug has no per-connection state: one per request
    assert len(refusals) == (1 if server == "builtin" else 4)
    assert f"uid {_uid(other_user)}" in refusals[0].getMessage()


def _uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid


@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1"),
                                          (socket.AF_INET6, "::")])
def test_netlink_and_proc_net_tcp_name_the_same_owner(family, host, other_user):
    from servicefactory.http._peercred import peer_uid, proc_uid

    with socket.socket(family) as server:
        server.bind((host, 0))
        server.listen()
        port = server.getsockname()[1]
        target = "127.0.0.1" if host == "::" else host  # an IPv4 client of a dual-stack socket: mapped
        script = f"import socket, time; s = socket.create_connection(({target!r}, {port})); time.sleep(3)"
        theirs = subprocess.Popen(["runuser", "-u", other_user, "--", SYSTEM_PYTHON, "-I", "-c", script], cwd="/")
        try:
            with socket.create_connection((target, port)) as mine:
                accepted = [server.accept() for _ in range(2)]
                owners = {}
                for sock, peer in accepted:
                    local = sock.getsockname()[:2]
                    owners[peer[1] == mine.getsockname()[1]] = (peer_uid(local, peer[:2]), proc_uid(local, peer[:2]))
                    sock.close()
        finally:
            theirs.kill()
            theirs.wait(5)
    assert owners[True] == (os.geteuid(), os.geteuid())
    assert owners[False] == (_uid(other_user), _uid(other_user))


def test_another_local_user_is_refused_over_ipv6_loopback_too(other_user):
    @Service.API.endpoint(port=0, host="::1")
    class Six(Guarded):
        pass

    with running(Six()) as service:
        answers = as_user(other_user, port_of(service), raw_post("/action", b'"hi"'), host="::1")
        assert answers[0][0] == 403 and service.calls == []
        with socket.create_connection(("::1", port_of(service)), timeout=5) as sock:
            sock.sendall(raw_post("/action", b'"mine"'))
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        assert service.calls == ["mine"]


def test_the_seed_service_refuses_another_users_shutdown_and_keeps_answering_curl(other_user, spawn, sf_home):
    from test_seed import SEED_ANY_PORT, curl_post, registered_port, start_seed

    proc = start_seed(spawn, SEED_ANY_PORT)
    port = registered_port(sf_home)
    answers = as_user(other_user, port, raw_post("/shutdown"))
    assert answers[0][0] == 403
    assert proc.popen.poll() is None
    status, _, body = curl_post(port, "/action", b'"hello world"')
    assert (status, body) == (200, b"ok\n")
    proc.wait_for(r"^hello world$")
    assert "refused a connection from 127.0.0.1:" in proc.output


def test_another_user_sending_and_closing_at_once_cannot_pass_for_root(other_user):
    """A closed (orphaned) client socket must not be reported as root's and let the request run."""
    fire_and_forget = textwrap.dedent("""
        import socket, sys
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
            sock.sendall(sys.argv[2].encode())
            sock.close()
    """)
    with running(Guarded()) as service:
        port = port_of(service)
        subprocess.run(["runuser", "-u", other_user, "--", SYSTEM_PYTHON, "-I", "-c", fire_and_forget, str(port),
                        raw_post("/action", b'"sneaky"').decode()], check=True, timeout=20, cwd="/")
        assert exchange(port, raw_post("/action", b'"mine"'))[0] == 200
        time.sleep(0.5)  # the 20 were all sent before; give the workers a moment to finish them
        assert service.calls == ["mine"]


def test_allow_users_opens_a_loopback_service_to_the_named_user(other_user):
    @Service.API.endpoint(port=0, allow_users=[other_user])
    class Shared(Guarded):
        pass

    with running(Shared()) as service:
        answers = as_user(other_user, port_of(service), raw_post("/action", b'"from a friend"'))
        assert answers == [(200, "ok\n")]
        assert service.calls == ["from a friend"]


def test_allow_users_by_uid_and_an_unknown_name_is_a_startup_error(other_user):
    @Service.API.endpoint(port=0, allow_users=_uid(other_user))
    class ByUid(Guarded):
        pass

    with running(ByUid()) as service:
        assert as_user(other_user, port_of(service), raw_post("/action", b"1"))[0][0] == 200

    @Service.API.endpoint(port=0, allow_users=["no-such-user-here"])
    class Typo(Guarded):
        pass

    with pytest.raises(StartupError, match="no-such-user-here"):
        Typo().run()


def test_a_valid_token_opens_a_loopback_service_to_another_user_and_a_wrong_one_is_401(other_user, monkeypatch):
    monkeypatch.setenv("SERVICEFACTORY_TOKEN", STRONG_TOKEN)
    with running(Guarded()) as service:
        port = port_of(service)
        good = as_user(other_user, port, raw_post("/action", b'"with token"',
                                                  extra=f"Authorization: Bearer {STRONG_TOKEN}\r\n"))
        assert good == [(200, "ok\n")]
        wrong = as_user(other_user, port, raw_post("/action", b"1", extra="Authorization: Bearer nope\r\n"))
        assert wrong[0][0] == 401
        # the owner needs no token at all
        assert exchange(port, raw_post("/action", b"2"))[0] == 200
        assert service.calls == ["with token", 2]


# -- loopback is decided by resolving ------------------------------------------------------

@pytest.mark.parametrize("host", ["localhost.localdomain", "ip6-localhost", "localhost.", "127.1", "0x7f.1",
                                  "127.0.0.1.nip.io"])
def test_the_host_allow_list_holds_only_literal_loopback_addresses_and_localhost(host):
    with running(Guarded()) as service:
        port = port_of(service)
        request = raw_post("/action", b"1").replace(b"Host: 127.0.0.1", f"Host: {host}:{port}".encode())
        assert exchange(port, request)[0] == 403
        for good in ("localhost", "127.0.0.1", "127.0.0.2", "[::1]"):
            request = raw_post("/action", b"1").replace(b"Host: 127.0.0.1", f"Host: {good}:{port}".encode())
            assert exchange(port, request)[0] == 200, good


def test_an_absolute_form_target_is_judged_by_its_own_host_not_the_host_header():
    """RFC 9112 3.2.2: the authority of `POST http://evil/action` replaces Host, so it gets the 403."""
    with running(Guarded()) as service:
        port = port_of(service)
        for target in ("http://evil.example/action", f"http://evil.example:{port}/action?x=1",
                       "http://user@127.0.0.1/action"):
            status = exchange(port, raw_post(target, b"1"))[0]
            assert status in (400, 403), (target, status)
        assert service.calls == []
        assert exchange(port, raw_post(f"http://127.0.0.1:{port}/action", b"2"))[0] == 200
        assert service.calls == [2]


@pytest.fixture
def private_namespace(tmp_path: Path) -> Iterator[str]:
    """A network namespace with a private address 10.77.0.1, and an /etc/hosts pointing
    `localhost.localdomain` and `ip6-localhost` at it (ip netns exec bind-mounts /etc/netns/NS/hosts)."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 to create a network namespace with its own /etc/hosts")
    name = f"sfsec-{uuid.uuid4().hex[:8]}"
    etc = Path("/etc/netns") / name
    try:
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create a network namespace here: {exc.stderr.decode().strip()}")
    try:
        # the private address sits on lo (no dummy or veth driver needed); it is no loopback address
        for command in (["addr", "add", "10.77.0.1/32", "dev", "lo"], ["link", "set", "lo", "up"]):
            subprocess.run(["ip", "-n", name, *command], check=True, capture_output=True)
        etc.mkdir(parents=True)
        (etc / "hosts").write_text("127.0.0.1 localhost\n10.77.0.1 localhost.localdomain ip6-localhost\n")
        yield name
    finally:
        shutil.rmtree(etc, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.mark.parametrize("host", ["localhost.localdomain", "ip6-localhost"])
def test_a_loopback_looking_name_resolving_to_a_private_address_needs_a_token(private_namespace, host, tmp_path,
                                                                               sf_home):
    code = textwrap.dedent(f"""
        from servicefactory import Service
        import socket
        print("resolves to", socket.gethostbyname({host!r}), flush=True)
        @Service.API.endpoint(host={host!r}, port=0)
        class Spelled(Service.base):
            pass
        Spelled().run()
    """)
    env = dict(os.environ, SERVICEFACTORY_HOME=str(sf_home))
    env.pop("SERVICEFACTORY_TOKEN", None)
    done = subprocess.run(["ip", "netns", "exec", private_namespace, PYTHON, "-c", code], capture_output=True,
                          text=True, timeout=30, env=env, cwd=tmp_path)
    assert "resolves to 10.77.0.1" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 1, done.stdout + done.stderr
    assert "without a token" in done.stderr and "Traceback" not in done.stderr


def test_a_host_that_does_not_resolve_is_a_startup_error_not_a_request_for_a_token():
    @Service.API.endpoint(host="no-such-host.invalid", port=0)
    class Nowhere(Guarded):
        pass

    with pytest.raises(StartupError, match="cannot resolve host 'no-such-host.invalid'"):
        Nowhere().run()


# -- tokens: strength, 401 closes, throttling ----------------------------------------------

@pytest.mark.parametrize("weak", ["1234", "s3cret-token", "a" * 64, "ab" * 40, "0123456789abcdef0123",
                                  "password-password-password-password", "0123456789abcdef" * 2])
def test_a_weak_token_is_refused_at_start_naming_the_command_that_makes_one(weak, monkeypatch):
    monkeypatch.setenv("SERVICEFACTORY_TOKEN", weak)

    @Service.API.endpoint(port=0, require_token=True)
    class Locked(Guarded):
        pass

    with pytest.raises(TokenRequired, match="servicefactory token") as caught:
        Locked().run()
    assert "\n" not in str(caught.value)


def test_servicefactory_token_prints_a_fresh_strong_token_that_a_service_accepts(monkeypatch):
    printed = {subprocess.run([str(Path(PYTHON).parent / "servicefactory"), "token"], capture_output=True,
                              text=True, check=True).stdout.strip() for _ in range(2)}
    assert len(printed) == 2
    for token in printed:
        assert len(token) >= 43 and token_bits(token) >= MIN_TOKEN_BITS
    for random_hex in (os.urandom(16).hex(), os.urandom(16).hex().upper()):
        assert token_bits(random_hex) >= MIN_TOKEN_BITS  # 32 hex characters: just enough
    monkeypatch.setenv("SERVICEFACTORY_TOKEN", printed.pop())

    @Service.API.endpoint(port=0, require_token=True)
    class Locked(Guarded):
        pass

    with running(Locked()):
        pass


def _guess(port: int, token: str, source: str = "127.0.0.1") -> tuple[int, dict, bool]:
    """One guess on a keep-alive connection: (status, headers, whether the server then closed it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as sock:
        sock.sendall(raw_post("/action", b"1", extra=f"Authorization: Bearer {token}\r\n"))
        response = http.client.HTTPResponse(sock)
        response.begin()
        headers = {k.lower(): v for k, v in response.getheaders()}
        response.read()
        response.close()
        sock.settimeout(2)
        try:
            closed = sock.recv(1) == b""
        except socket.timeout:
            closed = False
        return response.status, headers, closed


def test_brute_forcing_the_token_closes_each_connection_logs_and_is_throttled(monkeypatch, caplog):
    monkeypatch.setenv("SERVICEFACTORY_TOKEN", STRONG_TOKEN)

    @Service.API.endpoint(port=0, require_token=True)
    class Locked(Guarded):
        pass

    caplog.set_level(logging.WARNING, logger="servicefactory.http._gate")
    with running(Locked()) as service:
        port = port_of(service)
        # the attack of issue 16: many guesses on one keep-alive connection
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(raw_post("/action", b"1", extra="Authorization: Bearer 0000\r\n") +
                         raw_post("/action", b"1", extra="Authorization: Bearer 0001\r\n"))
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert data.count(b"HTTP/1.1 ") == 1, "the second guess on the connection must not be answered"
        assert b"401 Unauthorized" in data and b"Connection: close" in data

        statuses = []
        for guess in range(2, 6):
            status, headers, closed = _guess(port, f"{guess:04d}")
            statuses.append(status)
            assert closed, "every refused guess ends its connection"
        assert statuses == [401] * 4  # five wrong guesses in all: the free ones
        status, headers, closed = _guess(port, STRONG_TOKEN)
        assert status == 429 and closed, "while a peer waits, not even the right token is looked at"
        retry_after = int(headers["retry-after"])
        assert 1 <= retry_after <= 2
        assert _guess(port, "0006")[0] == 429
        # another peer is not held up by this one's failures
        assert _guess(port, STRONG_TOKEN, source="127.0.0.2")[0] == 200
        time.sleep(retry_after)
        assert _guess(port, STRONG_TOKEN)[0] == 200  # after the wait, the right token works again
        assert service.calls == [1, 1]
    failures = [r for r in caplog.records if "token" in r.getMessage() and "refused a request" in r.getMessage()]
    assert len(failures) == 5  # one line per 401; the 429s are not looked at
    assert STRONG_TOKEN not in caplog.text


def test_the_throttle_lets_a_peer_try_again_after_the_wait(monkeypatch):
    from servicefactory.http import _guard

    throttle = _guard.Throttle()
    peer = ("127.0.0.1", None)
    for _ in range(_guard.FREE_FAILURES):
        assert throttle.wait(peer) == 0
        throttle.failed(peer)
    first_wait = throttle.wait(peer)
    assert 0 < first_wait <= 1.0
    time.sleep(first_wait + 0.05)
    assert throttle.wait(peer) == 0
    throttle.failed(peer)
    assert 1.0 < throttle.wait(peer) <= 2.0  # doubles
    for _ in range(30):
        throttle.failed(peer)
    assert throttle.wait(peer) <= _guard.MAX_DELAY
    throttle.succeeded(peer)
    assert throttle.wait(peer) == 0


def test_off_host_guessers_are_throttled_per_ipv6_network_not_per_address():
    """One host owns a whole IPv6 /64: rotating through it must not reset the count."""
    from servicefactory.http._gate import Gate

    gate = Gate(token=STRONG_TOKEN, require_token=True, bound_host="::")

    def attempt(address: str, token: str = "wrong") -> int:
        environ = {"REMOTE_ADDR": address, "REMOTE_PORT": "40000", "HTTP_AUTHORIZATION": f"Bearer {token}"}
        refusal = gate.refuse(environ)
        return refusal[0] if refusal else 200

    assert [attempt(f"2001:db8:1:2::{n:x}") for n in range(1, 6)] == [401] * 5
    assert attempt("2001:db8:1:2:ffff::1", STRONG_TOKEN) == 429  # same /64, another address
    assert attempt("2001:db8:1:3::1", STRONG_TOKEN) == 200  # the next /64 is another peer
    assert [attempt(f"192.0.2.{n}") for n in range(1, 7)] == [401] * 6  # IPv4: per address
    assert [attempt("::ffff:192.0.2.99") for _ in range(5)] == [401] * 5
    assert attempt("192.0.2.99", STRONG_TOKEN) == 429  # an IPv4-mapped address is the same peer


# -- actions: POST + JSON only ---------------------------------------------------------------

@pytest.mark.parametrize("request_bytes, status", [
    (raw_post("/action", method="GET", content_type=None), 405),                 # <img src=...>
    (raw_post("/action", content_type="text/plain"), 415),                       # empty simple POST
    (raw_post("/action", content_type=None), 415),                               # bodiless fetch()
    (raw_post("/action", b"1", content_type="text/plain"), 415),
    (raw_post("/action", content_type="application/x-www-form-urlencoded"), 415),
    (raw_post("/action", b"1", extra="Origin: file://\r\n"), 403),
    (raw_post("/action", b"1", extra="Origin: null\r\n"), 403),
    (raw_post("/action", b"1", extra="Origin: http://\r\n"), 403),
    (raw_post("/shutdown", method="GET", content_type=None), 405),
])
def test_an_action_runs_only_on_a_json_post_from_no_foreign_origin(request_bytes, status):
    with running(Guarded()) as service:
        answer = exchange(port_of(service), request_bytes)
        assert answer[0] == status
        assert service.calls == [] and not service.stopping
        if status == 405:
            assert answer[1]["allow"] == "POST"


def test_health_and_actions_stay_readable_by_get_and_list_their_methods():
    with running(Guarded()) as service:
        port = port_of(service)
        assert exchange(port, raw_post("/health", method="GET", content_type=None))[0] == 200
        status, _, body = exchange(port, raw_post("/actions", method="GET", content_type=None))
        methods = {entry["name"]: entry["methods"] for entry in json.loads(body)}
        assert methods["action"] == ["POST"] and methods["shutdown"] == ["POST"]
        assert methods["health"] == ["GET", "POST"] and methods["actions"] == ["GET", "POST"]
        assert exchange(port, raw_post("/action", b"1", extra="Origin: http://localhost:1\r\n"))[0] == 200


def test_handle_takes_only_post_or_get_and_post():
    with pytest.raises(ValueError, match="methods"):
        Service.API.handle("x", methods=("GET",))
    with pytest.raises(ValueError, match="methods"):
        Service.API.handle("x", methods=("POST", "DELETE"))


# -- bounded error text, values JSON does not have -----------------------------------------------

def test_a_handler_raising_a_megabyte_message_answers_under_8_kib_and_logs_a_bounded_line(caplog):
    caplog.set_level(logging.ERROR, logger="servicefactory.api")
    with running(Guarded()) as service:
        status, _, body = exchange(port_of(service), raw_post("/boom", b"1"))
    assert status == 500
    assert len(body) < 8 * 1024
    error = json.loads(body)["error"]
    assert error["type"] == "ValueError" and error["message"].endswith("more characters cut]")
    logged = [r.getMessage() for r in caplog.records if "'boom' failed" in r.getMessage()]
    assert len(logged) == 1 and len(logged[0]) < 16 * 1024 and "Traceback" in logged[0]
    assert "more characters cut]" in logged[0]


@pytest.mark.parametrize("body", [b"1e999999", b"-1e999", b"[1, 2e400]", b'{"a": {"b": 1E+999}}',
                                  b'"\\ud800"', b'["ok", "\\uDFFF"]', b'{"\\udc00": 1}', b'"\\ud83d x"'])
def test_non_finite_numbers_and_lone_surrogates_are_400_before_the_handler(body):
    with running(Guarded()) as service:
        status, _, answer = exchange(port_of(service), raw_post("/action", body))
        assert status == 400, answer
        assert json.loads(answer)["error"]["type"] == "BadRequest"
        assert service.calls == []


@pytest.mark.parametrize("body, value", [(b'"\\ud83d\\ude00"', "\U0001F600"), (b"1e308", 1e308),
                                         (b'"\\\\ud800"', "\\ud800"), (b"-0.0", -0.0)])
def test_surrogate_pairs_large_finite_numbers_and_escaped_backslashes_still_arrive(body, value):
    with running(Guarded()) as service:
        assert exchange(port_of(service), raw_post("/action", body))[0] == 200
        assert service.calls == [value]

