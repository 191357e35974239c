"""`-f FILE` on every command: `status`, `logs`, `stop`, `restart` (and `up`, `down`) act on the
services that application file declares, and refuse a name it does not declare; `servicefactory -f
FILE COMMAND` works for every command, `logs` included (its own -f follows)."""
from __future__ import annotations

import json

FIRST = """
[services.web]
command = ["sh", "-c", "echo web up; exec sleep 300"]
ready = { log = "web up" }

[services.worker]
command = ["sh", "-c", "echo worker up; exec sleep 300"]
depends_on = ["web"]
"""

SECOND = """
[services.other]
command = ["sh", "-c", "echo other up; exec sleep 300"]
"""


def _up_both(sf) -> None:
    sf.write("first.toml", FIRST)
    sf.write("second.toml", SECOND)
    assert sf("up", "-f", "first.toml").returncode == 0
    assert sf("-f", "second.toml", "up").returncode == 0  # the group's -f, docker compose's way


def _names(result) -> set[str]:
    return {row["name"] for row in json.loads(result.stdout)}


def test_status_and_logs_show_only_the_files_services_and_refuse_a_name_it_does_not_declare(sf):
    _up_both(sf)
    assert _names(sf("status", "--json")) == {"web", "worker", "other"}
    first = sf("status", "-f", "first.toml", "--json")
    assert first.returncode == 0 and _names(first) == {"web", "worker"}, first
    assert _names(sf("-f", "second.toml", "status", "--json")) == {"other"}
    assert _names(sf("status", "-f", "first.toml", "web", "--json")) == {"web"}
    wrong = sf("status", "-f", "first.toml", "other")
    assert wrong.returncode == 2 and wrong.stderr.strip() == \
        "error: other is not a service of first.toml (it declares web, worker)", wrong
    logs = sf("logs", "--file", "first.toml")
    assert logs.returncode == 0 and "web | web up" in logs.stdout and "other up" not in logs.stdout, logs
    logs = sf("-f", "second.toml", "logs", "-n", "5")
    assert "other | other up" in logs.stdout and "web up" not in logs.stdout, logs
    missing = sf("status", "-f", "nowhere.toml")
    assert missing.returncode == 2 and missing.stderr.startswith("error: nowhere.toml: no such file") \
        and "Traceback" not in missing.stderr, missing


def test_stop_and_restart_with_a_file_act_on_its_services_only(sf):
    _up_both(sf)
    other = sf.row("other")["pid"]
    worker = sf.row("worker")["pid"]
    restarted = sf("restart", "-f", "first.toml", "worker")
    assert restarted.returncode == 0, restarted
    assert sf.row("worker")["pid"] != worker and sf.row("worker")["state"] == "running"
    stopped = sf("stop", "-f", "first.toml")
    assert stopped.returncode == 0, stopped
    assert [row["state"] for row in sf.status("web", "worker")] == ["stopped", "stopped"]
    assert sf.row("other")["pid"] == other and sf.row("other")["state"] == "running"
    both = sf("stop", "-f", "first.toml", "--all")
    assert both.returncode == 2 and "not both" in both.stderr, both
    assert sf("-f", "second.toml", "down").returncode == 0
    assert sf("down", "-f", "first.toml").returncode == 0
    assert not sf.ours()


def test_a_value_that_is_not_a_table_under_services_names_no_service(sf):
    """`a = 3` under [services] is no service: -f FILE status says the file declares none (exit 2),
    not a row `a unknown` with exit 3."""
    sf.write("bad.toml", "[services]\na = 3\n")
    result = sf("-f", "bad.toml", "status")
    assert result.returncode == 2 and "no services" in result.stderr and "Traceback" not in result.stderr, \
        (result.stdout, result.stderr)
