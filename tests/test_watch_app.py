"""`up --watch` (issue 15): a saved .py file restarts the services under whose directory it is (reason
`file-change`) and, after them, what depends on them (reason `dependency`): dependents stop first and
start again only once the restarted dependency is ready again (its new run, not the old one). A
burst of saves is one restart; a file that does not compile restarts nothing and is said once; a
command that is not Python is not restarted by a .py file; a saved servicefactory.toml is applied.
"""
from __future__ import annotations

import time

import pytest

from support import PYTHON, stamped, wait_until

pytest.importorskip("watchdog", reason="watch mode needs the watchdog package (an install requirement)")

DB = """
import sys, time
import schema
time.sleep(1.0)  # slow to be ready: its dependents must wait for this run, not the last one
print("db ready", schema.VERSION, flush=True)
while True:
    time.sleep(1)
"""

API = """
from servicefactory import Service
import helper

@Service.API.endpoint(port=0)
class App(Service.base):
    def loop(self):
        self.sleep(0.1)

    @Service.API.handle("version")
    def version(self, data):
        return helper.VERSION
"""

WEB = """
import time
print("web up", flush=True)
while True:
    time.sleep(1)
"""

APP = f"""
[settings]
backoff = 0.1

[services.db]
command = ["{PYTHON}", "db.py"]
cwd = "db"
ready = {{ log = "^db ready" }}

[services.api]
target = "app:App"
cwd = "api"
depends_on = ["db"]

[services.web]
command = ["{PYTHON}", "web.py"]
cwd = "web"
ready = {{ log = "^web up" }}
depends_on = {{ api = "ready" }}

[services.cache]
command = ["sleep", "{{seconds}}"]
"""


def _write(sf, seconds: int = 300) -> None:
    sf.write("db/db.py", DB)
    sf.write("db/schema.py", "VERSION = 1\n")
    sf.write("api/app.py", API)
    sf.write("api/helper.py", "VERSION = 1\n")
    sf.write("web/web.py", WEB)
    for index in range(10):
        sf.write(f"web/part{index}.py", "X = 0\n")
    sf.write("servicefactory.toml", APP.replace("{seconds}", str(seconds)))


def _rows(sf) -> dict:
    return {row["name"]: row for row in sf.status()}


def _settled(sf, before: dict, restarted: set[str], timeout: float = 40) -> dict:
    """Wait until exactly `restarted` run with new pids (and are running); return the rows."""
    def done():
        rows = _rows(sf)
        if all(rows[name]["state"] == "running" and rows[name]["pid"] != before[name]["pid"] for name in restarted):
            return rows
        return None
    rows = wait_until(done, timeout=timeout, message=f"{sorted(restarted)} restarted")
    time.sleep(1.0)  # and nothing else follows (the debounce is 0.3 s)
    rows = _rows(sf)
    for name, row in rows.items():
        if name not in restarted:
            assert row["pid"] == before[name]["pid"], (name, row)
    return rows


def _supervisor_log(sf) -> str:
    return (sf.home / "supervisor.log").read_text(errors="replace")


def test_a_saved_file_restarts_its_service_and_then_its_dependents_in_order(sf):
    _write(sf)
    result = sf("up", "--watch")
    assert result.returncode == 0, result
    wait_until(lambda: "watching" in _supervisor_log(sf), message="the watch line")
    before = _rows(sf)
    assert all(row["state"] == "running" for row in before.values()), before

    sf.write("db/schema.py", "VERSION = 2\n")  # db's file: db, then api (depends on db), then web (on api)
    after = _settled(sf, before, {"db", "api", "web"})
    assert after["db"]["last_reason"] == "file-change" and after["db"]["history"][-1]["detail"] == \
        "changed: schema.py", after["db"]
    assert after["api"]["last_reason"] == "dependency" and after["web"]["last_reason"] == "dependency"
    assert after["api"]["history"][-1]["detail"] == "db restarted (schema.py changed)", after["api"]
    assert len(after["cache"]["history"]) == 0  # not Python: a .py file restarts nothing of it
    # dependents stopped first, and each started again only once what it waits for was ready again
    stopped = {name: stamped(sf.log(name), rf"\[servicefactory\] {name} stopped")[-1] for name in ("db", "api", "web")}
    ready = {name: stamped(sf.log(name), rf"\[servicefactory\] {name} ready")[-1] for name in ("db", "api", "web")}
    assert stopped["web"] <= stopped["api"] <= stopped["db"], stopped
    assert ready["db"] <= ready["api"] <= ready["web"], ready
    assert "db | db ready 2" in sf.log("db")

    sf.write("api/helper.py", "VERSION = 3\n")  # api's file: api and web; db runs on
    again = _settled(sf, after, {"api", "web"})
    assert sf("perform", "api", "version").stdout.strip() == "3"
    assert again["api"]["last_reason"] == "file-change" and again["web"]["last_reason"] == "dependency"

    for index in range(10):  # ten files of web's saved at once: one restart of web alone
        sf.write(f"web/part{index}.py", "X = 1\n")
    third = _settled(sf, again, {"web"})
    assert len(third["web"]["history"]) == len(again["web"]["history"]) + 1, third["web"]["history"]
    assert "and 7 more" in third["web"]["history"][-1]["detail"]

    sf.write("api/helper.py", "VERSION = (\n")  # does not compile: nothing restarts, said once
    sf.write("db/schema.py", "VERSION = 4\n")  # held back too while a file is broken
    wait_until(lambda: "not restarting:" in _supervisor_log(sf), timeout=15, message="the syntax error")
    sf.write("api/helper.py", "VERSION = (\n")
    time.sleep(1.5)
    assert _supervisor_log(sf).count("not restarting:") == 1
    assert "helper.py:1: SyntaxError" in _supervisor_log(sf)
    assert {name: row["pid"] for name, row in _rows(sf).items()} == {name: row["pid"] for name, row in third.items()}
    sf.write("api/helper.py", "VERSION = 5\n")  # fixed: the held changes restart db, api and web
    _settled(sf, third, {"db", "api", "web"})
    assert sf("perform", "api", "version").stdout.strip() == "5"
    assert sf("down").returncode == 0
    assert not sf.ours()


