"""The service lifecycle: claim the name, bind the API, loop until asked to stop, finalize once."""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import namedtuple
from typing import Any, Callable, Mapping

from servicefactory.supervise import _notify
from servicefactory._logging import ensure_default_output, service_logger
from servicefactory.http._guard import MIN_TOKEN_BITS, token_bits, weak_token_message
from servicefactory._names import is_loopback, is_loopback_address
from servicefactory.supervise._states import RESTART_POLICIES
from servicefactory.supervise._protocol import REUSE_PORT_ENV, SUPERVISED_ENV, StopReason  # SUPERVISED_ENV: the supervisor sets it to the child's name
from servicefactory.api import DEFAULT_MAX_BODY, Action, collect_actions, handle
from servicefactory._metrics import Counters
from servicefactory.errors import AlreadyRunning, ServiceFactoryError, StartupError, StateError, TokenRequired

logger = logging.getLogger(__name__)

#: how long a loop() that ignores the stop request may run on before it is interrupted
STOP_GRACE = 0.05
#: the framework's own names on a service class; a user's method of the same name would break them
RESERVED = frozenset({"run", "log", "sleep", "stop", "stopping", "perform", "address"})

SERVERS = ("builtin", "werkzeug")
#: the most instances of one service one supervisor runs
MAX_INSTANCES = 64


class Endpoint(namedtuple("Endpoint", "port host name max_body workers require_token server allow_users tls",
                          defaults=(0, "127.0.0.1", None, DEFAULT_MAX_BODY, 16, False, "builtin", (), None))):
    """Where and how a service class exposes its API."""

    __slots__ = ()


def endpoint(port: int = 0, host: str = "127.0.0.1", *, name: str | None = None,
             max_body: int = DEFAULT_MAX_BODY, workers: int = 16, require_token: bool = False,
             server: str = "builtin", allow_users: Any = (),
             tls: tuple[str, str] | None = None) -> Callable[[type], type]:
    """Class decorator: serve the class's actions over HTTP/JSON on host:port (0 picks a free port).

    On loopback only the service's own user and root may call it; `allow_users=["alice", 1001]`
    (names or uids) lets those users in too, as a token does. `tls=(certfile, keyfile)` serves
    HTTPS only (PEM files, read at start; `run --tls-cert/--tls-key` override them): what an
    off-host bind needs so that its token is not readable on the wire.
    """
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer from 0 to 65535, not {port!r}")
    if server not in SERVERS:
        raise ValueError(f"server must be one of {', '.join(SERVERS)}, not {server!r}")
    if isinstance(allow_users, (str, int)):
        allow_users = (allow_users,)
    allow_users = tuple(allow_users)
    if not all(isinstance(user, (str, int)) and not isinstance(user, bool) for user in allow_users):
        raise ValueError(f"allow_users takes user names or uids, not {allow_users!r}")
    if tls is not None:
        if (not isinstance(tls, (tuple, list)) or len(tls) != 2
                or not all(isinstance(path, (str, os.PathLike)) and str(path) for path in tls)):
            raise ValueError(f"tls takes (certfile, keyfile), not {tls!r}")
        tls = (os.fspath(tls[0]), os.fspath(tls[1]))

    def apply(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, ServiceBase)):
            raise TypeError("Service.API.endpoint decorates subclasses of Service.base")
        cls._servicefactory_endpoint = Endpoint(port, host, name, max_body, workers, require_token, server,
                                                allow_users, tls)
        return cls

    return apply




class Policy(namedtuple("Policy", "restart stop_timeout backoff_max max_loop_errors watchdog max_memory instances",
                        defaults=("on-failure", 10.0, None, 10, None, None, None))):
    """How a supervisor treats a service: restart policy, stop timeout, longest restart delay, how
    many loop() errors in a row make it unhealthy (then restarted like a crash), the watchdog period
    (seconds its loop may go without progress), its memory limit (bytes, with its descendants), and
    how many instances (processes) of it to run (None: one, under the plain name)."""

    __slots__ = ()


