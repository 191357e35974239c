"""Where is service X, and who owns it: the registry's interface, its records, and the policy every
backend shares, so that etcd can later stand where the state directory stands."""
from __future__ import annotations

from collections import namedtuple

from servicefactory._names import connect_host, host_port

TYPE_CHECKING = False  # typing is for type checkers only: importing it would slow `servicefactory perform`
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any, Iterator, Protocol
else:
    Protocol = object  # at run time Registry is a plain class that documents the interface

#: the registry name of a supervisor is this prefix and its pid
SUPERVISOR_PREFIX = "_supervisor-"
#: between a service's name and its instance number in an instance's id: `Test/2`
INSTANCE_SEPARATOR = "/"


def instance_id(service: str, instance: int | None) -> str:
    """The registry name of instance `instance` of `service` (`Test/2`); `service` itself for None."""
    return service if instance is None else f"{service}{INSTANCE_SEPARATOR}{instance}"


def split_instance(name: str) -> tuple[str, int | None]:
    """(`Test`, 2) for the instance id `Test/2`, (`Test`, None) for a plain name; ValueError if the
    part after the separator is not a positive decimal number."""
    service, separator, number = name.partition(INSTANCE_SEPARATOR)
    if not separator:
        return name, None
    if not (number.isdigit() and number.isascii() and number[0] != "0" and len(number) <= 6):
        raise ValueError(f"invalid instance number {number!r} in {name!r}: use {service}/1, {service}/2, ...")
    return service, int(number)

