"""Limits and reasons (issue 15): a service above its memory limit (with what it forked) is restarted
with the reason `memory`; every stop and restart records why (`status`, `status --json`, the log);
`stop --signal` sends that signal; a second Ctrl+C in the foreground kills at once. All from outside,
with real processes and real signals.
"""
from __future__ import annotations

import json
import re
import signal
import time

from support import alive, gone, wait_until

HOG = """
import os, time
from servicefactory import Service

@Service.API.endpoint(port=0)
@Service.policy(max_memory="{limit}", restart="always")
class Hog(Service.base):
    def loop(self):
        if os.path.exists("grow"):
            # fork workers that each take 40 MiB: no single process is over the limit, the tree is
            for _ in range(3):
                if os.fork() == 0:
                    ballast = bytearray(40 * 1024 * 1024)
                    for i in range(0, len(ballast), 4096):
                        ballast[i] = 1
                    time.sleep(600)
                    os._exit(0)
            os.unlink("grow")
        self.sleep(0.05)
"""


def _history(sf, name):
    return (sf.row(name) or {}).get("history") or []


def test_a_service_whose_forked_tree_exceeds_max_memory_is_restarted_with_reason_memory(sf):
    sf.write("hog.py", HOG.format(limit="90M"))
    first = sf.start("hog", "--backoff", "0.1")
    (sf.cwd / "grow").write_text("")
    wait_until(lambda: any(e["reason"] == "memory" for e in _history(sf, "Hog")), timeout=20,
               message="a restart for memory")
    row = wait_until(lambda: (r := sf.row("Hog")) and r["state"] == "running" and r["pid"] != first["pid"] and r,
                     timeout=20, message="running again under a new pid")
    assert row["last_reason"] == "memory", row
    event = row["history"][-1]
    assert event["reason"] == "memory" and "over its limit of 90.0M" in event["detail"], event
    log = sf.log("Hog")
    assert re.search(r"\[servicefactory\] Hog memory \d+\.\dM over its limit of 90\.0M; stopping it "
                     r"\(reason: memory\)", log), log
    assert "(reason: memory)" in log.split("stopping it (reason: memory)")[1], log  # the exit's own line
    assert gone(first["pid"])
    # the forked workers went with it: nothing of the old tree is left
    assert not [p for p in sf.service_processes("Hog") if p.pid != row["pid"]
                and p.pid not in {c.pid for c in __import__("psutil").Process(row["pid"]).children(recursive=True)}]
    table = sf("status")
    assert re.search(r"^Hog\s+running\s.*\smemory\s", table.stdout, re.M), table.stdout


def test_the_command_line_limit_wins_and_a_bad_size_is_one_line(sf):
    sf.write("hog.py", HOG.format(limit="2G"))
    bad = sf("run", "hog", "--max-memory", "lots")
    assert bad.returncode == 2 and "not a size: 'lots'" in bad.stderr and "Traceback" not in bad.stderr
    tiny = sf("run", "hog", "--max-memory", "10K")
    assert tiny.returncode == 2 and "below 1M" in tiny.stderr
    sf.start("hog", "--max-memory", "90M", "--backoff", "0.1")
    (sf.cwd / "grow").write_text("")
    wait_until(lambda: (sf.row("Hog") or {}).get("last_reason") == "memory", timeout=20, message="memory restart")


CRASHER = """
import os, sys
from servicefactory import Service

@Service.API.endpoint(port=0)
class Crasher(Service.base):
    def loop(self):
        if os.path.exists("crash"):
            os.unlink("crash")
            sys.stdout.flush()
            os._exit(3)
        if os.path.exists("segv"):
            os.unlink("segv")
            os.kill(os.getpid(), 9)
        self.sleep(0.05)
"""


def test_every_stop_and_restart_records_its_reason_and_exit(sf):
    sf.write("crasher.py", CRASHER)
    sf.start("crasher", "--backoff", "0.1")
    (sf.cwd / "crash").write_text("")
    wait_until(lambda: len(_history(sf, "Crasher")) == 1, timeout=10, message="one crash")
    (sf.cwd / "segv").write_text("")
    wait_until(lambda: len(_history(sf, "Crasher")) == 2, timeout=10, message="a second crash")
    wait_until(lambda: (sf.row("Crasher") or {}).get("state") == "running", timeout=10, message="running")
    assert sf("restart", "Crasher").returncode == 0
    result = sf("stop", "Crasher")
    assert result.returncode == 0, result.stderr
    history = sf.status("Crasher")[0]["history"]  # kept after the supervisor is gone
    assert [(e["reason"], e["exit"]) for e in history] == [("crash", 3), ("crash", -9), ("manual", 0), ("manual", 0)]
    assert history[0]["detail"] == "exited with code 3" and history[1]["detail"] == "killed by SIGKILL"
    assert all(abs(e["time"] - time.time()) < 60 for e in history)
    log = sf.log("Crasher")
    assert "exited with code 3; restarting in 0.1 s (reason: crash)" in log, log
    assert "killed by SIGKILL; restarting in" in log and log.count("(reason: manual)") == 2, log
    assert sf.status("Crasher")[0]["last_reason"] == "manual"


