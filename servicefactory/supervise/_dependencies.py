"""Start order: which service waits for which, and on what condition.

`depends_on = { redis = "ready", migrate = "completed" }` names services and what to wait for:

- `started`: its process was started;
- `ready`: it said it is ready (a Service class's API answers, a command's `ready` check passed);
- `completed`: it exited 0 (a one-shot job);
- `healthy`: it is ready and its `health` action says `running` (a command: as `ready`).

Pure, like the restart policy: the supervisor describes each service as a `Progress` and asks
`verdict`, so every rule is tested without a process (tests/test_app_dependencies.py). A cycle is
found before anything starts (`find_cycle`); `waves` is the order `up` shows and stops in reverse.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

#: what `depends_on` may wait for
CONDITIONS = ("started", "ready", "completed", "healthy")


@dataclass
class Progress:
    """What the supervisor knows of one dependency, as far as its dependents care."""

    state: str  # its ServiceState value
    started: bool = False  # a process of it was started at least once
    ever_ready: bool = False  # some run of it said ready
    last_exit: int | None = None
    healthy: bool = False  # its health action answered `running` (commands: its ready check passed)
    asked_to_stop: bool = False  # a user stopped it: its dependents must not wait for ever
    error: str | None = None


def describe_exit(code: int | None) -> str:
    """`exited 1`, `was killed by SIGKILL`, `did not exit`."""
    if code is None:
        return "did not exit"
    if code >= 0:
        return f"exited {code}"
    import signal

    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


def verdict(name: str, condition: str, progress: Progress) -> tuple[bool, str | None]:
    """(met, why it never will be): met as soon as the condition holds; a reason (`migrate exited 1`)
    when it cannot hold any more, so the dependent is blocked; (False, None) to keep waiting."""
    state = progress.state
    if state == "blocked":
        return False, f"{name} is blocked ({progress.error or 'a dependency of it failed'})"
    if condition == "completed":
        if state == "stopped" and progress.started and progress.last_exit == 0:
            return True, None
        if state in ("failed", "stopped") and progress.started:
            return False, f"{name} {describe_exit(progress.last_exit)}"
    else:
        met = {"started": progress.started, "ready": progress.ever_ready,
               "healthy": progress.ever_ready and progress.healthy}[condition]
        if met:
            return True, None
        if state == "failed":
            exited = f" ({describe_exit(progress.last_exit)})" if progress.last_exit is not None else ""
            return False, f"{name} failed{exited}"
        if state == "stopped" and progress.started:
            return False, f"{name} {describe_exit(progress.last_exit)} before it was {condition}"
    if state == "stopped" and progress.asked_to_stop:
        return False, f"{name} was stopped"
    return False, None


def waiting_on(depends_on: Mapping[str, str],
               progress: Mapping[str, Progress | Sequence[Progress]]) -> tuple[list[str], str | None]:
    """(the dependencies not met yet, the first reason the service can never start or None). A
    service run as instances is a list of Progress, one per instance (api/1 ...): met when every
    instance meets the condition, blocked when any never will."""
    pending = []
    for name, condition in depends_on.items():
        each = progress[name]
        members = [(name, each)] if isinstance(each, Progress) else \
            [(f"{name}/{number}", member) for number, member in enumerate(each, 1)]
        met_all = bool(members)
        for label, member in members:
            met, blocked = verdict(label, condition, member)
            if blocked is not None:
                return [name], f"{blocked}"
            met_all = met_all and met
        if not met_all:
            pending.append(name)
    return pending, None


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A dependency cycle as a path that ends where it starts (['a', 'b', 'a']), or None."""
    colour: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        path.append(node)
        for successor in graph.get(node, ()):
            if colour.get(successor) == 1:
                return path[path.index(successor):] + [successor]
            if successor not in colour and successor in graph:
                found = visit(successor)
                if found:
                    return found
        path.pop()
        colour[node] = 2
        return None

    for node in graph:
        if node not in colour:
            found = visit(node)
            if found:
                return found
    return None


def waves(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The services in start order, in waves that may start in parallel (the graph has no cycle)."""
    remaining = {node: set(graph.get(node, ())) & set(graph) for node in graph}
    order: list[list[str]] = []
    while remaining:
        wave = sorted(node for node, needs in remaining.items() if not needs)
        if not wave:
            raise ValueError(f"dependency cycle: {' -> '.join(find_cycle(graph) or [])}")
        order.append(wave)
        for node in wave:
            del remaining[node]
        for needs in remaining.values():
            needs.difference_update(wave)
    return order


def dependents(graph: Mapping[str, Iterable[str]], name: str) -> list[str]:
    """The services that depend on `name` directly."""
    return [node for node, needs in graph.items() if name in needs]
