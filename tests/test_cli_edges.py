"""What a new user tries that no issue spelled out: each gets a clear message and the right exit code."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from support import MODULE_COMMAND, Cli

from servicefactory import InvalidData

from servicefactory.http import client

CLI = [sys.executable, "-m", "servicefactory"]

MODULE = """
import time
from servicefactory import Service

@Service.API.endpoint(port=0)
class Calc(Service.base):
    def loop(self):
        self.sleep(1)

    @Service.API.handle("echo")
    def echo(self, data):
        return data

    @Service.API.handle("slow")
    def slow(self, data):
        time.sleep(data)

    @Service.API.handle("aset")
    def aset(self, data):
        return {1, 2}

class Worker(Service.base):
    def loop(self):
        self.sleep(1)
"""


sf = Cli(command=MODULE_COMMAND, timeout=60)  # the CLI as a user runs it; a hang fails the test, not the suite


@pytest.fixture
def calc(tmp_path):
    (tmp_path / "calc.py").write_text(textwrap.dedent(MODULE))
    started = sf("run", "calc", "--daemon", cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    yield tmp_path
    sf("stop", "--all", "--timeout", "3", cwd=tmp_path)


def test_deeply_nested_data_is_a_usage_error_not_a_traceback(calc):
    depth = 50_000  # past the JSON parser's recursion limit on every supported Python
    result = sf("perform", "Calc", "echo", "-", cwd=calc, input="[" * depth + "]" * depth)
    assert result.returncode == 2 and "nested too deeply" in result.stderr and "Traceback" not in result.stderr
    value: list = []
    for _ in range(depth):
        value = [value]
    with pytest.raises(InvalidData):
        client.perform("Calc", "echo", value)


def test_unicode_results_print_as_readable_utf8(calc):
    result = sf("perform", "Calc", "echo", '"héllo 🌍 日本"', cwd=calc)
    assert result.returncode == 0 and result.stdout.strip() == '"héllo 🌍 日本"'


def test_a_result_that_is_not_json_is_reported_to_the_caller_and_logged_by_the_service(calc, sf_home):
    result = sf("perform", "Calc", "aset", cwd=calc)
    assert result.returncode == 5 and "not JSON serialisable" in result.stderr
    time.sleep(0.3)
    assert "not JSON serialisable" in (sf_home / "Calc.log").read_text()


def test_perform_on_a_service_without_an_api_says_so(calc):
    result = sf("perform", "Worker", "health", cwd=calc)
    assert result.returncode == 3 and "without an API" in result.stderr


def test_ctrl_c_on_a_waiting_perform_exits_130(calc):
    process = subprocess.Popen(CLI + ["perform", "Calc", "slow", "5", "--timeout", "30"], cwd=calc,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=10)
        assert process.returncode == 130 and "Traceback" not in err
    finally:
        process.kill()
        process.wait(5)


def test_a_state_directory_that_is_a_file_is_refused_in_one_line(tmp_path):
    home = tmp_path / "afile"
    home.write_text("")
    for command in (["status"], ["run", "calc", "--daemon"]):
        result = subprocess.run(CLI + command, cwd=tmp_path, capture_output=True, text=True, timeout=30,
                                env=dict(os.environ, SERVICEFACTORY_HOME=str(home)))
        if command[0] == "run":
            (tmp_path / "calc.py").write_text(textwrap.dedent(MODULE))
            result = subprocess.run(CLI + command, cwd=tmp_path, capture_output=True, text=True, timeout=30,
                                    env=dict(os.environ, SERVICEFACTORY_HOME=str(home)))
        assert result.returncode == 10, (command, result.stderr)
        assert "not a directory" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("options, message", [
    (["--log-file", "/nonexistent/dir/x.log"], "not a writable directory"),
    (["--name", "supervisor"], "reserved"),
    (["--name", "_supervisor-1"], "reserved"),
])
def test_bad_run_options_are_refused_before_anything_starts(tmp_path, sf_home, options, message):
    (tmp_path / "calc.py").write_text(textwrap.dedent(MODULE))
    result = sf("run", "calc.py:Calc", "--daemon", *options, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr
    assert not list(sf_home.glob("*.pid")) if sf_home.exists() else True


def test_a_module_that_exits_at_import_is_explained(tmp_path):
    (tmp_path / "quitter.py").write_text("import sys\nsys.exit(3)\n")
    for command in (["list", "quitter"], ["run", "quitter", "--daemon"]):
        result = sf(*command, cwd=tmp_path)
        assert result.returncode == 2 and "sys.exit(3)" in result.stderr


def test_stop_without_arguments_says_what_it_needs(tmp_path):
    result = sf("stop", cwd=tmp_path)
    assert result.returncode == 2 and "--all" in result.stderr and "not both" not in result.stderr


def test_a_name_never_run_reads_unknown_not_stopped(tmp_path, sf_home):
    from servicefactory.registry.local import LocalRegistry
    LocalRegistry(sf_home).ensure()
    result = sf("status", "NeverExisted", "--json", cwd=tmp_path)
    assert result.returncode == 3 and json.loads(result.stdout)[0]["state"] == "unknown"
    result = sf("stop", "NeverExisted", cwd=tmp_path)  # a typo, most likely: not a success (issue 9.13)
    assert result.returncode == 3 and "no service of that name was ever run" in result.stderr