def policy(*, restart: str = "on-failure", stop_timeout: float = 10.0, backoff_max: float | None = None,
           max_loop_errors: int = 10, watchdog: float | None = None,
           max_memory: int | str | None = None, instances: int | None = None) -> Callable[[type], type]:
    """Class decorator: the restart policy (`on-failure`, `always`, `no`), stop timeout, cap of the
    doubling restart delay (default: the supervisor's `--backoff-max`), the number of consecutive
    loop() errors after which the service is `unhealthy` (0: never) under supervision, `watchdog`
    (seconds: a loop that makes no progress for that long is restarted), `max_memory` (`"200M"`:
    above it, with its descendants, the service is restarted) and how many `instances` `servicefactory
    run` starts (`Test/1` ... `Test/N`; `run --instances` overrides it)."""
    if restart not in RESTART_POLICIES:
        raise ValueError(f"restart must be one of {', '.join(RESTART_POLICIES)}, not {restart!r}")
    if not 0 < stop_timeout < float("inf"):  # nan fails the comparison too
        raise ValueError("stop_timeout must be a positive number of seconds")
    if backoff_max is not None and not 0 < backoff_max < float("inf"):
        raise ValueError("backoff_max must be a positive number of seconds")
    if not isinstance(max_loop_errors, int) or max_loop_errors < 0:
        raise ValueError("max_loop_errors must be a whole number, 0 or more")
    if watchdog is not None and (isinstance(watchdog, bool) or not 0.1 <= watchdog <= 86400):
        raise ValueError("watchdog must be a number of seconds from 0.1 to a day")
    if max_memory is not None:
        from servicefactory.supervise._limits import parse_size
        max_memory = parse_size(max_memory)
    if instances is not None and (not isinstance(instances, int) or isinstance(instances, bool)
                                  or not 1 <= instances <= MAX_INSTANCES):
        raise ValueError(f"instances must be a whole number from 1 to {MAX_INSTANCES}")

    def apply(cls: type) -> type:
        cls._servicefactory_policy = Policy(restart, float(stop_timeout),
                                            None if backoff_max is None else float(backoff_max), max_loop_errors,
                                            None if watchdog is None else float(watchdog), max_memory,
                                            instances)
        return cls

    return apply


class Description(namedtuple("Description", "name endpoint actions policy")):
    """A service class as the CLI and tools see it: its registry name, its Endpoint (None: no API),
    its actions by name (the built-in ones too) and its Policy."""

    __slots__ = ()


def describe(cls: type) -> Description:
    """The one public description of service class `cls`: nothing outside this module reads its
    private attributes."""
    if not (isinstance(cls, type) and issubclass(cls, ServiceBase)):
        raise TypeError(f"{cls!r} is not a subclass of Service.base")
    return Description(cls._servicefactory_name(), cls._servicefactory_endpoint, cls._servicefactory_actions,
                       cls._servicefactory_policy)


def is_ready(service: "ServiceBase") -> bool:
    """Whether `service` runs and is ready: its API answers and its record is published."""
    runtime = service._servicefactory_runtime
    return runtime is not None and runtime.ready.is_set()


class _Interrupted(BaseException):
    """Raised inside loop() to cut short a loop that did not return after a stop request."""


