"""The keeper of a command service (see _commands): forks and execs the program, waits for it, and
ends everything the program left when it exits or when the supervisor dies.

Run as `python -I -S _keeper.py SUPERVISOR_PID LIFELINE_FD REPORT_FD STOP_SIGNAL STOP_TIMEOUT USER
PROGRAM ARGS...`, USER `uid:gid:groups` or `-`. Standard library only, and nothing imported after
the program's user is dropped to (the user may not be able to read the standard library). Never
imported by servicefactory itself: only run.
"""
import ctypes
import os
import select
import signal
import sys
import time
import warnings  # noqa: F401  (what execvp imports, loaded while we may still read it)

PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 1, 4, 36

#: what the keeper passes on to the program when its own pid is signalled (the supervisor signals
#: the program's group itself once it knows the program's pid)
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def _start(libc, keeper, command, user, saved, check_write):
    """In the forked child: the supervisor's signal dispositions back, a session of its own, the
    user, a death signal tied to the keeper, then exec (or the reason it failed, on check_write)."""
    try:
        for signum, handler in saved.items():  # as the supervisor started us (SIGHUP ignored)
            signal.signal(signum, handler)
        os.setsid()
        if user != "-":
            uid, gid, groups = user.split(":")
            os.setgroups([int(g) for g in groups.split(",") if g])
            os.setgid(int(gid))
            os.setuid(int(uid))
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after the drop, which would clear it
        if os.getppid() != keeper:
            os._exit(0)  # the keeper died before the line above
        os.execvp(command[0], command)
    except OSError as exc:
        os.write(check_write, f"cannot run {command[0]}: {exc.strerror}".encode())
    except BaseException as exc:  # noqa: BLE001 - anything, said on the pipe, never raised further
        os.write(check_write, f"cannot run {command[0]}: {exc}".encode())
    os._exit(127)


def descendants(me):
    """Every live process below `me` (orphans of the program were re-parented to us)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
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


def reap(program):
    """Reap every exited child; the program's wait status if it was one of them, else None."""
    status = None
    while True:
        try:
            reaped, code = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return status
        if not reaped:
            return status
        if reaped == program:
            status = code


def main(argv):
    """Keep one program: its exit status becomes ours."""
    supervisor, lifeline, report = int(argv[0]), int(argv[1]), int(argv[2])
    stop_signal, stop_timeout, user, command = int(argv[3]), float(argv[4]), argv[5], argv[6:]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # what the program starts and orphans stays below us
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # dying by the program's signal below dumps no core of ours
    for fd in (lifeline, report):
        os.set_inheritable(fd, False)  # the program must not hold them
    if os.getppid() != supervisor:
        os._exit(0)  # the supervisor died before we started
    me = os.getpid()
    state = {"program": 0, "pending": []}

    def forward(signum, frame):  # only who signals our own pid (the supervisor, before the report)
        if state["program"]:
            try:
                os.killpg(state["program"], signum)
            except OSError:
                pass
        else:
            state["pending"].append(signum)

    saved = {signum: signal.getsignal(signum) for signum in FORWARDED}
    for signum in FORWARDED:
        signal.signal(signum, forward)
    check_read, check_write = os.pipe()
    os.set_inheritable(check_write, False)  # closed by a successful exec: how we know it ran
    pid = os.fork()
    if pid == 0:
        os.close(check_read)
        _start(libc, me, command, user, saved, check_write)
    os.close(check_write)
    error = b""
    while True:
        chunk = os.read(check_read, 4096)
        if not chunk:
            break
        error += chunk
    os.close(check_read)
    if error:
        sys.stderr.write(error.decode(errors="replace") + "\n")
        os.waitpid(pid, 0)
        os._exit(127)
    state["program"] = pid
    for signum in state["pending"]:
        forward(signum, None)
    try:
        os.write(report, f"pid {pid}\n".encode())
        os.close(report)
    except OSError:
        pass
    status = _wait(pid, supervisor, lifeline, stop_signal, stop_timeout)
    # the program is gone: so is everything it started (every orphan of it was re-parented to us)
    for _ in range(1000):
        left = descendants(me)
        if not left:
            break
        for each in left:
            try:
                os.kill(each, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.002)
        reap(pid)
    if os.WIFSIGNALED(status):  # die as the program died: the supervisor reads the same status
        if os.WTERMSIG(status) not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
        os.kill(me, os.WTERMSIG(status))
        time.sleep(1)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def _wait(pid, supervisor, lifeline, stop_signal, stop_timeout):
    """The program's wait status, once it exited; if the supervisor dies first (its end of the
    lifeline closes), stop the program as the supervisor would have: its stop signal, SIGKILL after
    its stop timeout."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    poller = select.poll()
    poller.register(lifeline, select.POLLIN)
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)
    deadline = None
    while True:
        wait = 1.0 if pidfd is not None else 0.05  # orphans that exit are reaped at least this often
        if deadline is not None:
            wait = max(0.0, min(wait, deadline - time.monotonic()))
        events = poller.poll(wait * 1000)
        if deadline is None and (any(fd == lifeline for fd, _ in events) or os.getppid() != supervisor):
            poller.unregister(lifeline)
            deadline = time.monotonic() + stop_timeout
            try:
                os.killpg(pid, stop_signal)
            except OSError:
                pass
        status = reap(pid)
        if status is not None:
            return status
        if deadline is not None and time.monotonic() >= deadline:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            deadline = time.monotonic() + 3600


if __name__ == "__main__":
    main(sys.argv[1:])
