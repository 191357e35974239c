"""The etcd registry end to end, on one host: real services register in a real etcd, the CLI and
`perform` find them there, a killed service's record expires with its lease, a race for a name has
one winner, and etcd going away or losing the lease never stops a service from serving.

(Many hosts, simulated with network namespaces, are in test_etcd_hosts.py.)
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from etcd_support import TEST_TTL, Etcd, running_etcd
from servicefactory.registry.base import ServiceRecord
from servicefactory.registry.local import process_start_time
from support import ECHO, PYTHON, wait_until


@pytest.fixture(scope="module")
def etcd_server() -> Iterator[Etcd]:
    with running_etcd() as server:
        yield server


def use_etcd(url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point this test process (its CLI calls, its `perform`) at the etcd registry `url`."""
    env = {"SERVICEFACTORY_REGISTRY": url, "SERVICEFACTORY_LEASE_TTL": str(TEST_TTL)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def registry_env(etcd_server: Etcd, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A key prefix of this test's own on the shared etcd, in this process's environment."""
    return use_etcd(etcd_server.url(), monkeypatch)


def start_echo(spawn, env: dict[str, str]):
    """A standalone Echo service (python echo.py), once it is registered."""
    proc = spawn(args=[PYTHON, "echo.py"], files={"echo.py": ECHO}, env=env)
    registry = _registry()
    wait_until(lambda: registry.lookup("Echo") is not None or proc.popen.poll() is not None, timeout=20,
               message="Echo to register")
    assert proc.popen.poll() is None, proc.output
    return proc


def _registry():
    from servicefactory.registry.backends import default_registry
    return default_registry()


def test_a_service_in_etcd_is_called_listed_and_stopped_through_the_cli(sf, spawn, registry_env):
    proc = start_echo(spawn, registry_env)
    result = sf("perform", "Echo", "echo", '"through etcd"')
    assert (result.returncode, result.stdout.strip()) == (0, '"through etcd"'), result.stderr
    (row,) = sf.status()
    assert (row["name"], row["state"], row["pid"]) == ("Echo", "running", proc.pid)
    from servicefactory.http import client
    assert client.perform("Echo", "pid") == proc.pid  # the Python client finds it the same way
    result = sf("stop", "Echo")
    assert result.returncode == 0 and "Echo stopped" in result.stdout, result.stderr
    assert proc.wait(10) == 0
    registry = _registry()
    assert registry.names() == [] and registry.lookup("Echo") is None  # a graceful stop withdraws at once


def test_registry_option_stands_for_the_variable_on_every_command_and_status_shows_the_host(sf, spawn, registry_env):
    proc = start_echo(spawn, registry_env)
    url = registry_env["SERVICEFACTORY_REGISTRY"]
    unset = {"SERVICEFACTORY_REGISTRY": ""}  # the local registry, unless --registry says otherwise
    assert sf("perform", "Echo", "pid", env=unset).returncode == 3  # not in the local registry
    for args in (["perform", "Echo", "pid", "--registry", url],  # the fast path
                 ["perform", "--registry=" + url, "--timeout", "5", "Echo", "pid"],
                 ["perform", "Echo", "pid", "--max-body", "x", "--registry", url]):  # click's path (bad option)
        result = sf(*args, env=unset)
        if "x" in args:
            assert result.returncode == 2 and "--max-body" in result.stderr, result.stderr
        else:
            assert (result.returncode, result.stdout.strip()) == (0, str(proc.pid)), result.stderr
    result = sf("status", "--registry", url, env=unset)
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split()[:4] == ["NAME", "STATE", "HOST", "PID"], header
    assert row.split()[:4] == ["Echo", "running", socket.gethostname(), str(proc.pid)], row
    (row,) = json.loads(sf("status", "--json", "--registry", url, env=unset).stdout)
    assert row["hostname"] == socket.gethostname()
    local = sf("status", env=unset)
    assert "HOST" not in local.stdout  # one host's own registry: no column that says nothing
    for args in (["status", "--registry", ""], ["perform", "Echo", "pid", "--registry", " "]):
        result = sf(*args, env=unset)
        assert result.returncode == 2 and "registry" in result.stderr and "Traceback" not in result.stderr, result.stderr
    result = sf("status", "--registry", "zookeeper://x", env=unset)
    assert result.returncode == 10 and "unknown registry backend" in result.stderr, result.stderr
    result = sf("stop", "Echo", "--registry", url, env=unset)
    assert result.returncode == 0 and "Echo stopped" in result.stdout, result.stderr
    assert proc.wait(10) == 0


# run a command line of the CLI in this interpreter, then print which of the etcd extra's modules it imported
COMMAND_IMPORTS = """
import atexit, json, sys
atexit.register(lambda: print(json.dumps(sorted(m for m in ("requests", "etcd3gw", "urllib3") if m in sys.modules)),
                              file=sys.stderr))
sys.argv = ["servicefactory", *sys.argv[1:]]
from servicefactory.cli.fast import main
main()
"""


def test_status_and_perform_only_read_etcd_so_they_import_neither_requests_nor_etcd3gw(spawn, registry_env, tmp_path):
    """Importing etcd3gw and requests was most of a cold status's time: a command that only reads
    speaks to the gateway with the standard library, and gives the same answers."""
    proc = start_echo(spawn, registry_env)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    for args, expected in ((["perform", "Echo", "echo", '"light"'], '"light"'), (["status", "--json"], '"running"')):
        done = subprocess.run([PYTHON, "-c", COMMAND_IMPORTS, *args], env=env, capture_output=True, text=True,
                              timeout=60, cwd=tmp_path)
        assert done.returncode == 0 and expected in done.stdout, done.stdout + done.stderr
        assert json.loads(done.stderr.strip().splitlines()[-1]) == [], done.stderr
    assert proc.popen.poll() is None


def test_after_kill_9_the_record_expires_with_its_lease_and_perform_says_not_running(sf, spawn, registry_env):
    from servicefactory.errors import ServiceNotRunning
    from servicefactory.http import client

    proc = start_echo(spawn, registry_env)
    registry = _registry()
    assert client.perform("Echo", "echo", 1) == 1
    proc.kill()  # SIGKILL: nothing of it runs to withdraw the record
    killed = time.monotonic()
    wait_until(lambda: registry.lookup("Echo") is None, timeout=TEST_TTL + 5, interval=0.05,
               message="the killed service's record to expire")
    took = time.monotonic() - killed
    assert took < TEST_TTL + 1.5, f"the record outlived its lease: {took:.2f} s for a {TEST_TTL} s TTL"
    assert registry.names() == [] and not registry.is_held("Echo")
    with pytest.raises(ServiceNotRunning):
        client.perform("Echo", "echo", 1)
    result = sf("perform", "Echo", "echo", "1")
    assert result.returncode == 3 and "not running" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_of_five_services_racing_for_one_name_exactly_one_serves(sf, spawn, registry_env, tmp_path: Path):
    (tmp_path / "echo.py").write_text(textwrap.dedent(ECHO))
    racers = [spawn(args=[PYTHON, "echo.py"], env=registry_env) for _ in range(5)]
    wait_until(lambda: sum(racer.popen.poll() is not None for racer in racers) == 4, timeout=30,
               message="four of the five to give up")
    (winner,) = [racer for racer in racers if racer.popen.poll() is None]
    for loser in racers:
        if loser is not winner:
            assert loser.popen.returncode == 1 and "Echo is already running" in loser.output, loser.output
    result = sf("perform", "Echo", "pid")
    assert (result.returncode, result.stdout.strip()) == (0, str(winner.pid)), result.stderr
    assert _registry().names() == ["Echo"]


@pytest.mark.parametrize("url", ["etcd://127.0.0.1:{closed}", "etcd://127.0.0.1:{closed},127.0.0.1:{closed2}"])
def test_commands_fail_in_seconds_with_one_line_when_etcd_is_unreachable(sf, url: str, closed_port):
    closed, closed2 = closed_port(), closed_port()
    env = {"SERVICEFACTORY_REGISTRY": url.format(closed=closed, closed2=closed2)}
    for args in (["perform", "Echo", "echo"], ["status"], ["stop", "Echo"]):
        started = time.monotonic()
        result = sf(*args, env=env, timeout=30)
        assert time.monotonic() - started < 10
        assert result.returncode == 10, (args, result.stdout, result.stderr)
        assert result.stderr.startswith("error: etcd registry unreachable: 127.0.0.1:") and \
            "connection refused" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("url, message", [
    ("etcd://", "malformed etcd registry URL"),
    ("etcd://host:port", "malformed etcd endpoint"),
    ("etcd://127.0.0.1:99999", "malformed etcd endpoint"),
    ("zookeeper://x:1", "unknown registry backend"),
])
def test_a_malformed_registry_url_is_one_line_and_exit_10(sf, url: str, message: str):
    result = sf("status", env={"SERVICEFACTORY_REGISTRY": url})
    assert result.returncode == 10 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_bad_lease_ttl_is_refused_in_one_line(sf, registry_env):
    result = sf("status", env={"SERVICEFACTORY_LEASE_TTL": "soon"})
    assert result.returncode == 10 and "SERVICEFACTORY_LEASE_TTL" in result.stderr, result.stderr


@pytest.fixture
def closed_port() -> Iterator[Callable[[], int]]:
    """Ports that refuse connections for the whole test: each is bound and never listened on, so no
    server of a parallel test can take it in the meantime (a port merely closed again could be)."""
    held: list[socket.socket] = []

    def port() -> int:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        held.append(sock)
        return sock.getsockname()[1]

    yield port
    for sock in held:
        sock.close()


@pytest.fixture
def own_etcd(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Etcd, dict[str, str]]]:
    """An etcd of this test's own, to kill and restart."""
    with running_etcd() as server:
        yield server, use_etcd(server.url(), monkeypatch)


def test_a_service_keeps_serving_while_etcd_is_down_and_stays_registered_once_it_returns(sf, spawn, own_etcd):
    server, env = own_etcd
    proc = start_echo(spawn, env)
    from servicefactory.http import client
    assert client.perform("Echo", "echo", "warm") == "warm"  # this client now knows the address
    server.kill()
    time.sleep(TEST_TTL * 1.5)  # longer than its lease: etcd is away, the service is not
    assert client.perform("Echo", "echo", "still here") == "still here"  # a warm client keeps calling
    result = sf("perform", "Echo", "echo", "1", timeout=30)
    assert result.returncode == 10 and "unreachable" in result.stderr  # a command that needs etcd says so
    server.restart()
    registry = _registry()
    wait_until(lambda: registry.lookup("Echo") is not None and registry.is_held("Echo"), timeout=TEST_TTL * 3,
               message="Echo registered again after the etcd restart")
    time.sleep(TEST_TTL * 1.5)  # a lease that lapsed while etcd was away would be gone by now
    assert registry.names() == ["Echo"] and registry.lookup("Echo").pid == proc.pid
    result = sf("perform", "Echo", "pid")
    assert (result.returncode, result.stdout.strip()) == (0, str(proc.pid)), result.stderr
    warnings = [line for line in proc.output.splitlines() if "registry unreachable" in line]
    assert len(warnings) == 1, proc.output  # logged once per outage, not once per retry


def test_a_lease_etcd_lost_is_taken_again_without_a_duplicate(sf, spawn, registry_env):
    proc = start_echo(spawn, registry_env)
    registry = _registry()
    claim = registry._claim_of("Echo")
    lease = int(registry._get(registry._key("claim", "Echo"))["lease"])
    registry._revoke(lease)  # as etcd does with a lease whose owner was cut off for longer than the TTL
    # (its keeper may take it again at once: no look in between is promised to find it missing)
    wait_until(lambda: (registry._claim_of("Echo") or {}).get("_revision", 0) > claim["_revision"]
               and registry.lookup("Echo") is not None, timeout=TEST_TTL * 5,
               message="Echo registered again under a new lease")
    again = registry._claim_of("Echo")
    assert again["_revision"] > claim["_revision"] and again["pid"] == proc.pid
    assert int(registry._get(registry._key("claim", "Echo"))["lease"]) != lease
    assert registry.names() == ["Echo"]
    proc.wait_for("registered again", timeout=10)  # logged just after the writes: the output may lag
    result = sf("perform", "Echo", "pid")
    assert (result.returncode, result.stdout.strip()) == (0, str(proc.pid)), result.stderr


def test_a_name_taken_by_another_owner_while_the_lease_was_lost_is_left_to_it(sf, spawn, registry_env):
    proc = start_echo(spawn, registry_env)
    registry = _registry()
    from servicefactory.errors import AlreadyRunning

    for _ in range(20):  # revoke its lease and claim the name before its keeper takes it again
        found = registry._get(registry._key("claim", "Echo"))
        if found is not None:
            registry._revoke(int(found["lease"]))
        try:
            usurper = registry.claim("Echo")
            break
        except AlreadyRunning:
            continue  # the keeper was quicker this time
    else:
        pytest.fail("never won the name from the keeper")
    try:
        registry.publish(usurper, ServiceRecord("Echo", 1, host="127.0.0.1", port=9, started=time.time(),
                                                hostname="elsewhere"))
        wait_until(lambda: "no longer publishing" in proc.output, timeout=TEST_TTL * 3,
                   message="the old owner to give the name up")
        time.sleep(TEST_TTL / 2)
        assert registry.lookup("Echo").hostname == "elsewhere"  # never overwritten
        assert proc.popen.poll() is None  # and it still serves
    finally:
        registry.release(usurper)


def test_stop_signals_nothing_for_a_record_of_another_host(sf, registry_env, closed_port):
    """A pid in another host's record means nothing here: stop asks its API, never kills a local pid."""
    registry = _registry()
    claim = registry.claim("Far")
    bystander = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(60)"])
    try:
        far = ServiceRecord("Far", bystander.pid, host="127.0.0.1", port=closed_port(), started=time.time(),
                            hostname="another-host")
        registry.publish(claim, far)
        assert registry.is_held("Far") and not registry.signal(far, signal.SIGKILL)
        assert registry.usage(far) == {} and not registry.is_suspended(far)
        rows = sf.status()
        assert [(row["name"], row["state"]) for row in rows] == [("Far", "running")]
        time.sleep(0.2)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait(10)
        registry.release(claim)


def test_etcd_status_json_lists_the_records_fields(sf, spawn, registry_env):
    start_echo(spawn, registry_env)
    raw = _registry()._get(_registry()._key("record", "Echo"))["value"]
    record = json.loads(raw)
    assert record["hostname"] == socket.gethostname() and record["port"] and record["pid"]
    assert "token" not in raw.decode().lower()


def test_a_supervised_service_on_etcd_is_restarted_after_kill_9_and_vanishes_with_its_supervisor(sf, registry_env):
    sf.write("echo.py", ECHO)
    started = sf.start("echo:Echo")
    registry = _registry()
    record = registry.lookup("Echo")
    assert record.pid == started["pid"] and record.supervisor and registry.owner_alive(record)
    supervisor = registry.lookup(record.supervisor)
    os.kill(started["pid"], signal.SIGKILL)  # the child: its supervisor (holding the lease) starts it again
    again = wait_until(lambda: (r := registry.lookup("Echo")) and r.pid != started["pid"] and r.state == "running"
                       and r, timeout=30, message="Echo restarted under a new pid")
    assert again.restarts == 1 and registry.owner_alive(again) and not registry.owner_alive(record)
    result = sf("perform", "Echo", "pid")
    assert (result.returncode, result.stdout.strip()) == (0, str(again.pid)), result.stderr
    os.kill(supervisor.pid, signal.SIGKILL)  # the lease's owner: every record it kept goes with it
    wait_until(lambda: registry.names() == [], timeout=TEST_TTL + 15, interval=0.1,
               message="the killed supervisor's records to expire")
    wait_until(lambda: registry.is_gone(again), timeout=15, message="the child to follow its supervisor out")
    result = sf("perform", "Echo", "pid")
    assert result.returncode == 3 and "not running" in result.stderr, result.stderr
    result = sf("run", "echo:Echo", "--daemon")  # and the name is free for the next run
    assert result.returncode == 0, result.stderr
    assert sf("stop", "Echo").returncode == 0


def test_a_service_started_while_etcd_is_away_serves_and_registers_once_etcd_answers(sf, spawn, own_etcd):
    server, env = own_etcd
    server.kill()
    proc = spawn(args=[PYTHON, "echo.py"], files={"echo.py": ECHO}, env=env)
    proc.wait_for("registry unreachable", timeout=30)  # said once; it does not give up, nor stop
    assert proc.popen.poll() is None, proc.output
    server.restart()
    registry = _registry()
    wait_until(lambda: registry.lookup("Echo") is not None, timeout=TEST_TTL * 5, message="Echo registered")
    result = sf("perform", "Echo", "pid")
    assert (result.returncode, result.stdout.strip()) == (0, str(proc.pid)), result.stderr
    proc.wait_for("registered now that the registry answers", timeout=10)


def test_a_supervisor_restarts_a_service_killed_while_etcd_is_away_and_publishes_it_once_etcd_returns(sf, own_etcd):
    server, env = own_etcd
    sf.write("echo.py", ECHO)
    started = sf.start("echo:Echo")
    registry = _registry()
    supervisor = registry.lookup(registry.lookup("Echo").supervisor)
    server.kill()
    os.kill(started["pid"], signal.SIGKILL)  # its restart writes the claim and the record: etcd is away
    time.sleep(TEST_TTL * 1.5)
    assert registry.local.is_gone(supervisor) is False, "the supervisor died while etcd was away"
    server.restart()
    again = wait_until(lambda: (r := registry.lookup("Echo")) and r.pid != started["pid"] and r.state == "running"
                       and r, timeout=TEST_TTL * 10, message="the restarted Echo published")
    assert registry.owner_alive(again) and registry.names() == sorted(["Echo", supervisor.name])
    result = sf("perform", "Echo", "pid")
    assert (result.returncode, result.stdout.strip()) == (0, str(again.pid)), result.stderr
    assert sf("stop", "Echo").returncode == 0


def test_status_reads_etcd_once_for_any_number_of_services_and_answers_as_reading_each(registry_env):
    from servicefactory.registry.base import state_of
    from servicefactory.supervise import control

    registry = _registry()
    claims = []
    for i in range(1, 31):
        claim = registry.claim(f"Many/{i}")
        registry.publish(claim, ServiceRecord(f"Many/{i}", os.getpid(), instance=i, host="127.0.0.1", port=i,
                                              started=time.time(), create_time=process_start_time(os.getpid()),
                                              hostname=socket.gethostname() if i % 3 else "another-host"))
        claims.append(claim)
    try:
        reader = _registry()
        expected = [(name, state_of(reader, name)) for name in reader.names()]
        requests = []
        real = reader._request
        reader._request = lambda path, payload, **how: requests.append(path) or real(path, payload, **how)
        rows = control.status(registry=reader)
        assert len(requests) <= 2, f"{len(requests)} etcd requests for {len(rows)} services"
        assert sorted((row["name"], row["state"]) for row in rows) == sorted((name, state) for name, (state, _) in expected)
        assert [row["name"] for row in rows][:3] == ["Many/1", "Many/2", "Many/3"] and len(rows) == 30  # by number
        with reader.snapshot():
            registry.release(claims.pop())  # another client's write, after the snapshot was read
            assert reader.lookup("Many/30") is not None  # one moment, as status shows it
            reader.clean("Never")  # this thread's own write ends the snapshot: reads see etcd again
            assert reader.lookup("Many/30") is None
        assert reader.lookup("Many/29") is not None and not reader.is_held("Many/30")
    finally:
        for claim in claims:
            registry.release(claim)


def _counting(registry) -> list[str]:
    """The paths of the requests `registry` makes from now on."""
    made: list[str] = []
    real = registry._request
    registry._request = lambda path, payload, **how: made.append(path) or real(path, payload, **how)
    return made


def _record(name: str) -> ServiceRecord:
    return ServiceRecord(name, os.getpid(), host="127.0.0.1", port=9, started=time.time(),
                         create_time=process_start_time(os.getpid()) or 0.0, hostname=socket.gethostname())


def test_a_following_client_sees_changes_through_its_watch_and_makes_no_request_per_read(registry_env):
    reader, writer = _registry(), _registry()
    reader.follow()
    first = wait_until(reader.version, timeout=20, message="the watch to be up")
    made = _counting(reader)
    claim = writer.claim("Watched/1")
    writer.publish(claim, _record("Watched/1"))
    found = wait_until(lambda: reader.lookup("Watched/1"), timeout=10, message="the watch to bring the record")
    assert found.port == 9 and reader.version() != first
    version = reader.version()
    for _ in range(200):  # a warm client's reads: answered from the copy
        assert reader.instances_of("Watched") == ["Watched/1"] and reader.is_held("Watched/1")
    assert made == [] and reader.version() == version  # no request, and nothing changed
    writer.release(claim)
    wait_until(lambda: reader.lookup("Watched/1") is None and not reader.is_held("Watched/1"), timeout=10,
               message="the watch to bring the release")
    assert made == [] and reader.version() != version
    mine = reader.claim("Mine")  # its own write: read back at once, never an older copy
    reader.publish(mine, _record("Mine"))
    assert reader.lookup("Mine") is not None and "/kv/txn" in made
    reader.release(mine)
    assert reader.lookup("Mine") is None
    watching = reader._mirror._thread
    del reader, made
    import gc
    # a registry nobody holds any more (its keeper, which held it, ends with its last claim) ends
    # its watch, rather than follow etcd for the rest of the process
    wait_until(lambda: gc.collect() is not None and not watching.is_alive(), timeout=15,
               message="the watch of a registry nobody holds to end")


def test_a_following_client_reads_etcd_itself_while_its_watch_is_down_and_follows_again_after(own_etcd):
    server, _ = own_etcd
    reader, writer = _registry(), _registry()
    reader.follow()
    wait_until(reader.version, timeout=20, message="the watch to be up")
    server.kill()
    wait_until(lambda: reader.version() is None, timeout=20, message="the copy to stop answering")
    from servicefactory.errors import StateError
    with pytest.raises(StateError, match="unreachable"):  # never an answer from a copy nobody updates
        reader.lookup("Later")
    server.restart()
    claim = writer.claim("Later")
    writer.publish(claim, _record("Later"))
    wait_until(reader.version, timeout=20, message="the watch to be up again")
    made = _counting(reader)
    assert wait_until(lambda: reader.lookup("Later"), timeout=10, message="the record, through the copy")
    assert made == []
    writer.release(claim)


def _gateway(server: Etcd, path: str, payload: dict, token: str | None = None) -> dict:
    """POST to `server`'s v3 gateway over TLS with the test client certificate (the test's own setup)."""
    import http.client

    connection = http.client.HTTPSConnection(server.host, server.port, timeout=10, context=server.tls.context())
    try:
        headers = {"Content-Type": "application/json", **({"Authorization": token} if token else {})}
        connection.request("POST", "/v3" + path, json.dumps(payload), headers)
        response = connection.getresponse()
        body = json.loads(response.read())
        assert response.status == 200, body
        return body
    finally:
        connection.close()


def test_over_tls_with_a_client_certificate_and_etcds_authentication_services_register_and_commands_read(
        sf, spawn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from etcd_support import Pki

    pki = Pki(str(tmp_path))
    with running_etcd(tls=pki) as server:
        for path, payload in (("/auth/user/add", {"name": "root", "password": "root-password"}),
                              ("/auth/role/add", {"name": "root"}),
                              ("/auth/user/grant", {"user": "root", "role": "root"}), ("/auth/enable", {})):
            _gateway(server, path, payload)
        env = use_etcd(server.url(), monkeypatch)
        env.update(SERVICEFACTORY_ETCD_CA_FILE=pki.ca[0], SERVICEFACTORY_ETCD_CERT_FILE=pki.client[0],
                   SERVICEFACTORY_ETCD_KEY_FILE=pki.client[1], SERVICEFACTORY_ETCD_USER="root",
                   SERVICEFACTORY_ETCD_PASSWORD="root-password")
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        assert env["SERVICEFACTORY_REGISTRY"].startswith("etcds://")
        proc = start_echo(spawn, env)  # claimed, leased, kept alive: through etcd3gw, over TLS, authenticated
        result = sf("perform", "Echo", "echo", '"over tls"')  # a cold read: http.client, over TLS, authenticated
        assert (result.returncode, result.stdout.strip()) == (0, '"over tls"'), result.stderr
        (row,) = sf.status()
        assert (row["name"], row["state"], row["pid"]) == ("Echo", "running", proc.pid)
        token = _gateway(server, "/auth/authenticate", {"name": "root", "password": "root-password"})["token"]
        keys = _gateway(server, "/kv/range", {"key": "AA==", "range_end": "AA==", "keys_only": True}, token)
        assert any(b"record/Echo" in __import__("base64").b64decode(kv["key"]) for kv in keys["kvs"])
        for change, says in (({"SERVICEFACTORY_ETCD_PASSWORD": "wrong"}, "authentication failed"),
                             ({"SERVICEFACTORY_ETCD_CERT_FILE": "", "SERVICEFACTORY_ETCD_KEY_FILE": ""}, "unreachable"),
                             ({"SERVICEFACTORY_ETCD_CA_FILE": ""}, "TLS"),
                             ({"SERVICEFACTORY_ETCD_CA_FILE": str(tmp_path / "missing.pem")}, "cannot be read"),
                             ({"SERVICEFACTORY_ETCD_PASSWORD": ""}, "needs both")):
            refused = sf("status", env=change)
            assert refused.returncode == 10 and says in refused.stderr, (change, refused.stderr)
            assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
        result = sf("stop", "Echo")
        assert result.returncode == 0 and "Echo stopped" in result.stdout, result.stderr
        assert proc.wait(10) == 0


def test_a_following_client_keeps_calling_known_instances_through_an_etcd_outage_within_its_lease_ttl(
        sf, own_etcd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh-enough view keeps serving: the watched copy answers for up to the lease TTL (10 s
    here) after etcd went away, so calls spread over the known instances go on; then, with etcd
    still away, the client fails in one line instead of trusting an old copy."""
    from servicefactory.errors import StateError
    from servicefactory.http import client

    server, _ = own_etcd
    monkeypatch.setenv("SERVICEFACTORY_LEASE_TTL", "10")
    (tmp_path / "echo.py").write_text(textwrap.dedent(ECHO))
    started = sf("run", "echo:Echo", "--instances", "2", "--daemon")
    assert started.returncode == 0, started.stdout + started.stderr
    assert len({client.perform("Echo", "pid") for _ in range(20)}) == 2  # both, through the followed copy
    (registry,) = client.default._registries.values()
    wait_until(registry.version, timeout=20, message="the watch to be up")
    server.kill()
    outage = time.monotonic()
    answered = set()
    while time.monotonic() - outage < 3:  # well within the grace of 10 s
        answered.add(client.perform("Echo", "pid"))
        time.sleep(0.02)
    assert len(answered) == 2
    wait_until(lambda: registry.version() is None, timeout=30, message="the copy's grace to end")
    assert time.monotonic() - outage >= 9  # not before its grace
    with pytest.raises(StateError, match="unreachable"):
        client.perform("Echo", "pid")
    server.restart()
    wait_until(registry.version, timeout=20, message="the watch to be up again")
    assert len({client.perform("Echo", "pid") for _ in range(20)}) == 2
    assert sf("stop", "Echo").returncode == 0
