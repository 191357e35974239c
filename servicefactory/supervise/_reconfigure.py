"""SIGHUP to a supervisor started by `up`: read the application file again, as `up` would.

The file is read in a process of its own (`python -m servicefactory.supervise._reconfigure FILE
[ENV]`), never in the supervisor: reading it imports each Service class to check it and to take
the defaults of its policy (as `up` does), and user code imported into the supervisor would stay
cached at its old version, could block it, or crash it. That process prints one JSON line: the
Specs, or `{"error": "FILE:LINE: what"}` (exit 2), which the supervisor logs as it is.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

#: seconds the file (and the imports it asks for) may take to read before the reload gives up
READ_TIMEOUT = 60.0


def read(file: str, environment: str | None, timeout: float = READ_TIMEOUT) -> tuple[list[dict] | None, str | None]:
    """(the file's Specs as dicts, None), or (None, one line saying why the file cannot be applied)."""
    from servicefactory.supervise._supervised import python_command

    command = python_command("servicefactory.supervise._reconfigure") + [file] + (
        [environment] if environment else [])
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"{file}: reading it took more than {timeout:g} s (does a service's module block " \
                     f"when imported?)"
    except OSError as exc:
        return None, f"{file}: cannot start the process that reads it: {exc.strerror or exc}"
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        last = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no answer"]
        return None, f"{file}: reading it failed (exit {done.returncode}): {last[0]}"
    if "error" in answer:
        return None, str(answer["error"])
    return answer.get("specs"), None


def main(argv: list[str]) -> int:
    """Print the file's Specs as one JSON line, or its error (exit 2)."""
    from servicefactory import appfile
    from servicefactory.errors import ServiceFactoryError

    file, environment = argv[0], (argv[1] if len(argv) > 1 else None)
    try:
        app = appfile.load(file, environment)
    except ServiceFactoryError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return 2
    except Exception as exc:  # a service's module raised something odd while being checked: still one line
        print(json.dumps({"error": f"{file}: {type(exc).__name__}: {exc}"}), flush=True)
        return 2
    print(json.dumps({"specs": [dataclasses.asdict(spec) for spec in app.specs]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
