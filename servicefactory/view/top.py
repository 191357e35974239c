"""`servicefactory top`: a refreshing terminal table of every service, with keys to stop, restart
(each asks first) and follow a service's log; `q` or Ctrl+C leave it and restore the terminal.

Plain `curses` from the standard library: measured against the kept TUI libraries (import until
a first screen, median of 11 interleaved runs), curses adds nothing to a bare interpreter's start,
rich ~70 ms (and reads no keys), urwid ~240 ms, textual ~400 ms (and +20 MiB RSS).
"""
from __future__ import annotations

import curses
import signal
import threading
import time
from typing import Any, Callable

from servicefactory.view._actions import Outcome, run_action
from servicefactory.view._rows import COLUMNS, Sampler, cells

KEYS_HELP = "up/down select  s stop  r restart  l log  q quit"
LOG_HELP = "following the log  q/Esc/l back  Ctrl+C quit"
#: how often the screen checks for keys and signals, in seconds (a refresh waits for its interval)
_TICK = 0.1
_STATE_COLOURS = {"running": curses.COLOR_GREEN, "starting": curses.COLOR_YELLOW,
                  "backoff": curses.COLOR_YELLOW, "stopping": curses.COLOR_YELLOW,
                  "unhealthy": curses.COLOR_RED, "failed": curses.COLOR_RED, "stale": curses.COLOR_RED}


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
        self.lock = threading.Lock()  # an action's thread reports here while the screen draws
        self.colours = False

    # -- data --

    def refresh(self) -> None:
        """Read the rows now (errors are shown, not raised: the view outlives a bad moment)."""
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

    def move(self, step: int) -> None:
        """Select the row `step` rows below (negative: above) the selected one."""
        names = [row["name"] for row in self.rows]
        if not names:
            return
        index = names.index(self.selected) if self.selected in names else 0
        self.selected = names[max(0, min(len(names) - 1, index + step))]

    # -- keys --

    def key(self, key: int) -> None:
        """Act on one key press."""
        if self.question is not None:
            action, name = self.question
            self.question = None
            if key in (ord("y"), ord("Y")):
                self.start(action, name)
            else:
                self.message = f"{action} {name}: cancelled"
            return
        if self.following is not None:
            if key in (ord("q"), ord("Q"), 27, ord("l"), curses.KEY_LEFT, curses.KEY_BACKSPACE):
                self.following = None
            return
        if key in (ord("q"), ord("Q")):
            self.finished.set()
        elif key in (curses.KEY_DOWN, ord("j")):
            self.move(1)
        elif key in (curses.KEY_UP, ord("k")):
            self.move(-1)
        elif key in (ord("s"), ord("r")) and self.selected:
            action = "stop" if key == ord("s") else "restart"
            self.question = (action, self.selected)  # destructive: asked first, `y` confirms
        elif key in (ord("l"), ord("\n"), curses.KEY_ENTER) and self.selected:
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

    def draw(self, screen: Any) -> None:
        """Draw the table (or the followed log) and the footer; what does not fit is cut off."""
        height, width = screen.getmaxyx()
        screen.erase()
        if self.following is not None:
            self._draw_log(screen, height, width)
        else:
            self._draw_table(screen, height, width)
        with self.lock:
            message = self.message
        if self.question is not None:
            action, name = self.question
            footer = f"{action} {name}? y/N"
        else:
            footer = (LOG_HELP if self.following else KEYS_HELP) + (f"   {message}" if message else "")
        _put(screen, height - 1, 0, footer, width, curses.A_BOLD if self.question else curses.A_NORMAL)
        screen.refresh()

    def _draw_table(self, screen: Any, height: int, width: int) -> None:
        with self.lock:
            rows = list(self.rows)
        header = f"servicefactory top  {len(rows)} service{'' if len(rows) == 1 else 's'}  " \
                 f"{time.strftime('%H:%M:%S')}  every {self.interval:g}s  {self.where}"
        _put(screen, 0, 0, header, width, curses.A_BOLD)
        table = [list(COLUMNS)] + [cells(row) for row in rows]
        widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
        for y, (line, row) in enumerate(zip(table, [None] + rows), start=1):
            if y >= height - 1:
                break
            text = "  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()
            attribute = curses.A_REVERSE if row is not None and row["name"] == self.selected else curses.A_NORMAL
            if row is None:
                attribute = curses.A_UNDERLINE
            _put(screen, y, 0, text, width, attribute)
            if row is not None and self.colours and row["state"] in _STATE_COLOURS:
                x = widths[0] + 2  # the STATE column, coloured over the line's own attribute
                _put(screen, y, x, line[1], width - x, attribute | curses.color_pair(_pair(row["state"])))
        if not rows:
            _put(screen, 2, 0, "no services", width)

    def _draw_log(self, screen: Any, height: int, width: int) -> None:
        from servicefactory.supervise import logfiles

        name = self.following
        assert name is not None
        registry = self.sampler.registry
        path = registry.log_of(name)
        _put(screen, 0, 0, f"log of {name}  {path}", width, curses.A_BOLD)
        refusal = logfiles.untrusted(path, registry.private_dir())
        if refusal:
            _put(screen, 1, 0, f"refusing the log of {name}: {refusal}", width)
            return
        try:
            lines = logfiles.tail(path, max(1, height - 2))
        except OSError as exc:
            _put(screen, 1, 0, f"cannot read {path}: {exc.strerror or exc}", width)
            return
        for y, line in enumerate(lines[-(height - 2):], start=1):
            _put(screen, y, 0, logfiles.printable(line), width)  # a service's output never drives the terminal


def _pair(state: str) -> int:
    return list(_STATE_COLOURS).index(state) + 1


def _put(screen: Any, y: int, x: int, text: str, width: int, attribute: int = 0) -> None:
    """Write `text` at (y, x), cut at the screen's edge (curses raises on the last cell: ignored)."""
    if width - x <= 0:
        return
    try:
        screen.addnstr(y, x, text, width - x, attribute)
    except curses.error:
        pass


def run(top: Top) -> None:
    """Show `top` on this terminal until q, Ctrl+C, SIGTERM or SIGHUP; the terminal is restored."""
    import os

    finished = top.finished
    # a signal handler only records; the loop (which wakes every _TICK) leaves and curses restores
    previous = {signum: signal.signal(signum, lambda *_: finished.set()) for signum in (signal.SIGTERM, signal.SIGHUP)}
    colours = "NO_COLOR" not in os.environ

    def main(screen: Any) -> None:
        curses.set_escdelay(25)  # Esc goes back at once, not after curses' default second
        try:
            curses.curs_set(0)
        except curses.error:
            pass  # a terminal that cannot hide its cursor
        if colours and curses.has_colors():
            curses.use_default_colors()
            for state, colour in _STATE_COLOURS.items():
                curses.init_pair(_pair(state), colour, -1)
            top.colours = True
        screen.keypad(True)
        screen.timeout(int(_TICK * 1000))
        while not finished.is_set():
            if time.monotonic() >= top.due:
                top.refresh()
            top.draw(screen)
            key = screen.getch()
            if key == curses.KEY_RESIZE:
                continue
            if key != -1:
                top.key(key)

    # the terminal's own size (and its changes), even where an exported COLUMNS/LINES says otherwise
    # (curses.use_env(False) would not do: it takes terminfo's fixed size over the terminal's)
    for variable in ("COLUMNS", "LINES"):
        os.environ.pop(variable, None)
    try:
        curses.wrapper(main)
    except KeyboardInterrupt:
        pass  # Ctrl+C is how one leaves a live view: curses.wrapper has restored the terminal
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
