"""The `servicefactory` command: run services, call them, and stop them.

Commands import what they need inside their bodies, so `perform`, `status` and `stop` start fast.
Only the CLI turns errors into messages and exit codes (servicefactory.cli.common.fail).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from servicefactory import __version__
from servicefactory.supervise._states import RESTART_POLICIES
from servicefactory.cli import app as _app
from servicefactory.cli import fast as _fast
from servicefactory.cli.common import CommandFailed, Group
from servicefactory.cli.common import host_option as _host_option
from servicefactory.cli.common import registry as _registry
from servicefactory.errors import ServiceFactoryError



def _exit_codes_help() -> str:
    """errors.EXIT_CODES in two columns, for the group's help (no `\\b`-block line is rewrapped)."""
    import textwrap

    from servicefactory.errors import EXIT_CODES

    codes = list(EXIT_CODES.items())
    half = len(codes) // 2  # the left column: codes 0-4, wrapped; the right one: the rest, a line each
    left = [line for code, meaning in codes[:half]
            for line in textwrap.wrap(f"  {code}  {meaning}", 30, subsequent_indent="     ")]
    right = [f"{code:>2}  {meaning}" for code, meaning in codes[half:]]
    rows = [f"{a:<32}{b}".rstrip() for a, b in zip(left + [""] * len(right), right + [""] * len(left))]
    return "\b\nExit codes:\n" + "\n".join(row for row in rows if row.strip()) + "\n"


EXIT_CODES = _exit_codes_help()


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES)
@click.version_option(__version__, "--version", "-V", prog_name="servicefactory")
@click.option("-f", "--file", "app_file", metavar="FILE",
              help="An application file (servicefactory.toml): status, logs, stop, restart, up and down act "
                   "on the services it declares.")
@click.pass_context
def cli(ctx: click.Context, app_file: str | None) -> None:
    """Run, call, supervise and stop servicefactory services.

    \b
    Example:
      servicefactory run mymodule:Test
      servicefactory perform Test action '"hi"'
      servicefactory stop Test
    """
    if app_file is not None:
        ctx.meta[_app.FILE_META] = app_file


# -- run -----------------------------------------------------------------------------------

class _Seconds(click.FloatRange):
    """A number of seconds: at least `min`, at most a year, never inf or nan (a deadline must come)."""

    name = "seconds"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        number = super().convert(value, param, ctx)
        if not number <= 365 * 86400:  # nan fails every comparison
            self.fail(f"{value!r} is not a number of seconds from {self.min:g} to one year", param, ctx)
        return number


class _Setting(click.Option):
    """A `run` option whose default is the supervisor Settings field of its name: the Settings own
    the defaults (read when needed, so that loading the CLI loads no supervisor module)."""

    def get_default(self, ctx: click.Context, call: bool = True) -> Any:
        """The Settings field's default."""
        from servicefactory.supervise._supervised import Settings

        return getattr(Settings, self.name)


class _Size(click.ParamType):
    """A memory size: 200M, 1.5G, 512K or a number of bytes (powers of 1024)."""

    name = "size"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, int):
            return value
        from servicefactory.supervise._limits import parse_size
        try:
            return parse_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _instance_option(function: Any) -> Any:
    """`--instance K`: the command acts on instance K of the service named (NAME/K) only."""
    return click.option("--instance", type=click.IntRange(1, 999999), metavar="K",
                        help="Only instance K of the service (NAME/K); by default every instance.")(function)


def _expand(names: tuple[str, ...], instance: int | None, registry: Any) -> list[str]:
    """The names a command acts on: a service run as instances stands for each of them."""
    from servicefactory.supervise import control

    if instance is not None and len(names) != 1:
        raise CommandFailed("--instance K goes with exactly one service name", 2)
    if instance is not None and "/" in names[0]:
        raise CommandFailed(f"{names[0]} names an instance already; drop --instance", 2)
    return control.expand(list(names), registry, instance)


SECONDS = _Seconds(min=0)
SECONDS_FROM_0_1 = _Seconds(min=0.1)
SECONDS_FROM_0_01 = _Seconds(min=0.01)