def test_a_saved_application_file_is_applied_under_watch(sf):
    _write(sf)
    assert sf("up", "--watch").returncode == 0
    wait_until(lambda: "watching" in _supervisor_log(sf), message="the watch line")
    before = _rows(sf)
    sf.write("servicefactory.toml", APP.replace("{seconds}", "301"))
    after = _settled(sf, before, {"cache"})
    assert after["cache"]["last_reason"] == "config"
    assert "watch: applied" in _supervisor_log(sf) and "restarted cache" in _supervisor_log(sf)
    # a service new to the file, in a directory nobody watched: watched from now on
    sf.write("extra/extra.py", WEB.replace("web up", "extra up"))
    sf.write("servicefactory.toml", APP.replace("{seconds}", "301") + f"""
[services.extra]
command = ["{PYTHON}", "extra.py"]
cwd = "extra"
ready = {{ log = "^extra up" }}
""")
    extra = wait_until(lambda: (r := sf.row("extra")) and r["state"] == "running" and r, timeout=30,
                       message="extra started")
    wait_until(lambda: _supervisor_log(sf).count("for changes of .py files") >= 2, timeout=15,
               message="extra's directory watched")
    sf.write("extra/mod.py", "Y = 1\n")
    row = wait_until(lambda: (r := sf.row("extra")) and r["pid"] != extra["pid"] and r["state"] == "running" and r,
                     timeout=30, message="extra restarted by its file")
    assert row["last_reason"] == "file-change", row
    after = _rows(sf)
    sf.write("servicefactory.toml", "[services.db\n")  # broken: nothing changes
    wait_until(lambda: "watch: not applied" in _supervisor_log(sf), timeout=20, message="refused")
    assert {name: row["pid"] for name, row in _rows(sf).items()} == {name: row["pid"] for name, row in after.items()}
    sf.write("servicefactory.toml", APP.replace("{seconds}", "301") + f"""
[services.extra]
command = ["{PYTHON}", "extra.py"]
cwd = "extra"
""")
    assert sf("down").returncode == 0
    assert not sf.ours()


ROLLED = """
import time
from servicefactory import Service
import helper

@Service.API.endpoint(port=0)
class App(Service.base):
    def loop(self):
        self.sleep(0.1)

    def finalize(self):
        time.sleep(0.3)  # a stop that takes a moment: a roll shows in the stamps

    @Service.API.handle("version")
    def version(self, data):
        return helper.VERSION
"""


def test_the_instances_of_a_changed_service_roll_one_at_a_time(sf):
    sf.write("app.py", ROLLED)
    sf.write("helper.py", "VERSION = 1\n")
    sf.daemon("app", "--watch", "--instances", "2")
    wait_until(lambda: "watching" in _supervisor_log(sf), message="the watch line")
    before = _rows(sf)
    assert set(before) == {"App/1", "App/2"}, before
    sf.write("helper.py", "VERSION = 2\n")
    after = _settled(sf, before, {"App/1", "App/2"})
    assert all(row["last_reason"] == "file-change" for row in after.values()), after
    # one at a time: the first was ready again before the second was stopped
    first_ready = stamped(sf.log("App@1"), r"\[servicefactory\] App/1 ready")[-1]
    second_stopped = stamped(sf.log("App@2"), r"\[servicefactory\] App/2 stopped")[-1]
    assert first_ready <= second_stopped, (first_ready, second_stopped)
    assert {sf("perform", "App", "version").stdout.strip() for _ in range(6)} == {"2"}
