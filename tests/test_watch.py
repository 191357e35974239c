"""Watch mode (issue 15): `run --watch` restarts a service when a .py file under its directory changes
(reason `file-change`), once for a burst of saves; a file that does not compile leaves the old
process running and its error is printed once; .venv, __pycache__, .git, non-.py files and
--watch-ignore patterns restart nothing; a service that cannot start waits for the fix.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest

from support import wait_until

pytest.importorskip("watchdog", reason="watch mode needs the watchdog package (an install requirement)")

APP = """
from servicefactory import Service
import helper

@Service.API.endpoint(port=0)
class App(Service.base):
    def loop(self):
        self.sleep(0.1)

    @Service.API.handle("version")
    def version(self, data):
        return helper.VERSION
"""


class Foreground:
    """`servicefactory run --watch ...` in the foreground, its output collected."""

    def __init__(self, sf, *args: str) -> None:
        self.sf = sf
        self.proc = sf.popen("run", "--watch", *args)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.reader.join(5)
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def watched(sf):
    running = []

    def start(*args: str) -> Foreground:
        foreground = Foreground(sf, *args)
        running.append(foreground)
        return foreground

    yield start
    for foreground in running:
        foreground.stop()


def _running_pid(sf, name: str = "App", other_than: int | None = None) -> int:
    return wait_until(lambda: (row := sf.row(name)) and row["state"] == "running" and row["pid"] != other_than
                      and row["pid"], timeout=20, message=f"{name} running")


def _version(sf) -> str:
    return sf("perform", "App", "version").stdout.strip()


def test_a_saved_file_restarts_the_service_once_with_the_new_code(sf, watched):
    sf.write("app.py", APP)
    sf.write("helper.py", "VERSION = 1\n")
    run = watched("app")
    first = _running_pid(sf)
    wait_until(lambda: "watching" in run.output(), message="the watch line")
    sf.write("helper.py", "VERSION = 2\n")
    second = _running_pid(sf, other_than=first)
    assert _version(sf) == "2"
    row = sf.row("App")
    assert row["last_reason"] == "file-change" and row["history"][-1]["detail"] == "changed: helper.py", row
    assert "helper.py changed; restarting it (reason: file-change)" in run.output()
    time.sleep(1.5)  # the restart's own imports and __pycache__ writes restart nothing
    assert sf.row("App")["pid"] == second and len(sf.row("App")["history"]) == 1


def test_ten_files_saved_at_once_and_a_file_saved_twice_fast_are_one_restart_each(sf, watched):
    sf.write("app.py", APP)
    sf.write("helper.py", "VERSION = 1\n")
    for index in range(10):
        sf.write(f"mod{index}.py", "X = 0\n")
    watched("app")
    first = _running_pid(sf)
    for index in range(10):  # a `git checkout` of ten files
        sf.write(f"mod{index}.py", "X = 1\n")
    second = _running_pid(sf, other_than=first)
    time.sleep(1.0)
    assert sf.row("App")["pid"] == second and len(sf.row("App")["history"]) == 1
    assert "and 7 more" in sf.row("App")["history"][0]["detail"]
    sf.write("helper.py", "VERSION = 3\n")  # saved twice, 50 ms apart
    time.sleep(0.05)
    sf.write("helper.py", "VERSION = 4\n")
    third = _running_pid(sf, other_than=second)
    time.sleep(1.0)
    assert sf.row("App")["pid"] == third and len(sf.row("App")["history"]) == 2
    assert _version(sf) == "4"


def test_a_syntax_error_keeps_the_old_process_and_is_printed_once_until_fixed(sf, watched):
    sf.write("app.py", APP)
    sf.write("helper.py", "VERSION = 1\n")
    run = watched("app")
    first = _running_pid(sf)
    sf.write("helper.py", "VERSION = (\n")
    wait_until(lambda: "not restarting:" in run.output(), timeout=10, message="the syntax error")
    sf.write("helper.py", "VERSION = (\n")  # saved again, still broken: said once only
    sf.write("mod.py", "Y = 1\n")  # another file, fine: still no restart while helper.py is broken
    time.sleep(1.5)
    assert run.output().count("not restarting:") == 1, run.output()
    assert "helper.py:1: SyntaxError:" in run.output()
    assert sf.row("App")["pid"] == first and _version(sf) == "1"
    sf.write("helper.py", "VERSION = 5\n")
    _running_pid(sf, other_than=first)
    assert _version(sf) == "5"


def test_ignored_places_and_patterns_restart_nothing(sf, watched):
    sf.write("app.py", APP)
    sf.write("helper.py", "VERSION = 1\n")
    for place in (".venv/lib/site.py", "__pycache__/x.py", ".git/hooks/h.py", "pkg/__pycache__/y.py",
                  "generated_models.py", "notes.txt", "data/config.json"):
        sf.write(place, "")
    watched("app", "--watch-ignore", "generated_*.py")
    first = _running_pid(sf)
    time.sleep(0.5)
    for place in (".venv/lib/site.py", "__pycache__/x.py", ".git/hooks/h.py", "pkg/__pycache__/y.py",
                  "generated_models.py", "notes.txt", "data/config.json"):
        sf.write(place, "Z = 1\n")
    time.sleep(1.5)
    row = sf.row("App")
    assert row["pid"] == first and row["history"] == [], row
    sf.write("pkg/real.py", "Z = 1\n")  # in a directory created before the watch began
    _running_pid(sf, other_than=first)


def test_a_service_broken_at_import_keeps_trying_and_the_fix_starts_it_at_once(sf, watched):
    sf.write("app.py", APP)
    sf.write("helper.py", "VERSION = 1\n")
    run = watched("app", "--backoff", "0.1", "--max-failures", "2", "--retry-failed-after", "0")
    first = _running_pid(sf)
    sf.write("helper.py", "raise RuntimeError('not yet')\n")  # compiles, fails when imported
    wait_until(lambda: (sf.row("App") or {}).get("state") == "failed", timeout=30, message="failed")
    assert run.proc.poll() is None  # watch mode stays, waiting for the fix
    assert "RuntimeError: not yet" in sf.log("App")
    sf.write("helper.py", "VERSION = 6\n")
    _running_pid(sf, other_than=first)
    assert _version(sf) == "6"


def test_the_watcher_is_idle_on_a_large_tree(sf, watched):
    import psutil

    sf.write("app.py", APP)
    sf.write("helper.py", "VERSION = 1\n")
    for top in range(20):
        for sub in range(50):
            os.makedirs(sf.cwd / f"pkg{top}" / f"sub{sub}")
            (sf.cwd / f"pkg{top}" / f"sub{sub}" / "m.py").write_text("")
    run = watched("app")
    _running_pid(sf)
    wait_until(lambda: "watching" in run.output(), message="watching")
    supervisor = psutil.Process(run.proc.pid)
    time.sleep(0.5)
    before = sum(supervisor.cpu_times()[:2])
    time.sleep(3.0)
    used = sum(supervisor.cpu_times()[:2]) - before
    assert used < 0.15, f"the supervisor used {used:.3f} s of CPU in 3 s while nothing changed"
    sf.write("pkg19/sub49/m.py", "X = 1\n")  # the deepest, last directory is watched too
    history = wait_until(lambda: (sf.row("App") or {}).get("history"), timeout=10, message="a restart")
    assert [event["reason"] for event in history] == ["file-change"]


def test_an_editors_atomic_save_is_one_restart(sf, watched):
    sf.write("app.py", APP)
    sf.write("helper.py", "VERSION = 1\n")
    watched("app")
    first = _running_pid(sf)
    # vim and most IDEs: write a temporary file beside it, then rename it over the original
    temporary = sf.cwd / ".helper.py.swp"
    temporary.write_text("VERSION = 7\n")
    os.replace(temporary, sf.cwd / "helper.py")
    second = _running_pid(sf, other_than=first)
    time.sleep(1.0)
    assert sf.row("App")["pid"] == second and len(sf.row("App")["history"]) == 1
    assert _version(sf) == "7"
