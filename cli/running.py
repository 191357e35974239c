"""The body of `servicefactory run`: load targets, refuse duplicates, supervise in the foreground
or hand over to a detached supervisor and wait until it says the services are ready."""
from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from servicefactory.cli.common import CommandFailed
from servicefactory.errors import ServiceFactoryError


def load(target: str) -> list:
    """The service classes of `target`; LoadError (one line) for ours, after the user's traceback for theirs."""
    from servicefactory.supervise.loader import TargetImportError
    from servicefactory.supervise.loader import load as load_target

    try:
        return load_target(target)
    except TargetImportError as exc:
        click.echo(exc.traceback, err=True, nl=False)
        raise


def specs(targets: tuple[str, ...], name: str | None, host: str | None, port: int | None,
           log_file: str | None, restart: str | None, stop_timeout: float | None,
           instances: int | None = None, first_instance: int | None = None) -> list:
    """One Spec per service the targets define, with the one-service options applied; CommandFailed
    (exit 2) on misuse."""
    from servicefactory.service import describe
    from servicefactory.supervise.supervisor import Spec

    specs: list[Spec] = []
    for target in targets:
        classes = load(target)
        module_part = target.partition(":")[0]
        if module_part.endswith(".py") or os.sep in module_part:
            module_part = os.path.abspath(module_part)
        for cls in classes:
            service = describe(cls)
            specs.append(Spec(name=service.name, target=f"{module_part}:{cls.__qualname__}", cwd=os.getcwd(),
                              restart=restart or service.policy.restart,
                              stop_timeout=stop_timeout or service.policy.stop_timeout,
                              backoff_max=service.policy.backoff_max, watchdog=service.policy.watchdog,
                              max_memory=service.policy.max_memory,
                              instances=instances or service.policy.instances))
    if first_instance is not None:
        for spec in specs:
            if not spec.instances and first_instance != 1:  # 1 is what `restart` passes back for any run
                raise CommandFailed(f"--first-instance goes with --instances ({spec.name} runs as one process)", 2)
            if spec.instances and first_instance + spec.instances - 1 > 999999:
                raise CommandFailed(f"--first-instance {first_instance} with {spec.instances} instances "
                                    f"goes past instance 999999", 2)
            spec.first_instance = first_instance if spec.instances else 1
    if len(specs) > 1 and (name or host or port is not None or log_file):
        listed = ", ".join(spec.name for spec in specs)
        raise CommandFailed(f"--name, --host, --port and --log-file apply to one service; these targets "
                            f"define {listed}", 2)
    if specs and len(specs) == 1:
        spec = specs[0]
        spec.name = spec.name if name is None else name  # `--name ''` is a bad name, not no name
        spec.host, spec.port = host, port
        spec.log_file = os.path.abspath(log_file) if log_file else None
    from servicefactory.registry.local import check_name
    seen: set[str] = set()
    for spec in specs:
        try:
            check_name(spec.name)
        except ServiceFactoryError as exc:
            raise CommandFailed(exc, 2) from None
        if "/" in spec.name:
            raise CommandFailed(f"the name {spec.name!r} holds a '/', which names an instance; run "
                                f"several instances with --instances", 2)
        if spec.name.startswith("_") or spec.name == "supervisor":
            raise CommandFailed(f"the name {spec.name!r} is reserved for servicefactory's own records; "
                                f"pick another", 2)
        if spec.log_file:
            directory = os.path.dirname(spec.log_file)
            if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
                raise CommandFailed(f"cannot write the log file {spec.log_file}: {directory} is not a "
                                    f"writable directory", 2)
        if spec.name in seen:
            raise CommandFailed(f"two services are named {spec.name!r}; run them separately with --name", 2)
        seen.add(spec.name)
    return specs


