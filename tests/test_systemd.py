"""`servicefactory systemd export` (issue 15): one Type=notify unit per service and a target that groups
them, which `systemd-analyze verify` accepts; the unit's ExecStart (`servicefactory serve`), run as
systemd runs it (its environment, its working directory, a real notify socket), tells READY=1,
pings the watchdog, reloads on SIGHUP (ExecReload) and stops gracefully on SIGTERM with STOPPING=1.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from support import Proc, wait_until

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze is not installed (.ci/run installs it)")

APP = """
import json
from servicefactory import Service

@Service.API.endpoint(port=0)
@Service.policy(restart="always", stop_timeout=7, watchdog=2, max_memory="300M")
class Api(Service.base):
    def __init__(self):
        self.greeting = json.load(open("settings.json"))["greeting"]

    def loop(self):
        self.sleep(0.1)

    def reload(self):
        self.greeting = json.load(open("settings.json"))["greeting"]

    @Service.API.handle("greet")
    def greet(self, data):
        return self.greeting


@Service.API.endpoint(port=0)
class Worker(Service.base):
    def loop(self):
        self.sleep(0.1)
"""


def _verify(paths: list[Path], user: bool = False, tmp: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    args = ["systemd-analyze", "verify"]
    if user:
        runtime = tmp / "xdg"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
        args.append("--user")
    return subprocess.run(args + [str(path) for path in paths], capture_output=True, text=True, env=env, timeout=60)


def _units(directory: Path) -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(directory.iterdir())}


def _settings(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, equals, value = line.partition("=")
        if equals:
            found.setdefault(key, []).append(value)
    return found


def test_export_writes_a_notify_unit_per_service_and_a_target_that_systemd_analyze_accepts(sf, tmp_path):
    sf.write("app.py", APP)
    sf.write("settings.json", '{"greeting": "hello"}')
    units = tmp_path / "units"
    result = sf("systemd", "export", "app", "--dir", str(units))
    assert result.returncode == 0, result.stderr
    assert "enable --now servicefactory-app.target" in result.stderr
    files = _units(units)
    assert set(files) == {"servicefactory-Api.service", "servicefactory-Worker.service", "servicefactory-app.target"}
    api = _settings(files["servicefactory-Api.service"])
    assert api["Type"] == ["notify"] and api["KillMode"] == ["mixed"] and api["Restart"] == ["always"]
    assert api["TimeoutStopSec"] == ["7s"] and api["WatchdogSec"] == ["2s"] and api["MemoryMax"] == [str(300 << 20)]
    assert api["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # it defines reload()
    assert api["WorkingDirectory"] == [str(sf.cwd)]
    assert f'"SERVICEFACTORY_HOME={sf.home}"' in api["Environment"]
    assert "serve app:Api --name Api" in api["ExecStart"][0]
    assert api["WantedBy"] == ["servicefactory-app.target"] and api["PartOf"] == ["servicefactory-app.target"]
    worker = _settings(files["servicefactory-Worker.service"])
    assert "ExecReload" not in worker and "WatchdogSec" not in worker and "MemoryMax" not in worker
    assert worker["Restart"] == ["on-failure"] and worker["TimeoutStopSec"] == ["10s"]
    target = _settings(files["servicefactory-app.target"])
    assert target["Wants"] == ["servicefactory-Api.service servicefactory-Worker.service"]
    assert target["WantedBy"] == ["multi-user.target"]
    verified = _verify(sorted(units.iterdir()))
    assert verified.returncode == 0, verified.stderr

    user_units = tmp_path / "user-units"
    result = sf("systemd", "export", "app", "--user", "--dir", str(user_units), "--max-memory", "1G",
                "--watchdog", "5", "--restart", "no", "--group", "shop")
    assert result.returncode == 0, result.stderr
    files = _units(user_units)
    api = _settings(files["servicefactory-Api.service"])
    assert api["MemoryMax"] == [str(1 << 30)] and api["WatchdogSec"] == ["5s"] and api["Restart"] == ["no"]
    assert _settings(files["servicefactory-shop.target"])["WantedBy"] == ["default.target"]
    verified = _verify(sorted(user_units.iterdir()), user=True, tmp=tmp_path)
    assert verified.returncode == 0, verified.stderr


def test_odd_paths_and_values_are_quoted_so_systemd_reads_them_back(sf, tmp_path):
    project = tmp_path / "my project 100%"
    project.mkdir()
    (project / "app.py").write_text(APP)
    (project / "settings.json").write_text('{"greeting": "hello"}')
    units = tmp_path / "units"
    result = sf("systemd", "export", str(project / "app.py") + ":Worker", "--dir", str(units),
                "--env", 'QUOTE=say "hi" $HOME 50% \\o/', cwd=project)
    assert result.returncode == 0, result.stderr
    verified = _verify(sorted(units.iterdir()))
    assert verified.returncode == 0, verified.stderr
    unit = (units / "servicefactory-Worker.service").read_text()
    assert 'Environment="QUOTE=say \\"hi\\" $HOME 50%% \\\\o/"' in unit, unit
    command = _exec_start(unit)
    assert command[-4:] == ["serve", f"{project}/app.py:Worker", "--name", "Worker"], command


def test_mistakes_are_one_line_and_the_right_exit_code(sf, tmp_path):
    sf.write("app.py", APP)
    for args, code, words in [
        (["nosuchmodule"], 2, "nosuchmodule"),
        (["app", "--env", "NOEQUALS"], 2, "KEY=VALUE"),
        (["app", "--env", "BAD-NAME=1"], 2, "not an environment variable name"),
        (["app", "--env", "A=line\nbreak"], 2, "line break"),
        (["app", "--max-memory", "huge"], 2, "not a size"),
        (["app", "--dir", "/proc/forbidden"], 10, "cannot write the units"),
    ]:
        extra = [] if "--dir" in args else ["--dir", str(tmp_path / "u")]
        result = sf("systemd", "export", *args, *extra)
        assert result.returncode == code, (args, result.stdout, result.stderr)
        assert words in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)
    result = sf("serve", "app")
    assert result.returncode == 2 and "serve runs one service; app defines Api, Worker" in result.stderr


def _exec_start(unit: str) -> list[str]:
    line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    return [word.replace("%%", "%").replace("$$", "$") for word in shlex.split(line[len("ExecStart="):])]


def _environment(unit: str) -> dict[str, str]:
    env = {}
    for line in unit.splitlines():
        if line.startswith("Environment="):
            key, _, value = shlex.split(line[len("Environment="):])[0].partition("=")
            env[key] = value.replace("%%", "%")
    return env


def _datagrams(sock: socket.socket, seconds: float) -> list[str]:
    got, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except socket.timeout:
            break
    return got


def test_the_units_execstart_runs_the_service_as_systemd_would(sf, tmp_path):
    sf.write("app.py", APP)
    sf.write("settings.json", '{"greeting": "hello"}')
    units = tmp_path / "units"
    assert sf("systemd", "export", "app:Api", "--dir", str(units)).returncode == 0
    unit = (units / "servicefactory-Api.service").read_text()
    address = f"\0servicefactory-systemd-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        # what systemd gives the process: a minimal environment plus the unit's, its working directory
        env = {"PATH": "/usr/bin:/bin", **_environment(unit), "NOTIFY_SOCKET": "@" + address[1:],
               "WATCHDOG_USEC": "2000000"}
        proc = Proc(_exec_start(unit), Path(_settings(unit)["WorkingDirectory"][0]), env)
        try:
            sock.settimeout(20)
            ready = sock.recv(4096).decode()
            assert ready.startswith("READY=1") and f"MAINPID={proc.pid}" in ready, ready
            assert sf("perform", "Api", "greet").stdout.strip() == '"hello"'
            assert "WATCHDOG=1" in _datagrams(sock, 1.5)  # WatchdogSec=2: a ping every second
            sf.write("settings.json", '{"greeting": "hej"}')
            proc.signal(signal.SIGHUP)  # ExecReload
            wait_until(lambda: sf("perform", "Api", "greet").stdout.strip() == '"hej"', timeout=10,
                       message="reloaded")
            proc.signal(signal.SIGTERM)  # systemctl stop (KillMode=mixed: the main process first)
            assert proc.wait(15) == 0
            assert "STOPPING=1" in _datagrams(sock, 2.0)
            assert "Api : shutdown requested" in proc.output
        finally:
            proc.kill()
