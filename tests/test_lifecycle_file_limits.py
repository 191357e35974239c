"""Limits written in servicefactory.toml (issue 15), tried from outside as an operator would: a command
with `max_memory` whose double-forked daemon (out of its process group and session) grows past the
limit is restarted with the reason `memory`, within a couple of checks (every 0.5 s), the daemon
killed with it; a Service class with `watchdog = S` whose loop hangs is restarted with the reason
`watchdog`; `status --json` has the reason, its detail and the exit in `history`.
"""
from __future__ import annotations

import time

from support import PYTHON, alive, gone, stamped, wait_until

GROWER = """
import os, time
if os.fork() == 0:
    os.setsid()  # a daemon: out of the command's group and session, re-parented when its parent exits
    if os.fork() == 0:
        open("daemon.pid", "w").write(str(os.getpid()))
        while not os.path.exists("grow"):
            time.sleep(0.05)
        ballast = bytearray(90 * 1024 * 1024)
        for i in range(0, len(ballast), 4096):
            ballast[i] = 1
        os.unlink("grow")  # once: the restarted command's daemon stays small
        open("grown", "w").close()
        time.sleep(600)
    os._exit(0)
print("started", flush=True)
while True:
    time.sleep(1)
"""

STUCK = """
import os, time
from servicefactory import Service

@Service.API.endpoint(port=0)
class Stuck(Service.base):
    def loop(self):
        if os.path.exists("hang"):
            os.unlink("hang")
            time.sleep(600)  # a call that never returns: its heartbeats stop
        self.sleep(0.05)
"""


def test_a_commands_daemon_growing_past_max_memory_restarts_it_with_reason_memory(sf):
    sf.write("grower.py", GROWER)
    sf.write("servicefactory.toml", f"""
        [settings]
        backoff = 0.1

        [services.grower]
        command = ["{PYTHON}", "grower.py"]
        ready = {{ log = "started" }}
        max_memory = "60M"
    """)
    assert sf("up").returncode == 0
    daemon = int(wait_until(lambda: (sf.cwd / "daemon.pid").exists() and (sf.cwd / "daemon.pid").read_text(),
                            message="the daemon's pid"))
    first = sf.row("grower")["pid"]
    time.sleep(1.2)  # a few checks of the small tree: under its limit, left alone
    assert sf.row("grower")["pid"] == first and not sf.row("grower")["history"]
    (sf.cwd / "grow").touch()
    wait_until(lambda: (sf.cwd / "grown").exists(), timeout=20, message="the daemon grown")
    grown = time.time()
    row = wait_until(lambda: (r := sf.row("grower")) and r["history"] and r, timeout=20, message="a restart")
    event = row["history"][-1]
    assert row["last_reason"] == "memory" and event["reason"] == "memory", row
    assert "over its limit of 60.0M" in event["detail"], event
    stopping = stamped(sf.log("grower"), r"over its limit of 60\.0M; stopping it \(reason: memory\)")[0]
    # checked every 0.5 s (PM2: every 30 s); a generous bound for a loaded machine
    assert stopping - grown < 5.0, stopping - grown
    wait_until(lambda: gone(daemon), timeout=10, message="the daemon killed with its command")
    new = wait_until(lambda: (r := sf.row("grower")) and r["state"] == "running" and r["pid"] != first and r["pid"],
                     timeout=20, message="running again")
    assert alive(new)
    assert sf("down").returncode == 0


def test_a_service_class_with_a_watchdog_in_the_file_is_restarted_when_its_loop_hangs(sf):
    sf.write("stuck.py", STUCK)
    sf.write("servicefactory.toml", """
        [settings]
        backoff = 0.1

        [services.stuck]
        target = "stuck:Stuck"
        watchdog = 1
    """)
    assert sf("up").returncode == 0
    first = sf.row("stuck")["pid"]
    time.sleep(1.5)  # a loop pacing itself is no hang
    assert sf.row("stuck")["pid"] == first and not sf.row("stuck")["history"]
    (sf.cwd / "hang").touch()
    row = wait_until(lambda: (r := sf.row("stuck")) and r["state"] == "running" and r["pid"] != first and r,
                     timeout=30, message="restarted")
    assert row["last_reason"] == "watchdog" and "watchdog 1 s" in row["history"][-1]["detail"], row
    assert sf("down").returncode == 0
    assert not sf.ours()
