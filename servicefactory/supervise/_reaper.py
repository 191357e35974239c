"""Process lineage on Linux: who descends from whom, and how to end a whole tree.

A supervised service can start processes that leave its process group (`setsid`) or its parent
(a double fork). Both the supervisor and each service are child subreapers
(`PR_SET_CHILD_SUBREAPER`): an orphan is re-parented to the nearest of them instead of to init,
so the tree below a process is always complete and can be ended as a whole. Everything here is
best effort and silent where the kernel lacks the feature (not Linux): the group signals remain.
"""
from __future__ import annotations

import os
import signal
import time

PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def become_subreaper() -> bool:
    """Make orphaned descendants of this process re-parent to it (not to init); True if it worked."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def parents() -> dict[int, int]:
    """pid -> parent pid of every process visible in /proc (empty where there is no /proc)."""
    table = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return table
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        # the command name (in parentheses) may itself hold spaces and parentheses: split after the last
        fields = data[data.rfind(b")") + 2:].split()
        if len(fields) > 1 and fields[1].isdigit():
            table[int(entry)] = int(fields[1])
    return table


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (children first)."""
    table = parents()
    children: dict[int, list[int]] = {}
    for child, parent in table.items():
        children.setdefault(parent, []).append(child)
    found, queue = [], list(children.get(pid, []))
    while queue:
        current = queue.pop(0)
        found.append(current)
        queue.extend(children.get(current, []))
    return found


def is_zombie(pid: int) -> bool:
    """Whether `pid` has exited and waits to be reaped (or is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return True
    return data[data.rfind(b")") + 2:][:1] in (b"Z", b"X")


def kill_tree(pid: int, *, reap: bool, timeout: float = 2.0) -> int:
    """SIGKILL every descendant of `pid` until none is left (orphans of killed ones re-parent to a
    subreaper, maybe `pid`, and are found on the next pass); reap our own children if `reap`.
    Returns how many processes were killed."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = [p for p in descendants(pid) if not is_zombie(p)]
        for target in live:
            try:
                os.kill(target, signal.SIGKILL)
                killed.add(target)
            except (ProcessLookupError, PermissionError):
                pass
        if reap:
            reap_children(exclude=())
        if not live:
            break
        time.sleep(0.01)
    return len(killed)


def reap_children(exclude: tuple[int, ...] | set[int]) -> list[int]:
    """Reap every exited direct child of this process except `exclude` (pids someone else waits for)."""
    reaped = []
    me = os.getpid()
    for child, parent in parents().items():
        if parent != me or child in exclude or not is_zombie(child):
            continue
        try:
            if os.waitpid(child, os.WNOHANG)[0]:
                reaped.append(child)
        except ChildProcessError:
            pass
    return reaped
