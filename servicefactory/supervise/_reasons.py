"""Why a supervised service stopped or was restarted: one enum of reasons, and the short history of them.

Every exit of a service's process is recorded with a structured reason: the supervisor's own
decision when it stopped the process itself (its memory limit, its watchdog, a failing loop, a
source file that changed, a user's `stop` or `restart`), else what the exit says (`crash` for a
non-zero code or a signal we did not send, `exit` for a clean end of its own). `status` shows the
last one, `status --json` has `last_reason` and `history`, and the log has a line for each.
"""
from __future__ import annotations

import enum
import time
from dataclasses import asdict, dataclass

#: how many events a service's history keeps (the newest last)
HISTORY = 10


class Reason(str, enum.Enum):
    """Why a service's process ended (the value is what records and `status` show)."""

    CRASH = "crash"  # a non-zero exit code, or death by a signal the supervisor did not send
    EXIT = "exit"  # it ended by itself with exit code 0
    UNHEALTHY = "unhealthy"  # its loop() failed max_loop_errors times in a row
    NOT_READY = "not-ready"  # not ready within --ready-timeout
    MEMORY = "memory"  # it (with its descendants) used more than its max_memory
    WATCHDOG = "watchdog"  # its loop made no progress within its watchdog period
    CONFIG = "config"  # its settings changed (a reload that had to restart it)
    FILE_CHANGE = "file-change"  # a source file changed (run --watch)
    MANUAL = "manual"  # a user's stop or restart, or the supervisor stopping everything
    DEPENDENCY = "dependency"  # a service it depends on stopped or was restarted

    def __str__(self) -> str:
        return self.value


@dataclass
class Event:
    """One stop or restart of a service: when (wall clock), why, its exit code (negative: a signal), details."""

    time: float
    reason: str
    exit: int | None = None
    detail: str = ""

    def encode(self) -> dict:
        """The JSON object kept in the service's record."""
        return asdict(self)


def record(history: list[dict], reason: Reason, code: int | None, detail: str = "") -> list[dict]:
    """`history` with one more event, keeping the last HISTORY."""
    event = Event(time=round(time.time(), 3), reason=reason.value, exit=code, detail=detail)
    return (history + [event.encode()])[-HISTORY:]


def reason_of_exit(pending: Reason | None, code: int) -> Reason:
    """The reason of an exit: the supervisor's own (it stopped the process), else what the code says."""
    if pending is not None:
        return pending
    return Reason.EXIT if code == 0 else Reason.CRASH