@cli.command(epilog="""\b
Examples:
  servicefactory run TestService:Test             # foreground; Ctrl+C stops it
  servicefactory run mymodule --daemon            # every service in mymodule.py, detached
  servicefactory run path/to/app.py:Api --port 0  # a free port; perform finds it
  servicefactory run mymodule:Api --instances 4 --port 8000 -d  # Api/1 ... Api/4 share port 8000
""")
@click.argument("targets", nargs=-1, required=True)
@click.option("--daemon", "-d", is_flag=True, help="Detach; return once every service is ready.")
@click.option("--name", help="Run under this name instead of the class name (one service only).")
@click.option("--host", callback=_host_option, help="Bind the API to this address (one service only).")
@click.option("--port", type=click.IntRange(0, 65535), help="Bind the API to this port; 0 picks a free one.")
@click.option("--log-file", type=click.Path(dir_okay=False), help="Write the service's output here (one service only).")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              help="Level of the services' log output (default INFO).")
@click.option("--restart", type=click.Choice(RESTART_POLICIES),
              help="Restart policy (default: the class's Service.policy, else on-failure).")
@click.option("--stop-timeout", type=SECONDS_FROM_0_1, help="Seconds a stop may take before SIGKILL.")
@click.option("--max-failures", cls=_Setting, type=click.IntRange(min=1), show_default=True,
              help="Fast failures in a row before a service is left failed.")
@click.option("--backoff", cls=_Setting, type=SECONDS_FROM_0_01, show_default=True,
              help="First restart delay in seconds; doubles per fast failure, up to --backoff-max.")
@click.option("--backoff-max", type=SECONDS_FROM_0_01, default=None,
              help="Longest restart delay in seconds (default: the class's policy, else 60).")
@click.option("--retry-failed-after", cls=_Setting, type=SECONDS, show_default=True,
              help="Seconds after which a failed service is tried again; 0 leaves it failed.")
@click.option("--ready-timeout", cls=_Setting, type=SECONDS_FROM_0_1, show_default=True,
              help="Seconds a service may take to become ready.")
@click.option("--log-max-bytes", cls=_Setting, type=click.IntRange(min=1024), show_default=True,
              help="Rotate a service's log file past this size.")
@click.option("--log-backups", cls=_Setting, type=click.IntRange(min=0), show_default=True,
              help="Rotated log files kept per service.")
@click.option("--tls-cert", type=click.Path(dir_okay=False), metavar="FILE",
              help="Serve the API over TLS with this certificate (PEM, with its chain); needs --tls-key.")
@click.option("--tls-key", type=click.Path(dir_okay=False), metavar="FILE",
              help="The TLS certificate's private key (PEM).")
@click.option("--max-memory", type=_Size(), metavar="SIZE",
              help="Restart a service whose memory (with its descendants) exceeds SIZE (200M, 1.5G) "
                   "[default: the class's Service.policy(max_memory)].")
@click.option("--watchdog", type=SECONDS_FROM_0_1,
              help="Restart a service whose loop makes no progress for this many seconds "
                   "[default: the class's Service.policy(watchdog)].")
@click.option("--dashboard-port", type=click.IntRange(0, 65535),
              help="Serve the web dashboard on this port too (0: a free one); `servicefactory dashboard` "
                   "prints its address.")
@click.option("--dashboard-host", callback=_host_option,
              help="Bind the dashboard to this address (default 127.0.0.1; off loopback only with a token).")
@click.option("--watch", is_flag=True,
              help="Development: restart a service when a .py file under its directory changes.")
@click.option("--watch-ignore", multiple=True, metavar="PATTERN",
              help="With --watch: ignore files matching this glob (repeatable; .venv, __pycache__, .git always are).")
@click.option("--instances", type=click.IntRange(1, 64), metavar="N",
              help="Run N processes of each service, NAME/1 ... NAME/N (default: the class's "
                   "Service.policy(instances=), else one, as NAME); a fixed port is shared (SO_REUSEPORT).")
@click.option("--first-instance", type=click.IntRange(1, 999999), metavar="K",
              help="With --instances N: number them K ... K+N-1 (another host runs the others, through "
                   "a registry many hosts share).")
