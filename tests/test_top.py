"""`servicefactory top`, driven as a person would: in a real tmux terminal, keys sent with
`send-keys`, the screen read with `capture-pane`. Every wait has a deadline."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from support import ALPHA_AND_BETA, COMMAND, PYTHON, Cli, wait_until
from servicefactory.registry.base import state_of
from servicefactory.registry.local import LocalRegistry

SERVICES = ALPHA_AND_BETA  # Alpha and Beta, from support.py (test_top and test_dashboard both run them)

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)")


SOLO = '''
from servicefactory import Service


@Service.API.endpoint(port=0)
class Solo(Service.base):
    def loop(self):
        self.sleep(0.2)


if __name__ == "__main__":
    Solo().run()
'''


class Terminal:
    """One tmux server of our own (its own socket) running one command in a 120x30 pane."""

    def __init__(self, tmp: Path, command: list[str], env: dict[str, str]) -> None:
        self.socket = str(tmp / "tmux.sock")
        settings = " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items())
        # after the command: its exit code and the terminal's modes, to see that it restored them
        shell = (f"env {settings} {shlex.join(command)}; echo EXITED=$?; "
                 f"stty -a | tr ' ;' '\\n\\n' | grep -x -e '-\\?icanon' -e '-\\?echo' | tr '\\n' ' '; echo; sleep 60")
        self.tmux("new-session", "-d", "-s", "top", "-x", "120", "-y", "30", shell)

    def tmux(self, *args: str) -> str:
        """Run one tmux command against our server."""
        done = subprocess.run(["tmux", "-f", "/dev/null", "-S", self.socket, *args], capture_output=True, text=True, timeout=10)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def keys(self, *keys: str) -> None:
        """Type `keys` (tmux key names: `j`, `Enter`, `Escape`, `C-c`)."""
        for key in keys:
            self.tmux("send-keys", "-t", "top", key)
            time.sleep(0.05)

    def screen(self) -> str:
        """What the pane shows now."""
        return self.tmux("capture-pane", "-p", "-t", "top")

    def wait_for(self, pattern: str, timeout: float = 15.0) -> str:
        """The screen once it shows a line matching `pattern`; fails with the screen if not in time."""
        regex = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if regex.search(screen):
                return screen
            if time.monotonic() >= deadline:
                raise AssertionError(f"the screen never showed {pattern!r} within {timeout} s:\n{screen}")
            time.sleep(0.1)

    def pid(self) -> int:
        """The pid of the command in the pane (the shell running it: its child)."""
        return int(self.tmux("display-message", "-p", "-t", "top", "#{pane_pid}").strip())

    def close(self) -> None:
        """Kill the tmux server and everything in it."""
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def terminal(tmp_path: Path, sf: Cli):
    """Factory: terminal(args...) runs `servicefactory top args...` in a fresh tmux pane."""
    opened: list[Terminal] = []

    def open_(*args: str) -> Terminal:
        env = {"SERVICEFACTORY_HOME": str(sf.home), "TERM": "xterm-256color"}
        term = Terminal(tmp_path, [*COMMAND, "top", "--interval", "0.3", *args], env)
        opened.append(term)
        return term

    yield open_
    for term in opened:
        term.close()


def row(screen: str, name: str) -> list[str]:
    """The cells of `name`'s row on the screen (split on runs of spaces)."""
    for line in screen.splitlines():
        if line.startswith(name + " "):
            return line.split()
    raise AssertionError(f"no row for {name}:\n{screen}")