TRAPPER = """
import signal
from servicefactory import Service

@Service.API.endpoint(port=0)
class Trapper(Service.base):
    def loop(self):
        self.sleep(0.05)
    def finalize(self):
        print("finalized", flush=True)
"""


def test_stop_signal_sends_that_signal_and_bad_signals_are_usage_errors(sf):
    sf.write("trapper.py", TRAPPER)
    sf.start("trapper")
    result = sf("stop", "Trapper", "--signal", "int")
    assert result.returncode == 0, result.stderr
    log = sf.log("Trapper")
    assert "[servicefactory] Trapper stopping it with SIGINT" in log, log
    assert "Trapper | Trapper : shutdown requested" in log and "Trapper | finalized" in log, log
    event = sf.status("Trapper")[0]["history"][-1]
    assert event["reason"] == "manual" and event["exit"] == 0, event
    for bad, why in (("SIGNOPE", "is not a signal"), ("KILL", "cannot be a graceful stop"), ("999", "is not a signal")):
        result = sf("stop", "Trapper", "--signal", bad)
        assert result.returncode == 2 and why in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_stop_signal_reaches_a_standalone_service(sf, spawn):
    script = sf.write("alone.py", TRAPPER + "\nif __name__ == '__main__':\n    Trapper().run()\n")
    proc = spawn(args=[__import__("sys").executable, str(script)])
    wait_until(lambda: (sf.row("Trapper") or {}).get("state") == "running", timeout=15, message="registered")
    result = sf("stop", "Trapper", "--signal", "SIGINT")
    assert result.returncode == 0, result.stderr
    assert proc.wait(10) == 0
    assert "finalized" in proc.output


STUBBORN = """
import signal, time
from servicefactory import Service

@Service.API.endpoint(port=0)
@Service.policy(stop_timeout=60)
class Stubborn(Service.base):
    def loop(self):
        self.sleep(0.05)
    def finalize(self):
        print("finalizing slowly", flush=True)
        time.sleep(60)
"""


def test_a_second_ctrl_c_in_the_foreground_kills_at_once(sf):
    sf.write("stubborn.py", STUBBORN)
    proc = sf.popen("run", "stubborn")
    try:
        wait_until(lambda: (sf.row("Stubborn") or {}).get("state") == "running", timeout=15, message="running")
        pid = sf.row("Stubborn")["pid"]
        proc.send_signal(signal.SIGINT)
        wait_until(lambda: "finalizing slowly" in sf.log("Stubborn"), timeout=10, message="a slow finalize")
        assert alive(pid)  # the first Ctrl+C waits for the graceful stop (up to 60 s)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(10)
        assert time.monotonic() - started < 3
        out = proc.stdout.read()
        assert "killing it at once (a second Ctrl+C)" in out, out
        assert gone(pid)
        assert code == 0
    finally:
        proc.kill()
        proc.wait(5)
        proc.stdout.close()
        proc.stderr.close()


def test_status_json_has_last_reason_and_history_for_a_never_restarted_service(sf):
    sf.write("trapper.py", TRAPPER)
    sf.start("trapper")
    row = sf.row("Trapper")
    assert row["last_reason"] is None and row["history"] == []
    assert json.loads(sf("status", "--json").stdout)[0]["history"] == []


def test_the_detached_supervisors_own_log_is_rotated_like_a_services(sf):
    sf.write("crasher.py", CRASHER)
    sf.start("crasher", "--backoff", "0.01", "--max-failures", "1000", "--log-max-bytes", "1024",
             "--log-backups", "2")
    log = sf.home / "supervisor.log"
    for _ in range(60):  # each crash is a few lines of the supervisor's own
        (sf.cwd / "crash").write_text("")
        wait_until(lambda: not (sf.cwd / "crash").exists(), timeout=10, message="a crash")
        if log.with_name("supervisor.log.2").exists():
            break
    wait_until(lambda: log.with_name("supervisor.log.2").exists(), timeout=10, message="two rotations")
    assert not log.with_name("supervisor.log.3").exists()
    for path in (log, log.with_name("supervisor.log.1")):
        text = path.read_text()
        assert len(text.encode()) <= 1024 + 300, (path, len(text))
        assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line) for line in text.splitlines()), text
    assert "(reason: crash)" in log.read_text() + log.with_name("supervisor.log.1").read_text()
