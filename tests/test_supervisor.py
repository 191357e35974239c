"""The supervisor, driven through the real CLI: restarts with backoff, user stops, kill -9, Ctrl+C, logs, status.

Every test runs `python -m servicefactory ...` as real subprocesses in its own tmp_path and state
directory. The `sf` fixture stops whatever the test started (`stop --all`), then SIGKILLs any
process still carrying this test's SERVICEFACTORY_HOME.
"""
from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import psutil

from support import PYTHON, Cli, gone, stamped, supervisor_pid, wait_until



PING = """
    @Service.API.handle("ping")
    def ping(self, data):
        return os.getpid()
"""


# -- restarts with backoff --

CRASH_AT_ONCE = """
import os
from servicefactory import Service

@Service.API.endpoint(port=0)
class Crashy(Service.base):
    def loop(self):
        raise SystemExit(1)
"""


def test_a_service_exiting_1_at_once_is_restarted_with_doubling_delays_then_left_failed(sf):
    sf.write("crashy.py", CRASH_AT_ONCE)
    sf.daemon("crashy", "--backoff", "0.1", "--max-failures", "4")
    wait_until(lambda: (sf.row("Crashy") or {}).get("state") == "failed", timeout=15, message="Crashy failed")

    shown = sf("logs", "Crashy", "-n", "200")
    assert shown.returncode == 0, shown.stderr
    events = [line for line in shown.stdout.splitlines() if "[servicefactory] Crashy" in line]
    delays = [re.search(r"restarting in (\S+) s", line).group(1) for line in events if "restarting in" in line]
    assert delays == ["0.1", "0.2", "0.4"], shown.stdout
    assert "exited with code 1; 4 fast failures in a row, trying again in 300 s" in events[-1], shown.stdout
    # the delays are real: each restart's `ready` comes at least its delay after the exit
    exits = stamped(shown.stdout, r"restarting in")
    readies = stamped(shown.stdout, r"\[servicefactory\] Crashy ready")
    assert len(readies) == 4, shown.stdout
    for exited, ready, delay in zip(exits, readies[1:], (0.1, 0.2, 0.4)):
        assert ready - exited >= delay - 0.01, shown.stdout

    (row,) = sf.status("Crashy")
    assert (row["state"], row["last_exit"], row["restarts"], row["pid"]) == ("failed", 1, 3, None), row
    assert sf("status", "Crashy").returncode != 0
    assert sf.service_processes("Crashy") == []


FAIL_BEFORE_READY = """
from servicefactory import Service

class Broken(Service.base):
    def __init__(self):
        raise RuntimeError("no database configured")
"""


def test_a_service_failing_before_it_is_ever_ready_makes_run_daemon_exit_non_zero(sf):
    sf.write("broken.py", FAIL_BEFORE_READY)
    result = sf("run", "broken", "--daemon", "--backoff", "0.1")
    assert result.returncode != 0, result.stdout
    assert "Broken failed to start" in result.stderr and "no database configured" in result.stderr, result.stderr
    assert sf.log("Broken").count("Traceback (most recent call last)") == 1, sf.log("Broken")  # not restarted
    wait_until(lambda: not sf.ours(), timeout=10, message="no process left")
    assert list(sf.home.glob("*.pid")) == []


# crashes once, a second after its first ping was answered: a second of the test's own pace, so a
# loaded machine's slow CLI cannot make the first ping land after the crash
CRASH_ONCE_AFTER_A_SECOND = """
import os
import time
from pathlib import Path
from servicefactory import Service

FLAG = Path(__file__).with_name("crashed-once")

@Service.API.endpoint(port=0)
class Flaky(Service.base):
    pinged = None

    def loop(self):
        if not FLAG.exists() and self.pinged is not None:
            self.sleep(max(0.0, self.pinged + 1.0 - time.monotonic()))
            FLAG.write_text("crashed")
            os._exit(3)
        self.sleep(0.05 if not FLAG.exists() else 30)

    @Service.API.handle("ping")
    def ping(self, data):
        if self.pinged is None:
            type(self).pinged = time.monotonic()
        return os.getpid()
"""