def test_top_shows_every_service_and_a_kill_9_turns_into_stale_or_a_new_pid_within_seconds(sf: Cli, spawn, terminal):
    sf.write("services.py", SERVICES)
    sf.daemon("services.py")
    solo = spawn(args=[PYTHON, "solo.py"], files={"solo.py": SOLO})
    registry = LocalRegistry(sf.home)
    wait_until(lambda: state_of(registry, "Solo")[0] == "running", message="Solo to register")
    rows = {row["name"]: row for row in sf.status()}
    term = terminal()
    screen = term.wait_for(r"^Solo\s+running")
    assert re.search(r"^NAME\s+STATE\s+PID\s+CPU%\s+MEMORY\s+CALLS/S\s+ERR/S\s+RESTARTS\s+UPTIME\s+URL", screen, re.M)
    for name in ("Alpha", "Beta", "Solo"):
        cells = row(screen, name)
        assert cells[1] == "running" and cells[2] == str(rows[name]["pid"]), screen
        assert cells[-1] == rows[name]["url"], screen
        assert re.fullmatch(r"\d+\.\dM", cells[4]), screen  # memory, read from the process
    term.wait_for(r"^Alpha\s+running\s+\d+\s+\d+\.\d\s")  # CPU % once two readings exist

    os.kill(solo.pid, signal.SIGKILL)  # a standalone service: nobody restarts it
    solo.wait(10)
    term.wait_for(r"^Solo\s+stale\b", timeout=10)
    alpha = rows["Alpha"]["pid"]
    os.kill(alpha, signal.SIGKILL)  # supervised: restarted, under a new pid, with a restart counted
    screen = term.wait_for(rf"^Alpha\s+running\s+(?!{alpha}\b)\d+\s.*\s1\s+\S+\s+http", timeout=20)
    assert row(screen, "Beta")[2] == str(rows["Beta"]["pid"]), screen  # the other service was not touched


def test_stop_asks_first_no_keeps_it_running_yes_stops_it(sf: Cli, terminal):
    sf.write("services.py", SERVICES)
    sf.daemon("services.py")
    term = terminal()
    term.wait_for(r"^Beta\s+running")
    term.keys("j", "s")  # Beta is the second row
    term.wait_for(r"^stop Beta\? y/N")
    term.keys("n")
    term.wait_for(r"stop Beta: cancelled")
    assert sf.row("Beta")["state"] == "running"
    term.keys("s")
    term.wait_for(r"^stop Beta\? y/N")
    term.keys("y")
    term.wait_for(r"^Beta\s+stopped\s+-", timeout=20)
    term.wait_for(r"quit   Beta stopped$", timeout=20)  # the command's own last line, once it returned
    assert sf.row("Beta")["state"] == "stopped" and sf.row("Alpha")["state"] == "running"


def test_restart_gives_a_new_pid_and_l_follows_the_log_until_escape(sf: Cli, terminal):
    sf.write("services.py", SERVICES)
    sf.daemon("services.py")
    before = sf.row("Alpha")["pid"]
    term = terminal()
    term.wait_for(r"^Alpha\s+running")
    term.keys("r")
    term.wait_for(r"^restart Alpha\? y/N")
    term.keys("y")
    screen = term.wait_for(r"Alpha running \(pid \d+", timeout=30)
    after = sf.row("Alpha")["pid"]
    assert after != before and row(screen, "Alpha")[2] == str(after), screen
    term.keys("l")
    term.wait_for(r"^log of Alpha ")
    first = term.wait_for(r"Alpha \| Alpha : alpha tick")
    ticks = first.count("alpha tick")
    term.wait_for(r"Alpha \| Alpha : alpha tick", timeout=5)
    # it follows: new lines arrive while we look (the newest line's time moves on)
    stamp = re.findall(r"^(\S+) Alpha \| Alpha : alpha tick", first, re.M)[-1]
    wait_until(lambda: re.findall(r"^(\S+) Alpha \| Alpha : alpha tick", term.screen(), re.M)[-1] > stamp,
               timeout=10, message="a newer log line")
    assert ticks > 0
    term.keys("Escape")
    term.wait_for(r"^NAME\s+STATE")


