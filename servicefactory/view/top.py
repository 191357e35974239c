"""`servicefactory top`: a refreshing terminal table of every service, with keys to stop, restart
(each asks first) and follow a service's log; `q`, Ctrl+C, SIGTERM or SIGHUP leave it, and the
terminal is restored (also when it fails; on Ctrl+Z too, until `fg`).

Drawn with rich (a Live display on the alternate screen); keys are read by view._terminal, since
rich reads none. rich was chosen among the kept TUI libraries by start-up time: a first frame of a
10-row table on a real pty, median of 15 interleaved runs on this project's machine, over a bare
interpreter's 16 ms: rich +84 ms, urwid +184 ms, textual +502 ms (and +23 MiB RSS).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any, Callable

from rich.console import Console, Group
from rich.layout import Layout
from rich.live import Live
from rich.text import Text

from servicefactory.view._actions import Outcome, run_action
from servicefactory.view._rows import COLUMNS, Sampler, cells
from servicefactory.view._terminal import Keys

KEYS_HELP = "up/down select  s stop  r restart  l log  q quit"
LOG_HELP = "following the log  q/Esc/l back  Ctrl+C quit"
#: how often the screen checks for keys and signals, in seconds (a refresh waits for its interval)
_TICK = 0.1
#: the screen is drawn again at least this often, even when nothing changed (the clock moves)
_REDRAW = 1.0
_STATE_STYLES = {"running": "green", "starting": "yellow", "backoff": "yellow", "stopping": "yellow",
                 "unhealthy": "red", "failed": "red", "stale": "red"}
_BACK = ("q", "Q", "escape", "l", "left", "backspace")


class Top:
    """The state of one `top` screen: the rows, the selection, a question awaiting y/n, the log view."""

    def __init__(self, sampler: Sampler, *, interval: float = 1.0, where: str = "",
                 act: Callable[..., Outcome] = run_action) -> None:
        self.sampler = sampler
        self.interval = interval
        self.where = where
        self.act = act
        self.rows: list[dict[str, Any]] = []
        self.selected: str | None = None  # by name: the selection follows its service when rows move
        self.question: tuple[str, str] | None = None  # (action, name) waiting for `y`
        self.message = ""
        self.following: str | None = None  # the name whose log is shown
        self.finished = threading.Event()  # q, Ctrl+C, SIGTERM or SIGHUP
        self.due = 0.0  # when the rows are read next
        self.dirty = True  # something changed since the screen was last drawn
        self.first = 0  # the first row on the screen, when there are more than fit
        self.lock = threading.Lock()  # an action's thread reports here while the screen draws

    # -- data --

    def refresh(self, rows: list[dict[str, Any]] | None = None) -> None:
        """Read the rows now, or show `rows` just read (errors are shown, not raised: the view
        outlives a bad moment); the next reading is one interval later."""
        if rows is None:
            try:
                rows = self.sampler.sample()
            except Exception as exc:  # a state directory deleted meanwhile, a record half-written, ...
                self.message = f"cannot read the services: {exc}"
                rows = []
        with self.lock:
            self.rows = rows
            names = [row["name"] for row in rows]
            if self.selected not in names:
                self.selected = names[0] if names else None
        self.due = time.monotonic() + self.interval
        self.dirty = True

    def move(self, step: int) -> None:
        """Select the row `step` rows below (negative: above) the selected one."""
        names = [row["name"] for row in self.rows]
        if not names:
            return
        index = names.index(self.selected) if self.selected in names else 0
        self.selected = names[max(0, min(len(names) - 1, index + step))]

    # -- keys --

    def key(self, key: str) -> None:
        """Act on one key: a character (`q`) or a name from view._terminal (`up`, `escape`, `enter`)."""
        self.dirty = True
        if self.question is not None:
            action, name = self.question
            self.question = None
            if key in ("y", "Y"):
                self.start(action, name)
            else:
                self.message = f"{action} {name}: cancelled"
            return
        if self.following is not None:
            if key in _BACK:
                self.following = None
            return
        if key in ("q", "Q"):
            self.finished.set()
        elif key in ("down", "j"):
            self.move(1)
        elif key in ("up", "k"):
            self.move(-1)
        elif key in ("s", "r") and self.selected:
            action = "stop" if key == "s" else "restart"
            self.question = (action, self.selected)  # destructive: asked first, `y` confirms
        elif key in ("l", "enter") and self.selected:
            self.following = self.selected

    def start(self, action: str, name: str) -> None:
        """Run the action in a thread: the screen goes on refreshing while a stop takes its time."""
        self.message = f"{action} {name}: {'stopping' if action == 'stop' else 'restarting'}..."

        def work() -> None:
            try:
                outcome = self.act(action, name, self.sampler.registry)
            except Exception as exc:
                outcome = Outcome(False, f"{action} {name}: {exc}")
            with self.lock:
                self.message = outcome.message if outcome.ok else f"error: {outcome.message}"
            self.due = 0.0  # show the outcome's effect at once

        threading.Thread(target=work, name=f"top-{action}-{name}", daemon=True).start()

    # -- drawing --

    def render(self, height: int, width: int = 0) -> Layout:
        """The whole screen: the table (or the followed log) above a footer on the last line;
        what does not fit is cut off, never wrapped."""
        body = self._log(height - 1) if self.following is not None else self._table(height - 1, width)
        with self.lock:
            message = self.message
        if self.question is not None:
            action, name = self.question
            footer = Text(f"{action} {name}? y/N", style="bold")
        else:
            footer = Text((LOG_HELP if self.following else KEYS_HELP) + (f"   {message}" if message else ""))
        screen = Layout()
        screen.split_column(Layout(Group(*[_line(part) for part in body])), Layout(_line(footer), size=1))
        return screen

    def _table(self, room: int, width: int = 0) -> list[Any]:
        with self.lock:
            rows = list(self.rows)
        header = Text(f"servicefactory top  {len(rows)} service{'' if len(rows) == 1 else 's'}  "
                      f"{time.strftime('%H:%M:%S')}  every {self.interval:g}s  {self.where}", style="bold")
        if not rows:
            return [header, Text("  ".join(COLUMNS), style="underline"), Text("no services")]
        # the selected row stays on the screen: the rows scroll under a fixed header
        shown = max(1, room - 2)
        names = [row["name"] for row in rows]
        index = names.index(self.selected) if self.selected in names else 0
        first = min(self.first, index) if index < self.first + shown else index - shown + 1
        first = self.first = max(0, min(first, len(rows) - shown))  # the window moves only when it must
        # our own columns, cut at the screen's edge like htop's: a table that shrinks its columns
        # to fit would squeeze the names out of a narrow terminal; widths over every row, so that
        # the columns do not move while scrolling
        table = [list(COLUMNS)] + [cells(row) for row in rows]
        widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
        lines = [header, _columns(table[0], widths, "underline")]
        for row, values in zip(rows[first:first + shown], table[1 + first:1 + first + shown]):
            line = _columns(values, widths, "reverse" if row["name"] == self.selected else "",
                            _STATE_STYLES.get(row["state"], ""))
            if row["name"] == self.selected:
                line.pad_right(max(0, width - len(line)))  # the selection spans the screen, as in htop
            lines.append(line)
        return lines

    def _log(self, room: int) -> list[Any]:
        from servicefactory.supervise import logfiles

        name = self.following
        assert name is not None
        registry = self.sampler.registry
        path = registry.log_of(name)
        lines: list[Any] = [Text(f"log of {name}  {path}", style="bold")]
        refusal = logfiles.untrusted(path, registry.private_dir())
        if refusal:
            return lines + [Text(f"refusing the log of {name}: {refusal}")]
        try:
            tail = logfiles.tail(path, max(1, room - 1))
        except OSError as exc:
            return lines + [Text(f"cannot read {path}: {exc.strerror or exc}")]
        # Text, never markup: a service's output never styles, let alone drives, the terminal
        return lines + [Text(logfiles.printable(line)) for line in tail[-(room - 1):]]


def _columns(values: list[str], widths: list[int], style: str, state_style: str = "") -> Text:
    """One line of the table: `values` padded to `widths`, two spaces apart, the state coloured."""
    text = Text(style=style)
    for index, (value, width) in enumerate(zip(values, widths)):
        if index:
            text.append("  ")
        last = index == len(values) - 1
        text.append(value if last else value.ljust(width), style=state_style if index == 1 else "")
    return text


def _line(renderable: Any) -> Any:
    """`renderable` cut at the screen's edge rather than wrapped (a wrapped line would push the footer off)."""
    if isinstance(renderable, Text):
        renderable.no_wrap = True
        renderable.overflow = "crop"
    return renderable


