"""Measure what counting calls costs (echo with counting vs without), and what a scrape costs.

    .venv/bin/python bench/metrics.py [--seconds 0.5] [--rounds 20]

Prints calls per CPU-second with 1 client against two services of the same class in this process,
one counting as shipped and one whose counters are replaced by a no-op (the two clock reads stay),
in interleaved rounds; the cost of one Counters.record(); and, for a service in a process of its
own, its RSS before and after its first scrape and how long the first and a later scrape take.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

from ab import echo_pair, interleaved

SCRAPED = textwrap.dedent("""
    from servicefactory import Service

    @Service.API.endpoint(port=0, name="Scraped")
    class Scraped(Service.base):
        @Service.API.handle("echo")
        def echo(self, data):
            return data

    Scraped().run()
""")


class _NoCounting:
    """Counters that count nothing: the service without the cost of counting."""

    def record(self, *args: object) -> None:
        """Count nothing."""


def throughput(seconds: float, rounds: int) -> dict[str, float]:
    """Calls/CPU-s with one client through perform(), counting on vs off, interleaved rounds."""
    from servicefactory.http.client import perform

    with echo_pair("Count") as (on_service, off_service):
        off_service._servicefactory_runtime.server.app.counters = _NoCounting()  # the same app, uncounted
        for name in ("CountOn", "CountOff"):  # warm up both connections
            for number in range(200):
                perform(name, "echo", number)
        result = interleaved({"on": lambda: perform("CountOn", "echo", 1),
                              "off": lambda: perform("CountOff", "echo", 1)}, seconds, rounds)
        result["counted_calls"] = on_service._servicefactory_runtime.counters.totals()["actions"]["echo"]["calls"]
    return result


def record_cost(repeat: int = 200_000) -> float:
    """µs per Counters.record() of a call (uncontended lock, one bucket search)."""
    from servicefactory._metrics import Counters

    counters = Counters()
    started = time.perf_counter()
    for number in range(repeat):
        counters.record("echo", 200, 0.0001 * (number % 50))
    return (time.perf_counter() - started) / repeat * 1e6


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def _get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def scrape_cost(idle_seconds: float) -> dict[str, float]:
    """RSS of a fresh service process before and after its first scrape; first and later scrape times."""
    from servicefactory.http.client import resolve

    home = tempfile.mkdtemp(prefix="sf-bench-metrics-")
    env = dict(os.environ, SERVICEFACTORY_HOME=home)
    process = subprocess.Popen([sys.executable, "-c", SCRAPED], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    previous = os.environ.get("SERVICEFACTORY_HOME")
    os.environ["SERVICEFACTORY_HOME"] = home
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                port = resolve("Scraped", fresh=True)[1]
                if _get(port, "/health")[0] == 200:
                    break
            except Exception:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
            time.sleep(0.05)
        time.sleep(idle_seconds)
        before = _rss(process.pid)
        started = time.perf_counter()
        status, _ = _get(port, "/metrics")
        first = time.perf_counter() - started
        assert status == 200, status
        later = []
        for _ in range(5):
            started = time.perf_counter()
            _get(port, "/metrics")
            later.append(time.perf_counter() - started)
        time.sleep(idle_seconds)
        after = _rss(process.pid)
    finally:
        if previous is None:
            os.environ.pop("SERVICEFACTORY_HOME", None)
        else:
            os.environ["SERVICEFACTORY_HOME"] = previous
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return {"rss_before": before, "rss_after": after, "first_scrape_s": first,
            "later_scrape_s": statistics.median(later)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--idle", type=float, default=0.5, help="seconds to let a service settle before its RSS")
    parser.add_argument("--json", action="store_true", help="print one JSON object (for bench/run.py)")
    args = parser.parse_args()
    os.environ.setdefault("SERVICEFACTORY_HOME", tempfile.mkdtemp(prefix="sf-bench-metrics-"))
    measured = {"throughput": throughput(args.seconds, args.rounds), "record_us": record_cost(),
                "scrape": scrape_cost(args.idle)}
    if args.json:
        print(json.dumps(measured))
        return
    kept = measured["throughput"]
    scrape = measured["scrape"]
    print(f"perform, 1 client: counting {kept['on']:,.0f} calls/CPU-s, not counting {kept['off']:,.0f}; "
          f"cost {kept['cost_percent']:.1f} % (median of same-round ratios)")
    print(f"one Counters.record(): {measured['record_us']:.2f} µs")
    print(f"service RSS {scrape['rss_before'] / 2**20:.1f} MiB before its first scrape, "
          f"{scrape['rss_after'] / 2**20:.1f} MiB after; first scrape {scrape['first_scrape_s'] * 1000:.1f} ms, "
          f"later ones {scrape['later_scrape_s'] * 1000:.1f} ms")
    sys.stdout.flush()


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
