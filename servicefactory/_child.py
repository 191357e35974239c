"""Entry point of a supervised service process: `python -m servicefactory._child TARGET NAME [HOST] [PORT]`.

Dies with its supervisor (parent-death signal), so a supervisor killed with -9 leaves no orphan.
"""
from __future__ import annotations

import os
import signal
import sys
import traceback

from . import _notify
from .errors import ServiceFactoryError

SUPERVISOR_PID_ENV = "SERVICEFACTORY_SUPERVISOR_PID"


def _die_with_parent() -> None:
    expected = os.environ.get(SUPERVISOR_PID_ENV, "")
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the supervisor's stop still signals our process group
    if expected.isdigit() and os.getppid() != int(expected):
        sys.exit(0)  # the supervisor died before we could ask to follow it


def main(argv: list[str]) -> int:
    """Load the target, build the service and run it; report a failed start on the ready pipe."""
    _die_with_parent()
    target, name = argv[0], argv[1]
    host = argv[2] if len(argv) > 2 and argv[2] else None
    port = int(argv[3]) if len(argv) > 3 and argv[3] else None
    from .loader import TargetImportError, load

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
        service.run(name=name, host=host, port=port, target=target)
    except ServiceFactoryError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
