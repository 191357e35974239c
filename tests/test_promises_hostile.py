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
import time
from pathlib import Path

import pytest

from support import KEEPER, MODULE_COMMAND, PYTHON, Cli, alive, wait_until


sf = Cli(command=MODULE_COMMAND, timeout=90)


def read_only(home: Path, *command: str) -> list[str]:
    """`command` in a private mount namespace where `home` is a read-only bind mount."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) to mount a read-only file system")
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, str(home), *command]


def status_row(cwd: Path, name: str) -> dict:
    return json.loads(sf("status", name, "--json", cwd=cwd).stdout)[0]


def test_status_reports_on_a_read_only_state_directory_holding_a_dead_supervisors_files(keeper, sf_home):
    """Found: `status` exited 10 ("cannot use _supervisor-N.pid: Read-only file system") because it
    tried to remove a dead supervisor's record first; it only reads, so it must still report."""
    assert sf("run", "keeper.py", "--daemon", cwd=keeper).returncode == 0
    row = status_row(keeper, "Keeper")
    supervisor = int(row["supervisor"].rsplit("-", 1)[1])
    os.kill(supervisor, signal.SIGKILL)
    wait_until(lambda: not alive(row["pid"]), timeout=30, message="the service to follow its supervisor")
    assert list(sf_home.glob("_supervisor-*.pid"))  # the dead supervisor's leftovers are still there
    for args in (["status"], ["status", "--all"], ["status", "Keeper", "--json"]):
        result = subprocess.run(read_only(sf_home, *MODULE_COMMAND, *args), cwd=keeper, capture_output=True,
                                text=True, timeout=60, env=sf.env)
        assert result.returncode == 3, (args, result.stdout, result.stderr)
        assert "Keeper" in result.stdout and "Traceback" not in result.stderr, (args, result.stderr)


FORKY = """
import os, sys, time
from servicefactory import Service

@Service.API.endpoint(port=0)
class Forky(Service.base):
    def __init__(self):
        super().__init__()
        self.worker = None

    def loop(self):
        if self.worker is None:
            self.worker = os.fork()  # a worker forked without exec (multiprocessing's default on Linux)
            if self.worker == 0:
                time.sleep(120)
                os._exit(0)
            print(f"worker {self.worker}", flush=True)
        self.sleep(0.2)

if __name__ == "__main__":
    Forky().run()
"""


def test_a_worker_forked_by_a_killed_script_does_not_hold_its_name(spawn, sf, tmp_path):
    """Found: `python forky.py` forked a worker, then was killed -9. The worker held the pidfile lock
    it had inherited, so `run` refused with exit 9 "already running (pid <the dead one>)" and `stop`
    said it "removed its stale pidfile" while it removed nothing, for as long as the worker lived."""
    proc = spawn(files={"forky.py": FORKY}, args=[PYTHON, "forky.py"])
    worker = int(proc.wait_for(r"^worker \d+", timeout=30).split()[1])
    wait_until(lambda: (sf.row("Forky") or {}).get("state") == "running", timeout=20, message="Forky up")
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert alive(worker)
        assert sf.row("Forky")["state"] == "stale"
        result = sf("run", "forky.py", "--daemon")
        assert result.returncode == 0, result.stdout + result.stderr
        assert sf.row("Forky")["state"] == "running"
    finally:
        os.kill(worker, signal.SIGKILL)


@pytest.mark.parametrize("kind", ["directory", "symlink", "fifo"])
def test_a_token_file_that_is_not_a_regular_file_is_named_as_such_and_nothing_waits_on_it(keeper, sf_home, kind):
    """Found: a directory at `token` was refused as "readable by others; run: chmod 600" (a chmod
    that would not help); a FIFO there must not make anything wait on it."""
    sf_home.mkdir(mode=0o700)
    token = sf_home / "token"
    if kind == "directory":
        token.mkdir()
        token.chmod(0o755)  # as mkdir makes it: "readable by others" was the wrong complaint
    elif kind == "symlink":
        target = keeper / "elsewhere"
        target.write_text("x" * 64)
        target.chmod(0o600)
        token.symlink_to(target)
    else:
        os.mkfifo(token, 0o600)
    for args in (["run", "keeper.py", "--daemon"], ["perform", "Keeper", "health"]):
        result = sf(*args, cwd=keeper, timeout=30)
        assert result.returncode != 0 and "Traceback" not in result.stderr, (args, result.stderr)
        assert "not a regular file" in result.stderr, (args, result.stderr)


