"""The restart policy and the state machine, replayed with a fake clock and scripted exits.

As honcho's tests/test_manager.py: no process, no sleep; each test replays what a service's
processes did (how long each ran, how it ended) and checks what the supervisor decides, in
microseconds. tests/test_supervisor.py keeps one real end-to-end test per behaviour.
"""
from __future__ import annotations

import pytest

from servicefactory.supervise._policy import Decision, Exit, RestartPolicy
from servicefactory.supervise._states import ACTIVE, LIVE, TRANSITIONS, ServiceState, TransitionError, check_transition
from servicefactory.supervise._supervised import Child, Settings, Spec

S = ServiceState


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Replay:
    """Runs a service's scripted processes through the policy the way the supervisor does: each
    process runs `ran` seconds and exits with `code`; a BACKOFF start waits until `next_start`, a
    FAILED one until `retry_at` (and a retry forgets the fast failures, as the supervisor's loop does)."""

    def __init__(self, restart: str = "on-failure", backoff_max: float | None = None, **settings: float) -> None:
        self.policy = RestartPolicy(Spec(name="svc", target="svc.py:Svc", restart=restart, backoff_max=backoff_max),
                                    Settings(**settings))
        self.clock = FakeClock()
        self.fast_failures = 0
        self.restarts = 0
        self.state = S.RUNNING
        self.starts = [self.clock.now]  # when each process started
        self.decisions: list[Decision] = []

    def process(self, ran: float, code: int = 1, *, was_ready: bool = True, **flags: bool) -> Decision:
        """The current process runs `ran` s and exits; then wait (on the fake clock) for the next start, if due."""
        self.clock.advance(ran)
        decision = self.policy.on_exit(Exit(code=code, ran=ran, was_ready=was_ready, **flags),
                                       self.fast_failures, self.clock.now)
        check_transition("svc", self.state, decision.state)  # every decision is a move the table allows
        self.state, self.fast_failures = decision.state, decision.fast_failures
        self.restarts += decision.restarts
        self.decisions.append(decision)
        due = self.policy.due(decision.state, decision.next_start or 0.0, decision.retry_at)
        if due is not None:
            self.clock.now = max(self.clock.now, due)
            if decision.state == S.FAILED:
                self.fast_failures = 0  # FAILED -> STARTING after the cooldown: a fresh start
            self.state = S.RUNNING
            self.starts.append(self.clock.now)
        return decision


# -- backoff --

def test_a_crash_loop_waits_doubling_delays_then_is_left_failed():
    replay = Replay(backoff=1.0, max_failures=5, retry_failed_after=0)
    decisions = [replay.process(ran=0.1, code=1) for _ in range(5)]
    assert [d.state for d in decisions] == [S.BACKOFF] * 4 + [S.FAILED]
    gaps = [round(b - a, 6) for a, b in zip(replay.starts, replay.starts[1:])]
    assert gaps == [0.1 + 1, 0.1 + 2, 0.1 + 4, 0.1 + 8]  # each run, then the doubling delay
    assert [d.message for d in decisions[:2]] == ["exited with code 1; restarting in 1 s",
                                                  "exited with code 1; restarting in 2 s"]
    assert decisions[-1].message == "exited with code 1; 5 fast failures in a row, leaving it down"
    assert decisions[-1].retry_at is None and decisions[-1].warn and replay.restarts == 4


def test_backoff_max_caps_the_doubling():
    replay = Replay(backoff=1.0, backoff_max=5.0, max_failures=10)
    for _ in range(7):
        replay.process(ran=0.0)
    assert [replay.policy.delay(d.fast_failures) for d in replay.decisions] == [1, 2, 4, 5, 5, 5, 5]
    assert [round(b - a, 6) for a, b in zip(replay.starts, replay.starts[1:])] == [1, 2, 4, 5, 5, 5, 5]


def test_a_class_backoff_max_wins_over_the_supervisors():
    replay = Replay(backoff_max=0.5, backoff=1.0, max_failures=10)
    for _ in range(3):
        replay.process(ran=0)
    assert [b - a for a, b in zip(replay.starts, replay.starts[1:])] == [0.5, 0.5, 0.5]


def test_a_huge_max_failures_never_overflows_the_delay():
    policy = RestartPolicy(Spec(name="svc", target="t"), Settings(backoff=1.0, backoff_max=60.0, max_failures=10**6))
    assert policy.delay(5000) == 60.0
    assert policy.on_exit(Exit(code=1, ran=0, was_ready=True), 4999, 0.0).next_start == 60.0


# -- failed, and tried again --

def test_failed_is_tried_again_after_retry_failed_after_with_a_fresh_count():
    replay = Replay(backoff=1.0, max_failures=2, retry_failed_after=300)
    replay.process(ran=0)  # backoff 1 s
    failed = replay.process(ran=0)
    assert failed.state == S.FAILED
    assert failed.message == "exited with code 1; 2 fast failures in a row, trying again in 300 s"
    assert failed.retry_at == replay.clock.now == replay.starts[-1]  # the clock waited exactly 300 s
    assert replay.starts[-1] - replay.starts[-2] == 300
    again = replay.process(ran=0)
    assert (again.state, again.fast_failures) == (S.BACKOFF, 1)
    assert replay.starts[-1] - replay.starts[-2] == 1.0  # the first delay again, not the fourth


def test_retry_failed_after_zero_leaves_it_down_for_good():
    replay = Replay(max_failures=1, retry_failed_after=0)
    decision = replay.process(ran=0)
    assert (decision.state, decision.retry_at) == (S.FAILED, None)
    assert replay.policy.due(S.FAILED, 0.0, None) is None and len(replay.starts) == 1


