"""Stop and restart from a live view, doing what `servicefactory stop`/`restart` do and saying it
in the same words: through the supervisor when one runs the service, else by the command itself.

Library calls where they can be (a supervisor serving the dashboard kills every child process that
is not one of its services when one exits: a `servicefactory` child would be one of those); the
command only for a restart with no live supervisor (run again with every remembered option).
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import Any

#: how long one action may take before the view gives up waiting (its stop timeout and a start
#: are bounded by the supervisor or the command; this only guards against one that hangs)
ACTION_TIMEOUT = 300.0
ACTIONS = ("stop", "restart")


@dataclass
class Outcome:
    """What one stop or restart did: whether it worked, and the line the command would print."""

    ok: bool
    message: str


def run_action(action: str, name: str, registry: Any = None, timeout: float = ACTION_TIMEOUT) -> Outcome:
    """Stop or restart `name` and report how it went, in one line."""
    from servicefactory.errors import ServiceFactoryError
    from servicefactory.registry.local import check_name

    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    check_name(name)
    if registry is None:
        from servicefactory.registry.backends import default_registry
        registry = default_registry()
    try:
        return _stop(name, registry) if action == "stop" else _restart(name, registry, timeout)
    except ServiceFactoryError as exc:
        return Outcome(False, f"{name}: {exc}")


def _stop(name: str, registry: Any) -> Outcome:
    from servicefactory.supervise import control

    outcome = control.stop(name, None, registry)
    return Outcome(not (outcome.failed or outcome.unknown), outcome.message)


def _restart(name: str, registry: Any, timeout: float) -> Outcome:
    from servicefactory.registry.base import state_of
    from servicefactory.supervise import control

    state, record = state_of(registry, name)
    if record is not None and record.supervisor and state != "stale" and registry.is_held(record.supervisor):
        limit = control.own_timeout(record)
        rows = control.call_supervisor(record.supervisor, "restart", {"names": [name]}, limit + 600, registry)
        row = rows[0]
        if row["state"] != "running":
            return Outcome(False, f"{name} did not come back: {row['state']} ({row.get('error') or 'see its log'})")
        return Outcome(True, f"{name} running (pid {row['pid']}, {row['url'] or 'no API'})")
    return _command("restart", name, timeout)


def _command(action: str, name: str, timeout: float) -> Outcome:
    """`servicefactory ACTION NAME` as a child process, and its last line."""
    from servicefactory.supervise._supervised import python_command

    try:
        done = subprocess.run(python_command("servicefactory") + [action, name], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, errors="replace", timeout=timeout,
                              env=dict(os.environ))
    except subprocess.TimeoutExpired:
        return Outcome(False, f"{action} {name}: no answer within {timeout:g} s")
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    # restart says first where it starts the service again; its last line says how that went
    message = lines[-1] if lines else f"{action} {name}: exit {done.returncode}"
    return Outcome(done.returncode == 0, message.removeprefix("error: "))
