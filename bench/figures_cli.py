"""Figures 3, 4, 5 and 7: the `servicefactory` command line, next to supervisorctl.

The CLI contract measured: `servicefactory run TARGET --daemon` returns once the service is
ready (one line: name, pid, URL); `perform NAME ACTION DATA` prints the JSON result; `stop NAME`,
`stop --all`, `status`; services are found through $SERVICEFACTORY_HOME.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Iterator

from bench import peers, services
from bench.harness import (PYTHON, VENV_BIN, FigureResult, Row, Sizes, Skipped, fmt_mib, fmt_ratio,
                           fmt_seconds, ratio, wait_until)
from bench.processes import environment, kill_pids, processes_using_home, run_timed

# the CLI under test; the override lets the harness itself be checked against a stand-in
EXECUTABLE = Path(os.environ.get("SERVICEFACTORY_BENCH_CLI") or VENV_BIN / "servicefactory")


class CommandFailed(RuntimeError):
    """A CLI command exited non-zero where success was expected."""


class Cli:
    """The `servicefactory` command with a private state dir; run from the work dir (on sys.path)."""

    def __init__(self, workdir: Path) -> None:
        self.home = workdir / "home"
        self.cwd = workdir
        self.env = environment(self.home)

    def run(self, *args: str, timeout: float = 30.0) -> tuple[float, subprocess.CompletedProcess]:
        return run_timed([str(EXECUTABLE), *args], env=self.env, cwd=self.cwd, timeout=timeout)

    def check(self, *args: str, timeout: float = 30.0) -> tuple[float, str]:
        """Run a command that must succeed; return its wall time and stdout."""
        elapsed, result = self.run(*args, timeout=timeout)
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace").strip()
            if result.returncode == 2 and "No such command" in output:
                raise Skipped(f"CLI has no `{args[0]}` command yet")
            raise CommandFailed(f"`servicefactory {' '.join(args)}` exited {result.returncode}: {output[-600:]}")
        return elapsed, result.stdout.decode(errors="replace")

    def cleanup(self) -> None:
        """Stop whatever this state dir still runs: politely, then by pid."""
        try:
            self.run("stop", "--all", timeout=20.0)
        except (OSError, subprocess.SubprocessError):
            pass
        kill_pids(processes_using_home(self.home))


_availability: list[str] = []


def require_cli() -> None:
    """Raise Skipped unless `servicefactory --help` works (the CLI is being written separately)."""
    if not _availability:
        if not EXECUTABLE.exists():
            _availability.append(f"CLI not available ({EXECUTABLE} missing)")
        else:
            try:
                _, result = run_timed([str(EXECUTABLE), "--help"], timeout=20)
                last = (result.stdout + result.stderr).decode(errors="replace").strip().splitlines()[-1:]
                _availability.append("" if result.returncode == 0 else
                                     f"CLI not available (`servicefactory --help` exited {result.returncode}: "
                                     f"{last[0][:200] if last else ''})")
            except (OSError, subprocess.SubprocessError) as exc:
                _availability.append(f"CLI not available ({exc})")
    if _availability[0]:
        raise Skipped(_availability[0])


@contextlib.contextmanager
def cli_session(workdir: Path) -> Iterator[Cli]:
    require_cli()
    cli = Cli(workdir)
    try:
        with services.home_in_this_process(cli.home):
            yield cli
    finally:
        cli.cleanup()


def figure_3(workdir: Path, sizes: Sizes) -> FigureResult:
    """`servicefactory perform` as a cold process, vs `python -c pass` and `supervisorctl status`."""
    with cli_session(workdir) as cli, services.echo_service(workdir), \
            peers.supervisord(workdir, autostart=True) as supervisor:
        _, printed = cli.check("perform", "Echo", "echo", "1")
        if printed.strip() != "1":
            raise CommandFailed(f"`servicefactory perform Echo echo 1` printed {printed.strip()[:200]!r}, not 1")
        commands = {
            "python_c_pass": lambda: run_timed([PYTHON, "-c", "pass"])[0],
            "servicefactory_perform": lambda: cli.check("perform", "Echo", "echo", "1")[0],
            "supervisorctl_status": lambda: _ctl_ok(supervisor, "status"),
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        names = list(commands)
        for round_index in range(sizes.cold_runs + 1):  # the first round warms caches, not counted
            for name in names[round_index % 3:] + names[: round_index % 3]:
                elapsed = commands[name]()
                if round_index:
                    times[name].append(elapsed)
    medians = {name: statistics.median(values) for name, values in times.items()}
    base = medians["python_c_pass"]
    ours = ratio(medians["servicefactory_perform"], base)
    row = Row("cold `servicefactory perform`", fmt_seconds(medians["servicefactory_perform"]),
              f"python -c pass {fmt_seconds(base)}; supervisorctl status {fmt_seconds(medians['supervisorctl_status'])} "
              f"({fmt_ratio(ratio(medians['supervisorctl_status'], base))})",
              f"{fmt_ratio(ours)} python -c pass", "<= 3x python -c pass", ours <= 3.0)
    return FigureResult([row], {"runs": sizes.cold_runs, "median_s": medians, "times_s": times,
                                "ratio_to_python": ours})


def _ctl_ok(supervisor: peers.Supervisord, *args: str) -> float:
    elapsed, code, output = supervisor.ctl(*args)
    if code != 0:
        raise CommandFailed(f"supervisorctl {' '.join(args)} exited {code}: {output[-300:]}")
    return elapsed


def figure_4(workdir: Path, sizes: Sizes) -> FigureResult:
    """`servicefactory run --daemon` until the API answers, vs `supervisorctl start` (startsecs=1)."""
    services.write_services_module(workdir)
    target = f"{services.MODULE_NAME}:Echo"
    ours, returned, theirs, first_line = [], [], [], ""
    with cli_session(workdir) as cli, peers.supervisord(workdir, autostart=False) as supervisor:
        for round_index in range(sizes.cold_runs):
            for system in (("sf", "sv") if round_index % 2 == 0 else ("sv", "sf")):
                if system == "sf":
                    started = time.perf_counter()
                    elapsed, printed = cli.check("run", target, "--daemon")
                    wait_until(lambda: services.answers("Echo"), 10.0, "Echo answering after run --daemon",
                               interval=0.002)
                    ours.append(time.perf_counter() - started)
                    returned.append(elapsed)
                    first_line = first_line or printed.strip()
                    cli.check("stop", "Echo")
                else:
                    theirs.append(_ctl_ok(supervisor, "start", "sleeper"))
                    _ctl_ok(supervisor, "stop", "sleeper")
    ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)
    value = ratio(ours_median, theirs_median)
    row = Row("`run --daemon` until the API answers", fmt_seconds(ours_median),
              f"supervisorctl start {fmt_seconds(theirs_median)}", f"{fmt_ratio(value)} supervisorctl",
              "<= 0.3x supervisorctl start", value <= 0.3)
    return FigureResult([row], {"runs": sizes.cold_runs, "servicefactory_s": ours, "cli_returned_s": returned,
                                "supervisorctl_start_s": theirs, "ratio": value, "run_output": first_line})


def figure_5(workdir: Path, sizes: Sizes) -> FigureResult:
    """`servicefactory stop` of a loop blocked in time.sleep(30), vs `supervisorctl stop`."""
    import psutil
    from servicefactory.registry.local import LocalRegistry
    services.write_services_module(workdir)
    ours, returned, theirs = [], [], []
    with cli_session(workdir) as cli, peers.supervisord(workdir, autostart=False) as supervisor:
        registry = LocalRegistry(cli.home)
        for _ in range(sizes.cold_runs):
            cli.check("run", f"{services.MODULE_NAME}:Sleeper", "--daemon")
            record = wait_until(lambda: registry.lookup("Sleeper"), 10.0, "Sleeper registered")
            process = psutil.Process(record.pid)
            time.sleep(0.1)  # let the loop enter time.sleep(30)
            started = time.perf_counter()
            elapsed, _ = cli.check("stop", "Sleeper", timeout=60.0)
            wait_until(lambda: _gone(process), 40.0, "Sleeper's process gone", interval=0.002)
            ours.append(time.perf_counter() - started)
            returned.append(elapsed)
            _ctl_ok(supervisor, "start", "sleeper")
            theirs.append(_ctl_ok(supervisor, "stop", "sleeper"))
    ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)
    value = ratio(ours_median, theirs_median)
    row = Row("`stop` of a loop in time.sleep(30)", fmt_seconds(ours_median),
              f"supervisorctl stop {fmt_seconds(theirs_median)}", f"{fmt_ratio(value)} supervisorctl",
              "<= 1.0x supervisorctl stop", value <= 1.0)
    return FigureResult([row], {"runs": sizes.cold_runs, "servicefactory_s": ours, "cli_returned_s": returned,
                                "supervisorctl_stop_s": theirs, "ratio": value})


def _gone(process) -> bool:
    import psutil
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def figure_7(workdir: Path, sizes: Sizes) -> FigureResult:
    """N services from one module under one supervisor: start, status, the supervisor's idle cost."""
    import psutil
    from servicefactory.registry.local import LocalRegistry
    module = "sfbench_fleet"
    (workdir / f"{module}.py").write_text(services.fleet_module(sizes.fleet))
    names = [f"Fleet{i:02d}" for i in range(sizes.fleet)]
    with cli_session(workdir) as cli:
        started = time.perf_counter()
        _, result = cli.run("run", module, "--daemon", timeout=60.0)
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace").strip()
            raise Skipped(f"`servicefactory run {module} --daemon` exited {result.returncode} "
                          f"(supervisor not implemented?): {output[-300:]}")
        pending = set(names)

        def all_ready() -> bool:
            for name in sorted(pending):
                try:
                    if services.answers(name):
                        pending.discard(name)
                except Exception:
                    pass
            return not pending
        wait_until(all_ready, 60.0, f"all {sizes.fleet} services answering", interval=0.01)
        ready = time.perf_counter() - started
        status_times = [cli.check("status")[0] for _ in range(3)]
        registry = LocalRegistry(cli.home)
        records = [record for record in registry.records() if record.name in names]
        supervisors = _supervisor_pids(records, registry)
        supervisor = psutil.Process(supervisors.pop()) if len(supervisors) == 1 else None
        fleet = [psutil.Process(r.pid) for r in records]
        cpu, fleet_cpu = _cpu_percent([[supervisor] if supervisor else [], fleet], sizes.cpu_seconds)
        supervisor_rss = supervisor.memory_info().rss if supervisor else float("nan")
        fleet_rss = sum(p.memory_info().rss for p in fleet)
        stop_all, _ = cli.check("stop", "--all", timeout=60.0)
    status = statistics.median(status_times)
    rows = [
        Row(f"{sizes.fleet} services ready (`run module --daemon`)", fmt_seconds(ready), target="< 5 s", met=ready < 5.0),
        Row("`servicefactory status`", fmt_seconds(status), target="< 0.3 s", met=status < 0.3),
        Row("supervisor idle CPU", f"{cpu:.2f} %" if supervisor else "no single supervisor found",
            f"all {sizes.fleet} services {fleet_cpu:.2f} %", target="< 1 %", met=cpu < 1.0 if supervisor else False),
        Row("supervisor RSS", fmt_mib(supervisor_rss) if supervisor else "n/a",
            f"{sizes.fleet} services {fmt_mib(fleet_rss)} ({fmt_mib(fleet_rss / max(1, len(fleet)))} each)"),
        Row("`stop --all`", fmt_seconds(stop_all)),
    ]
    return FigureResult(rows, {"services": sizes.fleet, "ready_s": ready, "status_s": status_times,
                               "supervisor_pid": supervisor.pid if supervisor else None,
                               "supervisor_cpu_percent": cpu, "fleet_cpu_percent": fleet_cpu,
                               "supervisor_rss_bytes": supervisor_rss, "fleet_rss_bytes": fleet_rss,
                               "stop_all_s": stop_all, "cpu_window_s": sizes.cpu_seconds})


def _supervisor_pids(records: list, registry) -> set[int]:
    """The pids of the supervisors owning `records`: as the records name them, else their parents."""
    import psutil
    pids = set()
    for record in records:
        owner = getattr(record, "supervisor", None) or getattr(record, "supervisor_pid", None)
        if isinstance(owner, int):
            pids.add(owner)
        elif isinstance(owner, str):
            owner_record = registry.lookup(owner)
            if owner_record is not None:
                pids.add(owner_record.pid)
    if not pids:
        pids = {psutil.Process(record.pid).ppid() for record in records} - {0, 1}
    return pids


def _cpu_percent(groups: list[list], seconds: float) -> list[float]:
    """CPU used by each group of processes over the same `seconds` of wall time, in % of one core."""
    def totals() -> list[float]:
        return [sum(times.user + times.system for times in (p.cpu_times() for p in group)) for group in groups]
    before = totals()
    time.sleep(seconds)
    return [(after - start) / seconds * 100.0 for start, after in zip(before, totals())]
