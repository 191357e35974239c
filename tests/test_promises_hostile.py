"""The README's promises, tried once more as a hostile operator would, after issue 9's items were
fixed: a read-only state directory, foreign and corrupt files in it, signals during start and stop,
racing commands. Each test reproduces a defect found that way; its docstring says what it was.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest

from support import MODULE_COMMAND, Cli, alive, wait_until

KEEPER = """
import os, time
from servicefactory import Service

@Service.API.endpoint(port=0)
@Service.policy(stop_timeout=float(os.environ.get("POLICY_STOP_TIMEOUT", "10")))
class Keeper(Service.base):
    def loop(self):
        self.sleep(0.2)

    def finalize(self):
        time.sleep(float(os.environ.get("FINALIZE_SECONDS", "0")))
        self.log("finalized")
"""

sf = Cli(command=MODULE_COMMAND, timeout=90)


@pytest.fixture
def module(tmp_path):
    (tmp_path / "keeper.py").write_text(textwrap.dedent(KEEPER))
    yield tmp_path
    sf("stop", "--all", "--timeout", "2", cwd=tmp_path)


def read_only(home: Path, *command: str) -> list[str]:
    """`command` in a private mount namespace where `home` is a read-only bind mount."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) to mount a read-only file system")
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, str(home), *command]


def status_row(cwd: Path, name: str) -> dict:
    return json.loads(sf("status", name, "--json", cwd=cwd).stdout)[0]


def test_status_reports_on_a_read_only_state_directory_holding_a_dead_supervisors_files(module, sf_home):
    """Found: `status` exited 10 ("cannot use _supervisor-N.pid: Read-only file system") because it
    tried to remove a dead supervisor's record first; it only reads, so it must still report."""
    assert sf("run", "keeper.py", "--daemon", cwd=module).returncode == 0
    row = status_row(module, "Keeper")
    supervisor = int(row["supervisor"].rsplit("-", 1)[1])
    os.kill(supervisor, signal.SIGKILL)
    wait_until(lambda: not alive(row["pid"]), timeout=30, message="the service to follow its supervisor")
    assert list(sf_home.glob("_supervisor-*.pid"))  # the dead supervisor's leftovers are still there
    for args in (["status"], ["status", "--all"], ["status", "Keeper", "--json"]):
        result = subprocess.run(read_only(sf_home, *MODULE_COMMAND, *args), cwd=module, capture_output=True,
                                text=True, timeout=60, env=sf.env)
        assert result.returncode == 3, (args, result.stdout, result.stderr)
        assert "Keeper" in result.stdout and "Traceback" not in result.stderr, (args, result.stderr)
