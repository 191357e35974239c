"""`servicefactory up` and `down`: the application declared in servicefactory.toml, as one.

`up` starts every service of the file under one supervisor, in dependency order (detached: it
returns once each is ready, completed, failed or blocked; `--foreground`: until Ctrl+C, which stops
them in reverse order). `down` stops them, dependents first. The file is read by
servicefactory.appfile; this module only drives it. Also here: what `logs --since` and
`logs --json` read in a log line.
"""
from __future__ import annotations

import os
import re
import sys
import time
from typing import Any

import click

from servicefactory.cli.common import CommandFailed
from servicefactory.cli.common import registry as _registry

FILE_HELP = "The application file  [default: ./servicefactory.toml]."
ENV_HELP = "Merge [environments.NAME] of the file over the rest."


#: where the group's `servicefactory -f FILE COMMAND` leaves FILE for the command (click's ctx.meta)
FILE_META = "servicefactory.app_file"


def file_option(short: bool = True) -> Any:
    """`-f/--file FILE` on a command that takes names (`--file` only where -f means something else:
    `logs -f` follows); `servicefactory -f FILE COMMAND` works for every command."""
    flags = ("-f", "--file") if short else ("--file",)
    return click.option(*flags, "app_file", metavar="FILE",
                        help="Act on the services this application file declares (no NAME: all of them).")


def scoped(names: tuple[str, ...], file: str | None) -> tuple[str, ...]:
    """The names a command acts on, given an application file (its own -f, else the group's): the
    file's services when no name is given; else `names`, each one the file declares (`NAME/K`: an
    instance of one), or exit 2. Without a file: `names` as they are. Only the file's table names
    are read: a file that does not load as a whole (an env_file missing) still names its services."""
    if file is None:
        context = click.get_current_context(silent=True)
        file = context.meta.get(FILE_META) if context is not None else None
    if file is None:
        return names
    from servicefactory import appfile

    declared = appfile.declared(file)
    if not names:
        return tuple(declared)
    for name in names:
        if name.partition("/")[0] not in declared:
            raise CommandFailed(f"{name} is not a service of {file} (it declares {', '.join(declared)})", 2)
    return names


def stop_waves(names: tuple[str, ...] | list[str], registry: Any) -> list[list[str]]:
    """`names` in the order `stop` ends them: a service another of them depends on (its
    `depends_on`, as remembered from its run) comes in a later wave than that dependent."""
    services = {name.partition("/")[0] for name in names}
    if len(services) < 2:
        return [list(names)]
    from servicefactory.supervise._dependencies import waves

    graph = {}
    for service in services:
        needs = (registry.remembered(service) or {}).get("depends_on")
        graph[service] = [need for need in needs or () if need in services and need != service]
    try:
        order = list(reversed(waves(graph)))
    except ValueError:  # a cycle (remembered from different runs): all at once, as before
        return [list(names)]
    return [[name for name in names if name.partition("/")[0] in wave] for wave in order]


def _load(file: str | None, environment: str | None, check_targets: bool = True) -> Any:
    from servicefactory import appfile
    from servicefactory.supervise.loader import TargetImportError

    try:
        return appfile.load(file, environment, check_targets=check_targets)
    except TargetImportError as exc:
        click.echo(exc.traceback, err=True, nl=False)  # the user's own code raised: their traceback
        raise


@click.command(epilog="""\b
Examples:
  servicefactory up                    # ./servicefactory.toml, detached
  servicefactory up -f app.toml --env prod
  servicefactory up --foreground       # Ctrl+C stops everything, dependents first
""")
@click.option("-f", "--file", "file", metavar="FILE", help=FILE_HELP)
@click.option("--env", "environment", metavar="NAME", help=ENV_HELP)
@click.option("--foreground", is_flag=True, help="Stay in the foreground, printing every service's output.")
@click.option("--dry-run", is_flag=True, help="Check the file and print the start order; start nothing.")
@click.option("--watch", is_flag=True, help="Development: restart a service when a .py file under its directory "
                                            "changes (and what depends on it); apply the file when it changes.")
@click.option("--watch-ignore", multiple=True, metavar="PATTERN",
              help="With --watch: ignore files matching this glob too (repeatable; [settings] watch_ignore).")
