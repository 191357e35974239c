"""Measure servicefactory next to its peers in one run; write bench/results/latest.{md,json}.

    .venv/bin/python bench/run.py            # the full run (under 3 minutes)
    .venv/bin/python bench/run.py --smoke    # every figure at tiny sizes (the test suite runs this)
    .venv/bin/python bench/run.py --figures 1,2,6,8

Results: bench/results/latest.{md,json} (a --smoke run writes smoke.{md,json}, so the test suite
never overwrites real figures; --out DIR writes elsewhere). SERVICEFACTORY_BENCH_CLI=PATH measures
another `servicefactory` executable than .venv/bin/servicefactory.

Exit status: 0 when every figure ran (missed targets are reported, not failures; figures whose
CLI commands do not exist yet are skipped), 1 when a figure crashed.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import figures_api, figures_cli, figures_http, figures_restart, figures_security  # noqa: E402
from bench import figures_metrics  # noqa: E402
from bench import figures_etcd  # noqa: E402
from bench import figures_lifecycle  # noqa: E402
from bench import figures_instances  # noqa: E402
from bench.harness import ROOT, FigureResult, Row, Sizes, Skipped  # noqa: E402
from bench.processes import become_subreaper, reap_leftovers, temporary_directory  # noqa: E402

FIGURES = {
    1: ("perform() round trip, 1 client thread", figures_api.figure_1),
    2: ("perform() round trip, 8 client threads", figures_api.figure_2),
    3: ("cold `servicefactory perform` process", figures_cli.figure_3),
    4: ("`servicefactory run --daemon` until ready", figures_cli.figure_4),
    5: ("`servicefactory stop` of a time.sleep(30) loop", figures_cli.figure_5),
    6: ("idle RSS of a running service", figures_api.figure_6),
    7: ("N services from one module, one supervisor", figures_cli.figure_7),
    8: ("load: 8 clients x N performs", figures_api.figure_8),
    9: ("rolling restart: one service restarted under 8 clients", figures_restart.figure_9),
    10: ("the peer check of a loopback service (who is calling)", figures_security.figure_10),
    11: ("the cost of counting calls for /metrics (echo counting vs not)", figures_metrics.figure_11),
    12: ("instances: 1 process vs 2 instances, 8 client threads", figures_instances.figure_12),
    13: ("the etcd registry vs the local one (calls, registration, status of 100)", figures_etcd.figure_13),
    14: ("HTTP layer: CPU per call, each half next to the floor's and Pyro5's", figures_http.figure_14),
    15: ("lifecycle: watch mode and the memory limit on an idle supervisor; save to restart", figures_lifecycle.figure_15),
}
COLUMNS = ("figure", "metric", "servicefactory", "peer(s)", "ratio", "target", "met?")


def run_figure(number: int, sizes: Sizes) -> tuple[FigureResult, float]:
    title, function = FIGURES[number]
    started = time.perf_counter()
    try:
        with temporary_directory(f"sfbench{number}-") as workdir:
            result = function(workdir, sizes)
    except Skipped as skipped:
        result = FigureResult(status="skipped", note=f"skipped: {skipped}")
    except Exception as exc:
        result = FigureResult(status="error", note=f"error: {type(exc).__name__}: {exc}",
                              raw={"traceback": traceback.format_exc()})
    except BaseException:  # Ctrl+C or SIGTERM: still leave nothing running
        reap_leftovers()
        raise
    leftovers = reap_leftovers()
    if leftovers:  # a process the figure started outlived it (e.g. a daemon `stop` missed)
        result.raw["leftover_processes"] = leftovers
        result.note = (result.note + "; " if result.note else "") + \
            f"killed {len(leftovers)} leftover process(es): {leftovers[0]}"
    return result, time.perf_counter() - started


def markdown(results: dict[int, tuple[FigureResult, float]], meta: dict) -> str:
    lines = [f"# servicefactory benchmark ({'smoke' if meta['smoke'] else 'full'} run)", "",
             f"{meta['date']} · commit {meta['commit']} · Python {meta['python']} · {meta['cpus']} CPUs · "
             f"load average before {meta['load_average_before']} · {meta['seconds']:.0f} s in all", "",
             "Throughput figures are medians of interleaved rounds; ratios compare numbers from this same run.",
             "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for number, (result, _) in results.items():
        label = f"{number}. {FIGURES[number][0]}"
        rows = result.rows or [Row(result.status, _first_line(result.note.partition(": ")[2], 120))]
        for index, row in enumerate(rows):
            met = "" if row.met is None else ("yes" if row.met else "**no**")
            cells = (label if index == 0 else "", row.metric, row.servicefactory, row.peers, row.ratio,
                     row.target, met)
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    notes = [f"- figure {n}: {_first_line(result.note, 600)}" for n, (result, _) in results.items() if result.note]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def _first_line(text: str, limit: int) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="every figure at tiny sizes (~20 s)")
    parser.add_argument("--figures", default=",".join(map(str, FIGURES)), help="comma-separated figure numbers")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the results (default bench/results; latest.* or smoke.*)")
    args = parser.parse_args(argv)
    chosen = [int(part) for part in args.figures.split(",") if part.strip()]
    unknown = [n for n in chosen if n not in FIGURES]
    if unknown:
        parser.error(f"no figure {unknown[0]}; choose from {sorted(FIGURES)}")
    # SIGTERM (a test runner's timeout) unwinds like Ctrl+C, so every started process is reaped
    signal.signal(signal.SIGTERM, _interrupt)
    sizes = Sizes.choose(args.smoke)
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "commit": git_commit(),
            "python": platform.python_version(), "cpus": os.cpu_count(),
            "load_average_before": " ".join(f"{x:.2f}" for x in os.getloadavg()), "smoke": args.smoke,
            "sizes": sizes.__dict__}
    become_subreaper()
    started = time.perf_counter()
    results: dict[int, tuple[FigureResult, float]] = {}
    for number in chosen:
        print(f"figure {number}: {FIGURES[number][0]} ...", file=sys.stderr, flush=True)
        results[number] = run_figure(number, sizes)
        result, seconds = results[number]
        print(f"figure {number}: {result.status} in {seconds:.1f} s {_first_line(result.note, 300)}",
              file=sys.stderr, flush=True)
    meta["seconds"] = time.perf_counter() - started
    table = markdown(results, meta)
    out = args.out or ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stem = "smoke" if args.smoke else "latest"
    (out / f"{stem}.md").write_text(table)
    document = {"meta": meta, "figures": {
        str(n): {"title": FIGURES[n][0], "status": r.status, "note": r.note, "seconds": s,
                 "rows": [row.__dict__ for row in r.rows], "raw": r.raw} for n, (r, s) in results.items()}}
    (out / f"{stem}.json").write_text(json.dumps(document, indent=1, default=str) + "\n")
    print(table)
    for number, (result, _) in results.items():
        if result.status == "error":
            print(f"figure {number} traceback:\n{result.raw.get('traceback', '')}", file=sys.stderr)
    return 1 if any(r.status == "error" for r, _ in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
