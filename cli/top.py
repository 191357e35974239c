"""`servicefactory top`: the live terminal view (servicefactory.view.top does the drawing)."""
from __future__ import annotations

import os
import sys

import click

from servicefactory.cli.common import CommandFailed
from servicefactory.cli.common import registry as _registry


@click.command(epilog="""\b
Keys:
  up/down (j/k)  select a service
  s / r          stop / restart it (asks first: y confirms)
  l / Enter      follow its log (q, Esc or l goes back)
  q / Ctrl+C     quit
""")
@click.option("--interval", type=click.FloatRange(0.2, 3600), default=1.0, show_default=True,
              help="Seconds between two readings.")
def top(interval: float) -> None:
    """A live view of every service: state, pid, CPU, memory, calls/s, errors/s, restarts, uptime."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise CommandFailed("top needs a terminal; use `servicefactory status` (or `status --json`) in scripts", 2)
    if os.environ.get("TERM", "").lower() in ("dumb", "unknown"):  # rich would draw nothing there
        raise CommandFailed(f"top needs a terminal that can redraw its screen (TERM={os.environ['TERM']}); "
                            f"use `servicefactory status`", 2)
    import termios

    from servicefactory.view._rows import Sampler
    from servicefactory.view.top import Top, run

    registry = _registry()
    registry.check_safe()
    sampler = Sampler(registry)
    rows = sampler.sample()  # a state directory it cannot use is one line here, before the screen is taken
    screen = Top(sampler, interval=interval, where=str(registry.where))
    # the first screen shows these rows; the rates (CPU %) come one interval later, measured over
    # an interval, not over the few milliseconds until a second reading
    screen.refresh(rows)
    try:
        run(screen)
    except termios.error as exc:  # a terminal whose modes cannot be set
        raise CommandFailed(f"cannot use this terminal ({exc}); use `servicefactory status`", 2) from None
    finally:
        sampler.close()
