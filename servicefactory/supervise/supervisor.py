"""The supervisor: runs each service in its own process, restarts crashes with backoff, keeps logs.

It is itself a service (its API takes `stop`, `restart` and `status` from the CLI), registered as
`_supervisor-<pid>` (`_supervisor-<host>-<pid>` on a registry many hosts share). One thread does
all the child work: a selector waits on every child's exit (pidfd), readiness pipe and output pipe
at once, so 50 idle services cost no polling. API handlers hand their requests to that thread and
wait for the outcome.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import selectors
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from servicefactory.supervise import _commands, _dependencies, _notify

from servicefactory.supervise import _reaper
from servicefactory.supervise._protocol import (LIFELINE_FD_ENV, LOG_PATH_ENV, READY_FD_ENV, REUSE_PORT_ENV, STOP_TIMEOUT_ENV,
                                                SUPERVISED_ENV,
                                                SUPERVISOR_PID_ENV, WATCHDOG_ENV, Beat, Ready, Reloaded, StartFailed,
                                                StartupReport, Stopping, StopReason, Unhealthy, decode_child, to_line)
from servicefactory.supervise import _limits
from servicefactory.supervise._reasons import Reason, reason_of_exit, record as record_event
from servicefactory.api import handle
from servicefactory.errors import AlreadyRunning, ServiceFactoryError, ServiceTimeout, StateError
from servicefactory.supervise.logfiles import RotatingLog, printable
from servicefactory.supervise._policy import Exit, RestartPolicy, describe
from servicefactory.supervise._states import ACTIVE, ServiceState
from servicefactory.supervise._supervised import (Child, Settings, Spec, drain, expand_instances, python_command, readable,
                                                  service_log_file, stamp, url_of)
from servicefactory.registry.base import Registry, ServiceRecord
from servicefactory.service import ServiceBase, endpoint
from servicefactory.registry.local import process_start_time

logger = logging.getLogger("servicefactory.supervise.supervisor")  # also when run as __main__


def _api_token() -> str:
    import secrets
    return secrets.token_urlsafe(24)


@endpoint(port=0, require_token=True)
class Supervisor(ServiceBase):
    """Runs services as child processes and keeps them running by their restart policy."""

    def __init__(self, specs: list[Spec], settings: Settings | None = None, registry: Registry | None = None,
                 printer: Callable[..., None] | None = None, ready_fd: int | None = None) -> None:
        self.specs = expand_instances(specs)  # one spec per process: Test/1 ... Test/N for --instances N
        self.settings = settings or Settings()
        if registry is None:
            from servicefactory.registry.backends import default_registry
            registry = default_registry()
        self.registry = registry
        self.printer = printer
        self.ready_fd = ready_fd
        self.children: dict[str, Child] = {}
        self.selector = selectors.DefaultSelector()
        self.commands: queue.Queue = queue.Queue()
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        self.selector.register(self.wake_read, selectors.EVENT_READ, ("wake", None))
        # every child holds the read end; only we hold the write end: when we die, however, each
        # child sees end of file and ends its whole process tree (see _child)
        self.lifeline_read, self.lifeline_write = os.pipe()
        # orphans of a service that died (its double-forked or setsid'd descendants) come to us, not
        # to init: we kill them, so that nothing a service started outlives it
        _reaper.become_subreaper()
        self.starting_up = True
        self.begun = False
        # name -> (stop timeout, signal): stopped once its dependents are gone
        self.stop_pending: dict[str, tuple[float | None, int | None]] = {}
        # name -> (reason, detail): of those, the ones to start again once stopped (watch mode's restarts)
        self.restart_pending: dict[str, tuple[Reason, str]] = {}
        self.failure: dict | None = None
        self.exit_code = 0
        self.name = registry.supervisor_name(os.getpid())
        # systemd should hear READY=1 when the services are ready, not when our own API is
        self.notify_socket = os.environ.pop("NOTIFY_SOCKET", None)
        # the control API can stop everything: only who can read our secret (the owner) may call it
        self.token = _api_token()
        self.next_memory_check = 0.0
        self.changes: Any = None  # run --watch: the _watch.Debouncer of changed source files
        self.watcher: Any = None
        self.broken: dict[str, str] = {}  # changed files that do not compile: path -> error (reported once)
        self.held: set[str] = set()  # changes not acted on while some file does not compile
        self.reload_pending = False  # SIGHUP arrived: reopen the log files (done in the loop's thread)
        # SIGHUP to a supervisor started by `up`: the file is read again and applied, by one thread at a
        # time; a SIGHUP while it applies asks for one more pass once it is done (with the newest file)
        self.reread_lock = threading.Lock()
        self.reread_again = False
        self.reread_cause = "SIGHUP"
        self.reread_thread: threading.Thread | None = None
        # in a terminal SIGHUP means the terminal closed: stop, as a shell's jobs do; elsewhere, reload
        self.hangup_stops = self.settings.foreground and os.isatty(1)

    # -- claims: taken before anything starts, so a duplicate is refused up front --

    def claim_all(self) -> None:
        """Own every service name (pidfile locks); on any clash release what was taken and raise."""
        self.registry.ensure()
        try:
            for spec in self.specs:
                claim = self.registry.claim(spec.name)
                log_path = Path(spec.log_file) if spec.log_file else self.registry.log_file(spec.name)
                try:
                    log = RotatingLog(log_path, self.settings.log_max_bytes, self.settings.log_backups)
                except BaseException:
                    self.registry.release(claim)  # not a child yet: release_all would not see it
                    raise
                self.children[spec.name] = Child(spec, claim, log, on_change=self._publish)
        except (AlreadyRunning, StateError, OSError):
            self.release_all()
            raise

    def release_all(self) -> None:
        """Withdraw every record and drop every lock (how each ran was remembered when it got ready)."""
        for child in self.children.values():
            child.log.close()
            self.registry.release(child.claim)
        self.children.clear()

    # -- the loop: one select over every child's pipes and exit --

    def loop(self) -> None:
        """Wait for child events (or the next due restart) and act on them."""
        if not self.begun:
            self.begun = True
            if self.settings.watch:
                self._start_watching()
            for child in self.children.values():
                if child.spec.depends_on:
                    self._event(child, "waiting for " + ", ".join(
                        f"{name} ({condition})" for name, condition in child.spec.depends_on.items()))
                    child.change_state(ServiceState.WAITING)  # STOPPED -> WAITING
                else:
                    self._spawn(child)
        now = time.monotonic()
        due = [t for t in (RestartPolicy.due(c.state, c.next_start, c.retry_at) for c in self.children.values())
               if t is not None]
        if self.changes is not None and self.changes.next_due() is not None:
            due.append(self.changes.next_due())
        due += [t for t in (c.ready_check.due() for c in self.children.values()
                            if c.ready_check is not None and c.state == ServiceState.STARTING) if t is not None]
        timeout = max(0.0, min([0.25] + [t - now for t in due]))
        for key, _ in self.selector.select(timeout):
            kind, child = key.data
            if kind == "wake":
                drain(self.wake_read)
            elif kind in ("out", "err"):
                self._pump(child, kind)
            elif kind == "ready":
                self._read_ready(child)
            elif kind == "exit":
                self._reap(child)
        self._run_commands()
        self._stop_due()
        now = time.monotonic()
        for child in list(self.children.values()):
            if child.ready_check is not None and child.state == ServiceState.STARTING and child.ready_check.poll(now):
                self._became_ready(child)
        if not self.stopping:
            self._start_waiting()
        for child in list(self.children.values()):
            if child.popen is not None and child.pidfd is None and child.popen.poll() is not None:
                self._reap(child)  # no pidfd on this system: polled instead
        if self.reload_pending:
            self.reload_pending = False
            self._reopen_logs()
        now = time.monotonic()
        self._check_limits(now)
        self._check_changes(now)
        for child in self.children.values():
            if child.state == ServiceState.BACKOFF and now >= child.next_start:
                self._spawn(child)  # BACKOFF -> STARTING
            elif child.state == ServiceState.FAILED and child.retry_at is not None and now >= child.retry_at:
                # failed -> starting: the cooldown is over (a dependency's outage may have ended)
                self._event(child, f"trying again after {self.settings.retry_failed_after:g} s")
                child.fast_failures = 0
                self._spawn(child)
            elif child.state == ServiceState.STARTING and now - child.started_at > self.settings.ready_timeout:
                self._event(child, f"not ready after {self.settings.ready_timeout:g} s; stopping it")
                child.error = f"not ready within {self.settings.ready_timeout:g} s"
                child.pending_reason, child.pending_detail = Reason.NOT_READY, child.error
                self._signal(child, signal.SIGTERM)
                child.stop_deadline = now + child.spec.stop_timeout
                child.change_state(ServiceState.STOPPING)
            if child.stop_deadline is not None and now > child.stop_deadline and not child.killed:
                self._event(child, f"did not stop within {child.spec.stop_timeout:g} s; killing it", warn=True)
                self._signal(child, signal.SIGKILL)
                child.killed = True
        self._check_startup()
        self._check_done()

    def _spawn(self, child: Child) -> None:
        spec = child.spec
        child.retry_at = None
        child.fresh_deps = {}
        child.unhealthy = False
        child.healthy = False
        ready_read, ready_write = os.pipe()
        # the supervisor's environment, then the app file's env_file and env (spec.env, merged in that order)
        env = dict(os.environ, **(spec.env or {}), **{
            SUPERVISED_ENV: spec.name, SUPERVISOR_PID_ENV: str(os.getpid())})
        for name in ("WATCHDOG_USEC", "WATCHDOG_PID", WATCHDOG_ENV):  # systemd watches us, not our children
            env.pop(name, None)
        if spec.command:
            try:
                args = _commands.argv(spec.command, spec.user, self.lifeline_read, ready_write,
                                      int(getattr(signal, spec.stop_signal, signal.SIGTERM)), spec.stop_timeout)
            except KeyError:  # the user is gone since the file was read
                self._start_failed(child, f"there is no user {spec.user!r} on this host", ready_read, ready_write)
                return
            # its keeper reports the program's pid on the status pipe, and ends its tree if we die
            pass_fds: tuple[int, ...] = (ready_write, *self.registry.inheritable(child.claim), self.lifeline_read)
        else:
            if "PYTHONUNBUFFERED" not in (spec.env or {}):  # for our own Python child only: a command gets
                env["PYTHONUNBUFFERED"] = "1"             # the supervisor's and the file's, as they are
            env.update({READY_FD_ENV: str(ready_write), LIFELINE_FD_ENV: str(self.lifeline_read),
                        STOP_TIMEOUT_ENV: repr(spec.stop_timeout), LOG_PATH_ENV: str(child.log.path),
                        REUSE_PORT_ENV: "1" if spec.instance is not None else ""})
            if spec.watchdog:
                env[WATCHDOG_ENV] = repr(spec.watchdog)
            # isolated from its working directory (the project's): a module target is put on sys.path
            # after the standard library by the loader, not first by Python
            args = python_command("servicefactory.supervise._child", "-u") + [
                spec.target, spec.name, spec.host or "", "" if spec.port is None else str(spec.port),
                spec.tls_cert or "", spec.tls_key or ""]
            pass_fds = (ready_write, *self.registry.inheritable(child.claim), self.lifeline_read)
        try:
            with _hangup_ignored():
                child.popen = subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                    cwd=spec.cwd if spec.cwd and os.path.isdir(spec.cwd) else None,
                    pass_fds=pass_fds, start_new_session=True,
                    **({} if spec.command else _commands.user_options(spec.user)))
        except (OSError, KeyError, ValueError) as exc:
            self._start_failed(child, str(exc), ready_read, ready_write)
            return
        finally:
            if child.popen is not None:
                os.close(ready_write)
        child.started_at = time.monotonic()
        child.program_pid = None
        child.ready_early = False
        child.ready_at = None
        child.killed = False
        child.stop_deadline = None
        child.error = None
        child.tail = []
        child.exited.clear()
        os.set_blocking(ready_read, False)
        child.ready_fd = ready_read
        self.selector.register(ready_read, selectors.EVENT_READ, ("ready", child))
        assert child.popen.stdout is not None and child.popen.stderr is not None
        child.output_fd = child.popen.stdout.fileno()
        os.set_blocking(child.output_fd, False)
        self.selector.register(child.output_fd, selectors.EVENT_READ, ("out", child))
        child.err_fd = child.popen.stderr.fileno()
        os.set_blocking(child.err_fd, False)
        self.selector.register(child.err_fd, selectors.EVENT_READ, ("err", child))
        child.started_once = True
        try:
            child.pidfd = os.pidfd_open(child.popen.pid)
            self.selector.register(child.pidfd, selectors.EVENT_READ, ("exit", child))
        except (AttributeError, OSError):
            child.pidfd = None  # no pidfd: polled in loop()
        # published before the claim names its pid: a reader never sees the new pid there while the
        # record still names no process (it would take the name's owner for an unsupervised one)
        child.change_state(ServiceState.STARTING)
        if spec.command:
            # its output may match a `log` check before the keeper's report is read: watched from now
            child.ready_check = _commands.ReadyCheck(spec.ready, cwd=spec.cwd, env=env)
        else:
            self.registry.hand_over(child.claim, child.popen.pid)

    def _command_started(self, child: Child, pid: int) -> None:
        """The keeper of a command exec'd the program as `pid`: record it; ready at once without a check."""
        if child.popen is None or child.program_pid is not None:
            return
        child.program_pid = pid
        self.registry.hand_over(child.claim, pid)
        self._publish(child)
        if child.ready_check is not None and child.state == ServiceState.STARTING and \
                (child.ready_check.at_once or child.ready_early):
            self._became_ready(child)

    def _pump(self, child: Child, kind: str = "out") -> None:
        fd = child.output_fd if kind == "out" else child.err_fd
        try:
            data = os.read(fd, 65536) if fd is not None else b""
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_output(child, kind)
            return
        partial = child.partial if kind == "out" else child.err_partial
        lines = (partial + data).split(b"\n")
        partial = lines.pop()
        if len(partial) > 65536:  # a runaway line without newline: flush it anyway
            lines.append(partial)
            partial = b""
        if kind == "out":
            child.partial = partial
        else:
            child.err_partial = partial
        for line in lines:
            self._emit(child, line.decode(errors="replace"), kind)

    def _emit(self, child: Child, text: str, kind: str = "out") -> None:
        # the child's words always follow `NAME | ` (stdout) or `NAME ! ` (stderr), and are escaped:
        # they can neither drive the reader's terminal nor pass for one of our events
        # (`[servicefactory] NAME ...`)
        text = printable(text)
        bar = "|" if kind == "out" else "!"
        child.log.write(f"{stamp()} {child.spec.name} {bar} {text}\n".encode())
        child.tail = (child.tail + [text])[-20:]
        if self.printer is not None:
            self.printer(child.spec.name, text, stream=kind)
        if child.ready_check is not None and child.state == ServiceState.STARTING and child.ready_check.on_line(text):
            self._became_ready(child)

    def _close_output(self, child: Child, kind: str | None = None) -> None:
        """Stop reading the child's stdout (`out`), stderr (`err`) or both (None)."""
        if kind in (None, "out") and child.output_fd is not None:
            self._unregister(child.output_fd)
            if child.partial:
                self._emit(child, child.partial.decode(errors="replace"))
                child.partial = b""
            if child.popen is not None and child.popen.stdout is not None:
                child.popen.stdout.close()
            child.output_fd = None
        if kind in (None, "err") and child.err_fd is not None:
            self._unregister(child.err_fd)
            if child.err_partial:
                self._emit(child, child.err_partial.decode(errors="replace"), "err")
                child.err_partial = b""
            if child.popen is not None and child.popen.stderr is not None:
                child.popen.stderr.close()
            child.err_fd = None

    def _read_ready(self, child: Child) -> None:
        """Read the child's status pipe: `ready` (or why not) first, then `stopping` if it was asked to."""
        try:
            data = os.read(child.ready_fd, 4096) if child.ready_fd is not None else b""
        except BlockingIOError:
            return
        child.ready_buffer += data
        *lines, child.ready_buffer = child.ready_buffer.split(b"\n")
        for line in lines:
            if child.spec.command:  # a command's keeper says one thing: the program's pid
                pid = _commands.started(line)
                if pid is not None:
                    self._command_started(child, pid)
                continue
            message = decode_child(line)
            if isinstance(message, Beat):
                child.last_beat = time.monotonic()
            elif isinstance(message, Reloaded):
                child.reload_error = None if message.ok else (message.error or "reload() failed")
                self._event(child, "reloaded" if message.ok else f"reload failed: {child.reload_error}; "
                            f"running on with the old settings", warn=not message.ok)
                child.reloaded.set()
            elif isinstance(message, Ready) and child.state == ServiceState.STARTING:
                child.reloadable = message.reload
                self._became_ready(child, message.host, message.port, message.tls)
            elif isinstance(message, StartFailed):
                child.error = message.error or child.error
            elif isinstance(message, Unhealthy) and child.state == ServiceState.RUNNING and not child.user_stopped:
                # running -> unhealthy: treated as a crash (its restart policy decides), after a graceful stop
                child.unhealthy = True
                child.error = f"unhealthy: {message.errors} loop errors in a row ({message.error})"
                child.pending_reason, child.pending_detail = Reason.UNHEALTHY, child.error
                self._event(child, f"{child.error}; stopping it", warn=True)
                child.stop_deadline = time.monotonic() + child.spec.stop_timeout
                self._signal(child, signal.SIGTERM)
                child.change_state(ServiceState.UNHEALTHY)
            elif isinstance(message, Stopping) and message.reason is not None and message.reason.by_user:
                child.user_stopped = True  # asked to stop through its API: as final as `servicefactory stop`
            elif isinstance(message, Stopping) and message.reason == StopReason.RELOAD and not child.user_stopped:
                # a SIGHUP from outside to a service without reload(): start it again, as `reload` would
                self._event(child, "SIGHUP without reload(): restarting it (reason: config)")
                child.pending_reason, child.pending_detail = Reason.CONFIG, "SIGHUP without reload()"
                child.user_stopped = child.restart_after_stop = True
                child.settled.clear()
                if child.state in (ServiceState.STARTING, ServiceState.RUNNING):
                    child.stop_deadline = time.monotonic() + child.spec.stop_timeout
                    child.change_state(ServiceState.STOPPING)
        if not data:
            self._unregister(child.ready_fd)
            os.close(child.ready_fd)
            child.ready_fd = None

    def _became_ready(self, child: Child, host: str | None = None, port: int | None = None,
                      tls: bool = False) -> None:
        # starting -> running: the child said `ready`, or a command's ready check passed
        if child.spec.command and child.program_pid is None:
            # its check passed (it printed, or a port answers) before its keeper's report was read
            self._read_ready(child)
            if child.program_pid is None:
                child.ready_early = True  # ready once the report comes
                return
        if child.ready_check is not None:
            child.ready_check.close()
            child.ready_check = None
            child.healthy = True  # a command has no health action: ready is as healthy as it gets
        child.ready_at = child.last_beat = time.monotonic()
        child.ever_ready = True
        child.ready_wall = time.time()
        child.host, child.port = host, port
        child.tls = tls
        child.change_state(ServiceState.RUNNING)
        child.settled.set()
        self._remember(child)
        self._event(child, f"ready (pid {child.pid}{', ' + url_of(child) if child.port else ''})")

    def _remember(self, child: Child) -> None:
        spec = asdict(child.spec)
        if child.spec.instance is not None:  # remembered as the whole service (`Test`, instances N)
            spec.update(name=child.spec.service, instance=None, log_file=child.spec.log_file and
                        service_log_file(child.spec.log_file, child.spec.instance))
        try:
            # every run option, for `restart` after we are gone: the Spec, the Settings, the log level
            self.registry.remember(spec["name"], dict(
                spec, settings=asdict(self.settings),
                log_level=os.environ.get("SERVICEFACTORY_LOG_LEVEL"), history=child.history))
        except OSError:
            pass

    def _reap(self, child: Child) -> None:
        popen = child.popen
        if popen is None:
            return
        try:
            # what the service started dies with it: no orphans. Before reaping, so that its pid
            # (which names the group) cannot have been reused yet
            os.killpg(popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        code = popen.wait()
        if child.ready_fd is not None and child.spec.command:  # the program's pid, if not read yet
            self._read_ready(child)
        if child.ready_check is not None:
            child.ready_check.close()
            child.ready_check = None
        self._kill_strays()
        if child.pidfd is not None:
            self._unregister(child.pidfd)
            os.close(child.pidfd)
            child.pidfd = None
        if child.ready_fd is not None:  # its last words: ready, or stopping on request
            self._read_ready(child)
        if child.ready_fd is not None:  # still open: a grandchild holds it; we heard all we need
            self._unregister(child.ready_fd)
            os.close(child.ready_fd)
            child.ready_fd = None
        # what the child wrote last is often why it died: read it, but boundedly (a grandchild that
        # escaped its group could keep the pipe open and busy for ever)
        deadline = time.monotonic() + 0.5
        for kind in ("out", "err"):
            while (child.output_fd if kind == "out" else child.err_fd) is not None and time.monotonic() < deadline:
                before = child.output_fd if kind == "out" else child.err_fd
                self._pump(child, kind)
                if (child.output_fd if kind == "out" else child.err_fd) == before and not readable(before):
                    break
        self._close_output(child)
        child.popen = None
        child.program_pid = None
        self._after_exit(child, code)

    def _kill_strays(self) -> None:
        """Kill and reap our children that are no service: orphans re-parented to us when a service died.

        (The supervisor is a process of its own, started by `run`: its only other children are services.)
        A stray killed here may leave children of its own, which come to us next: bounded passes; one
        that does not die at once (in the kernel) is reaped on a later call, never waited for here.
        """
        ours = {child.popen.pid for child in self.children.values() if child.popen is not None}
        ours |= {child.ready_check.pid for child in self.children.values()
                 if child.ready_check is not None and child.ready_check.pid is not None}
        me = os.getpid()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            strays = [pid for pid, parent in _reaper.parents().items() if parent == me and pid not in ours]
            if not strays:
                return
            for pid in strays:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.005)
            for pid in strays:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass

    def _start_failed(self, child: Child, why: str, *pipe: int) -> None:
        """No process could be started: say why in the log (the exit line alone said only 127), then
        treat it as an exit with 127, as a shell does for a program it cannot run."""
        for fd in pipe:
            os.close(fd)
        child.error = f"cannot start: {why}"
        self._event(child, child.error, warn=True)
        self._after_exit(child, 127)

    def _after_exit(self, child: Child, code: int) -> None:
        child.last_exit = code
        child.stop_deadline = None
        now = time.monotonic()
        reason = reason_of_exit(child.pending_reason, code)
        if self.stopping and child.pending_reason is None:
            reason = Reason.MANUAL  # we stop everything: whatever the exit, it was asked for
        detail = child.pending_detail or (describe(code) if reason == Reason.CRASH else "")
        child.pending_reason, child.pending_detail = None, ""
        child.history = record_event(child.history, reason, code, detail)
        if child.ever_ready:
            self._remember(child)  # why it stopped outlives us: `status` shows it once we are gone
        fault = detail if reason in (Reason.MEMORY, Reason.WATCHDOG) else ""
        decision = RestartPolicy(child.spec, self.settings).on_exit(Exit(
            code=code, ran=now - child.started_at, was_ready=child.ready_at is not None, ever_ready=child.ever_ready,
            unhealthy=child.unhealthy, asked=child.user_stopped, stopping_all=self.stopping,
            starting_up=self.starting_up, fault=fault), child.fast_failures, now)
        child.fast_failures = decision.fast_failures
        child.restarts += decision.restarts
        if decision.next_start is not None:
            child.next_start = decision.next_start
        if decision.state == ServiceState.FAILED:
            child.retry_at = decision.retry_at
        self._event(child, f"{decision.message} (reason: {reason.value})", warn=decision.warn)
        child.change_state(decision.state)
        child.exited.set()  # this process is gone; a respawn below starts waiting afresh
        if child.restart_after_stop:
            child.restart_after_stop = False
            child.user_stopped = False
            child.fast_failures = 0
            child.restarts += 1
            if child.fresh_deps:
                child.change_state(ServiceState.WAITING)  # STOPPED -> WAITING: for its restarted dependencies
            else:
                self._spawn(child)  # STOPPED -> STARTING
        if child.state in (ServiceState.FAILED, ServiceState.STOPPED):
            child.settled.set()

    # -- stopping --

    def _signal(self, child: Child, signum: int) -> None:
        if child.popen is None:
            return
        try:
            # the whole group: the service's own children too (a command's program, not its keeper,
            # which forwards what reaches it before it said which pid the program has)
            os.killpg(child.pid or child.popen.pid, signum)
        except ProcessLookupError:
            pass
        except PermissionError:
            child.popen.send_signal(signum)

    def _stop_child(self, child: Child, *, restart: bool = False, timeout: float | None = None,
                    reason: Reason = Reason.MANUAL, detail: str = "", signum: int | None = None) -> None:
        """Stop `child` with `signum` (None: its spec's stop_signal), SIGKILL after its stop timeout."""
        child.user_stopped = True
        child.restart_after_stop = restart
        if child.popen is not None:
            if child.stop_deadline is None:
                if child.pending_reason is None:
                    child.pending_reason, child.pending_detail = reason, detail
                child.stop_deadline = time.monotonic() + (timeout or child.spec.stop_timeout)
                if signum is None:
                    signum = getattr(signal, child.spec.stop_signal, signal.SIGTERM)
                if signum != signal.SIGTERM:
                    self._event(child, f"stopping it with {signal.Signals(signum).name}")
                self._signal(child, signum)
                child.change_state(ServiceState.STOPPING)
        else:
            child.retry_at = None
            # failed/backoff/waiting/blocked -> stopped: no start is due any more
            child.change_state(ServiceState.STOPPED)
            child.exited.set()
            if restart:
                child.user_stopped = False
                child.restart_after_stop = False
                child.fast_failures = 0
                if child.spec.depends_on:
                    child.change_state(ServiceState.WAITING)  # STOPPED -> WAITING: its dependencies again
                else:
                    self._spawn(child)  # STOPPED -> STARTING

    def _stop_in_order(self, children: list[Child], timeout: float | None = None, signum: int | None = None) -> None:
        """Stop `children`, each once none of them that depends on it is still running (reverse
        start order); independent ones at once, in parallel."""
        for child in children:
            self.stop_pending.setdefault(child.spec.name, (timeout, signum))
        self._stop_due()

    def _stop_due(self) -> None:
        if not self.stop_pending:
            return
        graph = {name: list(child.spec.depends_on or {}) for name, child in self.children.items()}
        for name, (timeout, signum) in list(self.stop_pending.items()):
            # depends_on names services: an instance (api/2) is what its dependents wait on as `api`
            dependents = [self.children[d] for d in _dependencies.dependents(graph, self.children[name].spec.service)]
            if any(d.spec.name in self.stop_pending or (d.popen is not None and d.state == ServiceState.STOPPING)
                   for d in dependents):
                continue  # a dependent being stopped is not gone yet
            del self.stop_pending[name]
            if name in self.restart_pending:
                reason, detail = self.restart_pending.pop(name)
                self._stop_child(self.children[name], restart=True, reason=reason, detail=detail)
            else:
                self._stop_child(self.children[name], timeout=timeout, signum=signum)

    # -- dependencies: who starts when --

    def _progress(self, child: Child, since: float | None = None) -> _dependencies.Progress:
        """What `child` has done as a dependency; with `since`, only its runs started since count (a
        dependency restarted in watch mode: its dependents wait for the new run, not the old one's)."""
        if since is not None:
            if not (child.started_once and child.started_at >= since):
                return _dependencies.Progress(state=ServiceState.WAITING.value)  # not started again yet
            return _dependencies.Progress(
                state=child.state.value, started=True, ever_ready=child.ready_at is not None,
                last_exit=child.last_exit if child.popen is None else None, healthy=child.healthy,
                asked_to_stop=child.user_stopped, error=child.error)
        return _dependencies.Progress(
            state=child.state.value, started=child.started_once, ever_ready=child.ever_ready,
            last_exit=child.last_exit, healthy=child.healthy, asked_to_stop=child.user_stopped, error=child.error)

    def _members(self, name: str) -> list[Child]:
        """The children a service's name stands for: itself, or each of its instances (api/1 ... api/N)."""
        child = self.children.get(name)
        if child is not None:
            return [child]
        members = [c for c in self.children.values() if c.spec.instance is not None and c.spec.service == name]
        return sorted(members, key=lambda c: c.spec.instance or 0)

    def _progress_of(self, name: str, since: float | None = None) -> _dependencies.Progress | list[_dependencies.Progress]:
        """A dependency's progress: one service's, or one per instance of a service run as instances."""
        members = self._members(name)
        if len(members) == 1 and members[0].spec.instance is None:
            return self._progress(members[0], since)
        return [self._progress(member, since) for member in members]

    def _start_waiting(self) -> None:
        """Start each waiting service whose dependencies are met; block those that can never be."""
        for child in self.children.values():
            if child.state != ServiceState.WAITING or child.spec.name in self.stop_pending:
                continue
            depends_on = child.spec.depends_on or {}
            progress = {name: self._progress_of(name, child.fresh_deps.get(name)) for name in depends_on}
            pending, blocked = _dependencies.waiting_on(depends_on, progress)
            if blocked is not None:
                child.error = f"blocked: {blocked}"
                self._event(child, f"not started: {blocked}", warn=True)
                child.change_state(ServiceState.BLOCKED)  # WAITING -> BLOCKED
                child.settled.set()
                child.exited.set()
                continue
            for name in pending:
                if depends_on[name] == "healthy":
                    for member in self._members(name):
                        self._probe_health(member)
            if not pending:
                self._spawn(child)  # WAITING -> STARTING

    def _probe_health(self, child: Child) -> None:
        """Ask a ready Service class's `health` action, in a thread; `healthy` once it says `running`."""
        if not child.ever_ready or child.healthy or child.state != ServiceState.RUNNING:
            return
        now = time.monotonic()
        if child.health_probe_at > now:
            return
        child.health_probe_at = now + 0.5

        def probe() -> None:
            from servicefactory.http import client

            try:
                answer = client.perform(child.spec.name, "health", timeout=2.0, registry=self.registry)
            except ServiceFactoryError:
                return
            if isinstance(answer, dict) and answer.get("state") == "running":
                child.healthy = True
                try:
                    os.write(self.wake_write, b"x")
                except OSError:
                    pass

        threading.Thread(target=probe, daemon=True, name=f"servicefactory-health-{child.spec.name}").start()

    def stop_children(self) -> None:
        """Stop every child in parallel, each within its stop timeout, while our API still answers:
        a `stop` in flight waits for exactly these exits, and must not hold up our own stop."""
        self._stop_in_order(list(self.children.values()))
        forced = False
        while self.stop_pending or any(child.popen is not None for child in self.children.values()):
            runtime = self._servicefactory_runtime
            if not forced and self.settings.foreground and runtime is not None and runtime.interrupts >= 2:
                forced = True  # a second Ctrl+C: the user will not wait for graceful stops
                self.stop_pending.clear()
                for child in self.children.values():
                    if child.popen is not None and not child.killed:
                        self._event(child, "killing it at once (a second Ctrl+C)", warn=True)
                        self._signal(child, signal.SIGKILL)
                        child.killed = True
            self.loop()

    # -- limits: memory and watchdog, checked in the loop --

    def _check_limits(self, now: float) -> None:
        """Restart a service above its memory limit (checked every MEMORY_CHECK_EVERY s) or whose loop
        sent no heartbeat within its watchdog period."""
        for child in self.children.values():
            watchdog = child.spec.watchdog
            if (watchdog and child.state == ServiceState.RUNNING and child.stop_deadline is None
                    and now - child.last_beat > watchdog):
                self._fault_stop(child, Reason.WATCHDOG,
                                 f"no progress of its loop for {now - child.last_beat:.1f} s (watchdog {watchdog:g} s)")
        if now < self.next_memory_check:
            return
        self.next_memory_check = now + _limits.MEMORY_CHECK_EVERY
        limited = [c for c in self.children.values() if c.spec.max_memory and c.popen is not None
                   and c.state in (ServiceState.STARTING, ServiceState.RUNNING) and c.stop_deadline is None]
        if not limited:
            return
        # measured from the process we started: a command's keeper adopts what the program's children
        # double-fork or setsid away (they are no longer below the program), but is not itself counted
        usage = _limits.tree_memory([c.popen.pid for c in limited])
        for child in limited:
            used = usage.get(child.popen.pid, 0)
            if child.pid != child.popen.pid:
                used -= _limits.rss(child.popen.pid)
            if used > child.spec.max_memory:
                self._fault_stop(child, Reason.MEMORY, f"memory {_limits.format_size(used)} over its limit of "
                                                       f"{_limits.format_size(child.spec.max_memory)}")

    def _fault_stop(self, child: Child, reason: Reason, detail: str) -> None:
        """Stop a service for a fault of its own (gracefully, then SIGKILL after its stop timeout); its
        restart policy then treats the exit as a crash."""
        self._event(child, f"{detail}; stopping it (reason: {reason.value})", warn=True)
        child.pending_reason, child.pending_detail = reason, detail
        child.error = detail
        child.stop_deadline = time.monotonic() + child.spec.stop_timeout
        self._signal(child, getattr(signal, child.spec.stop_signal, signal.SIGTERM))
        child.change_state(ServiceState.STOPPING)

    # -- watch mode: restart a service when its source changes --

    def _roots(self) -> dict[str, str]:
        """Each service's source directory: a file target's own, else where `run` was typed (or the
        file's `cwd`). A command is watched only if it runs Python (its program is a Python
        interpreter, or a script whose first line names one, as uvicorn's or celery's does): a .py
        file saved must not restart a redis-server."""
        from servicefactory.supervise import _watch

        roots = {}
        for name, child in list(self.children.items()):  # also read by the thread that applies the file
            if child.spec.command:
                if _watch.runs_python(child.spec.command[0], child.spec.cwd):
                    roots[name] = os.path.realpath(child.spec.cwd or os.getcwd())
                continue
            module = child.spec.target.rpartition(":")[0] or child.spec.target
            if module.endswith(".py") or os.sep in module:
                roots[name] = os.path.realpath(os.path.dirname(module))
            else:
                roots[name] = os.path.realpath(child.spec.cwd or os.getcwd())
        return roots

    def _start_watching(self) -> None:
        from servicefactory.supervise import _watch

        self.changes = _watch.Debouncer()
        self._watch(sorted(set(self._roots().values())))

    def _changed(self, path: str) -> None:
        """A watched file changed (called in the watcher's thread): note it and wake the loop."""
        self.changes.add(path, time.monotonic())
        try:
            os.write(self.wake_write, b"x")
        except OSError:
            pass

    def _watch(self, roots: list[str]) -> None:
        """Watch `roots` (and the application file) from now on, in place of what was watched before."""
        from servicefactory.supervise import _watch

        files = [self.settings.app_file] if self.settings.app_file else []
        watcher = _watch.Watcher(roots, list(self.settings.watch_ignored), self._changed, files=files)
        watcher.start()
        previous, self.watcher = self.watcher, watcher
        if previous is not None:
            previous.stop()
        self._say(f"watching {', '.join(roots) or 'no directory'} for changes of .py files"
                  + (f" and {files[0]}" if files else ""))

    def _check_changes(self, now: float) -> None:
        from servicefactory.supervise import _watch

        batch = self.changes.due(now) if self.changes is not None else None
        if not batch:
            return
        app_file = os.path.realpath(self.settings.app_file) if self.settings.app_file else None
        if app_file in batch:
            batch.remove(app_file)
            self._say(f"{os.path.basename(app_file)} changed: applying it")
            self._reread_soon("watch")  # as a SIGHUP does: a broken file is said once and changes nothing
        self.held.update(batch)
        for path in set(batch) | set(self.broken):
            error = _watch.syntax_error(path)
            if error is None:
                self.broken.pop(path, None)
            elif self.broken.get(path) != error:
                self.broken[path] = error  # said once: saving the same broken file again repeats nothing
                self._say(f"not restarting: {error} (the running processes keep running)", warn=True)
        if self.broken:
            return
        changed, self.held = sorted(self.held), set()
        if not changed:
            return
        names = ", ".join(os.path.basename(path) for path in changed[:3]) + (
            f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        roots = self._roots()
        hit = [child for name, child in self.children.items()
               if name in roots and not (child.state == ServiceState.STOPPED and child.user_stopped)
               and any(_watch.under(path, roots[name]) for path in changed)]
        self._restart_changed(hit, names)

    def _restart_changed(self, hit: list[Child], names: str) -> None:
        """Restart the services whose files changed and, after them, every service that depends on
        them (transitively): dependents stop first and start again once what they wait for is back
        (a new run's readiness, not the old one's). The instances of a service nothing else is
        restarted with roll, one at a time, each ready before the next stops."""
        now = time.monotonic()
        affected = {child.spec.name: child for child in hit}
        services = {child.spec.service for child in hit}
        graph = {name: list(child.spec.depends_on or {}) for name, child in self.children.items()}
        frontier = list(services)
        while frontier:
            service = frontier.pop()
            for dependent in _dependencies.dependents(graph, service):
                child = self.children[dependent]
                if dependent in affected or child.state == ServiceState.STOPPED and child.user_stopped:
                    continue
                affected[dependent] = child
                if child.spec.service not in services:
                    services.add(child.spec.service)
                    frontier.append(child.spec.service)
        by_service: dict[str, list[Child]] = {}
        for child in affected.values():
            by_service.setdefault(child.spec.service, []).append(child)
        for child in affected.values():
            child.settled.clear()
            child.fast_failures = 0  # a fixed bug deserves a fresh start, not the old backoff
            if child in hit:
                reason, detail = Reason.FILE_CHANGE, f"changed: {names}"
                self._event(child, f"{names} changed; restarting it (reason: file-change)")
            else:
                needed = sorted(set(child.spec.depends_on or {}) & services)
                reason, detail = Reason.DEPENDENCY, f"{', '.join(needed)} restarted ({names} changed)"
                self._event(child, f"{', '.join(needed)} restarting ({names} changed); restarting it after "
                                   f"(reason: dependency)")
            child.fresh_deps = {name: now for name in child.spec.depends_on or {} if name in services}
            members = by_service[child.spec.service]
            alone = len(members) > 1 and not child.fresh_deps and not any(
                d in affected for d in _dependencies.dependents(graph, child.spec.service))
            if alone:
                continue  # rolled below
            if child.popen is None:
                self._stop_child(child, restart=True, reason=reason, detail=detail)
            else:
                self.restart_pending[child.spec.name] = (reason, detail)
                self.stop_pending.setdefault(child.spec.name, (None, None))
        self._stop_due()  # dependents first: each stops once none of its own dependents still runs
        for service, members in by_service.items():
            if len(members) > 1 and not any(child.spec.name in self.restart_pending or child.fresh_deps
                                            for child in members) and members[0] in hit:
                threading.Thread(target=self._roll, args=(sorted(members, key=lambda c: c.spec.instance or 0),
                                                          None),
                                 kwargs={"reason": Reason.FILE_CHANGE, "detail": f"changed: {names}"},
                                 daemon=True, name=f"servicefactory-roll-{service}").start()

    def _say(self, text: str, warn: bool = False) -> None:
        """One line of the supervisor's own, not about one service (the foreground shows it once)."""
        if self.printer is not None:
            self.printer("servicefactory", f"[servicefactory] {printable(text)}", True)
        else:
            (logger.warning if warn else logger.info)("%s", printable(text))

    # -- reload: SIGHUP to the supervisor, `servicefactory reload NAME` --

    def reload(self) -> None:
        """SIGHUP: reopen every log file (after logrotate moved them) and, started by `up`, read the
        application file again and apply it as `up` does; in a terminal, stop instead."""
        if self.hangup_stops:
            self.stop()
            return
        self.reload_pending = True  # done by the loop's thread, which owns the logs
        try:
            os.write(self.wake_write, b"x")
        except OSError:
            pass
        if self.settings.app_file:
            self._reread_soon("SIGHUP")

    def _reread_soon(self, cause: str) -> None:
        """Apply the application file again, in a thread of its own (after the pass under way, if any);
        `cause` starts what it logs."""
        with self.reread_lock:
            self.reread_cause = cause
            self.reread_again = True
            if self.reread_thread is None:
                self.reread_thread = threading.Thread(target=self._reread, daemon=True, name="servicefactory-reread")
                self.reread_thread.start()

    def _reread(self) -> None:
        """Thread body: apply the application file until no SIGHUP asked for another pass."""
        while True:
            with self.reread_lock:
                if not self.reread_again or self.stopping:
                    self.reread_thread = None
                    return
                self.reread_again = False
            try:
                self._apply_file()
            except Exception as exc:  # the supervisor runs on, whatever one pass met
                logger.exception("%s: applying %s failed", self.reread_cause, self.settings.app_file)
                self._say(f"{self.reread_cause}: applying {self.settings.app_file} failed: {exc}", warn=True)

    def _apply_file(self) -> None:
        """Read the application file (in a process of its own) and apply it as `up` run again does:
        stop what it no longer declares, restart what changed, start what is new, keep the rest."""
        from servicefactory.supervise import _reconfigure

        file, environment = self.settings.app_file, self.settings.app_environment
        assert file is not None
        items, error = _reconfigure.read(file, environment)
        if error is not None or items is None:
            self._say(f"{self.reread_cause}: not applied: {error}; every service runs on as it was", warn=True)
            return
        try:
            specs = [Spec(**item) for item in items]
        except TypeError as exc:
            self._say(f"{self.reread_cause}: not applied: {file} gave a spec this supervisor does not know ({exc})", warn=True)
            return
        if self.stopping:
            return
        before = {name: asdict(child.spec) for name, child in list(self.children.items())}
        wanted = {spec.name: asdict(spec) for spec in expand_instances(specs)}
        removed = [name for name in before if name not in wanted]
        if removed:
            self.handle_stop({"names": removed})
            for name in removed:
                try:
                    self.registry.mark_stopped(name)
                except OSError:
                    pass
        rows = {row["name"]: row for row in self.handle_apply({"specs": [asdict(spec) for spec in specs]})}
        started = [name for name in wanted if name not in before]
        restarted = [name for name in wanted if name in before and before[name] != wanted[name]]
        kept = [name for name in wanted if before.get(name) == wanted[name]]
        failed = [name for name, row in rows.items() if row["state"] in ("failed", "blocked")]
        parts = [f"{label} {', '.join(names)}" for label, names in
                 (("restarted", restarted), ("started", started), ("stopped", removed), ("kept", kept))
                 if names]
        if self.watcher is not None:  # a service new to the file may live in a directory not watched yet
            roots = sorted(set(self._roots().values()))
            if roots != self.watcher.roots:
                self._watch(roots)
        self._say(f"{self.reread_cause}: applied {file}: {'; '.join(parts) or 'nothing to change'}"
                  + (f"; not running: {', '.join(failed)} (servicefactory logs NAME)" if failed else ""),
                  warn=bool(failed))

    def _reopen_logs(self) -> None:
        if _own_log is not None:
            _own_log.reopen()
        for child in self.children.values():
            try:
                child.log.reopen()
            except OSError as exc:
                logger.warning("cannot reopen the log of %s: %s", child.spec.name, exc)
        logger.info("SIGHUP: reopened the log files")

    def _reload_child(self, child: Child, timeout: float) -> dict:
        """Call the service's reload() (SIGHUP to its process alone), or restart it if it has none."""
        if child.state != ServiceState.RUNNING or child.popen is None:
            raise ServiceFactoryError(f"{child.spec.name} is {child.state.value}, not running: nothing to reload")
        if not child.reloadable:
            self._event(child, "defines no reload(); restarting it (reason: config)")
            child.settled.clear()
            self._stop_child(child, restart=True, reason=Reason.CONFIG, detail="reload without reload()")
            return {"name": child.spec.name, "restarted": True}
        child.reloaded.clear()
        child.reload_error = None
        os.kill(child.popen.pid, signal.SIGHUP)  # its process, not its group: its own children keep their HUP
        return {"name": child.spec.name, "restarted": False}

    def finalize(self) -> None:
        """Once every child is gone (see stop_children), release every name."""
        if self.watcher is not None:
            self.watcher.stop()
        self.stop_children()  # already done, unless the loop ended by an error
        self._check_startup()
        self._report_startup()
        self.release_all()
        self.selector.close()
        for fd in (self.wake_read, self.wake_write, self.lifeline_read, self.lifeline_write):
            os.close(fd)

    # -- startup and exit --

    def _check_startup(self) -> None:
        if not self.starting_up:
            return
        if self.stopping:  # Ctrl+C or a stop while starting: not a failure of any service
            self.starting_up = False
            self.failure = {"service": None, "error": "stopped before every service was ready", "exit_code": 1}
            return
        children = list(self.children.values())
        # a service stopped on request while it started is no failure of the start (nor of the others)
        wanted = [c for c in children if not (c.user_stopped and not c.ever_ready)]
        never = [c for c in wanted if not c.ever_ready and c.state not in
                 (ServiceState.STARTING, ServiceState.RUNNING, ServiceState.WAITING)]
        if self.settings.keep_going:
            # an application: a service that fails to start (or is blocked by one that did) is
            # reported, and the others go on; the start is over once every service is settled
            if not any(c.state in (ServiceState.WAITING, ServiceState.STARTING) and not c.ever_ready
                       for c in children):
                self.starting_up = False
                self._report_startup()
                _notify.sd_notify("READY=1", self.notify_socket)
            return
        if never and self.settings.watch:
            # watch mode: a service that cannot start waits for its fix (the next save starts it)
            for bad in never:
                self._event(bad, f"failed to start: {bad.error or f'exited with code {bad.last_exit}'}; "
                                 f"waiting for a change to its files", warn=True)
            self.starting_up = False
            self._report_startup()
            _notify.sd_notify("READY=1", self.notify_socket)
        elif never:
            bad = never[0]
            self.failure = {"service": bad.spec.name, "error": bad.error or f"exited with code {bad.last_exit}",
                            "output": bad.tail[-20:], "exit_code": bad.last_exit}
            self.exit_code = 1
            self.starting_up = False
            self._event(bad, f"failed to start: {self.failure['error']}", warn=True)
            self.stop()
        elif children and all(c.ever_ready or (c.user_stopped and c.popen is None) for c in children):
            self.starting_up = False
            self._report_startup()
            _notify.sd_notify("READY=1", self.notify_socket)

    def _report_startup(self) -> None:
        if self.ready_fd is None:
            return
        if self.failure is not None:
            report = StartupReport(ready=False, **self.failure)
        else:
            report = StartupReport(ready=True, supervisor=self.name, pid=os.getpid(), services=[
                {"name": c.spec.name, "pid": c.pid, "url": url_of(c),
                 "state": c.state.value, "ever_ready": c.ever_ready, "error": c.error,
                 "last_exit": c.last_exit} for c in self.children.values()])
        try:
            os.write(self.ready_fd, to_line(report))
            os.close(self.ready_fd)
        except OSError:
            pass
        self.ready_fd = None

    def _check_done(self) -> None:
        if self.starting_up or self.stopping or self.settings.watch:
            return  # (watch mode stays until Ctrl+C: a stopped or failed service starts again on a save)
        states = [child.state for child in self.children.values()]
        if any(state in ACTIVE for state in states):
            return
        failed = any(state in (ServiceState.FAILED, ServiceState.BLOCKED) for state in states)
        if failed and not self.settings.foreground:
            return  # stay, so that `status` shows the failure and its exit code until someone acts
        if any(child.retry_at is not None for child in self.children.values()):
            return  # a failed service will be tried again
        self.exit_code = 1 if failed else 0
        self.stop()

    # -- records --

    def _publish(self, child: Child) -> None:
        pid = child.pid
        record = ServiceRecord(
            name=child.spec.name, instance=child.spec.instance, pid=pid or 0,
            host=child.host if child.state == ServiceState.RUNNING else None,
            port=child.port if child.state == ServiceState.RUNNING else None,
            create_time=(process_start_time(pid) or 0.0) if pid else 0.0,
            started=child.ready_wall or time.time(), target=child.spec.target, log_path=str(child.log.path),
            hostname=os.uname().nodename, state=child.state.value, supervisor=self.name, restarts=child.restarts,
            last_exit=child.last_exit, next_try=self._next_try(child),
            stop_timeout=child.spec.stop_timeout, tls=child.tls and child.state == ServiceState.RUNNING,
            last_reason=child.history[-1]["reason"] if child.history else None, history=list(child.history),
            reloadable=child.reloadable and child.state == ServiceState.RUNNING,
            error=child.error if child.state in (ServiceState.BLOCKED, ServiceState.FAILED) else None)
        try:
            self.registry.publish(child.claim, record)
        except OSError as exc:
            logger.warning("cannot write the record of %s: %s", child.spec.name, exc)

    @staticmethod
    def _next_try(child: Child) -> float | None:
        """Wall-clock time of the next start of a service waiting in `backoff` or `failed`, if one is due."""
        due = RestartPolicy.due(child.state, child.next_start, child.retry_at)
        return None if due is None else round(time.time() + max(0.0, due - time.monotonic()), 3)

    def _event(self, child: Child, text: str, warn: bool = False) -> None:
        line = printable(f"[servicefactory] {child.spec.name} {text}")  # an error text may come from the child
        child.log.write(f"{stamp()} {line}\n".encode())
        if self.printer is not None:
            self.printer(child.spec.name, line, True)
        else:
            (logger.warning if warn else logger.info)("%s", line)

    def _unregister(self, fd: int | None) -> None:
        if fd is None:
            return
        try:
            self.selector.unregister(fd)
        except (KeyError, ValueError):
            pass

    # -- commands from the API threads, run in the loop's thread --

    def _run_commands(self) -> None:
        while True:
            try:
                command, reply, cancelled = self.commands.get_nowait()
            except queue.Empty:
                return
            if cancelled.is_set():
                continue  # its caller gave up and was told so: doing it now would surprise them
            try:
                reply.put((True, command()))
            except Exception as exc:  # handed back to the caller's thread
                reply.put((False, exc))

    def _call(self, command: Callable[[], Any], timeout: float = 10.0) -> Any:
        reply: queue.Queue = queue.Queue()
        cancelled = threading.Event()
        self.commands.put((command, reply, cancelled))
        try:
            os.write(self.wake_write, b"x")
            ok, value = reply.get(timeout=timeout)
        except (queue.Empty, OSError):
            cancelled.set()
            raise ServiceTimeout(f"the supervisor did not take the request within {timeout:g} s "
                                 f"(it is stopping, or busy); nothing was done") from None
        if not ok:
            raise value
        return value

    def _children_named(self, names: Any) -> list[Child]:
        children = dict(self.children)
        if not names:
            return list(children.values())
        unknown = [name for name in names if name not in children]
        if unknown:
            raise ServiceFactoryError(f"not supervised here: {', '.join(unknown)}")
        return [children[name] for name in names]

    def _request(self, data: Any) -> tuple[list[Child], float | None]:
        """The children a stop/restart request names (all if none), and its timeout if it gives one."""
        data = data if isinstance(data, dict) else {}
        timeout = data.get("timeout")
        timeout = float(timeout) if isinstance(timeout, (int, float)) and timeout > 0 else None
        return self._call(lambda: self._children_named(data.get("names"))), timeout

    @handle("stop", post_only=True)
    def handle_stop(self, data: Any) -> list:
        """Stop the named services for good (no restart), with `signal` (a number) if given, else
        SIGTERM; answers once they are gone."""
        children, timeout = self._request(data)
        signum = data.get("signal") if isinstance(data, dict) else None
        if not (isinstance(signum, int) and not isinstance(signum, bool) and 0 < signum < signal.NSIG):
            signum = None  # each service's own stop_signal
        self._call(lambda: self._stop_in_order(children, timeout, signum))
        return self._await_exit(children, timeout)

    @handle("reload", post_only=True)
    def handle_reload(self, data: Any) -> list:
        """Call reload() of the named services (SIGHUP), or restart those without one; answers once
        each said how its reload went (or is ready again)."""
        children, timeout = self._request(data)
        limit = timeout or 30.0
        # instances without reload() restart one at a time, each ready before the next stops
        rolled = [child for child in children if not child.reloadable and child.spec.instance is not None]
        rolled = rolled if len(rolled) > 1 else []
        for child in rolled:
            if child.state != ServiceState.RUNNING or child.popen is None:
                raise ServiceFactoryError(f"{child.spec.name} is {child.state.value}, not running: nothing to reload")
        outcomes = self._call(lambda: [self._reload_child(child, limit) for child in children if child not in rolled])
        if rolled:
            for child in rolled:
                self._event(child, "defines no reload(); restarting it, one instance at a time (reason: config)")
            self._roll(rolled, None, reason=Reason.CONFIG, detail="reload without reload()")
        by_name = {outcome["name"]: outcome for outcome in outcomes}
        outcomes = [by_name.get(child.spec.name) or {"name": child.spec.name, "restarted": True} for child in children]
        deadline = time.monotonic() + limit + self.settings.ready_timeout
        rows = []
        for child, outcome in zip(children, outcomes):
            event = child.settled if outcome["restarted"] else child.reloaded
            done = event.wait(max(0.0, deadline - time.monotonic()))
            row = self.handle_status({"names": [child.spec.name]})[0]
            row.update(restarted=outcome["restarted"], reloaded=done and not outcome["restarted"]
                       and child.reload_error is None, reload_error=child.reload_error if done else "no answer")
            rows.append(row)
        return rows

    @handle("application")
    def handle_application(self, data: Any) -> dict:
        """The application file this supervisor was started from (`up`) and its `--env`; None for `run`.
        What `down` finds it by when that file no longer loads."""
        return {"file": self.settings.app_file, "environment": self.settings.app_environment}

    @handle("specs")
    def handle_specs(self, data: Any) -> list:
        """Every supervised service's Spec: what `up` compares an application file with."""
        return [asdict(child.spec) for child in list(self.children.values())]

    @handle("apply", post_only=True)
    def handle_apply(self, data: Any) -> list:
        """Supervise exactly these Specs (`up` run again): a changed one is restarted with its new
        settings, a new one started, a stopped one no longer listed forgotten; answers once each
        changed or new one is settled (ready, failed, blocked), with their status rows."""
        items = data.get("specs") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise ServiceFactoryError("apply takes {\"specs\": [...]}")
        try:
            specs = [Spec(**item) for item in items]
        except TypeError as exc:
            raise ServiceFactoryError(f"not a service spec: {exc}") from None
        if isinstance(data.get("file"), str):  # `up -f FILE --env NAME`: what a SIGHUP reads from now on
            environment = data.get("environment")
            self.settings.app_file = data["file"]
            self.settings.app_environment = environment if isinstance(environment, str) else None
        touched, rolled = self._call(lambda: self._apply(specs))
        deadline = time.monotonic() + sum(c.spec.stop_timeout for c in touched) + self.settings.ready_timeout + 1.0
        for child in touched:
            child.settled.wait(max(0.0, deadline - time.monotonic()))
        if rolled:
            self._roll(rolled, None)  # one instance at a time, each ready again before the next stops
        if not touched + rolled:
            return []  # nothing changed (status of no names would be every one's)
        return self.handle_status({"names": [c.spec.name for c in touched + rolled]})

    def _apply(self, specs: list[Spec]) -> tuple[list[Child], list[Child]]:
        """(the children to settle now: new ones, changed ones restarted at once; the running
        instances whose settings changed, to restart one at a time)."""
        specs = expand_instances(specs)
        wanted = {spec.name: spec for spec in specs}
        leftover = [name for name, child in self.children.items() if name not in wanted]
        running = [name for name in leftover if self.children[name].popen is not None]
        if running:
            raise ServiceFactoryError(f"stop {', '.join(running)} before applying a file without them")
        for name in leftover:
            child = self.children.pop(name)
            self._event(child, "no longer in the application: forgotten")
            child.log.close()
            self.registry.release(child.claim)
        touched, rolled = [], []
        for spec in specs:
            child = self.children.get(spec.name)
            if child is None:
                claim = self.registry.claim(spec.name)  # AlreadyRunning if another process holds it
                try:
                    log_path = Path(spec.log_file) if spec.log_file else self.registry.log_file(spec.name)
                    log = RotatingLog(log_path, self.settings.log_max_bytes, self.settings.log_backups)
                except BaseException:
                    self.registry.release(claim)
                    raise
                child = Child(spec, claim, log, on_change=self._publish)
                self.children[spec.name] = child
            elif asdict(child.spec) == asdict(spec):
                continue  # unchanged: not touched (same pid)
            elif dict(asdict(child.spec), instances=spec.instances) == asdict(spec):
                child.spec = spec  # only the number of its siblings changed: this one runs on (same pid)
                continue
            else:
                self._event(child, "settings changed: restarting it")
                child.spec = spec
                if spec.instance is not None and child.popen is not None:
                    rolled.append(child)
                    continue
            child.settled.clear()
            touched.append(child)
        for child in touched:
            # no process: started (or waiting) at once
            self._stop_child(child, restart=True, reason=Reason.CONFIG, detail="settings changed")
        return touched, rolled

    @handle("restart", post_only=True)
    def handle_restart(self, data: Any) -> list:
        """Stop (if running) and start the named services again; answers once they are ready (or not).
        With `"rolling": true`, one at a time: each is ready again before the next stops (the
        instances of a service keep answering throughout); a service that does not come back ends the roll."""
        children, timeout = self._request(data)
        if isinstance(data, dict) and data.get("rolling") is True:
            return self._roll(children, timeout)
        for child in children:
            child.settled.clear()
        self._call(lambda: [self._stop_child(child, restart=True, timeout=timeout) for child in children])
        deadline = time.monotonic() + (timeout or max(c.spec.stop_timeout for c in children)) \
            + self.settings.ready_timeout + 1.0
        for child in children:
            child.settled.wait(max(0.0, deadline - time.monotonic()))
        return self.handle_status({"names": [c.spec.name for c in children]})

    #: the address of the web dashboard this supervisor serves (run --dashboard-port), if any
    dashboard_url: str | None = None

    @handle("dashboard")
    def handle_dashboard(self, data: Any) -> str | None:
        """The address of the web dashboard this supervisor serves, or None."""
        return self.dashboard_url

    def _roll(self, children: list[Child], timeout: float | None, reason: Reason = Reason.MANUAL,
              detail: str = "") -> list:
        for child in children:
            child.settled.clear()
            self._call(lambda child=child: self._stop_child(child, restart=True, timeout=timeout, reason=reason,
                                                            detail=detail))
            child.settled.wait((timeout or child.spec.stop_timeout) + self.settings.ready_timeout + 1.0)
            if child.state != ServiceState.RUNNING:
                self._event(child, f"did not come back ({child.state.value}); the rolling restart stops here",
                            warn=True)
                break
        return self.handle_status({"names": [c.spec.name for c in children]})

    @handle("status")
    def handle_status(self, data: Any) -> list:
        """State, pid, restarts and last exit code of every supervised service."""
        names = (data or {}).get("names") if isinstance(data, dict) else None
        # read without the loop thread: it may be busy stopping (and waiting for this very answer)
        rows = []
        for child in self._children_named(names):
            running = child.state == ServiceState.RUNNING and child.ready_at is not None
            rows.append({"name": child.spec.name, "state": child.state.value, "pid": child.pid,
                         "restarts": child.restarts, "last_exit": child.last_exit,
                         "url": url_of(child) if child.state == ServiceState.RUNNING else None, "error": child.error,
                         "next_try": self._next_try(child),
                         "uptime": round(time.monotonic() - child.ready_at, 3) if running else None,
                         "started": round(child.ready_wall, 3) if running else None,
                         "last_reason": child.history[-1]["reason"] if child.history else None})
        return rows

    def _servicefactory_metric_families(self) -> Any:
        """Each supervised service's state, restarts, last exit code, backoff and uptime, for /metrics."""
        from servicefactory._metrics import supervised_families
        now = time.monotonic()
        rows = []
        for child in list(self.children.values()):
            due = RestartPolicy.due(child.state, child.next_start, child.retry_at)
            rows.append({"name": child.spec.name, "state": child.state.value, "restarts": child.restarts,
                         "last_exit": child.last_exit, "backoff": max(0.0, due - now) if due is not None else 0.0,
                         "uptime": now - child.ready_at if child.state == ServiceState.RUNNING
                         and child.ready_at is not None else 0.0})
        return supervised_families(rows, [state.value for state in ServiceState
                                          if state not in (ServiceState.STALE, ServiceState.UNKNOWN)])

    def _await_exit(self, children: list[Child], timeout: float | None = None) -> list:
        if not children:
            return []
        # stopped in dependency order: one after the other at worst
        deadline = time.monotonic() + sum(timeout or c.spec.stop_timeout for c in children) + 5.0
        for child in children:
            child.exited.wait(max(0.0, deadline - time.monotonic()))
        return self.handle_status({"names": [c.spec.name for c in children]})


class _hangup_ignored:
    """Start a process with SIGHUP ignored (an ignored signal stays ignored across exec): a SIGHUP
    before the service has put its handler in place (run() does, first thing) must not kill it.
    Our own SIGHUP handler is back as soon as the process is started."""

    def __enter__(self) -> None:
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def __exit__(self, *exc_info: Any) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGHUP, self.previous)


