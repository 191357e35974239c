"""The application file's promises, tried from outside the way a demanding user would break them:
`stop` of several names ends dependents first, `up --dry-run` never changes or refuses anything."""
from __future__ import annotations

from support import PYTHON

DB = """
import os, signal, sys, time
def bye(signum, frame):
    web = open("web.pid").read()
    print("web alive when db stopped:", os.path.exists(f"/proc/{web}") and
          open(f"/proc/{web}/stat").read().rsplit(")", 1)[1].split()[0] != "Z", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
print("db up", flush=True)
while True:
    time.sleep(1)
"""

WEB = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: (time.sleep(0.5), sys.exit(0)))  # takes a moment to go
open("web.pid", "w").write(str(os.getpid()))
print("web up", flush=True)
while True:
    time.sleep(1)
"""

APP = f"""
[services.db]
command = ["{PYTHON}", "db.py"]
ready = {{ log = "db up" }}

[services.web]
command = ["{PYTHON}", "web.py"]
ready = {{ log = "web up" }}
depends_on = ["db"]
"""


def test_stop_of_several_names_stops_dependents_first_whatever_order_they_are_named_in(sf):
    sf.write("db.py", DB)
    sf.write("web.py", WEB)
    sf.write("servicefactory.toml", APP)
    assert sf("up").returncode == 0
    result = sf("stop", "db", "web")  # the dependency named first
    assert result.returncode == 0, result
    assert "web alive when db stopped: False" in sf.log("db"), sf.log("db")
    assert sf("down").returncode == 0


def test_up_dry_run_in_the_foreground_while_up_prints_the_plan_and_changes_nothing(sf):
    sf.write("db.py", DB)
    sf.write("web.py", WEB)
    sf.write("servicefactory.toml", APP)
    assert sf("up").returncode == 0
    pids = {row["name"]: row["pid"] for row in sf.status()}
    plan = sf("up", "--dry-run", "--foreground")
    assert plan.returncode == 0 and plan.stdout.splitlines() == [
        f"keep db (pid {pids['db']})", f"keep web (pid {pids['web']})"], plan
    assert {row["name"]: row["pid"] for row in sf.status()} == pids
    assert sf("down").returncode == 0