FULL = """
mount -t tmpfs -o size=64k,mode=0700 tmpfs "$HOME_DIR" || exit 99
dd if=/dev/zero of="$HOME_DIR/filler" bs=4k 2>/dev/null
"$@" run keeper.py --daemon; echo "run $?"
"$@" status --json; echo "status $?"
"""


def test_a_run_refused_on_a_full_disk_leaves_no_phantom_stale_service(keeper, sf_home):
    """Found: `run` on a full state directory failed with one line (right), but left an empty
    Keeper.pid, so `status` showed a `stale` Keeper that never ran (exit 3)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) to mount a small file system")
    sf_home.mkdir(mode=0o700)
    result = subprocess.run(["unshare", "-m", "sh", "-c", FULL, "sh", *MODULE_COMMAND], cwd=keeper,
                            capture_output=True, text=True, timeout=120, env=dict(sf.env, HOME_DIR=str(sf_home)))
    assert "run 10" in result.stdout and "No space left" in result.stderr, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    table = result.stdout.split("run 10", 1)[1]
    assert "status 0" in table and "Keeper" not in table, result.stdout


@pytest.mark.parametrize("command", [["restart", "Keeper"], ["reload", "Keeper"]])
def test_restart_or_reload_through_a_suspended_supervisor_fails_fast_and_queues_nothing(keeper, sf_home, command):
    """Found: `restart` through a SIGSTOPped supervisor hung (its deadline was ten minutes), and once the
    supervisor was resumed it restarted the service anyway; `stop` had been fixed for this (9.13)."""
    assert sf("run", "keeper.py", "--daemon", cwd=keeper).returncode == 0
    row = status_row(keeper, "Keeper")
    supervisor = int(row["supervisor"].rsplit("-", 1)[1])
    os.kill(supervisor, signal.SIGSTOP)
    try:
        result = sf(*command, cwd=keeper, timeout=30)
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert "suspended" in result.stderr and "Traceback" not in result.stderr, result.stderr
    finally:
        os.kill(supervisor, signal.SIGCONT)
    time.sleep(1.5)
    after = status_row(keeper, "Keeper")
    assert after["state"] == "running" and after["pid"] == row["pid"] and after["restarts"] == 0, after


@pytest.mark.parametrize("daemon", [True, False])
def test_a_hard_link_at_the_pidfile_is_refused_and_its_target_survives(keeper, sf_home, daemon):
    """Found: a symlink at NAME.pid was refused (9.7) but a hard link was not: `run` wrote its pid
    over the linked file's contents."""
    sf_home.mkdir(mode=0o700)
    precious = keeper / "precious.txt"
    precious.write_text("do not overwrite\n")
    os.link(precious, sf_home / "Keeper.pid")
    result = sf("run", "keeper.py", *(["--daemon"] if daemon else []), cwd=keeper, timeout=60)
    assert result.returncode == 10, (result.stdout, result.stderr)
    assert "hard link" in result.stderr and "Traceback" not in result.stderr + result.stdout
    assert precious.read_text() == "do not overwrite\n"


def test_restart_from_a_deleted_project_directory_says_so(tmp_path, sf_home):
    """Found: `restart` of a module target whose project directory was deleted said only "no module
    named 'keeper' (looked in the current directory ...)", the user's, not the one it was run in."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "keeper.py").write_text(textwrap.dedent(KEEPER))
    assert sf("run", "keeper", "--daemon", cwd=project).returncode == 0
    assert sf("stop", "Keeper", cwd=project).returncode == 0
    shutil.rmtree(project)
    result = sf("restart", "Keeper", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{project}, the directory Keeper was run in, no longer exists" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
