"""Exceptions raised by servicefactory; the CLI maps each to its exit code."""
from __future__ import annotations

__all__ = [
    "ServiceFactoryError",
    "ServiceNotRunning",
    "ServiceUnavailable",
    "UnknownAction",
    "ActionFailed",
    "ServiceTimeout",
    "InvalidData",
    "Unauthorized",
    "ProtocolError",
    "StartupError",
    "AddressInUse",
    "TokenRequired",
    "AlreadyRunning",
    "LoadError",
    "StateError",
    "InvalidName",
    "EXIT_CODES",
]

#: what each exit code of the `servicefactory` command means: every error's `exit_code` is one of
#: these (its help lists them from here)
EXIT_CODES = {
    0: "success",
    1: "failure (service did not start, loop crashed, ...)",
    2: "usage: bad arguments, bad JSON, bad target",
    3: "not running",
    4: "unknown action",
    5: "the action failed (remote error on stderr)",
    6: "timeout",
    7: "unauthorized (token missing or wrong)",
    8: "protocol error (not a servicefactory API)",
    9: "already running",
    10: "state directory unusable",
}


class ServiceFactoryError(Exception):
    """Root of every error servicefactory raises on purpose."""

    #: exit code the CLI uses when this error ends a command
    exit_code = 1


class ServiceNotRunning(ServiceFactoryError):
    """The service has no live endpoint: nothing registered, or connection refused."""

    exit_code = 3


class ServiceUnavailable(ServiceNotRunning):
    """The service received the request but did not run it (it is stopping): safe to retry.

    Answered as HTTP 503 with `Connection: close` while a service drains; the action did not run.
    """


class UnknownAction(ServiceFactoryError):
    """The service answered, but exposes no such action."""

    exit_code = 4


class ActionFailed(ServiceFactoryError):
    """The service's handler raised; carries the remote exception's type and message."""

    exit_code = 5

    def __init__(self, message: str, remote_type: str = "", remote_message: str = "",
                 status: int = 500) -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.status = status


class ServiceTimeout(ServiceFactoryError, TimeoutError):
    """The service did not answer within the timeout."""

    exit_code = 6


class InvalidData(ServiceFactoryError, ValueError):
    """Data given to perform cannot be sent: not JSON, or not serialisable."""

    exit_code = 2


class Unauthorized(ServiceFactoryError):
    """The service refused the request's token (HTTP 401/403)."""

    exit_code = 7


class ProtocolError(ServiceFactoryError):
    """The peer answered something that is not servicefactory's HTTP/JSON."""

    exit_code = 8


class StartupError(ServiceFactoryError):
    """A service could not start; the loop never ran."""

    exit_code = 1


class AddressInUse(StartupError):
    """The service's address is already bound by another process."""


class TokenRequired(StartupError):
    """Binding a non-loopback address without an API token is refused."""


class AlreadyRunning(ServiceFactoryError):
    """Another live process holds the service name's pidfile."""

    exit_code = 9


class LoadError(ServiceFactoryError):
    """A `module:Class` target cannot be resolved to service classes."""

    exit_code = 2


class StateError(ServiceFactoryError):
    """The state directory is unusable (wrong owner, permissions, vanished)."""

    exit_code = 10


class InvalidName(ServiceFactoryError, ValueError):
    """A service name that cannot name files in the state directory."""

    exit_code = 2
