"""`instances = N` in servicefactory.toml, from outside: `up` runs api/1 ... api/N, a dependent
waits for every instance, `up` again after a settings change restarts them one at a time (a client
calling throughout sees no failed call), a changed count starts or stops only the difference, and
`down` stops them all."""
from __future__ import annotations

import time

from support import calling, wait_until
from servicefactory.http import client

WHO = """
import os
from servicefactory import Service

@Service.API.endpoint(port=0)
class Who(Service.base):
    @Service.API.handle("who")
    def who(self, data):
        return {"pid": os.getpid(), "colour": os.environ.get("COLOUR")}
"""

APP = """
[settings]
backoff = 0.1

[services.Who]
target = "who:Who"
instances = {instances}
env = {{ COLOUR = "{colour}" }}
stop_timeout = 5

[services.after]
command = ["sleep", "300"]
depends_on = {{ Who = "ready" }}
"""


def _write(sf, instances: int = 2, colour: str = "red") -> None:
    sf.write("who.py", WHO)
    sf.write("servicefactory.toml", APP.format(instances=instances, colour=colour))


def _pids(sf) -> dict[str, int]:
    return {row["name"]: row["pid"] for row in sf.status() if row["name"].startswith("Who")}


def test_up_runs_each_instance_a_dependent_waits_for_all_and_down_stops_them(sf):
    _write(sf)
    result = sf("up")
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert any(line.startswith("Who/1 running") for line in lines), lines
    assert any(line.startswith("Who/2 running") for line in lines), lines
    rows = {row["name"]: row for row in sf.status()}
    assert set(rows) == {"Who/1", "Who/2", "after"} and all(r["state"] == "running" for r in rows.values()), rows
    # the dependent was started after the last instance was ready
    log = sf.home.joinpath("Who@1.log").read_text() + sf.home.joinpath("Who@2.log").read_text()
    assert log.count(" ready ") == 2, log
    assert {row["name"] for row in sf.status("Who")} == {"Who/1", "Who/2"}  # the file's name stands for both
    answers = {client.perform("Who", "who", timeout=10)["pid"] for _ in range(20)}
    assert answers == set(_pids(sf).values())  # calls spread over both
    down = sf("down")
    assert down.returncode == 0, down
    assert down.stdout.splitlines() == ["after stopped", "Who/1 stopped", "Who/2 stopped"], down.stdout
    assert not sf.ours()


def test_up_again_restarts_instances_one_at_a_time_and_a_caller_sees_no_failed_call(sf):
    _write(sf)
    assert sf("up").returncode == 0
    before = _pids(sf)
    after_pid = sf.row("after")["pid"]
    _write(sf, colour="blue")
    plan = sf("up", "--dry-run")
    assert plan.returncode == 0 and plan.stdout.splitlines()[0] == "restart Who one instance at a time (env)", plan
    assert _pids(sf) == before

    with calling(lambda: client.perform("Who", "who", timeout=10), threads=4) as calls:
        answers, failures = calls.answers, calls.failures
        wait_until(lambda: len(answers) > 20, message="calls flowing")
        result = sf("up")
        count = len(answers)
        wait_until(lambda: {a["colour"] for a in answers[count:]} == {"blue"} and len(answers) > count + 20,
                   timeout=20, message="only the new instances answering")
    assert result.returncode == 0, result
    assert not failures, failures[:3]
    now = _pids(sf)
    assert set(now) == {"Who/1", "Who/2"} and set(now.values()).isdisjoint(before.values()), (before, now)
    assert sf.row("after")["pid"] == after_pid  # unchanged: not touched
    # one at a time: Who/1 was ready again before Who/2 was asked to stop
    log = sf.home.joinpath("Who@1.log").read_text() + sf.home.joinpath("Who@2.log").read_text()
    events = sorted(line for line in log.splitlines() if "[servicefactory]" in line
                    and (" ready " in line or "stopped" in line))
    assert [line.split()[2] for line in events[2:]] == ["Who/1", "Who/1", "Who/2", "Who/2"], events
    assert sf("down").returncode == 0


def test_a_changed_count_starts_or_stops_only_the_difference(sf):
    _write(sf)
    assert sf("up").returncode == 0
    before = _pids(sf)
    _write(sf, instances=3)
    plan = sf("up", "--dry-run")
    assert plan.stdout.splitlines()[0] == "scale Who (instances: 2 -> 3; the others keep running)", plan.stdout
    result = sf("up")
    assert result.returncode == 0 and any(line.startswith("Who/3 running") for line in result.stdout.splitlines()), \
        result
    three = _pids(sf)
    assert set(three) == {"Who/1", "Who/2", "Who/3"} and {k: three[k] for k in before} == before, three
    _write(sf, instances=1)
    result = sf("up")
    assert result.returncode == 0, result
    wait_until(lambda: set(_pids(sf)) == {"Who/1"}, message="Who/2 and Who/3 gone")
    assert _pids(sf)["Who/1"] == before["Who/1"]
    for pid in (three["Who/2"], three["Who/3"]):
        wait_until(lambda pid=pid: not _alive(pid), timeout=10, message=f"pid {pid} gone")
    assert sf("down").returncode == 0
    assert not sf.ours()


def _alive(pid: int) -> bool:
    from support import alive

    return alive(pid)


def test_a_dependent_on_healthy_instances_starts_once_each_instance_said_it_is_running(sf):
    sf.write("who.py", WHO)
    sf.write("servicefactory.toml", APP.format(instances=2, colour="red").replace('Who = "ready"', 'Who = "healthy"'))
    result = sf("up")
    assert result.returncode == 0, result
    rows = {row["name"]: row for row in sf.status()}
    assert rows["after"]["state"] == "running", rows
    log = sf.home.joinpath("Who@1.log").read_text() + sf.home.joinpath("Who@2.log").read_text()
    ready = max(stamped_times(log, " ready "))
    started = min(stamped_times(sf.log("after"), " ready "))
    assert started >= ready, (ready, started)
    assert sf("down").returncode == 0


def stamped_times(log: str, pattern: str) -> list[float]:
    from support import stamped

    times = stamped(log, pattern)
    assert times, log
    return times
