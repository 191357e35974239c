"""Plain commands: any program supervised like a Service class (restart policy, logs, stop, status).

A command runs below a keeper: a few lines of Python (`_keeper.py`, a child subreaper) that fork the
program and wait for it. The program is the one the supervisor records, signals and measures (its
own pid, reported on the status pipe once it was exec'd: `pid N`), in a session of its own as
before; the keeper only waits, in its own session, which no stop signal reaches. Being a
subreaper, the keeper adopts whatever the program double-forks or `setsid`s away, so all of it
stays below the keeper: when the program exits, the keeper SIGKILLs what is left, then exits with
the program's status (dying by the same signal if it was killed). When the supervisor dies
(however: its lifeline pipe closes), the keeper sends the program its stop signal, SIGKILLs the
whole tree after the stop timeout, and exits: a `kill -9` of the supervisor leaves no process of a
command behind. If the keeper itself is killed outright, the kernel SIGKILLs the program
(PR_SET_PDEATHSIG) and its orphans come to the supervisor, which kills them.

Why a keeper process rather than the program alone or a cgroup: after exec nothing of ours runs
in the program, so a program killed with its supervisor would orphan what it had `setsid` away
(only an ancestor that outlives the supervisor can end those), and a cgroup needs a delegated,
writable cgroup tree (not there in containers, under most users' sessions) and still someone alive
to kill it. The keeper costs one small Python process per command (see README, Running an
application, for its memory and start time).

Readiness: a command is ready when its `ready` check passes, polled from the supervisor's loop
without blocking it: `{port = N}` (a TCP connect succeeds), `{command = [...]}` (it exits 0) or
`{log = "regex"}` (a line of its output matches); at once without a check (once it was exec'd).
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from typing import Any

#: the keeper, run as `python -I -S KEEPER SUPERVISOR_PID LIFELINE_FD REPORT_FD STOP_SIGNAL
#: STOP_TIMEOUT USER PROGRAM ARGS...` (see _keeper.py); a file, so that `ps` shows a short line
KEEPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_keeper.py")

#: seconds between two tries of a port or command check; and the most one command check may take
CHECK_EVERY = 0.1
CHECK_TIMEOUT = 10.0


def argv(command: list[str], user: str | None, lifeline: int, report: int, stop_signal: int,
         stop_timeout: float) -> list[str]:
    """The command line that runs `command` below its keeper (as `user`, if given)."""
    drop = "-"
    if user:
        uid, gid, groups = user_ids(user)
        drop = f"{uid}:{gid}:{','.join(map(str, groups))}"
    return [sys.executable, "-I", "-S", KEEPER, str(os.getpid()), str(lifeline), str(report),
            str(stop_signal), repr(stop_timeout), drop, *command]


def started(line: bytes) -> int | None:
    """The program's pid from the keeper's report line (`pid N`), or None."""
    word, _, number = line.partition(b" ")
    return int(number) if word == b"pid" and number.strip().isdigit() else None


def user_ids(user: str) -> tuple[int, int, list[int]]:
    """`user`'s uid, primary gid and supplementary groups (KeyError if there is no such user)."""
    import pwd

    entry = pwd.getpwnam(user)
    groups = os.getgrouplist(user, entry.pw_gid)  # one NSS query, not a walk of every group
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
