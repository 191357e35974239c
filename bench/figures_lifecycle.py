"""Figure 15: what watch mode and the memory limit cost an idle supervisor, and how fast a save restarts.

Same run, side by side: a foreground supervisor of one service over a large source tree with
`--watch` and without; a supervisor of N services with `--max-memory` (checked every 0.5 s) and
without. And the time from a saved file to the new process answering.
"""
from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import time
from pathlib import Path

from bench.harness import PYTHON, FigureResult, Row, Sizes, fmt_seconds, wait_until
from bench.processes import environment

APP = """
from servicefactory import Service
import helper

@Service.API.endpoint(port=0)
class WatchedApp(Service.base):
    def loop(self):
        self.sleep(1)

    @Service.API.handle("version")
    def version(self, data):
        return helper.VERSION
"""


def _cli(env: dict, cwd: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "servicefactory", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _row(env: dict, cwd: Path, name: str) -> dict | None:
    result = _cli(env, cwd, "status", name, "--json")
    rows = json.loads(result.stdout) if result.stdout.strip() else []
    return rows[0] if rows and rows[0].get("state") == "running" else None


def _cpu(pid: int, seconds: float) -> float:
    import psutil

    process = psutil.Process(pid)
    before = sum(process.cpu_times()[:2])
    time.sleep(seconds)
    return (sum(process.cpu_times()[:2]) - before) / seconds * 100.0


def _foreground(env: dict, cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", "servicefactory", "run", *args], cwd=cwd, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _end(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def figure_15(workdir: Path, sizes: Sizes) -> FigureResult:
    """Idle CPU of a supervisor with --watch over a large tree vs without; save-to-answer latency;
    idle CPU with --max-memory on N services vs without."""
    tops, subs = (5, 5) if sizes.smoke else (200, 25)
    window = 0.3 if sizes.smoke else 5.0
    saves = 1 if sizes.smoke else 5
    project = workdir / "project"
    for top in range(tops):
        for sub in range(subs):
            directory = project / f"pkg{top}" / f"sub{sub}"
            directory.mkdir(parents=True)
            for index in range(4):
                (directory / f"m{index}.py").write_text("X = 1\n")
    (project / "app.py").write_text(APP)
    (project / "helper.py").write_text("VERSION = 0\n")
    directories = tops * subs

    cpu: dict[str, float] = {}
    latencies: list[float] = []
    for mode in ("plain", "watch"):  # same service, same tree, one after the other
        env = environment(workdir / f"home-{mode}")
        process = _foreground(env, project, "app", *(["--watch"] if mode == "watch" else []))
        try:
            wait_until(lambda: _row(env, project, "WatchedApp"), 60.0, "the watched app running", interval=0.25)
            time.sleep(0.2 if sizes.smoke else 1.0)  # the watcher's start-up (an inotify watch per directory)
            cpu[mode] = _cpu(process.pid, window)
            if mode == "watch":
                for version in range(1, saves + 1):
                    pid = _row(env, project, "WatchedApp")["pid"]
                    saved = time.perf_counter()
                    (project / "helper.py").write_text(f"VERSION = {version}\n")
                    wait_until(lambda: (row := _row(env, project, "WatchedApp")) and row["pid"] != pid,
                               60.0, "the restart after a save", interval=0.02)
                    latencies.append(time.perf_counter() - saved)
        finally:
            _end(process)

    fleet = 2 if sizes.smoke else 20
    (workdir / "fleet.py").write_text("from servicefactory import Service\n" + "".join(
        f"\nclass Limited{index:02d}(Service.base):\n    def loop(self):\n        self.sleep(1)\n"
        for index in range(fleet)))
    memory_cpu: dict[str, float] = {}
    for mode in ("plain", "max_memory"):
        env = environment(workdir / f"home-fleet-{mode}")
        process = _foreground(env, workdir, "fleet", *(["--max-memory", "1G"] if mode == "max_memory" else []))
        try:
            wait_until(lambda: _row(env, workdir, f"Limited{fleet - 1:02d}") and _row(env, workdir, "Limited00"),
                       60.0, "the fleet running", interval=0.25)
            time.sleep(0.1 if sizes.smoke else 0.5)
            memory_cpu[mode] = _cpu(process.pid, window)
        finally:
            _end(process)

    extra = cpu["watch"] - cpu["plain"]
    latency = statistics.median(latencies)
    memory_extra = memory_cpu["max_memory"] - memory_cpu["plain"]
    rows = [
        Row(f"idle supervisor CPU, --watch over {directories:,} directories ({directories * 4:,} files)",
            f"{cpu['watch']:.2f} %", f"without --watch {cpu['plain']:.2f} %", f"{extra:+.2f} points",
            "< +0.5 points", extra < 0.5),
        Row("a saved file until the new process answers (debounce 0.3 s included)", fmt_seconds(latency),
            f"of {len(latencies)} saves", "", "report"),
        Row(f"idle supervisor CPU, {fleet} services with --max-memory (checked every 0.5 s)",
            f"{memory_cpu['max_memory']:.2f} %", f"without {memory_cpu['plain']:.2f} %",
            f"{memory_extra:+.2f} points", "< +1 point", memory_extra < 1.0),
    ]
    return FigureResult(rows, {"directories": directories, "window_s": window, "cpu_percent": cpu,
                               "save_to_answer_s": latencies, "memory_check_cpu_percent": memory_cpu,
                               "fleet": fleet, "cpus": os.cpu_count()})
