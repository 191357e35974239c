"""Instances (issue 12): `run --instances N` runs Test/1 ... Test/N under one supervisor; calls spread
over the live ones, `--instance K` picks one, a rolling restart and a kill -9 of one instance cost
no call, and every call names the instance it means (another answers 421 and runs nothing)."""
from __future__ import annotations

import collections
import json
import os
import signal
import time

import pytest

from support import calling, exchange, free_port, wait_until
from servicefactory.errors import ProtocolError, ServiceNotRunning
from servicefactory.http import client

WHO = """
import os
from servicefactory import Service

{policy}
@Service.API.endpoint(port={port})
class Who(Service.base):
    @Service.API.handle("who")
    def who(self, data):
        return os.getpid()

    @Service.API.handle("slow")
    def slow(self, data):
        self.sleep(0.02)
        return os.getpid()
"""


def _start(sf, *options: str, port: int = 0, policy: str = "") -> list[dict]:
    sf.write("who.py", WHO.format(port=port, policy=policy))
    sf.daemon("who.py:Who", *options)
    return sf.status("Who")


def _pids(rows: list[dict]) -> dict[str, int]:
    return {row["name"]: row["pid"] for row in rows}


def test_run_instances_starts_n_processes_each_its_own_row_and_state_files(sf, sf_home):
    rows = _start(sf, "--instances", "3")
    assert [(row["name"], row["instance"], row["state"]) for row in rows] == [
        ("Who/1", 1, "running"), ("Who/2", 2, "running"), ("Who/3", 3, "running")]
    assert len(set(_pids(rows).values())) == 3 and len({row["port"] for row in rows}) == 3  # port 0: one each
    assert {"Who@1.pid", "Who@2.json", "Who@3.log"} <= set(os.listdir(sf_home))
    assert not (sf_home / "Who.pid").exists()
    table = sf("status").stdout.splitlines()
    assert [line.split()[0] for line in table] == ["NAME", "Who/1", "Who/2", "Who/3"]
    assert len(sf("status", "Who", "--instance", "2", "--json").stdout and
               json.loads(sf("status", "Who", "--instance", "2", "--json").stdout)) == 1


def test_calls_spread_round_robin_and_instance_targets_one(sf):
    rows = _start(sf, "--instances", "3")
    pids = _pids(rows)
    counts = collections.Counter(client.perform("Who", "who") for _ in range(30))
    assert counts == {pid: 10 for pid in pids.values()}, counts  # round robin: exactly even
    assert {client.perform("Who/2", "who") for _ in range(5)} == {pids["Who/2"]}
    answer = sf("perform", "Who", "who", "--instance", "3")
    assert answer.returncode == 0 and int(answer.stdout) == pids["Who/3"], answer.stderr
    # separate short-lived callers start at a random instance: they spread too
    seen = {int(sf("perform", "Who", "who").stdout) for _ in range(12)}
    assert len(seen) >= 2, seen


def test_the_class_perform_takes_an_instance(sf, tmp_path, monkeypatch):
    pids = _pids(_start(sf, "--instances", "2"))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    module = importlib.import_module("who")
    assert module.Who.perform("who", instance=1) == pids["Who/1"]
    assert {module.Who.perform("who") for _ in range(4)} == set(pids.values())


def test_an_instance_answers_421_to_a_call_meant_for_another_instance_and_runs_nothing(sf):
    rows = _start(sf, "--instances", "2")
    port = rows[1]["port"]  # Who/2's

    def call(meant: str) -> int:
        request = (f"POST /who HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nServicefactory-Service: {meant}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: 0\r\n\r\n").encode()
        return exchange(port, request)[0]

    assert call("Who/1") == 421
    assert call("Other") == 421
    assert call("Who/2") == 200 and call("Who") == 200  # itself, or any instance of its service


def test_kill_9_of_one_instance_fails_only_the_calls_in_flight_on_it_and_its_supervisor_restarts_it(sf):
    rows = _start(sf, "--instances", "2")
    pids = _pids(rows)
    with calling(lambda: client.perform("Who", "who", timeout=5), threads=3) as calls:
        answers, failures = calls.answers, calls.failures
        wait_until(lambda: len(answers) > 50, message="calls flowing")
        os.kill(pids["Who/1"], signal.SIGKILL)
        back = wait_until(lambda: (lambda row: row if row and row["state"] == "running"
                                   and row["pid"] != pids["Who/1"] else None)(sf.row("Who/1")),
                          timeout=20, message="Who/1 restarted")
        after = len(answers)
        wait_until(lambda: back["pid"] in answers[after:], timeout=10, message="calls reaching the new Who/1")
    # a call already sent to Who/1 when it died cannot be sent again (it may have run): it fails,
    # saying so; at most one per calling thread, and every other call is answered
    assert len(failures) <= calls.threads, failures
    assert all(isinstance(exc, ProtocolError) and "Who/1" in str(exc) and "may or may not have run" in str(exc)
               for exc in failures), failures
    assert back["restarts"] == 1 and back["last_exit"] == -signal.SIGKILL
    assert sf.row("Who/2")["pid"] == pids["Who/2"]  # the other instance was never touched


