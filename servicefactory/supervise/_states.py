"""The states of a supervised service, and which changes between them the supervisor may make.

As supervisor's `states.py` and `Subprocess.change_state`: one enum lists every state a service
can be in, one table lists every allowed change with the reason it happens, and the supervisor
changes a state only through `Child.change_state`, which checks the change against the table.
The values are what records, `status` and `status --json` show: they never change.
"""
from __future__ import annotations

import enum


class ServiceState(str, enum.Enum):
    """A supervised service's state; compares equal to its string value."""

    STARTING = "starting"  # its process runs, it has not said `ready` yet
    RUNNING = "running"  # ready: its API answers (if it has one)
    UNHEALTHY = "unhealthy"  # its loop() keeps failing: being stopped, then restarted by its policy
    BACKOFF = "backoff"  # exited; started again after a delay
    FAILED = "failed"  # exited too often (or could not start): left down, perhaps retried later
    STOPPING = "stopping"  # asked to stop (SIGTERM sent), not gone yet
    STOPPED = "stopped"  # not running, as asked (or never started)
    WAITING = "waiting"  # not started yet: a service it depends on is not there yet (started, ready, ...)
    BLOCKED = "blocked"  # not started: a service it depends on failed (the record's `error` says which)
    # never a supervised child's state: the registry's view of a name (see registry.state_of)
    STALE = "stale"  # files of a process that is gone
    UNKNOWN = "unknown"  # a name nobody ran (or whose run is forgotten): status must not say `stopped`

    def __str__(self) -> str:
        return self.value


#: what a service's restart policy may say (`Service.policy(restart=...)`, `run --restart`)
RESTART_POLICIES = ("on-failure", "always", "no")

S = ServiceState  # short, for the tables below

#: states in which a supervisor still has work to do for a service (it must not exit)
ACTIVE = frozenset({S.STARTING, S.RUNNING, S.UNHEALTHY, S.BACKOFF, S.STOPPING, S.WAITING})
#: states in which a process of the service exists
LIVE = frozenset({S.STARTING, S.RUNNING, S.UNHEALTHY, S.STOPPING})

#: every change the supervisor may make, from -> {to}. A change to the same state is allowed where
#: listed only: it republishes (a start that failed again at once stays in backoff or failed)
TRANSITIONS: dict[ServiceState, frozenset[ServiceState]] = {
    S.STOPPED: frozenset({
        S.STARTING,  # STOPPED -> STARTING: first start, or `restart` of a stopped service
        S.FAILED,  # STOPPED -> FAILED: its process could not even be started (or exited at once) at start-up
        S.BACKOFF,  # STOPPED -> BACKOFF: the same after start-up, restart policy says try again
        S.STOPPED,  # STOPPED -> STOPPED: a `stop` of a stopped service; a start that failed, restart=no
        S.WAITING,  # STOPPED -> WAITING: first start of a service with dependencies (depends_on)
    }),
    S.WAITING: frozenset({
        S.STARTING,  # WAITING -> STARTING: every dependency's condition is met
        S.BLOCKED,  # WAITING -> BLOCKED: a dependency failed (or ended) before its condition was met
        S.STOPPED,  # WAITING -> STOPPED: a stop request (or everything stops) before it could start
    }),
    S.BLOCKED: frozenset({
        S.STOPPED,  # BLOCKED -> STOPPED: a stop request
        S.WAITING,  # BLOCKED -> WAITING: a `restart` of it: its dependencies are looked at again
    }),
    S.STARTING: frozenset({
        S.RUNNING,  # STARTING -> RUNNING: it said `ready`
        S.STOPPING,  # STARTING -> STOPPING: a stop request, or not ready within --ready-timeout
        S.STOPPED,  # STARTING -> STOPPED: exited while we stop everything, or cleanly with restart=on-failure
        S.FAILED,  # STARTING -> FAILED: exited before ready at start-up, or too many fast failures
        S.BACKOFF,  # STARTING -> BACKOFF: exited; its restart policy starts it again later
    }),
    S.RUNNING: frozenset({
        S.UNHEALTHY,  # RUNNING -> UNHEALTHY: it reported max_loop_errors failures of loop() in a row
        S.STOPPING,  # RUNNING -> STOPPING: a stop or restart request
        S.STOPPED,  # RUNNING -> STOPPED: exited on its own (asked through its API, or cleanly, restart=on-failure)
        S.FAILED,  # RUNNING -> FAILED: crashed, restart=no, or too many fast failures
        S.BACKOFF,  # RUNNING -> BACKOFF: exited; restarted after a delay
    }),
    S.UNHEALTHY: frozenset({
        S.STOPPING,  # UNHEALTHY -> STOPPING: a stop request (it is already being stopped; kept for clarity)
        S.STOPPED,  # UNHEALTHY -> STOPPED: gone while a stop was asked for, or restart=no after a clean exit
        S.FAILED,  # UNHEALTHY -> FAILED: counted as a crash: restart=no, or too many fast failures
        S.BACKOFF,  # UNHEALTHY -> BACKOFF: counted as a crash: restarted after a delay
    }),
    S.BACKOFF: frozenset({
        S.STARTING,  # BACKOFF -> STARTING: the delay is over
        S.STOPPED,  # BACKOFF -> STOPPED: a stop request: no restart is due any more
        S.BACKOFF,  # BACKOFF -> BACKOFF: the new process could not be started: wait longer
        S.FAILED,  # BACKOFF -> FAILED: ... and that was one fast failure too many
    }),
    S.FAILED: frozenset({
        S.STARTING,  # FAILED -> STARTING: --retry-failed-after elapsed, or a `restart` request
        S.STOPPED,  # FAILED -> STOPPED: a stop request: no retry is due any more
        S.FAILED,  # FAILED -> FAILED: the retry could not even start a process
        S.BACKOFF,  # FAILED -> BACKOFF: ... and its failure count was reset by the retry: try again soon
    }),
    S.STOPPING: frozenset({
        S.STOPPED,  # STOPPING -> STOPPED: gone, as asked
        S.FAILED,  # STOPPING -> FAILED: stopped for not being ready in time, at start-up or once too often
        S.BACKOFF,  # STOPPING -> BACKOFF: stopped for not being ready in time: its restart policy decides
    }),
}


class TransitionError(RuntimeError):
    """A state change the table does not allow: a bug in the supervisor, never the user's doing."""


def check_transition(name: str, old: ServiceState, new: ServiceState) -> None:
    """Raise TransitionError unless `old -> new` is in TRANSITIONS."""
    if new not in TRANSITIONS.get(old, frozenset()):
        raise TransitionError(f"{name}: no transition {old.value} -> {new.value}")
