"""What the CLI does to running services, as library calls: stop, restart, status."""
from __future__ import annotations

import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from servicefactory._names import is_loopback_literal
from servicefactory.http import client
from servicefactory.supervise._states import LIVE, ServiceState
from servicefactory.errors import ServiceFactoryError, ServiceNotRunning, ServiceTimeout, StateError
from servicefactory.registry.base import (INSTANCE_SEPARATOR, SUPERVISOR_PREFIX, Registry, ServiceRecord, instance_id,
                                          split_instance, state_of)

#: the stop timeout of a service whose record does not say (written by an older version)
DEFAULT_STOP_TIMEOUT = 10.0


@dataclass
class StopOutcome:
    """What stopping one service did."""

    name: str
    was_running: bool
    killed: bool = False
    message: str = ""
    failed: bool = False  # it may still be running: the CLI exits non-zero
    unknown: bool = False  # no service of that name was ever run here: the CLI exits 3


def wait_gone(registry: Registry, record: ServiceRecord, timeout: float) -> bool:
    """Wait until the recorded process has exited; True if it did within `timeout`."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not registry.is_gone(record):
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 1.5, 0.05)
    return True


def _default() -> Registry:
    from servicefactory.registry.backends import default_registry
    return default_registry()


def own_timeout(record: ServiceRecord | None) -> float:
    """The stop timeout the service itself asked for (its policy or `run --stop-timeout`)."""
    value = getattr(record, "stop_timeout", None)
    return float(value) if isinstance(value, (int, float)) and value > 0 else DEFAULT_STOP_TIMEOUT


def instances(name: str, registry: Registry) -> list[str]:
    """The ids of the instances registered for service `name` (`Test/1`, ...), in order; [] for a
    name that is an instance's id or runs as one process."""
    if INSTANCE_SEPARATOR in name or name.startswith(SUPERVISOR_PREFIX):
        return []
    return [found for found in registry.instances_of(name) if found != name]


def expand(names: list[str], registry: Registry, instance: int | None = None) -> list[str]:
    """The registry names that `names` stand for: a service run as instances stands for each of
    them (`Test` -> `Test/1`, `Test/2`), unless `instance` picks one (`Test/2`)."""
    if instance is not None:
        return [name if INSTANCE_SEPARATOR in name else instance_id(name, instance) for name in names]
    expanded: list[str] = []
    for name in names:
        found = instances(name, registry)
        expanded.extend(found if found and registry.lookup(name) is None else [name])
    return expanded


def order(name: str) -> tuple[str, int]:
    """A sort key: a service's instances follow its name in number order (Test/2 before Test/10)."""
    service, number = split_instance(name)
    return service, number or 0


def rolling_restart(name: str, names: list[str], timeout: float | None, registry: Registry) -> list[dict] | None:
    """Restart the instances `names` of service `name` one at a time, each ready again before the
    next stops: by each supervisor in turn (on a registry many hosts share, one per host), the
    others' instances answering meanwhile; None if some instance has no live supervisor. A
    supervisor whose instance did not come back ends the roll there (its rows say so)."""
    records = [registry.lookup(instance) for instance in names]
    if any(record is None or not record.supervisor for record in records):
        return None
    by_supervisor: dict[str, list[ServiceRecord]] = {}
    for record in records:
        by_supervisor.setdefault(record.supervisor, []).append(record)
    if not all(registry.is_held(supervisor) for supervisor in by_supervisor):
        return None
    rows: list[dict] = []
    for supervisor, group in by_supervisor.items():
        limit = sum(timeout if timeout is not None else own_timeout(record) for record in group)
        request: dict[str, Any] = {"names": [record.name for record in group], "rolling": True}
        if timeout is not None:
            request["timeout"] = timeout
        # the supervisor bounds each step by the stop and ready timeouts: ours only guards against a hang
        rows += call_supervisor(supervisor, "restart", request, limit + 600 * len(group), registry)
        if any(row.get("state") != "running" for row in rows):
            break
    return rows


