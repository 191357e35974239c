"""Commands for services in production: `reload` (SIGHUP), `serve` (one service in the foreground,
as a systemd unit's ExecStart) and `systemd export` (unit files).

Each body imports what it needs, so registering them costs the CLI's start nothing.
"""
from __future__ import annotations

import os
import sys

import click

from servicefactory.cli.common import CommandFailed
from servicefactory.cli.common import host_option as _host_option
from servicefactory.cli.common import registry as _registry


@click.command(epilog="""\b
Examples:
  servicefactory reload Api           # calls Api's reload(); restarts it if it has none
  kill -HUP $(pgrep -f 'supervise.supervisor')   # a supervisor reopens its log files
""")
@click.argument("names", nargs=-1, required=True)
@click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Seconds to wait for each service to answer (or, restarted, to be ready).")
def reload(names: tuple[str, ...], timeout: float) -> None:
    """Reload services: call their reload() (SIGHUP); a supervised service without one is restarted."""
    import signal

    from servicefactory.errors import ServiceNotRunning
    from servicefactory.registry.base import state_of
    from servicefactory.registry.local import check_name
    from servicefactory.supervise import control

    registry = _registry()
    for name in names:
        check_name(name)
    registry.check_safe()
    failed = False
    for name in names:
        state, record = state_of(registry, name)
        members = [member for member in registry.instances_of(name) if member != name]
        if record is None and members:
            # a service run as instances: each of them, through their supervisor (one that has to restart
            # them rolls them, one at a time)
            failed = _reload_instances(name, members, timeout, registry) or failed
            continue
        if record is None and state == "stopped" and registry.remembered(name) is None:
            # as `stop` says it: a name never run here is most likely a typo, not a stopped service
            raise ServiceNotRunning(f"{name} is not running (no service of that name was ever run in "
                                    f"{registry.where})")
        if record is None or state != "running":
            raise ServiceNotRunning(f"{name} is {state}, not running: nothing to reload")
        if record.supervisor:
            row = control.call_supervisor(record.supervisor, "reload", {"names": [name], "timeout": timeout},
                                          timeout + 600, registry)[0]
            failed = not _said(row) or failed
        elif record.reloadable:
            if not registry.signal(record, signal.SIGHUP):
                raise ServiceNotRunning(f"{name} is not running")
            click.echo(f"{name}: sent SIGHUP (its reload() runs; see its output)")
        else:
            raise CommandFailed(f"{name} defines no reload() and has no supervisor to restart it: "
                                f"restart it the way you started it", 1)
    if failed:
        sys.exit(1)


def _said(row: dict) -> bool:
    """Print how one service's reload went; whether it went well."""
    name = row["name"]
    if row.get("restarted"):
        if row["state"] != "running":
            click.echo(f"error: {name} defines no reload(); restarted, but it is {row['state']} "
                       f"({row.get('error') or 'see its log'})", err=True)
            return False
        click.echo(f"{name} defines no reload(): restarted (pid {row['pid']})")
    elif row.get("reloaded"):
        click.echo(f"{name} reloaded (pid {row['pid']})")
    else:
        click.echo(f"error: {name} reload failed: {row.get('reload_error')}; it runs on with its old "
                   f"settings", err=True)
        return False
    return True


def _reload_instances(name: str, members: list[str], timeout: float, registry) -> bool:  # type: ignore[no-untyped-def]
    """Reload every running instance of `name`, one request per supervisor; whether any failed."""
    from servicefactory.errors import ServiceNotRunning
    from servicefactory.registry.base import state_of
    from servicefactory.supervise import control

    by_supervisor: dict[str, list[str]] = {}
    for member in members:
        state, record = state_of(registry, member)
        if record is not None and state == "running":
            if not record.supervisor:
                raise CommandFailed(f"{member} has no supervisor: reload it by its own name", 1)
            by_supervisor.setdefault(record.supervisor, []).append(member)
    if not by_supervisor:
        raise ServiceNotRunning(f"no instance of {name} is running: nothing to reload")
    ok = True
    for supervisor, running in by_supervisor.items():
        limit = len(running) * (timeout + 600)
        for row in control.call_supervisor(supervisor, "reload", {"names": running, "timeout": timeout}, limit,
                                           registry):
            ok = _said(row) and ok
    return not ok


