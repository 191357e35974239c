"""Fixtures only: an isolated state directory per test, real subprocesses that are always reaped, the CLI.

What tests import (drivers, scanners, polling) lives in support.py.
"""
from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from support import KEEPER, MODULE_COMMAND, PYTHON, Cli, Proc, kill_all, processes_using


# files holding the suite's longest tests (measured with --durations), collected first: under xdist a
# long test that starts late decides the wall time. It only orders; a stale entry costs nothing.
SLOW_FIRST = ("test_bench.py", "test_client_drain.py", "test_openapi.py", "test_app_up.py", "test_etcd_hosts.py",
              "test_etcd.py", "test_hardening.py", "test_dashboard.py", "test_promises_state.py", "test_supervisor.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the files of SLOW_FIRST first, in that order; every other test keeps its place."""
    rank = {name: index for index, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))


@pytest.fixture(autouse=True)
def sf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own state directory, so no test sees another's (or the user's) services.

    Whatever still runs with that directory when the test ends (a daemon a failed test could not
    stop) is killed: no test leaves a process behind.
    """
    home = tmp_path / "sf-home"
    monkeypatch.setenv("SERVICEFACTORY_HOME", str(home))
    monkeypatch.delenv("SERVICEFACTORY_TOKEN", raising=False)
    yield home
    kill_all(set(processes_using(home)))


@pytest.fixture(autouse=True)
def perform_client(sf_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """Every test calls through a fresh client (`perform()`, `Service.perform`): no address, token or
    connection remembered from another test; its connections are closed when the test ends."""
    from servicefactory.http import client
    fresh = client.Client()
    monkeypatch.setattr(client, "default", fresh)
    yield fresh
    fresh.close_connections()


@pytest.fixture
def sf(tmp_path: Path, sf_home: Path) -> Iterator[Cli]:
    """The CLI in this test's directory and state directory; everything it started is stopped at teardown."""
    cli = Cli(tmp_path, sf_home)
    yield cli
    cli.shutdown()


@pytest.fixture
def spawn(tmp_path: Path, sf_home: Path) -> Iterator:
    """Factory: spawn(code_or_args, files={...}) starts a real process in tmp_path; all are killed at teardown."""
    procs: list[Proc] = []

    def start(code: str | None = None, *, args: list[str] | None = None, files: dict[str, str] | None = None,
              env: dict[str, str] | None = None) -> Proc:
        for name, text in (files or {}).items():
            (tmp_path / name).write_text(textwrap.dedent(text))
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", SERVICEFACTORY_HOME=str(sf_home),
                        PYTHONPATH=str(tmp_path))
        full_env.update(env or {})
        command = args if args is not None else [PYTHON, "-c", textwrap.dedent(code or "")]
        proc = Proc(command, tmp_path, full_env)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()


@pytest.fixture
def keeper(tmp_path: Path) -> Iterator[Path]:
    """tmp_path holding keeper.py (support.KEEPER); whatever was started from there is stopped at the end."""
    (tmp_path / "keeper.py").write_text(textwrap.dedent(KEEPER))
    yield tmp_path
    Cli(command=MODULE_COMMAND, timeout=90)("stop", "--all", "--timeout", "2", cwd=tmp_path)
