"""`servicefactory perform`: its fast path (cli/fast.py) means what click means, and its edge cases.

The console script parses plain `perform` command lines without click; everything else goes to
the click command. These tests hold the two to the same meaning, help and errors, and try what a
hostile or careless caller would: endless stdin, absurd timeouts, lone surrogates, a service that
is still starting.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from support import COMMAND, PYTHON, SCRIPT, Cli, wait_until
from servicefactory.cli import fast
from servicefactory.cli.main import cli as click_cli


ECHO = '''
from servicefactory import Service


@Service.API.endpoint(port=0)
class Echo(Service.base):
    def loop(self):
        self.sleep(0.2)

    @Service.API.handle("echo")
    def echo(self, data):
        return data

    @Service.API.handle("surrogate")
    def surrogate(self, data):
        return "\\ud800"
'''

# A service whose start blocks until the test creates the file `gate` beside it.
GATED = '''
import os, time
from servicefactory import Service


@Service.API.endpoint(port=0)
class Gated(Service.base):
    def __init__(self):
        super().__init__()
        while not os.path.exists("gate"):
            time.sleep(0.02)

    def loop(self):
        self.sleep(0.2)

    @Service.API.handle("echo")
    def echo(self, data):
        return data
'''


sf = Cli(command=COMMAND, timeout=60)  # the CLI as a user runs it; a hang fails the test, not the suite


def click_result(args: list[str]):
    return CliRunner().invoke(click_cli, ["perform", *args], prog_name="servicefactory",
                             terminal_width=78)  # what click picks in an 80-column terminal


@pytest.fixture
def echo(tmp_path: Path):
    (tmp_path / "echo.py").write_text(ECHO)
    started = sf("run", "echo", "--daemon", cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    yield tmp_path
    sf("stop", "--all", "--timeout", "3", cwd=tmp_path)


# -- one meaning, one help, the same errors ----------------------------------------------------

@pytest.mark.parametrize("args", [
    ["--help"], ["-h"], ["Test", "action", "--help"], [], ["Test"], ["Test", "action", "1", "extra"],
    ["Test", "action", "--bad"], ["Test", "action", "-x"], ["Test", "action", "--timeout"],
    ["Test", "action", "--timeout", "soon"], ["Test", "action", "--max-body", "0"],
    ["Test", "action", "--wait", "forever"],
], ids=lambda args: " ".join(args) or "nothing")
def test_help_and_usage_errors_are_clicks_own_word_for_word(tmp_path: Path, args: list[str]):
    expected = click_result(args)
    result = subprocess.run(COMMAND + ["perform", *args], cwd=tmp_path, capture_output=True, text=True, timeout=30,
                            env=dict(os.environ, COLUMNS="80"))  # help is wrapped to the terminal's width
    assert (result.returncode, result.stdout, result.stderr) == (expected.exit_code, expected.stdout, expected.stderr)
    assert result.returncode in (0, 2) and "Traceback" not in result.stderr


TOKENS = ["Test", "act", "1", '"x"', "-", "--", "", "--timeout", "--timeout=2.5", "3", "0", "-1", "inf", "nan",
          "1e300", "--wait", "--wait=5", "--max-body", "--max-body=64", "64", "-h", "--help", "-x", "--time",
          "--timeout=", "--wait="]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=7))
def test_a_command_line_the_fast_path_accepts_means_the_same_to_click(arguments: list[str]):
    parsed = fast.parse_perform(arguments)
    if parsed is None:
        return  # click answers it: nothing to compare
    with click_cli.commands["perform"].make_context("perform", list(arguments)) as context:
        assert parsed == context.params


def test_the_fast_path_takes_plain_command_lines_and_leaves_the_rest_to_click():
    assert fast.parse_perform(["Test", "echo", "--timeout=2", "-", "--wait"]) == {
        "name": "Test", "action": "echo", "data": "-", "timeout": 2.0, "wait": fast.DEFAULT_WAIT,
        "max_body": fast.DEFAULT_MAX_BODY, "ca_file": None, "instance": None}
    assert fast.parse_perform(["--wait", "5", "Test", "echo", "--", "-1"])["data"] == "-1"
    for handed_on in (["Test", "echo", "-1"], ["Test", "echo", "--help"], ["Test"], ["Test", "a", "--timeout", "0"]):
        assert fast.parse_perform(handed_on) is None


def test_the_console_script_enters_through_the_fast_path():
    if not SCRIPT.exists():
        pytest.skip("no installed console script beside this Python")
    assert "from servicefactory.cli.fast import main" in SCRIPT.read_text()


def test_perform_goes_through_the_fast_path_without_importing_click(tmp_path: Path, sf_home: Path):
    result = subprocess.run([PYTHON, "-X", "importtime", "-m", "servicefactory", "perform", "Nope", "x"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 3, result.stderr[-300:]
    imported = {line.rpartition("|")[2].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "servicefactory.cli.fast" in imported and "click" not in imported and "servicefactory.cli.main" not in imported


# -- absurd timeouts, bad text: one error line, exit 2, no traceback ------------------------------

@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "0", "-1", "1e300", "86401", "1e-9"])
def test_an_absurd_timeout_is_a_usage_error_not_a_traceback(tmp_path: Path, value: str):
    for option in (["--timeout", value], [f"--timeout={value}"], [f"--wait={value}"]):
        result = sf("perform", "Ghost", "echo", "1", *option, cwd=tmp_path)
        assert result.returncode == 2, (option, result.stderr)
        assert "Traceback" not in result.stderr and result.stdout == ""
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        if option[0].startswith("--timeout") or not value.startswith("-"):
            assert errors == [f"Error: Invalid value for '{option[0].split('=')[0]}': "
                              f"'{value}' is not a number of seconds from 0.001 to 86400."], result.stderr
        else:  # click reads `--wait=-1` as `--wait` alone and an option -1: its error, as with any option
            assert len(errors) == 1 and errors[0].startswith("Error: No such option"), result.stderr


@pytest.mark.parametrize("data, message", [
    ('"\\ud800"', "lone surrogate"),
    ('["ok", {"k": "\\udfff"}]', "lone surrogate"),
    ('"\\ud83d"', "lone surrogate"),
], ids=["lone high", "lone low, nested", "half an emoji"])
def test_data_with_a_lone_surrogate_is_one_line_and_exit_2(tmp_path: Path, data: str, message: str):
    for args, stdin in (([data], None), (["-"], data)):
        result = sf("perform", "Ghost", "echo", *args, cwd=tmp_path, input=stdin)
        assert result.returncode == 2 and result.stdout == "", result.stderr
        assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_data_that_is_not_utf8_is_one_line_and_exit_2(tmp_path: Path):
    result = sf("perform", "Ghost", "echo", "-", cwd=tmp_path, input=b'"caf\xe9"')
    assert result.returncode == 2 and result.stderr == b"error: DATA is not valid UTF-8 (invalid continuation byte at byte 4)\n"
    result = subprocess.run(COMMAND + ["perform", "Ghost", "echo", os.fsdecode(b'"caf\xe9"')], cwd=tmp_path,
                            capture_output=True, timeout=30)
    assert result.returncode == 2 and result.stderr == b"error: DATA is not valid UTF-8\n"


# -- stdin is read up to the limit and no further ------------------------------------------------

# writes up to 300 MiB of a JSON array to stdout until the reader goes away, then says how much
ENDLESS = """
import os, sys
chunk = b"[" + b"1," * (1 << 19)
written = 0
try:
    for _ in range(300):
        view = memoryview(chunk)
        while view:
            sent = os.write(1, view)
            written += sent
            view = view[sent:]
