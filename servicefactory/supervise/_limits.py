"""Limits the supervisor enforces on a service: its memory (with all its descendants), its watchdog.

The memory of a service is the resident set of its process and of every process below it (a
service that forks workers is measured as a whole), read from /proc once per check for all
services at once: one scan of the process table, then one small read per process. Shared pages
are counted in each process that maps them, so a forking service is measured conservatively.
"""
from __future__ import annotations

import os
import re

from servicefactory.supervise import _reaper

#: seconds between two memory checks (the issue asks for at least one per second; PM2 checks every 30 s)
MEMORY_CHECK_EVERY = 0.5

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1024 ** 2, "MB": 1024 ** 2, "MIB": 1024 ** 2,
          "G": 1024 ** 3, "GB": 1024 ** 3, "GIB": 1024 ** 3, "T": 1024 ** 4, "TB": 1024 ** 4, "TIB": 1024 ** 4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(value: object) -> int:
    """Bytes from `200M`, `1.5G`, `512K`, `1048576` (units are powers of 1024); ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        number, unit = float(value), ""
    else:
        match = _SIZE.match(str(value))
        if not match or match.group(2).upper() not in _UNITS:
            raise ValueError(f"not a size: {value!r} (write it as 200M, 1.5G, 512K or a number of bytes)")
        number, unit = float(match.group(1)), match.group(2).upper()
    size = int(number * _UNITS[unit])
    if size < 1024 * 1024:
        raise ValueError(f"a memory limit of {value!r} is below 1M: no Python service fits in it")
    return size


def format_size(size: int) -> str:
    """`200.0M`-style: what `status` prints for memory."""
    return f"{size / 1048576:.1f}M"


def rss(pid: int) -> int:
    """Resident bytes of one process (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            return int(handle.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def tree_memory(roots: list[int]) -> dict[int, int]:
    """Resident bytes of each root process together with all its descendants, from one /proc scan."""
    children: dict[int, list[int]] = {}
    for child, parent in _reaper.parents().items():
        children.setdefault(parent, []).append(child)
    totals = {}
    for root in roots:
        total, queue, seen = 0, [root], set()
        while queue:
            pid = queue.pop()
            if pid in seen:
                continue
            seen.add(pid)
            total += rss(pid)
            queue.extend(children.get(pid, ()))
        totals[root] = total
    return totals
