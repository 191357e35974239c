"""`make bench` cannot rot: every figure runs at tiny sizes, next to its peers, and reports.

One smoke run per figure, so that xdist runs them side by side: one run of all fifteen in a row
was the suite's longest test by far (~30 s alone, minutes on a loaded machine).
"""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIGURES = range(1, 16)


def _peers_or_skip() -> None:
    peers = Path(sys.executable).parent
    missing = [name for name in ("supervisord", "supervisorctl") if not (peers / name).exists()]
    try:
        import Pyro5  # noqa: F401
    except ImportError:
        missing.append("Pyro5")
    if missing:
        pytest.skip(f"the benchmark's peers are not installed here: {', '.join(missing)}")


@pytest.mark.bench
@pytest.mark.timeout(300)  # one figure's smoke run takes seconds alone; its own subprocess deadline is 240 s
@pytest.mark.parametrize("number", FIGURES)
def test_the_benchmark_smoke_run_measures_every_figure(tmp_path, number):
    _peers_or_skip()
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--figures", str(number),
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads((tmp_path / "smoke.json").read_text())
    figures = data["figures"]
    assert sorted(int(number) for number in figures) == [number]
    figure = figures[str(number)]
    assert figure["status"] == "ok", (number, figure.get("note"))
    assert figure["rows"], number
    assert "| figure |" in (tmp_path / "smoke.md").read_text()


@pytest.mark.bench
def test_the_smoke_runs_cover_every_figure_the_benchmark_has():
    """A figure added to bench/run.py's FIGURES is smoke-tested too (read from its source: importing
    the bench would import every figure's module)."""
    tree = ast.parse((ROOT / "bench" / "run.py").read_text())
    table = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                 and any(isinstance(target, ast.Name) and target.id == "FIGURES" for target in node.targets))
    assert sorted(ast.literal_eval(key) for key in table.keys) == list(FIGURES)
