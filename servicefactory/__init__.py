"""servicefactory: write a long-running Python service as a class; run, call and stop it from anywhere.

Importing this package has no side effects: no logging configuration, no server, and nothing
heavier than the standard library until a service runs or is called.
"""
from __future__ import annotations

from .errors import (ActionFailed, AddressInUse, AlreadyRunning, InvalidData, InvalidName, LoadError, ProtocolError,
                     ServiceFactoryError, ServiceNotRunning, ServiceTimeout, ServiceUnavailable, StartupError, StateError,
                     TokenRequired, Unauthorized, UnknownAction)

__version__ = "0.3.0"

__all__ = [
    "Service", "__version__",
    "ServiceFactoryError", "ServiceNotRunning", "ServiceUnavailable", "UnknownAction", "ActionFailed", "ServiceTimeout",
    "InvalidData", "Unauthorized", "ProtocolError", "StartupError", "AddressInUse", "TokenRequired",
    "AlreadyRunning", "LoadError", "StateError", "InvalidName",
]


def __getattr__(name: str) -> object:  # not typing.Any: importing typing would slow every start
    # the service machinery loads on first use, so `servicefactory perform` and friends start fast
    if name == "Service":
        from servicefactory._facade import Service
        globals()["Service"] = Service
        return Service
    raise AttributeError(f"module 'servicefactory' has no attribute {name!r}")
