"""A/B throughput in one process: the same echo service twice, one with a feature on and one with
it off, measured in interleaved rounds so that a shared machine's noise hits both alike.

Imported by the standalone scripts beside it (metrics.py, peercred.py), which run as
`python bench/NAME.py`: this directory is then on sys.path.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from typing import Callable, Iterator


def calls_per_cpu_second(call: Callable[[], object], seconds: float) -> float:
    """Calls per second of this process's CPU time (client and service both run here), so that
    other processes competing for the CPU barely move the figure."""
    calls = 0
    started = time.process_time()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        call()
        calls += 1
    return calls / max(1e-9, time.process_time() - started)


def interleaved(calls: dict[str, Callable[[], object]], seconds: float, rounds: int) -> dict[str, float]:
    """Medians of calls/CPU-s for `calls["on"]` and `calls["off"]`, alternating which goes first,
    and the median of the per-round cost of "on" in percent."""
    figures: dict[str, list[float]] = {"on": [], "off": []}
    ratios = []
    for round_ in range(rounds):
        order = ("on", "off") if round_ % 2 == 0 else ("off", "on")
        pair = {}
        for label in order:
            pair[label] = calls_per_cpu_second(calls[label], seconds)
            figures[label].append(pair[label])
        ratios.append(pair["on"] / pair["off"])
    return {"on": statistics.median(figures["on"]), "off": statistics.median(figures["off"]),
            "cost_percent": (1 - statistics.median(ratios)) * 100}


@contextlib.contextmanager
def echo_pair(prefix: str) -> Iterator[tuple[object, object]]:
    """Run two echo services in this process, `{prefix}On` and `{prefix}Off`; yields both services
    (the caller turns the feature off in the second)."""
    from servicefactory import Service, testing

    @Service.API.endpoint(port=0, name=f"{prefix}On")
    class On(Service.base):
        @Service.API.handle("echo")
        def echo(self, data):
            return data

    @Service.API.endpoint(port=0, name=f"{prefix}Off")
    class Off(On):
        pass

    with testing.running(On()) as on_service, testing.running(Off()) as off_service:
        yield on_service, off_service
