"""Watchdogs (issue 15): a loop stuck beyond `@Service.policy(watchdog=S)` is restarted by its
supervisor with the reason `watchdog`; a loop pacing itself with self.sleep() longer than S is not.
Where $WATCHDOG_USEC is set the service pings systemd (`WATCHDOG=1`) from its loop at half that
period, and a stuck loop stops the pings: tested with a real datagram socket standing in for systemd.
"""
from __future__ import annotations

import os
import socket
import sys
import time

from support import wait_until

STUCK = """
import os, time
from servicefactory import Service

@Service.API.endpoint(port=0)
@Service.policy(watchdog=1, restart="always")
class Stuck(Service.base):
    def loop(self):
        if os.path.exists("stick"):
            os.unlink("stick")
            print("stuck now", flush=True)
            time.sleep(3600)  # not self.sleep: a call that hangs, as a lost lock or a dead peer would
        self.sleep(5)  # longer than the watchdog: pacing with self.sleep is progress
"""


def test_a_stuck_loop_is_restarted_by_the_watchdog_and_a_slow_paced_one_is_not(sf):
    sf.write("stuck.py", STUCK)
    first = sf.start("stuck", "--backoff", "0.1")
    time.sleep(3)  # three watchdog periods of self.sleep(5): no restart
    row = sf.row("Stuck")
    assert row["pid"] == first["pid"] and row["history"] == [], row
    (sf.cwd / "stick").write_text("")
    stuck_at = time.monotonic()
    wait_until(lambda: (sf.row("Stuck") or {}).get("last_reason") == "watchdog", timeout=15,
               message="a watchdog restart")
    assert time.monotonic() - stuck_at < 8
    row = wait_until(lambda: (r := sf.row("Stuck")) and r["state"] == "running" and r["pid"] != first["pid"] and r,
                     timeout=15, message="running again")
    event = row["history"][-1]
    assert event["reason"] == "watchdog" and "(watchdog 1 s)" in event["detail"], event
    log = sf.log("Stuck")
    assert "stuck now" in log and "(reason: watchdog)" in log, log


def test_the_command_line_watchdog_applies_to_a_class_without_one(sf):
    sf.write("stuck.py", STUCK.replace("watchdog=1, ", ""))
    first = sf.start("stuck", "--backoff", "0.1", "--watchdog", "0.5")
    (sf.cwd / "stick").write_text("")
    wait_until(lambda: (sf.row("Stuck") or {}).get("last_reason") == "watchdog", timeout=15, message="restart")
    assert sf.row("Stuck")["history"][-1]["detail"].endswith("(watchdog 0.5 s)")
    assert first["pid"] != wait_until(lambda: (r := sf.row("Stuck")) and r["state"] == "running" and r["pid"],
                                      timeout=15, message="running")


ALONE = """
import os, time
from servicefactory import Service

class Alone(Service.base):
    def loop(self):
        while os.path.exists("stick"):
            time.sleep(0.05)  # stuck for as long as the file exists: no self.sleep, no return
        self.sleep(0.05)

if __name__ == "__main__":
    Alone().run()
"""


def _datagrams(sock: socket.socket, seconds: float) -> list[tuple[float, str]]:
    got = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append((time.monotonic(), sock.recv(4096).decode()))
        except socket.timeout:
            break
    return got


def test_under_systemd_the_loop_pings_the_watchdog_at_half_its_period_and_a_stuck_loop_stops(sf, spawn):
    address = f"\0servicefactory-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        script = sf.write("alone.py", ALONE)
        proc = spawn(args=[sys.executable, str(script)], env={
            "NOTIFY_SOCKET": "@" + address[1:], "WATCHDOG_USEC": "400000"})
        sock.settimeout(15)
        ready = sock.recv(4096).decode()
        assert ready.startswith("READY=1") and f"MAINPID={proc.pid}" in ready, ready
        pings = [text for _, text in _datagrams(sock, 1.0)]
        assert pings and set(pings) == {"WATCHDOG=1"}, pings
        assert 3 <= len(pings) <= 8, pings  # every 0.2 s: half of WATCHDOG_USEC
        (sf.cwd / "stick").write_text("")
        _datagrams(sock, 0.3)  # a ping already on its way
        assert _datagrams(sock, 1.0) == []  # stuck: silence, so systemd would restart it
        (sf.cwd / "stick").unlink()
        assert [text for _, text in _datagrams(sock, 0.6)][:1] == ["WATCHDOG=1"]
        proc.signal(15)
        assert proc.wait(10) == 0
        assert "STOPPING=1" in [text for _, text in _datagrams(sock, 2.0)]


def test_a_watchdog_pid_of_another_process_is_not_pinged(sf, spawn):
    address = f"\0servicefactory-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        script = sf.write("alone.py", ALONE)
        proc = spawn(args=[sys.executable, str(script)], env={
            "NOTIFY_SOCKET": "@" + address[1:], "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"})
        sock.settimeout(15)
        assert sock.recv(4096).decode().startswith("READY=1")
        assert _datagrams(sock, 0.8) == []
        proc.signal(15)
        assert proc.wait(10) == 0