class _Runtime:
    """Everything a running service keeps, out of the user's namespace."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.log = service_logger(name)
        self.stop_event = threading.Event()
        self.stop_reason: StopReason | None = None
        self.stop_detail = ""  # the signal's or exception's name, for people
        self.lock = threading.Lock()
        self.loop_holds_lock = False
        self.loop_thread = 0
        self.loop_tid = 0  # the kernel's id of the same thread, for its scheduler statistics
        self.in_loop = False
        self.interrupt_due = False
        self.nudging = False
        self.in_self_sleep = False
        self.iterations = 0
        self.errors = 0
        self.errors_in_a_row = 0
        self.unhealthy = False  # loop() raised max_loop_errors times in a row
        self.last_error: str | None = None
        self.started_monotonic = time.monotonic()
        self.counters = Counters()  # calls (counted by the App) and loop iterations: health and /metrics
        self.server: Any = None
        self.stop_watcher: threading.Thread | None = None  # watch_stop(), in the main thread's service only
        self.loop_done = threading.Event()
        self.announced = threading.Event()
        self.ready = threading.Event()
        self.interruptible = True
        self.drain: Callable[[], None] | None = None  # run() calls it after the loop, before the API stops
        self.exit_request: SystemExit | None = None
        self.heartbeat = _notify.Heartbeat()  # the watchdogs (supervisor's, systemd's) hear the loop's progress
        self.reloadable = False  # the service defines reload(): SIGHUP calls it instead of stopping
        self.supervised = os.environ.get(SUPERVISED_ENV) == name  # SIGHUP: restarted by the supervisor
        self.reload_event = threading.Event()
        self.interrupts = 0  # SIGINTs received: a second one in a foreground supervisor kills at once

    def request_stop(self, reason: StopReason, detail: str = "", *, from_signal: bool = False) -> bool:
        """Ask the service to stop; True the first time. Safe from any thread or a signal handler."""
        if self.stop_event.is_set():
            return False
        self.stop_reason, self.stop_detail = reason, detail
        if not from_signal:  # a signal handler must not log: it may interrupt a write to the same stream
            self.log.info("shutdown requested")
            self.announced.set()
        self.stop_event.set()
        return True

    def watch_stop(self) -> None:
        """Thread body: announce a signalled stop, then interrupt a loop() that does not return by itself."""
        self.stop_event.wait()
        if not self.announced.is_set():
            self.log.info("shutdown requested")
            self.announced.set()
        if not self.interruptible:
            return
        # a loop blocked in a call (time.sleep, a socket) is cut short at once; a loop busy computing
        # gets STOP_GRACE of its own progress to finish its iteration: time it ran or waited for a CPU,
        # not wall time, so that on a loaded machine a busy iteration is not taken for a stuck one.
        # Nudge again and again: one nudge can land between two calls of loop(), or be swallowed by
        # a bare `except:` in the user's code
        start = self._progress()
        wall_deadline = time.monotonic() + (STOP_GRACE if start is None else 20 * STOP_GRACE)
        while not self.loop_done.is_set():
            progress = self._progress()
            overstayed = time.monotonic() >= wall_deadline or (
                progress is not None and start is not None and progress - start >= STOP_GRACE)
            if self.in_loop and not self.in_self_sleep and (overstayed or self._loop_idle()):
                self.interrupt_due = True
                self.nudging = True
                try:
                    signal.pthread_kill(self.loop_thread, signal.SIGINT)
                except (ProcessLookupError, OSError):
                    return
            if self.loop_done.wait(STOP_GRACE if overstayed else 0.005):
                return

    def wait_beating(self, seconds: float) -> bool:
        """Wait for a stop up to `seconds` in the loop's thread, telling the watchdogs the loop lives
        (a loop pacing itself with self.sleep is making progress); True if a stop came."""
        every = self.heartbeat.every
        if every is None:
            return self.stop_event.wait(seconds)
        deadline = time.monotonic() + seconds
        while True:
            self.heartbeat.beat()
            left = deadline - time.monotonic()
            if left <= 0:
                return self.stop_event.is_set()
            if self.stop_event.wait(min(left, every)):
                return True

    def reloader(self, service: "ServiceBase") -> None:
        """Thread body: call service.reload() once per SIGHUP (coalesced), serialised with loop() as an
        exclusive handler is, and say how it went."""
        while True:
            self.reload_event.wait()
            if self.stop_event.is_set():
                return
            self.reload_event.clear()  # a SIGHUP from here on asks for one more reload
            with self.lock:
                if self.stop_event.is_set():
                    return
                try:
                    service.reload()  # type: ignore[attr-defined]
                except Exception as exc:
                    self.log.exception("reload() failed; running on with the old settings")
                    _notify.notify_reloaded(False, f"{type(exc).__name__}: {exc}")
                else:
                    self.log.info("reloaded")
                    _notify.notify_reloaded(True)

    def _progress(self) -> float | None:
        """Seconds the loop's thread has run or waited for a CPU (its schedstat), or None if unknown."""
        try:
            with open(f"/proc/self/task/{self.loop_tid}/schedstat", "rb") as f:
                ran, waited = f.read().split()[:2]
            return (int(ran) + int(waited)) / 1e9
        except (OSError, ValueError):
            return None

    def _loop_idle(self) -> bool:
        """Whether the loop's thread neither runs nor waits for a CPU (it waits in a call) over a few ms."""
        # two windows in a row: a computing thread can sit out one while it waits for the GIL
        for _ in range(2):
            before = self._progress()
            if before is None:
                return False  # cannot tell: the grace period decides
            time.sleep(0.003)
            after = self._progress()
            if after is None or after - before >= 0.0005:
                return False
        return True

    def on_signal(self, signum: int, frame: Any) -> None:
        """Signal handler: record the stop request; raise into loop() only when told to, or on a second signal.
        SIGHUP to a service that defines reload() asks for a reload instead."""
        if signum == signal.SIGHUP and self.reloadable and not self.stop_event.is_set():
            self.reload_event.set()  # the reloader thread calls reload(); a second HUP meanwhile: once more after
            return
        if signum == signal.SIGHUP and self.supervised:
            # no terminal hangs up on a supervised service: a SIGHUP asks for a reload, which for a
            # service without reload() is a restart by its supervisor
            self.request_stop(StopReason.RELOAD, "SIGHUP", from_signal=True)
            return
        nudge, self.nudging = self.nudging and signum == signal.SIGINT, False
        if signum == signal.SIGINT and not nudge:
            self.interrupts += 1
        first = False if nudge else self.request_stop(
            StopReason.SIGNAL, signal.Signals(signum).name, from_signal=True)
        if not (self.interruptible and self.in_loop) or self.in_self_sleep:
            return
        if self.interrupt_due or (not first and not nudge):
            self.interrupt_due = False
            raise _Interrupted()


