"""Figure 11: what counting calls costs (echo with counting vs without), and what a scrape costs."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bench.harness import MIB, PYTHON, ROOT, FigureResult, Row, Sizes, fmt_mib, fmt_seconds
from bench.processes import environment


def figure_11(workdir: Path, sizes: Sizes) -> FigureResult:
    """perform with 1 client against the same service counting and not counting, same run; RSS and
    time of the first scrape (which imports prometheus-client)."""
    rounds, seconds = (2, 0.2) if sizes.smoke else (20, 0.5)
    env = environment(workdir / "home")
    done = subprocess.run([PYTHON, str(ROOT / "bench" / "metrics.py"), "--json", "--rounds", str(rounds),
                           "--seconds", str(seconds), "--idle", str(sizes.idle_seconds)],
                          capture_output=True, text=True, env=env, timeout=600, check=True)
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    kept = measured["throughput"]
    scrape = measured["scrape"]
    rows = [
        Row("perform, 1 client, counting vs not (calls per CPU-second)", f"{kept['on']:,.0f}",
            f"not counting {kept['off']:,.0f}", f"{kept['cost_percent']:.1f} % cost", "< 5 % cost",
            kept["cost_percent"] < 5.0),
        Row("one Counters.record() (lock, bucket search)", f"{measured['record_us']:.2f} µs", "", "", "report"),
        Row("service RSS before / after its first scrape", f"{fmt_mib(scrape['rss_before'])} / "
            f"{fmt_mib(scrape['rss_after'])}", "", "", "<= 20 MiB never scraped",
            scrape["rss_before"] <= 20 * MIB),
        Row("first scrape (imports prometheus-client) / a later one", fmt_seconds(scrape["first_scrape_s"]),
            f"later {fmt_seconds(scrape['later_scrape_s'])}", "", "report"),
    ]
    return FigureResult(rows, measured)