def _crashed_and_back(sf: Cli, first_pid: int) -> dict[str, Any]:
    def back() -> dict[str, Any] | None:
        row = sf.row("Flaky")
        if row and row["state"] == "running" and row["restarts"] >= 1 and row["pid"] not in (None, first_pid):
            return row
        return None
    return wait_until(back, timeout=15, message="Flaky restarted and running")


def test_a_service_crashing_after_a_second_is_restarted_and_answers_again(sf):
    sf.write("flaky.py", CRASH_ONCE_AFTER_A_SECOND)
    sf.daemon("flaky", "--backoff", "0.1")
    before = sf("perform", "Flaky", "ping")
    assert before.returncode == 0, before.stderr
    first_pid = json.loads(before.stdout)

    row = _crashed_and_back(sf, first_pid)
    after = sf("perform", "Flaky", "ping")
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout) == row["pid"] != first_pid
    assert row["last_exit"] == 3 and row["restarts"] >= 1, row
    assert gone(first_pid)
    assert "exited with code 3; restarting in 0.1 s" in sf.log("Flaky")


def test_status_shows_state_pid_restarts_last_exit_and_uptime(sf):
    sf.write("flaky.py", CRASH_ONCE_AFTER_A_SECOND)
    sf.daemon("flaky", "--backoff", "0.1")
    first_pid = json.loads(sf("perform", "Flaky", "ping").stdout)
    _crashed_and_back(sf, first_pid)
    time.sleep(1.1)

    (row,) = sf.status("Flaky")
    assert {"name", "state", "pid", "restarts", "last_exit", "uptime"} <= set(row), row
    assert row["state"] == "running" and psutil.pid_exists(row["pid"]), row
    assert (row["restarts"], row["last_exit"]) == (1, 3), row
    assert isinstance(row["uptime"], (int, float)) and 1.0 <= row["uptime"] < 30, row

    table = sf("status", "Flaky")
    assert table.returncode == 0, table.stderr
    header, line = table.stdout.splitlines()
    assert header.split()[:7] == ["NAME", "STATE", "PID", "URL", "UPTIME", "RESTARTS", "EXIT"], table.stdout
    cells = line.split()
    assert cells[:3] == ["Flaky", "running", str(row["pid"])], table.stdout
    assert re.fullmatch(r"\d+s", cells[4]) and cells[5:7] == ["1", "3"], table.stdout


# -- a user's stop is not undone --

PINGER = """
import os
from servicefactory import Service

@Service.API.endpoint(port=0)
class Pinger(Service.base):
    def loop(self):
        self.sleep(30)
""" + PING


def _stopped_stays_down(sf: Cli, name: str, pid: int, watch: float = 0.0) -> None:
    """Stop `name`; it is down at once and stays down. `watch`: seconds to watch for a restart
    that must not come (one real test does; tests/test_policy.py proves the rule without waiting:
    an exit asked for is STOPPED, and nothing moves a STOPPED service but a start request)."""
    result = sf("stop", name, "--timeout", "3")
    assert result.returncode == 0, result.stderr
    assert gone(pid)
    time.sleep(watch)
    row = sf.row(name)
    assert row is None or (row["state"] in ("stopped", "stale") and row["pid"] is None), row
    assert sf.service_processes(name) == []
    assert sf("perform", name, "ping").returncode != 0


def test_stopping_a_supervised_service_is_not_undone_and_restart_brings_it_back(sf):
    sf.write("pinger.py", PINGER)
    sf.daemon("pinger", "--restart", "always", "--backoff", "0.1")
    pid = json.loads(sf("perform", "Pinger", "ping").stdout)

    _stopped_stays_down(sf, "Pinger", pid, watch=2.0)

    restarted = sf("restart", "Pinger", "--timeout", "3")
    assert restarted.returncode == 0, f"restart Pinger exited {restarted.returncode}: {restarted.stderr}"
    answer = sf("perform", "Pinger", "ping")
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout) != pid


