"""`servicefactory dashboard`: print the address of the web dashboard a supervisor serves (`run
--dashboard-port`), or serve one (servicefactory.view.dashboard) until Ctrl+C."""
from __future__ import annotations

from typing import Any

import click

from servicefactory.cli.common import CommandFailed
from servicefactory.cli.common import host_option as _host_option
from servicefactory.cli.common import registry as _registry


def check_bind(host: str, registry: Any) -> bool:
    """Whether `host` is loopback; CommandFailed (exit 2) off loopback without a configured token."""
    from servicefactory._names import is_loopback

    loopback = bool(host) and is_loopback(host)
    if not loopback and not registry.token():
        raise CommandFailed(f"serving the dashboard on {host or 'every address'} needs a token: set "
                            f"SERVICEFACTORY_TOKEN (`servicefactory token` makes one), or bind to 127.0.0.1", 2)
    return loopback


def _served(registry: Any) -> tuple[str, str | None] | None:
    """(address, its token or None) of the dashboard a running supervisor serves, if one does."""
    from servicefactory.errors import ServiceFactoryError
    from servicefactory.registry.base import SUPERVISOR_PREFIX, state_of
    from servicefactory.supervise import control

    for name in sorted(registry.names()):
        if not name.startswith(SUPERVISOR_PREFIX) or state_of(registry, name)[0] != "running":
            continue
        try:
            address = control.call_supervisor(name, "dashboard", None, 5.0, registry)
        except ServiceFactoryError:
            continue  # an older supervisor (no such action), or one going away
        if isinstance(address, str) and address:
            return address, None if registry.token() else registry.secret(name)
    return None


def _say(address: str, token: str | None, open_: bool) -> None:
    # a token made for this run goes in the fragment (never sent to a server, dropped from the
    # address bar by the page); a configured one is the user's to type
    shown = f"{address}#token={token}" if token else address
    click.echo(f"dashboard at {shown}" + ("" if token else "  (log in with your token)"))
    if open_:
        import webbrowser
        webbrowser.open(shown)


@click.command(epilog="""\b
Examples:
  servicefactory dashboard                 # a supervisor's (run --dashboard-port), else its own
  servicefactory dashboard --port 8420 --open
  SERVICEFACTORY_TOKEN=... servicefactory dashboard --host 0.0.0.0   # off-host: needs a token
""")
@click.option("--host", "--dashboard-host", "host", default=None, callback=_host_option,
              help="Serve on this address [default: 127.0.0.1]; off loopback only with a token "
                   "($SERVICEFACTORY_TOKEN or the state directory's token file).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Serve on this port [default: a free one].")
@click.option("--open", "open_", is_flag=True, help="Open the page in a web browser too.")
def dashboard(host: str | None, port: int | None, open_: bool) -> None:
    """Print the address of the live web page of every service (state, CPU, memory, calls, latency,
    logs; stop and restart buttons) that a supervisor serves; without one (or with --host/--port),
    serve it here until Ctrl+C. The address carries the token the page needs."""
    import signal
    import threading

    from servicefactory._names import host_port
    from servicefactory.http._guard import new_token
    from servicefactory.view.dashboard import serve

    registry = _registry()
    registry.check_safe()
    if host is None and port is None and registry.exists():
        served = _served(registry)
        if served is not None:
            _say(served[0], served[1], open_)
            return
    host = "127.0.0.1" if host is None else host
    if not check_bind(host, registry):
        click.echo("warning: serving the dashboard off-host over plain HTTP: the token is readable on the "
                   "wire", err=True)
    configured = registry.token()
    token = configured or new_token()
    server = serve(registry, token, host, port or 0)
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: stopped.set())
    _say(f"http://{host_port(shown, server.port)}/", None if configured else token, open_)
    click.echo("Ctrl+C stops it", err=True)
    try:
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
