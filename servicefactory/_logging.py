"""The default log output a bare `python MyService.py` gets: `<ServiceName> : <message>` on stdout."""
from __future__ import annotations

import logging
import os
import sys

SERVICE_LOGGER = "servicefactory.service"


class ServiceFormatter(logging.Formatter):
    """Formats records as `<ServiceName> : <message>`, the founding document's format."""

    def format(self, record: logging.LogRecord) -> str:
        """Prefix the message with the service's name (or the logger's, for framework records)."""
        service = getattr(record, "service", None)
        if service is None:
            prefix = SERVICE_LOGGER + "."
            service = record.name[len(prefix):] if record.name.startswith(prefix) else record.name
        record.service = service
        return f"{service} : {super().format(record)}"


class _FlushingHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (tests and daemons swap it), flushing each line."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    def emit(self, record: logging.LogRecord) -> None:
        """Write the record to the current sys.stdout."""
        self.stream = sys.stdout
        super().emit(record)


def ensure_default_output() -> None:
    """Send servicefactory's records to stdout unless the application configured logging itself."""
    package = logging.getLogger("servicefactory")
    if logging.getLogger().handlers or package.handlers:
        return
    handler = _FlushingHandler()
    handler.setFormatter(ServiceFormatter("%(message)s"))
    package.addHandler(handler)
    if package.level == logging.NOTSET:
        level = os.environ.get("SERVICEFACTORY_LOG_LEVEL", "INFO").upper()
        package.setLevel(level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO")


def service_logger(name: str) -> logging.Logger:
    """The logger `self.log` writes to for service `name`."""
    return logging.getLogger(f"{SERVICE_LOGGER}.{name}")
