"""The start-order rules, replayed without a process (as test_policy does for restarts)."""
from __future__ import annotations

import pytest

from servicefactory.supervise._dependencies import Progress, find_cycle, verdict, waiting_on, waves


def test_waves_start_independent_services_together_and_dependents_after():
    graph = {"api": ["redis", "migrate"], "migrate": ["redis"], "redis": [], "worker": ["redis"], "cron": []}
    assert waves(graph) == [["cron", "redis"], ["migrate", "worker"], ["api"]]


def test_a_cycle_is_named_as_a_path_back_to_its_start():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": []}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": []}) is None
    with pytest.raises(ValueError, match="dependency cycle: a -> b -> a"):
        waves({"a": ["b"], "b": ["a"]})


@pytest.mark.parametrize("condition, progress, expected", [
    ("started", Progress("starting", started=True), (True, None)),
    ("started", Progress("waiting"), (False, None)),
    ("ready", Progress("starting", started=True), (False, None)),
    ("ready", Progress("running", started=True, ever_ready=True), (True, None)),
    ("ready", Progress("backoff", started=True), (False, None)),  # crashed before ready: its policy retries
    ("ready", Progress("failed", started=True, last_exit=1), (False, "redis failed (exited 1)")),
    ("ready", Progress("stopped", started=True, last_exit=0), (False, "redis exited 0 before it was ready")),
    ("completed", Progress("running", started=True, ever_ready=True), (False, None)),
    ("completed", Progress("stopped", started=True, ever_ready=True, last_exit=0), (True, None)),
    ("completed", Progress("failed", started=True, ever_ready=True, last_exit=1), (False, "redis exited 1")),
    ("completed", Progress("failed", started=True, last_exit=-9), (False, "redis was killed by SIGKILL")),
    ("healthy", Progress("running", started=True, ever_ready=True), (False, None)),
    ("healthy", Progress("running", started=True, ever_ready=True, healthy=True), (True, None)),
    ("ready", Progress("blocked", error="blocked: db exited 2"), (False, "redis is blocked (blocked: db exited 2)")),
    ("ready", Progress("stopped", asked_to_stop=True), (False, "redis was stopped")),
])
def test_each_condition_is_met_awaited_or_blocked(condition, progress, expected):
    assert verdict("redis", condition, progress) == expected


def test_a_service_waits_on_every_dependency_not_met_and_is_blocked_by_the_first_that_fails():
    progress = {"redis": Progress("running", started=True, ever_ready=True),
                "migrate": Progress("running", started=True, ever_ready=True)}
    assert waiting_on({"redis": "ready", "migrate": "completed"}, progress) == (["migrate"], None)
    progress["migrate"] = Progress("failed", started=True, ever_ready=True, last_exit=1)
    assert waiting_on({"redis": "ready", "migrate": "completed"}, progress) == (["migrate"], "migrate exited 1")


def test_a_service_run_as_instances_is_met_when_every_instance_is_and_blocked_when_one_fails():
    ready = Progress("running", started=True, ever_ready=True)
    starting = Progress("starting", started=True)
    assert waiting_on({"api": "ready"}, {"api": [ready, starting]}) == (["api"], None)
    assert waiting_on({"api": "ready"}, {"api": [ready, ready]}) == ([], None)
    failed = Progress("failed", started=True, last_exit=3)
    assert waiting_on({"api": "ready"}, {"api": [ready, failed]}) == (["api"], "api/2 failed (exited 3)")
