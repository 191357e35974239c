"""What every command shares: turning errors into a message and an exit code, the registry."""
from __future__ import annotations

import sys
from typing import Any, NoReturn

import click

from servicefactory.errors import ServiceFactoryError


def fail(error: ServiceFactoryError | str, code: int | None = None) -> NoReturn:
    """Print `error: ...` on stderr and exit with `code`, else the error's own exit code."""
    message = str(error)
    click.echo(f"error: {message}", err=True)
    sys.exit(code if code is not None else getattr(error, "exit_code", 1))


def registry() -> Any:
    """The local registry (state directory) the commands work on.

    A relative SERVICEFACTORY_HOME is made absolute here, for this process and every process it
    starts: a supervisor or a restart started elsewhere must use this very directory.
    """
    import os

    from servicefactory.state import LocalRegistry
    found = LocalRegistry()
    if os.environ.get("SERVICEFACTORY_HOME"):
        os.environ["SERVICEFACTORY_HOME"] = str(found.home)
    return found


def host_option(ctx: Any, param: Any, value: str | None) -> str | None:
    """click callback for `--host`: an address that cannot be one is refused by what is wrong with it."""
    import ipaddress
    import re

    if not value:
        return value  # "" is the wildcard, as in socket.bind
    literal = value.strip("[]")
    looks_like_address = re.fullmatch(r"[0-9.]+", literal) or ":" in literal
    if looks_like_address:
        try:
            ipaddress.ip_address(literal)
        except ValueError:
            raise click.BadParameter(f"{value} is not a valid IP address") from None
    elif not re.fullmatch(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?", literal):
        raise click.BadParameter(f"{value!r} is not a valid host name or IP address")
    return value
