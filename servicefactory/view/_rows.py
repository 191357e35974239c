"""What a live view shows: `status` rows plus the rates between two samples (CPU %, calls/s, errors/s).

Both views (top and the dashboard) read the registry the way `servicefactory status` does, and ask
each running service for its `health` (whose `counters` count calls, errors and their time); only
the rates need memory of the previous sample, kept per (name, pid) so that a restart starts afresh.
The views' own `health` calls are not counted as traffic: calls of the `health` action are left out.
"""
from __future__ import annotations

import collections
import time
from typing import Any, Callable

from servicefactory.registry.base import Registry

#: the columns of `top` and of the dashboard's table, in order
COLUMNS = ("NAME", "STATE", "PID", "CPU%", "MEMORY", "CALLS/S", "ERR/S", "RESTARTS", "UPTIME", "URL")


class Sampler:
    """Rows of every service, each with `cpu_percent`, `calls_per_s` and `errors_per_s` (None until
    two samples of the same process exist, or when the service does not count calls)."""

    #: seconds one `health` call may take: a hung service shows no rates, and holds up no view
    HEALTH_TIMEOUT = 1.0
    #: samples of mean latency kept per service, for a sparkline
    HISTORY = 60

    def __init__(self, registry: Registry, clock: Callable[[], float] = time.monotonic,
                 health: bool = True) -> None:
        self.registry = registry
        self.clock = clock
        self.health = health
        self.previous: dict[tuple[str, Any], tuple[float, dict]] = {}
        self.latency: dict[str, collections.deque] = {}
        self._pool: Any = None

    def sample(self) -> list[dict[str, Any]]:
        """Read every service's row now; the rates are since the previous call."""
        from servicefactory.supervise import control

        rows = control.status([], self.registry)
        if self.health:
            self._add_health(rows)
        rows = self.rates(rows, self.clock())
        for row in rows:
            history = self.latency.setdefault(row["name"], collections.deque(maxlen=self.HISTORY))
            history.append(row.get("latency_ms"))
            row["latency_history"] = list(history)
        return rows

    def _add_health(self, rows: list[dict[str, Any]]) -> None:
        """Each running service's `health` answer (or why there is none), asked of all at once."""
        from concurrent.futures import ThreadPoolExecutor

        from servicefactory.http import client

        def ask(name: str) -> Any:
            try:
                return client.perform(name, "health", timeout=self.HEALTH_TIMEOUT, registry=self.registry)
            except Exception as exc:  # not answering, refusing us, gone meanwhile: shown, never raised
                return {"unreachable": str(exc)}

        running = [row for row in rows if row["state"] == "running" and row.get("url")]
        if not running:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="health")
        for row, answer in zip(running, self._pool.map(ask, [row["name"] for row in running])):
            row["health"] = answer if isinstance(answer, dict) else {"unreachable": f"answered {answer!r}"}
            counters = row["health"].get("counters")
            if isinstance(counters, dict):
                own = (counters.get("actions") or {}).get("health") or {}
                row["calls"] = _number(counters.get("calls")) - _number(own.get("calls"))
                row["call_errors"] = _number(counters.get("errors"))
                row["call_seconds"] = _number(counters.get("seconds")) - _number(own.get("seconds"))

    def close(self) -> None:
        """Let the health threads go."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def rates(self, rows: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
        """Add the per-second rates to `rows`, measured against the previous rows of the same processes."""
        seen: dict[tuple[str, Any], tuple[float, dict]] = {}
        for row in rows:
            key = (row["name"], row.get("pid"))
            before = self.previous.get(key) if row.get("pid") else None
            row["cpu_percent"] = _rate(before, row, now, "cpu", 100.0)
            row["calls_per_s"] = _rate(before, row, now, "calls")
            row["errors_per_s"] = _rate(before, row, now, "call_errors")
            calls, seconds = _delta(before, row, "calls"), _delta(before, row, "call_seconds")
            row["latency_ms"] = round(seconds / calls * 1000, 3) if calls and seconds is not None else None
            if row.get("pid"):
                seen[key] = (now, row)
        self.previous = seen
        return rows


def _rate(before: tuple[float, dict] | None, row: dict, now: float, field: str,
          scale: float = 1.0) -> float | None:
    if before is None or row.get(field) is None or before[1].get(field) is None:
        return None
    elapsed = now - before[0]
    if elapsed <= 0:
        return None
    return max(0.0, (row[field] - before[1][field]) / elapsed * scale)  # a counter reset is not negative


def _delta(before: tuple[float, dict] | None, row: dict, field: str) -> float | None:
    if before is None or row.get(field) is None or before[1].get(field) is None:
        return None
    return max(0.0, row[field] - before[1][field])


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def duration(seconds: float | None) -> str:
    """12s, 3m04s, 2h05m, 1d03h; '-' for None."""
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def cells(row: dict[str, Any]) -> list[str]:
    """The row as the text of each of COLUMNS."""
    def number(value: float | None, digits: int = 1) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    memory = row.get("memory")
    return [row["name"], row["state"], str(row.get("pid") or "-"), number(row.get("cpu_percent")),
            "-" if memory is None else f"{memory / 1048576:.1f}M", number(row.get("calls_per_s")),
            number(row.get("errors_per_s")), str(row.get("restarts", 0)), duration(row.get("uptime")),
            row.get("url") or "-"]