def run(targets: tuple[str, ...], daemon: bool, name: str | None, host: str | None, port: int | None,
        log_file: str | None, log_level: str | None, restart: str | None, stop_timeout: float | None,
        max_failures: int, backoff: float, backoff_max: float | None, retry_failed_after: float,
        ready_timeout: float, log_max_bytes: int, log_backups: int, tls_cert: str | None = None,
        tls_key: str | None = None, max_memory: int | None = None, watchdog: float | None = None,
        dashboard_port: int | None = None, dashboard_host: str | None = None,
        watch: bool = False, watch_ignore: tuple[str, ...] = (), instances: int | None = None,
        first_instance: int | None = None) -> None:
    """Run services (TARGET: module, module:Class, file.py or file.py:Class), each in its own process."""
    from servicefactory.cli import running
    from servicefactory.supervise.supervisor import Settings

    specs = running.specs(targets, name, host, port, log_file, restart, stop_timeout, instances, first_instance)
    running.apply_tls(specs, tls_cert, tls_key)
    registry = _registry()
    running.check_free(specs, registry)
    if log_level:
        os.environ["SERVICEFACTORY_LOG_LEVEL"] = log_level.upper()
    if backoff_max is not None:  # given on the command line: it wins over every class's policy
        for spec in specs:
            spec.backoff_max = backoff_max
    for spec in specs:  # so do these
        spec.max_memory = max_memory or spec.max_memory
        spec.watchdog = watchdog or spec.watchdog
    if dashboard_host is not None and dashboard_port is None:
        raise CommandFailed("--dashboard-host goes with --dashboard-port", 2)
    if dashboard_port is not None:
        from servicefactory.cli.dashboard import check_bind
        check_bind(dashboard_host if dashboard_host is not None else "127.0.0.1", registry)
    settings = Settings(backoff=backoff, max_failures=max_failures, ready_timeout=ready_timeout,
                        log_max_bytes=log_max_bytes, log_backups=log_backups, foreground=not daemon,
                        retry_failed_after=retry_failed_after, dashboard_port=dashboard_port,
                        dashboard_host=dashboard_host, watch=watch, watch_ignored=tuple(watch_ignore))
    if daemon:
        running.run_daemon(specs, settings, registry)
    else:
        running.run_foreground(specs, settings, registry)


# -- perform -------------------------------------------------------------------------------

class _Seconds(click.ParamType):
    """Seconds from 0.001 to `upper`: what fast.parse_seconds accepts (no nan, inf, 0 or negative)."""

    name = "seconds"

    def __init__(self, upper: float) -> None:
        self.upper = upper

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value  # a default, or the value of `--wait` given alone
        try:
            return _fast.parse_seconds(value, self.upper)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


# The command line is parsed by cli/fast.py when it can be (no click on that path); this
# definition gives the help and the errors, and takes over any command line fast.py passes on.
@cli.command(epilog="""\b
Examples:
  servicefactory perform Test action '"hello world"'
  servicefactory perform Test health
  echo '{"a": 1}' | servicefactory perform Api store -
  servicefactory perform Test health --wait      # the service is still starting
""")
@click.argument("name")
@click.argument("action")
@click.argument("data", required=False)
@click.option("--timeout", type=_Seconds(_fast.MAX_TIMEOUT), default=_fast.DEFAULT_TIMEOUT, show_default=True,
              help="Seconds to wait for the answer (at most a day).")
@click.option("--wait", type=_Seconds(_fast.MAX_WAIT), is_flag=False, flag_value=_fast.DEFAULT_WAIT,
              metavar="[SECONDS]",
              help=f"If NAME is not ready (still starting, restarting), wait for it up to SECONDS "
                   f"(default {_fast.DEFAULT_WAIT:g}), then call.")
@click.option("--max-body", type=click.IntRange(min=1), default=_fast.DEFAULT_MAX_BODY, show_default=True,
              metavar="BYTES", help="Refuse DATA longer than this, reading no more of stdin.")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="Verify a TLS service's certificate with this CA file (PEM) [default: "
                   "$SERVICEFACTORY_CA_FILE, else the system's CAs].")
@click.option("--instance", type=click.IntRange(1, 999999), metavar="K",
              help="Call instance K of NAME (NAME/K) only; by default calls go to each live instance in turn.")
def perform(name: str, action: str, data: str | None, timeout: float, wait: float | None, max_body: int,
            ca_file: str | None = None, instance: int | None = None) -> None:
    """Call ACTION on the running service NAME with JSON DATA ('-' reads stdin); print the JSON result."""
    _fast.perform(name, action, data, timeout=timeout, wait=wait, max_body=max_body, ca_file=ca_file,
                  instance=instance)


# -- stop ----------------------------------------------------------------------------------

class _Signal(click.ParamType):
    """A signal by name (SIGINT, int) or number; SIGKILL and SIGSTOP are refused (no graceful stop)."""

    name = "signal"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        import signal

        if isinstance(value, int):
            return value
        text = str(value).strip().upper()
        try:
            number = signal.Signals(int(text)) if text.isdigit() else \
                signal.Signals[text if text.startswith("SIG") else "SIG" + text]
        except (ValueError, KeyError):
            self.fail(f"{value!r} is not a signal (try SIGINT, SIGTERM, SIGQUIT, SIGUSR1 or a number)", param, ctx)
        if number in (signal.SIGKILL, signal.SIGSTOP):
            self.fail(f"{number.name} cannot be a graceful stop; `stop` sends SIGKILL itself after the timeout",
                      param, ctx)
        return int(number)