_FIELDS = {
    "name": "",  # the registry name: the service's (`Test`), or an instance's id (`Test/2`)
    "instance": None,  # the instance number (`Test/2`: 2), None for a service run without --instances
    "pid": 0, "host": None, "port": None,
    "create_time": 0.0,  # the process's start time, to tell a reused pid from ours
    "started": 0.0,  # wall-clock time the service was ready
    "target": "", "log_path": None, "hostname": "",
    "state": "running",  # as the supervisor sees it: starting, running, backoff, failed, stopped
    "supervisor": None,  # the name of the supervisor that owns this service, if any
    "restarts": 0,
    "last_exit": None,  # exit code, or -N for death by signal N
    "next_try": None,  # wall-clock time a service in backoff or failed is started again, if due
    "stop_timeout": None,  # seconds the service may take to stop (its policy or --stop-timeout)
    "tls": False,  # the API serves TLS only (its url is https://...): clients connect with TLS
    "last_reason": None,  # why its process last ended: crash, memory, watchdog, manual, ... (supervise._reasons)
    "history": None,  # its last stops and restarts, oldest first: [{time, reason, exit, detail}]
    "reloadable": False,  # it defines reload(): SIGHUP (`servicefactory reload`) calls it
    "error": None,  # why a service is failed or blocked (`blocked: migrate exited 1`), if known
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

    @property
    def service(self) -> str:
        """The service's name without the instance number: `Test` for `Test/2`."""
        return self.name.partition(INSTANCE_SEPARATOR)[0]

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
    """Proof that this process owns a service name until it releases it; `handle` is the backend's
    own (a locked file's descriptor, a lease): nothing outside the backend looks inside it."""

    __slots__ = ()


class Registry(Protocol):
    """Finds services by name, and proves who owns one: what every caller relies on, and all it may
    rely on (nothing outside a backend touches its files, pids or locks). The local state directory
    (`state.LocalRegistry`) is the first backend; `tests/test_registry_contract.py` is what every
    backend must pass. The policy built on these answers (`state_of`) is shared, below.
    """

    #: where the records are kept (a directory, a URL): for messages, and as a cache key
    where: str
    #: whether other hosts share it (etcd): a record may then be another host's, reached over the network
    many_hosts: bool

    # -- owning a name --

    def claim(self, name: str) -> Claim:
        """Own `name` while this process lives, or raise AlreadyRunning (StateError if unusable)."""

    def supervisor_name(self, pid: int) -> str:
        """The registry name of the supervisor that is process `pid` here: `_supervisor-PID`, with
        this host in it where many hosts share the registry (their pids are not one namespace)."""

    def inheritable(self, claim: Claim) -> tuple[int, ...]:
        """The descriptors a child process started under `claim` must inherit (`pass_fds`): holding
        them is what proves the child owns the name while it runs (see `hand_over`)."""

    def hand_over(self, claim: Claim, pid: int) -> None:
        """Note that process `pid` (a supervised child) now runs under `claim`, which its starter keeps."""

    def publish(self, claim: Claim, record: ServiceRecord) -> None:
        """Make `record` visible to lookups, and keep it so (rewritten if lost) until `release`; never
        over a record of the name's next owner."""

    def publish_secret(self, claim: Claim, secret: str) -> None:
        """Keep `secret` (a supervisor's control token) for the claim's name apart from its public
        record: only this user can read it back (`secret`), and `release` withdraws it."""

    def release(self, claim: Claim) -> None:
        """Give the name up and withdraw its record and secret, if the claim still owns them."""

    # -- reading --

    def lookup(self, name: str) -> ServiceRecord | None:
        """The record published under `name` (None if missing or unreadable); StateError if the
        registry cannot be trusted."""

    def records(self) -> Iterator[ServiceRecord]:
        """Every published record."""

    def names(self) -> list[str]:
        """Every name registered now (services, their instances' ids, supervisors), sorted."""

    def instances_of(self, service: str) -> list[str]:
        """The names registered now under `service`: `service` itself if registered, and each of its
        instances' ids (`Test/1`, `Test/2`, ...), in instance order. What a client spreads calls over."""

    def secret(self, name: str) -> str | None:
        """The secret published for `name` (see `publish_secret`), or None."""

    def token(self) -> str | None:
        """The API token callers send and services require ($SERVICEFACTORY_TOKEN, else the registry's own)."""

    def token_hint(self) -> str:
        """Where a token can be put for `token()` to find it, for messages."""

    # -- liveness: the backend's proof, never a pid a caller checks itself --

    def is_held(self, name: str) -> bool:
        """Whether a live process holds `name`'s claim."""

    def owner(self, name: str) -> ServiceRecord | None:
        """What the live holder of `name` proves about itself (its pid, its supervisor) when its
        record is missing or an older owner's; None if nobody holds it."""

    def is_current(self, record: ServiceRecord) -> bool:
        """Whether `record` was written by the name's present owner (not left by an older one)."""

    def just_claimed(self, name: str) -> bool:
        """Whether `name` was claimed moments ago and its owner has not published yet (it is starting)."""

    def has_leftovers(self, name: str) -> bool:
        """Whether anything of `name` is still registered (a record, a claim's traces)."""

    def is_gone(self, record: ServiceRecord) -> bool:
        """Whether the process `record` names has exited (or its pid now names another process)."""

    def is_suspended(self, record: ServiceRecord) -> bool:
        """Whether the process `record` names is stopped (SIGSTOP): it would act on a request only
        once it is resumed."""

    def owner_alive(self, record: ServiceRecord) -> bool:
        """Whether `record.pid` is proven to be the service: it holds the name's claim. Only such a
        process may be signalled; a record alone proves nothing."""

    def signal(self, record: ServiceRecord, signum: int, *, group: bool = False) -> bool:
        """Send `signum` to the service `record` describes, only if `owner_alive(record)`; True if sent.
        The commands never signal a pid themselves."""

    def usage(self, record: ServiceRecord) -> dict[str, Any]:
        """The live service's `cpu` (seconds) and `memory` (bytes), or {} if unknown."""

    def clean(self, name: str) -> None:
        """Remove what a dead owner of `name` left behind; never anything of a live owner."""

    # -- how services were run, for `restart` --

    def remember(self, name: str, spec: dict[str, Any]) -> None:
        """Keep how `name` was run (its Spec fields, `settings`: the run Settings, `log_level`)."""

    def remembered(self, name: str) -> dict[str, Any] | None:
        """How `name` was last run (see `remember`), so that `restart` can bring it back with every
        option; None if never run here."""

    def remembered_names(self) -> list[str]:
        """Every name remembered whose last stop was not asked for with `stop`, sorted."""

    def mark_stopped(self, name: str) -> None:
        """Note that `name` was stopped on purpose (`status` then stops listing it as `stopped`)."""

    # -- the place --

    def ensure(self) -> None:
        """Make the registry ready to be written to, or raise StateError (exit 10)."""

    def check_safe(self) -> None:
        """Raise StateError (exit 10) if the registry cannot be trusted (e.g. others may write to it).

        Every command and the Python client call this (lookup does) before believing a record.
        """

    def exists(self) -> bool:
        """Whether anything can be registered here yet (a state directory that exists)."""

    def environment(self) -> dict[str, str]:
        """The environment a process started from here needs to use this very registry."""

    def private_dir(self) -> Path:
        """A directory on this host that only this user can write: logs, a supervisor's working directory."""

    def log_file(self, name: str) -> Path:
        """Where `name` logs by default (a supervisor started by `run --daemon`: `log_file("supervisor")`)."""

    def log_of(self, name: str) -> Path:
        """Where `name` logs: its record's log path, else the one it was last run with, else `log_file`."""

    def logs(self) -> dict[str, Any]:
        """Every service's log file that exists, by service name (the CLI's `logs` reads these and
        nothing else: it never globs a directory itself)."""


def state_of(registry: Registry, name: str) -> tuple[str, ServiceRecord | None]:
    """`running`, `stale`, `stopped`, or what a supervisor reports (`starting`, `backoff`, `failed`, ...),
    with the record it is based on: one policy over every backend's answers.

    The live process holding the name wins over its record: a record that is missing for more
    than a moment, unreadable or left by an older owner is replaced by what that process proves.
    """
    record = registry.lookup(name)
    if not registry.is_held(name):
        return ("stale" if record is not None or registry.has_leftovers(name) else "stopped"), record
    if record is not None and not registry.is_current(record):
        record = None
    if record is None:
        owner = registry.owner(name)
        if owner is None or registry.just_claimed(name):
            return "starting", None
        return owner.state, owner
    gone = registry.is_gone(record)
    if record.supervisor:
        if not registry.is_held(record.supervisor):
            # its supervisor died; the child follows it out within its stop timeout
            return ("stale" if gone else "stopping"), record
        if record.state == "running" and gone:
            return "starting", record  # it just exited; its supervisor is about to say what next
        return record.state, record
    return ("stale" if gone else "running"), record
