"""Entry point of a supervised service process:
`python -m servicefactory.supervise._child TARGET NAME [HOST] [PORT] [TLS_CERT TLS_KEY]`.

Dies with its supervisor, and takes everything it started along: a watcher thread that sees the
supervisor's lifeline pipe close (however the supervisor died) sends its output to the log file
itself (nobody reads the pipe any more), asks for a graceful stop (SIGTERM: finalize() runs), and
after the stop timeout SIGKILLs every descendant (the process is a child subreaper, so
double-forked and `setsid` ones are found), then itself. A supervisor killed with -9 leaves no
process behind.
"""
from __future__ import annotations

import atexit
import os
import select
import signal
import sys
import threading
import traceback

from servicefactory.supervise import _notify

from servicefactory.supervise import _reaper
from servicefactory.supervise._protocol import LIFELINE_FD_ENV, LOG_PATH_ENV, STOP_TIMEOUT_ENV, SUPERVISOR_PID_ENV
from servicefactory.errors import ServiceFactoryError

#: how often the watcher reaps exited orphans that were re-parented to this process
REAP_EVERY = 5.0


def _die_with_parent() -> None:
    expected = os.environ.get(SUPERVISOR_PID_ENV, "")
    _reaper.become_subreaper()
    if expected.isdigit() and os.getppid() != int(expected):
        sys.exit(0)  # the supervisor died before we could ask to follow it


def _watch_lifeline(name: str) -> None:
    """Start the thread that ends this process tree once the supervisor is gone (if there is a lifeline)."""
    value = os.environ.pop(LIFELINE_FD_ENV, "")
    log_path = os.environ.pop(LOG_PATH_ENV, "")
    try:
        stop_timeout = float(os.environ.pop(STOP_TIMEOUT_ENV, "10"))
    except ValueError:
        stop_timeout = 10.0
    if not value.isdigit():
        return
    fd = int(value)
    os.set_inheritable(fd, False)  # what the service starts must not hold it (it could not close it)
    supervisor = os.environ.get(SUPERVISOR_PID_ENV, "")
    threading.Thread(target=_watcher, args=(fd, int(supervisor) if supervisor.isdigit() else os.getppid(),
                                            stop_timeout, name, log_path),
                     daemon=True, name="servicefactory-lifeline").start()


def _watcher(fd: int, supervisor: int, stop_timeout: float, name: str, log_path: str) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    every = REAP_EVERY
    while os.getppid() == supervisor:  # re-parented: the supervisor is gone
        events = poller.poll(every * 1000)
        if events and events[0][1] & select.POLLHUP:
            break  # the supervisor's end closed: it is exiting (it closes it only once we are gone)
        if events:
            # not a hang-up: the service's own code closed our fd (POLLNVAL) or reused its number.
            # From now on the parent pid alone tells whether the supervisor lives
            poller.unregister(fd)
            every = 1.0
        _reap_adopted()  # an orphan re-parented to us exits: nobody but us can reap it
    # the supervisor is gone: stop gracefully, and end a service that ignores SIGTERM or hangs in
    # finalize() after its stop timeout
    if not threading.main_thread().is_alive():
        return
    _write_own_log(name, log_path)
    os.kill(os.getpid(), signal.SIGTERM)
    threading.Event().wait(stop_timeout)
    end_tree()
    os.kill(os.getpid(), signal.SIGKILL)


def _write_own_log(name: str, log_path: str) -> None:
    """Point stdout and stderr at a pipe whose lines this process writes to its log file, stamped,
    prefixed and escaped as the supervisor would: the supervisor's pipe has no reader any more (a
    print in finalize() would raise BrokenPipeError)."""
    from servicefactory.supervise._supervised import stamp
    from servicefactory.supervise.logfiles import printable

    try:
        log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        log = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    read, write = os.pipe()
    os.dup2(write, 1)
    os.dup2(write, 2)
    os.close(write)

    def copy() -> None:
        with os.fdopen(read, "rb") as lines:
            for line in lines:
                text = printable(line.rstrip(b"\n").decode(errors="replace"))
                try:
                    os.write(log, f"{stamp()} {name} | {text}\n".encode())
                except OSError:
                    pass

    copier = threading.Thread(target=copy, daemon=True, name="servicefactory-output")
    copier.start()

    def drain() -> None:
        # atexit runs while daemon threads still run: without this, the last lines (a finalize()
        # that ends as the process exits) sat in the pipe when the interpreter froze the copier
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.close(null)
        copier.join(2)  # a descendant still holding the pipe must not hold up the exit

    atexit.register(drain)
    os.write(log, f"{stamp()} [servicefactory] {name} lost its supervisor; stopping\n".encode())


def _reap_adopted() -> None:
    """Reap exited children this process did not start itself (orphans of its descendants)."""
    try:  # one system call in the usual case: is any child waiting to be reaped? (not reaping it)
        if os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            return
    except (ChildProcessError, AttributeError, OSError):
        return  # no child at all (or no waitid here)
    zombies = [p for p, parent in _reaper.parents().items() if parent == os.getpid() and _reaper.is_zombie(p)]
    if not zombies:
        return
    import gc

    # a child that a subprocess.Popen (or multiprocessing) object waits for is not ours to reap.
    # Only the zombies listed above are candidates: each was forked before this scan, so its Popen
    # (made before the fork) is seen by it; a child forked since (and exited at once) is not ours
    owned = {getattr(obj, "pid", None) for obj in gc.get_objects() if type(obj).__name__ == "Popen"}
    for pid in zombies:
        if pid not in owned:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def end_tree() -> None:
    """SIGKILL every descendant of this process (what the service started dies with it)."""
    _reaper.kill_tree(os.getpid(), reap=True)


def main(argv: list[str]) -> int:
    """Load the target, build the service and run it; report a failed start on the ready pipe."""
    _die_with_parent()
    _watch_lifeline(argv[1] if len(argv) > 1 else "?")
    try:
        return _run(argv)
    finally:
        end_tree()


def _run(argv: list[str]) -> int:
    target, name = argv[0], argv[1]
    host = argv[2] if len(argv) > 2 and argv[2] else None
    port = int(argv[3]) if len(argv) > 3 and argv[3] else None
    tls = (argv[4], argv[5]) if len(argv) > 5 and argv[4] and argv[5] else None
    from servicefactory.supervise.loader import TargetImportError, load

    try:
        (cls,) = load(target)
    except TargetImportError as exc:
        sys.stderr.write(exc.traceback)
        _notify.notify_failed(exc)
        return 1
    except ServiceFactoryError as exc:
        sys.stderr.write(f"error: {exc}\n")
        _notify.notify_failed(exc)
        return exc.exit_code
    try:
        service = cls()
    except Exception as exc:
        traceback.print_exc()
        _notify.notify_failed(RuntimeError(f"{cls.__name__}() raised {type(exc).__name__}: {exc}"))
        return 1
    try:
        service.run(name=name, host=host, port=port, target=target, tls=tls)
    except ServiceFactoryError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
