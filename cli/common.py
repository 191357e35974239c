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
    """The local registry (state directory) the commands work on."""
    from servicefactory.state import LocalRegistry
    return LocalRegistry()
