"""`make bench` cannot rot: every figure runs at tiny sizes, next to its peers, and reports."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.bench
@pytest.mark.timeout(300)  # the smoke run takes ~30 s alone; its own subprocess deadline is 240 s
def test_the_benchmark_smoke_run_measures_every_figure(tmp_path):
    peers = Path(sys.executable).parent
    missing = [name for name in ("supervisord", "supervisorctl") if not (peers / name).exists()]
    try:
        import Pyro5  # noqa: F401
    except ImportError:
        missing.append("Pyro5")
    if missing:
        pytest.skip(f"the benchmark's peers are not installed here: {', '.join(missing)}")
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads((tmp_path / "smoke.json").read_text())
    figures = data["figures"]
    assert sorted(int(number) for number in figures) == list(range(1, 16))
    for number, figure in figures.items():
        assert figure["status"] == "ok", (number, figure.get("note"))
        assert figure["rows"], number
    assert "| figure |" in (tmp_path / "smoke.md").read_text()
