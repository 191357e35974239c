"""Figures 1, 2, 6 and 8: calls through the library, memory, a long load (no CLI needed)."""
from __future__ import annotations

import time
from pathlib import Path

from bench import peers, services
from bench.harness import (MIB, PYTHON, FigureResult, Row, Sizes, fmt_mib, fmt_rate, fmt_ratio, fmt_seconds,
                           ratio, rss_bytes, wait_until)
from bench.processes import Spawned, environment
from bench.load import burst, interleaved


def _throughput(workdir: Path, sizes: Sizes, threads: int, seconds: float) -> FigureResult:
    with services.echo_service(workdir), \
            peers.pyro_server(workdir) as (_, uri), \
            peers.floor_server(workdir) as (_, port):
        from servicefactory.http import client
        echo_port = client.resolve("Echo")[1]
        systems = {"servicefactory": services.echo_client(), "pyro5": peers.pyro_client(uri),
                   "floor": peers.floor_client(port),
                   # each half of servicefactory next to the floor's: whose cost is the gap?
                   "sf_client_floor_server": services.echo_client_of(port),
                   "floor_client_sf_server": peers.floor_client(echo_port)}
        rounds = sizes.rounds if threads == 1 else sizes.multi_rounds
        measured = interleaved(systems, threads, rounds, seconds, sizes.warmup_calls)
    ours, pyro, floor = measured["servicefactory"], measured["pyro5"], measured["floor"]
    rate_ratio = ratio(ours["calls_per_s"], pyro["calls_per_s"])
    floor_ratio = ratio(ours["calls_per_s"], floor["calls_per_s"])
    # issue 10's targets, "closer to the floor": same-run ratios to Pyro5 and to the raw-socket floor
    floor_target = 0.7 if threads == 1 else 0.4
    rows = [
        Row(f"calls/s, {threads} client thread{'s' if threads > 1 else ''}", fmt_rate(ours["calls_per_s"]),
            f"Pyro5 {fmt_rate(pyro['calls_per_s'])}; floor {fmt_rate(floor['calls_per_s'])}",
            f"{fmt_ratio(rate_ratio)} Pyro5; {fmt_ratio(floor_ratio)} floor",
            f">= 1.50x Pyro5; >= {floor_target:.2f}x floor", rate_ratio >= 1.5 and floor_ratio >= floor_target),
    ]
    halves = [(measured["sf_client_floor_server"], "servicefactory's client, the floor's server"),
              (measured["floor_client_sf_server"], "the floor's client, servicefactory's server")]
    for half, label in halves:
        rows.append(Row(f"split: {label}", fmt_rate(half["calls_per_s"]), f"floor {fmt_rate(floor['calls_per_s'])}",
                        f"{fmt_ratio(ratio(half['calls_per_s'], floor['calls_per_s']))} floor", "diagnostic"))
    for label in ("p50", "p99"):
        key = f"{label}_s"
        rows.append(Row(f"{label} latency", fmt_seconds(ours[key]),
                        f"Pyro5 {fmt_seconds(pyro[key])}; floor {fmt_seconds(floor[key])}",
                        f"{fmt_ratio(ratio(ours[key], pyro[key]))} Pyro5"))
    errors = {name: m["errors"] for name, m in measured.items()}
    if any(errors.values()):
        rows.append(Row("errors", str(errors["servicefactory"]),
                        f"Pyro5 {errors['pyro5']}; floor {errors['floor']}", "", "0", errors["servicefactory"] == 0))
    ratios = [ratio(a, b) for a, b in zip(ours["round_rates"], pyro["round_rates"])]
    return FigureResult(rows, {"threads": threads, "seconds_per_round": seconds, "rounds": rounds,
                               "systems": measured, "ratio_to_pyro5": rate_ratio,
                               "ratio_to_pyro5_per_round": ratios,
                               "ratio_to_floor": floor_ratio, "floor_target": floor_target})


def figure_1(workdir: Path, sizes: Sizes) -> FigureResult:
    """perform() round trip, one client thread, vs Pyro5 and a loopback floor."""
    return _throughput(workdir, sizes, 1, sizes.single_seconds)


def figure_2(workdir: Path, sizes: Sizes) -> FigureResult:
    """perform() with 8 client threads, vs Pyro5 (threaded server) and the floor."""
    return _throughput(workdir, sizes, 8, sizes.multi_seconds)


