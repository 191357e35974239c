"""What every command shares: the one place that turns errors into a message and an exit code
(`Group.invoke`, as click's own `Command.main` does for its exceptions), and the registry."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, NoReturn

import click

from servicefactory.errors import ServiceFactoryError

if TYPE_CHECKING:
    from servicefactory.registry.base import Registry


class CommandFailed(ServiceFactoryError):
    """A command cannot go on: what to say and the exit code (helpers raise it; they never exit)."""

    def __init__(self, message: object, exit_code: int = 1) -> None:
        super().__init__(str(message))
        self.exit_code = exit_code


class Group(click.Group):
    """The `servicefactory` group: a ServiceFactoryError a command raises is printed as one line
    (`error: ...`) and ends the process with the error's exit code; nowhere else does either."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command, turning its ServiceFactoryError into its message and exit code."""
        try:
            return super().invoke(ctx)
        except ServiceFactoryError as error:
            report(error)


def report(error: ServiceFactoryError) -> NoReturn:
    """Print `error: ...` on stderr and exit with the error's exit code."""
    click.echo(f"error: {error}", err=True)
    sys.exit(error.exit_code)


def registry() -> Registry:
    """The registry the commands work on ($SERVICEFACTORY_REGISTRY's backend, by default the local
    state directory).

    What it needs in the environment (a relative SERVICEFACTORY_HOME made absolute) is set here, for
    this process and every process it starts: a supervisor or a restart started elsewhere must use
    this very registry.
    """
    import os

    from servicefactory.registry.backends import default_registry
    found = default_registry()
    os.environ.update(found.environment())
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
