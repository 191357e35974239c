"""A restart never leaves a caller guessing (issue 17): each call ran, or was refused and did not run.

4 threads call a supervised service continuously through 20 `servicefactory restart`s. The handler
writes each call's id to a file, so the test sees from outside which calls ran: an answered call
ran exactly once, a call refused as retry-safe (`ServiceNotRunning`, `ServiceUnavailable`) did not
run, and no call ends in `ProtocolError` ("may or may not have run").
"""
from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from support import wait_until
from servicefactory import ProtocolError, ServiceNotRunning
from servicefactory.http import client
from servicefactory.registry.local import LocalRegistry

THREADS = 4
RESTARTS = 20

SERVICE = '''
import os
from servicefactory import Service

RUNS = {runs!r}


@Service.API.endpoint(port=0)
class Counter(Service.base):
    def loop(self):
        self.sleep(30)

    @Service.API.handle("count")
    def count(self, data):
        # O_APPEND: each run is one whole line, whatever the other workers and instances write
        fd = os.open(RUNS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (data + "\\n").encode())
        finally:
            os.close(fd)
        return data
'''


# The server's drain answers 503 on kept connections; what still fails, a few calls per 20 restarts,
# are new connections the kernel completed in the listener's backlog, reset when the drain closes
# the listening socket: the server should accept them first (then they get 503 like the others).
@pytest.mark.timeout(300)  # 20 restarts take ~20 s; a loaded machine may take several times that
def test_calls_through_twenty_restarts_either_ran_once_or_were_refused_and_did_not_run(sf, tmp_path, sf_home):
    runs_file = tmp_path / "runs.txt"
    (tmp_path / "counter.py").write_text(SERVICE.format(runs=str(runs_file)))
    started = sf("run", "counter:Counter", "--daemon")
    assert started.returncode == 0, started.stdout + started.stderr
    registry = LocalRegistry(sf_home)
    outcomes: dict[str, str] = {}
    samples: list[str] = []
    stop = threading.Event()

    def caller(index: int) -> None:
        number = 0
        try:
            while not stop.is_set():
                number += 1
                call_id = f"{index}-{number}"
                try:
                    assert client.perform("Counter", "count", call_id, timeout=10) == call_id
                    outcomes[call_id] = "ran"
                except ServiceNotRunning:  # ServiceUnavailable too: both promise the call did not run
                    outcomes[call_id] = "refused"
                    time.sleep(0.005)
                except ProtocolError as exc:
                    outcomes[call_id] = "unknown"
                    samples.append(str(exc))
        finally:
            client.close_connections()

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(THREADS)]
    try:
        pids = {registry.lookup("Counter").pid}
        for thread in threads:
            thread.start()
        for _ in range(RESTARTS):
            time.sleep(0.15)
            restarted = sf("restart", "Counter")
            assert restarted.returncode == 0, restarted.stdout + restarted.stderr
            record = wait_until(lambda: (lambda r: r if r and r.pid not in pids and r.port else None)(
                registry.lookup("Counter")), timeout=15, message="Counter back with a new pid")
            pids.add(record.pid)
        time.sleep(0.15)
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
        sf("stop", "Counter")
    assert len(pids) == RESTARTS + 1
    ran = Counter(runs_file.read_text().split())
    tally = Counter(outcomes.values())
    assert tally["ran"] > 100, tally  # the calls did go on through the restarts
    assert [call for call, times in ran.items() if times > 1] == []  # nothing ran twice
    answered = {call for call, outcome in outcomes.items() if outcome == "ran"}
    refused = {call for call, outcome in outcomes.items() if outcome == "refused"}
    assert answered <= set(ran)  # every answer came from a run
    assert sorted(refused & set(ran)) == []  # a call refused as safe to retry did not run
    assert tally["unknown"] == 0, (tally, samples[:3])  # the server's drain: no call left in doubt
