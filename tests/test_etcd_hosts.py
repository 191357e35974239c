"""Many hosts through etcd, for real: Linux network namespaces stand for the hosts (each with its own
network stack, address and hostname), joined by a bridge; etcd runs on one, services on two others,
and the CLI on a third calls them by name, lists them, stops them, and sees a killed or cut-off host
vanish within the lease TTL. Skipped, with the reason, only where namespaces cannot be made (not
root, no `ip`).
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Iterator

import pytest

from etcd_support import ETCD, TEST_TTL, Etcd, Network, netns_unavailable
from support import COMMAND, PYTHON, wait_until

REASON = netns_unavailable() if ETCD else "the etcd binary is not installed (Debian: etcd-server)"
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

# bound to every address of its host: reachable from the others (with the token)
ECHO = """
    import os, socket
    from servicefactory import Service

    @Service.API.endpoint(host="0.0.0.0", port=0)
    class Echo(Service.base):
        def loop(self):
            self.sleep(1)

        @Service.API.handle("where")
        def where(self, data):
            return {"hostname": socket.gethostname(), "pid": os.getpid()}

    if __name__ == "__main__":
        Echo().run()
"""


class Cluster:
    """etcd on host `etcd`, and hosts a, b (services) and c (the client), on one bridge."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.network = Network()
        self.etcd: Etcd | None = None
        try:
            etcd_address = self.network.add("etcd")
            for host in ("a", "b", "c"):
                self.network.add(host)
            self.etcd = Etcd(host=etcd_address, command_prefix=tuple(self.network.command("etcd", [])),
                             namespace=self.network.namespace("etcd")).start()
        except BaseException:
            self.close()
            raise
        self.url = self.etcd.url()
        self.token = secrets.token_hex(32)
        (tmp_path / "echo.py").write_text(textwrap.dedent(ECHO))

    def env(self, host: str) -> dict[str, str]:
        """The environment of a servicefactory process on `host`: the shared registry and token, a
        state directory (logs) of the host's own."""
        home = self.tmp_path / f"home-{host}"
        home.mkdir(mode=0o700, exist_ok=True)
        return dict(os.environ, SERVICEFACTORY_REGISTRY=self.url, SERVICEFACTORY_LEASE_TTL=str(TEST_TTL),
                    SERVICEFACTORY_TOKEN=self.token, SERVICEFACTORY_HOME=str(home), PYTHONUNBUFFERED="1",
                    PYTHONPATH=str(self.tmp_path))

    def start_echo(self, host: str) -> subprocess.Popen:
        """Echo on `host` (python echo.py), its output in a file."""
        log = open(self.tmp_path / f"echo-{host}.log", "ab")
        try:
            return self.network.popen(host, [PYTHON, str(self.tmp_path / "echo.py")], self.env(host),
                                      cwd=self.tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)
        finally:
            log.close()

    def output(self, host: str) -> str:
        """What Echo on `host` printed."""
        return (self.tmp_path / f"echo-{host}.log").read_text(errors="replace")

    def cli(self, host: str, *args: str, timeout: float = 60, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
        """`servicefactory ARGS` on `host` (`env` on top of the host's own)."""
        return self.network.run(host, [*COMMAND, *args], {**self.env(host), **(env or {})}, timeout=timeout)

    def status(self, host: str) -> list[dict]:
        """`status --json` rows as `host` sees them."""
        result = self.cli(host, "status", "--json")
        assert result.returncode in (0, 3), result.stderr
        return json.loads(result.stdout)

    def registered(self, host: str, name: str = "Echo") -> dict | None:
        """The record of `name` as `host` reads it from etcd, or None."""
        code = ("import json, sys; from servicefactory.registry.backends import default_registry; "
                "r = default_registry().lookup(sys.argv[1]); print(json.dumps(r and r.to_dict()))")
        result = self.network.run(host, [PYTHON, "-c", code, name], self.env(host))
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def watch_gone(self, host: str, name: str = "Echo") -> subprocess.Popen:
        """A process on `host` that reads `name`'s record every 20 ms and prints the wall-clock time it
        first finds it missing (after printing `watching`): expiry timed without the probes' own start-up."""
        code = textwrap.dedent("""
            import sys, time
            from servicefactory.registry.backends import default_registry
            registry = default_registry()
            registry.lookup(sys.argv[1])
            print("watching", flush=True)
            while registry.lookup(sys.argv[1]) is not None:
                time.sleep(0.02)
            print(time.time(), flush=True)
        """)
        return self.network.popen(host, [PYTHON, "-c", code, name], self.env(host), stdout=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL, text=True)

    def close(self) -> None:
        """Stop etcd and every process on the hosts; delete the namespaces."""
        try:
            if self.etcd is not None:
                self.etcd.stop()
        finally:
            self.network.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    hosts = Cluster(tmp_path)
    try:
        yield hosts
    finally:
        hosts.close()


def wait_registered(cluster: Cluster, host: str, service: subprocess.Popen) -> dict:
    """Wait until `host` sees Echo in etcd (or fail with the service's output)."""
    def found():
        assert service.poll() is None, cluster.output("a") + cluster.output("b")
        return cluster.registered(host)
    return wait_until(found, timeout=30, interval=0.2, message="Echo to be registered")


def test_a_service_on_host_a_is_called_by_name_listed_and_stopped_from_host_c(cluster: Cluster):
    service = cluster.start_echo("a")
    record = wait_registered(cluster, "c", service)
    assert record["hostname"] == "a" and record["host"] == cluster.network.hosts["a"]  # advertised, not 0.0.0.0
    result = cluster.cli("c", "perform", "Echo", "where")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"hostname": "a", "pid": service.pid}  # answered on host a
    (row,) = cluster.status("c")
    assert (row["name"], row["state"], row["host"]) == ("Echo", "running", cluster.network.hosts["a"])
    result = cluster.cli("c", "stop", "Echo")
    assert result.returncode == 0 and "Echo stopped" in result.stdout, result.stdout + result.stderr
    assert service.wait(15) == 0  # stopped gracefully through its API, not signalled from c
    assert cluster.registered("c") is None  # withdrawn at once, not after the TTL
    result = cluster.cli("c", "perform", "Echo", "where")
    assert result.returncode == 3 and "not running" in result.stderr, result.stderr


