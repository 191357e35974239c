"""Lifecycle promises, tried from outside with real processes and real signals.

- a SIGTERM sent the moment the API port accepts is a graceful stop (issue 9, item 14);
- a stop while a service starts stops that service only, reported as such (issue 9, item 12);
- a loop that keeps raising makes the service `unhealthy`, and its supervisor restarts it (issue 9).
"""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import time

from conftest import PYTHON, free_port, wait_until
from test_supervisor import SF, gone, sf  # noqa: F401  (sf is a fixture)

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