def stop(name: str, timeout: float | None = None, registry: Registry | None = None,
         signum: int | None = None) -> StopOutcome:
    """Stop `name` gracefully (its supervisor's `stop`, its `shutdown` action, or SIGTERM; `signum`
    instead, if given); SIGKILL after `timeout`, by default the service's own stop timeout."""
    registry = registry or _default()
    registry.check_safe()
    state, record = state_of(registry, name)
    if name.startswith(SUPERVISOR_PREFIX) and record is not None and state == "running":
        outcomes = _stop_supervisor(name, record, timeout, registry)
        return StopOutcome(name, True, message=f"{name} stopped" + "".join(f"; {o.message}" for o in outcomes),
                           failed=any(o.failed for o in outcomes))
    if state == "stopped" and record is None:
        known = registry.remembered(name) is not None
        return StopOutcome(name, False, unknown=not known, message=f"{name} is not running" +
                           ("" if known else f" (no service of that name was ever run in {registry.where})"))
    orphan = record is not None and bool(record.supervisor) and not registry.is_held(record.supervisor)
    if state == "stale" or orphan:
        return _stop_orphan(name, record, timeout, registry)
    if record is not None and record.supervisor:
        try:
            outcome = _stop_supervised(name, record, timeout, registry, signum)
        except ServiceFactoryError:
            if not supervisor_died(registry, record.supervisor):
                raise
            # killed while it carried out our stop (kill -9 mid-way): the service ends by its
            # lifeline; take it over as any orphan, rather than leave it and its files behind
            outcome = _stop_orphan(name, registry.lookup(name) or record, timeout, registry)
            if not outcome.was_running and not outcome.failed:  # it ended before we looked: it was running
                outcome = StopOutcome(name, True, message=f"{name} stopped (its supervisor died meanwhile)")
            return outcome
    elif record is None:
        return StopOutcome(name, False, message=f"{name} is starting; try again in a moment", failed=True)
    else:
        outcome = _stop_standalone(name, record, timeout, registry, signum)
    registry.mark_stopped(name)
    return outcome


def _stop_orphan(name: str, record: ServiceRecord | None, timeout: float | None,
                 registry: Registry) -> StopOutcome:
    """A stale name, or a service whose supervisor died: it ends itself within its stop timeout (its
    lifeline); give it that long, then SIGKILL what is proven to be it, and remove its files."""
    killed = False
    alive = record is not None and record.supervisor and registry.owner_alive(record)
    if alive:
        if not wait_gone(registry, record, timeout if timeout is not None else own_timeout(record) + 1.0):
            killed = registry.signal(record, signal.SIGKILL, group=True)
            wait_gone(registry, record, 5.0)
        _await_release(registry, name)
    held = not alive and registry.is_held(name)
    registry.clean(name)
    if record is not None and record.supervisor:
        registry.clean(record.supervisor)  # the dead supervisor's own leftovers (never a live one's)
    registry.mark_stopped(name)
    if killed:
        return StopOutcome(name, True, killed=True,
                           message=f"{name} outlived its supervisor; killed it and removed its files")
    if alive:
        return StopOutcome(name, True, message=f"{name} stopped (it was ending after its supervisor died)")
    if held:  # its lock lives on in a process it left behind: nothing was removed
        return StopOutcome(name, False, failed=True, message=f"{name} is not running, but a process it left "
                           f"behind still holds its name; end that process, then run it again")
    return StopOutcome(name, False, message=f"{name} was not running (removed its stale pidfile)")


def supervisor_suspended(name: str, record: ServiceRecord, registry: Registry) -> str | None:
    """Why `name`'s supervisor cannot be asked now, if it is stopped (SIGSTOP): it would take the request
    and carry it out whenever it is resumed, long after the caller gave up."""
    supervisor = registry.lookup(record.supervisor) if record.supervisor else None
    if supervisor is None or not registry.is_suspended(supervisor):
        return None
    return (f"{name}: its supervisor {record.supervisor} is suspended (SIGSTOP); resume it "
            f"(kill -CONT {supervisor.pid}) or `stop --all`")


