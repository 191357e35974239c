"""Progress on a terminal while `run --daemon` waits for its services to be ready and `stop` for
them to be gone: one line on stderr, redrawn in place, naming which are done and which are still
waited for. Nothing at all when stderr is not a terminal (a pipe, a file, a script), nor with
TERM=dumb: the commands' own lines are then all there is, as before."""
from __future__ import annotations

import os
import select
import shutil
import sys
import threading
from typing import Any, Callable, TypeVar

T = TypeVar("T")
#: seconds between two redraws (and two readings of the registry)
INTERVAL = 0.2


class Line:
    """One line of stderr, rewritten in place; cleared when done, so the output reads as without it."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        try:
            self.enabled = self.stream.isatty() and os.environ.get("TERM") != "dumb"
        except (AttributeError, ValueError):
            self.enabled = False
        self.shown = False

    def show(self, text: str) -> None:
        """Replace the line with `text`, cut to the terminal's width (a wrapped line cannot be redrawn)."""
        width = shutil.get_terminal_size((80, 24)).columns
        if len(text) >= width:
            text = text[:max(1, width - 2)] + "…"
        self._write(f"\r{text}\x1b[K")
        self.shown = True

    def clear(self) -> None:
        """Erase the line, if one was shown."""
        if self.shown:
            self._write("\r\x1b[K")
            self.shown = False

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            self.enabled = False  # the terminal went away: the command goes on without progress


def _states(names: list[str], registry: Any) -> dict[str, str]:
    from servicefactory.registry.base import state_of

    states = {}
    for name in names:
        try:
            states[name] = state_of(registry, name)[0]
        except Exception:  # a record half-written this very moment: asked again next time
            states[name] = "?"
    return states


def ready_line(fd: int, names: list[str], registry: Any) -> bytes:
    """Read the supervisor's one startup line from `fd` (b"" at EOF), showing meanwhile which of
    `names` are ready and which are still awaited (with their state when it says more than starting)."""
    line = Line()
    if not line.enabled:
        return _read_line(fd, None)
    try:
        return _read_line(fd, lambda: line.show(_starting(_states(names, registry))))
    finally:
        line.clear()


def _starting(states: dict[str, str]) -> str:
    ready = [name for name, state in states.items() if state == "running"]
    waiting = [name if state in ("starting", "stopped", "?") else f"{name} ({state})"
               for name, state in states.items() if state != "running"]
    return f"starting: {len(ready)}/{len(states)} ready" + (f"; waiting for {', '.join(waiting)}" if waiting else "")


def _read_line(fd: int, tick: Callable[[], None] | None) -> bytes:
    buffer = b""
    while b"\n" not in buffer:
        if tick is not None:
            readable, _, _ = select.select([fd], [], [], INTERVAL)
            if not readable:
                tick()
                continue
        data = os.read(fd, 4096)
        if not data:
            return buffer  # the supervisor died before it said anything: never a hang
        buffer += data
    return buffer.split(b"\n", 1)[0] + b"\n"


def stopping(work: Callable[[], T], names: list[str] | None, registry: Any) -> T:
    """Run `work` (stopping services), showing meanwhile which of `names` (default: every live
    service) are stopped and which are still awaited; return what `work` returned."""
    line = Line()
    if not line.enabled:
        return work()
    from servicefactory.registry.base import SUPERVISOR_PREFIX
    from servicefactory.supervise._states import LIVE

    if names is None:
        everything = [name for name in registry.names() if not name.startswith(SUPERVISOR_PREFIX)]
        names = [name for name, state in _states(everything, registry).items() if state in LIVE]
    result: list = []
    failure: list = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as exc:  # handed to the caller's thread, as if it had run there
            failure.append(exc)

    worker = threading.Thread(target=run, name="stopping")
    worker.start()
    try:
        while worker.is_alive():
            worker.join(INTERVAL)
            if worker.is_alive() and names:
                states = _states(names, registry)
                done = [name for name, state in states.items() if state not in LIVE]
                waiting = [name for name in names if name not in done]
                line.show(f"stopping: {len(done)}/{len(names)} stopped" +
                          (f"; waiting for {', '.join(waiting)}" if waiting else ""))
    finally:
        line.clear()
    if failure:
        raise failure[0]
    return result[0]