def up(file: str | None, environment: str | None, foreground: bool, dry_run: bool, watch: bool = False,
       watch_ignore: tuple[str, ...] = ()) -> None:
    """Start every service the application file declares, in dependency order."""
    from servicefactory.cli import running
    from servicefactory.errors import AlreadyRunning
    from servicefactory.supervise._dependencies import waves

    file = file if file is not None else click.get_current_context().meta.get(FILE_META)
    app = _load(file, environment)
    order = waves(app.graph)
    waits = [f"{spec.name} waits for " + ", ".join(f"{name} ({condition})" for name, condition
                                                     in spec.depends_on.items())
             for spec in app.specs if spec.depends_on]
    registry = _registry()
    supervisor = _supervisor_of(app, registry)
    if supervisor is not None:  # up already: apply the file's changes
        if (foreground or watch) and not dry_run:
            raise CommandFailed(f"the application is up already (supervisor {supervisor}): `servicefactory "
                                f"down` first to run it {'in the foreground' if foreground else 'with --watch'}", 9)
        _apply(app, supervisor, registry, dry_run)
        return
    if dry_run:
        click.echo("start order: " + " -> ".join(", ".join(wave) for wave in order))
        for line in waits:
            click.echo(line)
        return
    try:
        running.check_free(app.specs, registry)
    except AlreadyRunning as exc:
        raise CommandFailed(f"{exc}; is the application up already? (`servicefactory down` stops it)", 9) from None
    if app.log_level:
        os.environ["SERVICEFACTORY_LOG_LEVEL"] = app.log_level
    app.settings.foreground = foreground
    app.settings.watch = watch
    app.settings.watch_ignored = tuple(app.settings.watch_ignored) + tuple(watch_ignore)
    app.settings.app_file, app.settings.app_environment = str(app.path), environment  # read again on SIGHUP
    if foreground:
        running.run_foreground(app.specs, app.settings, registry)
    for line in waits:
        click.echo(line)
    running.run_daemon(app.specs, app.settings, registry, show=_show_started)


def _supervisor_of(app: Any, registry: Any) -> str | None:
    """The live supervisor running any of the file's services (`up` ran before), or None."""
    from servicefactory.registry.base import state_of

    from servicefactory.supervise import control

    found = set()
    for name in control.expand(app.names, registry):
        state, record = state_of(registry, name)
        if record is not None and record.supervisor and state != "stale" and registry.is_held(record.supervisor):
            found.add(record.supervisor)
    if len(found) > 1:
        raise CommandFailed(f"the file's services run under {len(found)} supervisors ({', '.join(sorted(found))}); "
                            f"`servicefactory down` and up again to run them as one application", 1)
    return found.pop() if found else None