def figure_6(workdir: Path, sizes: Sizes) -> FigureResult:
    """Idle RSS of a running service, vs a bare sleeping python, supervisord and a Pyro5 daemon."""
    bare_code = "import time; time.sleep(60)"
    with services.echo_service(workdir) as service, \
            Spawned([PYTHON, "-c", bare_code], workdir / "bare.log", env=environment()) as bare, \
            peers.pyro_server(workdir) as (pyro, _), \
            peers.supervisord(workdir, autostart=True) as supervisor:
        time.sleep(sizes.idle_seconds)
        bare.check_alive("bare python")
        measured = {"servicefactory": rss_bytes(service.pid), "bare_python": rss_bytes(bare.pid),
                    "supervisord": rss_bytes(supervisor.pid), "pyro5_daemon": rss_bytes(pyro.pid)}
    ours = measured["servicefactory"]
    row = Row("idle RSS (VmRSS)", fmt_mib(ours),
              f"bare python {fmt_mib(measured['bare_python'])}; supervisord {fmt_mib(measured['supervisord'])}; "
              f"Pyro5 daemon {fmt_mib(measured['pyro5_daemon'])}",
              f"{fmt_ratio(ratio(ours, measured['bare_python']))} bare python", "<= 20 MiB", ours <= 20 * MIB)
    return FigureResult([row], {"rss_bytes": measured, "idle_seconds": sizes.idle_seconds})


def figure_8(workdir: Path, sizes: Sizes) -> FigureResult:
    """8 clients x N performs: errors, calls/s, p99, and the drift of the service loop's pace."""
    from servicefactory.http import client
    threads = 8
    cap_seconds = 20.0 if sizes.smoke else 150.0
    with services.echo_service(workdir) as service:
        wait_until(lambda: client.perform("Echo", "ticks", timeout=services.CALL_TIMEOUT)["count"] >= 2,
                   10.0, "Echo's loop ticking")
        idle_seconds = 0.3 if sizes.smoke else 1.0
        idle = _ticks_over(lambda: time.sleep(idle_seconds))
        rss_before = rss_bytes(service.pid)
        measurement = None

        def load() -> None:
            nonlocal measurement
            measurement = burst(services.echo_client(), threads, cap_seconds, sizes.load_calls, warmup=0)

        loaded = _ticks_over(load)
        rss_after = rss_bytes(service.pid)
        health = client.perform("Echo", "health", timeout=services.CALL_TIMEOUT)
    assert measurement is not None
    summary = measurement.summary()
    expected_calls = threads * sizes.load_calls
    rows = [
        Row(f"errors in {threads} x {sizes.load_calls:,} performs", f"{measurement.errors} of {measurement.calls:,}",
            target="0 errors, all calls made",
            met=measurement.errors == 0 and measurement.calls == expected_calls),
        Row("calls/s under load", fmt_rate(measurement.rate)),
        Row("p99 latency under load", fmt_seconds(summary["p99_s"]), f"max {fmt_seconds(summary['max_s'])}"),
        Row(f"loop pace drift ({services.TICK_PERIOD * 1000:.0f} ms ticks)",
            f"{loaded['drift']:+.1%} ({loaded['ticks']} of {loaded['expected']:.0f} ticks)",
            f"idle {idle['drift']:+.1%}", "",
            "report (no target)"),
        Row("longest loop gap under load", fmt_seconds(loaded["max_gap"]), f"idle {fmt_seconds(idle['max_gap'])}"),
        Row("service RSS before / after load", f"{fmt_mib(rss_before)} / {fmt_mib(rss_after)}"),
    ]
    return FigureResult(rows, {"load": summary, "expected_calls": expected_calls, "pace_idle": idle,
                               "pace_under_load": loaded, "rss_before_bytes": rss_before,
                               "rss_after_bytes": rss_after, "health_after": health})


def _ticks_over(activity) -> dict:
    """Run `activity` and count Echo's loop ticks meanwhile, against the count its pace promises.

    A negative drift means the loop fell behind its pace (fewer ticks than promised).
    """
    from servicefactory.http import client
    before = client.perform("Echo", "ticks", timeout=services.CALL_TIMEOUT)
    activity()
    after = client.perform("Echo", "ticks", timeout=services.CALL_TIMEOUT)
    # ticks between the last tick before and the last tick after: no rounding to whole ticks
    ticks = after["count"] - before["count"]
    seconds = after["last_tick"] - before["last_tick"]
    expected = seconds / services.TICK_PERIOD
    return {"ticks": ticks, "expected": expected, "drift": (ticks - expected) / expected if expected else 0.0,
            "max_gap": after["max_gap"], "seconds": seconds}
