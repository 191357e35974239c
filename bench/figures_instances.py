"""Figure 12: what instances buy (issue 12). perform with 8 client threads against one service run
as 1 process and as 2 instances (`run --instances 2`), same run, interleaved rounds: a handler that
burns 1 ms of CPU (where one process's GIL is the limit) and a plain echo (where it is not).
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Callable

from bench import services
from bench.figures_cli import cli_session
from bench.harness import FigureResult, Row, Sizes, fmt_rate, fmt_ratio, ratio, wait_until
from bench.load import interleaved

THREADS = 8
#: CPU seconds the `burn` handler spends per call
BURN = 0.001
MODULE = "sfbench_instances"
SOURCE = textwrap.dedent(f'''
    import time

    from servicefactory import Service


    @Service.API.endpoint(port=0)
    class Burn(Service.base):
        @Service.API.handle("burn")
        def burn(self, data):
            until = time.thread_time() + {BURN}  # CPU time: the GIL is held throughout
            while time.thread_time() < until:
                pass
            return data

        @Service.API.handle("echo")
        def echo(self, data):
            return data
''')


def _client(name: str, action: str) -> Callable:
    def make() -> tuple[Callable[[int], None], Callable[[], None]]:
        from servicefactory.http import client

        def call(i: int) -> None:
            if client.perform(name, action, i, timeout=services.CALL_TIMEOUT) != i:
                raise ValueError("wrong answer")

        return call, client.close_connections
    return make


def figure_12(workdir: Path, sizes: Sizes) -> FigureResult:
    """8 client threads, 1 process vs 2 instances of the same service, a CPU-bound and an echo handler."""
    (workdir / f"{MODULE}.py").write_text(SOURCE)
    rounds, seconds = (1, 0.2) if sizes.smoke else (sizes.multi_rounds, sizes.multi_seconds)
    with cli_session(workdir) as cli:
        cli.check("run", f"{MODULE}:Burn", "--name", "One", "--daemon")
        cli.check("run", f"{MODULE}:Burn", "--name", "Two", "--instances", "2", "--daemon")
        for name in ("One", "Two/1", "Two/2"):
            wait_until(lambda name=name: services.answers(name), 15.0, f"{name} answering")
        measured = {}
        for action in ("burn", "echo"):
            measured[action] = interleaved({"1 process": _client("One", action),
                                            "2 instances": _client("Two", action)},
                                           THREADS, rounds, seconds, sizes.warmup_calls)
    rows = []
    ratios = {}
    for action, label, target in (("burn", f"{BURN * 1000:g} ms CPU handler", ">= 1.30x (2 cores)"),
                                  ("echo", "echo handler", "report")):
        one, two = measured[action]["1 process"], measured[action]["2 instances"]
        ratios[action] = ratio(two["calls_per_s"], one["calls_per_s"])
        rows.append(Row(f"calls/s, {THREADS} client threads, {label}: 2 instances", fmt_rate(two["calls_per_s"]),
                        f"1 process {fmt_rate(one['calls_per_s'])}", f"{fmt_ratio(ratios[action])} 1 process",
                        target, ratios[action] >= 1.3 if action == "burn" else None))
        errors = one["errors"] + two["errors"]
        if errors:
            rows.append(Row(f"errors ({label})", str(two["errors"]), f"1 process {one['errors']}", "", "0",
                            errors == 0))
    return FigureResult(rows, {"threads": THREADS, "rounds": rounds, "seconds_per_round": seconds,
                               "burn_cpu_s": BURN, "systems": measured, "ratio_two_to_one": ratios})