@pytest.mark.parametrize("how", ["q", "C-c", "SIGTERM", "SIGHUP"])
def test_q_ctrl_c_sigterm_and_sighup_leave_top_with_exit_0_and_the_terminal_restored(sf: Cli, terminal, how):
    sf.write("services.py", SERVICES)
    sf.daemon("services.py")
    term = terminal()
    term.wait_for(r"^Alpha\s+running")
    if how.startswith("SIG"):
        shell = term.pid()
        children = subprocess.run(["pgrep", "-P", str(shell)], capture_output=True, text=True).stdout.split()
        (env_or_top,) = [pid for pid in children if "top" in Path(f"/proc/{pid}/cmdline").read_text()]
        os.kill(int(env_or_top), getattr(signal, how))
    else:
        term.keys(how)
    screen = term.wait_for(r"^EXITED=\d+", timeout=10)
    assert "EXITED=0" in screen, screen
    # the terminal is given back: canonical mode and echo are on again, the table is gone
    modes = term.wait_for(r"^(-?icanon|-?echo) (-?icanon|-?echo)", timeout=5)
    assert re.search(r"^(icanon echo|echo icanon) ?$", modes, re.M), modes
    assert "NAME" not in modes and "Traceback" not in modes


def test_ctrl_z_gives_the_shell_its_terminal_back_and_fg_takes_it_again(sf: Cli, tmp_path: Path):
    """In an interactive shell (job control): Ctrl+Z stops top with the terminal's modes and the
    normal screen restored; `fg` brings the live table back, and its keys work again."""
    sf.write("services.py", SERVICES)
    sf.daemon("services.py")
    env = {"SERVICEFACTORY_HOME": str(sf.home), "TERM": "xterm-256color", "PS1": "PROMPT$ "}
    term = Terminal(tmp_path, ["bash", "--norc", "--noprofile", "-i"], env)
    try:
        term.wait_for(r"^PROMPT\$")
        term.keys(f"{shlex.join(COMMAND)} top --interval 0.3", "Enter")
        term.wait_for(r"^Alpha\s+running")
        term.keys("C-z")
        term.wait_for(r"Stopped\s")
        modes = "stty -a | grep -o -w -e -icanon -e icanon -e -echo -e echo | tr '\\n' ' '; echo"
        term.keys(modes, "Enter")
        screen = term.wait_for(r"^(-?icanon|-?echo) (-?icanon|-?echo) ?$")
        assert re.search(r"^icanon echo ?$", screen, re.M), screen
        assert not re.search(r"^NAME\s+STATE", screen, re.M), screen  # the normal screen, not top's
        term.keys("fg", "Enter")
        term.wait_for(r"^Alpha\s+running")
        term.keys("j", "s")
        term.wait_for(r"^stop Beta\? y/N")  # it reads keys again
        term.keys("n", "q")
        term.wait_for(r"^PROMPT\$\s*$")  # a bare prompt: top has ended
        term.keys("echo EXIT=$?", "Enter")
        assert "EXIT=0" in term.wait_for(r"^EXIT=\d+")
    finally:
        term.close()


def test_a_resized_terminal_is_redrawn_to_its_new_size_with_the_footer_on_the_last_line(sf: Cli, terminal):
    sf.write("services.py", SERVICES)
    sf.daemon("services.py")
    term = terminal("--interval", "60")  # no reading is due: only the resize can redraw
    term.wait_for(r"^Beta\s+running")
    term.tmux("resize-window", "-t", "top", "-x", "50", "-y", "5")

    def small() -> list[str] | None:
        lines = term.screen().rstrip("\n").split("\n")
        # tmux first shows the old screen's bottom lines cut to the new size: wait for our redraw
        return lines if len(lines) == 5 and lines[-1].startswith("up/down select") and \
            lines[2].startswith("Alpha") else None
    lines = wait_until(small, timeout=10, message="the 50x5 screen")
    assert all(len(line) <= 50 for line in lines) and lines[1].startswith("NAME") and lines[2].startswith("Alpha"), lines
    term.tmux("resize-window", "-t", "top", "-x", "120", "-y", "30")
    screen = term.wait_for(r"^Beta\s+running.*http://127\.0\.0\.1:\d+$", timeout=10)
    assert screen.rstrip("\n").split("\n")[-1].startswith("up/down select"), screen


def test_the_first_rates_are_measured_over_a_whole_interval_not_over_the_first_milliseconds(sf: Cli, terminal):
    """The first screen has no CPU % or calls/s yet ('-'): a rate over the few milliseconds between
    two back-to-back readings showed a service's start-up as 150 % CPU."""
    sf.write("services.py", SERVICES)
    sf.daemon("services.py")
    term = terminal("--interval", "3")
    cells = row(term.wait_for(r"^Beta\s+running"), "Alpha")
    assert cells[3] == "-" and cells[5] == "-", cells
    cells = row(term.wait_for(r"^Alpha\s+running\s+\d+\s+\d+\.\d\s", timeout=15), "Alpha")
    assert 0.0 <= float(cells[3]) <= 100.0 * os.cpu_count(), cells