def supervisor_died(registry: Registry, supervisor: str, within: float = 2.0) -> bool:
    """Whether `supervisor` is dead, or dies `within` seconds: a call to it that broke off may be the
    moment of a `kill -9`, and the kernel drops a killed process's lock a moment after its sockets."""
    deadline = time.monotonic() + within
    while registry.is_held(supervisor):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def call_supervisor(supervisor: str, action: str, data: Any, timeout: float, registry: Registry) -> Any:
    """Perform `action` on a supervisor's control API, with the token from its (owner-only) record."""
    record = registry.lookup(supervisor)
    if record is None:
        raise ServiceNotRunning(f"supervisor {supervisor} is not running")
    if registry.is_suspended(record):  # it would take the request, hang us, and act on it once resumed
        raise ServiceFactoryError(f"supervisor {supervisor} is suspended (SIGSTOP); resume it "
                                  f"(kill -CONT {record.pid}) or `stop --all`")
    if registry.many_hosts and record.hostname and record.hostname != socket.gethostname() and \
            is_loopback_literal(record.host):
        raise ServiceFactoryError(f"{supervisor} runs on host {record.hostname} with its control API on its "
                                  f"loopback only (it was started without SERVICEFACTORY_TOKEN): do this on "
                                  f"{record.hostname}, or run it there with SERVICEFACTORY_TOKEN set")
    return client.perform(supervisor, action, data, timeout=timeout, registry=registry,
                          token=registry.secret(supervisor))


def _request(names: list[str], timeout: float | None) -> dict[str, Any]:
    # no timeout: the supervisor uses each service's own
    return {"names": names} if timeout is None else {"names": names, "timeout": timeout}


def _stop_supervised(name: str, record: ServiceRecord, timeout: float | None,
                     registry: Registry, signum: int | None = None) -> StopOutcome:
    limit = timeout if timeout is not None else own_timeout(record)
    suspended = supervisor_suspended(name, record, registry)
    if suspended:
        return StopOutcome(name, False, failed=True, message=suspended)
    request = _request([name], timeout)
    if signum is not None:
        request["signal"] = int(signum)
    rows = call_supervisor(record.supervisor, "stop", request, limit + 15, registry)
    row = rows[0] if rows else {}
    killed = row.get("last_exit") == -signal.SIGKILL
    return StopOutcome(name, True, killed=killed, message=f"{name} stopped" + (" (killed)" if killed else ""))


def _stop_standalone(name: str, record: ServiceRecord, timeout: float | None,
                     registry: Registry, signum: int | None = None) -> StopOutcome:
    if not registry.owner_alive(record):
        # the pid in the record is not (or no longer) the process holding the name: never signal it
        registry.clean(name)
        return StopOutcome(name, False, message=f"{name} was not running (its record named pid {record.pid}, "
                                                f"which is not the service)")
    if timeout is None:
        timeout = own_timeout(record) + 1.0  # the service's own stop deadline, then a moment to exit
    deadline = time.monotonic() + timeout
    asked = False
    if signum is not None:
        registry.signal(record, signum)
        asked = True
    elif record.url:
        try:
            client.perform(name, "shutdown", timeout=max(0.1, min(3.0, timeout)), registry=registry)
            asked = True
        except ServiceFactoryError:
            pass  # not answering, or refusing (a token, an overridden shutdown): the signal decides
    if not asked:
        registry.signal(record, signal.SIGTERM)
    killed = False
    if not wait_gone(registry, record, max(0.0, deadline - time.monotonic())):
        registry.signal(record, signal.SIGKILL)
        killed = True
        wait_gone(registry, record, 5.0)
        _await_release(registry, name)
    registry.clean(name)  # a graceful exit removed them already; a killed process could not
    message = f"{name} did not stop within {timeout:g} s; killed it" if killed else f"{name} stopped"
    return StopOutcome(name, True, killed=killed, message=message)