PAIR = """
import os
import time
from servicefactory import Service

@Service.API.endpoint(port=0)
class Alpha(Service.base):
    def loop(self):
        self.sleep(30)
""" + PING + """

@Service.API.endpoint(port=0)
class Beta(Service.base):
    def loop(self):
        self.sleep(30)
""" + PING


def test_stopping_one_of_two_supervised_services_keeps_it_down_and_restart_brings_it_back(sf):
    sf.write("pair.py", PAIR)
    sf.daemon("pair", "--restart", "always", "--backoff", "0.1")
    alpha = json.loads(sf("perform", "Alpha", "ping").stdout)
    beta = json.loads(sf("perform", "Beta", "ping").stdout)

    _stopped_stays_down(sf, "Alpha", alpha)
    assert sf.row("Alpha")["state"] == "stopped"
    assert json.loads(sf("perform", "Beta", "ping").stdout) == beta

    restarted = sf("restart", "Alpha", "--timeout", "3")
    assert restarted.returncode == 0, restarted.stderr
    answer = sf("perform", "Alpha", "ping")
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout) not in (alpha, beta)


# -- the supervisor's own death --

def test_kill_9_of_the_supervisor_leaves_no_service_running_and_a_new_run_succeeds(sf):
    sf.write("pair.py", PAIR)
    sf.daemon("pair")
    rows = {row["name"]: row for row in sf.status()}
    assert set(rows) == {"Alpha", "Beta"}, rows
    supervisor = supervisor_pid(rows["Alpha"])
    assert supervisor_pid(rows["Beta"]) == supervisor
    assert any(row["name"] == f"_supervisor-{supervisor}" for row in sf.status(all_=True))
    services = [rows["Alpha"]["pid"], rows["Beta"]["pid"]]

    os.kill(supervisor, signal.SIGKILL)  # the supervisor alone, not its services' process groups
    wait_until(lambda: all(gone(pid) for pid in services + [supervisor]), timeout=5,
               message=f"services {services} gone after their supervisor was killed")

    sf.daemon("pair")
    assert len(sf.service_processes("Alpha")) == 1
    assert len(sf.service_processes("Beta")) == 1
    for name in ("Alpha", "Beta"):
        answer = sf("perform", name, "ping")
        assert answer.returncode == 0, answer.stderr
        assert json.loads(answer.stdout) not in services


# -- Ctrl+C on a foreground run --

SLEEPERS = """
import time
from servicefactory import Service

class Alpha(Service.base):
    def loop(self):
        time.sleep(30)

    def finalize(self):
        time.sleep(1.5)
        print("Alpha finalized")

class Beta(Service.base):
    def loop(self):
        time.sleep(30)

    def finalize(self):
        time.sleep(1.5)
        print("Beta finalized")
"""


def test_ctrl_c_stops_every_foreground_service_gracefully_in_parallel_and_exits_0(spawn, sf):
    proc = spawn(args=[PYTHON, "-m", "servicefactory", "run", "sleepers"], files={"sleepers.py": SLEEPERS})
    proc.wait_for(r"Alpha ready")
    proc.wait_for(r"Beta ready")

    started = time.monotonic()
    proc.signal(signal.SIGINT)
    code = proc.wait(timeout=10)
    elapsed = time.monotonic() - started

    assert code == 0, proc.output
    proc.wait_for(r"^\d\d:\d\d:\d\d Alpha\s+\| Alpha finalized$", timeout=1)
    proc.wait_for(r"^\d\d:\d\d:\d\d Beta\s+\| Beta finalized$", timeout=1)
    # in parallel: both were asked to stop before either finished finalizing (an order, which a loaded
    # machine cannot fake); one after the other would take 3 s, so 6 s is only the net
    asked = max(i for i, line in enumerate(proc.lines) if line.endswith(": shutdown requested") and "|" in line)
    done = min(i for i, line in enumerate(proc.lines) if line.endswith(" finalized"))
    assert asked < done, f"one finalize ran before the other service was asked to stop:\n{proc.output}"
    assert elapsed < 6.0, f"took {elapsed:.1f} s\n{proc.output}"
    for line in proc.lines:  # a service's output after its bar; the supervisor's own events without one
        assert re.match(r"^\d\d:\d\d:\d\d ((Alpha|Beta)\s+(\| |\[servicefactory\] )|servicefactory\s+\w)", line), \
            proc.output
    assert not sf.ours()