@cli.command(epilog="""\b
Examples:
  servicefactory stop Test
  servicefactory stop Test --instance 2      # Test/2 only; the other instances keep running
  servicefactory stop --all --timeout 5
""")
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Stop every service and every supervisor.")
@click.option("--timeout", type=click.FloatRange(min=0.1),
              help="Seconds to wait before SIGKILL  [default: each service's own stop timeout, "
                   "its Service.policy(stop_timeout) or run --stop-timeout; else 10].")
@click.option("--signal", "signal_", type=_Signal(), metavar="SIG",
              help="Send this signal (SIGINT, INT, 2, ...) instead of the usual graceful request.")
@_instance_option
@_app.file_option()
def stop(names: tuple[str, ...], all_: bool, timeout: float | None, signal_: int | None = None,
         instance: int | None = None, app_file: str | None = None) -> None:
    """Stop services gracefully; SIGKILL (with a warning) those still alive after their stop timeout."""
    from servicefactory.supervise import control

    if all_ and (app_file or click.get_current_context().meta.get(_app.FILE_META)):
        raise CommandFailed("give --all or an application file, not both", 2)
    names = _app.scoped(names, app_file)
    if names and all_:
        raise CommandFailed("give service names or --all, not both", 2)
    if not names and not all_:
        raise CommandFailed("give the names of the services to stop, or --all", 2)
    if all_ and instance is not None:
        raise CommandFailed("--instance K goes with exactly one service name", 2)
    from servicefactory.registry.local import check_name

    registry = _registry()
    for name in names:
        check_name(name)
    registry.check_safe()
    services = [name for name in names if "/" not in name and control.instances(name, registry)]
    if not all_:
        names = tuple(_expand(names, instance, registry))
    if not registry.exists():
        # nothing can be registered: say so, and what that means if services were started with it
        for name in names or ["nothing"]:
            click.echo(f"{name} is not running" if names else "nothing is running", nl=False)
            click.echo(f" (the state directory {registry.where} does not exist; services started "
                       f"with it, if it was deleted, keep running but cannot be found)")
        return
    from servicefactory.cli.progress import stopping

    # on a terminal, which services are stopped meanwhile and which are still waited for
    outcomes = stopping(lambda: control.stop_all(timeout, registry, signal_) if all_
                        else _stop_each(names, timeout, registry, signal_), None if all_ else list(names), registry)
    if instance is None:
        for service in services:  # every instance was asked to stop: the service as a whole is stopped
            registry.mark_stopped(service)
    if all_ and not outcomes:
        click.echo("nothing is running")
    for outcome in outcomes:
        if outcome.failed or outcome.unknown:
            click.echo(f"error: {outcome.message}", err=True)
        elif outcome.killed:
            click.echo(f"warning: {outcome.message}", err=True)
        else:
            click.echo(outcome.message)
    if any(outcome.failed for outcome in outcomes):
        sys.exit(1)
    if any(outcome.unknown for outcome in outcomes):
        sys.exit(3)  # a name never run here is most likely a typo


def _stop_each(names: tuple[str, ...], timeout: float | None, registry: Any, signum: int | None = None) -> list:
    import threading

    from servicefactory.supervise import control
    from servicefactory.supervise.control import StopOutcome

    outcomes: dict[str, Any] = {}  # names were checked by `stop` already

    def one(name: str) -> None:
        try:
            outcomes[name] = control.stop(name, timeout, registry, signum)
        except ServiceFactoryError as exc:
            outcomes[name] = StopOutcome(name, False, message=f"{name}: {exc}", failed=True)
        except OSError as exc:  # never a traceback, and never a missing outcome
            outcomes[name] = StopOutcome(name, False, message=f"{name}: {exc}", failed=True)

    for wave in _app.stop_waves(names, registry):  # dependents first; each wave's names in parallel
        threads = [threading.Thread(target=one, args=(name,)) for name in wave]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return [outcomes[name] for name in names]


# -- restart -------------------------------------------------------------------------------