def _await_release(registry: Registry, name: str, timeout: float = 2.0) -> None:
    """Wait until `name`'s lock is free: the kernel drops a killed process's flock a moment after it
    is seen dead (its other threads still hold its files while its main thread is a zombie)."""
    deadline = time.monotonic() + timeout
    while registry.is_held(name) and time.monotonic() < deadline:
        time.sleep(0.01)


def stop_all(timeout: float | None = None, registry: Registry | None = None,
             signum: int | None = None) -> list[StopOutcome]:
    """Stop every service and every supervisor, all in parallel (each within its own stop timeout
    unless `timeout` overrides it; with `signum` instead of the usual graceful request if given)."""
    registry = registry or _default()
    registry.check_safe()
    outcomes: list[StopOutcome] = []
    lock = threading.Lock()

    def one(function: Any, *args: Any) -> None:
        try:
            result = function(*args)
        except ServiceFactoryError as exc:
            result = [StopOutcome(args[0], True, message=f"{args[0]}: {exc}", failed=True)]
        with lock:
            outcomes.extend(result if isinstance(result, list) else [result])

    threads = []
    names = registry.names()
    for name in names:
        state, record = state_of(registry, name)
        if name.startswith(SUPERVISOR_PREFIX):
            if state == "running" and record is not None:
                threads.append(threading.Thread(target=one, args=(_stop_supervisor, name, record, timeout, registry,
                                                                  signum)))
            else:
                registry.clean(name)
        elif not (record is not None and record.supervisor and state != "stale"
                  and registry.is_held(record.supervisor)):  # a live supervisor stops its own
            threads.append(threading.Thread(target=one, args=(stop, name, timeout, registry, signum)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(outcomes, key=lambda outcome: outcome.name)


def _stop_supervisor(name: str, record: ServiceRecord, timeout: float | None,
                     registry: Registry, signum: int | None = None) -> list[StopOutcome]:
    records = {n: registry.lookup(n) for n in registry.names() if not n.startswith(SUPERVISOR_PREFIX)}
    children = {n: r for n, r in records.items() if r is not None and r.supervisor == name}
    before = {n: r.state for n, r in children.items()}
    limit = timeout if timeout is not None else max([own_timeout(r) for r in children.values()] or [0.0])
    rows: list = []
    answered = unreachable = False
    if not registry.is_suspended(record):  # a stopped supervisor would take the request and act on it later
        try:
            request = _request([], timeout)
            if signum is not None:
                request["signal"] = int(signum)
            rows = call_supervisor(name, "stop", request, limit + 5, registry)
            answered = True
            call_supervisor(name, "shutdown", None, 5.0, registry)
        except ServiceTimeout:
            pass  # it took the request and hangs: no point in waiting longer
        except ServiceFactoryError:
            unreachable = not answered  # its record is unreadable, its API refuses us, ...
    grace = 5.0 if answered else 0.5
    if unreachable and registry.signal(record, signal.SIGTERM):
        grace = limit + 5.0  # it stops every service itself, each within its stop timeout
    escalated = False
    if not wait_gone(registry, record, grace):
        # it does not answer (suspended, hung): kill it, so that nothing it queued runs later, and
        # every service it ran (each is the leader of its own process group)
        escalated = True
        registry.signal(record, signal.SIGKILL)
        wait_gone(registry, record, 5.0)
        for child in children.values():
            registry.signal(child, signal.SIGKILL, group=True)
        for child in children.values():
            wait_gone(registry, child, 5.0)
            _await_release(registry, child.name)
        _await_release(registry, name)
    # a supervisor that died on its own (kill -9 mid-way) left services ending by their lifelines
    orphans = {} if escalated else {n: r for n, r in children.items() if registry.owner_alive(r)}
    taken_over = _in_parallel([(_stop_orphan, n, r, timeout, registry) for n, r in orphans.items()])
    for child in before:
        registry.clean(child)
        registry.mark_stopped(child)
    registry.clean(name)
    killed = {row["name"] for row in rows if row.get("last_exit") == -signal.SIGKILL}
    outcomes = []
    for child, state in sorted(before.items()):
        if child in taken_over:
            outcomes.append(taken_over[child])
        elif state == "stopped":
            outcomes.append(StopOutcome(child, False, message=f"{child} was already stopped"))
        elif escalated:
            outcomes.append(StopOutcome(child, True, killed=True, message=f"{child} killed: its supervisor "
                                                                         f"{name} did not answer"))
        elif child in killed and state != "failed":
            outcomes.append(StopOutcome(child, True, killed=True,
                                        message=f"{child} did not stop within {limit:g} s; killed it"))
        else:
            outcomes.append(StopOutcome(child, True, message=f"{child} stopped"))
    return outcomes


def _in_parallel(calls: list[tuple]) -> dict[str, StopOutcome]:
    """Run each `(function, name, *args)` in its own thread; their outcomes by name."""
    outcomes: dict[str, StopOutcome] = {}

    def one(function: Any, name: str, *args: Any) -> None:
        try:
            outcomes[name] = function(name, *args)
        except ServiceFactoryError as exc:
            outcomes[name] = StopOutcome(name, True, message=f"{name}: {exc}", failed=True)

    threads = [threading.Thread(target=one, args=call) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def status(names: list[str] | None = None, registry: Registry | None = None,
           include_supervisors: bool = False) -> list[dict[str, Any]]:
    """One row per service: name, state, pid, hostname (where it runs), host and port (where it
    listens), url, started, uptime, restarts, last exit, cpu, memory."""
    registry = registry or _default()
    snapshot = getattr(registry, "snapshot", None)  # a remote backend's one read of every record (etcd)
    if snapshot is None:
        return _status(names, registry, include_supervisors)
    with snapshot():
        return _status(names, registry, include_supervisors)


def _status(names: list[str] | None, registry: Registry, include_supervisors: bool) -> list[dict[str, Any]]:
    registry.check_safe()
    if not names:
        names = []
        for name in registry.names():
            if name.startswith(SUPERVISOR_PREFIX):
                if state_of(registry, name)[0] == "stale":
                    try:
                        registry.clean(name)  # a dead supervisor's leftover: nothing to report, nothing to keep
                    except StateError:
                        pass  # a read-only directory: `status` only reads, it still reports
                    continue
                if not include_supervisors:
                    continue
            names.append(name)
        # what a supervisor ran before it was signalled or crashed is `stopped`, not gone: it can be
        # restarted; a service remembered as a whole is listed by its instances while they are registered
        remembered = [name for name in registry.remembered_names() if not instances(name, registry)]
        names = sorted(set(names) | set(remembered), key=order)
    rows = []
    now = time.time()
    for name in names:
        state, record = state_of(registry, name)
        if state == "stopped" and record is None and registry.remembered(name) is None:
            state = ServiceState.UNKNOWN.value  # a typo must not look like a service that stopped
        row: dict[str, Any] = {"name": name, "instance": split_instance(name)[1], "state": state,
                               "pid": None, "hostname": None, "host": None, "port": None, "url": None,
                               "started": None, "uptime": None, "restarts": 0, "last_exit": None,
                               "cpu": None, "memory": None, "supervisor": None, "target": None,
                               "last_reason": None, "history": []}
        if record is None:
            history = (registry.remembered(name) or {}).get("history")
            if isinstance(history, list) and history and isinstance(history[-1], dict):
                row.update(history=history, last_reason=history[-1].get("reason"))
        if record is not None:
            live = state in LIVE
            row.update(pid=record.pid if live and record.pid else None, hostname=record.hostname or None,
                       host=record.host, port=record.port,
                       url=record.url if state == "running" else None, started=record.started,
                       restarts=record.restarts, last_exit=record.last_exit, supervisor=record.supervisor,
                       target=record.target, last_reason=record.last_reason, history=list(record.history or []))
            row["next_try"] = record.next_try if state in ("backoff", "failed") else None
            row["error"] = record.error if state in ("blocked", "failed") else None
            if state == "running":
                row["uptime"] = round(now - record.started, 1)
                row.update(registry.usage(record))
        rows.append(row)
    return rows