def test_top_without_a_terminal_is_one_line_and_exit_2(sf: Cli):
    result = sf("top")
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: top needs a terminal; use `servicefactory status` "
                                     "(or `status --json`) in scripts"), result.stderr


def test_top_on_a_dumb_terminal_is_one_line_and_exit_2_not_a_blank_screen(sf: Cli, tmp_path: Path):
    term = Terminal(tmp_path, [*COMMAND, "top"], {"SERVICEFACTORY_HOME": str(sf.home), "TERM": "dumb"})
    try:
        screen = term.wait_for(r"^EXITED=\d+", timeout=15)
        assert "EXITED=2" in screen, screen
        assert "error: top needs a terminal that can redraw its screen (TERM=dumb); use `servicefactory status`" \
            in screen, screen
    finally:
        term.close()


def calling(name: str, stop: threading.Event, deadline: float = 30.0) -> threading.Thread:
    """A thread calling `name`'s echo 4 times and its failing action once per 0.2 s, until `stop`
    (or the deadline)."""
    from servicefactory.errors import ActionFailed
    from servicefactory.http import client

    def run() -> None:
        end = time.monotonic() + deadline
        while not stop.is_set() and time.monotonic() < end:
            for _ in range(4):
                client.perform(name, "echo", 1, timeout=5)
            try:
                client.perform(name, "fail", timeout=5)
            except ActionFailed:
                pass
            stop.wait(0.2)
        client.close_connections()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_calls_and_errors_per_second_come_from_the_services_counters_not_counting_tops_own(sf: Cli, terminal):
    sf.write("services.py", SERVICES)
    sf.daemon("services.py")
    term = terminal()
    term.wait_for(r"^Beta\s+running")
    stop = threading.Event()
    thread = calling("Alpha", stop)
    try:
        def rates() -> tuple[float, float] | None:
            cells = row(term.screen(), "Alpha")
            if cells[5] == "-" or float(cells[5]) < 3:
                return None
            return float(cells[5]), float(cells[6])
        calls, errors = wait_until(rates, timeout=20, interval=0.2, message="Alpha's calls/s")
        assert 0.5 <= errors < calls, (calls, errors)  # one call in five fails
        # top asks every service for its health each interval; those calls are not traffic
        beta = row(term.screen(), "Beta")
        assert beta[5] == "0.0" and beta[6] == "0.0", beta
    finally:
        stop.set()
        thread.join(10)


BROKEN = '''
from servicefactory.registry.local import LocalRegistry
from servicefactory.view._rows import Sampler
from servicefactory.view.top import Top, run


class Broken(Top):
    def render(self, height, width=0):
        if self.rows is not None and getattr(self, "drawn", False):
            raise RuntimeError("a bug while drawing")
        self.drawn = True
        return super().render(height, width)


run(Broken(Sampler(LocalRegistry()), interval=0.2))
'''


def test_a_bug_while_drawing_still_gives_the_terminal_back(sf: Cli, tmp_path: Path):
    """The second frame raises: the traceback is printed on the normal screen, with the modes restored."""
    script = tmp_path / "broken.py"
    script.write_text(BROKEN)
    term = Terminal(tmp_path, [PYTHON, str(script)], {"SERVICEFACTORY_HOME": str(sf.home), "TERM": "xterm-256color"})
    try:
        screen = term.wait_for(r"^EXITED=\d+", timeout=15)
        assert "EXITED=1" in screen and "RuntimeError: a bug while drawing" in screen, screen
        modes = term.wait_for(r"^(-?icanon|-?echo) (-?icanon|-?echo)", timeout=5)
        assert re.search(r"^(icanon echo|echo icanon) ?$", modes, re.M), modes
        assert "servicefactory top" not in modes  # the alternate screen was left
    finally:
        term.close()
