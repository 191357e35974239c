"""`down` when the application file no longer loads (a syntax error, an unknown key, the file
deleted): it stops what the last `up` of that file started, as the supervisor knows it, dependents
first, and says the file could not be read; with nothing of it running, the file's error (exit 2)."""
from __future__ import annotations

import pytest

APP = """
[services.db]
command = ["sh", "-c", "echo db up; exec sleep 300"]
ready = { log = "db up" }

[services.web]
command = ["sleep", "300"]
depends_on = ["db"]
"""

OTHER = """
[services.other]
command = ["sleep", "300"]
"""

BROKEN = {
    "syntax": APP + "\n[services.web\n",
    "unknown key": APP.replace('command = ["sleep", "300"]', 'command = ["sleep", "300"]\nrestrat = "no"'),
    "deleted": None,
}


@pytest.mark.parametrize("how", list(BROKEN))
def test_down_on_a_broken_file_stops_what_its_last_up_started(sf, how):
    sf.write("servicefactory.toml", APP)
    sf.write("other.toml", OTHER)
    assert sf("up").returncode == 0
    assert sf("up", "-f", "other.toml").returncode == 0
    pids = [sf.row("db")["pid"], sf.row("web")["pid"]]
    if BROKEN[how] is None:
        (sf.cwd / "servicefactory.toml").unlink()
    else:
        sf.write("servicefactory.toml", BROKEN[how])
    result = sf("down")
    assert result.returncode == 0, result
    assert result.stderr.startswith("warning: servicefactory.toml") and \
        "stopping what `up` started from it" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert result.stdout.splitlines() == ["web stopped", "db stopped"], result.stdout
    from support import gone

    assert all(gone(pid) for pid in pids)
    assert sf.row("other")["state"] == "running"  # another file's application is not touched
    again = sf("down")
    assert again.returncode == 2 and again.stderr.startswith("error: servicefactory.toml"), again
    assert sf("down", "-f", "other.toml").returncode == 0
    assert not sf.ours()


def test_down_without_the_env_up_was_given_stops_the_services_only_that_environment_added(sf):
    sf.write("servicefactory.toml", APP + '\n[environments.debug.services.tracer]\ncommand = ["sleep", "300"]\n')
    assert sf("up", "--env", "debug").returncode == 0
    tracer = sf.row("tracer")["pid"]
    result = sf("down")
    assert result.returncode == 0, result
    assert set(result.stdout.splitlines()) == {"web stopped", "db stopped", "tracer stopped"}, result.stdout
    from support import gone

    assert gone(tracer)
    assert not sf.ours()
