"""Errors become messages and exit codes in one place, and the CLI's help is derived from the code
that owns each fact (the exit codes, the restart policies, the supervisor's defaults)."""
from __future__ import annotations

import inspect
from pathlib import Path

from click.testing import CliRunner

import servicefactory.errors as errors
from servicefactory.supervise._states import RESTART_POLICIES
from servicefactory.supervise._supervised import Settings
from servicefactory.cli import running
from servicefactory.cli.common import CommandFailed
from servicefactory.cli.main import cli, run

TWO = """
from servicefactory import Service


class Alpha(Service.base):
    pass


class Beta(Service.base):
    pass
"""


def test_every_error_exit_code_is_listed_in_the_help():
    codes = {cls.exit_code for _, cls in inspect.getmembers(errors, inspect.isclass)
             if issubclass(cls, errors.ServiceFactoryError)}
    assert codes <= set(errors.EXIT_CODES)
    text = CliRunner().invoke(cli, ["--help"]).output
    for code, meaning in errors.EXIT_CODES.items():
        assert f"{code}  {meaning.split()[0]}" in text


def test_run_takes_its_restart_choices_and_defaults_from_their_owners():
    options = {param.name: param for param in run.params}
    assert tuple(options["restart"].type.choices) == RESTART_POLICIES
    for name in ("max_failures", "backoff", "retry_failed_after", "ready_timeout", "log_max_bytes", "log_backups"):
        assert options[name].get_default(None) == getattr(Settings(), name)


def test_a_helper_deep_in_run_raises_a_typed_error_and_the_group_alone_prints_and_exits(tmp_path: Path,
                                                                                         monkeypatch):
    (tmp_path / "two.py").write_text(TWO)
    monkeypatch.chdir(tmp_path)
    try:
        running.specs(("two.py",), "One", None, None, None, None, None)
    except CommandFailed as exc:
        assert exc.exit_code == 2  # raised, not exited: the helper never ends the process
    else:
        raise AssertionError("two services under one --name were accepted")
    result = CliRunner().invoke(cli, ["run", "two.py", "--name", "One"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: --name, --host, --port and --log-file apply to one service; these targets define Alpha, Beta"]
