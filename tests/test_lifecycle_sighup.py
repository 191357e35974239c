"""SIGHUP to a supervisor started by `up` (issue 15): it reads servicefactory.toml again and applies it
as `up` does (restarts what changed, reason `config`; starts what is new; stops what went; keeps the
rest with the same pid). A broken file changes nothing and is said in one line. Tried to break: a
SIGHUP while an apply is still stopping a slow service, a burst of SIGHUPs, a module that raises.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

from support import PYTHON, alive, gone, supervisor_pid, wait_until

SLOW = """
import signal, sys, time
def bye(signum, frame):
    time.sleep(1.0)  # a slow stop: an apply is still under way for a second
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
print("slow", sys.argv[1], flush=True)
while True:
    time.sleep(1)
"""


def _file(*services: str) -> str:
    return "[settings]\nbackoff = 0.1\n\n" + "\n".join(services)


def _sleeper(name: str, seconds: int, extra: str = "") -> str:
    return f'[services.{name}]\ncommand = ["sleep", "{seconds}"]\n{extra}\n'


def _slow(version: str) -> str:
    return f'[services.slow]\ncommand = ["{PYTHON}", "slow.py", "{version}"]\nready = {{ log = "^slow " }}\n'


def _pids(sf) -> dict[str, int | None]:
    return {row["name"]: row["pid"] for row in sf.status()}


def _supervisor(sf) -> int:
    return supervisor_pid(next(row for row in sf.status() if row.get("supervisor")))


def _log(sf) -> str:
    path = sf.home / "supervisor.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _cmdline(pid: int | None) -> list[str]:
    try:
        return [part.decode() for part in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if part]
    except OSError:  # no process (None), or gone since
        return []


def test_sighup_applies_the_file_restarting_what_changed_and_keeping_the_rest(sf):
    sf.write("servicefactory.toml", _file(_sleeper("keep", 300), _sleeper("change", 300), _sleeper("gone", 200),
                                          _sleeper("after", 300, 'depends_on = ["keep"]')))
    assert sf("up").returncode == 0
    before = _pids(sf)
    supervisor = _supervisor(sf)
    sf.write("servicefactory.toml", _file(_sleeper("keep", 300), _sleeper("change", 301), _sleeper("new", 100),
                                          _sleeper("after", 300, 'depends_on = ["keep"]')))
    os.kill(supervisor, signal.SIGHUP)
    wait_until(lambda: "SIGHUP: applied" in _log(sf), timeout=30, message="the apply said done")
    after = {row["name"]: row for row in sf.status()}
    assert set(after) == {"keep", "change", "new", "after"}, after
    assert after["keep"]["pid"] == before["keep"] and after["after"]["pid"] == before["after"]
    assert after["change"]["pid"] != before["change"] and after["change"]["state"] == "running"
    assert _cmdline(after["change"]["pid"])[-1] == "301"
    assert after["change"]["last_reason"] == "config", after["change"]
    assert after["new"]["state"] == "running" and gone(before["gone"])
    line = next(line for line in _log(sf).splitlines() if "SIGHUP: applied" in line)
    assert line.endswith("restarted change; started new; stopped gone; kept keep, after"), line
    assert alive(supervisor) and _supervisor(sf) == supervisor
    # nothing changed since: another SIGHUP touches nothing
    os.kill(supervisor, signal.SIGHUP)
    wait_until(lambda: _log(sf).count("SIGHUP: applied") == 2, timeout=30, message="the second apply")
    line = [line for line in _log(sf).splitlines() if "SIGHUP: applied" in line][-1]
    assert line.endswith("servicefactory.toml: kept keep, change, new, after"), line
    assert {name: row["pid"] for name, row in after.items()} == _pids(sf)
    assert sf("down").returncode == 0
    assert not sf.ours()


def test_a_broken_file_keeps_everything_running_and_says_why_in_one_line(sf):
    good = _file(_sleeper("one", 300), _sleeper("two", 300))
    sf.write("servicefactory.toml", good)
    assert sf("up").returncode == 0
    before = _pids(sf)
    supervisor = _supervisor(sf)
    broken = {
        "not TOML": (good + "\n[services.three\n", "servicefactory.toml:12: Expected ']'"),
        "an unknown dependency": (good.replace('"sleep", "300"]\n', '"sleep", "300"]\ndepends_on = ["db"]\n', 1),
                                  "depends on 'db', which is not a service in this file"),
        "a module that raises": (good + '\n[services.api]\ntarget = "api:Api"\n',
                                 "raised RuntimeError: no config"),
    }
    sf.write("api.py", "raise RuntimeError('no config')\n")
    for count, (what, (text, expected)) in enumerate(broken.items(), 1):
        sf.write("servicefactory.toml", text)
        os.kill(supervisor, signal.SIGHUP)
        wait_until(lambda: _log(sf).count("SIGHUP: not applied") == count, timeout=30, message=f"{what} refused")
        lines = [line for line in _log(sf).splitlines() if "SIGHUP: not applied" in line]
        assert expected in lines[-1] and lines[-1].endswith("every service runs on as it was"), (what, lines)
        assert "Traceback" not in _log(sf), _log(sf)
        assert _pids(sf) == before, what
    assert alive(supervisor)
    sf.write("servicefactory.toml", good + _sleeper("three", 300))  # fixed: applied
    os.kill(supervisor, signal.SIGHUP)
    wait_until(lambda: (sf.row("three") or {}).get("state") == "running", timeout=30, message="three started")
    assert {name: pid for name, pid in _pids(sf).items() if name != "three"} == before
    assert sf("down").returncode == 0


def test_sighups_during_an_apply_end_with_the_newest_file_applied(sf):
    sf.write("slow.py", SLOW)
    sf.write("servicefactory.toml", _file(_slow("v1"), _sleeper("keep", 300)))
    assert sf("up").returncode == 0
    before = _pids(sf)
    supervisor = _supervisor(sf)
    sf.write("servicefactory.toml", _file(_slow("v2"), _sleeper("keep", 300)))
    os.kill(supervisor, signal.SIGHUP)
    # while the first apply waits for slow's second-long stop: a newer file, and a burst of SIGHUPs
    wait_until(lambda: (sf.row("slow") or {}).get("state") == "stopping", timeout=30, message="slow stopping")
    sf.write("servicefactory.toml", _file(_slow("v3"), _sleeper("keep", 300), _sleeper("late", 300)))
    for _ in range(5):
        os.kill(supervisor, signal.SIGHUP)
    wait_until(lambda: (sf.row("late") or {}).get("state") == "running"
               and _cmdline(sf.row("slow")["pid"])[-1:] == ["v3"], timeout=40, message="the newest file applied")
    wait_until(lambda: "started late" in _log(sf), timeout=30, message="the pass that started late said so")
    log = _log(sf)
    # the burst was coalesced: one pass for the first SIGHUP, at most one more for all the rest
    assert 2 <= log.count("SIGHUP: applied") <= 3, log
    assert "failed" not in log.split("SIGHUP", 1)[1], log
    rows = {row["name"]: row for row in sf.status()}
    assert rows["keep"]["pid"] == before["keep"] and rows["slow"]["state"] == "running"
    assert alive(supervisor) and _supervisor(sf) == supervisor
    assert sf("down").returncode == 0
    assert not sf.ours()
