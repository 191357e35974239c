"""Progress on a terminal: `run --daemon` of several services and `stop --all` say which services
are ready (or stopped) and which are still waited for, on one line redrawn in place (seen in a real
tmux pane), and say nothing more than before when piped."""
from __future__ import annotations

import re
import time
from pathlib import Path

from support import COMMAND, Cli
from test_top import Terminal, pytestmark  # noqa: F401 (tmux or a skip with its reason)

SLOW = '''
import time
from servicefactory import Service


def make(name, delay):
    class Slow(Service.base):
        def __init__(self):
            time.sleep(delay)

        def loop(self):
            self.sleep(0.3)

        def finalize(self):
            time.sleep(delay / 2)

    Slow.__name__ = Slow.__qualname__ = name
    return Service.API.endpoint(port=0)(Slow)


Quick = make("Quick", 0)
Slow1 = make("Slow1", 1.5)
Slow2 = make("Slow2", 3)
'''


def test_run_daemon_and_stop_all_show_which_services_are_done_and_which_are_awaited(sf: Cli, tmp_path: Path):
    sf.write("slow.py", SLOW)
    command = " ".join(COMMAND)
    script = tmp_path / "both.sh"
    script.write_text(f"cd {tmp_path}\n{command} run slow --daemon\n{command} stop --all\n")
    term = Terminal(tmp_path, ["sh", str(script)], {"SERVICEFACTORY_HOME": str(sf.home), "TERM": "xterm"})
    try:
        seen: list[str] = []
        deadline = time.monotonic() + 60
        screen = ""
        while "EXITED=" not in screen and time.monotonic() < deadline:
            screen = term.screen()
            seen += [line.strip() for line in screen.splitlines()
                     if line.startswith(("starting:", "stopping:")) and line.strip() not in seen]
            time.sleep(0.05)
        assert "EXITED=0" in screen, screen
        assert any(re.fullmatch(r"starting: [012]/3 ready; waiting for (.*, )?Slow2", line) for line in seen), seen
        assert any(re.fullmatch(r"stopping: [012]/3 stopped; waiting for (.*, )?Slow2", line) for line in seen), seen
        lines = [line.strip() for line in screen.splitlines() if line.strip()]
        # the progress line is gone once each command is done: what stays is what it always printed
        assert [line for line in lines if re.match(r"\w+ (running|stopped)", line)] == [
            line for line in lines[:6]], lines
        assert [re.sub(r" \(pid.*", "", line) for line in lines[:6]] == [
            "Quick running", "Slow1 running", "Slow2 running", "Quick stopped", "Slow1 stopped", "Slow2 stopped"], lines
    finally:
        term.close()


def test_piped_there_is_no_progress_at_all(sf: Cli):
    sf.write("slow.py", SLOW)
    started = sf("run", "slow", "--daemon")
    stopped = sf("stop", "--all")
    assert started.returncode == 0 and stopped.returncode == 0, started.stderr + stopped.stderr
    for result in (started, stopped):
        assert "\r" not in result.stdout + result.stderr and "\x1b" not in result.stdout + result.stderr
        assert result.stderr == ""
    assert [line.split(" (")[0] for line in started.stdout.splitlines()] == ["Quick running", "Slow1 running",
                                                                              "Slow2 running"]
    assert stopped.stdout.splitlines() == ["Quick stopped", "Slow1 stopped", "Slow2 stopped"]


APP = '''
[services.quick]
target = "slow:Quick"

[services.slow1]
target = "slow:Slow1"

[services.slow2]
target = "slow:Slow2"
'''


def watch(term: Terminal, timeout: float = 60) -> tuple[list[str], str]:
    """Every progress line the pane showed until the script ended, and the final screen."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    screen = ""
    while "EXITED=" not in screen and time.monotonic() < deadline:
        screen = term.screen()
        seen += [line.strip() for line in screen.splitlines()
                 if line.startswith(("starting:", "stopping:")) and line.strip() not in seen]
        time.sleep(0.05)
    return seen, screen


def test_up_shows_which_services_of_the_file_are_ready_and_which_are_awaited(sf: Cli, tmp_path: Path):
    sf.write("slow.py", SLOW)
    sf.write("servicefactory.toml", APP)
    command = " ".join(COMMAND)
    script = tmp_path / "up.sh"
    script.write_text(f"cd {tmp_path}\n{command} up\n{command} stop --all\n")
    term = Terminal(tmp_path, ["sh", str(script)], {"SERVICEFACTORY_HOME": str(sf.home), "TERM": "xterm"})
    try:
        seen, screen = watch(term)
        assert "EXITED=0" in screen, screen
        assert any(re.fullmatch(r"starting: [012]/3 ready; waiting for (.*, )?slow2", line) for line in seen), seen
        assert any(re.fullmatch(r"stopping: [012]/3 stopped; waiting for (.*, )?slow2", line) for line in seen), seen
        lines = [re.sub(r" \(pid.*", "", line.strip()) for line in screen.splitlines() if line.strip()]
        assert sorted(lines[:3]) == ["quick running", "slow1 running", "slow2 running"], lines
        assert not [line for line in lines if line.startswith(("starting:", "stopping:"))], lines  # cleared
    finally:
        term.close()


def test_up_piped_shows_no_progress(sf: Cli):
    sf.write("slow.py", SLOW)
    sf.write("servicefactory.toml", APP)
    started = sf("up")
    assert started.returncode == 0, started.stderr
    assert "\r" not in started.stdout + started.stderr and "\x1b" not in started.stdout + started.stderr
    assert started.stderr == ""
    assert sorted(line.split(" (")[0] for line in started.stdout.splitlines()) == [
        "quick running", "slow1 running", "slow2 running"]


INSTANCES = '''
import time
from servicefactory import Service


@Service.API.endpoint(port=0)
class Slow(Service.base):
    def __init__(self):
        time.sleep(1.5)

    def loop(self):
        self.sleep(0.3)

    def finalize(self):
        time.sleep(1)
'''


def test_run_instances_daemon_counts_each_instance(sf: Cli, tmp_path: Path):
    sf.write("slowly.py", INSTANCES)
    command = " ".join(COMMAND)
    script = tmp_path / "instances.sh"
    script.write_text(f"cd {tmp_path}\n{command} run slowly:Slow --instances 3 --daemon\n{command} stop --all\n")
    term = Terminal(tmp_path, ["sh", str(script)], {"SERVICEFACTORY_HOME": str(sf.home), "TERM": "xterm"})
    try:
        seen, screen = watch(term)
        assert "EXITED=0" in screen, screen
        assert any(re.fullmatch(r"starting: [012]/3 ready; waiting for (.*, )?Slow/3", line) for line in seen), seen
        assert any(re.fullmatch(r"stopping: [012]/3 stopped; waiting for (.*, )?Slow/\d", line) for line in seen), seen
    finally:
        term.close()
