"""Stop and restart from a live view: the `servicefactory` command itself, so that a button does
exactly what the command line does (through the supervisor, or stop and run again)."""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

#: how long one action may take before the view gives up waiting (its stop timeout and a start
#: are bounded by the command itself; this only guards against a command that hangs)
ACTION_TIMEOUT = 300.0
ACTIONS = ("stop", "restart")


@dataclass
class Outcome:
    """What one stop or restart did: whether it worked, and the command's last line."""

    ok: bool
    message: str


def run_action(action: str, name: str, timeout: float = ACTION_TIMEOUT) -> Outcome:
    """Run `servicefactory ACTION NAME` and report how it went, in one line."""
    from servicefactory.registry.local import check_name
    from servicefactory.supervise._supervised import python_command

    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    check_name(name)
    try:
        done = subprocess.run(python_command("servicefactory") + [action, name], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, errors="replace", timeout=timeout,
                              env=dict(os.environ))
    except subprocess.TimeoutExpired:
        return Outcome(False, f"{action} {name}: no answer within {timeout:g} s")
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    # restart says first where it starts the service again; its last line says how that went
    message = lines[-1] if lines else f"{action} {name}: exit {done.returncode}"
    return Outcome(done.returncode == 0, message)