@cli.command(epilog="""\b
Examples:
  servicefactory restart Test
  servicefactory restart Test --instance 2
""")
@click.argument("names", nargs=-1)
@click.option("--timeout", type=click.FloatRange(min=0.1),
              help="Seconds a stop may take before SIGKILL  [default: the service's own stop timeout].")
@_instance_option
@_app.file_option()
def restart(names: tuple[str, ...], timeout: float | None, instance: int | None = None,
            app_file: str | None = None) -> None:
    """Restart services: under their supervisor, or stop and run again with every option they were run with.

    The instances of a service are restarted one at a time, each ready again before the next
    stops, so that the service keeps answering throughout (a rolling restart).
    """
    from servicefactory.supervise import control
    from servicefactory.errors import ServiceNotRunning
    from servicefactory.registry.base import state_of
    from servicefactory.registry.local import check_name

    names = _app.scoped(names, app_file)
    if not names:
        raise CommandFailed("give the names of the services to restart (or -f FILE: every service it declares)", 2)
    registry = _registry()
    for name in names:
        check_name(name)
    registry.check_safe()
    if instance is not None:
        names = tuple(_expand(names, instance, registry))
    for name in names:
        running = control.instances(name, registry) if registry.lookup(name) is None else []
        if running:
            rows = control.rolling_restart(name, running, timeout, registry)
            if rows is None:  # not all under one live supervisor: stop what is left, run it again as it was
                spec = registry.remembered(name)
                if not spec:
                    raise CommandFailed(f"{name}'s instances do not run under one live supervisor, and how "
                                        f"{name} was run is not known: stop it and run it again", 1)
                for outcome in _stop_each(tuple(running), timeout, registry):
                    if outcome.failed:
                        raise CommandFailed(outcome.message, 1)
                _run_again(name, spec, registry)
                continue
            for row in rows:
                if row["state"] != "running":
                    raise CommandFailed(f"{row['name']} did not come back: {row['state']} "
                                        f"({row.get('error') or 'see its log'}); the rolling restart stopped "
                                        f"there", 1)
                click.echo(f"{row['name']} running (pid {row['pid']}, {_url(row, registry) or 'no API'})")
            continue
        state, record = state_of(registry, name)
        if record is not None and record.supervisor and state != "stale":
            # the supervisor answers once the service is ready or failed, bounded by its own
            # ready timeout: our deadline only guards against a supervisor that hangs
            limit = timeout if timeout is not None else control.own_timeout(record)
            request = {"names": [name]} if timeout is None else {"names": [name], "timeout": timeout}
            suspended = control.supervisor_suspended(name, record, registry)
            if suspended:  # it would hang us for ten minutes, and restart the service once resumed
                raise CommandFailed(suspended, 1)
            try:
                rows = control.call_supervisor(record.supervisor, "restart", request, limit + 600, registry)
            except ServiceFactoryError:
                if not control.supervisor_died(registry, record.supervisor):
                    raise
                _refuse_elsewhere(name, record, registry)
                # killed mid-way (kill -9): take the service over and run it again, as below
                control.stop(name, timeout, registry)
                _run_again(name, registry.remembered(name) or {"target": record.target, "cwd": None}, registry)
                continue
            row = rows[0]
            if row["state"] != "running":
                raise CommandFailed(f"{name} did not come back: {row['state']} "
                                    f"({row.get('error') or 'see its log'})", 1)
            click.echo(f"{name} running (pid {row['pid']}, {_url(row, registry) or 'no API'})")
            continue
        spec = registry.remembered(name) or {}
        if record is not None and state != "stale":
            if not record.target or record.target.startswith("__main__:"):
                raise CommandFailed(f"{name} was started as a script ({record.target or 'unknown target'}), "
                                    f"not by `servicefactory run`: restart it the way you started it", 1)
            _refuse_elsewhere(name, record, registry)
            if spec.get("target") != record.target:
                spec = {"target": record.target, "cwd": None}
            control.stop(name, timeout, registry)
        elif not spec:
            raise ServiceNotRunning(f"{name} is not running and was never run by `servicefactory run` "
                                    f"in {registry.where}; start it with `servicefactory run`")
        _run_again(name, spec, registry)


def _refuse_elsewhere(name: str, record: Any, registry: Any) -> None:
    """A service of another host with no supervisor to ask: running it again would move it here."""
    import socket

    if registry.many_hosts and record.hostname and record.hostname != socket.gethostname():
        raise CommandFailed(f"{name} runs on host {record.hostname} with no supervisor to restart it: restart "
                            f"it there (`stop` works from here)", 1)


