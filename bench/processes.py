"""Child processes that are always reaped: process groups, a subreaper for daemons, timed commands."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def temporary_directory(prefix: str) -> Iterator[Path]:
    """A private (0700) directory removed afterwards; short, so unix socket paths fit."""
    with tempfile.TemporaryDirectory(prefix=prefix, dir="/tmp") as path:
        yield Path(path)


def environment(home: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment for child processes: ours, with a private servicefactory state dir."""
    env = dict(os.environ)
    env.pop("SERVICEFACTORY_TOKEN", None)
    env.pop("SERVICEFACTORY_HOME", None)  # this process may point at a figure's home for a while
    if home is not None:
        env["SERVICEFACTORY_HOME"] = str(home)
    env.update(extra)
    return env


# -- reaping: as subreaper we adopt our daemons' orphans and reap them as a good init would --

_own_children: set[int] = set()  # spawned by us: their Popen reaps them, not reap_adopted()
_spawning = [0]


@contextlib.contextmanager
def _spawning_child() -> Iterator[None]:
    """Hold off reap_adopted() until the new child's pid is known to be our own."""
    _spawning[0] += 1
    try:
        yield
    finally:
        _spawning[0] -= 1
    reap_adopted()


def reap_adopted(*_: Any) -> None:
    """Reap exited processes we adopted as subreaper (SIGCHLD handler; main thread only).

    A process that `servicefactory stop` waits for is gone only once reaped; pid 1 in a
    container may take a second to do it, which would be charged to servicefactory.
    """
    if _spawning[0]:
        return
    import psutil
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return
    for child in children:
        if child.pid in _own_children:
            continue
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)
        except (psutil.Error, ChildProcessError):
            pass


class Spawned:
    """A child process in its own process group, its output in a log file; reaped by close()."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.log = log
        self._log_handle = open(log, "wb")
        try:
            with _spawning_child():
                self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._log_handle,
                                                stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                                start_new_session=True)
                _own_children.add(self.process.pid)
        except BaseException:
            self._log_handle.close()
            raise
        self.pid = self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self, limit: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def check_alive(self, what: str) -> None:
        if not self.alive():
            raise RuntimeError(f"{what} exited with {self.process.returncode}: {self.output()}")

    def close(self, grace: float = 3.0) -> None:
        """SIGTERM the group, SIGKILL it after `grace`, and kill any descendant that left the group."""
        try:
            descendants = _descendants(self.pid)
            _signal_group(self.pid, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(self.pid, signal.SIGKILL)
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait(5)
            _own_children.discard(self.pid)
            kill_pids(descendants)
        finally:
            self._log_handle.close()

    def __enter__(self) -> "Spawned":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _descendants(pid: int) -> list[Any]:
    import psutil
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def kill_pids(processes: list[Any], grace: float = 2.0) -> None:
    """Terminate psutil processes (that we started), then kill those still there after `grace`."""
    import psutil
    alive = []
    for process in processes:
        try:
            process.terminate()
            alive.append(process)
        except psutil.Error:
            pass
    _, still = psutil.wait_procs(alive, timeout=grace)
    for process in still:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(still, timeout=grace)


def become_subreaper() -> bool:
    """Adopt our orphaned descendants (daemons, supervisord's programs) instead of pid 1.

    Then they can be found and reaped: pid 1 in a container often reaps nothing, and a daemon
    that outlived its figure would otherwise escape the cleanup unnoticed.
    """
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
            return False
    except (OSError, AttributeError):
        return False
    signal.signal(signal.SIGCHLD, reap_adopted)
    return True


def reap_leftovers() -> list[str]:
    """Kill every process still descending from us and reap it; describe what there was."""
    import psutil
    leftovers = _descendants(os.getpid())
    described = []
    for process in leftovers:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                described.append(f"pid {process.pid} {' '.join(process.cmdline())[:120]}")
        except psutil.Error:
            pass
    kill_pids(leftovers)
    while True:  # the zombies of adopted orphans
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
    return described


def processes_using_home(home: Path) -> list[Any]:
    """Our processes whose environment names state dir `home` (unique per figure): daemons we started."""
    import psutil
    found = []
    me = os.getpid()
    for process in psutil.process_iter(["pid"]):
        if process.pid == me:
            continue
        try:
            if process.environ().get("SERVICEFACTORY_HOME") == str(home):
                found.append(process)
        except psutil.Error:
            continue
    return found


def run_timed(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
              timeout: float = 30.0) -> tuple[float, subprocess.CompletedProcess]:
    """Run a command to completion; return its wall time and result (output captured)."""
    started = time.perf_counter()
    with _spawning_child():
        process = subprocess.Popen(args, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        _own_children.add(process.pid)
    try:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
    finally:
        _own_children.discard(process.pid)
    elapsed = time.perf_counter() - started
    return elapsed, subprocess.CompletedProcess(args, process.returncode, stdout, stderr)