def test_kill_9_on_host_a_makes_the_record_expire_and_calls_from_c_say_not_running(cluster: Cluster):
    service = cluster.start_echo("a")
    wait_registered(cluster, "c", service)
    assert cluster.cli("c", "perform", "Echo", "where").returncode == 0
    watcher = cluster.watch_gone("c")
    assert watcher.stdout.readline().strip() == "watching"
    killed = time.time()
    service.kill()  # the host's process dies outright: nothing withdraws its record
    service.wait(10)
    result = cluster.cli("c", "perform", "Echo", "where")  # before the lease lapses: refused, not hung
    assert result.returncode == 3 and "not running" in result.stderr, result.stderr
    watcher.wait(TEST_TTL + 20)
    took = float(watcher.stdout.readline()) - killed
    assert took < TEST_TTL + 2, f"the record outlived its lease: {took:.2f} s for a {TEST_TTL} s TTL"
    result = cluster.cli("c", "perform", "Echo", "where")
    assert result.returncode == 3 and "not running" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_host_cut_off_vanishes_after_the_ttl_keeps_serving_and_returns_when_mended(cluster: Cluster):
    service = cluster.start_echo("a")
    record = wait_registered(cluster, "c", service)
    cluster.network.cut("a")
    wait_until(lambda: cluster.registered("c") is None, timeout=TEST_TTL + 10, interval=0.2,
               message="the cut-off host's record to expire")
    # on its own host it still serves (called by address: it cannot reach etcd to be found by name)
    code = textwrap.dedent("""
        import sys
        from servicefactory.http import client
        from servicefactory.registry.local import LocalRegistry
        print(client.perform("Echo", "where", fallback=("127.0.0.1", int(sys.argv[1])), registry=LocalRegistry()))
    """)
    local = cluster.network.run("a", [PYTHON, "-c", code, str(record["port"])], cluster.env("a"))
    assert local.returncode == 0 and "'hostname': 'a'" in local.stdout, local.stderr
    cluster.network.mend("a")
    again = wait_until(lambda: cluster.registered("c"), timeout=TEST_TTL * 4 + 10, interval=0.2,
                       message="the mended host's service to register again")
    assert again["pid"] == service.pid and again["hostname"] == "a"
    result = cluster.cli("c", "perform", "Echo", "where")
    assert result.returncode == 0 and json.loads(result.stdout)["pid"] == service.pid, result.stderr
    assert [row["name"] for row in cluster.status("c")] == ["Echo"]  # one record, no duplicate
    # it says it came back; whether it also logged the outage depends on whether a keep-alive failed
    # outright during the cut or hung until the link was mended (then the lease was simply gone)
    assert "registered again" in cluster.output("a"), cluster.output("a")


