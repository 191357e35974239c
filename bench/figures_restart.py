"""Figure 9: a rolling restart under load. What do callers see while a service restarts?

One supervised Echo (`servicefactory run --daemon`) is restarted with `servicefactory restart`
again and again while 8 client threads call it through `servicefactory.http.client.perform`. Every
call ends one of three ways, and only the third is a defect (issue 17): it answered; it was
refused in a way that says the action did not run (`ServiceNotRunning`, of which the draining
service's 503 `ServiceUnavailable` is one: safe to retry); or its outcome is unknown
(`ProtocolError`: "may or may not have run"), which must never happen.
"""
from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

from bench import services
from bench.figures_cli import cli_session
from bench.harness import FigureResult, Row, Sizes, fmt_rate, fmt_seconds, wait_until

THREADS = 8
#: a refused caller waits this long before its next call, as a polite retry loop would
RETRY_PAUSE = 0.005


class Tally:
    """One client thread's outcomes."""

    def __init__(self) -> None:
        self.ok = self.refused = self.unavailable = self.unknown = self.other = 0
        self.samples: list[str] = []

    def note(self, exc: BaseException) -> None:
        if len(self.samples) < 3:
            self.samples.append(f"{type(exc).__name__}: {exc}")


def _caller(tally: Tally, stop: threading.Event) -> None:
    from servicefactory.http import client
    from servicefactory.errors import ProtocolError, ServiceNotRunning, ServiceUnavailable
    i = 0
    try:
        while not stop.is_set():
            i += 1
            try:
                if client.perform("Echo", "echo", i, timeout=services.CALL_TIMEOUT) != i:
                    raise ValueError("wrong answer")
                tally.ok += 1
            except ServiceUnavailable:
                tally.unavailable += 1
                time.sleep(RETRY_PAUSE)
            except ServiceNotRunning:
                tally.refused += 1
                time.sleep(RETRY_PAUSE)
            except ProtocolError as exc:
                tally.unknown += 1
                tally.note(exc)
            except Exception as exc:  # timeouts, wrong answers: counted apart, reported
                tally.other += 1
                tally.note(exc)
    finally:
        client.close_connections()


def figure_9(workdir: Path, sizes: Sizes) -> FigureResult:
    """One supervised service restarted N times (`servicefactory restart`) while 8 threads call it."""
    from servicefactory.registry.local import LocalRegistry
    restarts = 3 if sizes.smoke else 10
    pause = 0.3 if sizes.smoke else 1.0  # of steady calls between two restarts
    services.write_services_module(workdir)
    tallies = [Tally() for _ in range(THREADS)]
    stop = threading.Event()
    restart_times: list[float] = []
    with cli_session(workdir) as cli:
        cli.check("run", f"{services.MODULE_NAME}:Echo", "--daemon")
        wait_until(lambda: services.answers("Echo"), 15.0, "Echo answering")
        registry = LocalRegistry(cli.home)
        pids = {registry.lookup("Echo").pid}
        callers = [threading.Thread(target=_caller, args=(tally, stop), daemon=True) for tally in tallies]
        started = time.perf_counter()
        for caller in callers:
            caller.start()
        try:
            for _ in range(restarts):
                time.sleep(pause)
                elapsed, _ = cli.check("restart", "Echo", timeout=60.0)
                restart_times.append(elapsed)
                record = wait_until(lambda: (lambda r: r if r and r.pid not in pids else None)(registry.lookup("Echo")),
                                    15.0, "Echo registered with a new pid")
                pids.add(record.pid)
            time.sleep(pause)
        finally:
            stop.set()
            for caller in callers:
                caller.join(services.CALL_TIMEOUT + 5)
        elapsed_all = time.perf_counter() - started
    total = {key: sum(getattr(t, key) for t in tallies) for key in ("ok", "refused", "unavailable", "unknown", "other")}
    samples = [sample for tally in tallies for sample in tally.samples][:3]
    calls = sum(total.values())
    rows = [
        Row(f"calls answered ({THREADS} threads, {restarts} restarts)", f"{total['ok']:,} of {calls:,}",
            "", "", "report"),
        Row("calls refused, not run (safe to retry)",
            f"{total['refused'] + total['unavailable']:,}",
            f"{total['unavailable']:,} ended on a 503 (perform retries a 503 or a refusal once, after a "
            f"fresh lookup; these are what the retry met too)", "",
            f"report (callers pause {RETRY_PAUSE * 1000:.0f} ms after one)"),
        Row("calls failed with unknown outcome (ProtocolError)", f"{total['unknown']:,}",
            samples[0] if samples and total["unknown"] else "", "", "0", total["unknown"] == 0),
        Row("other errors (timeouts, wrong answers)", f"{total['other']:,}",
            samples[0] if samples and total["other"] and not total["unknown"] else "", "", "0", total["other"] == 0),
        Row("`servicefactory restart` until it returns", fmt_seconds(statistics.median(restart_times)),
            f"max {fmt_seconds(max(restart_times))}"),
        Row("calls/s through the restarts", fmt_rate(total["ok"] / elapsed_all)),
    ]
    return FigureResult(rows, {"threads": THREADS, "restarts": restarts, "totals": total, "samples": samples,
                               "restart_s": restart_times, "seconds": elapsed_all, "pids": sorted(pids)})