@click.command(epilog="""\b
Examples:
  servicefactory serve TestService:Test          # what a systemd unit runs (see `systemd export`)
  servicefactory serve app.py:Api --port 8080
""")
@click.argument("target")
@click.option("--name", help="Run under this name instead of the class name.")
@click.option("--host", callback=_host_option, help="Bind the API to this address.")
@click.option("--port", type=click.IntRange(0, 65535), help="Bind the API to this port; 0 picks a free one.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              help="Level of the service's log output (default INFO).")
@click.option("--tls-cert", type=click.Path(dir_okay=False), metavar="FILE", help="Serve the API over TLS.")
@click.option("--tls-key", type=click.Path(dir_okay=False), metavar="FILE", help="The certificate's key.")
def serve(target: str, name: str | None, host: str | None, port: int | None, log_level: str | None,
          tls_cert: str | None, tls_key: str | None) -> None:
    """Run one service in this process, in the foreground, with no supervisor (systemd's ExecStart).

    It tells $NOTIFY_SOCKET READY=1 once its API answers, WATCHDOG=1 from its loop where
    $WATCHDOG_USEC is set, and STOPPING=1; SIGTERM stops it gracefully, SIGHUP calls its reload().
    """
    from servicefactory.cli import running
    from servicefactory.errors import ServiceFactoryError

    if name is not None:  # `--name ''` is a bad name, not no name (run() would take the class's)
        from servicefactory.registry.local import check_name
        try:
            check_name(name)
        except ServiceFactoryError as exc:
            raise CommandFailed(exc, 2) from None
    classes = running.load(target)
    if len(classes) != 1:
        names = ", ".join(cls.__name__ for cls in classes)
        raise CommandFailed(f"serve runs one service; {target} defines {names}: name one as "
                            f"{target.partition(':')[0]}:Class", 2)
    if bool(tls_cert) != bool(tls_key):
        raise CommandFailed("--tls-cert and --tls-key go together: give both", 2)
    if log_level:
        os.environ["SERVICEFACTORY_LOG_LEVEL"] = log_level.upper()
    # a unit may start at boot before any other command made the state directory: make it, or the
    # service would run unregistered (unreachable by name)
    _registry().ensure()
    (cls,) = classes
    try:
        service = cls()
    except Exception as exc:
        import traceback
        traceback.print_exc()
        raise CommandFailed(f"{cls.__name__}() raised {type(exc).__name__}: {exc}", 1) from None
    try:
        service.run(name=name, host=host, port=port, target=target,
                    tls=(os.path.abspath(tls_cert), os.path.abspath(tls_key)) if tls_cert else None)
    except ServiceFactoryError as exc:
        raise CommandFailed(exc, exc.exit_code) from None


@click.group()
def systemd() -> None:
    """systemd units for services: `systemd export TARGET` writes them."""


@systemd.command(name="export", epilog="""\b
Examples (start at boot, as PM2's startup + save):
  sudo servicefactory systemd export -f servicefactory.toml && sudo systemctl enable --now servicefactory-myapp.target
  servicefactory systemd export myapp --user && systemctl --user daemon-reload
  systemctl --user enable --now servicefactory-myapp.target   # + `loginctl enable-linger` for boot
  sudo servicefactory systemd export myapp --run-as www-data && sudo systemctl enable --now servicefactory-myapp.target
""")
@click.argument("targets", nargs=-1)
@click.option("-f", "--file", "file", metavar="FILE",
              help="Export the services of this application file [default, without TARGET: ./servicefactory.toml].")
@click.option("--user", "user_units", is_flag=True,
              help="Write user units (~/.config/systemd/user; `systemctl --user`) instead of system units.")
@click.option("--dir", "directory", type=click.Path(file_okay=False),
              help="Write the files here [default: ~/.config/systemd/user with --user, else /etc/systemd/system].")
@click.option("--group", help="Name of the target that groups the services [default: the first TARGET's module, "
                               "or the application file's directory].")
@click.option("--run-as", metavar="USER", help="User= of each service (system units).")
@click.option("--name", help="Run under this name instead of the class name (one service only).")
@click.option("--host", callback=_host_option, help="Bind the API to this address (one service only).")
@click.option("--port", type=click.IntRange(0, 65535), help="Bind the API to this port (one service only).")
@click.option("--restart", type=click.Choice(["on-failure", "always", "no"]),
              help="Restart= [default: the class's Service.policy].")
@click.option("--stop-timeout", type=click.FloatRange(min=0.1), help="TimeoutStopSec= [default: the policy's].")
@click.option("--max-memory", metavar="SIZE", help="MemoryMax= (200M, 1.5G) [default: the policy's max_memory].")
@click.option("--watchdog", type=click.FloatRange(min=0.1), help="WatchdogSec= [default: the policy's watchdog].")
@click.option("--env", "env", multiple=True, metavar="KEY=VALUE",
              help="Environment= for every service (repeatable); with a file, `--env NAME` (no `=`) merges its "
                   "[environments.NAME], as `up --env NAME` does.")
@click.option("--env-file", "env_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="EnvironmentFile= for every service (repeatable).")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--dry-run", is_flag=True, help="Print the files instead of writing them.")
def export(targets: tuple[str, ...], file: str | None, user_units: bool, directory: str | None, group: str | None,
           run_as: str | None, name: str | None, host: str | None, port: int | None, restart: str | None,
           stop_timeout: float | None, max_memory: str | None, watchdog: float | None, env: tuple[str, ...],
           env_files: tuple[str, ...], log_level: str | None, dry_run: bool) -> None:
    """Write a systemd unit per service TARGET defines (Type=notify, running `servicefactory serve`),
    and a target that starts them all; without TARGET, one per service of the application file."""
    from servicefactory.cli import running
    from servicefactory.supervise import _systemd
    from servicefactory.supervise._limits import parse_size

    memory = None
    if max_memory is not None:
        try:
            memory = parse_size(max_memory)
        except ValueError as exc:
            raise CommandFailed(f"--max-memory: {exc}", 2) from None
    from_file = file is not None or not targets
    if from_file and targets:
        raise CommandFailed("give TARGETs or -f FILE, not both", 2)
    environment, app_environment = {}, None
    for assignment in env:
        key, equals, value = assignment.partition("=")
        if not equals:
            if from_file and app_environment is None:
                app_environment = assignment  # `--env prod`: the file's environment
                continue
            raise CommandFailed(f"--env takes KEY=VALUE, not {assignment!r}", 2)
        environment[key] = value
    registry = _registry()
    environment.update(SERVICEFACTORY_HOME=str(registry.where), PYTHONUNBUFFERED="1")
    if log_level:
        environment["SERVICEFACTORY_LOG_LEVEL"] = log_level.upper()
    if from_file:
        given = [option for option, value in (("--name", name), ("--host", host), ("--port", port),
                                              ("--restart", restart), ("--stop-timeout", stop_timeout))
                 if value is not None]
        if given:
            raise CommandFailed(f"{', '.join(given)}: with an application file, set that in the file", 2)
        units, warnings = _file_units(file, app_environment, environment, group, user_units, run_as, memory,
                                      watchdog, env_files)
        group = units[0].group if units else group
    else:
        specs = running.specs(targets, name, host, port, None, restart, stop_timeout)
        units, warnings = _target_units(targets, specs, environment, group, run_as, memory, watchdog, env_files)
        group = units[0].group
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    assert group is not None
    try:
        files = {unit.file_name: unit.render() for unit in units}
        files[_systemd.unit_name(group, "target")] = _systemd.target(
            group, [name for unit in units for name in unit.started_units()], user_units)
    except _systemd.UnitError as exc:
        raise CommandFailed(str(exc), 2) from None
    _write_units(files, directory, user_units, group, dry_run)


def _target_units(targets: tuple[str, ...], specs: list, environment: dict, group: str | None,
                  run_as: str | None, memory: int | None, watchdog: float | None,
                  env_files: tuple[str, ...]) -> tuple[list, list[str]]:
    """The units of `systemd export TARGET...`: one per Service class."""
    from pathlib import Path

    from servicefactory.cli import running
    from servicefactory.supervise import _systemd
    from servicefactory.supervise._supervised import python_command

    if group is None:
        module = targets[0].partition(":")[0]
        group = Path(module).stem if module.endswith(".py") else module.rsplit(".", 1)[-1]
    classes = {}
    for target in targets:
        for cls in running.load(target):
            classes.setdefault(cls.__qualname__, cls)
    units = []
    for spec in specs:
        cls = classes.get(spec.target.rpartition(":")[2])
        command = python_command("servicefactory") + ["serve", spec.target, "--name", spec.name]
        if spec.host:
            command += ["--host", spec.host]
        if spec.port is not None:
            command += ["--port", str(spec.port)]
        units.append(_systemd.Unit(
            name=spec.name, command=command, working_directory=spec.cwd or os.getcwd(),
            description=f"servicefactory service {spec.name} ({spec.target})", restart=spec.restart,
            stop_timeout=spec.stop_timeout, watchdog=watchdog or spec.watchdog,
            max_memory=memory or spec.max_memory, reloadable=callable(getattr(cls, "reload", None)),
            environment=environment, environment_files=[os.path.abspath(path) for path in env_files],
            user=run_as, group=group))
    return units, []


def _file_units(file: str | None, app_environment: str | None, environment: dict, group: str | None,
                user_units: bool, run_as: str | None, memory: int | None, watchdog: float | None,
                env_files: tuple[str, ...]) -> tuple[list, list[str]]:
    """The units of `systemd export -f FILE`: one per service of the file (a template for instances)."""
    from servicefactory.cli import running
    from servicefactory.cli.app import _load
    from servicefactory.supervise import _systemd
    from servicefactory.supervise._supervised import python_command

    app = _load(file, app_environment)
    if group is None:
        group = app.path.parent.name or "app"

    def serve(spec) -> list[str]:  # type: ignore[no-untyped-def]
        name = f"{spec.name}/{_systemd.INSTANCE}" if (spec.instances or 1) > 1 else spec.name
        command = python_command("servicefactory") + ["serve", spec.target, "--name", name]
        if spec.host:
            command += ["--host", spec.host]
        if spec.port is not None:
            command += ["--port", str(spec.port)]
        if spec.tls_cert:
            command += ["--tls-cert", spec.tls_cert, "--tls-key", spec.tls_key]
        return command

    def reloadable(spec) -> bool:  # type: ignore[no-untyped-def]
        before = os.getcwd()
        try:
            os.chdir(spec.cwd or before)
            return any(callable(getattr(cls, "reload", None)) for cls in running.load(spec.target))
        finally:
            os.chdir(before)

    if app.log_level and "SERVICEFACTORY_LOG_LEVEL" not in environment:
        environment["SERVICEFACTORY_LOG_LEVEL"] = app.log_level
    try:
        units, warnings = _systemd.app_units(app, group=group, environment=environment, serve=serve,
                                             reloadable=reloadable, user_units=user_units, run_as=run_as)
    except _systemd.UnitError as exc:
        raise CommandFailed(str(exc), 2) from None
    for unit in units:
        unit.max_memory = memory or unit.max_memory
        if unit.kind == "notify":
            unit.watchdog = watchdog or unit.watchdog
        unit.environment_files += [os.path.abspath(path) for path in env_files]
    return units, warnings


def _write_units(files: dict[str, str], directory: str | None, user_units: bool, group: str, dry_run: bool) -> None:
    """Print the units (--dry-run), or write each atomically and say how to start them at boot."""
    from pathlib import Path

    from servicefactory.supervise import _systemd

    if dry_run:
        for file_name, text in files.items():
            click.echo(f"# {file_name}\n{text}")
        return
    where = Path(directory) if directory else (
        Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "systemd" / "user"
        if user_units else Path("/etc/systemd/system"))
    try:
        where.mkdir(parents=True, exist_ok=True)
        for file_name, text in files.items():
            temporary = where / f".{file_name}.tmp"
            temporary.write_text(text)
            os.replace(temporary, where / file_name)
    except OSError as exc:
        raise CommandFailed(f"cannot write the units to {where}: {exc.strerror or exc}", 10) from None
    for file_name in files:
        click.echo(str(where / file_name))
    # a service gone from the file since the last export: its unit would linger, enabled, and start
    # at the next boot outside the group; only units of this group (PartOf= its target) are removed
    part_of = f"PartOf={_systemd.unit_name(group, 'target')}"
    for path in sorted(where.glob(f"{_systemd.PREFIX}*.service")):
        if path.name in files:
            continue
        try:
            if part_of in path.read_text(errors="replace").splitlines():
                path.unlink()
                click.echo(f"removed {path} (no longer exported)")
        except OSError:
            pass
    manager = "systemctl --user" if user_units else "systemctl"
    click.echo(f"start them now and at boot: {manager} daemon-reload && {manager} enable --now "
               f"{_systemd.unit_name(group, 'target')}", err=True)
