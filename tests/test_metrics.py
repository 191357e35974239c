"""GET /metrics: live services scraped over real sockets, parsed with prometheus_client's own parser."""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
from typing import Any, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import request, wait_until
from servicefactory import Service
from servicefactory._metrics import CALL_BUCKETS, MAX_ERROR_TYPES, Counters
from servicefactory.registry.backends import default_registry
from servicefactory.http import client
from servicefactory.testing import running

TOKEN = "metrics-test-token-0123456789abcdefghijklmnop"


@Service.API.endpoint(port=0)
class Counted(Service.base):
    """Echoes, fails on demand, and has a loop that raises every third iteration."""

    def __init__(self) -> None:
        self.turn = 0

    def loop(self) -> None:
        self.turn += 1
        if self.turn % 3 == 0:
            raise RuntimeError("every third iteration fails")
        self.sleep(0.01)

    @Service.API.handle("echo")
    def echo(self, data: Any) -> Any:
        """Answer what was sent."""
        return data

    @Service.API.handle("fail")
    def fail(self, data: Any) -> None:
        raise KeyError("on purpose") if data == "key" else ValueError("on purpose")


@pytest.fixture(autouse=True)
def _close_client_connections() -> Iterator[None]:
    yield
    client.close_connections()


def scrape(port: int, **headers: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a scrape, keyed by (name, sorted labels)."""
    status, answer_headers, body = request(port, "GET", "/metrics", **headers)
    assert status == 200, body
    assert answer_headers["content-type"].startswith("text/plain; version=0.0.4"), answer_headers
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def calls(samples: dict, action: str, code: int) -> float:
    return samples.get(("servicefactory_calls_total", (("action", action), ("code", str(code)))), 0.0)


def test_counters_move_by_exactly_the_calls_made_also_from_many_threads_at_once():
    with running(Counted()) as service:
        port = service.address[1]
        before = scrape(port)

        def hammer() -> None:
            for number in range(50):
                assert Counted.perform("echo", number) == number
        threads = [threading.Thread(target=hammer) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for data in ("key", "value", "value"):
            with pytest.raises(client.ActionFailed):
                Counted.perform("fail", data)
        assert request(port, "POST", "/nope", b"1", **{"Content-Type": "application/json"})[0] == 404
        assert request(port, "POST", "/echo", b"1", **{"Content-Type": "text/plain"})[0] == 415
        assert request(port, "POST", "/echo", b"[1", **{"Content-Type": "application/json"})[0] == 400
        assert request(port, "GET", "/echo")[0] == 405
        after = scrape(port)
    assert calls(after, "echo", 200) - calls(before, "echo", 200) == 400
    assert calls(after, "fail", 500) - calls(before, "fail", 500) == 3
    assert calls(after, "", 404) - calls(before, "", 404) == 1
    assert calls(after, "echo", 415) == 1 and calls(after, "echo", 400) == 1 and calls(after, "echo", 405) == 1
    assert after[("servicefactory_errors_total", (("action", "fail"), ("type", "KeyError")))] == 1
    assert after[("servicefactory_errors_total", (("action", "fail"), ("type", "ValueError")))] == 2
    # the latency histogram saw every call to the action, each in one bucket (cumulative counts)
    histogram = ("servicefactory_call_duration_seconds_count", (("action", "echo"),))
    assert after[histogram] - before.get(histogram, 0) == 403
    assert after[("servicefactory_call_duration_seconds_bucket", (("action", "echo"), ("le", "+Inf")))] \
        == after[histogram]
    assert after[("servicefactory_call_duration_seconds_sum", (("action", "echo"),))] > 0
    # scrapes themselves are not calls
    assert not any(dict(labels).get("action") == "metrics" for _, labels in after)


def raw(port: int, data: bytes) -> bytes:
    """Send `data` on a new connection and read the answer until the service closes it."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(data)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


def test_answers_the_http_layer_gives_before_any_action_are_counted_too():
    """A body over the limit (a perform() of too much data) and a malformed request are answered
    by the server's framing, before the application sees them: each still counts, as a request
    that reached no action, and `health` counts them as rejected."""
    with running(Counted()) as service:
        port = service.address[1]
        before = scrape(port)
        with pytest.raises(client.InvalidData, match="413|limit"):
            Counted.perform("echo", "x" * (2 << 20))
        head = f"POST /echo HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        assert raw(port, (head + f"Content-Length: {1 << 40}\r\n\r\n").encode()).startswith(b"HTTP/1.1 413 ")
        assert raw(port, b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        assert raw(port, (head + "Content-Length: 1\r\nContent-Length: 2\r\n\r\n1").encode()).startswith(
            b"HTTP/1.1 400 ")
        after = scrape(port)
        counters = Counted.perform("health")["counters"]
    assert calls(after, "", 413) - calls(before, "", 413) == 2
    assert calls(after, "", 400) - calls(before, "", 400) == 2
    assert calls(after, "echo", 200) == calls(before, "echo", 200)  # none of them ran the handler
    assert counters["rejected"] >= 4


def test_health_answers_the_same_totals_and_the_loop_counts_match_the_scrape():
    with running(Counted()) as service:
        port = service.address[1]
        for number in range(5):
            Counted.perform("echo", number)
        with pytest.raises(client.ActionFailed):
            Counted.perform("fail")
        wait_until(lambda: Counted.perform("health")["errors"] >= 2, message="two loop errors")
        health = Counted.perform("health")
        samples = scrape(port)
    counters = health["counters"]
    # the health call itself was answered after its counters were read
    assert counters["actions"]["echo"] == {"calls": 5, "errors": 0, "rejected": 0,
                                           "seconds": counters["actions"]["echo"]["seconds"]}
    assert counters["actions"]["fail"]["errors"] == 1
    assert counters["calls"] >= 6 and counters["errors"] == 1
    assert 0 < counters["actions"]["echo"]["seconds"] < 5
    assert isinstance(health["last_good_iteration"], float) and health["last_good_iteration"] < 10
    assert samples[("servicefactory_loop_iterations_total", ())] >= health["iterations"]
    assert samples[("servicefactory_loop_errors_total", ())] >= health["errors"] >= 2
    assert samples[("servicefactory_loop_duration_seconds_count", ())] == \
        samples[("servicefactory_loop_iterations_total", ())] + samples[("servicefactory_loop_errors_total", ())]
    assert samples[("servicefactory_uptime_seconds", ())] > 0
    assert 0 <= samples[("servicefactory_loop_last_good_age_seconds", ())] < 10
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "process_threads"):
        assert samples[(name, ())] > 0, name
    assert samples[("process_threads", ())] >= 3  # main, loop... the server's selector and workers
    info = [labels for name, labels in samples if name == "servicefactory_info"]
    assert info and dict(info[0])["name"] == "Counted"


def test_metrics_obey_the_same_host_origin_and_token_rules_as_actions():
    @Service.API.endpoint(port=0, require_token=True)
    class Guarded(Service.base):
        @Service.API.handle("echo")
        def echo(self, data: Any) -> Any:
            return data

    with running(Guarded(), token=TOKEN) as service:
        port = service.address[1]
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert request(port, "GET", "/metrics")[0] == 401
        assert request(port, "GET", "/metrics", Authorization="Bearer wrong-token-wrong-token-wrong")[0] == 401
        assert request(port, "GET", "/metrics", Host="evil.example", **bearer)[0] == 403
        assert request(port, "GET", "/metrics", Origin="http://evil.example", **bearer)[0] == 403
        assert request(port, "GET", "/metrics", **{"Sec-Fetch-Site": "cross-site"}, **bearer)[0] == 403
        assert request(port, "GET", "/metrics", **{"Servicefactory-Service": "Other"}, **bearer)[0] == 421
        # the methods and media types of an action: a form POST a web page could send runs nothing
        assert request(port, "POST", "/metrics", b"x=1", **{"Content-Type": "application/x-www-form-urlencoded"},
                       **bearer)[0] == 415
        status, headers, _ = request(port, "DELETE", "/metrics", **bearer)
        assert status == 405 and headers["allow"] == "GET, POST"
        samples = scrape(port, **bearer)
    # the refusals were counted as answers that reached no action
    assert calls(samples, "", 401) == 2 and calls(samples, "", 403) >= 3


def test_a_users_action_cannot_take_the_metrics_route_by_accident():
    with pytest.raises(TypeError, match="built-in route 'metrics'"):
        class Clash(Service.base):
            @Service.API.handle("metrics")
            def mine(self, data: Any) -> Any:
                return "mine"

    @Service.API.endpoint(port=0)
    class Own(Service.base):
        @Service.API.handle("metrics", methods=("GET", "POST"), override=True)
        def mine(self, data: Any) -> Any:
            return "mine"

    with running(Own()) as service:
        status, _, body = request(service.address[1], "GET", "/metrics")
    assert (status, json.loads(body)) == (200, "mine")


NEVER_SCRAPED = """
import sys
from servicefactory import Service


@Service.API.endpoint(port=0)
class Quiet(Service.base):
    def loop(self):
        self.sleep(1)

    @Service.API.handle("loaded")
    def loaded(self, data):
        return sorted(m for m in ("prometheus_client",) if m in sys.modules)
"""


def test_a_service_that_is_never_scraped_never_imports_prometheus_client(sf):
    sf.write("quiet.py", NEVER_SCRAPED)
    started = sf.start("quiet:Quiet")
    port = int(started["url"].rsplit(":", 1)[1])
    for _ in range(3):
        assert Counted.perform("loaded", name="Quiet") == []
    assert Counted.perform("health", name="Quiet")["counters"]["actions"]["loaded"]["calls"] == 3
    samples = scrape(port)
    assert calls(samples, "loaded", 200) == 3
    assert Counted.perform("loaded", name="Quiet") == ["prometheus_client"]


def rss_mib(pid: int) -> float:
    """The resident memory of a live process, from /proc (MiB)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_an_idle_never_scraped_service_stays_within_20_mib_and_a_scrape_is_what_loads_the_library(sf):
    sf.write("quiet.py", NEVER_SCRAPED)
    started = sf.start("quiet:Quiet")
    pid, port = started["pid"], int(started["url"].rsplit(":", 1)[1])
    assert Counted.perform("health", name="Quiet")["state"] == "running"  # served calls: not merely started
    idle = rss_mib(pid)
    assert idle <= 20.0, f"idle RSS {idle:.1f} MiB"
    assert Counted.perform("loaded", name="Quiet") == []
    scrape(port)
    assert rss_mib(pid) > idle  # prometheus-client came with the first scrape, and costs memory


def supervisor_of(sf, name: str) -> tuple[int, str]:
    """The supervisor's port and token (from its owner-only secret) for the service `name`."""
    record = sf.row(name)
    supervisor = record["supervisor"]
    registry = default_registry()
    return registry.lookup(supervisor).port, registry.secret(supervisor)


def test_the_supervisor_answers_metrics_for_every_service_it_runs(sf):
    sf.write("pair.py", """
        from servicefactory import Service

        @Service.API.endpoint(port=0)
        class First(Service.base):
            def loop(self):
                self.sleep(1)

        class Second(Service.base):
            def loop(self):
                self.sleep(1)
    """)
    sf.daemon("pair")
    port, token = supervisor_of(sf, "First")
    assert request(port, "GET", "/metrics")[0] == 401  # the supervisor's API always needs its token
    bearer = {"Authorization": f"Bearer {token}"}
    samples = scrape(port, **bearer)
    for name in ("First", "Second"):
        assert samples[("servicefactory_supervised_state", (("service", name), ("state", "running")))] == 1
        assert samples[("servicefactory_supervised_state", (("service", name), ("state", "backoff")))] == 0
        assert samples[("servicefactory_supervised_restarts_total", (("service", name),))] == 0
        assert samples[("servicefactory_supervised_uptime_seconds", (("service", name),))] > 0
    pid = sf.row("Second")["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: sf.row("Second")["state"] == "running" and sf.row("Second")["pid"] != pid, timeout=30,
               message="Second restarted")
    rows = {row["name"]: row for row in client.perform(sf.row("First")["supervisor"], "status", token=token)}
    assert rows["First"]["uptime"] > 0 and rows["First"]["started"] > 0 and rows["Second"]["uptime"] >= 0
    samples = scrape(port, **bearer)
    assert samples[("servicefactory_supervised_restarts_total", (("service", "Second"),))] == 1
    assert samples[("servicefactory_supervised_last_exit_code", (("service", "Second"),))] == -signal.SIGKILL
    assert samples[("servicefactory_supervised_restarts_total", (("service", "First"),))] == 0
    assert calls(samples, "status", 200) == 1  # its own API's calls are counted as any service's


def test_the_supervisor_answers_metrics_per_instance_and_a_kill_9_counts_for_that_instance_only(sf):
    sf.write("many.py", """
        from servicefactory import Service

        @Service.API.endpoint(port=0)
        class Many(Service.base):
            def loop(self):
                self.sleep(1)
    """)
    sf.daemon("many:Many", "--instances", "2")
    port, token = supervisor_of(sf, "Many/1")
    bearer = {"Authorization": f"Bearer {token}"}
    # the supervisor's /metrics: its token, and the Host/Origin rules of every API, token or not
    assert request(port, "GET", "/metrics")[0] == 401
    assert request(port, "GET", "/metrics", Host="evil.example", **bearer)[0] == 403
    assert request(port, "GET", "/metrics", Origin="http://evil.example", **bearer)[0] == 403
    assert request(port, "GET", "/metrics", **{"Sec-Fetch-Site": "cross-site"}, **bearer)[0] == 403
    samples = scrape(port, **bearer)
    for name in ("Many/1", "Many/2"):
        assert samples[("servicefactory_supervised_state", (("service", name), ("state", "running")))] == 1
        assert samples[("servicefactory_supervised_restarts_total", (("service", name),))] == 0
    assert not [labels for metric, labels in samples if metric == "servicefactory_supervised_state"
                and dict(labels)["service"] == "Many"]  # instances, not the service as a whole
    pid = sf.row("Many/2")["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: sf.row("Many/2")["state"] == "running" and sf.row("Many/2")["pid"] != pid, timeout=30,
               message="Many/2 restarted")
    samples = scrape(port, **bearer)
    assert samples[("servicefactory_supervised_restarts_total", (("service", "Many/2"),))] == 1
    assert samples[("servicefactory_supervised_last_exit_code", (("service", "Many/2"),))] == -signal.SIGKILL
    assert samples[("servicefactory_supervised_restarts_total", (("service", "Many/1"),))] == 0


def test_a_latency_on_a_bucket_bound_counts_in_that_bucket_and_exception_types_are_capped():
    counters = Counters()
    counters.record("a", 200, CALL_BUCKETS[0])  # Prometheus buckets are `le`: the bound itself is inside
    counters.record("a", 200, CALL_BUCKETS[0] * 1.01)
    counters.record("a", 200, 1e9)  # beyond the last bound: +Inf only
    for number in range(MAX_ERROR_TYPES + 5):
        counters.record("b", 500, 0.0, f"Error{number}")
    counters.record(None, 404, 0.0)
    snapshot = counters.snapshot()
    buckets = snapshot["actions"]["a"][1]
    assert buckets[0] == 1 and buckets[1] == 1 and buckets[-1] == 1 and sum(buckets) == 3
    error_types = snapshot["actions"]["b"][3]
    assert len(error_types) == MAX_ERROR_TYPES + 1 and error_types["other"] == 5
    totals = counters.totals()
    assert (totals["calls"], totals["errors"], totals["rejected"]) == (3 + MAX_ERROR_TYPES + 5 + 1,
                                                                       MAX_ERROR_TYPES + 5, 1)


def test_many_first_scrapes_at_once_all_answer_the_same_families(sf):
    sf.write("quiet.py", NEVER_SCRAPED)
    port = int(sf.start("quiet:Quiet")["url"].rsplit(":", 1)[1])
    answers: list[set] = []

    def scrape_names() -> None:
        answers.append({name for name, _ in scrape(port)})
    threads = [threading.Thread(target=scrape_names) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == 8 and all(names == answers[0] for names in answers)
    assert "servicefactory_uptime_seconds" in answers[0]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
