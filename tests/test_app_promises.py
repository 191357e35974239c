"""The application file's promises, tried from outside the way a demanding user would break them:
`stop` of several names ends dependents first, `up --dry-run` never changes or refuses anything."""
from __future__ import annotations

from support import PYTHON, wait_until

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


UP_AGAIN = """
[settings]
backoff = 0.1

[services.a]
command = ["sleep", "300"]

[services.b]
command = ["sleep", "300"]

[services.job]
command = ["sh", "-c", "echo ran >> runs"]
restart = "no"

[services.flaky]
command = ["sh", "-c", "test -e fixed"]
restart = "no"
"""


def test_up_again_starts_what_was_stopped_or_failed_but_not_a_job_that_completed(sf):
    sf.write("servicefactory.toml", UP_AGAIN)
    # a job is ready at once (no ready check): up may see flaky ready (0) or already failed (1)
    assert sf("up").returncode in (0, 1)
    wait_until(lambda: sf.row("flaky")["state"] == "failed" and sf.row("job")["state"] == "stopped",
               message="both jobs ended")
    assert sf.row("flaky")["last_exit"] == 1 and sf.row("job")["last_exit"] == 0
    assert sf("stop", "a").returncode == 0
    b = sf.row("b")["pid"]
    plan = sf("up", "--dry-run")
    assert plan.stdout.splitlines() == ["start a (it is stopped)", "start flaky (it is failed)",
                                        f"keep b (pid {b})", "keep job"], plan.stdout
    (sf.cwd / "fixed").touch()
    again = sf("up")
    assert again.returncode == 0, again
    assert "a running" in again.stdout and "flaky " in again.stdout, again.stdout
    wait_until(lambda: sf.row("flaky")["state"] == "stopped", message="flaky ended")
    assert sf.row("flaky")["last_exit"] == 0
    assert sf.row("b")["pid"] == b and sf.row("a")["state"] == "running"
    assert (sf.cwd / "runs").read_text() == "ran\n"  # the job that completed did not run twice
    assert sf("up").stdout.splitlines()[-1] == "nothing to change"
    assert sf("down").returncode == 0


def test_a_command_sees_exactly_the_supervisors_environment_then_env_file_then_env(sf):
    import json

    sf.write("dump.py", "import json, os\njson.dump(dict(os.environ), open('seen.json', 'w'))\n")
    sf.write(".env", "FROM_FILE=file\nBOTH=file\nOUTER=file\n")
    sf.write("servicefactory.toml", f"""
        [services.dump]
        command = ["{PYTHON}", "dump.py"]
        restart = "no"
        env_file = ".env"
        env = {{ BOTH = "env", ONLY_ENV = "env" }}
    """)
    typed = dict(sf.env, OUTER="outer", KEPT="outer")
    assert sf("up", env={"OUTER": "outer", "KEPT": "outer"}).returncode == 0
    wait_until(lambda: (sf.cwd / "seen.json").exists() and sf.row("dump")["state"] == "stopped",
               message="the command's environment")
    seen = json.loads((sf.cwd / "seen.json").read_text())
    expected = dict(typed, FROM_FILE="file", BOTH="env", OUTER="file", ONLY_ENV="env",
                    SERVICEFACTORY_SUPERVISED="dump")
    assert seen.pop("SERVICEFACTORY_SUPERVISOR_PID").isdigit()
    assert seen == expected, set(seen.items()) ^ set(expected.items())
    assert sf("down").returncode == 0
