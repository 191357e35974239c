"""What every figure shares: results, sizes, statistics, formatting, waiting, memory."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
# the venv's own interpreter and scripts: the repository's .venv, else those of the running python
VENV_BIN = ROOT / ".venv" / "bin"
if not (VENV_BIN / "python").exists():
    VENV_BIN = Path(sys.executable).parent
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
MIB = 1024 * 1024


# -- results --

@dataclass
class Row:
    """One line of the table: a metric, servicefactory's value, the peers' values, the verdict."""

    metric: str
    servicefactory: str
    peers: str = ""
    ratio: str = ""
    target: str = ""
    met: bool | None = None


@dataclass
class FigureResult:
    """What a figure function returns (status and note are filled in by the runner on failure)."""

    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"  # ok | skipped | error
    note: str = ""


class Skipped(Exception):
    """A figure cannot run here (e.g. the CLI it measures is not written yet); not a failure."""


@dataclass(frozen=True)
class Sizes:
    """How much work each figure does: the full run, or the smoke run of the test suite."""

    smoke: bool
    rounds: int  # interleaved rounds of figure 1
    multi_rounds: int  # of figure 2, noisier: 8 client threads and the servers share 2 cores
    single_seconds: float  # per round and system, figure 1
    multi_seconds: float  # per round and system, figure 2
    warmup_calls: int
    load_calls: int  # per client, figure 8
    cold_runs: int  # median of N, figures 3-5
    fleet: int  # services in figure 7
    cpu_seconds: float  # figure 7's idle CPU window
    idle_seconds: float  # before reading an idle RSS

    @classmethod
    def choose(cls, smoke: bool) -> "Sizes":
        if smoke:
            return cls(True, rounds=1, multi_rounds=1, single_seconds=0.2, multi_seconds=0.2, warmup_calls=5,
                       load_calls=100, cold_runs=1, fleet=5, cpu_seconds=0.5, idle_seconds=0.5)
        return cls(False, rounds=5, multi_rounds=7, single_seconds=1.0, multi_seconds=1.5, warmup_calls=200,
                   load_calls=10_000, cold_runs=7, fleet=50, cpu_seconds=2.0, idle_seconds=0.5)


# -- statistics and formatting --

def percentile(values: list[float], pct: float) -> float:
    """The nearest-rank percentile (pct in 0..100) of `values`; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil without floats drifting
    return ordered[int(rank) - 1]


def ratio(value: float, reference: float) -> float:
    return value / reference if reference else float("nan")


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}/s"


def fmt_seconds(value: float) -> str:
    if value != value:  # nan
        return "n/a"
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1.0:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"


def fmt_ratio(value: float) -> str:
    return "n/a" if value != value else f"{value:.2f}x"


def fmt_mib(value: float) -> str:
    return f"{value / MIB:.1f} MiB"


# -- waiting, memory --

def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> Any:
    """Call `check` until it returns something truthy (its value is returned) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception as exc:  # not ready yet; keep the last reason for the message
            last_error = exc
        else:
            if value:
                return value
        time.sleep(interval)
    reason = f" (last error: {type(last_error).__name__}: {last_error})" if last_error else ""
    raise TimeoutError(f"{what} not within {timeout:g} s{reason}")


def rss_bytes(pid: int) -> int:
    """VmRSS of process `pid`, from /proc."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
