"""Plain commands: any program supervised like a Service class (restart policy, logs, stop, status).

A command runs below a keeper: a few lines of Python (`SHIM`, a child subreaper) that fork the
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

#: run as `python -I -S -c SHIM SUPERVISOR_PID LIFELINE_FD REPORT_FD STOP_SIGNAL STOP_TIMEOUT USER
#: PROGRAM ARGS...`, USER `uid:gid:groups` or `-`. The program drops to the user after the fork,
#: from the keeper's interpreter started as root: the user need not be able to read it. The death
#: signal comes after the drop, which would clear it.
SHIM = r"""
import ctypes, os, select, signal, sys, time
supervisor, lifeline, report = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
stop_signal, stop_timeout, user, command = int(sys.argv[4]), float(sys.argv[5]), sys.argv[6], sys.argv[7:]
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: what the program starts and orphans stays below us
libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: dying by the program's signal below dumps no core of ours
for fd in (lifeline, report):
    os.set_inheritable(fd, False)  # the program must not hold them
if os.getppid() != supervisor:
    os._exit(0)  # the supervisor died before we started
me, program, pending = os.getpid(), 0, []
def forward(signum, frame):  # only who signals our pid directly (the supervisor before it knows the program's)
    if program:
        try:
            os.killpg(program, signum)
        except OSError:
            pass
    else:
        pending.append(signum)
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
saved = {signum: signal.getsignal(signum) for signum in FORWARDED}
for signum in FORWARDED:
    signal.signal(signum, forward)
import warnings  # what execvp imports: the user may not be able to read the standard library
check_read, check_write = os.pipe()
os.set_inheritable(check_write, False)  # closed by a successful exec: how we know it ran
pid = os.fork()
if pid == 0:
    try:
        os.close(check_read)
        for signum, handler in saved.items():  # as the supervisor started us (SIGHUP ignored)
            signal.signal(signum, handler)
        os.setsid()
        if user != "-":
            uid, gid, groups = user.split(":")
            os.setgroups([int(g) for g in groups.split(",") if g])
            os.setgid(int(gid))
            os.setuid(int(uid))
        libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG = SIGKILL: it ends if we are killed outright
        if os.getppid() != me:
            os._exit(0)
        os.execvp(command[0], command)
    except OSError as exc:
        os.write(check_write, f"cannot run {command[0]}: {exc.strerror}".encode())
    except BaseException as exc:
        os.write(check_write, f"cannot run {command[0]}: {exc}".encode())
    os._exit(127)
os.close(check_write)
error = b""
while True:
    try:
        chunk = os.read(check_read, 4096)
    except InterruptedError:
        continue
    if not chunk:
        break
    error += chunk
if error:
    sys.stderr.write(error.decode(errors="replace") + "\n")
    os.waitpid(pid, 0)
    os._exit(127)
program = pid
for signum in pending:
    forward(signum, None)
try:
    os.write(report, f"pid {pid}\n".encode())
    os.close(report)
except OSError:
    pass

def tree():
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    data = handle.read()
            except OSError:
                continue
            fields = data[data.rfind(b")") + 2:].split()
            if len(fields) > 1 and fields[0] not in (b"Z", b"X"):
                children.setdefault(int(fields[1]), []).append(int(entry))
    found, queue = [], list(children.get(me, []))
    while queue:
        current = queue.pop()
        found.append(current)
        queue.extend(children.get(current, []))
    return found

def reap():
    global status
    while True:
        try:
            reaped, code = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not reaped:
            return
        if reaped == pid:
            status = code

status = None
try:
    pidfd = os.pidfd_open(pid)
except (AttributeError, OSError):
    pidfd = None
poller = select.poll()
poller.register(lifeline, select.POLLIN)
if pidfd is not None:
    poller.register(pidfd, select.POLLIN)
deadline = None
while status is None:
    wait = 1.0 if pidfd is not None else 0.05
    if deadline is not None:
        wait = max(0.0, min(wait, deadline - time.monotonic()))
    events = poller.poll(wait * 1000)
    if deadline is None and (any(fd == lifeline for fd, _ in events) or os.getppid() != supervisor):
        # the supervisor is gone (its end of the lifeline closed): stop the program as it would have
        poller.unregister(lifeline)
        deadline = time.monotonic() + stop_timeout
        try:
            os.killpg(pid, stop_signal)
        except OSError:
            pass
    reap()
    if status is None and deadline is not None and time.monotonic() >= deadline:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        deadline = time.monotonic() + 3600
# the program is gone: so is everything it started (every orphan of it was re-parented to us)
for _ in range(1000):
    left = tree()
    if not left:
        break
    for each in left:
        try:
            os.kill(each, signal.SIGKILL)
        except OSError:
            pass
    time.sleep(0.002)
    reap()
if os.WIFSIGNALED(status):
    signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
    os.kill(me, os.WTERMSIG(status))
    time.sleep(1)
os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)
"""

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
    return [sys.executable, "-I", "-S", "-c", SHIM, str(os.getpid()), str(lifeline), str(report),
            str(stop_signal), repr(stop_timeout), drop, *command]


def started(line: bytes) -> int | None:
    """The program's pid from the keeper's report line (`pid N`), or None."""
    word, _, number = line.partition(b" ")
    return int(number) if word == b"pid" and number.strip().isdigit() else None


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
