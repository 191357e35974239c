"""Tell whoever started this process that the service is ready, or why it failed to start.

Two channels: a pipe whose fd the servicefactory CLI passes in $SERVICEFACTORY_READY_FD (one JSON
line), and systemd's $NOTIFY_SOCKET (sd_notify READY=1 / STOPPING=1 / WATCHDOG=1).
"""
from __future__ import annotations

import os
import socket
import time
from typing import Any

from servicefactory.supervise._protocol import (READY_FD_ENV, WATCHDOG_ENV, Beat, Ready, Reloaded, StartFailed,
                                                StopReason, Stopping, Unhealthy, to_line)

__all__ = ["READY_FD_ENV", "notify_ready", "notify_failed", "notify_unhealthy", "notify_stopping",
           "notify_reloaded", "sd_notify", "Heartbeat"]


_pipe: list[int] = []


def notify_ready(**details: Any) -> None:
    """Report readiness on every channel the parent set up (the pipe stays open for `stopping`)."""
    _write_pipe(Ready(**details), close=False)
    sd_notify(f"READY=1\nMAINPID={os.getpid()}")


def notify_failed(error: BaseException) -> None:
    """Report a failed start, with the error's type and message."""
    _write_pipe(StartFailed(error=str(error), type=type(error).__name__), close=True)


def notify_unhealthy(errors: int, last_error: str | None) -> None:
    """Tell the supervisor that loop() keeps failing (it restarts the service as if it crashed)."""
    _write_pipe(Unhealthy(errors=errors, error=last_error), close=False)


def notify_stopping(reason: StopReason | None = None, detail: str = "") -> None:
    """Tell the parent why we stop (a supervisor must not undo a requested shutdown), and systemd that we do."""
    _write_pipe(Stopping(reason=reason, detail=detail), close=True)
    sd_notify("STOPPING=1")


def notify_reloaded(ok: bool, error: str | None = None) -> None:
    """Tell the supervisor that reload() ran (after a SIGHUP), and systemd that we are ready again."""
    _write_pipe(Reloaded(ok=ok, error=error), close=False)
    sd_notify("READY=1")


class Heartbeat:
    """The loop's pings for the watchdogs that watch it: the supervisor's ($SERVICEFACTORY_WATCHDOG
    seconds, a `Beat` on the pipe) and systemd's ($WATCHDOG_USEC, `WATCHDOG=1`), each at half its period.

    `beat()` is called from the loop's own thread only (never from a timer): a loop() that is stuck
    stops the pings, which is the point."""

    def __init__(self, environ: Any = os.environ) -> None:
        self.supervisor = _seconds(environ.get(WATCHDOG_ENV))
        usec = _seconds(environ.get("WATCHDOG_USEC"))
        watchdog_pid = environ.get("WATCHDOG_PID", "")
        # WATCHDOG_PID names the process systemd watches: a child that inherited the variables is not it
        mine = not watchdog_pid or watchdog_pid == str(os.getpid())
        self.systemd = usec / 1e6 if usec and mine and environ.get("NOTIFY_SOCKET") else None
        periods = [period for period in (self.supervisor, self.systemd) if period]
        #: seconds between two pings, None when nothing watches
        self.every: float | None = min(periods) / 2 if periods else None
        self.next = 0.0

    def beat(self) -> None:
        """Ping every watchdog if half its period has passed since the last ping."""
        if self.every is None:
            return
        now = time.monotonic()
        if now < self.next:
            return
        self.next = now + self.every
        if self.supervisor:
            _write_pipe(Beat(), close=False)
        if self.systemd:
            sd_notify("WATCHDOG=1")


def _seconds(value: str | None) -> float | None:
    try:
        number = float(value) if value else None
    except ValueError:
        return None
    return number if number is not None and 0 < number < float("inf") else None


def _write_pipe(message: Ready | StartFailed | Unhealthy | Beat | Reloaded | Stopping, close: bool) -> None:
    value = os.environ.pop(READY_FD_ENV, None)
    if value and value.isdigit():
        _pipe.append(int(value))
    if not _pipe:
        return
    fd = _pipe[0]
    try:
        os.write(fd, to_line(message))
    except OSError:
        pass  # the parent went away; nobody is waiting for the answer
    if close:
        _pipe.clear()
        try:
            os.close(fd)
        except OSError:
            pass


def sd_notify(state: str, address: str | None = None) -> bool:
    """Send `state` to systemd's notify socket (`address`, else $NOTIFY_SOCKET) if any; True if sent."""
    address = address or os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
        return True
    except OSError:
        return False