def apply_tls(specs: list, cert: str | None, key: str | None) -> None:
    """Give every spec `--tls-cert`/`--tls-key` (absolute: the service starts elsewhere); CommandFailed
    (exit 2) on a missing half or files that cannot serve TLS, checked here as the service would load them."""
    if not cert and not key:
        return
    if not (cert and key):
        raise CommandFailed("--tls-cert and --tls-key go together: give both", 2)
    from servicefactory.http._tls import server_context
    try:
        server_context(cert, key)
    except ServiceFactoryError as exc:
        raise CommandFailed(exc, 2) from None
    for spec in specs:
        spec.tls_cert, spec.tls_key = os.path.abspath(cert), os.path.abspath(key)


def check_free(specs: list, registry: Any) -> None:
    """Raise AlreadyRunning if any name is taken (the supervisor's own claim is the real guard)."""
    from servicefactory.errors import AlreadyRunning
    from servicefactory.registry.base import state_of

    from servicefactory.registry.base import instance_id

    for spec in specs:
        # a service runs either as one process (NAME) or as instances (NAME/1 ...), never as both;
        # its instances may run on several hosts, each its own numbers (--first-instance)
        if spec.instances:
            numbers = range(spec.first_instance, spec.first_instance + spec.instances)
            names = [spec.name] + [instance_id(spec.name, number) for number in numbers]
        else:
            names = [spec.name] + [n for n in registry.instances_of(spec.name) if n != spec.name]
        for name in names:
            state, record = state_of(registry, name)
            if state == "stopping" and record is not None and record.supervisor \
                    and not registry.is_held(record.supervisor):
                # its supervisor died and it is ending (within its stop timeout): take it over, then run
                from servicefactory.supervise import control

                print(f"{name} lost its supervisor and is stopping; taking it over", file=sys.stderr)
                outcome = control.stop(name, None, registry)
                print(("warning: " if outcome.killed else "") + outcome.message, file=sys.stderr)
                state, record = state_of(registry, name)
            if state in ("stopped", "stale"):
                continue
            where = f" (pid {record.pid}, {record.url or 'no API'})" if record and record.pid else ""
            hint = "; use `servicefactory restart`" if state in ("stopped", "failed") else ""
            raise AlreadyRunning(f"{name} is already {state}{where}{hint}")


def run_foreground(specs: list, settings: Any, registry: Any) -> None:
    """Supervise in this process, printing prefixed lines, until Ctrl+C/SIGTERM; exit with its code."""
    import logging
    import signal

    from servicefactory.supervise._supervised import expand_instances
    from servicefactory.supervise.supervisor import run_supervisor

    printer = Printer([spec.name for spec in expand_instances(specs)])
    handler = logging.Handler()
    handler.emit = lambda record: printer("servicefactory", record.getMessage(), True)  # type: ignore[method-assign]
    logging.getLogger("servicefactory").addHandler(handler)
    logging.getLogger("servicefactory").setLevel(logging.INFO)
    logging.getLogger("servicefactory").propagate = False
    # SIGHUP (terminal closed) stops the services gracefully like Ctrl+C
    signal.signal(signal.SIGHUP, lambda signum, frame: os.kill(os.getpid(), signal.SIGTERM))
    sys.exit(run_supervisor(specs, settings, printer=printer, registry=registry))


