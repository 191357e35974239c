"""Issue 9 items 2, 5-10, 13 and issue 16 items 8-9: the state directory and the commands that use
it, tried from outside as a hostile operator would (real processes, real signals, planted files).

Each test reproduces a defect 0.2.0 had; its docstring says which.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from support import KEEPER, MODULE_COMMAND, Cli, free_port, wait_until
from servicefactory.registry.local import LocalRegistry, process_start_time

CLI = [sys.executable, "-m", "servicefactory"]


sf = Cli(command=MODULE_COMMAND, timeout=90)  # the CLI as a user runs it; a hang fails the test, not the suite


def one_line_error(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.stderr.startswith("error:") or "Error:" in result.stderr, result.stderr


def alive(pid: int) -> bool:
    return process_start_time(pid) is not None


def status_of(name: str, cwd: Path, env: dict | None = None) -> dict:
    result = sf("status", name, "--json", cwd=cwd, env=env)
    return json.loads(result.stdout)[0]


def run_daemon(cwd: Path, *options: str, env: dict | None = None) -> int:
    result = sf("run", "keeper.py", "--daemon", *options, cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split("pid ")[1].split(",")[0])


def supervisor_pid(home: Path) -> int:
    (name,) = [p.stem for p in home.glob("_supervisor-*.pid")]
    return int(name.split("-")[1])


# -- 9.2 the service's own stop timeout --------------------------------------------------------

def test_stop_honours_the_services_own_30s_policy_instead_of_killing_at_10s(keeper):
    """9.2: a 30 s policy and a finalize() of 12 s: `stop` waited only its own 10 s and SIGKILLed it."""
    env = {"POLICY_STOP_TIMEOUT": "30", "FINALIZE_SECONDS": "11"}
    pid = run_daemon(keeper, env=env)
    result = sf("stop", "Keeper", cwd=keeper)
    assert result.returncode == 0, result.stderr
    assert "killed" not in result.stdout + result.stderr
    assert not alive(pid)
    log = (Path(os.environ["SERVICEFACTORY_HOME"]) / "Keeper.log").read_text()
    assert "finalized" in log


@pytest.mark.parametrize("command", [["stop", "Keeper"], ["restart", "Keeper"], ["stop", "--all"]])
def test_a_short_stop_timeout_is_used_by_stop_restart_and_stop_all(keeper, command):
    """9.2: with `--stop-timeout 1`, `restart` (and `stop`, `stop --all`) waited 10 s for a hanging finalize()."""
    run_daemon(keeper, "--stop-timeout", "1", env={"FINALIZE_SECONDS": "60"})
    started = time.monotonic()
    result = sf(*command, cwd=keeper, env={"FINALIZE_SECONDS": "0"})
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    log = (Path(os.environ["SERVICEFACTORY_HOME"]) / "Keeper.log").read_text()
    assert "did not stop within 1 s" in log, log[-2000:]  # the supervisor's own account, load or not
    assert elapsed < 9.5, elapsed  # 1 s (and for restart a new start), not 10 s


def test_an_explicit_timeout_still_overrides_the_policy(keeper):
    """9.2: `--timeout` stays the explicit override."""
    run_daemon(keeper, env={"POLICY_STOP_TIMEOUT": "30", "FINALIZE_SECONDS": "60"})
    started = time.monotonic()
    result = sf("stop", "Keeper", "--timeout", "1", cwd=keeper)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 8


def test_a_standalone_script_is_given_its_own_stop_timeout(spawn, tmp_path):
    """9.2 for a script run with `python script.py`: its policy, not the CLI's 10 s, bounds the stop."""
    proc = spawn(files={"keeper.py": KEEPER}, args=[sys.executable, "keeper.py"],
                 env={"POLICY_STOP_TIMEOUT": "1", "FINALIZE_SECONDS": "60"})
    wait_until(lambda: status_of("Keeper", tmp_path)["state"] == "running", timeout=20, message="Keeper up")
    started = time.monotonic()
    result = sf("stop", "Keeper", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "killed" in result.stderr
    assert time.monotonic() - started < 7
    assert proc.wait(10) == -signal.SIGKILL


# -- 9.5 an unreadable record ------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncated", "garbled", "directory", "removed"])
@pytest.mark.parametrize("how", ["script", "supervised"])
def test_a_damaged_record_yields_to_the_live_owner_and_is_rewritten(keeper, spawn, sf_home, damage, how):
    """9.5: a truncated, garbled, directory or missing NAME.json made `status` say `starting` for ever
    and `stop` refuse; the live flock holder is the truth, and the record comes back."""
    if how == "script":
        proc = spawn(files={"keeper.py": KEEPER}, args=[sys.executable, "keeper.py"])
        wait_until(lambda: status_of("Keeper", keeper)["state"] == "running", timeout=20, message="Keeper up")
        pid = proc.pid
    else:
        pid = run_daemon(keeper)
    path = sf_home / "Keeper.json"
    good = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "garbled":
        path.write_bytes(b"\x00\xff not json at all")
    elif damage == "directory":
        path.unlink()
        path.mkdir()
    else:
        path.unlink()
    if damage != "removed":  # (a missing record may also be one not written yet: `starting` is fair)
        row = status_of("Keeper", keeper)  # at once: the truth from the lock holder, not `starting`
        assert row["state"] == "running" and row["pid"] == pid, row
        assert 0 <= row["uptime"] < 60, row
    def rewritten() -> bool:
        try:
            return json.loads(path.read_bytes())["pid"] == pid
        except (OSError, ValueError):
            return False

    wait_until(rewritten, timeout=5, message="the owner to rewrite its record")
    assert status_of("Keeper", keeper)["url"]
    if damage != "removed":  # and once more, stop works while the record is bad
        path.write_bytes(b"{")
    result = sf("stop", "Keeper", cwd=keeper)
    assert result.returncode == 0, result.stderr
    wait_until(lambda: not alive(pid), timeout=15, message="Keeper to exit")


# -- 9.6 every run option survives restart -----------------------------------------------------

def test_restart_after_the_supervisor_is_gone_keeps_every_run_option(keeper, sf_home):
    """9.6: `NAME.last` kept none of --log-max-bytes, --log-backups, --max-failures, --backoff,
    --ready-timeout, --log-level: a log set to rotate at 4 KiB grew to 290 KB after a restart."""
    options = ["--log-max-bytes", "4096", "--log-backups", "2", "--max-failures", "3", "--backoff", "0.25",
               "--ready-timeout", "17", "--log-level", "DEBUG", "--stop-timeout", "3", "--restart", "always"]
    run_daemon(keeper, *options)
    assert sf("stop", "Keeper", cwd=keeper).returncode == 0
    result = sf("restart", "Keeper", cwd="/")
    assert result.returncode == 0, result.stderr
    pid = supervisor_pid(sf_home)
    config = json.loads(Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")[-1])
    settings, (spec,) = config["settings"], config["specs"]
    assert (settings["log_max_bytes"], settings["log_backups"], settings["max_failures"], settings["backoff"],
            settings["ready_timeout"]) == (4096, 2, 3, 0.25, 17.0)
    assert (spec["stop_timeout"], spec["restart"]) == (3.0, "always")
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"SERVICEFACTORY_LOG_LEVEL=DEBUG" in environ


# -- 9.7 an unsafe state directory, planted files ----------------------------------------------

def test_a_planted_record_never_gets_an_unrelated_process_killed(tmp_path, sf_home):
    """9.7: a planted NAME.json made `stop Fake` SIGKILL an unrelated `sleep 1000`."""
    sleeper = subprocess.Popen(["sleep", "1000"])
    try:
        LocalRegistry(sf_home).ensure()
        record = {"name": "Fake", "pid": sleeper.pid, "create_time": process_start_time(sleeper.pid),
                  "started": time.time(), "target": "x:Fake", "host": None, "port": None}
        (sf_home / "Fake.json").write_text(json.dumps(record))
        (sf_home / "Fake.pid").write_text(f"{sleeper.pid}\n")
        for command in (["stop", "Fake", "--timeout", "1"], ["stop", "--all", "--timeout", "1"]):
            result = sf(*command, cwd=tmp_path)
            assert "Traceback" not in result.stderr
            time.sleep(0.2)
            assert sleeper.poll() is None, (command, result.stdout, result.stderr)
        record["supervisor"] = "_supervisor-1"  # an "orphan of a dead supervisor": still not proven
        (sf_home / "Fake.json").write_text(json.dumps(record))
        (sf_home / "Fake.pid").write_text(f"{sleeper.pid}\n")
        sf("stop", "Fake", "--timeout", "1", cwd=tmp_path)
        time.sleep(0.2)
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_symlink_at_the_pidfile_is_not_followed_and_its_target_survives(keeper, sf_home):
    """9.7: a symlink at NAME.pid was followed and `run` overwrote its target."""
    LocalRegistry(sf_home).ensure()
    victim = keeper / "precious.txt"
    victim.write_text("do not overwrite\n")
    (sf_home / "Keeper.pid").symlink_to(victim)
    for command in (["run", "keeper.py", "--daemon"], ["run", "keeper.py"]):
        result = sf(*command, cwd=keeper, timeout=60)
        assert result.returncode == 10, (command, result.stdout, result.stderr)
        assert "symbolic link" in result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr
    assert victim.read_text() == "do not overwrite\n"


def test_symlinked_record_and_log_files_are_not_followed(keeper, sf_home):
    """9.7: no file is opened through a symlink: a record or a log planted as a link is ignored or refused."""
    LocalRegistry(sf_home).ensure()
    secret = keeper / "secret.txt"
    secret.write_text("the secret\n")
    (sf_home / "Ghost.log").symlink_to(secret)
    result = sf("logs", "Ghost", cwd=keeper)
    assert result.returncode != 0 and "the secret" not in result.stdout
    one_line_error(result)
    (sf_home / "supervisor.log").symlink_to(secret)  # the detached supervisor's own output
    result = sf("run", "keeper.py", "--daemon", cwd=keeper)
    assert result.returncode == 10 and "symbolic link" in result.stderr, result.stderr
    assert secret.read_text() == "the secret\n" and oct(secret.stat().st_mode & 0o777) != oct(0o600)
    elsewhere = keeper / "elsewhere.json"
    elsewhere.write_text(json.dumps({"name": "Ghost", "pid": os.getpid(), "port": 1, "host": "127.0.0.1"}))
    (sf_home / "Ghost.json").symlink_to(elsewhere)
    assert LocalRegistry(sf_home).lookup("Ghost") is None


@pytest.mark.parametrize("command", [["stop", "Keeper"], ["stop", "--all"], ["perform", "Keeper", "health"],
                                     ["logs", "Keeper"], ["logs"], ["restart", "Keeper"], ["status"]])
def test_every_command_refuses_a_state_directory_others_can_write(keeper, sf_home, command):
    """9.7 / 16.9: only `status` and `run` refused an unsafe directory; `stop`, `perform`, `logs` and
    `restart` trusted what others could have planted there."""
    run_daemon(keeper)
    sf_home.chmod(0o777)
    try:
        result = sf(*command, cwd=keeper)
        assert result.returncode == 10, (result.stdout, result.stderr)
        assert "writable by others" in result.stderr
        one_line_error(result)
    finally:
        sf_home.chmod(0o700)


def test_the_python_client_refuses_a_state_directory_others_can_write(keeper, sf_home):
    """9.7: the Python client too."""
    from servicefactory.http import client
    from servicefactory.errors import StateError

    run_daemon(keeper)
    sf_home.chmod(0o777)
    try:
        with pytest.raises(StateError):
            client.perform("Keeper", "health", registry=LocalRegistry(sf_home))
    finally:
        sf_home.chmod(0o700)


# -- 9.8 a relative SERVICEFACTORY_HOME --------------------------------------------------------

def test_restart_with_a_relative_home_from_another_directory_uses_the_same_state_directory(tmp_path):
    """9.8: `restart` resolved a relative SERVICEFACTORY_HOME against the recorded working directory:
    it said "running" while `status` in the user's directory said `stopped`."""
    started_in = tmp_path / "u" / "deep"
    elsewhere = tmp_path / "v"
    started_in.mkdir(parents=True)
    elsewhere.mkdir()
    (started_in / "keeper.py").write_text(textwrap.dedent(KEEPER))
    home = started_in / "state"
    relative_from_elsewhere = os.path.relpath(home, elsewhere)
    try:
        run_daemon(started_in, env={"SERVICEFACTORY_HOME": "state"})
        here = {"SERVICEFACTORY_HOME": relative_from_elsewhere}
        assert sf("stop", "Keeper", cwd=elsewhere, env=here).returncode == 0
        result = sf("restart", "Keeper", cwd=elsewhere, env=here)
        assert result.returncode == 0, result.stderr
        named = result.stderr.split("state directory ", 1)[1].split(")", 1)[0]
        assert Path(named).resolve() == home.resolve()  # the message names the directory it used
        assert status_of("Keeper", elsewhere, here)["state"] == "running"
        assert status_of("Keeper", started_in, {"SERVICEFACTORY_HOME": "state"})["state"] == "running"
        assert sorted(p.name for p in tmp_path.rglob("state")) == ["state"]  # no second state directory
    finally:
        sf("stop", "--all", "--timeout", "2", cwd=started_in, env={"SERVICEFACTORY_HOME": "state"})


# -- 9.9 an old owner deletes only its own files -----------------------------------------------

def test_an_old_supervisor_does_not_delete_the_files_of_the_names_new_owner(keeper, sf_home):
    """9.9: after the state directory was deleted and the name run again, the first supervisor's exit
    removed the new instance's .pid and .json: `status` said "no services"."""
    run_daemon(keeper)
    first_supervisor = supervisor_pid(sf_home)
    shutil.rmtree(sf_home)
    second = run_daemon(keeper)
    os.kill(first_supervisor, signal.SIGTERM)
    wait_until(lambda: not alive(first_supervisor), timeout=20, message="the first supervisor to exit")
    time.sleep(0.3)
    assert (sf_home / "Keeper.pid").exists() and (sf_home / "Keeper.json").exists()
    row = status_of("Keeper", keeper)
    assert row["state"] == "running" and row["pid"] == second
    result = sf("stop", "--all", cwd=keeper)
    assert "Keeper stopped" in result.stdout


# -- 9.10 one line, not a traceback ------------------------------------------------------------

def _read_only(home: Path, *command: str) -> list[str]:
    """`command` in a private mount namespace where `home` is a read-only bind mount."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) to mount a read-only file system")
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, str(home), *command]


@pytest.mark.parametrize("daemon", [True, False])
def test_run_on_a_read_only_state_directory_is_one_line_and_exit_10(keeper, sf_home, daemon):
    """9.10: a read-only state directory made `run -d` and `run` die with an OSError traceback."""
    LocalRegistry(sf_home).ensure()
    command = _read_only(sf_home, *CLI, "run", "keeper.py", *(["--daemon"] if daemon else []))
    result = subprocess.run(command, cwd=keeper, capture_output=True, text=True, timeout=60)
    assert result.returncode == 10, (result.stdout, result.stderr)
    assert "read-only" in result.stderr and "Traceback" not in result.stderr + result.stdout


def test_the_seed_script_runs_and_serves_on_a_read_only_state_directory(spawn, tmp_path, sf_home):
    """9.10: even plain `python TestService.py` died; it must run and serve, unregistered, saying so once."""
    LocalRegistry(sf_home).ensure()
    port = free_port()
    seed = (Path(__file__).resolve().parent.parent / "servicefactory" / "TestService.py").read_text()
    proc = spawn(files={"seed.py": seed.replace("port=1234", f"port={port}")},
                 args=_read_only(sf_home, sys.executable, "seed.py"))
    proc.wait_for("looping", timeout=20)
    from servicefactory.http import client
    assert client.perform("Test", "action", "hello", fallback=("127.0.0.1", port)) is None
    proc.wait_for("hello")
    assert proc.output.count("not registered") == 1
    assert "Traceback" not in proc.output


def test_a_directory_at_the_pidfile_gives_one_line_everywhere(keeper, sf_home):
    """9.10: a directory at NAME.pid crashed the supervisor with a traceback; `stop` printed
    IsADirectoryError and a KeyError."""
    LocalRegistry(sf_home).ensure()
    (sf_home / "Keeper.pid").mkdir()
    for command in (["run", "keeper.py", "--daemon"], ["run", "keeper.py"], ["stop", "Keeper"],
                    ["status"], ["stop", "--all"]):
        result = sf(*command, cwd=keeper, timeout=60)
        assert "Traceback" not in result.stdout + result.stderr, (command, result.stderr)
        assert "KeyError" not in result.stderr and "IsADirectoryError" not in result.stderr
        if command[0] == "run":
            assert result.returncode == 10 and "Keeper.pid" in result.stderr, (command, result.stderr)
    supervisor_log = sf_home / "supervisor.log"
    assert "Traceback" not in (supervisor_log.read_text() if supervisor_log.exists() else "")


def test_a_directory_at_the_log_gives_one_line(keeper, sf_home):
    """9.10: a directory at NAME.log made `logs` print a traceback."""
    run_daemon(keeper, "--log-file", str(keeper / "keeper-output.log"))
    (sf_home / "Other.log").mkdir()
    result = sf("logs", "Other", cwd=keeper)
    assert result.returncode != 0
    one_line_error(result)
    os.mkfifo(sf_home / "Piped.log")  # a FIFO nobody writes to must not hang `logs`
    result = sf("logs", "Piped", cwd=keeper, timeout=30)
    assert result.returncode != 0
    one_line_error(result)
    result = sf("logs", cwd=keeper)  # every service's: the directory is no service's log
    assert "Traceback" not in result.stderr and "Other" not in result.stdout


# -- 9.13 smaller ones -------------------------------------------------------------------------

def test_logs_include_services_with_a_log_file_also_after_a_stop(keeper, sf_home):
    """9.13: `logs` with no name left out services using --log-file; `logs NAME` after a stop ignored
    the remembered --log-file."""
    own = keeper / "keeper-output.log"
    run_daemon(keeper, "--log-file", str(own))
    wait_until(lambda: own.exists() and "ready" in own.read_text(), message="Keeper's log")
    result = sf("logs", cwd=keeper)
    assert result.returncode == 0, result.stderr
    assert "Keeper | " in result.stdout
    assert sf("stop", "Keeper", cwd=keeper).returncode == 0
    result = sf("logs", "Keeper", cwd=keeper)
    assert result.returncode == 0, result.stderr
    assert "finalized" in result.stdout


def test_stop_of_a_name_never_run_exits_3(keeper, sf_home):
    """9.13: `stop Typo` exited 0."""
    run_daemon(keeper)
    result = sf("stop", "Keepr", cwd=keeper)
    assert result.returncode == 3 and "no service of that name was ever run" in result.stderr


def test_an_impossible_host_is_refused_for_the_address(keeper):
    """9.13: `--host 256.1.1.1` complained about a missing token instead of the address."""
    result = sf("run", "keeper.py", "--daemon", "--host", "256.1.1.1", cwd=keeper)
    assert result.returncode == 2
    assert "256.1.1.1 is not a valid IP address" in result.stderr and "token" not in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_services_of_a_signalled_supervisor_show_as_stopped_not_vanished(keeper, sf_home, signum):
    """9.13: after the supervisor was SIGTERMed or SIGHUPed, plain `status` exited 0 and listed nothing.
    (SIGHUP no longer stops a supervisor, issue 15: it reopens its logs; see test_lifecycle_reload.py.)"""
    run_daemon(keeper)
    supervisor = supervisor_pid(sf_home)
    os.kill(supervisor, signum)
    wait_until(lambda: not alive(supervisor), timeout=20, message="the supervisor to exit")
    result = sf("status", "--json", cwd=keeper)
    assert result.returncode == 3
    assert [(row["name"], row["state"]) for row in json.loads(result.stdout)] == [("Keeper", "stopped")]
    assert sf("restart", "Keeper", cwd=keeper).returncode == 0  # and it can be brought back
    assert status_of("Keeper", keeper)["state"] == "running"


def test_stop_all_escalates_against_a_suspended_supervisor_and_nothing_runs_later(keeper, sf_home):
    """9.13: `stop --all` against a SIGSTOPped supervisor waited 16 s, exited 1, never escalated, and the
    queued stop ran later anyway."""
    service = run_daemon(keeper, "--stop-timeout", "2")
    supervisor = supervisor_pid(sf_home)
    os.kill(supervisor, signal.SIGSTOP)
    try:
        started = time.monotonic()
        result = sf("stop", "--all", cwd=keeper)
        elapsed = time.monotonic() - started
        assert elapsed < 2 + 5, elapsed
        assert "Traceback" not in result.stderr
        wait_until(lambda: not alive(supervisor) and not alive(service), timeout=5, message="both gone")
        left = sorted(p.name for p in sf_home.iterdir() if p.suffix in (".pid", ".json"))
        if left:
            ino = os.stat(sf_home / "Keeper.pid").st_ino
            locks = [l for l in open("/proc/locks") if f":{ino} " in l]
            ps = subprocess.run(["ps", "-ef"], capture_output=True, text=True).stdout
            print("DEBUG", locks, ps)
        assert left == [], (left, result.stdout, result.stderr)
    finally:
        try:
            os.kill(supervisor, signal.SIGCONT)
        except ProcessLookupError:
            pass


def test_stale_supervisor_records_do_not_keep_status_all_failing(keeper, sf_home):
    """9.13: stale `_supervisor-*` records kept `status --all` at exit 3 until `stop --all`."""
    run_daemon(keeper)
    supervisor = supervisor_pid(sf_home)
    os.kill(supervisor, signal.SIGKILL)
    wait_until(lambda: not alive(supervisor), message="the supervisor to die")
    sf("stop", "Keeper", cwd=keeper)  # the orphan, if the supervisor left one
    result = sf("status", "--all", "--json", cwd=keeper)
    rows = json.loads(result.stdout) if result.stdout.strip().startswith("[") else []
    assert not any(row["name"].startswith("_supervisor-") for row in rows), rows
    assert not list(sf_home.glob("_supervisor-*.pid"))


# -- 16.8 / 16.9 log files of others -----------------------------------------------------------

def test_a_log_file_planted_by_another_user_is_refused(keeper, sf_home):
    """16.8: a 0666 file pre-created by another user received the service's output."""
    planted = keeper / "planted.log"
    planted.write_text("")
    planted.chmod(0o666)
    os.chown(planted, 12345, 12345)
    result = sf("run", "keeper.py", "--daemon", "--log-file", str(planted), cwd=keeper)
    assert result.returncode != 0
    assert "planted.log" in result.stderr and "Traceback" not in result.stderr
    assert planted.read_text() == ""
    assert status_of("Keeper", keeper)["state"] != "running"


def test_a_log_file_readable_by_others_or_a_symlink_is_refused(keeper, sf_home):
    """16.8: open with O_NOFOLLOW; an existing file readable or writable by others is refused."""
    shared = keeper / "shared.log"
    shared.write_text("")
    shared.chmod(0o644)
    result = sf("run", "keeper.py", "--daemon", "--log-file", str(shared), cwd=keeper)
    assert result.returncode != 0 and "chmod 600" in result.stderr
    link = keeper / "link.log"
    link.symlink_to(keeper / "target.log")
    result = sf("run", "keeper.py", "--daemon", "--log-file", str(link), cwd=keeper)
    assert result.returncode != 0 and "symbolic link" in result.stderr
    assert not (keeper / "target.log").exists()
    result = sf("run", "keeper.py", "--daemon", "--log-file", "/dev/null", cwd=keeper)  # devices are fine
    assert result.returncode == 0, result.stderr


def test_logs_refuses_a_planted_log_path_outside_the_state_directory(keeper, sf_home):
    """16.9: `logs X` printed /etc/shadow through a planted `log_path`."""
    LocalRegistry(sf_home).ensure()
    theirs = keeper / "theirs.txt"
    theirs.write_text("someone else's secret\n")
    os.chown(theirs, 12345, 12345)
    (sf_home / "Planted.json").write_text(json.dumps({"name": "Planted", "pid": 0, "log_path": str(theirs)}))
    result = sf("logs", "Planted", cwd=keeper)
    assert result.returncode == 10, (result.stdout, result.stderr)
    assert "secret" not in result.stdout and "outside the state directory" in result.stderr


FULL_DISK_DRIVER = """
import json, os, subprocess, sys, time

CLI = [sys.executable, "-m", "servicefactory"]
home = os.environ["SERVICEFACTORY_HOME"]


def status():
    result = subprocess.run(CLI + ["status", "Keeper", "--json"], capture_output=True, text=True, timeout=60)
    return json.loads(result.stdout)[0]


service = subprocess.Popen([sys.executable, "keeper.py"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    deadline = time.monotonic() + 30
    while status()["state"] != "running":
        assert time.monotonic() < deadline, "Keeper did not start"
        time.sleep(0.1)
    os.unlink(os.path.join(home, "Keeper.json"))
    filler = os.open(os.path.join(home, "filler"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:  # the disk is full: the record cannot come back
        while True:
            os.write(filler, b"x" * 4096)
    except OSError:
        pass
    finally:
        os.close(filler)
    time.sleep(4)  # several of the owner's attempts fail meanwhile
    assert not os.path.exists(os.path.join(home, "Keeper.json"))
    row = status()
    print("FULL", row["state"], row["pid"], service.pid, flush=True)
    os.unlink(os.path.join(home, "filler"))
    deadline = time.monotonic() + 5
    while not os.path.exists(os.path.join(home, "Keeper.json")):
        assert time.monotonic() < deadline, "the record was not rewritten once space returned"
        time.sleep(0.05)
    row = status()
    print("BACK", row["state"], row["pid"], bool(row["url"]), flush=True)
    result = subprocess.run(CLI + ["stop", "Keeper"], capture_output=True, text=True, timeout=60)
    print("STOP", result.returncode, service.wait(30), flush=True)
finally:
    service.kill()
"""


def test_a_record_lost_on_a_full_disk_is_rewritten_once_space_returns(tmp_path, sf_home):
    """9.5: a failed write on a full disk left `status` at `starting` for ever and the record was never
    rewritten once space returned. Here the state directory is a 1 MiB tmpfs in a private mount namespace."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) to mount a small file system")
    (tmp_path / "keeper.py").write_text(textwrap.dedent(KEEPER))
    (tmp_path / "driver.py").write_text(FULL_DISK_DRIVER)
    sf_home.mkdir(mode=0o700)
    script = 'mount -t tmpfs -o size=1m,mode=0700 tmpfs "$0" && exec "$@"'
    result = subprocess.run(["unshare", "-m", "sh", "-c", script, str(sf_home), sys.executable, "driver.py"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    state, pid, service = lines["FULL"].split()
    assert state == "running" and pid == service, lines  # the live owner, not `starting`
    assert lines["BACK"] == f"running {service} True", lines
    assert lines["STOP"] == "0 0", lines


def test_stop_of_one_service_of_a_suspended_supervisor_fails_fast_and_queues_nothing(keeper, sf_home):
    """9.13: a stop sent to a SIGSTOPped supervisor waited, failed, and was carried out later anyway."""
    service = run_daemon(keeper)
    supervisor = supervisor_pid(sf_home)
    os.kill(supervisor, signal.SIGSTOP)
    try:
        started = time.monotonic()
        result = sf("stop", "Keeper", cwd=keeper)
        assert time.monotonic() - started < 5
        assert result.returncode == 1 and "suspended" in result.stderr, result.stderr
    finally:
        os.kill(supervisor, signal.SIGCONT)
    time.sleep(1.0)
    assert alive(service)  # nothing was queued to stop it later
    assert status_of("Keeper", keeper)["state"] == "running"


def test_stop_all_stops_a_supervisor_whose_record_is_unreadable_gracefully(keeper, sf_home):
    """9.5: with the supervisor's own record unreadable, `stop --all` said nothing was running (or, had it
    guessed, could only have killed); the live lock holder is asked to stop by SIGTERM, and finalizes."""
    service = run_daemon(keeper, env={"FINALIZE_SECONDS": "0.5"})
    supervisor = supervisor_pid(sf_home)
    record = sf_home / f"_supervisor-{supervisor}.json"
    record.unlink()
    (record / "blocked").mkdir(parents=True)  # a non-empty directory: not even its owner can rewrite it
    result = sf("stop", "--all", cwd=keeper)
    assert result.returncode == 0, result.stderr
    assert "Keeper stopped" in result.stdout and "killed" not in result.stderr
    wait_until(lambda: not alive(supervisor) and not alive(service), timeout=10, message="both gone")
    assert "finalized" in (sf_home / "Keeper.log").read_text()


ORPHAN = """
import signal, time
from servicefactory import Service

@Service.policy(stop_timeout=3)
class Orphan(Service.base):
    def loop(self):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # outlives its supervisor for its stop timeout
        time.sleep(0.2)
"""


@pytest.mark.parametrize("command", [["stop", "Orphan"], ["stop", "--all"]])
def test_stop_takes_over_a_service_whose_supervisor_was_killed(tmp_path, sf_home, command):
    """9.3/9.7: after `kill -9` of the supervisor its service lives on until its stop timeout; `stop` (and
    `stop --all`) must end it then and leave no files, not fail on the dead supervisor's API."""
    (tmp_path / "orphan.py").write_text(textwrap.dedent(ORPHAN))
    result = sf("run", "orphan.py", "--daemon", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    service = int(result.stdout.split("pid ")[1].split(",")[0])
    supervisor = supervisor_pid(sf_home)
    os.kill(supervisor, signal.SIGKILL)
    wait_until(lambda: not alive(supervisor), message="the supervisor to die")
    result = sf(*command, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Orphan" in result.stdout + result.stderr and "Traceback" not in result.stderr
    assert not alive(service)
    assert sorted(p.name for p in sf_home.iterdir() if p.suffix in (".pid", ".json")) == []
