"""The `servicefactory` command line: run, perform, stop, status, logs, restart and list.

Daemons, signals and pidfiles are exercised with real subprocesses (the installed console script,
run in a temporary directory with its own SERVICEFACTORY_HOME); argument parsing and help texts
with click's CliRunner. Every daemon a test starts is stopped at teardown, killed as a last resort.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from click.testing import CliRunner

from support import PYTHON, RUNNING_LINE, Cli, alive, processes_using, wait_until
from servicefactory import __version__
from servicefactory.registry.base import state_of
from servicefactory.registry.local import LocalRegistry

try:
    from servicefactory.cli.main import cli as click_cli
except ModuleNotFoundError:  # `servicefactory` imported from the source tree, where the CLI lives in cli/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from cli.main import cli as click_cli

COMMANDS = ["run", "perform", "stop", "status", "logs", "restart", "list"]

# A service with an API on a free port: echo, a failing action, a slow one, and self-inspection.
SERVICES = '''
import json, os, time
from servicefactory import Service


@Service.API.endpoint(port=0)
class Echo(Service.base):
    def loop(self):
        self.sleep(0.2)

    def finalize(self):
        print("Echo finalized")

    @Service.API.handle("echo")
    def echo(self, data):
        print("echo got " + json.dumps(data))
        return data

    @Service.API.handle("boom")
    def boom(self, data):
        raise ValueError("kaboom from the handler")

    @Service.API.handle("slow")
    def slow(self, data):
        self.sleep(5)
        return "late"

    @Service.API.handle("info")
    def info(self, data):
        return {"pid": os.getpid(), "sid": os.getsid(0), "stdin": os.readlink("/proc/self/fd/0")}
'''

# Two services in one module, plus things that are not services.
TWO = '''
from servicefactory import Service


@Service.API.endpoint(port=0)
class Alpha(Service.base):
    @Service.API.handle("hello")
    def hello(self, data):
        return "alpha"


@Service.API.endpoint(port=0)
class Beta(Service.base):
    @Service.API.handle("hello")
    def hello(self, data):
        return "beta"


class Plain:
    pass


def helper():
    pass
'''

# A module that imports another module's service and defines one of its own.
IMPORTER = '''
from servicefactory import Service
from two import Alpha


@Service.API.endpoint(port=0)
class Gamma(Service.base):
    @Service.API.handle("hello")
    def hello(self, data):
        return "gamma"
'''

# Started directly with `python standalone.py`: it registers itself.
STANDALONE = '''
from servicefactory import Service


@Service.API.endpoint(port=0)
class Solo(Service.base):
    def loop(self):
        self.sleep(0.2)

    def finalize(self):
        print("Solo finalized", flush=True)

    @Service.API.handle("echo")
    def echo(self, data):
        return data


if __name__ == "__main__":
    Solo().run()
'''


# -- helpers -----------------------------------------------------------------------------------

@pytest.fixture
def sf(sf: Cli) -> Cli:
    """The shared CLI fixture, with this file's services written into the test's directory."""
    sf.write("svc.py", SERVICES)
    return sf


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cli, dict]]:
    """One Echo daemon for tests that only call and inspect it (they do not stop or restart it)."""
    root = tmp_path_factory.mktemp("shared")
    cli = Cli(root, root / "sf-home")
    cli.write("svc.py", SERVICES)
    try:
        yield cli, cli.start("svc:Echo")
    finally:
        cli.shutdown()


def invoke(*args: str):
    return CliRunner().invoke(click_cli, list(args), prog_name="servicefactory")


# -- help and version ------------------------------------------------------------------------

@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command_shows_an_example(command: str):
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


def test_version_option_prints_the_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert __version__ in result.output


def test_python_dash_m_servicefactory_prints_the_version(tmp_path: Path):
    result = subprocess.run([PYTHON, "-m", "servicefactory", "--version"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert __version__ in result.stdout


# -- run: target forms -----------------------------------------------------------------------

@pytest.mark.parametrize("target", ["svc:Echo", "svc", "sub/app.py", "sub/app.py:Echo"],
                         ids=["module:Class", "module", "file.py", "file.py:Class"])
def test_run_accepts_every_target_form(sf: Cli, target: str):
    sf.write("sub/app.py", SERVICES)
    service = sf.start(target)
    assert service["name"] == "Echo"
    result = sf("perform", "Echo", "echo", '"form"')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == "form"


def test_running_a_module_runs_only_the_services_it_defines_not_the_ones_it_imports(sf: Cli):
    sf.write("two.py", TWO)
    sf.write("importer.py", IMPORTER)
    result = sf("run", "importer", "--daemon")
    assert result.returncode == 0, result.stderr
    assert [RUNNING_LINE.match(line)["name"] for line in result.stdout.splitlines()] == ["Gamma"]
    assert [row["name"] for row in sf.status()] == ["Gamma"]
    assert json.loads(sf("perform", "Gamma", "hello").stdout) == "gamma"


def test_the_current_directory_is_importable_without_pythonpath(sf: Cli):
    sf.write("localmod.py", TWO)
    result = sf("list", "localmod")
    assert result.returncode == 0, result.stderr
    assert "Alpha" in result.stdout and "Beta" in result.stdout


def test_two_services_from_one_module_both_run_and_answer(sf: Cli):
    sf.write("two.py", TWO)
    result = sf("run", "two", "--daemon")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert sorted(RUNNING_LINE.match(line)["name"] for line in lines) == ["Alpha", "Beta"]
    rows = {row["name"]: row for row in sf.status()}
    assert rows["Alpha"]["state"] == rows["Beta"]["state"] == "running"
    assert json.loads(sf("perform", "Alpha", "hello").stdout) == "alpha"
    assert json.loads(sf("perform", "Beta", "hello").stdout) == "beta"


# -- run: load failures ----------------------------------------------------------------------

@pytest.mark.parametrize("target, expected", [
    ("nosuchmodule_zz", ["no module named 'nosuchmodule_zz'"]),
    ("two:Gamma", ["Gamma", "Alpha, Beta"]),
    ("two:Plain", ["not a Service subclass", "Alpha, Beta"]),
    ("two:helper", ["not a Service subclass"]),
    ("empty", ["defines no Service"]),
    ("missing.py", ["no such file"]),
    ("missing.py:Echo", ["no such file"]),
], ids=["no such module", "no such class lists the services", "plain class is not a service",
        "function is not a service", "module without services", "missing file", "missing file with class"])
def test_a_target_that_cannot_load_gives_one_error_line_and_exit_2(sf: Cli, target: str, expected: list[str]):
    sf.write("two.py", TWO)
    sf.write("empty.py", "VALUE = 1\n")
    result = sf("run", target, "--daemon")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in expected:
        assert fragment in lines[0]
    assert result.stdout == ""


def test_an_exception_raised_while_importing_the_users_module_shows_the_users_traceback(sf: Cli):
    source = 'import os\n\nVALUE = 1\nraise RuntimeError("broken at import")\n'
    sf.write("broken.py", source)
    result = sf("run", "broken", "--daemon")
    assert result.returncode != 0
    assert "Traceback" in result.stderr
    assert 'broken.py", line 4' in result.stderr, result.stderr
    assert "RuntimeError: broken at import" in result.stderr
    assert not (sf.home / "broken.pid").exists()


def test_a_failed_import_inside_the_users_module_fails_run_daemon_and_leaves_no_pidfile(sf: Cli):
    sf.write("needsdep.py", "import not_installed_dependency_zz\n")
    result = sf("run", "needsdep.py", "--daemon")
    assert result.returncode != 0
    assert "not_installed_dependency_zz" in result.stderr
    assert 'needsdep.py", line 1' in result.stderr, result.stderr
    assert list(sf.home.glob("*.pid")) == []


# -- run --daemon ----------------------------------------------------------------------------

def test_run_daemon_returns_once_the_service_is_ready_with_one_line_of_name_pid_and_url(sf: Cli):
    sf.write("slowstart.py", '''
        import time
        from servicefactory import Service

        @Service.API.endpoint(port=0)
        class SlowStart(Service.base):
            def __init__(self):
                time.sleep(1.0)

            @Service.API.handle("echo")
            def echo(self, data):
                return data
    ''')
    started = time.monotonic()
    result = sf("run", "slowstart:SlowStart", "--daemon")
    elapsed = time.monotonic() - started
    answer = sf("perform", "SlowStart", "echo", '"ready"')  # no sleep in between
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    match = RUNNING_LINE.match(lines[0])
    assert match and match["name"] == "SlowStart", lines
    assert elapsed >= 1.0
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout) == "ready"


def test_a_daemon_runs_in_its_own_session_with_stdin_from_dev_null(shared):
    cli, service = shared
    info = json.loads(cli("perform", "Echo", "info").stdout)
    assert info["pid"] == service["pid"]
    assert info["sid"] != os.getsid(0)
    assert os.getsid(service["pid"]) != os.getsid(0)
    assert info["stdin"] == "/dev/null"


def test_a_daemon_shows_in_status_answers_and_stop_removes_its_process_pidfile_and_metadata(sf: Cli):
    service = sf.start("svc:Echo")
    status = sf("status", "Echo")
    assert status.returncode == 0
    assert re.search(rf"^Echo\s+running\s+{service['pid']}\s", status.stdout, re.M), status.stdout
    assert json.loads(sf("perform", "Echo", "echo", "[1]").stdout) == [1]
    assert (sf.home / "Echo.pid").exists() and (sf.home / "Echo.json").exists()
    result = sf("stop", "Echo")
    assert result.returncode == 0, result.stderr
    assert "Echo stopped" in result.stdout
    assert not alive(service["pid"])
    assert not (sf.home / "Echo.pid").exists()
    assert not (sf.home / "Echo.json").exists()
    assert sf("status", "Echo").returncode == 3


def test_run_daemon_on_a_port_already_taken_fails_with_the_services_error_and_no_pidfile(sf: Cli):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = sf("run", "svc:Echo", "--daemon", "--port", str(port))
    assert result.returncode != 0
    assert "already in use" in result.stderr and str(port) in result.stderr, result.stderr
    assert not (sf.home / "Echo.pid").exists()
    assert processes_using(sf.home, b"servicefactory.supervise._child") == []


def test_run_daemon_of_a_service_whose_init_raises_fails_with_its_error_and_no_pidfile(sf: Cli):
    sf.write("badinit.py", '''
        from servicefactory import Service

        @Service.API.endpoint(port=0)
        class BadInit(Service.base):
            def __init__(self):
                raise RuntimeError("no database here")
    ''')
    result = sf("run", "badinit:BadInit", "--daemon")
    assert result.returncode != 0
    assert "no database here" in result.stderr, result.stderr
    assert not (sf.home / "BadInit.pid").exists()
    assert processes_using(sf.home, b"servicefactory.supervise._child") == []


def test_a_second_run_of_a_running_name_is_refused_and_the_first_keeps_running(sf: Cli):
    service = sf.start("svc:Echo")
    result = sf("run", "svc:Echo", "--daemon")
    assert result.returncode == 9, result.stdout + result.stderr
    assert "already running" in result.stderr
    assert result.stderr.startswith("error:")
    assert json.loads(sf("perform", "Echo", "echo", '"still here"').stdout) == "still here"
    assert sf.status("Echo")[0]["pid"] == service["pid"]
    assert processes_using(sf.home, b"servicefactory.supervise._child") == [service["pid"]]


def test_two_concurrent_runs_of_one_name_start_exactly_one_service(sf: Cli):
    first, second = sf.popen("run", "svc:Echo", "--daemon"), sf.popen("run", "svc:Echo", "--daemon")
    outcomes = []
    for process in (first, second):
        stdout, stderr = process.communicate(timeout=30)
        outcomes.append((process.returncode, stdout, stderr))
    winners = [outcome for outcome in outcomes if outcome[0] == 0]
    losers = [outcome for outcome in outcomes if outcome[0] != 0]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    code, _, stderr = losers[0]
    assert code == 9 or "already" in stderr, outcomes
    assert len(processes_using(sf.home, b"servicefactory.supervise._child")) == 1
    assert json.loads(sf("perform", "Echo", "echo", '"one"').stdout) == "one"


# -- perform ---------------------------------------------------------------------------------

def test_perform_prints_the_json_result(shared):
    cli, _ = shared
    result = cli("perform", "Echo", "echo", '{"a": [1, 2], "b": "x"}')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"a": [1, 2], "b": "x"}


def test_perform_with_dash_reads_the_data_from_stdin(shared):
    cli, _ = shared
    result = cli("perform", "Echo", "echo", "-", input='{"from": "stdin"}\n')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"from": "stdin"}


@pytest.mark.parametrize("args, code, message", [
    (["Ghost", "echo"], 3, "not running"),
    (["Echo", "no_such_action"], 4, "no_such_action"),
    (["Echo", "boom"], 5, "kaboom from the handler"),
    (["Echo", "echo", "{not json"], 2, "not valid JSON"),
    (["Echo", "slow", "--timeout", "0.3"], 6, "0.3"),
], ids=["not running 3", "unknown action 4", "action failed 5", "bad json 2", "timeout 6"])
def test_perform_failures_exit_with_distinct_codes_and_a_message_on_stderr(shared, args, code, message):
    cli, _ = shared
    started = time.monotonic()
    result = cli("perform", *args)
    assert result.returncode == code, result.stdout + result.stderr
    assert result.stderr.startswith("error:") and message in result.stderr, result.stderr
    assert result.stdout == ""
    assert time.monotonic() - started < 4


# -- stop ------------------------------------------------------------------------------------

def test_stop_interrupts_a_loop_blocked_in_time_sleep_within_seconds(sf: Cli):
    sf.write("sleeper.py", '''
        import time
        from servicefactory import Service

        @Service.API.endpoint(port=0)
        class Sleeper(Service.base):
            def loop(self):
                time.sleep(30)
    ''')
    service = sf.start("sleeper:Sleeper")
    time.sleep(0.2)  # let loop() enter time.sleep
    started = time.monotonic()
    result = sf("stop", "Sleeper", timeout=15)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 5
    assert "killed" not in result.stdout + result.stderr
    assert not alive(service["pid"])


@pytest.mark.parametrize("state_directory", ["exists", "never created"])
def test_stop_of_a_service_that_is_not_running_says_so_and_exits_0(sf: Cli, state_directory: str):
    if state_directory == "exists":
        sf.home.mkdir(mode=0o700)
    result = sf("stop", "Ghost")
    if state_directory == "exists":  # a name never run here is most likely a typo: exit 3 (issue 9.13)
        assert result.returncode == 3 and "Ghost is not running" in result.stderr
        return
    assert result.returncode == 0, result.stderr
    assert "Ghost is not running" in result.stdout


def test_stop_kills_a_service_whose_finalize_hangs_after_the_timeout_with_a_warning(sf: Cli):
    sf.write("hang.py", '''
        import time
        from servicefactory import Service

        @Service.API.endpoint(port=0)
        class Hang(Service.base):
            def finalize(self):
                time.sleep(60)
    ''')
    service = sf.start("hang:Hang")
    started = time.monotonic()
    result = sf("stop", "Hang", "--timeout", "1", timeout=30)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 6, (elapsed, result.stdout, result.stderr)
    assert "warning" in result.stderr and "kill" in result.stderr, result.stdout + result.stderr
    assert not alive(service["pid"])


def test_stop_all_stops_every_service_of_every_supervisor(sf: Cli):
    sf.write("two.py", TWO)
    assert sf("run", "two", "--daemon").returncode == 0
    echo = sf.start("svc:Echo")
    assert len(processes_using(sf.home, b"servicefactory.supervise._child")) == 3
    result = sf("stop", "--all")
    assert result.returncode == 0, result.stderr
    for name in ("Alpha", "Beta", "Echo"):
        assert f"{name} stopped" in result.stdout
    assert not alive(echo["pid"])
    wait_until(lambda: processes_using(sf.home) == [], timeout=5, message="every supervisor to exit")
    assert sorted(p.name for p in sf.home.iterdir() if p.suffix in (".pid", ".json")) == []
    assert "no services" in sf("status").stdout


def test_stop_without_names_or_all_is_a_usage_error():
    result = invoke("stop")
    assert result.exit_code == 2
    assert "--all" in result.output


# -- status ----------------------------------------------------------------------------------

def test_status_prints_a_table_with_name_state_pid_url_and_uptime(shared):
    cli, service = shared
    result = cli("status")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.strip().splitlines()
    assert header.split()[:5] == ["NAME", "STATE", "PID", "URL", "UPTIME"]
    echo = [row.split() for row in rows if row.split()[0] == "Echo"]
    assert echo and echo[0][1:4] == ["running", str(service["pid"]), service["url"]]
    assert re.fullmatch(r"\d+[smhd].*", echo[0][4])


def test_status_json_is_a_list_of_objects_with_name_state_pid_host_port_started(shared):
    cli, service = shared
    rows = json.loads(cli("status", "--json").stdout)
    assert isinstance(rows, list)
    for row in rows:
        assert {"name", "state", "pid", "host", "port", "started"} <= set(row)
    (echo,) = [row for row in rows if row["name"] == "Echo"]
    assert echo["state"] == "running" and echo["pid"] == service["pid"]
    assert f"http://{echo['host']}:{echo['port']}" == service["url"]
    assert isinstance(echo["started"], (int, float)) and echo["started"] <= time.time()


def test_status_exits_0_when_every_named_service_runs_and_3_otherwise(shared):
    cli, _ = shared
    assert cli("status", "Echo").returncode == 0
    assert cli("status", "Echo", "Ghost").returncode == 3
    assert cli("status", "Ghost", "--json").returncode == 3


# -- services started without the CLI, and crashes ------------------------------------------------

def test_a_service_started_with_python_file_is_visible_callable_and_stoppable(sf: Cli, spawn):
    proc = spawn(args=[PYTHON, "standalone.py"], files={"standalone.py": STANDALONE})
    registry = LocalRegistry(sf.home)
    wait_until(lambda: state_of(registry, "Solo")[0] == "running", message="Solo to register")
    status = sf("status", "Solo")
    assert status.returncode == 0
    assert re.search(rf"^Solo\s+running\s+{proc.pid}\s", status.stdout, re.M), status.stdout
    answer = sf("perform", "Solo", "echo", '"hi"')
    assert answer.returncode == 0 and json.loads(answer.stdout) == "hi", answer.stderr
    result = sf("stop", "Solo", "--timeout", "3")  # the test process is its parent and reaps it only below
    assert result.returncode == 0, result.stderr
    assert "Solo stopped" in result.stdout and "killed" not in result.stderr, result.stdout + result.stderr
    assert proc.wait(10) == 0
    assert "Solo finalized" in proc.output
    assert not (sf.home / "Solo.pid").exists()


def test_a_standalone_service_killed_with_sigkill_shows_stale_and_can_run_again(sf: Cli, spawn):
    proc = spawn(args=[PYTHON, "standalone.py"], files={"standalone.py": STANDALONE})
    registry = LocalRegistry(sf.home)
    wait_until(lambda: state_of(registry, "Solo")[0] == "running", message="Solo to register")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    status = sf("status", "Solo")
    assert status.returncode == 3
    assert re.search(r"^Solo\s+stale\b", status.stdout, re.M), status.stdout
    service = sf.start("standalone.py:Solo")
    assert service["name"] == "Solo"
    assert json.loads(sf("perform", "Solo", "echo", '"again"').stdout) == "again"


def test_killing_a_supervisors_process_group_leaves_the_service_stale_or_gone_and_it_can_run_again(sf: Cli):
    service = sf.start("svc:Echo")
    rows = {row["name"]: row for row in sf.status("--all")}
    supervisor = rows["Echo"]["supervisor"]
    assert supervisor and supervisor.startswith("_supervisor-")
    supervisor_pid = rows[supervisor]["pid"]
    assert supervisor_pid == int(supervisor.rpartition("-")[2])
    os.killpg(supervisor_pid, signal.SIGKILL)
    wait_until(lambda: not alive(supervisor_pid) and not alive(service["pid"]), timeout=10,
               message="the supervisor and its service to be gone")
    (row,) = sf.status("Echo")
    assert row["state"] in ("stale", "stopped")
    again = sf.start("svc:Echo")
    assert again["pid"] != service["pid"]
    assert json.loads(sf("perform", "Echo", "echo", '"back"').stdout) == "back"


# -- logs, restart, list -----------------------------------------------------------------------

def test_logs_shows_the_services_output_lines_and_n_limits_them(shared):
    cli, _ = shared
    marker = uuid.uuid4().hex
    assert cli("perform", "Echo", "echo", json.dumps(marker)).returncode == 0
    wait_until(lambda: marker in cli("logs", "Echo").stdout, timeout=5, message="the echo line in the log")
    result = cli("logs", "Echo")
    assert result.returncode == 0
    assert any(line.endswith(f'echo got "{marker}"') for line in result.stdout.splitlines()), result.stdout
    limited = cli("logs", "Echo", "-n", "1")
    assert limited.returncode == 0
    assert len(limited.stdout.splitlines()) == 1


def test_restart_brings_the_service_back_with_a_new_pid_and_it_answers(sf: Cli):
    service = sf.start("svc:Echo")
    result = sf("restart", "Echo")
    assert result.returncode == 0, result.stderr
    match = RUNNING_LINE.match(result.stdout.strip())
    assert match and match["name"] == "Echo", result.stdout
    new_pid = int(match["pid"])
    assert new_pid != service["pid"]
    assert not alive(service["pid"])
    assert sf.status("Echo")[0]["pid"] == new_pid
    assert json.loads(sf("perform", "Echo", "echo", '"restarted"').stdout) == "restarted"


def test_list_shows_services_ports_and_actions_without_running_them(sf: Cli):
    sf.write("writer.py", '''
        from pathlib import Path
        from servicefactory import Service

        @Service.API.endpoint(port=0)
        class Writer(Service.base):
            def loop(self):
                Path("ran.txt").write_text("ran")
                self.sleep(0.1)

            @Service.API.handle("store")
            def store(self, data):
                return data

        class Quiet(Service.base):
            pass
    ''')
    result = sf("list", "writer")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    writer = [line for line in lines if line.startswith("Writer")]
    assert writer and "127.0.0.1:" in writer[0] and "store" in writer[0], result.stdout
    assert any(line.startswith("Quiet") and "no API" in line for line in lines), result.stdout
    time.sleep(0.3)
    assert not (sf.cwd / "ran.txt").exists()
    assert list(sf.home.glob("*.pid")) == []


# -- start-up speed --------------------------------------------------------------------------------

def test_importing_the_cli_pulls_in_no_heavy_modules(tmp_path: Path):
    result = subprocess.run([PYTHON, "-c", "import servicefactory.cli.main, sys; print(sorted(sys.modules))"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    modules = set(eval(result.stdout))  # a list literal of module names
    heavy = sorted(m for m in modules if m.split(".")[0] in ("werkzeug", "requests", "psutil", "ssl")
                   or m == "http.client")
    assert heavy == []


def test_perform_loads_neither_werkzeug_nor_requests_nor_psutil(tmp_path: Path, sf_home: Path):
    env = dict(os.environ, SERVICEFACTORY_HOME=str(sf_home))
    result = subprocess.run([PYTHON, "-X", "importtime", "-m", "servicefactory", "perform", "Nope", "x"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 3, result.stderr[-500:]
    imported = {line.rpartition("|")[2].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "servicefactory.http.client" in imported  # the measurement saw perform's own imports
    assert sorted(m for m in imported if m.split(".")[0] in ("werkzeug", "requests", "psutil")) == []