# -- a good run forgives --

def test_a_run_longer_than_reset_after_clears_the_failure_count():
    replay = Replay(backoff=1.0, reset_after=10, max_failures=3)
    replay.process(ran=0)
    replay.process(ran=0)  # two fast failures: the next would be the last
    good = replay.process(ran=10)  # ran long enough, and was ready: counted afresh
    assert (good.state, good.fast_failures, good.message) == (S.BACKOFF, 1, "exited with code 1; restarting in 1 s")


def test_a_long_run_that_never_got_ready_is_no_good_run():
    replay = Replay(backoff=1.0, reset_after=10, max_failures=3)
    replay.process(ran=0)
    replay.process(ran=0)
    assert replay.process(ran=60, was_ready=False).state == S.FAILED


# -- what counts as a crash --

def test_an_unhealthy_service_is_restarted_as_a_crash_even_after_a_clean_exit():
    decision = Replay(backoff=1.0).process(ran=5, code=0, unhealthy=True)
    assert decision.state == S.BACKOFF
    assert decision.message == "stopped as unhealthy (exited with code 0); restarting in 1 s"
    no = Replay(restart="no").process(ran=5, code=0, unhealthy=True)
    assert (no.state, no.message) == (S.FAILED, "stopped as unhealthy (exited with code 0); not restarting (restart=no)")


@pytest.mark.parametrize("restart, code, state", [
    ("no", 3, S.FAILED), ("no", 0, S.STOPPED),
    ("on-failure", 3, S.BACKOFF), ("on-failure", 0, S.STOPPED), ("on-failure", -9, S.BACKOFF),
    ("always", 0, S.BACKOFF), ("always", 3, S.BACKOFF),
])
def test_each_restart_setting_on_each_kind_of_exit(restart, code, state):
    assert Replay(restart=restart).process(ran=1, code=code).state == state


def test_a_signal_death_is_described_by_the_signals_name():
    assert Replay().process(ran=1, code=-9).message == "killed by SIGKILL; restarting in 1 s"


# -- what is never restarted --

@pytest.mark.parametrize("restart", ["no", "on-failure", "always"])
def test_a_stop_asked_for_is_final_whatever_the_restart_setting_and_exit(restart):
    for code in (0, 1, -15):
        decision = Replay(restart=restart).process(ran=1, code=code, asked=True)
        assert (decision.state, decision.restarts, decision.next_start) == (S.STOPPED, 0, None)
    assert Replay().process(ran=1, code=0, asked=True).message == "stopped (exited with code 0)"
    assert Replay().process(ran=1, code=-15, asked=True, was_ready=False).message == \
        "stopped while starting (killed by SIGTERM)"


def test_every_exit_while_the_supervisor_stops_is_a_stop():
    decision = Replay(restart="always").process(ran=1, code=3, stopping_all=True)
    assert (decision.state, decision.message) == (S.STOPPED, "exited with code 3")


def test_a_service_never_ready_at_start_up_fails_the_start_instead_of_restarting():
    decision = Replay(restart="always").process(ran=1, code=3, was_ready=False, ever_ready=False, starting_up=True)
    assert (decision.state, decision.restarts) == (S.FAILED, 0)
    # once it was ready (a restart while others start), its policy decides as usual
    assert Replay().process(ran=1, code=3, ever_ready=True, starting_up=True).state == S.BACKOFF


# -- the state machine --

def test_the_state_values_are_the_strings_records_and_status_json_show():
    assert {state.value for state in S} == {"starting", "running", "unhealthy", "backoff", "failed", "stopping",
                                            "stopped", "waiting", "blocked", "stale", "unknown"}
    assert S.RUNNING == "running" and f"{S.BACKOFF}" == "backoff" and str(S.FAILED) == "failed"
    assert LIVE < ACTIVE and S.BACKOFF in ACTIVE and S.FAILED not in ACTIVE
    assert S.WAITING in ACTIVE and S.WAITING not in LIVE and S.BLOCKED not in ACTIVE


def test_every_supervised_state_has_its_transitions_and_none_leads_to_a_registry_only_state():
    assert set(TRANSITIONS) == set(S) - {S.STALE, S.UNKNOWN}
    for targets in TRANSITIONS.values():
        assert not targets & {S.STALE, S.UNKNOWN}


@pytest.mark.parametrize("old, new", [(S.STOPPED, S.RUNNING), (S.BACKOFF, S.RUNNING), (S.STOPPING, S.RUNNING),
                                      (S.STOPPING, S.STARTING), (S.RUNNING, S.STARTING), (S.FAILED, S.RUNNING),
                                      (S.STOPPED, S.UNHEALTHY), (S.STARTING, S.UNHEALTHY)])
def test_a_transition_the_table_does_not_list_is_refused(old, new):
    with pytest.raises(TransitionError, match=f"svc: no transition {old.value} -> {new.value}"):
        check_transition("svc", old, new)


def test_change_state_checks_then_publishes_the_new_state():
    seen = []
    child = Child(Spec(name="svc", target="t"), claim=None, log=None,  # type: ignore[arg-type]
                  on_change=lambda c: seen.append(c.state))
    assert child.state == S.STOPPED
    assert child.change_state(S.STARTING) == S.STOPPED
    child.change_state(S.RUNNING)
    with pytest.raises(TransitionError):
        child.change_state(S.STARTING)
    assert child.state == S.RUNNING and seen == [S.STARTING, S.RUNNING]  # a refused change publishes nothing
