"""Spreading calls over the live instances of a service (`Test/1` ... `Test/N`): round robin from a
random starting point, so that many short-lived callers (each CLI `perform`) spread too.

Each call names the instance it goes to (`Servicefactory-Service: Test/2`): an address that now
serves another instance answers 421 and runs nothing. Instances that share one port (a fixed port
bound with SO_REUSEPORT) are one entry, named by the service (`Test`): the kernel picks the
instance per connection, and every instance of the service accepts a call that names the service.
"""
from __future__ import annotations

import itertools
import os
import time

from servicefactory.registry.base import INSTANCE_SEPARATOR

TYPE_CHECKING = False  # typing is for type checkers only: importing it would slow `servicefactory perform`
if TYPE_CHECKING:
    from typing import Any, Callable

    from servicefactory.registry.base import Registry

#: seconds a gathered list of instances is used before the registry is read again (an instance
#: restarted elsewhere, or a new one, is seen within this); a failed call reads it at once. A
#: registry that a watch keeps current (etcd's `follow`) says instead when it changed (`version`)
REFRESH = 1.0
#: the same while some registered instance is not running (restarting): it is back within this
REFRESH_INCOMPLETE = 0.1

_spreads: dict[tuple[str, str], "Spread"] = {}


class Spread:
    """The live instances of one service as (name to send, address, how many instances listen
    there) entries, and whose turn it is."""

    __slots__ = ("entries", "turn", "made", "ttl", "version", "seen")

    def __init__(self, entries: list[tuple[str, tuple[str, int], int]], ttl: float = REFRESH,
                 version: "Callable[[], int | None] | None" = None) -> None:
        self.entries = entries
        start = int.from_bytes(os.urandom(2), "little") % len(entries)  # not `random`: ~1 ms of import
        self.turn = itertools.count(start)  # next() on a count is atomic: threads share it
        self.made = time.monotonic()
        self.ttl = ttl
        # a registry kept current by a watch (etcd's `follow`): true until its version changes
        self.version = version
        self.seen = version() if version is not None else None

    def next(self, tried: "dict[tuple, int] | None" = None) -> tuple[str, tuple[str, int], int] | None:
        """The next entry in turn that was `tried` ((name, address): times) fewer times than
        instances listen there, or None if none is left."""
        for _ in range(len(self.entries)):
            entry = self.entries[next(self.turn) % len(self.entries)]
            if not tried or tried.get(entry[:2], 0) < entry[2]:
                return entry
        return None


def cached(key: tuple[str, str]) -> Spread | None:
    """The spread gathered for `key` (registry, service name) less than its `ttl` ago."""
    spread = _spreads.get(key)
    if spread is None:
        return None
    if spread.seen is not None:
        if spread.version() == spread.seen:  # nothing changed in a registry a watch keeps current
            return spread
        return None
    if time.monotonic() - spread.made < spread.ttl:
        return spread
    return None


def forget(key: tuple[str, str]) -> None:
    """Drop the spread of `key`: the next call reads the registry again."""
    _spreads.pop(key, None)


def gather(key: tuple[str, str], name: str, registry: Registry, is_dead: Callable[[Registry, Any], bool],
           secure: set) -> Spread | None:
    """The live instances of service `name` with an API (None if `name` is an instance's id, runs as
    a plain service, or has no instance running); TLS instances' addresses are added to `secure`."""
    if INSTANCE_SEPARATOR in name:
        return None
    try:
        names = registry.instances_of(name)
    except Exception:  # an invalid name, an unusable registry: the plain lookup says why, in one line
        return None
    if not names or names[0] == name:
        _spreads.pop(key, None)
        return None  # a plain service of that name (or nothing at all): the caller's plain lookup
    by_address: dict[tuple[str, int], list[str]] = {}
    missing = False
    for instance in names:
        record = registry.lookup(instance)
        if record is None or record.state != "running" or record.address is None or is_dead(registry, record):
            missing = missing or record is None or record.state != "stopped"  # a stopped one stays away
            continue
        if record.tls:
            secure.add(record.address)
        else:
            secure.discard(record.address)
        by_address.setdefault(record.address, []).append(instance)
    if not by_address:
        _spreads.pop(key, None)
        return None
    # a port shared by several instances is the service's: any of them may answer a call to it
    entries = [(instances[0] if len(instances) == 1 else name, address, len(instances))
               for address, instances in by_address.items()]
    spread = _spreads[key] = Spread(entries, REFRESH_INCOMPLETE if missing else REFRESH,
                                    getattr(registry, "version", None))
    return spread


def has_instances(name: str, registry: Registry) -> bool:
    """Whether instances of `name` are registered (so that a missing plain record is no surprise)."""
    if INSTANCE_SEPARATOR in name:
        return False
    try:
        return any(INSTANCE_SEPARATOR in instance for instance in registry.instances_of(name))
    except Exception:
        return False
