"""What a live view shows: `status` rows plus the rates between two samples (CPU %, calls/s, errors/s).

Both views (top and the dashboard) read the registry the way `servicefactory status` does; only the
rates need memory of the previous sample, kept per (name, pid) so that a restart starts afresh.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from servicefactory.registry.base import Registry

#: the columns of `top` and of the dashboard's table, in order
COLUMNS = ("NAME", "STATE", "PID", "CPU%", "MEMORY", "CALLS/S", "ERR/S", "RESTARTS", "UPTIME", "URL")


class Sampler:
    """Rows of every service, each with `cpu_percent`, `calls_per_s` and `errors_per_s` (None until
    two samples of the same process exist, or when the service does not count calls)."""

    def __init__(self, registry: Registry, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.clock = clock
        self.previous: dict[tuple[str, Any], tuple[float, dict]] = {}

    def sample(self) -> list[dict[str, Any]]:
        """Read every service's row now; the rates are since the previous call."""
        from servicefactory.supervise import control

        rows = control.status([], self.registry)
        return self.rates(rows, self.clock())

    def rates(self, rows: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
        """Add the per-second rates to `rows`, measured against the previous rows of the same processes."""
        seen: dict[tuple[str, Any], tuple[float, dict]] = {}
        for row in rows:
            key = (row["name"], row.get("pid"))
            before = self.previous.get(key) if row.get("pid") else None
            row["cpu_percent"] = _rate(before, row, now, "cpu", 100.0)
            row["calls_per_s"] = _rate(before, row, now, "calls")
            row["errors_per_s"] = _rate(before, row, now, "call_errors")
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
