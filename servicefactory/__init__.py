"""servicefactory: write a long-running Python service as a class; run, call and stop it from anywhere.

Importing this package has no side effects: no logging configuration, no server, and nothing
heavier than the standard library until a service runs or is called.
"""
from __future__ import annotations

from typing import Any

from .errors import (ActionFailed, AddressInUse, AlreadyRunning, InvalidData, LoadError, ProtocolError,
                     ServiceFactoryError, ServiceNotRunning, ServiceTimeout, StartupError, StateError,
                     TokenRequired, Unauthorized, UnknownAction)

__version__ = "0.2.0"

__all__ = [
    "Service", "__version__",
    "ServiceFactoryError", "ServiceNotRunning", "UnknownAction", "ActionFailed", "ServiceTimeout",
    "InvalidData", "Unauthorized", "ProtocolError", "StartupError", "AddressInUse", "TokenRequired",
    "AlreadyRunning", "LoadError", "StateError",
]


def __getattr__(name: str) -> Any:
    # the service machinery loads on first use, so `servicefactory perform` and friends start fast
    if name == "Service":
        from ._facade import Service
        globals()["Service"] = Service
        return Service
    raise AttributeError(f"module 'servicefactory' has no attribute {name!r}")
