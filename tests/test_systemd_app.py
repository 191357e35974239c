"""`servicefactory systemd export -f servicefactory.toml` (issue 15): one unit per service of the file and a
target grouping them, which `systemd-analyze verify` accepts. depends_on becomes Requires=/After= (a
job others wait to complete is Type=oneshot, a command's ready check an ExecStartPost= that waits
for it), env_file EnvironmentFile=, env Environment=, user User=, cwd WorkingDirectory=, a command its
own ExecStart; instances are one template unit started as NAME@1 ... NAME@N. Run as systemd would:
the template's ExecStart for two instances sharing a port, the ExecStartPost wait on a real port.
"""
from __future__ import annotations

import json
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from support import PYTHON, Proc, free_port, wait_until

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze is not installed (.ci/run installs it)")

API = """
import os, sys
from servicefactory import Service

@Service.API.endpoint(port=0)
@Service.policy(max_memory="300M")
class Api(Service.base):
    def loop(self):
        self.sleep(0.1)

    def reload(self):
        pass

    @Service.API.handle("who")
    def who(self, data):
        name = sys.argv[sys.argv.index("--name") + 1]  # what the unit's ExecStart said
        return {"name": name, "A": os.environ.get("A"), "B": os.environ.get("B")}
"""

DB = """
import socket, sys, time
time.sleep(0.5)
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", int(sys.argv[1])))
listener.listen()
while True:
    listener.accept()[0].close()
"""

APP = """
[settings]
backoff = 0.5
ready_timeout = 45

[services.api]
target = "api:Api"
instances = 2
port = {api_port}
depends_on = {{ db = "ready", migrate = "completed" }}
env = {{ B = "from-env" }}
env_file = ".env"
watchdog = 4
stop_timeout = 6

[services.db]
command = ["{python}", "db.py", "{db_port}"]
ready = {{ port = {db_port} }}
stop_signal = "SIGINT"
cwd = "data"
user = "nobody"

[services.migrate]
command = "true"
restart = "no"
depends_on = ["db"]
env_file = ".env"

[services.tail]
command = ["sleep", "300"]
ready = {{ log = "never" }}
"""


def _verify(paths: list[Path]) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", *map(str, paths)], capture_output=True, text=True,
                          timeout=60)