def test_two_hosts_racing_for_one_name_leave_exactly_one_owner(cluster: Cluster):
    services = {host: cluster.start_echo(host) for host in ("a", "b")}
    wait_until(lambda: any(service.poll() is not None for service in services.values()), timeout=30,
               interval=0.1, message="one of the two to give up")
    time.sleep(TEST_TTL)  # the winner is not displaced later either
    running = [host for host, service in services.items() if service.poll() is None]
    assert len(running) == 1, {host: cluster.output(host) for host in services}
    (loser,) = set(services) - set(running)
    assert services[loser].returncode == 1 and "Echo is already running" in cluster.output(loser)
    result = cluster.cli("c", "perform", "Echo", "where")
    assert result.returncode == 0 and json.loads(result.stdout)["hostname"] == running[0], result.stderr


def test_a_supervised_service_on_host_a_is_stopped_and_restarted_from_host_c_with_the_token_only(cluster: Cluster):
    """Its supervisor's control API listens beyond loopback only with the shared token (etcd holds
    no token): from host c, stop and restart go through it; without the token they are refused."""
    started = cluster.cli("a", "run", "echo:Echo", "--daemon")
    assert started.returncode == 0, started.stdout + started.stderr
    first = cluster.registered("c")
    assert first and first["hostname"] == "a" and first["supervisor"].startswith("_supervisor-a-"), first
    supervisor = cluster.registered("c", first["supervisor"])
    assert supervisor["host"] == cluster.network.hosts["a"], supervisor  # reachable, not 127.0.0.1
    secret = cluster.network.run("c", [PYTHON, "-c", "from servicefactory.registry.backends import "
                                       "default_registry as d; print(d().secret(__import__('sys').argv[1]))",
                                       first["supervisor"]], cluster.env("c"))
    assert secret.stdout.strip() == "None", secret.stdout  # the token is nowhere in etcd
    (row,) = [row for row in cluster.status("c") if row["name"] == "Echo"]
    assert (row["state"], row["hostname"]) == ("running", "a")
    tokenless = {"SERVICEFACTORY_TOKEN": ""}
    for command in ("stop", "restart"):
        refused = cluster.cli("c", command, "Echo", env=tokenless)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stdout + refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert cluster.registered("c")["pid"] == first["pid"]  # nothing happened to it
    restarted = cluster.cli("c", "restart", "Echo")
    assert restarted.returncode == 0 and "Echo running" in restarted.stdout, restarted.stdout + restarted.stderr
    again = cluster.registered("c")
    assert again["hostname"] == "a" and again["pid"] != first["pid"], again  # a new process, on host a
    result = cluster.cli("c", "perform", "Echo", "where")
    assert result.returncode == 0 and json.loads(result.stdout) == {"hostname": "a", "pid": again["pid"]}, result.stderr
    stopped = cluster.cli("c", "stop", "Echo")
    assert stopped.returncode == 0 and "Echo stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    assert cluster.registered("c") is None
    assert cluster.cli("c", "perform", "Echo", "where").returncode == 3


