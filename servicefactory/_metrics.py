"""What a service counts while it runs (calls per action and status, latencies, loop iterations),
and its Prometheus exposition.

Counting happens on every call, so it is plain integers under one lock; prometheus-client, which
costs ~70 ms and ~14 MiB to import, is imported only to render a scrape of `/metrics`, so a service
that is never scraped never pays for it.
"""
from __future__ import annotations

import threading
import time
from bisect import bisect_left
from typing import Any, Callable, Iterable

#: upper bounds (seconds) of the call latency histogram: a call costs ~0.1 ms here, so the
#: library's default buckets (5 ms and up) would put nearly every call in the first one
CALL_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0)
#: upper bounds (seconds) of the loop() iteration histogram: iterations usually sleep in self.sleep()
LOOP_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
#: distinct exception types counted per action; more (a handler raising ever new classes) are "other"
MAX_ERROR_TYPES = 50


class _ActionCounts:
    """One action's counts: answers by status code, latency buckets, exceptions by type."""

    __slots__ = ("codes", "buckets", "seconds", "error_types")

    def __init__(self) -> None:
        self.codes: dict[int, int] = {}
        self.buckets = [0] * (len(CALL_BUCKETS) + 1)  # not cumulative; the last one is +Inf
        self.seconds = 0.0
        self.error_types: dict[str, int] = {}


class Counters:
    """A running service's counters: written on every call and iteration, read by `health` and scrapes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._actions: dict[str, _ActionCounts] = {}
        self._unrouted: dict[int, int] = {}  # answers to requests that reached no action (404, 403...)
        self.loop_iterations = 0
        self.loop_errors = 0
        self.loop_seconds = 0.0
        self.loop_buckets = [0] * (len(LOOP_BUCKETS) + 1)
        self.last_good: float | None = None  # time.monotonic() of the last loop() that returned
        self.started = time.monotonic()

    def record(self, action: str | None, status: int, seconds: float, error_type: str | None = None) -> None:
        """Count one answered request: to `action` (None: it reached no action) with `status`."""
        with self._lock:
            if action is None:
                self._unrouted[status] = self._unrouted.get(status, 0) + 1
                return
            counts = self._actions.get(action)
            if counts is None:
                counts = self._actions[action] = _ActionCounts()
            counts.codes[status] = counts.codes.get(status, 0) + 1
            counts.buckets[bisect_left(CALL_BUCKETS, seconds)] += 1
            counts.seconds += seconds
            if error_type is not None:
                types = counts.error_types
                if error_type not in types and len(types) >= MAX_ERROR_TYPES:
                    error_type = "other"
                types[error_type] = types.get(error_type, 0) + 1

    def iteration(self, seconds: float, ok: bool) -> None:
        """Count one loop() iteration that took `seconds` and returned (ok) or raised."""
        with self._lock:
            if ok:
                self.loop_iterations += 1
                self.last_good = time.monotonic()
            else:
                self.loop_errors += 1
            self.loop_seconds += seconds
            self.loop_buckets[bisect_left(LOOP_BUCKETS, seconds)] += 1

    def totals(self) -> dict[str, Any]:
        """Cumulative calls, errors (status >= 500), rejections (400-499) and handling seconds, in
        all and per action: what `health` answers under `counters`."""
        with self._lock:
            per_action = {name: _summary(counts.codes, counts.seconds) for name, counts in self._actions.items()}
            unrouted = _summary(self._unrouted, 0.0)
        total = {key: unrouted[key] + sum(entry[key] for entry in per_action.values())
                 for key in ("calls", "errors", "rejected")}
        total["seconds"] = round(sum(entry["seconds"] for entry in per_action.values()), 6)
        total["actions"] = per_action
        return total

    def last_good_age(self) -> float | None:
        """Seconds since the last loop() that returned; None if none has yet."""
        last = self.last_good
        return None if last is None else time.monotonic() - last

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy of everything, for the exposition."""
        with self._lock:
            return {
                "actions": {name: (dict(c.codes), list(c.buckets), c.seconds, dict(c.error_types))
                            for name, c in self._actions.items()},
                "unrouted": dict(self._unrouted),
                "loop": (self.loop_iterations, self.loop_errors, self.loop_seconds, list(self.loop_buckets)),
                "last_good": self.last_good,
            }


def _summary(codes: dict[int, int], seconds: float) -> dict[str, Any]:
    return {"calls": sum(codes.values()), "errors": sum(n for code, n in codes.items() if code >= 500),
            "rejected": sum(n for code, n in codes.items() if 400 <= code < 500), "seconds": round(seconds, 6)}


