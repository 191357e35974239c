"""The restart policy: what the supervisor does when a service's process exits.

Pure: no process, no clock of its own (the caller passes `now`), so every rule is tested by
replaying exits in microseconds (tests/test_policy.py), as honcho's manager is tested with a
fake process and a fake clock. The supervisor applies the `Decision`: it logs `message` and
moves the service to `state`.
"""
from __future__ import annotations

from dataclasses import dataclass

from servicefactory.supervise._states import ServiceState
from servicefactory.supervise._supervised import Settings, Spec, signal_name


@dataclass
class Exit:
    """One exit of a service's process, with what the supervisor knew about that run."""

    code: int  # negative: killed by that signal
    ran: float  # seconds since it was started
    was_ready: bool  # this run said `ready`
    ever_ready: bool = True  # any run of this service said `ready`
    unhealthy: bool = False  # stopped by the supervisor because its loop kept failing: a crash
    fault: str = ""  # stopped by the supervisor for another fault (its memory, its watchdog): a crash too
    asked: bool = False  # a stop (or restart) was asked for this service
    stopping_all: bool = False  # the supervisor itself is stopping
    starting_up: bool = False  # `run` still waits for every service to be ready


@dataclass
class Decision:
    """What to do after an exit."""

    state: ServiceState  # STOPPED, FAILED or BACKOFF
    message: str  # the event line, after the service's name
    fast_failures: int  # the new count of fast failures in a row
    restarts: int = 0  # how many restarts this decision adds (1 for a scheduled one)
    next_start: float | None = None  # BACKOFF: when to start it again (the caller's clock)
    retry_at: float | None = None  # FAILED: when to try it again, None: never
    warn: bool = False  # worth a warning in the log


def describe(code: int) -> str:
    """`exited with code N` or `killed by SIGNAME`."""
    return f"exited with code {code}" if code >= 0 else f"killed by {signal_name(-code)}"


class RestartPolicy:
    """The restart rules of one service: its spec's `restart` and `backoff_max`, the supervisor's settings."""

    def __init__(self, spec: Spec, settings: Settings) -> None:
        self.spec = spec
        self.settings = settings

    def delay(self, fast_failures: int) -> float:
        """Seconds before restart number `fast_failures` (1, 2, ...): doubling from --backoff, capped."""
        cap = self.spec.backoff_max if self.spec.backoff_max is not None else self.settings.backoff_max
        # the exponent is bounded: with a large --max-failures, 2**n overflows a float
        return min(cap, self.settings.backoff * 2 ** min(fast_failures - 1, 64))

    @staticmethod
    def due(state: ServiceState, next_start: float, retry_at: float | None) -> float | None:
        """When a service in `state` is to be started again by itself: a BACKOFF one at `next_start`,
        a FAILED one at `retry_at` (None: never); None for every other state."""
        if state == ServiceState.BACKOFF:
            return next_start
        if state == ServiceState.FAILED:
            return retry_at
        return None

    def on_exit(self, exit: Exit, fast_failures: int, now: float) -> Decision:
        """The decision for `exit`, given the fast failures in a row so far, at time `now`."""
        described = describe(exit.code)
        if exit.asked:
            # stopping -> stopped, as asked; said so when it never got to be ready
            return Decision(ServiceState.STOPPED, f"stopped{'' if exit.was_ready else ' while starting'} ({described})",
                            fast_failures)
        if exit.stopping_all:  # we are stopping everything: whatever the exit, it was asked for
            return Decision(ServiceState.STOPPED, described, fast_failures)
        if exit.starting_up and not exit.ever_ready:  # never ready at start-up: `run` reports it and gives up
            return Decision(ServiceState.FAILED, described, fast_failures)
        crashed = exit.code != 0 or exit.unhealthy or bool(exit.fault)
        if exit.unhealthy:
            described = f"stopped as unhealthy ({described})"
        elif exit.fault:
            described = f"stopped: {exit.fault} ({described})"
        restart = self.spec.restart == "always" or (crashed and self.spec.restart == "on-failure")
        if not restart:
            return Decision(ServiceState.FAILED if crashed else ServiceState.STOPPED,
                            f"{described}; not restarting (restart={self.spec.restart})", fast_failures)
        if exit.ran >= self.settings.reset_after and exit.was_ready:
            fast_failures = 0  # a good run: its earlier failures are forgiven
        fast_failures += 1
        if fast_failures >= self.settings.max_failures:
            retry = self.settings.retry_failed_after
            then = f"trying again in {retry:g} s" if retry > 0 else "leaving it down"
            return Decision(ServiceState.FAILED, f"{described}; {fast_failures} fast failures in a row, {then}",
                            fast_failures, retry_at=now + retry if retry > 0 else None, warn=True)
        delay = self.delay(fast_failures)
        return Decision(ServiceState.BACKOFF, f"{described}; restarting in {delay:g} s", fast_failures,
                        restarts=1, next_start=now + delay)