def test_a_rolling_restart_under_load_fails_no_call(sf):
    rows = _start(sf, "--instances", "2")
    before = _pids(rows)
    with calling(lambda: client.perform("Who", "slow", timeout=10), threads=4) as calls:
        answers, failures = calls.answers, calls.failures
        wait_until(lambda: len(answers) > 20, message="calls flowing")
        started = time.monotonic()
        result = sf("restart", "Who")
        took = time.monotonic() - started
        after = len(answers)
        # the callers see the instance restarted last within a moment (their view is refreshed)
        wait_until(lambda: set(answers[after:]) == set(_pids(sf.status("Who")).values()), timeout=10,
                   message="both new instances answering")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("Who/1 running"), result.stdout
    assert not failures, failures[:3]
    rows = sf.status("Who")
    now = _pids(rows)
    assert set(now.values()).isdisjoint(before.values()) and all(row["state"] == "running" for row in rows)
    # one at a time: the supervisor's log says Who/1 was ready before Who/2 was asked to stop
    log = sf.home.joinpath("Who@1.log").read_text() + sf.home.joinpath("Who@2.log").read_text()
    lines = sorted(line for line in log.splitlines() if "[servicefactory]" in line)
    events = [(line.split()[2], line.split()[3]) for line in lines if " ready " in line or "stopped" in line]
    restart_events = events[2:]  # after the first two `ready`s
    assert [event[0] for event in restart_events] == ["Who/1", "Who/1", "Who/2", "Who/2"], events
    assert took < 30


def test_a_shared_fixed_port_spreads_connections_and_instance_still_targets_one(sf):
    port = free_port()
    rows = _start(sf, "--instances", "2", port=port)
    assert {row["port"] for row in rows} == {port}  # SO_REUSEPORT: both listen on it
    pids = _pids(rows)
    # each new connection lands on one instance or the other: separate processes reach both
    seen = {int(sf("perform", "Who", "who").stdout) for _ in range(16)}
    assert seen == set(pids.values()), seen
    for _ in range(3):
        assert int(sf("perform", "Who", "who", "--instance", "2").stdout) == pids["Who/2"]
        assert client.perform("Who/1", "who") == pids["Who/1"]
    result = sf("restart", "Who")
    assert result.returncode == 0, result.stderr
    assert {row["port"] for row in sf.status("Who")} == {port}


def test_stop_one_instance_then_all_and_logs_per_instance(sf, sf_home):
    pids = _pids(_start(sf, "--instances", "3"))
    result = sf("stop", "Who", "--instance", "2")
    assert result.returncode == 0 and result.stdout.strip() == "Who/2 stopped", result.stdout
    states = {row["name"]: row["state"] for row in sf.status("Who")}
    assert states == {"Who/1": "running", "Who/2": "stopped", "Who/3": "running"}
    assert {client.perform("Who", "who") for _ in range(6)} == {pids["Who/1"], pids["Who/3"]}
    one = sf("logs", "Who", "--instance", "1")
    assert one.returncode == 0 and "Who/1 ready" in one.stdout and "Who/3" not in one.stdout
    every = sf("logs", "Who")
    assert "Who/1 | " in every.stdout and "Who/3 | " in every.stdout
    result = sf("stop", "Who")
    assert result.returncode == 0, result.stderr
    assert sf.status() == []  # stopped on purpose, as a whole: nothing listed
    with pytest.raises(ServiceNotRunning):
        client.perform("Who", "who")


def test_the_class_policy_sets_the_instances_and_run_overrides_it(sf):
    rows = _start(sf, policy="@Service.policy(instances=2)")
    assert [row["name"] for row in rows] == ["Who/1", "Who/2"]
    sf("stop", "Who")
    rows = _start(sf, "--instances", "1", policy="@Service.policy(instances=2)")
    assert [row["name"] for row in rows] == ["Who/1"]


def test_a_service_runs_as_one_process_or_as_instances_never_both(sf):
    _start(sf, "--instances", "2")
    again = sf("run", "who.py:Who", "--daemon")
    assert again.returncode != 0 and "Who/1 is already running" in again.stderr, again.stderr


@pytest.mark.parametrize("args, message", [
    (["run", "who.py:Who", "--instances", "0"], "0 is not in the range"),
    (["run", "who.py:Who", "--name", "Who/2"], "names an instance"),
    (["perform", "Who", "who", "--instance", "0"], "0 is not in the range"),
    (["perform", "Who/2", "who", "--instance", "1"], "names an instance already"),
    (["perform", "Who/01", "who"], "invalid instance number"),
    (["stop", "--all", "--instance", "1"], "--instance K goes with exactly one"),
    (["status", "--instance", "1"], "--instance K goes with exactly one"),
    (["logs", "--instance", "1"], "--instance K goes with exactly one"),
])
def test_bad_instance_options_are_one_line_usage_errors(sf, args, message):
    sf.write("who.py", WHO.format(port=0, policy=""))
    result = sf(*args)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_policy_instances_must_be_a_small_whole_number():
    from servicefactory import Service

    for bad in (0, -1, 65, 2.0, True, "2"):
        with pytest.raises(ValueError):
            Service.policy(instances=bad)


def test_restart_after_stop_brings_every_instance_back_with_its_own_log_file(sf, tmp_path):
    _start(sf, "--instances", "2", "--log-file", str(tmp_path / "who.log"))
    assert (tmp_path / "who@1.log").exists() and (tmp_path / "who@2.log").exists()
    assert sf("stop", "Who").returncode == 0
    result = sf("restart", "Who")
    assert result.returncode == 0, result.stderr
    rows = sf.status("Who")
    assert [(row["name"], row["state"]) for row in rows] == [("Who/1", "running"), ("Who/2", "running")]
    assert not (tmp_path / "who@1@1.log").exists()
    assert "Who/2 ready" in (tmp_path / "who@2.log").read_text()


def test_an_instance_log_file_name_round_trips():
    from servicefactory.supervise._supervised import instance_log_file, service_log_file

    for path in ("/x/app.log", "/x/app", "/x.d/app", "/x/app.tar.gz"):
        for number in (1, 12):
            assert service_log_file(instance_log_file(path, number), number) == path
    assert instance_log_file("/x/app.log", 2) == "/x/app@2.log"
