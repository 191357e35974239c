"""Plain commands: any program supervised like a Service class (restart policy, logs, stop, status).

A command is exec'd by a few lines of Python (`SHIM`) that first make it a child subreaper and ask
the kernel to SIGKILL it when the supervisor dies, then replace themselves with the program: the
pid the supervisor records, signals and measures is the program's own, not a wrapper's. Being a
subreaper (kept across exec), the program adopts what its children double-fork or `setsid` away,
so those stay its descendants, and when it exits they come to the supervisor, which kills them.

Readiness: a command is ready when its `ready` check passes, polled from the supervisor's loop
without blocking it: `{port = N}` (a TCP connect succeeds), `{command = [...]}` (it exits 0) or
`{log = "regex"}` (a line of its output matches); at once without a check.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from typing import Any

#: run as `python -I -S -c SHIM SUPERVISOR_PID USER PROGRAM ARGS...`, USER `uid:gid:groups` or `-`.
#: It drops to the user itself, after the supervisor's interpreter has started as root: the user
#: need not be able to read it. The death signal comes after the drop, which would clear it.
SHIM = """\
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: what it starts and orphans stays below it
if sys.argv[2] != "-":
    import warnings  # what execvp imports: the user may not be able to read the standard library
    uid, gid, groups = sys.argv[2].split(":")
    os.setgroups([int(g) for g in groups.split(",") if g])
    os.setgid(int(gid))
    os.setuid(int(uid))
libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG = SIGKILL: it ends when the supervisor dies
if os.getppid() != int(sys.argv[1]):
    os._exit(0)  # the supervisor died before the line above
try:
    os.execvp(sys.argv[3], sys.argv[3:])
except OSError as exc:
    sys.stderr.write(f"cannot run {sys.argv[3]}: {exc.strerror}\\n")
    os._exit(127)
"""

#: seconds between two tries of a port or command check; and the most one command check may take
CHECK_EVERY = 0.1
CHECK_TIMEOUT = 10.0


def argv(command: list[str], user: str | None = None) -> list[str]:
    """The command line that runs `command` under the shim (as `user`, if given)."""
    drop = "-"
    if user:
        uid, gid, groups = user_ids(user)
        drop = f"{uid}:{gid}:{','.join(map(str, groups))}"
    return [sys.executable, "-I", "-S", "-c", SHIM, str(os.getpid()), drop, *command]


def user_ids(user: str) -> tuple[int, int, list[int]]:
    """`user`'s uid, primary gid and supplementary groups (KeyError if there is no such user)."""
    import grp
    import pwd

    entry = pwd.getpwnam(user)
    groups = [g.gr_gid for g in grp.getgrall() if user in g.gr_mem]
    return entry.pw_uid, entry.pw_gid, groups


def user_options(user: str | None) -> dict[str, Any]:
    """Popen keywords that drop to `user` (its uid, primary group and groups) before exec."""
    if not user:
        return {}
    uid, gid, groups = user_ids(user)
    return {"user": uid, "group": gid, "extra_groups": groups}


class ReadyCheck:
    """A command's readiness check, polled by the supervisor's loop (never blocking it)."""

    def __init__(self, ready: dict | None, cwd: str | None = None, env: dict | None = None) -> None:
        ready = ready or {}
        self.port = ready.get("port")
        self.host = ready.get("host") or "127.0.0.1"
        self.command = ready.get("command")
        self.pattern = re.compile(ready["log"]) if ready.get("log") else None
        self.at_once = self.port is None and self.command is None and self.pattern is None
        self.cwd, self.env = cwd, env
        self.process: subprocess.Popen | None = None
        self.process_started = 0.0
        self.next_try = 0.0

    @property
    def pid(self) -> int | None:
        """The pid of a command check still running (the supervisor must not take it for a stray)."""
        return self.process.pid if self.process is not None else None

    def on_line(self, text: str) -> bool:
        """Whether this line of the command's output makes it ready."""
        return self.pattern is not None and self.pattern.search(text) is not None

    def poll(self, now: float) -> bool:
        """Whether the port or command check passes now (tried at most every CHECK_EVERY seconds)."""
        if self.process is not None:
            code = self.process.poll()
            if code is None:
                if now - self.process_started > CHECK_TIMEOUT:
                    self.close()
                return False
            self.process = None
            if code == 0:
                return True
        if now < self.next_try:
            return False
        self.next_try = now + CHECK_EVERY
        if self.port is not None:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return True
            except OSError:
                return False
        if self.command is not None:
            try:
                self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL, cwd=self.cwd, env=self.env,
                                                start_new_session=True)
                self.process_started = time.monotonic()
            except OSError:
                self.process = None
        return False

    def due(self) -> float | None:
        """When the loop should look again (monotonic), or None for a log check (output wakes it)."""
        if self.port is None and self.command is None:
            return None
        return self.next_try

    def close(self) -> None:
        """End a command check still running (its whole session)."""
        process, self.process = self.process, None
        if process is None:
            return
        import signal

        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        process.wait()
