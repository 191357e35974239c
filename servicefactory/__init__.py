"""servicefactory: write a long-running Python service as a class; run, call and stop it from anywhere.

Importing this package has no side effects: no logging configuration, no server, and nothing
heavier than the standard library until a service runs or is called.
"""
from __future__ import annotations

from .api import handle as _handle
from .errors import (ActionFailed, AddressInUse, AlreadyRunning, InvalidData, LoadError, ProtocolError,
                     ServiceFactoryError, ServiceNotRunning, ServiceTimeout, StartupError, StateError,
                     TokenRequired, Unauthorized, UnknownAction)
from .service import ServiceBase as _ServiceBase
from .service import endpoint as _endpoint

__version__ = "0.2.0"

__all__ = [
    "Service", "__version__",
    "ServiceFactoryError", "ServiceNotRunning", "UnknownAction", "ActionFailed", "ServiceTimeout",
    "InvalidData", "Unauthorized", "ProtocolError", "StartupError", "AddressInUse", "TokenRequired",
    "AlreadyRunning", "LoadError", "StateError",
]


class _API:
    """`Service.API`: the decorators that expose a service over HTTP/JSON."""

    endpoint = staticmethod(_endpoint)
    handle = staticmethod(_handle)


class Service:
    """The founding document's namespace: `Service.base`, `Service.API.endpoint`, `Service.API.handle`."""

    base = _ServiceBase
    API = _API