class Exposition:
    """The Prometheus text of one service's counters (plus `extra` families, e.g. the supervisor's),
    rendered by prometheus-client; built on the first scrape."""

    def __init__(self, counters: Counters, name: str, version: str,
                 extra: Callable[[], Iterable[Any]] | None = None) -> None:
        from prometheus_client import CollectorRegistry, ProcessCollector
        from prometheus_client.exposition import choose_encoder

        self.counters = counters
        self.name = name
        self.version = version
        self.extra = extra
        self._choose_encoder = choose_encoder
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)  # CPU seconds, RSS, open fds, start time (from /proc)
        self.registry.register(self)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """(body, content type) of everything as of now, in the format the scraper's `Accept` asks
        for: Prometheus text 0.0.4 by default, OpenMetrics or text 1.0 when asked."""
        encoder, content_type = self._choose_encoder(accept)
        return encoder(self.registry), content_type

    def collect(self) -> Iterable[Any]:
        """The metric families (prometheus-client's Collector protocol)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        snapshot = self.counters.snapshot()
        calls = CounterMetricFamily("servicefactory_calls", "Requests answered, by action and status code "
                                    "(action empty: the request reached no action)", labels=("action", "code"))
        errors = CounterMetricFamily("servicefactory_errors", "Handler exceptions, by action and type",
                                     labels=("action", "type"))
        duration = HistogramMetricFamily("servicefactory_call_duration_seconds",
                                         "Time to answer a call, by action", labels=("action",))
        for action, (codes, buckets, seconds, error_types) in sorted(snapshot["actions"].items()):
            for code, count in sorted(codes.items()):
                calls.add_metric((action, str(code)), count)
            for kind, count in sorted(error_types.items()):
                errors.add_metric((action, kind), count)
            duration.add_metric((action,), _cumulative(CALL_BUCKETS, buckets), seconds)
        for code, count in sorted(snapshot["unrouted"].items()):
            calls.add_metric(("", str(code)), count)
        yield calls
        yield errors
        yield duration
        iterations, loop_errors, loop_seconds, loop_buckets = snapshot["loop"]
        yield CounterMetricFamily("servicefactory_loop_iterations", "loop() iterations that returned",
                                  value=iterations)
        yield CounterMetricFamily("servicefactory_loop_errors", "loop() iterations that raised", value=loop_errors)
        loop = HistogramMetricFamily("servicefactory_loop_duration_seconds", "Time one loop() iteration took")
        loop.add_metric((), _cumulative(LOOP_BUCKETS, loop_buckets), loop_seconds)
        yield loop
        now = time.monotonic()
        last_good = snapshot["last_good"]
        yield GaugeMetricFamily("servicefactory_loop_last_good_age_seconds",
                                "Seconds since the last loop() iteration that returned (since the start "
                                "if none has)", value=now - (self.counters.started if last_good is None else last_good))
        yield GaugeMetricFamily("servicefactory_uptime_seconds", "Seconds since the service started",
                                value=now - self.counters.started)
        info = GaugeMetricFamily("servicefactory_info", "The service's name and servicefactory's version",
                                 labels=("name", "version"))
        info.add_metric((self.name, self.version), 1)
        yield info
        threads = _thread_count()
        if threads is not None:
            yield GaugeMetricFamily("process_threads", "Number of OS threads in the process", value=threads)
        if self.extra is not None:
            yield from self.extra()


def _cumulative(bounds: tuple[float, ...], buckets: list[int]) -> list[tuple[str, int]]:
    total = 0
    out = []
    for bound, count in zip((*map(_bound_text, bounds), "+Inf"), buckets):
        total += count
        out.append((bound, total))
    return out


def _bound_text(bound: float) -> str:
    from prometheus_client.utils import floatToGoString
    return floatToGoString(bound)


def _thread_count() -> int | None:
    try:
        with open("/proc/self/stat", "rb") as stat:
            # the fields after the command (which may hold spaces and parentheses): state is field 3
            fields = stat.read().rsplit(b")", 1)[1].split()
        return int(fields[17])  # field 20, num_threads
    except (OSError, IndexError, ValueError):
        return None


def supervised_families(rows: list[dict[str, Any]], states: list[str]) -> Iterable[Any]:
    """A supervisor's metric families from one row per supervised name (name, state, restarts,
    last_exit, backoff: seconds until its next start, uptime: seconds since it became ready)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    state = GaugeMetricFamily("servicefactory_supervised_state", "1 for the state each supervised service "
                              "is in, 0 for the others", labels=("service", "state"))
    restarts = CounterMetricFamily("servicefactory_supervised_restarts", "Restarts of each supervised service",
                                   labels=("service",))
    last_exit = GaugeMetricFamily("servicefactory_supervised_last_exit_code", "Exit code of the last run of each "
                                  "supervised service that exited (negative: killed by that signal)",
                                  labels=("service",))
    backoff = GaugeMetricFamily("servicefactory_supervised_backoff_seconds", "Seconds until a supervised service "
                                "waiting to be started again is started (0: not waiting)", labels=("service",))
    uptime = GaugeMetricFamily("servicefactory_supervised_uptime_seconds", "Seconds since each supervised service "
                               "became ready (0: not running)", labels=("service",))
    for row in sorted(rows, key=lambda row: row["name"]):
        name = row["name"]
        for value in states:
            state.add_metric((name, value), 1 if row["state"] == value else 0)
        restarts.add_metric((name,), row["restarts"])
        if row["last_exit"] is not None:
            last_exit.add_metric((name,), row["last_exit"])
        backoff.add_metric((name,), row["backoff"])
        uptime.add_metric((name,), row["uptime"])
    return [state, restarts, last_exit, backoff, uptime]
