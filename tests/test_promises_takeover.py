"""Issue 9.3: a supervisor killed with `kill -9` while a `stop`, `stop --all` or `restart` waits on it.

The command has already handed its request to the supervisor, which is stopping the service, when
the supervisor dies: the connection breaks with no answer. The command must not give up with
"may or may not have run" and leave the service (ending by its lifeline) and its files behind: it
takes the orphan over, waits for it within its stop timeout, kills it past that, removes its files
and says what happened.
"""
from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from pathlib import Path

import pytest

from support import MODULE_COMMAND, Cli, alive, wait_until


sf = Cli(command=MODULE_COMMAND, timeout=90)


def start(cwd: Path, env: dict) -> tuple[int, int]:
    """Run Keeper detached; its pid and its supervisor's."""
    result = sf("run", "keeper.py", "--daemon", cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    row = json.loads(sf("status", "Keeper", "--json", cwd=cwd).stdout)[0]
    return row["pid"], int(row["supervisor"].rsplit("-", 1)[1])


def kill_supervisor_while_it_stops(home: Path, supervisor: int) -> None:
    """SIGKILL the supervisor once it has passed the stop on (the service logs that it finalizes)."""
    wait_until(lambda: "finalizing" in (home / "Keeper.log").read_text(), timeout=30,
               message="the supervisor to start stopping Keeper")
    os.kill(supervisor, signal.SIGKILL)


def leftovers(home: Path) -> list[str]:
    return sorted(p.name for p in home.iterdir() if p.suffix in (".pid", ".json", ".secret"))


@pytest.mark.parametrize("finalize", ["2", "0.2"])
@pytest.mark.parametrize("command", [["stop", "Keeper"], ["stop", "--all"]])
def test_a_stop_whose_supervisor_is_killed_mid_way_takes_the_service_over(keeper, sf_home, command, finalize):
    """0.2.0 (and main before this fix): `error: ... closed the connection without a complete answer;
    'stop' may or may not have run`, exit 1, Keeper and the dead supervisor's files left behind. With a
    short finalize() the service may be gone before the command looks: still "stopped", not "was not
    running"."""
    service, supervisor = start(keeper, {"FINALIZE_SECONDS": finalize})
    stopping = sf.popen(*command, cwd=keeper)
    try:
        kill_supervisor_while_it_stops(sf_home, supervisor)
        out, err = stopping.communicate(timeout=60)
    finally:
        stopping.kill()
        stopping.wait()
    assert stopping.returncode == 0, out + err
    assert "Keeper stopped" in out and "Traceback" not in err, out + err
    assert "may or may not" not in err
    assert not alive(service)
    assert "finalized" in (sf_home / "Keeper.log").read_text()  # it was let finish, not killed
    assert leftovers(sf_home) == []
    row = json.loads(sf("status", "Keeper", "--json", cwd=keeper).stdout)[0]
    assert row["state"] == "stopped", row


@pytest.mark.parametrize("command", [["stop", "Keeper"], ["stop", "--all"]])
def test_a_hanging_service_whose_supervisor_dies_mid_stop_is_killed_at_its_stop_timeout(keeper, sf_home, command):
    """The service hangs in finalize(): the command kills it once its own stop timeout has passed,
    says so, and leaves no files."""
    service, supervisor = start(keeper, {"FINALIZE_SECONDS": "600", "POLICY_STOP_TIMEOUT": "2"})
    stopping = sf.popen(*command, cwd=keeper)
    try:
        kill_supervisor_while_it_stops(sf_home, supervisor)
        killed_at = time.monotonic()
        out, err = stopping.communicate(timeout=60)
        elapsed = time.monotonic() - killed_at
    finally:
        stopping.kill()
        stopping.wait()
    assert stopping.returncode == 0, out + err
    assert "Keeper" in out + err and "Traceback" not in err, out + err
    assert "may or may not" not in err
    assert not alive(service)
    assert elapsed < 2 + 1 + 10, elapsed  # its stop timeout, a second, and a generous margin for load
    assert leftovers(sf_home) == []


def test_a_restart_whose_supervisor_is_killed_mid_way_brings_the_service_back(keeper, sf_home):
    """`restart` too: the old instance is taken over and ended, and the service runs again."""
    service, supervisor = start(keeper, {"FINALIZE_SECONDS": "2"})
    restarting = sf.popen("restart", "Keeper", cwd=keeper)
    try:
        kill_supervisor_while_it_stops(sf_home, supervisor)
        out, err = restarting.communicate(timeout=90)
    finally:
        restarting.kill()
        restarting.wait()
    assert restarting.returncode == 0, out + err
    assert "Traceback" not in err and "may or may not" not in err, out + err
    assert not alive(service)
    row = json.loads(sf("status", "Keeper", "--json", cwd=keeper).stdout)[0]
    assert row["state"] == "running" and row["pid"] != service, row
    assert int(row["supervisor"].rsplit("-", 1)[1]) != supervisor
    assert not list(sf_home.glob(f"_supervisor-{supervisor}.*"))


ORPHAN = """
import signal, time
from servicefactory import Service

@Service.API.endpoint(port=0)
@Service.policy(stop_timeout=3)
class Orphan(Service.base):
    def loop(self):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # outlives its supervisor for its stop timeout
        time.sleep(0.2)
"""


@pytest.mark.parametrize("command", [["run", "orphan.py", "--daemon"], ["restart", "Orphan"]])
def test_run_or_restart_right_after_kill_9_of_the_supervisor_takes_the_ending_service_over(tmp_path, sf_home,
                                                                                           command):
    """0.2.0: `run`/`restart` refused with exit 9 "already running" while the orphan lived on; main
    before this fix: `run` exit 9 "already stopping", `restart` a failed call to the dead supervisor."""
    (tmp_path / "orphan.py").write_text(textwrap.dedent(ORPHAN))
    first = sf("run", "orphan.py", "--daemon", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    row = json.loads(sf("status", "Orphan", "--json", cwd=tmp_path).stdout)[0]
    service, supervisor = row["pid"], int(row["supervisor"].rsplit("-", 1)[1])
    os.kill(supervisor, signal.SIGKILL)
    wait_until(lambda: not alive(supervisor), message="the supervisor to die")
    result = sf(*command, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "Orphan" in result.stderr, result.stderr
    assert not alive(service)
    row = json.loads(sf("status", "Orphan", "--json", cwd=tmp_path).stdout)[0]
    assert row["state"] == "running" and row["pid"] != service, row
    assert not list(sf_home.glob(f"_supervisor-{supervisor}.*"))
