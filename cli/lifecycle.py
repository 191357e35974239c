"""Commands for services in production: `reload` (SIGHUP), `serve` (one service in the foreground,
as a systemd unit's ExecStart) and `systemd export` (unit files).

Each body imports what it needs, so registering them costs the CLI's start nothing.
"""
from __future__ import annotations

import os
import sys
from typing import Any

import click

from servicefactory.cli.common import CommandFailed
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
        if record is None or state != "running":
            raise ServiceNotRunning(f"{name} is {state}, not running: nothing to reload")
        if record.supervisor:
            row = control.call_supervisor(record.supervisor, "reload", {"names": [name], "timeout": timeout},
                                          timeout + 600, registry)[0]
            if row.get("restarted"):
                if row["state"] != "running":
                    click.echo(f"error: {name} defines no reload(); restarted, but it is {row['state']} "
                               f"({row.get('error') or 'see its log'})", err=True)
                    failed = True
                else:
                    click.echo(f"{name} defines no reload(): restarted (pid {row['pid']})")
            elif row.get("reloaded"):
                click.echo(f"{name} reloaded (pid {row['pid']})")
            else:
                click.echo(f"error: {name} reload failed: {row.get('reload_error')}; it runs on with its old "
                           f"settings", err=True)
                failed = True
        elif record.reloadable:
            if not registry.signal(record, signal.SIGHUP):
                raise ServiceNotRunning(f"{name} is not running")
            click.echo(f"{name}: sent SIGHUP (its reload() runs; see its output)")
        else:
            raise CommandFailed(f"{name} defines no reload() and has no supervisor to restart it: "
                                f"restart it the way you started it", 1)
    if failed:
        sys.exit(1)
