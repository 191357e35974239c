"""`servicefactory dashboard`: serve the web dashboard of every service (servicefactory.view.dashboard)."""
from __future__ import annotations

import click

from servicefactory.cli.common import CommandFailed
from servicefactory.cli.common import host_option as _host_option
from servicefactory.cli.common import registry as _registry


@click.command(epilog="""\b
Examples:
  servicefactory dashboard                 # prints http://127.0.0.1:PORT/#token=...
  servicefactory dashboard --port 8420 --open
  SERVICEFACTORY_TOKEN=... servicefactory dashboard --host 0.0.0.0   # off-host: needs a token
""")
@click.option("--host", "--dashboard-host", "host", default="127.0.0.1", show_default=True, callback=_host_option,
              help="Bind to this address; off loopback only with a token ($SERVICEFACTORY_TOKEN or the "
                   "state directory's token file).")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Bind to this port; 0 picks a free one.")
@click.option("--open", "open_", is_flag=True, help="Open the page in a web browser too.")
def dashboard(host: str, port: int, open_: bool) -> None:
    """Serve a live web page of every service (state, CPU, memory, calls, latency, logs; stop and
    restart buttons) until Ctrl+C; print its address, which carries the token the page needs."""
    import signal
    import threading

    from servicefactory._names import host_port, is_loopback
    from servicefactory.http._guard import new_token
    from servicefactory.view.dashboard import serve

    registry = _registry()
    registry.check_safe()
    configured = registry.token()
    loopback = bool(host) and is_loopback(host)
    if not loopback and not configured:
        raise CommandFailed(f"serving the dashboard on {host or 'every address'} needs a token: set "
                            f"SERVICEFACTORY_TOKEN (`servicefactory token` makes one), or bind to 127.0.0.1", 2)
    if not loopback:
        click.echo(f"warning: serving the dashboard off-host over plain HTTP: the token is readable on the "
                   f"wire", err=True)
    token = configured or new_token()
    server = serve(registry, token, host, port)
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
    url = f"http://{host_port(shown, server.port)}/"
    # a token made for this run goes in the fragment (never sent to a server, dropped from the
    # address bar by the page); a configured one is the user's to type
    address = f"{url}#token={token}" if not configured else url
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: stopped.set())
    click.echo(f"dashboard at {address}" + ("" if not configured else "  (log in with your token)"))
    click.echo("Ctrl+C stops it", err=True)
    if open_:
        import webbrowser
        webbrowser.open(address)
    try:
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