def _url(row: dict, registry: Any) -> str | None:
    """Where `row`'s service answers: as its supervisor sees it, or as other hosts reach it (its record)."""
    if registry.many_hosts:
        record = registry.lookup(row["name"])
        if record is not None and record.url:
            return record.url
    return row.get("url")


def _run_again(name: str, spec: dict, registry: Any) -> None:
    """`run TARGET --daemon` again with every option remembered: each `run` option whose name is a
    field of the remembered Spec or Settings (so a new run option is remembered without a list here)."""
    import subprocess

    from servicefactory.supervise._supervised import python_command

    remembered = dict(spec.get("settings") or {})
    # a service's own value (its Spec: backoff_max from its policy) wins over the supervisor-wide one
    remembered.update({key: value for key, value in spec.items()
                       if key not in ("settings", "target", "name") and value is not None})
    if spec.get("log_level"):
        remembered["log_level"] = spec["log_level"]
    # not `python -m` from the project directory: that would put it first on sys.path (issue 16.2)
    command = python_command("servicefactory") + ["run", spec["target"], "--daemon", "--name", name]
    for param in run.params:
        if not isinstance(param, click.Option) or param.is_flag or param.name in ("name", "daemon"):
            continue
        value = remembered.get(param.name)
        if value is not None:
            command += [param.opts[0], str(value)]
    # the directory it was run in, never one a relative SERVICEFACTORY_HOME would resolve to from there
    env = dict(os.environ, **registry.environment())
    click.echo(f"starting {name} again as it was last run (state directory {registry.where})", err=True)
    cwd = spec.get("cwd") if spec.get("cwd") and os.path.isdir(spec["cwd"]) else None
    if spec.get("cwd") and cwd is None:
        click.echo(f"warning: {spec['cwd']}, the directory {name} was run in, no longer exists: "
                   f"running it from {os.getcwd()}", err=True)
    code = subprocess.call(command, cwd=cwd, env=env)
    if code:
        sys.exit(code)


# -- status --------------------------------------------------------------------------------

@cli.command(epilog="""\b
Examples:
  servicefactory status
  servicefactory status Test --json
""")
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects.")
@click.option("--all", "all_", is_flag=True, help="Include the supervisors themselves.")
@_instance_option
@_app.file_option()
def status(names: tuple[str, ...], as_json: bool, all_: bool, instance: int | None = None,
           app_file: str | None = None) -> None:
    """Show services: NAME, STATE, PID, URL, UPTIME, RESTARTS, EXIT, REASON, CPU, MEMORY (and HOST
    where many hosts share the registry: etcd).

    Exits 0 only if every listed service is running (3 otherwise), as `systemctl is-active` does.
    """
    from servicefactory.supervise import control
    from servicefactory.registry.local import check_name

    names = _app.scoped(names, app_file)
    registry = _registry()
    for name in names:
        check_name(name)
    registry.check_safe()
    if names:
        names = tuple(_expand(names, instance, registry))
    elif instance is not None:
        raise CommandFailed("--instance K goes with exactly one service name", 2)
    rows = control.status(list(names), registry, include_supervisors=all_)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif not rows:
        click.echo(f"no services ({'registry' if registry.many_hosts else 'state directory'} {registry.where}"
                   + (")" if registry.exists() else
                   " does not exist: nothing was started with it yet, or it was deleted)"))
    else:
        _print_table(rows, hosts=registry.many_hosts)
    if any(row["state"] != "running" for row in rows):
        sys.exit(3)


def _print_table(rows: list[dict], hosts: bool = False) -> None:
    """The table; with `hosts` (a registry many hosts share) a HOST column says where each one runs."""
    headers = ["NAME", "STATE", "PID", "URL", "UPTIME", "RESTARTS", "EXIT", "REASON", "CPU", "MEMORY"]
    table = [[row["name"], _state(row), str(row["pid"] or "-"), row["url"] or "-", _duration(row["uptime"]),
              str(row["restarts"]), "-" if row["last_exit"] is None else str(row["last_exit"]),
              row.get("last_reason") or "-",
              "-" if row["cpu"] is None else f"{row['cpu']:.2f}s",
              "-" if row["memory"] is None else f"{row['memory'] / 1048576:.1f}M"] for row in rows]
    if hosts:
        headers.insert(2, "HOST")
        for line, row in zip(table, rows):
            line.insert(2, row.get("hostname") or "-")
    widths = [max(len(line[i]) for line in [headers] + table) for i in range(len(headers))]
    for line in [headers] + table:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())