CALLER = """
import json, os, sys, time
from servicefactory.errors import ServiceFactoryError
from servicefactory.http import client
done, calls, failures, seen = sys.argv[1], 0, [], {}
print("calling", flush=True)
while not os.path.exists(done):
    try:
        answer = client.perform("Echo", "where", timeout=10)
        seen[answer["hostname"]] = seen.get(answer["hostname"], 0) + 1
        calls += 1
    except ServiceFactoryError as exc:
        failures.append(f"{type(exc).__name__}: {exc}")
    time.sleep(0.005)
print(json.dumps({"calls": calls, "failures": failures, "seen": seen}), flush=True)
"""


def test_a_rolling_restart_across_two_hosts_fails_no_call_of_a_client_on_a_third(cluster: Cluster):
    """Echo/1-2 on host a, Echo/3-4 on host b (--first-instance), each host's own supervisor; `restart
    Echo` from host c restarts them one at a time, host by host, while c calls Echo throughout."""
    for host, first in (("a", "1"), ("b", "3")):
        started = cluster.cli(host, "run", "echo:Echo", "--instances", "2", "--first-instance", first, "--daemon")
        assert started.returncode == 0, started.stdout + started.stderr
    alone = cluster.cli("b", "run", "echo:Echo", "--first-instance", "5")
    assert alone.returncode == 2 and "--first-instance goes with --instances" in alone.stderr, alone.stderr
    clash = cluster.cli("b", "run", "echo:Echo", "--instances", "2", "--daemon")  # Echo/1 is host a's
    assert clash.returncode != 0 and "Echo/1 is already running" in clash.stderr, clash.stdout + clash.stderr
    before = {row["name"]: row for row in cluster.status("c")}
    assert {name: row["hostname"] for name, row in before.items()} == {
        "Echo/1": "a", "Echo/2": "a", "Echo/3": "b", "Echo/4": "b"}, before
    done = cluster.tmp_path / "done"
    caller = cluster.network.popen("c", [PYTHON, "-c", CALLER, str(done)], cluster.env("c"),
                                   stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    assert caller.stdout.readline().strip() == "calling"
    try:
        restarted = cluster.cli("c", "restart", "Echo", timeout=180)
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert [line.split()[0] for line in restarted.stdout.splitlines()] == ["Echo/1", "Echo/2", "Echo/3", "Echo/4"]
        time.sleep(0.5)  # calls to the last one restarted, too
    finally:
        done.touch()
    outcome = json.loads(caller.stdout.readline())
    caller.wait(30)
    assert outcome["failures"] == [] and outcome["calls"] > 20, outcome
    assert set(outcome["seen"]) == {"a", "b"}, outcome  # spread over both hosts
    after = {row["name"]: row for row in cluster.status("c")}
    assert all(after[name]["state"] == "running" and after[name]["pid"] != before[name]["pid"] for name in before), after
    for line in restarted.stdout.splitlines():  # where other hosts reach it, not its supervisor's loopback view
        assert f"http://{cluster.network.hosts[after[line.split()[0]]['hostname']]}:" in line, restarted.stdout
    stopped = cluster.cli("c", "stop", "Echo")  # four at once, each through its host's supervisor
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert sorted(line.split()[0] for line in stopped.stdout.splitlines() if " stopped" in line) == [
        "Echo/1", "Echo/2", "Echo/3", "Echo/4"], stopped.stdout
    assert [row for row in cluster.status("c") if row["state"] == "running"] == []


def test_restart_from_another_host_of_a_service_without_a_supervisor_is_refused_not_moved(cluster: Cluster):
    """`serve` runs Echo on host a with no supervisor: restart from host c cannot restart it there,
    and running it again on c would move it; refused in one line, and Echo keeps running on a."""
    served = cluster.network.popen("a", [*COMMAND, "serve", "echo:Echo"], cluster.env("a"),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    record = wait_registered(cluster, "c", served)
    result = cluster.cli("c", "restart", "Echo")
    assert result.returncode == 1 and "runs on host a with no supervisor" in result.stderr, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert cluster.registered("c")["pid"] == record["pid"] and served.poll() is None
    stopped = cluster.cli("c", "stop", "Echo")
    assert stopped.returncode == 0 and "Echo stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    assert served.wait(15) == 0