class ServiceBase:
    """Base class of every service: implement loop(), optionally finalize(), expose actions."""

    _servicefactory_builtin = True
    _servicefactory_endpoint: Endpoint | None = None
    _servicefactory_policy: Policy = Policy()
    _servicefactory_actions: Mapping[str, Action] = {}
    _servicefactory_runtime: _Runtime | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_servicefactory_builtin" not in vars(cls):
            cls._servicefactory_builtin = False
            clashes = sorted(RESERVED.intersection(vars(cls)))
            if clashes:
                raise TypeError(f"{cls.__qualname__} defines {', '.join(clashes)}, reserved by "
                                f"servicefactory's Service.base; rename "
                                f"{'it' if len(clashes) == 1 else 'them'}")
        cls._servicefactory_actions = collect_actions(
            cls, lambda klass: getattr(klass, "_servicefactory_builtin", False))

    # -- what users implement --

    def loop(self) -> None:
        """One iteration of the service's work; called until the service stops."""
        self.sleep(3600)

    def finalize(self) -> None:
        """Release resources; runs once, in the main thread, after the loop and the API stopped."""

    # -- what users call --

    def log(self, message: Any, *args: Any, level: int = logging.INFO) -> None:
        """Log `message` as `<ServiceName> : <message>` (through stdlib logging)."""
        runtime = self._servicefactory_runtime
        target = runtime.log if runtime else service_logger(self._servicefactory_name())
        target.log(level, message, *args)

    def sleep(self, seconds: float) -> bool:
        """Wait `seconds`, returning at once (False) if the service is asked to stop; True otherwise."""
        runtime = self._servicefactory_runtime
        if runtime is None:
            time.sleep(seconds)
            return True
        if runtime.loop_holds_lock and threading.get_ident() == runtime.loop_thread:
            # exclusive handlers run while the loop sleeps, not only between iterations
            # in_loop off while the lock changes hands: an interrupt there would leave it inconsistent
            runtime.in_loop = False
            runtime.lock.release()
            runtime.loop_holds_lock = False
            runtime.in_loop = True
            runtime.in_self_sleep = True
            try:
                return not runtime.wait_beating(seconds)
            finally:
                runtime.in_self_sleep = False
                runtime.in_loop = False
                runtime.lock.acquire()
                runtime.loop_holds_lock = True
                runtime.in_loop = True
        if threading.get_ident() == runtime.loop_thread:
            return not runtime.wait_beating(seconds)
        return not runtime.stop_event.wait(seconds)

    def stop(self) -> None:
        """Ask the running service to stop (from any thread); run() then finalizes and returns."""
        runtime = self._servicefactory_runtime
        if runtime is not None:
            runtime.request_stop(StopReason.CALL)

    @property
    def stopping(self) -> bool:
        """Whether a stop has been requested."""
        runtime = self._servicefactory_runtime
        return runtime is not None and runtime.stop_event.is_set()

    @property
    def address(self) -> tuple[str, int] | None:
        """The API's bound (host, port) while it runs (the real port when configured with 0)."""
        runtime = self._servicefactory_runtime
        server = runtime.server if runtime else None
        return (server.host, server.port) if server else None

    @classmethod
    def perform(cls, action: str, data: Any = None, *, timeout: float = 10.0, name: str | None = None,
                session: Any = None, registry: Any = None, ca_file: str | None = None,
                instance: int | None = None) -> Any:
        """Call `action` with JSON `data` on the running service; return its result. A service run
        as several instances is called on each in turn; `instance=2` calls `Test/2` only.

        Over TLS (the record's or the endpoint's) the certificate is verified against `ca_file`."""
        from servicefactory.http import client
        endpoint_ = cls._servicefactory_endpoint
        fallback = (endpoint_.host, endpoint_.port) if endpoint_ and endpoint_.port else None
        name = name or cls._servicefactory_name()
        if instance is not None:
            from servicefactory.registry.base import instance_id
            name = instance_id(name, instance)
        return client.default.perform(name, action, data, timeout=timeout,
                                      registry=registry, fallback=fallback, session=session,
                                      tls=bool(endpoint_ and endpoint_.tls), ca_file=ca_file)

    # -- built-in actions --

    @handle("shutdown", post_only=True)
    def _servicefactory_shutdown(self, data: Any) -> None:
        """Stop the service gracefully (answered before the process goes away)."""
        return None

    @handle("health", methods=("GET", "POST"))
    def _servicefactory_health(self, data: Any) -> dict:
        """Name, pid, state, uptime, loop iterations and errors, version, and the calls answered so far."""
        from servicefactory import __version__
        runtime = self._servicefactory_runtime
        assert runtime is not None
        return {
            "name": runtime.name, "pid": os.getpid(), "version": __version__,
            "state": "stopping" if runtime.stop_event.is_set() else "unhealthy" if runtime.unhealthy else "running",
            "uptime": round(time.monotonic() - runtime.started_monotonic, 3),
            "iterations": runtime.iterations, "errors": runtime.errors, "last_error": runtime.last_error,
            "last_good_iteration": _rounded(runtime.counters.last_good_age()),
            "counters": runtime.counters.totals(),
        }

    @handle("actions", methods=("GET", "POST"))
    def _servicefactory_list_actions(self, data: Any) -> list:
        """The actions this service exposes."""
        return [{"name": action.name, "doc": action.doc, "methods": list(action.methods)}
                for action in sorted(type(self)._servicefactory_actions.values(), key=lambda a: a.name)]

    # -- the lifecycle --

    @classmethod
    def _servicefactory_name(cls) -> str:
        endpoint_ = cls._servicefactory_endpoint
        return (endpoint_.name if endpoint_ and endpoint_.name else None) or cls.__name__

    def run(self, *, name: str | None = None, host: str | None = None, port: int | None = None,
            registry: Any = None, target: str = "", tls: tuple[str, str] | None = None,
            token: str | None = None, drain: Callable[[], None] | None = None, interruptible: bool = True) -> None:
        """Serve the API and call loop() until stopped (Ctrl+C, SIGTERM, `shutdown`, stop()); then finalize.

        `tls=(certfile, keyfile)` serves HTTPS, overriding the endpoint's own `tls`. `token` is the
        API token to require instead of the registry's; it is published as the name's secret (apart
        from the record), for this user's callers only. `drain` runs after the loop, while the API
        still answers (what calls in flight wait for). `interruptible=False` lets a loop() that
        overstays a stop request finish instead of being interrupted."""
        if self._servicefactory_runtime is not None:
            raise RuntimeError("this service instance is already running")
        runtime = _Runtime(name or self._servicefactory_name())
        runtime.interruptible = interruptible
        runtime.reloadable = callable(getattr(self, "reload", None))
        runtime.drain = drain
        self._servicefactory_runtime = runtime
        ensure_default_output()
        _line_buffer_stdout()
        # handlers first, before anything is bound: from the moment the port answers (when systemd,
        # docker or a test harness may send SIGTERM), every stop is graceful and runs finalize()
        main = threading.current_thread() is threading.main_thread()
        previous = _install_signals(runtime) if main else None
        try:
            with _Registration(runtime, registry, target, token) as registration:
                self._start_api(runtime, registration, host, port, tls)
                registration.publish(self, runtime)
                server = runtime.server
                _notify.notify_ready(name=runtime.name, pid=os.getpid(), url=registration.url,
                                     host=server.host if server else None, port=server.port if server else None,
                                     tls=bool(server and getattr(server, "ssl_context", None)),
                                     reload=runtime.reloadable)
                runtime.ready.set()
                self._servicefactory_serve(runtime, main)
        except (StartupError, AlreadyRunning) as exc:
            _notify.notify_failed(exc)
            _report_uncaught_in_one_line(exc)
            raise
        finally:
            if previous is not None:
                _restore_signals(previous)
            self._servicefactory_runtime = None

    def _start_api(self, runtime: _Runtime, registration: "_Registration", host: str | None,
                   port: int | None, tls: tuple[str, str] | None = None) -> None:
        endpoint_ = type(self)._servicefactory_endpoint
        if endpoint_ is None and host is None and port is None:
            return
        endpoint_ = endpoint_ or Endpoint()
        from servicefactory.api import App
        from servicefactory.http.server import Server, bind
        host = host if host is not None else endpoint_.host
        port = port if port is not None else endpoint_.port
        token = registration.token()
        loopback = is_loopback(host)  # resolved: every address the name stands for is loopback
        if not loopback:
            try:
                socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            except (socket.gaierror, UnicodeError) as exc:  # say so, rather than ask for a token
                raise StartupError(f"cannot resolve host {host!r}: {getattr(exc, 'strerror', exc)}") from None
        if not loopback and not token:
            raise TokenRequired(
                f"{runtime.name} would bind {host}:{port}, reachable from other hosts, without a token; "
                f"set SERVICEFACTORY_TOKEN or write one to {registration.token_path()} (mode 0600)")
        if endpoint_.require_token and not token:
            raise TokenRequired(f"{runtime.name} requires a token; set SERVICEFACTORY_TOKEN")
        if token and token_bits(token) < MIN_TOKEN_BITS:
            raise TokenRequired(weak_token_message(_token_source(registration)))
        allowed_uids = _allowed_uids(endpoint_.allow_users)
        tls = tls or endpoint_.tls
        context = None
        if tls:
            if endpoint_.server != "builtin":
                raise StartupError(f"{runtime.name}: TLS needs the builtin server, not {endpoint_.server!r}")
            from servicefactory.http._tls import exposed_key, server_context
            context = server_context(*tls)  # before binding: a bad file is one line, nothing was bound
            exposure = exposed_key(tls[1])
            if exposure:
                runtime.log.warning("%s", exposure)
        elif not loopback:
            runtime.log.warning("serving %s:%s off-host over plain HTTP: the token is readable on the wire; "
                                "serve TLS (--tls-cert/--tls-key or endpoint(tls=...))", host, port)
        # one of several instances: a fixed port is shared (SO_REUSEPORT), the kernel spreads connections
        sock = bind(host, port, reuse_port=bool(port) and os.environ.get(REUSE_PORT_ENV) == "1")
        local = sock.getsockname()[:2]
        if loopback and not is_loopback_address(local[0]):
            # the name resolved to loopback a moment ago, yet the socket is not: refuse, token-less
            sock.close()
            raise TokenRequired(f"{runtime.name} bound {host}:{port} as {local[0]}, which is not loopback; "
                                f"set SERVICEFACTORY_TOKEN to serve it off-host")
        app = App(self, type(self)._servicefactory_actions, max_body=endpoint_.max_body, token=token,
                  require_token=endpoint_.require_token or not loopback, bound_host=host,
                  local_address=local, allowed_uids=allowed_uids, exclusive_lock=runtime.lock,
                  on_shutdown=lambda: runtime.request_stop(StopReason.ACTION), name=runtime.name,
                  counters=runtime.counters)
        if endpoint_.server == "werkzeug":
            from servicefactory.http._werkzeug import WerkzeugServer
            runtime.server = WerkzeugServer(app, sock)
        else:
            runtime.server = Server(app, sock, max_workers=endpoint_.workers, max_body=endpoint_.max_body,
                                    ssl_context=context)
        runtime.server.start()

    def _servicefactory_serve(self, runtime: _Runtime, main: bool) -> None:
        if main:
            runtime.stop_watcher = threading.Thread(target=runtime.watch_stop, daemon=True, name="servicefactory-stop")
            runtime.stop_watcher.start()
        if runtime.reloadable:
            threading.Thread(target=runtime.reloader, args=(self,), daemon=True, name="servicefactory-reload").start()
        try:
            self._servicefactory_loop(runtime)
        finally:
            runtime.loop_done.set()
            runtime.stop_event.set()
            runtime.reload_event.set()  # the reloader sees the stop and ends
            _notify.notify_stopping(runtime.stop_reason or StopReason.ENDED, runtime.stop_detail)
            if runtime.stop_watcher is not None:
                runtime.stop_watcher.join(1.0)  # it announces a signalled stop: before finalize's own lines
            if runtime.drain is not None:
                runtime.drain()
            if runtime.server is not None:
                runtime.server.stop()
            try:
                self.finalize()
            except (Exception, _Interrupted):
                runtime.log.exception("finalize() failed")
        if runtime.exit_request is not None:
            raise runtime.exit_request

    def _servicefactory_loop(self, runtime: _Runtime) -> None:
        runtime.loop_thread = threading.get_ident()
        runtime.loop_tid = threading.get_native_id()
        backoff = 0.0
        while not runtime.stop_event.is_set():
            began = time.perf_counter()
            try:
                try:
                    runtime.lock.acquire()
                    runtime.loop_holds_lock = True
                    if runtime.stop_event.is_set():
                        break  # asked to stop while an exclusive handler held the lock
                    runtime.in_loop = True
                    began = time.perf_counter()
                    self.loop()
                    runtime.counters.iteration(time.perf_counter() - began, True)
                finally:
                    runtime.in_loop = False
                    if runtime.loop_holds_lock:
                        runtime.loop_holds_lock = False
                        runtime.lock.release()
                runtime.iterations += 1
                runtime.heartbeat.beat()  # from the loop's own thread: a stuck loop() stops the pings
                backoff = 0.0
                runtime.errors_in_a_row = 0
                runtime.unhealthy = False
            except _Interrupted:
                break
            except (KeyboardInterrupt, SystemExit) as exc:
                runtime.request_stop(StopReason.EXIT, type(exc).__name__)
                if isinstance(exc, SystemExit):
                    runtime.exit_request = exc  # the user's exit code survives the graceful stop
                break
            except Exception as exc:
                runtime.counters.iteration(time.perf_counter() - began, False)
                runtime.errors += 1
                runtime.errors_in_a_row += 1
                runtime.last_error = f"{type(exc).__name__}: {exc}"
                backoff = min(30.0, backoff * 2 if backoff else 0.5)
                runtime.log.exception("loop() raised; calling it again in %.1f s", backoff)
                limit = type(self)._servicefactory_policy.max_loop_errors
                if limit and runtime.errors_in_a_row >= limit and not runtime.unhealthy:
                    # running -> unhealthy: a loop that fails every time is down, though the process lives
                    runtime.unhealthy = True
                    runtime.log.error("unhealthy: loop() raised %d times in a row", runtime.errors_in_a_row)
                    _notify.notify_unhealthy(runtime.errors_in_a_row, runtime.last_error)
                try:
                    runtime.wait_beating(backoff)  # a failing loop still runs: the watchdog leaves it to max_loop_errors
                except _Interrupted:
                    break


