"""Figure 14: what one call costs the HTTP layer, in CPU, each half next to the floor's and Pyro5's.

Throughput on a shared 2-core machine moves with whatever else runs; the CPU a call costs each
process barely does, and in a one-client loop it is what bounds the rate. So each system is driven
by one client thread for a fixed number of calls, in interleaved rounds, and we read the client
thread's CPU clock and the server process's (the sum of its threads' schedstat run time).
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from bench import peers, services
from bench.harness import FigureResult, Row, Sizes, fmt_rate, fmt_ratio, ratio


def process_cpu(pid: int) -> float:
    """CPU seconds the threads of process `pid` have run (nanosecond schedstat, not 10 ms ticks)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as handle:
                total += int(handle.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that just ended
    return total / 1e9


def _measure(make, pid: int, calls: int, warmup: int) -> dict:
    call, close = make()
    try:
        for i in range(warmup):
            call(i)
        server_before, client_before, started = process_cpu(pid), time.thread_time(), time.perf_counter()
        for i in range(calls):
            call(i)
        elapsed = time.perf_counter() - started
        client = time.thread_time() - client_before
        server = process_cpu(pid) - server_before
    finally:
        close()
    return {"client_us": client / calls * 1e6, "server_us": server / calls * 1e6, "calls_per_s": calls / elapsed}


def figure_14(workdir: Path, sizes: Sizes) -> FigureResult:
    """CPU per call of servicefactory's server and client, 1 client, vs the floor's and Pyro5's."""
    # schedstat counts nanoseconds: a few thousand calls per round measure a cost to well under 1 %
    calls = 300 if sizes.smoke else 5_000
    rounds = 1 if sizes.smoke else 5
    with services.echo_service(workdir) as service, \
            peers.pyro_server(workdir) as (pyro, uri), \
            peers.floor_server(workdir) as (floor, port):
        from servicefactory.http import client
        echo_port = client.resolve("Echo")[1]
        systems = {
            "servicefactory": (services.echo_client(), service.pid),
            "floor": (peers.floor_client(port), floor.pid),
            "pyro5": (peers.pyro_client(uri), pyro.pid),
            # each half of servicefactory against the other half of the floor
            "floor_client_sf_server": (peers.floor_client(echo_port), service.pid),
            "sf_client_floor_server": (services.echo_client_of(port), floor.pid),
        }
        names = list(systems)
        per_round: dict[str, list[dict]] = {name: [] for name in names}
        for index in range(rounds):
            for name in names[index % len(names):] + names[:index % len(names)]:
                make, pid = systems[name]
                per_round[name].append(_measure(make, pid, calls, sizes.warmup_calls))
    measured = {name: {key: statistics.median(m[key] for m in rounds_) for key in rounds_[0]}
                for name, rounds_ in per_round.items()}
    ours, floor_, pyro_ = measured["servicefactory"], measured["floor"], measured["pyro5"]
    server_alone = measured["floor_client_sf_server"]["server_us"]
    client_alone = measured["sf_client_floor_server"]["client_us"]

    def total(m: dict) -> float:
        return m["client_us"] + m["server_us"]

    # efficiency ratios: the peer's cost over ours, so that higher is better, like a rate ratio
    to_floor, to_pyro = ratio(total(floor_), total(ours)), ratio(total(pyro_), total(ours))
    rate_floor = ratio(ours["calls_per_s"], floor_["calls_per_s"])
    rate_pyro = ratio(ours["calls_per_s"], pyro_["calls_per_s"])
    rows = [
        Row("CPU per call, client + server", f"{total(ours):.1f} µs",
            f"floor {total(floor_):.1f} µs; Pyro5 {total(pyro_):.1f} µs",
            f"{fmt_ratio(to_floor)} floor; {fmt_ratio(to_pyro)} Pyro5 (their cost / ours)",
            ">= 0.70x floor; >= 1.50x Pyro5", to_floor >= 0.7 and to_pyro >= 1.5),
        Row("server CPU per call (driven by the floor's client)", f"{server_alone:.1f} µs",
            f"floor {floor_['server_us']:.1f} µs; Pyro5 {pyro_['server_us']:.1f} µs",
            f"{fmt_ratio(ratio(floor_['server_us'], server_alone))} floor", "diagnostic"),
        Row("client CPU per call (perform() against the floor's server)", f"{client_alone:.1f} µs",
            f"floor {floor_['client_us']:.1f} µs; Pyro5 {pyro_['client_us']:.1f} µs",
            f"{fmt_ratio(ratio(floor_['client_us'], client_alone))} floor", "diagnostic"),
        Row("calls/s in the same loops", fmt_rate(ours["calls_per_s"]),
            f"floor {fmt_rate(floor_['calls_per_s'])}; Pyro5 {fmt_rate(pyro_['calls_per_s'])}",
            f"{fmt_ratio(rate_floor)} floor; {fmt_ratio(rate_pyro)} Pyro5",
            ">= 0.70x floor; >= 1.50x Pyro5", rate_floor >= 0.7 and rate_pyro >= 1.5),
    ]
    return FigureResult(rows, {"calls_per_round": calls, "rounds": rounds, "systems": measured,
                               "per_round": per_round})