except BrokenPipeError:
    pass
sys.stderr.write(str(written))
"""


def _peak_rss_kib(command: list[str], stdin: int) -> tuple[subprocess.Popen, int, str]:
    """Run `command` to its end; (process, its peak RSS in KiB as wait4 reports it, its stderr)."""
    process = subprocess.Popen(command, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        return process, usage.ru_maxrss, process.stderr.read().decode()
    finally:
        if process.returncode is None:
            process.kill()
            process.wait(5)
        process.stderr.close()


def test_endless_stdin_is_refused_past_the_limit_at_once_with_little_memory(tmp_path: Path):
    """300 MiB piped in: perform reads 1 MiB + 1 byte, says so, exits 2; its memory stays small."""
    # a child's ru_maxrss starts at its parent's (fork copies the page tables, exec keeps the mark),
    # so pytest's own size shows in every child: compare with a child that does nothing
    _, baseline, _ = _peak_rss_kib([PYTHON, "-c", "pass"], subprocess.DEVNULL)
    read_end, write_end = os.pipe()
    started = time.monotonic()
    generator = subprocess.Popen([PYTHON, "-c", ENDLESS], stdout=write_end, stderr=subprocess.PIPE)
    os.close(write_end)
    try:
        process, peak, error = _peak_rss_kib(COMMAND + ["perform", "Ghost", "echo", "-"], read_end)
        elapsed = time.monotonic() - started
        os.close(read_end)
        read_end = -1
        _, written = generator.communicate(timeout=30)
    finally:
        if read_end >= 0:
            os.close(read_end)
        if generator.returncode is None:
            generator.kill()
            generator.wait(5)
    facts = (f"exit {process.returncode}, {int(written)} bytes written, peak RSS {peak} KiB "
             f"(a child doing nothing: {baseline} KiB), {elapsed:.1f} s, stderr {error!r}")
    assert process.returncode == 2, facts
    assert error == f"error: DATA is over the limit of {fast.DEFAULT_MAX_BODY} bytes (--max-body; " \
                    f"the service has a limit of its own)\n", facts
    # what the pipe took is what perform read plus the pipe's buffer and one chunk in flight
    assert int(written) < fast.DEFAULT_MAX_BODY + (4 << 20), "perform kept reading past the limit: " + facts
    assert peak < baseline + 40 * 1024, facts
    assert elapsed < 20, facts


def test_data_of_exactly_the_limit_is_read_and_one_byte_more_is_refused(tmp_path: Path):
    at_limit = json.dumps("x" * 62)  # 64 bytes
    assert sf("perform", "Ghost", "echo", "-", "--max-body", "64", cwd=tmp_path, input=at_limit).returncode == 3
    assert sf("perform", "Ghost", "echo", at_limit, "--max-body", "64", cwd=tmp_path).returncode == 3
    over = sf("perform", "Ghost", "echo", "-", "--max-body", "64", cwd=tmp_path, input=at_limit + " ")
    assert over.returncode == 2 and "over the limit of 64 bytes" in over.stderr
    assert sf("perform", "Ghost", "echo", at_limit + " ", "--max-body", "64", cwd=tmp_path).returncode == 2


# -- calls through the fast path -------------------------------------------------------------------

def test_the_fast_path_calls_and_prints_unicode_and_even_a_lone_surrogate_answer(echo: Path):
    data = {"text": "héllo 🌍 😀 日本", "n": [0, 1.5, None, False]}
    result = sf("perform", "Echo", "echo", json.dumps(data), cwd=echo)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"text": "héllo 🌍 😀 日本", "n": [0, 1.5, None, False]}
    piped = sf("perform", "Echo", "echo", "-", cwd=echo, input=json.dumps(data, ensure_ascii=False))
    assert piped.returncode == 0 and piped.stdout == result.stdout
    odd = sf("perform", "Echo", "surrogate", cwd=echo)
    assert odd.returncode == 0 and odd.stdout == '"\\ud800"\n' and odd.stderr == ""


# -- a service still starting -------------------------------------------------------------------

def test_perform_says_a_starting_service_is_starting_and_wait_waits_for_it(tmp_path: Path, spawn):
    (tmp_path / "gated.py").write_text(GATED)
    supervisor = spawn(args=COMMAND + ["run", "gated"])
    wait_until(lambda: sf("status", "Gated", cwd=tmp_path).stdout.count("starting"), message="Gated starting")

    early = sf("perform", "Gated", "echo", '"early"', cwd=tmp_path)
    assert early.returncode == 3 and early.stdout == ""
    assert early.stderr == "error: Gated is starting, not ready yet (add --wait to wait for it)\n"

    brief = sf("perform", "Gated", "echo", '"early"', "--wait", "0.3", cwd=tmp_path)
    assert brief.returncode == 3 and brief.stderr == "error: Gated is still starting after 0.3 s\n"

    waiting = subprocess.Popen(COMMAND + ["perform", "Gated", "echo", '"patient"', "--wait"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        assert waiting.poll() is None, waiting.communicate()
        (tmp_path / "gate").touch()
        out, err = waiting.communicate(timeout=30)
    finally:
        waiting.kill()
        waiting.wait(5)
    assert waiting.returncode == 0, err
    assert json.loads(out) == "patient"
    supervisor.signal(2)
    assert supervisor.wait(15) == 0


def test_wait_for_a_name_nobody_runs_gives_up_after_the_given_seconds(tmp_path: Path):
    started = time.monotonic()
    result = sf("perform", "Ghost", "echo", "--wait", "0.5", cwd=tmp_path)
    assert result.returncode == 3 and "Ghost is not running" in result.stderr
    assert 0.5 <= time.monotonic() - started < 10


# A service that dies on the `die` action and, once the file `crash` exists, cannot start again.
CRASHY = '''
import os
from servicefactory import Service


@Service.API.endpoint(port=0)
class Crashy(Service.base):
    def __init__(self):
        super().__init__()
        if os.path.exists("crash"):
            raise SystemExit(1)

    def loop(self):
        self.sleep(0.2)

    @Service.API.handle("die")
    def die(self, data):
        os._exit(1)
'''


def test_perform_on_a_failed_service_says_so_and_wait_does_not_wait_for_it(tmp_path: Path):
    (tmp_path / "crashy.py").write_text(CRASHY)
    started = sf("run", "crashy", "--daemon", "--max-failures", "1", "--backoff", "0.05", cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    try:
        (tmp_path / "crash").touch()
        sf("perform", "Crashy", "die", cwd=tmp_path)
        wait_until(lambda: "failed" in sf("status", "Crashy", cwd=tmp_path).stdout, message="Crashy failed")
        began = time.monotonic()
        result = sf("perform", "Crashy", "die", "--wait", "30", cwd=tmp_path)
        assert result.returncode == 3 and "Crashy failed and is not being restarted" in result.stderr, result.stderr
        assert time.monotonic() - began < 10  # a failed service is not waited for
    finally:
        sf("stop", "--all", "--timeout", "3", cwd=tmp_path)