# -- restart policies --

CRASH_AFTER_READY = """
import os
from servicefactory import Service

{decorator}
class {name}(Service.base):
    def loop(self):
        self.sleep(0.3)
        os._exit(3)
"""


def _left_down_without_restart(sf: Cli, name: str, policy: str, watch: float = 0.0) -> None:
    """`watch`: seconds to watch for a restart that must not come (test_policy.py proves the rule)."""
    wait_until(lambda: (sf.row(name) or {}).get("state") == "failed", timeout=10, message=f"{name} failed")
    time.sleep(watch)  # a restart (0.1 s backoff) would have happened within it
    row = sf.row(name)
    assert (row["state"], row["restarts"], row["last_exit"]) == ("failed", 0, 3), row
    log = sf.log(name)
    assert log.count(f"[servicefactory] {name} ready") == 1, log
    assert f"exited with code 3; not restarting (restart={policy})" in log, log
    assert sf.service_processes(name) == []


def test_restart_no_leaves_a_crashed_service_failed(sf):
    sf.write("once.py", CRASH_AFTER_READY.format(decorator="", name="Once"))
    sf.daemon("once", "--restart", "no", "--backoff", "0.1")
    _left_down_without_restart(sf, "Once", "no", watch=1.0)


def test_a_class_policy_of_restart_no_is_honoured_without_a_restart_flag(sf):
    sf.write("polite.py", CRASH_AFTER_READY.format(decorator='@Service.policy(restart="no")', name="Polite"))
    sf.daemon("polite", "--backoff", "0.1")
    _left_down_without_restart(sf, "Polite", "no")


CLEAN_EXIT = """
from servicefactory import Service

class Quitter(Service.base):
    def loop(self):
        self.sleep(0.3)
        raise SystemExit(0)
"""


def test_restart_always_restarts_a_service_that_exits_cleanly(sf):
    sf.write("quitter.py", CLEAN_EXIT)
    sf.daemon("quitter", "--restart", "always", "--backoff", "0.1", "--max-failures", "20")
    wait_until(lambda: sf.log("Quitter").count("[servicefactory] Quitter ready") >= 2, timeout=10,
               message="Quitter started a second time")
    assert "Quitter exited with code 0; restarting in 0.1 s" in sf.log("Quitter")
    assert sf.row("Quitter")["restarts"] >= 1


# -- stop --all --

ONE = """
from servicefactory import Service

@Service.API.endpoint(port=0)
class {name}(Service.base):
    def loop(self):
        self.sleep(30)

if __name__ == "__main__":
    {name}().run()
"""


def test_stop_all_stops_every_service_and_every_supervisor(sf, spawn):
    sf.write("first.py", ONE.format(name="First"))
    sf.write("second.py", ONE.format(name="Second"))
    sf.daemon("first")
    sf.daemon("second")
    third = spawn(args=[PYTHON, "third.py"], files={"third.py": ONE.format(name="Third")})  # not supervised
    wait_until(lambda: (sf.row("Third") or {}).get("state") == "running", timeout=10, message="Third running")
    rows = sf.status(all_=True)
    supervisors = [row["pid"] for row in rows if row["name"].startswith("_supervisor-")]
    assert len(supervisors) == 2, rows
    pids = [row["pid"] for row in rows]

    result = sf("stop", "--all", "--timeout", "3")
    assert result.returncode == 0, result.stderr
    for name in ("First", "Second", "Third"):
        assert f"{name} stopped" in result.stdout, result.stdout + result.stderr + third.output
    wait_until(lambda: all(gone(pid) for pid in pids), timeout=5, message="every process gone")
    assert sf.supervisor_processes() == []
    assert sorted(p.name for p in sf.home.glob("*.pid")) == []
    assert sorted(p.name for p in sf.home.glob("*.json")) == []
    assert sf.status(all_=True) == []


