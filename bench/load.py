"""Client threads calling a server as fast as they can, each call timed; interleaved rounds."""
from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from bench.harness import percentile

#: make_client() runs in the client thread and returns (call, close); call(i) raises on a wrong answer
ClientFactory = Callable[[], "tuple[Callable[[int], None], Callable[[], None]]"]


@dataclass
class Measurement:
    """The calls of one burst: every latency, the errors, the wall time."""

    threads: int
    calls: int = 0
    errors: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.calls / self.elapsed if self.elapsed else 0.0

    def summary(self) -> dict:
        return {"threads": self.threads, "calls": self.calls, "errors": self.errors,
                "elapsed_s": self.elapsed, "calls_per_s": self.rate,
                "p50_s": percentile(self.latencies, 50), "p99_s": percentile(self.latencies, 99),
                "max_s": max(self.latencies, default=float("nan")), "error_samples": self.error_samples}


def burst(make_client: ClientFactory, threads: int, seconds: float, max_calls: int, warmup: int) -> Measurement:
    """`threads` clients call until `seconds` pass or each made `max_calls`; warm-up calls not counted."""
    outcomes: list[tuple | None] = [None] * threads
    window: list[float] = [0.0]

    def open_window() -> None:
        window[0] = time.perf_counter()

    barrier = threading.Barrier(threads + 1, action=open_window)

    def client(index: int) -> None:
        close = None
        try:
            call, close = make_client()
            for i in range(warmup):
                call(i)
        except Exception as exc:
            outcomes[index] = ("setup", f"{type(exc).__name__}: {exc}")
            barrier.abort()
            if close:
                close()
            return
        try:
            barrier.wait(timeout=60)
        except threading.BrokenBarrierError:
            close()
            return
        deadline = window[0] + seconds
        clock = time.perf_counter
        latencies: list[float] = []
        errors, samples = 0, []
        finished = clock()
        try:
            for i in range(max_calls):
                started = clock()
                try:
                    call(i)
                except Exception as exc:
                    errors += 1
                    if len(samples) < 5:
                        samples.append(f"{type(exc).__name__}: {exc}")
                finished = clock()
                latencies.append(finished - started)
                if finished >= deadline:
                    break
        finally:
            close()
            outcomes[index] = ("done", latencies, errors, samples, finished)

    workers = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    try:
        barrier.wait(timeout=60)
    except threading.BrokenBarrierError:
        pass
    for worker in workers:
        worker.join(seconds + 60)
    failures = [o[1] for o in outcomes if o and o[0] == "setup"]
    if failures:
        raise RuntimeError(f"client setup failed: {failures[0]}")
    if any(o is None for o in outcomes) or any(w.is_alive() for w in workers):
        raise RuntimeError("a client thread did not finish in time")
    result = Measurement(threads)
    ends = []
    for _, latencies, errors, samples, finished in outcomes:  # type: ignore[misc]
        result.latencies.extend(latencies)
        result.calls += len(latencies)
        result.errors += errors
        result.error_samples.extend(samples[: 5 - len(result.error_samples)])
        ends.append(finished)
    result.elapsed = max(ends) - window[0]
    return result


def interleaved(systems: dict[str, ClientFactory], threads: int, rounds: int, seconds: float,
                warmup: int) -> dict[str, dict]:
    """Measure each system `rounds` times in rotating order, so drift in the machine hits all alike.

    Per system: the median of the round rates, latency percentiles over all rounds' calls.
    """
    names = list(systems)
    per_round: dict[str, list[Measurement]] = {name: [] for name in names}
    for round_index in range(rounds):
        order = names[round_index % len(names):] + names[: round_index % len(names)]
        for name in order:
            per_round[name].append(burst(systems[name], threads, seconds, 10**9, warmup))
    summary = {}
    for name, measurements in per_round.items():
        latencies = [value for m in measurements for value in m.latencies]
        summary[name] = {
            "calls_per_s": statistics.median(m.rate for m in measurements),
            "round_rates": [m.rate for m in measurements],
            "calls": sum(m.calls for m in measurements),
            "errors": sum(m.errors for m in measurements),
            "error_samples": [s for m in measurements for s in m.error_samples][:5],
            "p50_s": percentile(latencies, 50),
            "p99_s": percentile(latencies, 99),
        }
    return summary
