"""What the supervisor knows about each service: its spec, the shared settings, its current process."""
from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from servicefactory.supervise._states import ServiceState, check_transition
from servicefactory.supervise.logfiles import DEFAULT_BACKUPS, DEFAULT_MAX_BYTES, RotatingLog
from servicefactory._names import connect_host, host_port

logger = logging.getLogger("servicefactory.supervise.supervisor")


@dataclass
class Spec:
    """One service to supervise."""

    name: str
    target: str
    host: str | None = None
    port: int | None = None
    restart: str = "on-failure"
    stop_timeout: float = 10.0
    log_file: str | None = None
    cwd: str | None = None  # where `run` was typed: module targets are imported from there
    backoff_max: float | None = None  # the class's policy; None: the supervisor's setting
    tls_cert: str | None = None  # run --tls-cert/--tls-key (absolute paths); else the class's endpoint(tls=)
    tls_key: str | None = None
    max_memory: int | None = None  # bytes, with its descendants: above it, restarted (reason `memory`)
    watchdog: float | None = None  # seconds its loop may go without progress, else restarted (`watchdog`)
    # from an application file (servicefactory.toml, see appfile.py); a `run` never sets these
    command: list[str] | None = None  # any program instead of a Service class (see _commands)
    env: dict[str, str] | None = None  # over the supervisor's environment: env_file, then env
    ready: dict | None = None  # a command's readiness check: {port}, {command} or {log}; None: at once
    stop_signal: str = "SIGTERM"  # what a stop sends first (SIGKILL follows after stop_timeout)
    depends_on: dict[str, str] | None = None  # name -> condition (see _dependencies)
    user: str | None = None  # run as this user (the supervisor must be root)
    instances: int | None = None  # run --instances N (or the class's policy): N processes, Test/1 ... Test/N
    instance: int | None = None  # which of those this one is (set by `expand_instances`)
    first_instance: int = 1  # run --first-instance K: they are Test/K ... Test/K+N-1 (other hosts run the rest)

    @property
    def service(self) -> str:
        """The service's name without the instance number (`Test` for `Test/2`)."""
        return self.name.partition("/")[0]


def instance_log_file(log_file: str, number: int) -> str:
    """Instance `number`'s own file for `--log-file log_file`: `app.log` -> `app@2.log`."""
    stem, dot, extension = log_file.rpartition(".")
    return f"{stem}@{number}.{extension}" if dot and "/" not in extension else f"{log_file}@{number}"


def service_log_file(log_file: str, number: int) -> str:
    """The `--log-file` that `instance_log_file` made instance `number`'s file from."""
    stem, dot, extension = log_file.rpartition(".")
    if dot and "/" not in extension and stem.endswith(f"@{number}"):
        return f"{stem[:-len(f'@{number}')]}.{extension}"
    return log_file[:-len(f"@{number}")] if log_file.endswith(f"@{number}") else log_file


def expand_instances(specs: list[Spec]) -> list[Spec]:
    """One spec per process: a spec with `instances = N` becomes N specs named Test/1 ... Test/N
    (Test/K ... from `first_instance` K)."""
    import dataclasses

    from servicefactory.registry.base import instance_id

    expanded = []
    for spec in specs:
        if spec.instances is None or spec.instance is not None:
            expanded.append(spec)
            continue
        for number in range(spec.first_instance, spec.first_instance + spec.instances):
            # one file per process: two writers would rotate each other's file away
            log_file = instance_log_file(spec.log_file, number) if spec.log_file else None
            expanded.append(dataclasses.replace(spec, name=instance_id(spec.name, number), instance=number,
                                                log_file=log_file))
    return expanded


@dataclass
class Settings:
    """Knobs shared by every service of one supervisor."""

    backoff: float = 1.0  # first restart delay; doubles per fast failure
    backoff_max: float = 60.0  # the doubling stops here
    retry_failed_after: float = 300.0  # a `failed` service is tried again after this long; 0: never
    reset_after: float = 10.0  # a run this long clears the failure count
    max_failures: int = 5  # fast failures in a row before a service is left `failed`
    ready_timeout: float = 60.0
    log_max_bytes: int = DEFAULT_MAX_BYTES
    log_backups: int = DEFAULT_BACKUPS
    foreground: bool = False
    dashboard_port: int | None = None  # serve the web dashboard (servicefactory.view) here; 0: a free port
    dashboard_host: str | None = None  # None: 127.0.0.1
    watch: bool = False  # run --watch: restart a service when a .py file under its directory changes
    watch_ignored: tuple = ()  # --watch-ignore patterns (not named as the option: `restart` passes no list)
    keep_going: bool = False  # an application (`up`): a service failing to start does not stop the others
    app_file: str | None = None  # started by `up`: the application file (absolute) a SIGHUP reads again
    app_environment: str | None = None  # and its `--env`


