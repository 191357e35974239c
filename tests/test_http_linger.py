"""A worker that answered keeps its keep-alive connection for a moment (the linger) to serve the
next request without two thread hand-offs, but never while it holds up anyone else: a request
queued with every worker busy, or a stop, ends the linger at once. A long linger makes any delay
visible: without the break, the second client and the stop would each wait the whole linger."""
from __future__ import annotations

import socket
import time

from http_support import CountingApp, serving, timed_health_call

LINGER = 3.0  # far above every bound below


def test_the_linger_serves_the_next_request_on_its_connection() -> None:
    app = CountingApp()
    with serving(app, max_workers=1, linger=LINGER) as server:
        with socket.create_connection((server.host, server.port), timeout=10) as sock:
            for _ in range(20):
                timed_health_call(sock)
    assert len(app.seen) == 20


def test_a_request_queued_with_every_worker_busy_ends_the_linger_at_once() -> None:
    app = CountingApp()
    with serving(app, max_workers=1, linger=LINGER) as server:
        with socket.create_connection((server.host, server.port), timeout=10) as first, \
                socket.create_connection((server.host, server.port), timeout=10) as second:
            timed_health_call(first)  # the only worker now lingers on `first`
            waited = timed_health_call(second)
            assert waited < 1.0, f"the second client waited {waited:.2f} s behind a linger"
            timed_health_call(first)  # and the first client is still served, through the selector
    assert len(app.seen) == 3


def test_stop_ends_the_linger_at_once() -> None:
    app = CountingApp()
    with serving(app, max_workers=1, linger=LINGER) as server:
        with socket.create_connection((server.host, server.port), timeout=10) as sock:
            timed_health_call(sock)  # the worker now lingers on this connection
            started = time.monotonic()
            server.stop(timeout=5.0)
            took = time.monotonic() - started
    assert took < 1.5, f"stop() waited {took:.2f} s for a lingering worker"
