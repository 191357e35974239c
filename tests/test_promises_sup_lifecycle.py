"""Lifecycle promises, tried from outside with real processes and real signals.

- a SIGTERM sent the moment the API port accepts is a graceful stop (issue 9, item 14);
- a stop while a service starts stops that service only, reported as such (issue 9, item 12);
- a loop that keeps raising makes the service `unhealthy`, and its supervisor restarts it (issue 9).
"""
from __future__ import annotations

import re
import signal
import socket
import subprocess
import time

from support import PYTHON, free_port, wait_until

GRACEFUL = """
import sys
from servicefactory import Service

@Service.API.endpoint(port={port})
class Quick(Service.base):
    def loop(self):
        self.sleep(0.5)

    def finalize(self):
        print("finalized", flush=True)

Quick().run()
"""


def _connect_then_sigterm(proc: subprocess.Popen, port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                proc.send_signal(signal.SIGTERM)  # the very moment the port accepts
                return
        except OSError:
            if proc.poll() is not None:
                return
    raise AssertionError("the port never accepted")


def test_sigterm_the_moment_the_port_accepts_is_graceful_every_time(tmp_path, sf_home):
    for attempt in range(6):
        port = free_port()
        script = tmp_path / f"quick{attempt}.py"
        script.write_text(GRACEFUL.format(port=port))
        proc = subprocess.Popen([PYTHON, str(script)], cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            _connect_then_sigterm(proc, port, time.monotonic() + 20)
            output, _ = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, f"attempt {attempt}: exit {proc.returncode}\n{output}"
        assert "shutdown requested" in output, f"attempt {attempt}:\n{output}"
        assert "finalized" in output, f"attempt {attempt}:\n{output}"


SLOW_PAIR = """
import time
from servicefactory import Service

@Service.API.endpoint(port=0)
class Alpha(Service.base):
    def loop(self):
        self.sleep(1)

@Service.API.endpoint(port=0)
class Beta(Service.base):
    def __init__(self):
        time.sleep(4)  # a slow start

    def loop(self):
        self.sleep(1)
"""


def test_a_stop_while_starting_stops_that_service_only_and_says_so(sf):
    sf.write("pair.py", SLOW_PAIR)
    run = subprocess.Popen([PYTHON, "-m", "servicefactory", "run", "pair", "--daemon"], cwd=sf.cwd, env=sf.env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: (sf.row("Beta") or {}).get("state") == "starting", timeout=10, message="Beta starting")
        began = time.monotonic()
        stop = sf("stop", "Beta")
        took = time.monotonic() - began
        output, _ = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert took < 3.0, f"stop took {took:.1f} s"  # no stall behind the slow start
    assert run.returncode == 0, output
    assert "Beta stopped while starting" in output, output
    assert "Alpha running" in output, output
    assert "code None" not in output + sf.log("Beta")
    assert "stopped while starting" in sf.log("Beta")
    states = {row["name"]: row["state"] for row in sf.status()}
    assert states == {"Alpha": "running", "Beta": "stopped"}, states
    assert sf("perform", "Alpha", "health").returncode == 0


FLAKY = """
import os
import re, time
from servicefactory import Service

@Service.API.endpoint(port={port})
@Service.policy(max_loop_errors=3, stop_timeout=5)
class Flaky(Service.base):
    def loop(self):
        if not os.path.exists("fixed"):
            raise ConnectionError("database unreachable")
        self.sleep(1)

    def finalize(self):
        time.sleep(1.0)  # long enough for `status` to see the unhealthy state
{main}
"""


def test_a_loop_that_keeps_raising_is_unhealthy_and_its_supervisor_restarts_it(sf):
    sf.write("flaky.py", FLAKY.format(port=0, main=""))
    sf.daemon("flaky", "--backoff", "0.1")
    first = sf.row("Flaky")["pid"]
    def unhealthy():  # one answer judged whole: by a second `status` it may have been restarted already
        answer = sf("status", "Flaky")
        return answer if re.search(r"^Flaky\s+unhealthy\b", answer.stdout, re.M) else None
    seen = wait_until(unhealthy, timeout=15, message="Flaky unhealthy in status")
    assert seen.returncode == 3, seen.stdout
    (sf.cwd / "fixed").write_text("")
    wait_until(lambda: (sf.row("Flaky") or {}).get("state") == "running" and sf.row("Flaky")["pid"] != first,
               timeout=15, message="Flaky restarted and running")
    row = sf.row("Flaky")
    assert row["restarts"] >= 1, row
    log = sf.log("Flaky")
    assert "[servicefactory] Flaky unhealthy: 3 loop errors in a row" in log, log
    assert "stopped as unhealthy (exited with code 0); restarting in" in log, log


def test_health_reports_unhealthy_after_max_loop_errors_in_a_row(tmp_path, sf_home):
    from servicefactory.http import client

    port = free_port()
    (tmp_path / "flaky.py").write_text(FLAKY.format(port=port, main="Flaky().run()"))
    proc = subprocess.Popen([PYTHON, "flaky.py"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        health = wait_until(lambda: _health(client, port, "unhealthy"), timeout=15, message="health says unhealthy")
        assert health["errors"] >= 3 and "database unreachable" in health["last_error"], health
        (tmp_path / "fixed").write_text("")  # it recovers by itself: healthy again
        wait_until(lambda: _health(client, port, "running"), timeout=15, message="health says running again")
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def _health(client, port: int, state: str):
    try:
        answer = client.perform("Flaky", "health", fallback=("127.0.0.1", port), timeout=2)
    except Exception:
        return None
    return answer if answer["state"] == state else None