def run_supervisor(specs: list[Spec], settings: Settings, *, printer: Callable[..., None] | None = None,
                   ready_fd: int | None = None, registry: Registry | None = None) -> int:
    """Claim the names, run the supervisor until it stops, return its exit code."""
    supervisor = Supervisor(specs, settings, registry=registry, printer=printer, ready_fd=ready_fd)
    supervisor.claim_all()
    host = "127.0.0.1"
    shared = supervisor.registry.token() if supervisor.registry.many_hosts else None
    if shared:
        # a registry many hosts share, and the token every host has: `stop`/`restart` from another
        # host reach this control API with that token, so it listens beyond loopback and requires
        # it (published as no secret: etcd never holds a token); without one it stays on loopback
        host, supervisor.token = "0.0.0.0", shared
    dashboard = None
    try:
        if settings.dashboard_port is not None:
            from servicefactory.view.dashboard import serve

            # its token: the user's if set (the CLI requires one off loopback), else our control token
            dashboard = serve(supervisor.registry, supervisor.registry.token() or supervisor.token,
                              settings.dashboard_host or "127.0.0.1", settings.dashboard_port)
            supervisor.dashboard_url = f"{dashboard.url}/"
            logger.info("dashboard at %s (`servicefactory dashboard` prints it with its token)",
                        supervisor.dashboard_url)
        # never interrupted: its loop is what stops the children
        supervisor.run(name=supervisor.name, host=host, port=0, registry=supervisor.registry,
                       token=None if shared else supervisor.token, drain=supervisor.stop_children,
                       interruptible=False)
    except BaseException:
        supervisor.release_all()
        raise
    finally:
        if dashboard is not None:
            dashboard.stop()
    return supervisor.exit_code


