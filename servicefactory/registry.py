"""Where is service X: one small interface, so that etcd can later stand where the state dir stands."""
from __future__ import annotations

from collections import namedtuple

from ._names import connect_host, host_port

TYPE_CHECKING = False  # typing is for type checkers only: importing it would slow `servicefactory perform`
if TYPE_CHECKING:
    from typing import Any, Iterator, Protocol
else:
    Protocol = object  # at run time Registry is a plain class that documents the interface

#: the registry name of a supervisor is this prefix and its pid
SUPERVISOR_PREFIX = "_supervisor-"

_FIELDS = {
    "name": "", "pid": 0, "host": None, "port": None,
    "create_time": 0.0,  # the process's start time, to tell a reused pid from ours
    "started": 0.0,  # wall-clock time the service was ready
    "target": "", "log_path": None, "hostname": "",
    "state": "running",  # as the supervisor sees it: starting, running, backoff, failed, stopped
    "supervisor": None,  # the name of the supervisor that owns this service, if any
    "restarts": 0,
    "last_exit": None,  # exit code, or -N for death by signal N
    "token": None,  # a supervisor's control token: only its owner can read this file
    "next_try": None,  # wall-clock time a service in backoff or failed is started again, if due
    "stop_timeout": None,  # seconds the service may take to stop (its policy or --stop-timeout)
    "tls": False,  # the API serves TLS only (its url is https://...): clients connect with TLS
}


class ServiceRecord:
    """What a running service publishes about itself."""

    __slots__ = tuple(_FIELDS)

    def __init__(self, name: str, pid: int, **values: Any) -> None:
        unknown = set(values) - set(_FIELDS)
        if unknown:
            raise TypeError(f"unknown ServiceRecord fields: {', '.join(sorted(unknown))}")
        for key, default in _FIELDS.items():
            setattr(self, key, values.get(key, default))
        self.name = name
        self.pid = pid

    def __repr__(self) -> str:
        return f"ServiceRecord({self.name!r}, pid={self.pid}, state={self.state!r}, url={self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ServiceRecord) and self.to_dict() == other.to_dict()

    @property
    def address(self) -> tuple[str, int] | None:
        """Where a client connects: the bound (host, port), a wildcard bind read as loopback."""
        if self.port is None or self.host is None:
            return None
        return connect_host(self.host), self.port

    @property
    def url(self) -> str | None:
        """The API's base URL, or None for a service without an API."""
        address = self.address
        return None if address is None else f"{'https' if self.tls else 'http'}://{host_port(*address)}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {key: getattr(self, key) for key in _FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ServiceRecord":
        """Build from `to_dict()` output, ignoring keys a newer version added."""
        values = {key: value for key, value in data.items() if key in _FIELDS}
        name, pid = values.pop("name"), values.pop("pid")
        if not isinstance(name, str) or not isinstance(pid, int):
            raise TypeError("malformed service record")
        return cls(name, pid, **values)


class Claim(namedtuple("Claim", "name handle")):
    """Proof that this process owns a service name until it releases it."""

    __slots__ = ()


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

    def names(self) -> list[str]:
        """Every name registered now (services and supervisors), sorted."""

    def state_of(self, name: str) -> tuple[str, ServiceRecord | None]:
        """`running`, `stale`, `stopped` or a supervisor's state, with the record it is based on: the live
        owner's truth when the published record is missing, unreadable or an older owner's."""

    def check_safe(self) -> None:
        """Raise StateError (exit 10) if the registry cannot be trusted (e.g. others may write to it).

        Every command and the Python client call this (lookup does) before believing a record.
        """

    def owner_alive(self, record: ServiceRecord) -> bool:
        """Whether `record.pid` is proven to be the service: it holds the name's claim (the locked
        pidfile) open. Only such a pid may be signalled; a record alone proves nothing."""

    def signal(self, record: ServiceRecord, signum: int, *, group: bool = False) -> bool:
        """Send `signum` to the service `record` describes, only if `owner_alive(record)`; True if sent.
        The commands never signal a pid themselves."""

    def remembered(self, name: str) -> dict[str, Any] | None:
        """How `name` was last run (its Spec fields, `settings`: the run Settings, and
        `log_level`), so that `restart` can bring it back with every option; None if never run here."""

    def mark_stopped(self, name: str) -> None:
        """Note that `name` was stopped on purpose (`status` then stops listing it as `stopped`)."""

    def logs(self) -> dict[str, Any]:
        """Every service's log file that exists, by service name (the CLI's `logs` reads these and
        nothing else: it never globs a directory itself)."""


def default_registry() -> "Registry":
    """The registry this process uses unless told otherwise: the local state directory."""
    from .state import LocalRegistry
    return LocalRegistry()