# -- logs --

TICKER = """
from servicefactory import Service

class {name}(Service.base):
    def __init__(self):
        self.count = 0

    def loop(self):
        print(f"tick {{self.count:06d}} {{'{filler}' * 40}}")
        self.count += 1
        self.sleep({pause})
"""


def _ticks(text: str) -> list[int]:
    return [int(number) for number in re.findall(r"tick (\d{6}) ", text)]


def test_log_rotation_keeps_exactly_the_configured_number_of_backups(sf):
    sf.write("fast.py", TICKER.format(name="Fast", filler="x", pause=0.002))
    sf.daemon("fast", "--log-max-bytes", "2048", "--log-backups", "2")
    wait_until(lambda: (sf.home / "Fast.log.2").exists(), timeout=10, message="two rotations")
    time.sleep(1.0)  # many more rotations
    assert sf("stop", "Fast", "--timeout", "3").returncode == 0

    files = sorted(path.name for path in sf.home.glob("Fast.log*"))
    assert files == ["Fast.log", "Fast.log.1", "Fast.log.2"], files
    for name in files:
        assert (sf.home / name).stat().st_size <= 2048, name
    kept = _ticks("".join((sf.home / name).read_text() for name in ("Fast.log.2", "Fast.log.1", "Fast.log")))
    assert kept[0] > 0 and kept == list(range(kept[0], kept[0] + len(kept))), kept


def test_logs_follow_keeps_printing_across_rotations_without_losing_lines(sf, spawn):
    sf.write("steady.py", TICKER.format(name="Steady", filler="y", pause=0.08))
    sf.daemon("steady", "--log-max-bytes", "1024", "--log-backups", "2")
    wait_until(lambda: _ticks(sf.log("Steady")), timeout=5, message="a first tick")
    follower = spawn(args=[PYTHON, "-m", "servicefactory", "logs", "Steady", "-f", "-n", "0"])
    first = _ticks(follower.wait_for(r"tick \d{6}"))[0]

    # the file that held the first followed line has been rotated twice: it is now Steady.log.2 (or gone)
    wait_until(lambda: min(_ticks(_read(sf.home / "Steady.log.1")) or [-1]) > first, timeout=15,
               message="two rotations after following began")
    latest = max(_ticks(_read(sf.home / "Steady.log")) or [0])
    follower.wait_for(rf"tick {latest:06d} ", timeout=5)

    seen = _ticks(follower.output)
    assert seen == list(range(first, first + len(seen))), seen


def test_logs_follow_prints_the_history_then_every_later_line_losing_none_in_between(sf, spawn):
    sf.write("fast.py", TICKER.format(name="Fast", filler="x", pause=0.002))
    sf.daemon("fast")
    wait_until(lambda: len(_ticks(sf.log("Fast"))) >= 5, timeout=5, message="five ticks")
    follower = spawn(args=[PYTHON, "-m", "servicefactory", "logs", "Fast", "-f", "-n", "3"])
    first = _ticks(follower.wait_for(r"tick \d{6}"))[0]
    follower.wait_for(rf"tick {first + 300:06d} ", timeout=10)

    seen = _ticks(follower.output)
    missing = sorted(set(range(first, first + 300)) - set(seen))
    assert not missing, f"history ended at tick {first + 2:06d}; never printed: {missing[:20]}"
    assert seen[:300] == list(range(first, first + 300))


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


CHATTY_PAIR = """
import time
from servicefactory import Service

class Alpha(Service.base):
    def loop(self):
        print("alpha says hi")
        self.sleep(0.05)

class Beta(Service.base):
    def loop(self):
        print("beta says hi")
        self.sleep(0.05)
"""