def _state(row: dict) -> str:
    """The state, with when the next try is due for a service waiting in backoff or failed."""
    import time

    if row["state"] == "blocked" and row.get("error"):
        return row["error"]  # `blocked: migrate exited 1`
    due = row.get("next_try")
    if due is None:
        return row["state"]
    return f"{row['state']} (next try in {_duration(max(0.0, due - time.time()))})"


def _duration(seconds: float | None) -> str:
    from servicefactory.view._rows import duration  # the views' own: one way to write a duration
    return duration(seconds)


# -- logs ----------------------------------------------------------------------------------

@cli.command(epilog="""\b
Examples:
  servicefactory logs Test -n 50
  servicefactory logs Test -f
  servicefactory logs            # every service, interleaved
  servicefactory logs api --since 10m --json
""")
@click.argument("name", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (across rotations) until Ctrl+C.")
@click.option("-n", "--lines", type=click.IntRange(min=0), default=None,
              help="Lines of history  [default: 20; with --since, every line since].")
@click.option("--since", metavar="WHEN", help="Only lines since WHEN: 30s, 10m, 2h, 1d or a local time "
                                             "(2026-11-28T10:00).")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per line: time, service, instance, stream (stdout, stderr, event), message.")
@_instance_option
@_app.file_option(short=False)
def logs(name: str | None, follow: bool, lines: int | None, since: str | None = None, as_json: bool = False,
         instance: int | None = None, app_file: str | None = None) -> None:
    """Show a service's log (or every service's, interleaved, when NAME is omitted; every instance's,
    interleaved, for a service run as instances)."""
    from servicefactory.cli.app import parse_since
    from servicefactory.supervise import logfiles
    from servicefactory.registry.local import check_name

    declared = _app.scoped((name,) if name else (), app_file)  # with a file, only the services it declares
    scoped = None if name is not None or declared == () else set(declared)
    since_stamp = parse_since(since) if since else None
    if lines is None:
        lines = 20 if since_stamp is None else 1 << 62
    registry = _registry()
    registry.check_safe()
    if name is None and instance is not None:
        raise CommandFailed("--instance K goes with exactly one service name", 2)
    if name is not None:
        try:
            check_name(name)
        except ServiceFactoryError as exc:
            raise CommandFailed(exc, 2) from None
        expanded = _expand((name,), instance, registry)
        sources = {}
        for each in expanded:
            path = registry.log_of(each)
            if not os.path.lexists(path):
                raise CommandFailed(f"no log for {each} at {path} (services run with `servicefactory run` have "
                                    f"logs)", 3)
            sources[each] = path
        if len(expanded) > 1:
            name = None  # several files: interleaved, each line prefixed with its instance
    else:
        if not registry.exists():
            raise CommandFailed(f"no logs: state directory {registry.where} does not exist", 3)
        sources = registry.logs()
        if scoped is not None:
            sources = {source: path for source, path in sources.items() if source.partition("/")[0] in scoped}
        if not sources:
            raise CommandFailed(f"no service logs in {registry.where}" + (" for the application file's services"
                                                                          if scoped is not None else ""), 3)
    for source, path in sources.items():
        refusal = logfiles.untrusted(path, registry.private_dir())
        if refusal:
            raise CommandFailed(f"refusing the log of {source}: {refusal}", 10)
    prefix = name is None
    history = []
    offsets = {}
    for source, path in sources.items():
        try:
            if follow:  # a line still being written is left to the follower, so none is lost or doubled
                tail, offset, inode = logfiles.tail_and_position(path, lines)
                offsets[source] = (offset, inode)  # the follower finds that file even if rotated meanwhile
            else:
                tail = logfiles.tail(path, lines if since_stamp is None else 1 << 62)
        except OSError as exc:
            raise CommandFailed(f"cannot read the log of {source} at {path}: {exc.strerror or exc}", 10)
        if since_stamp is not None:
            tail = _since(tail, since_stamp)
        history.extend((line[:23], source, line) for line in tail)
    if prefix:
        history.sort(key=lambda item: item[0])  # lines start with their timestamp
    try:
        for _, source, line in history[-lines:] if lines else []:
            _show_line(source, line, prefix, as_json)
        if follow:
            _follow(sources, offsets, prefix, as_json)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        sys.stderr.close()


def _since(lines: list[str], stamp: str) -> list[str]:
    """The lines from the first stamped at or after `stamp` (stamps sort as text)."""
    from servicefactory.cli.app import line_fields

    for index, line in enumerate(lines):
        when = line_fields("", line)["time"]
        if when is not None and when >= stamp:
            return lines[index:]
    return []


def _show_line(source: str, line: str, prefix: bool, as_json: bool) -> None:
    from servicefactory.supervise import logfiles

    if as_json:
        from servicefactory.cli.app import line_fields

        click.echo(json.dumps(line_fields(source, line), ensure_ascii=False))
        return
    line = logfiles.printable(line)  # a file not written by us may hold terminal escapes
    click.echo(f"{source} | {line}" if prefix else line)


def _follow(sources: dict, offsets: dict, prefix: bool, as_json: bool = False) -> None:
    import queue
    import threading

    from servicefactory.supervise import logfiles

    lines: queue.Queue = queue.Queue()
    for source, path in sources.items():
        def pump(source: str = source, path: Any = path) -> None:
            offset, inode = offsets[source]
            for line in logfiles.follow(path, offset=offset, inode=inode):  # from where the history ended
                lines.put((source, line))
        threading.Thread(target=pump, daemon=True).start()
    while True:
        source, line = lines.get()
        _show_line(source, line, prefix, as_json)


# -- list ----------------------------------------------------------------------------------

@cli.command(name="list", epilog="""\b
Example:
  servicefactory list mymodule
""")
@click.argument("target")
def list_(target: str) -> None:
    """List the services TARGET defines, with their ports and actions, without running them."""
    from servicefactory.api import BUILTIN_ACTIONS
    from servicefactory.cli.running import load
    from servicefactory.service import describe

    for service in map(describe, load(target)):
        endpoint = service.endpoint
        where = f"{endpoint.host}:{endpoint.port or 'auto'}" if endpoint else "no API"
        actions = [name for name in sorted(service.actions) if name not in BUILTIN_ACTIONS]
        click.echo(f"{service.name}  {where}  actions: {', '.join(actions) or '-'}"
                   f"  (+ {', '.join(BUILTIN_ACTIONS)})" if endpoint else f"{service.name}  {where}")


# -- token ---------------------------------------------------------------------------------

@cli.command(epilog="""\b
Example:
  (umask 077; servicefactory token > ~/.servicefactory/token)
  export SERVICEFACTORY_TOKEN=$(servicefactory token)
""")
def token() -> None:
    """Print a fresh random API token (256 bits), for SERVICEFACTORY_TOKEN or the state directory's token file."""
    from servicefactory.http._guard import new_token

    click.echo(new_token())


from servicefactory.cli.dashboard import dashboard as _dashboard  # noqa: E402 (each view's command
from servicefactory.cli.top import top as _top  # noqa: E402                  lives in its module)
from servicefactory.cli.app import down as _down, up as _up  # noqa: E402  (the application file's commands)

cli.add_command(_top)
cli.add_command(_dashboard)
cli.add_command(_up)
cli.add_command(_down)

from servicefactory.cli import lifecycle as _lifecycle  # noqa: E402  (after the group it joins)

cli.add_command(_lifecycle.reload)
cli.add_command(_lifecycle.serve)
cli.add_command(_lifecycle.systemd)

from servicefactory.cli.describe import describe as _describe  # noqa: E402

cli.add_command(_describe)


def _use_registry(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """`--registry`: this command, and what it starts, use that registry ($SERVICEFACTORY_REGISTRY's job)."""
    if value is not None:
        if not value.strip():
            raise click.BadParameter("give a registry: local or etcd://host:2379[,host2:2379][/prefix]")
        os.environ["SERVICEFACTORY_REGISTRY"] = value.strip()


def _registry_option_everywhere(group: click.Group) -> None:
    """Give every command (those other modules added too) the `--registry` option, once."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            _registry_option_everywhere(command)
        elif not any(param.name == "registry_url" for param in command.params):
            command.params.append(click.Option(
                ["--registry", "registry_url"], metavar="URL", expose_value=False, is_eager=True,
                callback=_use_registry, help="The registry: local (the default) or etcd://host:2379[,host2:2379]"
                "[/prefix]; instead of $SERVICEFACTORY_REGISTRY."))


def main() -> None:
    """Console-script entry point; Ctrl+C exits 130, as shells expect."""
    _registry_option_everywhere(cli)
    try:
        cli.main(prog_name="servicefactory", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        sys.exit(141)


_registry_option_everywhere(cli)  # after every command joined the group (main() adds it to any added later)

if __name__ == "__main__":
    main()
