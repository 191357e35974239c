"""servicefactory: write a long-running Python service as a class; run, call and stop it from anywhere.

Importing this package has no side effects: no logging configuration, no server, and nothing
heavier than the standard library until a service runs or is called.
"""
from __future__ import annotations

import os as _os

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


# In a source checkout the CLI's sources sit beside this package, in ../cli (installed copies have
# them in servicefactory/cli): let `servicefactory.cli` resolve there too, so `python -m
# servicefactory` works from the checkout's root, where this directory shadows the installed one.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_checkout, "cli", "main.py")) and \
        _os.path.isfile(_os.path.join(_checkout, "setup.cfg")):
    __path__.append(_checkout)  # type: ignore[name-defined]


def __getattr__(name: str) -> object:  # not typing.Any: importing typing would slow every start
    # the service machinery loads on first use, so `servicefactory perform` and friends start fast
    if name == "Service":
        from ._facade import Service
        globals()["Service"] = Service
        return Service
    raise AttributeError(f"module 'servicefactory' has no attribute {name!r}")