def _settings(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, equals, value = line.partition("=")
        if equals and not line.startswith("#"):
            found.setdefault(key, []).append(value)
    return found


def _words(value: str) -> list[str]:
    return [word.replace("%%", "%").replace("$$", "$") for word in shlex.split(value)]


def _environment(unit: dict[str, list[str]]) -> dict[str, str]:
    return dict(shlex.split(value)[0].split("=", 1) for value in unit.get("Environment", []))


def _write_app(sf) -> tuple[int, int]:
    api_port, db_port = free_port(), free_port()
    sf.write("api.py", API)
    sf.write("data/db.py", DB)
    sf.write(".env", "A=from-file\nC=from-file-too\n")
    sf.write("servicefactory.toml", APP.format(api_port=api_port, db_port=db_port, python=PYTHON))
    return api_port, db_port


def test_export_of_a_file_writes_a_unit_per_service_and_a_target_that_systemd_analyze_accepts(sf, tmp_path):
    _write_app(sf)
    units = tmp_path / "units"
    result = sf("systemd", "export", "-f", "servicefactory.toml", "--dir", str(units))
    assert result.returncode == 0, result.stderr
    group = sf.cwd.name
    assert f"enable --now servicefactory-{group}.target" in result.stderr
    files = {path.name: path.read_text() for path in units.iterdir()}
    assert set(files) == {"servicefactory-api@.service", "servicefactory-db.service", "servicefactory-migrate.service",
                          "servicefactory-tail.service", f"servicefactory-{group}.target"}, set(files)
    verified = _verify(sorted(units.iterdir()))
    assert verified.returncode == 0, verified.stderr

    target = _settings(files[f"servicefactory-{group}.target"])
    assert target["Wants"][0].split() == ["servicefactory-api@1.service", "servicefactory-api@2.service",
                                          "servicefactory-db.service", "servicefactory-migrate.service",
                                          "servicefactory-tail.service"]
    api = _settings(files["servicefactory-api@.service"])
    assert api["Requires"] == ["servicefactory-db.service servicefactory-migrate.service"]
    assert api["After"] == ["network.target servicefactory-db.service servicefactory-migrate.service"]
    assert api["Type"] == ["notify"] and api["WatchdogSec"] == ["4s"] and api["TimeoutStopSec"] == ["6s"]
    assert api["MemoryMax"] == [str(300 << 20)] and api["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert api["WorkingDirectory"] == [str(sf.cwd)] and api["TimeoutStartSec"] == ["45s"]
    assert api["EnvironmentFile"] == [str(sf.cwd / ".env")]
    env = _environment(api)
    assert env["B"] == "from-env" and env["SERVICEFACTORY_REUSE_PORT"] == "1" and "A" not in env
    assert api["ExecStart"][0].endswith("--name api/%i --port " + api["ExecStart"][0].split()[-1]), api["ExecStart"]
    assert "(instance %i)" in api["Description"][0]
    db = _settings(files["servicefactory-db.service"])
    assert db["Type"] == ["exec"] and db["KillSignal"] == ["SIGINT"] and db["User"] == ["nobody"]
    assert db["WorkingDirectory"] == [str(sf.cwd / "data")]
    assert _words(db["ExecStart"][0])[:2] == [PYTHON, "db.py"]
    assert "wait-ready" in db["ExecStartPost"][0] and "Environment" not in db  # a command gets none of ours
    migrate = _settings(files["servicefactory-migrate.service"])
    assert migrate["Type"] == ["oneshot"] and migrate["RemainAfterExit"] == ["yes"] and migrate["Restart"] == ["no"]
    assert migrate["ExecStart"] == [shutil.which("true")] and "TimeoutStartSec" not in migrate
    assert migrate["Requires"] == ["servicefactory-db.service"]
    tail = files["servicefactory-tail.service"]
    assert tail.startswith("# ready = { log = ... }: systemd cannot watch a log line") and "ExecStartPost" not in tail


def test_the_template_runs_two_instances_on_one_port_and_the_ready_wait_waits_for_the_port(sf, tmp_path):
    api_port, db_port = _write_app(sf)
    assert not sf.home.exists()  # as at boot: the units make the state directory themselves
    units = tmp_path / "units"
    assert sf("systemd", "export", "-f", "servicefactory.toml", "--dir", str(units)).returncode == 0
    api = _settings((units / "servicefactory-api@.service").read_text())
    env = {"PATH": "/usr/bin:/bin", **_environment(api), "A": "from-file"}
    procs = [Proc(_words(api["ExecStart"][0].replace("%i", str(number))), sf.cwd, env) for number in (1, 2)]
    try:
        for number in (1, 2):
            wait_until(lambda: sf("perform", "api", "who", "--instance", str(number)).returncode == 0, timeout=30,
                       message=f"api/{number} answering")
        answers = {json.loads(sf("perform", "api", "who").stdout)["name"] for _ in range(12)}
        assert answers == {"api/1", "api/2"}, answers  # both answer on the one port
        assert json.loads(sf("perform", "api", "who", "--instance", "2").stdout) == \
            {"name": "api/2", "A": "from-file", "B": "from-env"}
        for proc in procs:
            proc.signal(signal.SIGTERM)  # systemctl stop
        for proc in procs:
            assert proc.wait(20) == 0, proc.output
    finally:
        for proc in procs:
            proc.kill()

    db = _settings((units / "servicefactory-db.service").read_text())
    began = time.monotonic()
    wait = subprocess.Popen(_words(db["ExecStartPost"][0]), cwd=sf.cwd / "data")
    try:
        time.sleep(0.5)
        assert wait.poll() is None  # nothing listens yet: the unit is not ready, After= waits
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", db_port))
            listener.listen()
            assert wait.wait(20) == 0
        assert time.monotonic() - began >= 0.5
    finally:
        wait.kill()
        wait.wait()


def test_an_env_file_systemd_would_read_otherwise_is_written_into_the_unit_with_a_warning(sf, tmp_path):
    sf.write("servicefactory.toml", '[services.job]\ncommand = ["sleep", "300"]\nenv_file = ".env"\n'
                                    'env = { A = "mine" }\n')
    sf.write(".env", "A=theirs\nB=two\n")
    units = tmp_path / "units"
    result = sf("systemd", "export", "--dir", str(units))  # no TARGET: ./servicefactory.toml
    assert result.returncode == 0, result.stderr
    assert "warning: job: env sets A that its env_file sets too" in result.stderr, result.stderr
    job = _settings((units / "servicefactory-job.service").read_text())
    assert "EnvironmentFile" not in job and _environment(job) == {"A": "mine", "B": "two"}
    sf.write(".env", "export C=3  # a comment\n")
    result = sf("systemd", "export", "--dir", str(units))
    assert "uses `export` or trailing comments" in result.stderr
    assert _environment(_settings((units / "servicefactory-job.service").read_text())) == {"A": "mine", "C": "3"}
    assert _verify(sorted(units.iterdir())).returncode == 0


def test_export_of_a_file_refuses_mistakes_in_one_line(sf, tmp_path):
    sf.write("servicefactory.toml", '[services.db]\ncommand = ["sleep", "300"]\nuser = "nobody"\n')
    sf.write("api.py", API)
    for args, words in [
        (["--user"], "a user unit cannot switch users"),
        (["api", "-f", "servicefactory.toml"], "give TARGETs or -f FILE, not both"),
        (["-f", "servicefactory.toml", "--port", "80"], "--port: with an application file, set that in the file"),
        (["-f", "missing.toml"], "missing.toml: no such file"),
        (["--env", "nosuch"], "no environment 'nosuch'"),
    ]:
        result = sf("systemd", "export", *args, "--dir", str(tmp_path / "u"))
        assert result.returncode == 2, (args, result.stderr)
        assert words in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)
    sf.write("servicefactory.toml", '[services.db]\ncommand = ["sleep", "300"]\nwatchdog = 3\n')
    result = sf("systemd", "export", "--dir", str(tmp_path / "u"))
    assert result.returncode == 2 and "watchdog in [services.db] is for a Service class" in result.stderr
    assert not (tmp_path / "u").exists()


def test_a_service_gone_from_the_file_loses_its_unit_and_other_groups_keep_theirs(sf, tmp_path):
    units = tmp_path / "units"
    sf.write("servicefactory.toml", '[services.one]\ncommand = ["sleep", "300"]\n[services.two]\n'
                                    'command = ["sleep", "300"]\n')
    assert sf("systemd", "export", "--dir", str(units), "--group", "shop").returncode == 0
    sf.write("other.toml", '[services.else]\ncommand = ["sleep", "300"]\n')
    assert sf("systemd", "export", "-f", "other.toml", "--dir", str(units), "--group", "other").returncode == 0
    sf.write("servicefactory.toml", '[services.one]\ncommand = ["sleep", "300"]\n')
    result = sf("systemd", "export", "--dir", str(units), "--group", "shop")
    assert result.returncode == 0 and f"removed {units / 'servicefactory-two.service'}" in result.stdout, result
    assert sorted(path.name for path in units.iterdir()) == [
        "servicefactory-else.service", "servicefactory-one.service", "servicefactory-other.target",
        "servicefactory-shop.target"]
    assert _verify(sorted(units.iterdir())).returncode == 0