def run(top: Top) -> None:
    """Show `top` on this terminal until q, Ctrl+C, SIGTERM or SIGHUP; the terminal is restored."""
    finished = top.finished

    def resized(*_: Any) -> None:
        top.dirty = True

    suspended = threading.Event()  # Ctrl+Z: the loop gives the terminal back before it stops

    def suspend(*_: Any) -> None:
        suspended.set()

    # a signal handler only records; the loop (which wakes every _TICK) leaves, and the `with`
    # blocks restore the screen and the terminal's modes
    previous = {signum: signal.signal(signum, lambda *_: finished.set())
                for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    previous[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, resized)
    previous[signal.SIGTSTP] = signal.signal(signal.SIGTSTP, suspend)
    # the terminal's own size (and its changes), even where an exported COLUMNS/LINES says otherwise
    for variable in ("COLUMNS", "LINES"):
        os.environ.pop(variable, None)
    console = Console(highlight=False, emoji=False, markup=False)
    try:
        with Keys(sys.stdin.fileno()) as keys, \
                Live(console=console, screen=True, auto_refresh=False, transient=True,
                     redirect_stdout=False, redirect_stderr=False) as live:
            drawn = 0.0
            while not finished.is_set():
                now = time.monotonic()
                if now >= top.due:
                    top.refresh()
                if top.dirty or now - drawn >= _REDRAW:
                    top.dirty = False
                    live.update(top.render(console.size.height, console.size.width), refresh=True)
                    drawn = now
                for key in keys.read(_TICK):
                    top.key(key)
                if suspended.is_set():
                    suspended.clear()
                    _suspend(live, keys, suspend)
                    top.dirty = True
                if keys.closed:  # a hangup: nobody is looking any more
                    finished.set()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _suspend(live: Live, keys: Keys, handler: Any) -> None:
    """Stop this process as Ctrl+Z asked, with the terminal as it was before top (the shell's
    prompt on the normal screen); take the screen again once continued (`fg`)."""
    live.stop()
    keys.restore()
    signal.signal(signal.SIGTSTP, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTSTP)  # stops here, until SIGCONT
    signal.signal(signal.SIGTSTP, handler)
    keys.enter()
    live.start()