class _OwnLog(logging.Handler):
    """A detached supervisor's own log, rotated as a service's is (same size and backups); its
    stdout and stderr follow the current file, so that even a crash's traceback lands there."""

    def __init__(self, path: str, settings: Settings) -> None:
        super().__init__()
        self.log = RotatingLog(path, settings.log_max_bytes, settings.log_backups)
        self.current: int | None = None
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s[%(process)d]: %(message)s"))
        self._follow()

    def _follow(self) -> None:
        fd = self.log.fileno()
        if fd is not None and fd != self.current:
            for target in (1, 2):
                os.dup2(fd, target)
            self.current = fd

    def emit(self, record: logging.LogRecord) -> None:
        """Write the record's line, rotating first if the file is full."""
        try:
            line = self.format(record) + "\n"
            with self.lock:
                sys.stdout.flush()
                self.log.write(line.encode(errors="replace"))
                self._follow()
        except Exception:
            self.handleError(record)

    def reopen(self) -> None:
        """After logrotate moved the file: write to a new one at the path."""
        with self.lock:
            self.log.reopen()
            self._follow()


_own_log: _OwnLog | None = None


def daemon_main() -> int:
    """Entry of a detached supervisor: `python -m servicefactory.supervise.supervisor SPEC_JSON`."""
    ready = os.environ.pop(READY_FD_ENV, None)
    ready_fd = int(ready) if ready and ready.isdigit() else None
    config = json.loads(sys.argv[1])
    specs = [Spec(**spec) for spec in config["specs"]]
    settings = Settings(**config["settings"])
    global _own_log
    if config.get("log_path"):
        try:
            _own_log = _OwnLog(config["log_path"], settings)
        except (OSError, ServiceFactoryError) as exc:
            print(f"cannot rotate {config['log_path']}: {exc}", flush=True)  # it still goes to stdout
    if _own_log is not None:
        logging.basicConfig(level=logging.INFO, handlers=[_own_log])
    else:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s[%(process)d]: %(message)s",
                            stream=sys.stdout)
    try:
        return run_supervisor(specs, settings, ready_fd=ready_fd)
    except ServiceFactoryError as exc:
        if ready_fd is not None:
            os.write(ready_fd, to_line(StartupReport(ready=False, error=str(exc), type=type(exc).__name__,
                                                     exit_code=exc.exit_code)))
        logger.error("%s", exc)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(daemon_main())