class Child:
    """One supervised service and its current process."""

    def __init__(self, spec: Spec, claim: Any, log: RotatingLog,
                 on_change: Callable[[Child], None] | None = None) -> None:
        self.spec = spec
        self.claim = claim
        self.log = log
        self.state = ServiceState.STOPPED  # change it only by change_state()
        self.on_change = on_change  # the supervisor's publish: every change is seen by status at once
        self.popen: subprocess.Popen | None = None
        self.pidfd: int | None = None
        self.ready_fd: int | None = None
        self.output_fd: int | None = None
        self.partial = b""
        self.ready_buffer = b""
        self.started_at = 0.0
        self.ready_at: float | None = None
        self.next_start = 0.0
        self.retry_at: float | None = None  # monotonic time a `failed` service is tried again
        self.stop_deadline: float | None = None
        self.killed = False
        self.fast_failures = 0
        self.restarts = 0
        self.last_exit: int | None = None
        self.host: str | None = None
        self.port: int | None = None
        self.tls = False  # the running process serves TLS (it said so when ready)
        self.error: str | None = None
        self.user_stopped = False
        self.unhealthy = False  # stopped by us because its loop kept failing: its exit is a crash
        self.ever_ready = False
        self.ready_wall = 0.0
        self.restart_after_stop = False
        # watch mode: dependency -> since when (monotonic) it must have started again before this one
        # starts (it restarts with its dependency, after it: the old run's readiness does not count)
        self.fresh_deps: dict[str, float] = {}
        self.exited = threading.Event()
        self.settled = threading.Event()  # ready, failed or stopped: what a restart waits for
        self.tail: list[str] = []
        self.pending_reason: Any = None  # the supervisor's own reason (a _reasons.Reason) for the stop under way
        self.pending_detail = ""
        self.history: list[dict] = []  # the last stops and restarts: time, reason, exit, detail
        self.last_beat = 0.0  # monotonic time the loop last said it progresses (or it got ready)
        self.reloadable = False  # the running process defines reload(): SIGHUP calls it
        self.reloaded = threading.Event()  # its answer to the last SIGHUP arrived
        self.reload_error: str | None = None
        self.err_fd: int | None = None  # the process's stderr, kept apart from its stdout
        self.err_partial = b""
        self.ready_check: Any = None  # a command's _commands.ReadyCheck while it starts
        self.started_once = False  # a process of it was started (what `depends_on = "started"` waits for)
        self.healthy = False  # its health action said `running` (what `healthy` waits for)
        self.health_probe_at = 0.0  # monotonic time the next health probe may be sent
        self.program_pid: int | None = None  # a command's program (its keeper is `popen`), once exec'd
        self.ready_early = False  # a command's ready check passed before its keeper said the program's pid

    @property
    def pid(self) -> int | None:
        """The service's own process: a Service class's, or a command's program (not its keeper)."""
        if self.popen is None:
            return None
        return self.program_pid if self.spec.command else self.popen.pid

    def change_state(self, new: ServiceState) -> ServiceState:
        """Move to `new` if TRANSITIONS allows it (else TransitionError), log it and publish it;
        return the old state. Set every field the record shows before calling: it is published here."""
        old = self.state
        check_transition(self.spec.name, old, new)
        self.state = new
        logger.debug("%s: %s -> %s", self.spec.name, old.value, new.value)
        if self.on_change is not None:
            self.on_change(self)
        return old


def python_command(module: str, *options: str) -> list[str]:
    """`python [options] -m module`, isolated from the working directory: it is not put first on
    sys.path, so a module planted there (`selectors.py`) cannot run in its place. Python 3.11+ has
    -P for that; before, the same is done by hand before anything is imported."""
    if sys.version_info >= (3, 11):
        return [sys.executable, *options, "-P", "-m", module]
    # the module's name stays in the command line, where `-m` would put it (process listings show it)
    code = "import sys, runpy; del sys.path[0]; runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)"
    return [sys.executable, *options, "-c", code, module]


def url_of(child: Child) -> str | None:
    """The service's API URL, or None without one."""
    if child.port is None or child.host is None:
        return None
    return f"{'https' if child.tls else 'http'}://{host_port(connect_host(child.host), child.port)}"


def stamp() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def readable(fd: int) -> bool:
    poller = select.poll()  # poll, not select: fds above 1024 are fine
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, OSError):
        pass
