"""What importing servicefactory, and running `servicefactory perform`, pull in.

As click's tests/test_imports.py does: a fresh interpreter runs the code and lists every module it
imported beyond what a bare interpreter had already loaded, and `perform`'s list is checked against
an allow-list. A new import on perform's path fails the test until it is added here on purpose:
each module costs every cold `servicefactory perform` (click alone cost it ~40 ms; typing ~10 ms;
pathlib, with the urllib.parse and ipaddress it imports, ~7 ms: the registry reads with plain strings).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support import ECHO, wait_until

# every module `servicefactory perform` may import, beyond a bare interpreter's own
PERFORM_MAY_IMPORT = {
    # servicefactory's own, on the path from the console script to one call
    "servicefactory", "servicefactory.cli", "servicefactory.cli.fast", "servicefactory.http.client",
    "servicefactory.errors", "servicefactory._names", "servicefactory.registry.base", "servicefactory.registry.local",
    "servicefactory.http", "servicefactory.registry",  # subpackages whose __init__ imports nothing
    "servicefactory.registry.backends",  # which registry backend: $SERVICEFACTORY_REGISTRY
    "servicefactory._spread",  # calls spread over a service's instances
    "__future__",  # `from __future__ import annotations` is an import too, a cheap one
    # json
    "json", "json.decoder", "json.encoder", "json.scanner", "_json",
    # re (json's scanner needs it, so do names and state)
    "re", "re._casefix", "re._compiler", "re._constants", "re._parser", "_sre", "copyreg", "enum", "functools",
    "_functools", "collections", "_collections", "collections.abc", "itertools", "keyword", "operator",
    "_operator", "reprlib", "types",
    # the call itself, and the state directory's locks
    "socket", "_socket", "array", "math", "select", "selectors", "errno", "threading", "_weakrefset", "fcntl",
    "struct", "_struct",  # small C modules the client's wire code may use
}

# run `servicefactory perform ARGS...` in this interpreter, then print what it imported
PERFORM = """
import atexit, json, sys
baseline = set(sys.modules)
atexit.register(lambda: print(json.dumps(sorted(set(sys.modules) - baseline)), file=sys.stderr))
sys.argv = ["servicefactory", "perform", *sys.argv[1:]]
from servicefactory.cli.fast import main
main()
"""


def imported_by_perform(*args: str, cwd: Path, input: str | None = None, code: int) -> set[str]:
    result = subprocess.run([sys.executable, "-c", PERFORM, *args], cwd=cwd, input=input, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == code, result.stderr
    return set(json.loads(result.stderr.splitlines()[-1]))


def test_import_pulls_in_no_heavy_modules_and_configures_no_logging():
    code = (
        "import logging, sys\n"
        "import servicefactory\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('werkzeug', 'requests', 'psutil', 'click', 'http', 'ssl', 'email', 'typing'))\n"
        "print(heavy, logging.getLogger().handlers, logging.getLogger('servicefactory').handlers)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] [] []"


def test_perform_of_a_service_that_is_not_running_imports_only_the_allowed_modules(tmp_path: Path):
    imported = imported_by_perform("Nope", "echo", '{"a": [1]}', cwd=tmp_path, code=3)
    assert "servicefactory.http.client" in imported  # the list saw perform's own imports
    assert sorted(imported - PERFORM_MAY_IMPORT) == []


def test_a_real_call_through_perform_imports_only_the_allowed_modules(tmp_path: Path, spawn):
    spawn(args=[sys.executable, "-m", "servicefactory", "run", "echo"], files={"echo.py": ECHO})
    wait_until(lambda: subprocess.run([sys.executable, "-m", "servicefactory", "perform", "Echo", "echo"],
                                      capture_output=True, timeout=30).returncode == 0, message="Echo answering")
    for args, stdin in ((["Echo", "echo", '{"a": "ü"}'], None), (["Echo", "echo", "-", "--timeout=5"], "[1, 2]")):
        imported = imported_by_perform(*args, cwd=tmp_path, input=stdin, code=0)
        assert "socket" in imported
        assert sorted(imported - PERFORM_MAY_IMPORT) == []
    for heavy in ("click", "typing", "pathlib", "encodings.idna", "werkzeug", "requests", "psutil", "http.client", "tempfile", "logging"):
        assert heavy not in imported


# what a command's --help must not pay for: each is imported by the command that needs it, when it runs
HEAVY = ("werkzeug", "requests", "urllib3", "psutil", "etcd3gw", "prometheus_client", "httptools", "ssl",
         "rich", "textual", "urwid", "curses", "watchdog", "watchfiles", "tomllib", "tomli", "schemathesis")

HELP_OF_EVERY_COMMAND = """
import json, sys
import click
from servicefactory.cli.main import cli
names = []
def walk(group, path):
    for name, command in sorted(group.commands.items()):
        names.append([*path, name])
        if isinstance(command, click.Group):
            walk(command, [*path, name])
walk(cli, [])
print(json.dumps(names))
"""


def test_the_help_of_every_command_imports_nothing_heavy(tmp_path: Path):
    """`servicefactory COMMAND --help` is what a newcomer types first: it stays a click-only start,
    for commands added later too (the list is read from the CLI group, not written here)."""
    listed = subprocess.run([sys.executable, "-c", HELP_OF_EVERY_COMMAND], capture_output=True, text=True,
                            timeout=30, check=True)
    commands = json.loads(listed.stdout)
    assert ["up"] in commands and ["perform"] in commands  # the walk saw the group's commands
    for command in commands:
        code = ("import atexit, json, sys\n"
                "atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=sys.stderr))\n"
                f"sys.argv = ['servicefactory', *{command!r}, '--help']\n"
                "from servicefactory.cli.fast import main\nmain()\n")
        result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=30,
                                env={**os.environ, "SERVICEFACTORY_HOME": str(tmp_path / "home")})
        assert result.returncode == 0 and "Usage:" in result.stdout, (command, result.stderr)
        imported = json.loads(result.stderr.splitlines()[-1])
        pulled = sorted(m for m in imported if m.split(".")[0] in HEAVY)
        assert pulled == [], (command, pulled)