def _differences(old: dict, new: dict) -> list[str]:
    """What changed between two specs, for people: `port: 8080 -> 8081`; env values are not shown."""
    changes = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            changes.append(key if key == "env" else f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return changes


def _apply(app: Any, supervisor: str, registry: Any, dry_run: bool) -> None:
    """`up` while the application is up: restart what changed, start what is new, stop what the
    file no longer declares, leave the rest alone (same pid); `--dry-run` prints that plan only."""
    import dataclasses
    import json

    from servicefactory.supervise import control

    from servicefactory.supervise._supervised import expand_instances

    processes = control.call_supervisor(supervisor, "specs", None, 10.0, registry)
    current = _by_service(processes)
    wanted = {spec.name: json.loads(json.dumps(dataclasses.asdict(spec))) for spec in app.specs}
    status = {row["name"]: row for row in control.call_supervisor(supervisor, "status", None, 10.0, registry)}
    plan, keep = [], []
    for name, spec in wanted.items():
        if name not in current:
            plan.append(f"start {name}")
        elif current[name] == spec:
            keep.append(name)
        elif dict(current[name], instances=spec["instances"]) == spec and current[name]["instances"] \
                and spec["instances"]:
            plan.append(f"scale {name} (instances: {current[name]['instances']} -> {spec['instances']}; "
                        f"the others keep running)")
        else:
            rolling = " one instance at a time" if current[name]["instances"] and spec["instances"] else ""
            plan.append(f"restart {name}{rolling} ({', '.join(_differences(current[name], spec))})")
    removed = [name for name in current if name not in wanted]
    plan += [f"stop {name}" for name in removed]
    # unchanged, but not running: stopped by `stop`, failed, blocked, or a job that did not complete.
    # `up` is "start them all": these start again (a job that completed does not run twice)
    down = {name: [row for row in status.values() if row["name"].partition("/")[0] == name
                   and _is_down(row)] for name in keep}
    revive = [name for name in keep if down[name]]
    for name in revive:
        states = sorted({row["state"] for row in down[name]})
        plan.append(f"start {name} (it is {', '.join(states)})")
    keep = [name for name in keep if name not in revive]
    for name in keep:
        pids = [str(row["pid"]) for row in status.values() if row.get("pid") and
                row["name"].partition("/")[0] == name]
        plan.append(f"keep {name}" + (f" (pid {', '.join(pids)})" if pids else ""))
    for line in plan:
        click.echo(line)
    if dry_run or len(keep) == len(wanted) and not removed and not revive:
        if not dry_run:
            click.echo("nothing to change")
        return
    # processes the file no longer has: its removed services, and instances past a smaller count
    # (or a service's plain process that now runs as instances, and back)
    names = {spec.name for spec in expand_instances(app.specs)}
    going = [spec for spec in processes if spec["name"] not in names]
    if going:
        limit = sum(spec.get("stop_timeout") or 10.0 for spec in going)
        control.call_supervisor(supervisor, "stop", {"names": [spec["name"] for spec in going]}, limit + 15,
                                registry)
        for name in removed:
            registry.mark_stopped(name)
    # at worst every process is stopped and started again one after the other (a rolling restart)
    limit = sum(spec.stop_timeout + app.settings.ready_timeout for spec in expand_instances(app.specs)) + 30
    rows = control.call_supervisor(supervisor, "apply", {"specs": list(wanted.values()), "file": str(app.path),
                                                         "environment": app.environment}, limit, registry)
    if revive:
        again = [row["name"] for name in revive for row in down[name]]
        rows += control.call_supervisor(supervisor, "restart", {"names": again}, limit, registry)
    _show_started(rows)


def _is_down(row: dict) -> bool:
    """Whether a process `up` should start again: stopped (but not a job that completed), failed, blocked."""
    if row["state"] in ("failed", "blocked"):
        return True
    return row["state"] == "stopped" and row.get("last_reason") != "exit"


def _by_service(processes: list[dict]) -> dict[str, dict]:
    """The supervisor's specs, one per service: api/1 ... api/N as the `api` they were made from."""
    from servicefactory.supervise._supervised import service_log_file

    services: dict[str, dict] = {}
    for spec in processes:
        number = spec.get("instance")
        if number is not None:
            spec = dict(spec, name=spec["name"].partition("/")[0], instance=None,
                        log_file=spec["log_file"] and service_log_file(spec["log_file"], number))
        services.setdefault(spec["name"], spec)
    return services


def _show_started(services: list[dict]) -> None:
    """One line per service of the start report; exit 1 if any failed or was blocked."""
    from servicefactory.supervise._dependencies import describe_exit

    bad = False
    for service in services:
        name, state = service["name"], service.get("state")
        if state == "running":
            click.echo(f"{name} running (pid {service['pid']}, {service.get('url') or 'no API'})")
        elif state == "stopped" and service.get("ever_ready", True) and service.get("last_exit") == 0:
            click.echo(f"{name} completed (exit 0)")
        elif state == "blocked":
            bad = True
            click.echo(f"{name} {service.get('error') or 'blocked'}", err=True)
        elif state == "failed" or service.get("last_exit"):
            bad = True
            why = service.get("error") or describe_exit(service.get("last_exit"))
            click.echo(f"{name} failed: {why} (servicefactory logs {name})", err=True)
        else:
            click.echo(f"{name} {state}")
    if bad:
        sys.exit(1)


@click.command(epilog="""\b
Examples:
  servicefactory down
  servicefactory down -f app.toml --timeout 5
""")
@click.option("-f", "--file", "file", metavar="FILE", help=FILE_HELP)
@click.option("--env", "environment", metavar="NAME", help=ENV_HELP)
@click.option("--timeout", type=click.FloatRange(min=0.1),
              help="Seconds each stop may take before SIGKILL  [default: each service's stop_timeout].")
def down(file: str | None, environment: str | None, timeout: float | None) -> None:
    """Stop every service the application file declares, dependents first."""
    from servicefactory import appfile
    from servicefactory.registry.base import state_of
    from servicefactory.supervise import control
    from servicefactory.supervise._dependencies import waves

    file = file if file is not None else click.get_current_context().meta.get(FILE_META)
    registry = _registry()
    try:
        app = _load(file, environment, check_targets=False)
    except appfile.AppFileError as exc:
        registry.check_safe()
        _down_unreadable(file, exc, timeout, registry)
        return
    registry.check_safe()
    by_supervisor: dict[str, list[str]] = {}
    others = []
    for name in control.expand(app.names, registry):  # a service run as instances: each of them
        state, record = state_of(registry, name)
        if record is not None and record.supervisor and state != "stale" and registry.is_held(record.supervisor):
            by_supervisor.setdefault(record.supervisor, []).append(name)
        else:
            others.append(name)
    order = [name for wave in reversed(waves(app.graph)) for name in wave]
    stop_timeouts = {spec.name: spec.stop_timeout for spec in app.specs}
    for supervisor, names in by_supervisor.items():
        names = _whole_application(supervisor, app, names, registry)
        _stop_under(supervisor, names, order, stop_timeouts, timeout, registry)
    failed = False
    for name in sorted(others, key=lambda name: _position(order, name)):
        outcome = control.stop(name, timeout, registry)
        if outcome.failed:
            failed = True
            click.echo(f"error: {outcome.message}", err=True)
        elif outcome.unknown:
            click.echo(f"{name} is not running")
        else:
            click.echo(outcome.message)
    if failed:
        sys.exit(1)


def _whole_application(supervisor: str, app: Any, names: list[str], registry: Any) -> list[str]:
    """Everything `supervisor` runs when `up` of this very file started it (an `--env` may have added
    services the file alone does not declare: `down` without it stops them too); else `names`."""
    from servicefactory.errors import ServiceFactoryError
    from servicefactory.supervise import control

    try:
        info = control.call_supervisor(supervisor, "application", None, 5.0, registry)
        if isinstance(info, dict) and info.get("file") == str(app.path):
            rows = control.call_supervisor(supervisor, "status", None, 10.0, registry)
            return names + [row["name"] for row in rows if row["name"] not in names]
    except ServiceFactoryError:
        pass  # going away, or too old to say: the file's names
    return names


def _position(order: list[str], name: str) -> tuple[int, int]:
    """Where `name` (a service, or an instance of one: api/2) comes in `order`, a list of services."""
    from servicefactory.supervise import control

    service = name.partition("/")[0]
    return (order.index(service) if service in order else len(order)), control.order(name)[1]


def _stop_under(supervisor: str, names: list[str], order: list[str], stop_timeouts: dict[str, float],
                timeout: float | None, registry: Any) -> None:
    """Stop `names` through their supervisor (it orders them: dependents first), say how each went,
    and shut the supervisor down too if it ran nothing else."""
    from servicefactory.errors import ServiceFactoryError
    from servicefactory.supervise import control

    # one after the other at worst
    limit = sum(timeout or stop_timeouts.get(name.partition("/")[0], 10.0) for name in names)
    record = registry.lookup(supervisor)
    try:
        before = {row["name"]: row for row in control.call_supervisor(supervisor, "status", None, 10.0, registry)}
        request = {"names": names, **({"timeout": timeout} if timeout else {})}
        rows = {row["name"]: row for row in control.call_supervisor(supervisor, "stop", request, limit + 15,
                                                                    registry)}
    except ServiceFactoryError as exc:
        if not control.supervisor_died(registry, supervisor, within=5.0):
            raise CommandFailed(f"cannot stop {', '.join(names)} through their supervisor {supervisor}: {exc}", 1)
        # it was going already (nothing left to run, or killed): each name is stopped, or an orphan, now
        failed = False
        for name in sorted(names, key=lambda name: _position(order, name)):
            outcome = control.stop(name, timeout, registry)
            failed = failed or outcome.failed
            click.echo(f"error: {outcome.message}" if outcome.failed else
                       outcome.message if outcome.was_running else f"{name} was stopped", err=outcome.failed)
        if failed:
            sys.exit(1)
        return
    for name in sorted(names, key=lambda name: _position(order, name)):
        if before.get(name, {}).get("state") in ("stopped", "failed", "blocked"):
            click.echo(f"{name} was {before[name]['state']}" + (
                " (completed)" if before[name].get("last_exit") == 0 else ""))
        else:
            killed = rows.get(name, {}).get("last_exit") == -9
            click.echo(f"{name} stopped" + (" (killed after its stop timeout)" if killed else ""))
        registry.mark_stopped(name.partition("/")[0])  # remembered as the service, instances or not
    if set(before) <= set(names):
        # it supervised nothing else: it goes too (it may be going already, having nothing left to do)
        try:
            control.call_supervisor(supervisor, "shutdown", None, 5.0, registry)
        except ServiceFactoryError:
            pass
        if record is not None:
            control.wait_gone(registry, record, 10.0)


def _down_unreadable(file: str | None, error: Exception, timeout: float | None, registry: Any) -> None:
    """`down` on a file that does not load (a syntax error, an unknown key, deleted): stop what the
    last `up` of that file started, as its supervisor knows it; the file's error if none runs."""
    from pathlib import Path

    from servicefactory import appfile
    from servicefactory.errors import ServiceFactoryError
    from servicefactory.registry.base import SUPERVISOR_PREFIX
    from servicefactory.supervise import control
    from servicefactory.supervise._dependencies import waves

    path = str(Path(file if file is not None else appfile.DEFAULT_FILE).expanduser().absolute())
    found = []
    for name in registry.names():
        if not name.startswith(SUPERVISOR_PREFIX) or not registry.is_held(name):
            continue
        try:
            info = control.call_supervisor(name, "application", None, 5.0, registry)
        except ServiceFactoryError:
            continue  # gone meanwhile, or too old to say
        if isinstance(info, dict) and info.get("file") == path:
            found.append(name)
    if not found:
        raise error
    for supervisor in found:
        services = _by_service(control.call_supervisor(supervisor, "specs", None, 10.0, registry))
        click.echo(f"warning: {error}; stopping what `up` started from it, as its supervisor {supervisor} "
                   f"knows it: {', '.join(services)}", err=True)
        graph = {name: [need for need in (spec.get("depends_on") or {}) if need in services]
                 for name, spec in services.items()}
        order = [name for wave in reversed(waves(graph)) for name in wave]
        processes = [row["name"] for row in control.call_supervisor(supervisor, "status", None, 10.0, registry)]
        stop_timeouts = {name: spec.get("stop_timeout") or 10.0 for name, spec in services.items()}
        _stop_under(supervisor, processes, order, stop_timeouts, timeout, registry)


# -- what `logs` reads in a line: `STAMP NAME | text`, `STAMP NAME ! text`, `STAMP [servicefactory] NAME text` --

_LINE = re.compile(r"^(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}) (?:(?P<event>\[servicefactory\]) )?"
                   r"(?P<name>\S+) (?:(?P<bar>[|!]) )?(?P<text>.*)$")
_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")


def parse_since(text: str) -> str:
    """`--since` (10m, 2h, 30s, 1d, or a local time such as 2026-11-28T10:00) as a log stamp to compare with."""
    import datetime

    found = _AGO.match(text.strip())
    if found:
        seconds = float(found.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[found.group(2)]
        moment = datetime.datetime.fromtimestamp(time.time() - seconds)
    else:
        try:
            moment = datetime.datetime.fromisoformat(text.strip())
        except ValueError:
            raise CommandFailed(f"--since {text!r} is neither a duration (30s, 10m, 2h, 1d) nor a time "
                                f"(2026-11-28T10:00)", 2) from None
        if moment.tzinfo is not None:  # the log's stamps are local time
            moment = moment.astimezone().replace(tzinfo=None)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def line_fields(source: str, line: str) -> dict[str, Any]:
    """A log line as {time, service, instance, stream, message}; stream is stdout, stderr or event."""
    found = _LINE.match(line)
    if found is None:
        return {"time": None, "service": source, "instance": None, "stream": "stdout", "message": line}
    if not found["bar"] and not found["event"]:  # stamped, but not by a supervisor
        return {"time": found["time"], "service": source, "instance": None, "stream": "stdout",
                "message": line[24:]}
    stream = "event" if found["event"] else "stderr" if found["bar"] == "!" else "stdout"
    text = found["text"]
    from servicefactory.registry.base import split_instance

    try:
        service, instance = split_instance(found["name"])  # `api/2`: instance 2 of api
    except ValueError:
        service, instance = found["name"], None
    return {"time": found["time"], "service": service, "instance": instance, "stream": stream, "message": text}