def run_daemon(specs: list, settings: Any, registry: Any, show: Any = None) -> None:
    """Start a detached supervisor and return once it reports every service ready (or exit with why not);
    `show(services)` prints the report's services instead of the `run` lines."""
    import dataclasses
    import subprocess
    import time

    from servicefactory.supervise._protocol import READY_FD_ENV, StartupReport
    from servicefactory.supervise._supervised import python_command

    registry.ensure()
    ready_read, ready_write = os.pipe()
    log_path = registry.log_file("supervisor")  # `supervisor` is no service's name: see specs()
    config = json.dumps({"specs": [dataclasses.asdict(spec) for spec in specs],
                         "settings": dataclasses.asdict(settings), "log_path": str(log_path)})
    env = dict(os.environ, **{READY_FD_ENV: str(ready_write)})
    from servicefactory.supervise.logfiles import open_private
    log_fd = open_private(log_path)  # never through a symlink (issue 9.7)
    with os.fdopen(log_fd, "ab") as log:
        # isolated: its working directory is the state directory (only we can write there) and it
        # is not on sys.path; each service gets the project directory as its own working directory
        from servicefactory.supervise.supervisor import _hangup_ignored
        with _hangup_ignored():  # a SIGHUP before its handler is in place must not kill it (it means reload)
            process = subprocess.Popen(python_command("servicefactory.supervise.supervisor") + [config],
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                       cwd=registry.private_dir(),
                                       pass_fds=(ready_write,), start_new_session=True)
    os.close(ready_write)
    try:
        with os.fdopen(ready_read, "rb", buffering=0) as ready:
            from servicefactory.cli.progress import ready_line

            # EOF if the supervisor dies: never a hang; on a terminal, which services are ready meanwhile
            from servicefactory.supervise._supervised import expand_instances
            line = ready_line(ready.fileno(), [spec.name for spec in expand_instances(specs)], registry)
    except KeyboardInterrupt:
        # the user gave up waiting: do not leave services starting behind their back
        import signal
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        click.echo("interrupted: stopped the services that were starting", err=True)
        sys.exit(130)
    report = StartupReport.decode(line)
    if report is None:
        process.wait(5)
        from servicefactory.supervise.logfiles import tail
        click.echo("\n".join(tail(log_path, 15)), err=True)
        raise CommandFailed(f"the supervisor exited before its services were ready (see {log_path})", 1)
    if not report.ready:
        service = report.service
        for line_text in report.output:
            click.echo(f"  {service or ''} | {line_text}", err=True)
        prefix = f"{service} failed to start: " if service else ""
        deadline = time.monotonic() + 15
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # it is releasing the names: let it finish before we report
        from servicefactory.supervise.logfiles import printable
        raise CommandFailed(f"{prefix}{printable(str(report.error))}", report.exit_code if not service else 1)
    if show is not None:
        show(report.services)
        return
    for service in report.services:
        state = service.get("state", "running")
        if state == "running":
            click.echo(f"{service['name']} running (pid {service['pid']}, {service['url'] or 'no API'})")
        elif not service.get("ever_ready", True):  # a `stop` while it started: asked for, not a failure
            click.echo(f"{service['name']} stopped while starting (by a stop request)")
        else:  # ready, then stopped by a request that came before every other service was ready
            click.echo(f"{service['name']} {state} (by a stop request)")


class Printer:
    """Prints a service's output as `HH:MM:SS name | line` (`!` for stderr), and the supervisor's own events as
    `HH:MM:SS name   [servicefactory] ...` (no bar: output, always after the bar and escaped, cannot
    imitate them); a colour per service when stdout is a terminal."""

    COLOURS = ["cyan", "green", "yellow", "magenta", "blue", "red", "bright_cyan", "bright_green"]

    def __init__(self, names: list[str]) -> None:
        self.width = max([len(name) for name in names] + [len("servicefactory")])
        self.colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        self.colours = {name: self.COLOURS[i % len(self.COLOURS)] for i, name in enumerate(names)}

    def __call__(self, name: str, text: str, event: bool = False, stream: str = "out") -> None:
        import time

        from servicefactory.supervise.logfiles import printable

        text = printable(text)
        bar = " " if event else "|" if stream == "out" else "!"  # `!`: what it wrote to stderr
        prefix = f"{time.strftime('%H:%M:%S')} {name:<{self.width}} {bar}"
        if self.colour:
            prefix = click.style(prefix, fg=self.colours.get(name, "white"))
        try:
            click.echo(f"{prefix} {text}")
        except (BrokenPipeError, OSError):
            pass