class _Registration:
    """The service's entry in the registry, for as long as run() lasts."""

    def __init__(self, runtime: _Runtime, registry: Any, target: str, token: str | None = None) -> None:
        self.runtime = runtime
        self.target = target
        self.own_token = token
        self.registry = registry
        self.claim: Any = None
        self.url: str | None = None

    def __enter__(self) -> "_Registration":
        if self.registry is None:
            from servicefactory.registry.backends import default_registry
            self.registry = default_registry()
        if os.environ.get(SUPERVISED_ENV) == self.runtime.name:
            return self  # the supervisor holds the name and publishes what we report on the ready pipe
        try:
            self.claim = self.registry.claim(self.runtime.name)
        except StateError as exc:
            self.runtime.log.warning("not registered, the CLI will not see this service: %s", exc)
        return self

    def token(self) -> str | None:
        if self.own_token is not None:
            return self.own_token
        try:
            return self.registry.token()
        except StateError as exc:
            raise StartupError(str(exc)) from None

    def token_path(self) -> str:
        return self.registry.token_hint()

    def publish(self, service: ServiceBase, runtime: _Runtime) -> None:
        from servicefactory.registry.base import ServiceRecord
        from servicefactory.registry.local import process_start_time
        server = runtime.server
        record = ServiceRecord(
            name=runtime.name, pid=os.getpid(), host=server.host if server else None,
            port=server.port if server else None, create_time=process_start_time(os.getpid()) or 0.0,
            started=time.time(), target=self.target or f"{type(service).__module__}:{type(service).__qualname__}",
            hostname=socket.gethostname(), stop_timeout=type(service)._servicefactory_policy.stop_timeout,
            tls=bool(server and getattr(server, "ssl_context", None)), reloadable=runtime.reloadable)
        self.url = record.url
        if self.claim is not None:
            try:
                if self.own_token is not None:  # before the record: whoever finds it can call at once
                    self.registry.publish_secret(self.claim, self.own_token)
                self.registry.publish(self.claim, record)
            except OSError as exc:
                runtime.log.warning("could not write metadata: %s", exc)

    def __exit__(self, *exc_info: Any) -> None:
        if self.claim is not None:
            self.registry.release(self.claim)


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def _allowed_uids(users: tuple) -> frozenset[int]:
    """The uids that may call a loopback service without a token: its own, root's, and `users`."""
    import pwd

    uids = {os.geteuid(), 0}
    for user in users:
        if isinstance(user, int):
            uids.add(user)
            continue
        try:
            uids.add(pwd.getpwnam(user).pw_uid)
        except KeyError:
            raise StartupError(f"allow_users names {user!r}, which is not a user on this host") from None
    return frozenset(uids)


def _token_source(registration: "_Registration") -> str:
    return "$SERVICEFACTORY_TOKEN" if os.environ.get("SERVICEFACTORY_TOKEN", "").strip() else registration.token_path()


def _install_signals(runtime: _Runtime) -> dict:
    previous = {}
    # SIGHUP too: a terminal closing or an ssh session dropping should finalize, not kill outright
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        previous[signum] = signal.signal(signum, runtime.on_signal)
    return previous


def _restore_signals(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _line_buffer_stdout() -> None:
    # a service's output goes to logs and pipes: hold back no line, as a terminal would not
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None and not getattr(sys.stdout, "line_buffering", True):
        try:
            reconfigure(line_buffering=True)
        except (ValueError, OSError):
            pass


def _report_uncaught_in_one_line(error: ServiceFactoryError) -> None:
    """If nobody catches `error`, print one line instead of a traceback (the script then exits 1)."""
    previous = sys.excepthook

    def hook(kind: type, value: BaseException, tb: Any) -> None:
        if value is error:
            sys.stderr.write(f"error: {value}\n")
        else:
            previous(kind, value, tb)

    sys.excepthook = hook
