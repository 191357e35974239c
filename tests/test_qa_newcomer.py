"""What a newcomer runs first, from the README and the examples, held to the CLI's rules: bad input is
one line and a non-zero exit, never a traceback; a built-in route is not mistaken for a broken service."""
from __future__ import annotations

import json
import shutil

from support import ROOT, Cli


def test_perform_metrics_says_it_is_a_scrape_and_openapi_prints_the_document(sf: Cli) -> None:
    """`perform NAME metrics` gets Prometheus text, not JSON: a one-line pointer to GET /metrics and
    `health`, exit 4 (no such action), instead of "a body that is not JSON" (exit 8)."""
    shutil.copy(ROOT / "examples" / "counter.py", sf.cwd / "counter.py")
    sf.start("counter.py")
    result = sf("perform", "Counter", "metrics")
    assert result.returncode == 4, result
    assert result.stdout == ""
    line, = result.stderr.splitlines()
    assert "GET /metrics" in line and "health" in line and "not JSON" not in line
    document = sf("perform", "Counter", "openapi.json")
    assert document.returncode == 0, document
    assert "/count" in json.loads(document.stdout)["paths"]


def test_reload_of_a_name_never_run_says_so_not_that_it_is_stopped(sf: Cli) -> None:
    """A typo'd name in `reload` is "never run here" (as `stop` and `restart` say), exit 3, not
    "Countr is stopped", which suggests it once ran."""
    result = sf("reload", "Countr")
    assert result.returncode == 3, result
    assert result.stderr == f"error: Countr is not running (no service of that name was ever run in {sf.home})\n"


def test_a_bad_name_with_a_slash_is_a_bad_name_and_an_empty_name_is_not_the_class_name(sf: Cli) -> None:
    """`perform ../etc x` was "invalid instance number 'etc'"; `run --name ''` ran the class's own
    name (and so said "already running" when it was). Both are bad names: one line, exit 2."""
    result = sf("perform", "../etc", "count")
    assert (result.returncode, result.stderr) == (2, "error: invalid service name '../etc': use letters, "
                                                      "digits, '_', '-' and '.'\n"), result
    shutil.copy(ROOT / "examples" / "counter.py", sf.cwd / "counter.py")
    result = sf("run", "counter.py", "--daemon", "--name", "")
    assert result.returncode == 2, result
    assert result.stderr.startswith("error: invalid service name ''"), result.stderr
    result = sf("serve", "counter.py", "--name", "", timeout=30)
    assert result.returncode == 2, result
    assert result.stderr.startswith("error: invalid service name ''"), result.stderr
    assert sf("status", "Counter").returncode == 3  # nothing was started under the class's name
