"""Where is service X: one small interface, so that etcd can later stand where the state dir stands."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterator, Protocol


@dataclass
class ServiceRecord:
    """What a running service publishes about itself."""

    name: str
    pid: int
    host: str | None = None
    port: int | None = None
    create_time: float = 0.0  # the process's start time, to tell a reused pid from ours
    started: float = 0.0  # wall-clock time the service was ready
    target: str = ""
    log_path: str | None = None
    hostname: str = ""
    state: str = "running"  # as the supervisor sees it: starting, running, backoff, failed, stopped
    supervisor: str | None = None  # the name of the supervisor that owns this service, if any
    restarts: int = 0
    last_exit: int | None = None  # exit code, or -N for death by signal N
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> tuple[str, int] | None:
        """Where a client connects: the bound (host, port), a wildcard bind read as loopback."""
        if self.port is None or self.host is None:
            return None
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return host, self.port

    @property
    def url(self) -> str | None:
        """The API's base URL, or None for a service without an API."""
        address = self.address
        if address is None:
            return None
        host = f"[{address[0]}]" if ":" in address[0] else address[0]
        return f"http://{host}:{address[1]}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ServiceRecord":
        """Build from `to_dict()` output, ignoring keys a newer version added."""
        known = {f.name for f in fields(cls)}
        record = cls(**{key: value for key, value in data.items() if key in known})
        if not isinstance(record.name, str) or not isinstance(record.pid, int):
            raise TypeError("malformed service record")
        return record


@dataclass
class Claim:
    """Proof that this process owns a service name until it releases it."""

    name: str
    handle: Any


class Registry(Protocol):
    """Finds services by name; the local state directory is the first backend."""

    def claim(self, name: str) -> Claim:
        """Own `name` while this process lives, or raise AlreadyRunning."""

    def publish(self, claim: Claim, record: ServiceRecord) -> None:
        """Make `record` visible to lookups."""

    def release(self, claim: Claim) -> None:
        """Give the name up and withdraw its record."""

    def lookup(self, name: str) -> ServiceRecord | None:
        """The record published under `name`, if any."""

    def records(self) -> Iterator[ServiceRecord]:
        """Every published record."""


def default_registry() -> "Registry":
    """The registry this process uses unless told otherwise: the local state directory."""
    from .state import LocalRegistry
    return LocalRegistry()