def test_logs_without_a_name_interleaves_every_service_with_name_prefixes(sf):
    sf.write("chatty.py", CHATTY_PAIR)
    sf.daemon("chatty")
    wait_until(lambda: sf.log("Alpha").count("alpha says") >= 5 and sf.log("Beta").count("beta says") >= 5,
               timeout=5, message="both services logged")
    result = sf("logs", "-n", "12")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 12, result.stdout
    names = []
    for line in lines:
        match = re.match(r"^(Alpha|Beta) \| (\S+) ", line)
        assert match, result.stdout
        names.append((match.group(2), match.group(1)))
    assert [stamp for stamp, _ in names] == sorted(stamp for stamp, _ in names), result.stdout
    assert any(line.startswith("Alpha | ") and "alpha says hi" in line for line in lines), result.stdout
    assert any(line.startswith("Beta | ") and "beta says hi" in line for line in lines), result.stdout
    switches = sum(1 for before, after in zip(names, names[1:]) if before[1] != after[1])
    assert switches >= 2, result.stdout


PRINTER = """
import time
from servicefactory import Service

class Printer(Service.base):
    def loop(self):
        print("printed without flush")
        time.sleep(30)
"""


def test_a_print_without_flush_reaches_the_log_promptly(sf):
    sf.write("printer.py", PRINTER)
    sf.daemon("printer")
    ready = time.monotonic()
    wait_until(lambda: "printed without flush" in sf.log("Printer"), timeout=10, message="the print in the log")
    assert time.monotonic() - ready < 2.0


def test_a_crashed_services_own_children_die_with_it_and_a_chatty_grandchild_cannot_wedge_the_supervisor(sf):
    sf.write("spawner.py", """
        import os, subprocess, sys, time
        from servicefactory import Service

        @Service.policy(restart="no")
        @Service.API.endpoint(port=0)
        class Spawner(Service.base):
            def loop(self):
                if not os.path.exists("spawned"):
                    # one quiet grandchild, one that floods the shared output pipe
                    quiet = subprocess.Popen(["sleep", "1000"])
                    loud = subprocess.Popen(["yes"])
                    open("spawned", "w").write(f"{quiet.pid} {loud.pid}")
                    time.sleep(0.3)
                    os._exit(3)
                self.sleep(1)
        """)
    sf.daemon("spawner.py")
    wait_until(lambda: (sf.row("Spawner") or {}).get("state") == "failed", timeout=15,
               message="Spawner to end failed")
    pids = [int(pid) for pid in (sf.cwd / "spawned").read_text().split()]
    wait_until(lambda: not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                               for pid in pids), timeout=5, message="the grandchildren to be killed")
    started = time.monotonic()
    result = sf("status", "Spawner", "--json")
    assert time.monotonic() - started < 5 and json.loads(result.stdout)[0]["last_exit"] == 3


def test_stop_after_a_restart_still_waits_until_the_service_is_gone(sf):
    sf.write("slowstop.py", """
        import time
        from servicefactory import Service

        @Service.API.endpoint(port=0)
        class SlowStop(Service.base):
            def loop(self):
                self.sleep(1)
            def finalize(self):
                time.sleep(1.0)
        """)
    sf.daemon("slowstop.py")
    assert sf("restart", "SlowStop").returncode == 0
    started = time.monotonic()
    assert sf("stop", "SlowStop").returncode == 0
    assert time.monotonic() - started >= 0.9  # it waited for the finalize
    row = sf.row("SlowStop")
    assert row is None or row["state"] != "stopping", row
    sf.daemon("slowstop.py")  # and the name is free again at once


def test_a_shutdown_asked_through_the_api_is_not_undone_even_with_restart_always(sf):
    sf.write("always.py", """
        from servicefactory import Service

        @Service.API.endpoint(port=0)
        class Always(Service.base):
            def loop(self):
                self.sleep(1)
        """)
    sf.daemon("always.py", "--restart", "always", "--backoff", "0.1")
    assert sf("perform", "Always", "shutdown").returncode == 0
    time.sleep(1.0)  # ten backoffs' worth: a restart would have happened by now
    row = sf.row("Always")
    assert row is None or row["state"] == "stopped", row
