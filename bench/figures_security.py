"""Figure 10: what the per-connection peer check (who is calling a loopback service) costs."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bench.harness import PYTHON, ROOT, FigureResult, Row, Sizes
from bench.processes import environment


def figure_10(workdir: Path, sizes: Sizes) -> FigureResult:
    """perform with 1 client against the same service with the peer check on and off, same run."""
    rounds, seconds, sockets = (2, 0.2, 200) if sizes.smoke else (20, 0.5, 2000)
    env = environment(workdir / "home")
    done = subprocess.run([PYTHON, str(ROOT / "bench" / "peercred.py"), "--json", "--rounds", str(rounds),
                           "--seconds", str(seconds), "--sockets", str(sockets)],
                          capture_output=True, text=True, env=env, timeout=600, check=True)
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    kept = measured["throughput"]["perform"]
    fresh = measured["throughput"]["fresh"]
    lookup = measured["lookups"][str(sockets)]
    rows = [
        Row("perform, 1 client, check on vs off (calls per CPU-second)", f"{kept['on']:,.0f}",
            f"check off {kept['off']:,.0f}", f"{kept['cost_percent']:.1f} % cost", "< 5 % cost",
            kept["cost_percent"] < 5.0),
        Row("a new connection per call (as curl), check on vs off", f"{fresh['on']:,.0f}",
            f"check off {fresh['off']:,.0f}", f"{fresh['cost_percent']:.1f} % cost", "report"),
        Row(f"one peer lookup with {sockets} sockets open", f"netlink {lookup['netlink']:.1f} µs",
            f"/proc/net/tcp {lookup['proc']:.1f} µs", "", "report"),
    ]
    return FigureResult(rows, measured)
