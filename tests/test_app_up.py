"""`up` and `down` from outside, with real processes: a command service, a one-shot job and a
Service class in one file, started in dependency order and stopped in reverse; each link's failure
blocks what depends on it; commands are supervised like Service classes (own pid, stop signal,
no orphans); stderr is kept apart from stdout; `logs --since` and `--json`."""
from __future__ import annotations

import json
import os
import signal
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from support import PYTHON, ROOT, Proc, alive, argv, free_port, gone, stamped, supervisor_pid, wait_until

SERVER = """
import signal, socket, sys, time
port = int(sys.argv[1])
def bye(signum, frame):
    print("server got SIGTERM", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
time.sleep(0.3)  # not ready at once: its dependents must wait for the port
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen()
print("server listening", flush=True)
while True:
    connection, _ = listener.accept()
    connection.close()
"""

MIGRATE = """
import os, socket, sys
socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2).close()  # the server is up already
print("migrating", os.environ["A"], flush=True)
open("migrated", "w").write(os.environ["B"])
print("a warning on stderr", file=sys.stderr, flush=True)
"""

API = """
import os, sys
from servicefactory import Service

@Service.API.endpoint(port=0)
class Api(Service.base):
    def loop(self):
        print("api says hi", flush=True)
        print("api complains", file=sys.stderr, flush=True)
        self.sleep(30)

    def finalize(self):
        print("api finalized", flush=True)

    @Service.API.handle("check")
    def check(self, data):
        return {"migrated": open("migrated").read() if os.path.exists("migrated") else None,
                "A": os.environ.get("A"), "B": os.environ.get("B"), "OUTER": os.environ.get("OUTER"),
                "worker": os.path.exists("worker-up")}
"""

WORKER = """
import time
time.sleep(0.3)
open("worker-up", "w").close()
print("worker up", flush=True)
time.sleep(300)
"""

CHAIN = """
[settings]
backoff = 0.1

[services.api]
target = "api:Api"
depends_on = {{ server = "ready", migrate = "completed", worker = "ready" }}
env = {{ B = "from-env" }}
env_file = ".env"
stop_timeout = 5

[services.server]
command = ["{python}", "server.py", "{port}"]
ready = {{ port = {port} }}

[services.migrate]
command = ["{python}", "migrate.py", "{port}"]
restart = "no"
depends_on = ["server"]
env_file = ".env"

[services.worker]
command = "{python} worker.py"
ready = {{ log = "^worker up$" }}
"""


def write_chain(sf) -> int:
    port = free_port()
    sf.write("server.py", SERVER)
    sf.write("migrate.py", MIGRATE)
    sf.write("api.py", API)
    sf.write("worker.py", WORKER)
    sf.write(".env", "A=from-file\nB=from-file\n")
    sf.write("servicefactory.toml", CHAIN.format(python=PYTHON, port=port))
    return port


def test_up_starts_a_command_a_job_and_a_service_class_in_order_and_down_stops_them_in_reverse(sf):
    port = write_chain(sf)
    result = sf("up", env={"OUTER": "from-supervisor", "B": "from-supervisor"})
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert lines[0] == "api waits for server (ready), migrate (completed), worker (ready)"
    assert "migrate completed (exit 0)" in lines and any(line.startswith("api running (pid ") for line in lines)
    # the job ran once the server's port accepted, the api once the job had completed and the worker said so
    answer = json.loads(sf("perform", "api", "check").stdout)
    assert answer == {"migrated": "from-file", "A": "from-file", "B": "from-env", "OUTER": "from-supervisor",
                      "worker": True}
    log = sf.log("server") + sf.log("migrate") + sf.log("api") + sf.log("worker")
    ready_server = stamped(sf.log("server"), r"\[servicefactory\] server ready")[0]
    migrate_started = stamped(sf.log("migrate"), r"migrate \| migrating from-file")[0]
    api_ready = stamped(sf.log("api"), r"\[servicefactory\] api ready")[0]
    assert ready_server <= migrate_started <= api_ready, log
    # a command is supervised as itself: its own pid (no wrapper), CPU and memory in status
    rows = {row["name"]: row for row in sf.status()}
    assert rows["server"]["state"] == "running" and rows["server"]["memory"], rows
    cmdline = Path(f"/proc/{rows['server']['pid']}/cmdline").read_bytes().split(b"\0")
    assert cmdline[1:3] == [b"server.py", str(port).encode()], cmdline
    assert rows["migrate"]["state"] == "stopped" and rows["migrate"]["last_exit"] == 0
    called = sf("perform", "server", "health")  # a command has no actions
    assert called.returncode == 4 and called.stderr.startswith("error: server is a command ("), called
    # stderr is kept apart: marked `!` in the file, `stderr` in --json
    assert "api ! api complains" in sf.log("api") and "api | api says hi" in sf.log("api")
    assert "migrate ! a warning on stderr" in sf.log("migrate")
    shown = [json.loads(line) for line in sf("logs", "api", "--json", "-n", "50").stdout.splitlines()]
    streams = {(entry["stream"], entry["message"]) for entry in shown}
    assert ("stderr", "api complains") in streams and ("stdout", "api says hi") in streams, shown
    assert all(entry["service"] == "api" and entry["time"] for entry in shown)
    pids = [row["pid"] for row in rows.values() if row["pid"]] + [supervisor_pid(rows["api"])]

    result = sf("down")
    assert result.returncode == 0, result
    assert result.stdout.splitlines()[0] == "api stopped", result.stdout
    wait_until(lambda: all(gone(pid) for pid in pids), timeout=10, message="every process gone")
    # dependents first: the api had finalized before the server was even signalled
    assert stamped(sf.log("api"), "api finalized")[0] <= stamped(sf.log("server"), "server got SIGTERM")[0]
    assert sf.status() == []
    # and up again works (nothing left holding a name)
    assert sf("up").returncode == 0
    assert sf("down").returncode == 0


FAILING = """
[settings]
backoff = 0.1

[services.job]
command = ["sh", "-c", "echo cannot migrate >&2; exit 1"]
restart = "no"

[services.after_job]
command = ["sleep", "300"]
depends_on = {{ job = "completed" }}

[services.flaky]
command = ["sh", "-c", "exit 3"]
ready = {{ port = {port} }}
restart = "no"

[services.after_flaky]
command = ["sleep", "300"]
depends_on = ["flaky"]

[services.broken]
target = "broken:Broken"

[services.after_broken]
command = ["sleep", "300"]
depends_on = {{ broken = "healthy" }}

[services.transitive]
command = ["sleep", "300"]
depends_on = {{ after_job = "started" }}

[services.independent]
command = ["sleep", "300"]
"""

BROKEN = """
from servicefactory import Service

@Service.API.endpoint(port=0)
class Broken(Service.base):
    def __init__(self):
        raise RuntimeError("no config")
"""


def test_each_failed_link_blocks_what_depends_on_it_with_the_reason_in_status(sf):
    sf.write("broken.py", BROKEN)
    sf.write("servicefactory.toml", FAILING.format(port=free_port()))
    result = sf("up")
    assert result.returncode == 1, result
    assert "job failed: exited 1 (servicefactory logs job)" in result.stderr, result.stderr
    for line in ["after_job blocked: job exited 1", "after_flaky blocked: flaky failed (exited 3)",
                 "after_broken blocked: broken failed (exited 1)",
                 "transitive blocked: after_job is blocked (blocked: job exited 1)"]:
        assert line in result.stderr.splitlines(), result.stderr
    assert "independent running" in result.stdout
    rows = {row["name"]: row for row in sf.status()}
    assert rows["after_job"]["state"] == "blocked" and rows["after_job"]["error"] == "blocked: job exited 1"
    assert rows["independent"]["state"] == "running"
    table = sf("status").stdout
    assert any(line.split()[:4] == ["after_job", "blocked:", "job", "exited"] for line in table.splitlines()), table
    assert "cannot migrate" in sf.log("job")
    result = sf("down")
    assert result.returncode == 0, result
    assert sf.status() == [] and not sf.ours()


def test_up_in_the_foreground_ctrl_c_stops_every_service_dependents_first(sf):
    write_chain(sf)
    proc = Proc([*sf.command, "up", "--foreground"], sf.cwd, sf.env)
    try:
        proc.wait_for(r"api\s+! api complains", timeout=30)  # stderr, marked `!` in the foreground too
        proc.signal(signal.SIGINT)
        assert proc.wait(30) == 0, proc.output
    finally:
        proc.kill()
    lines = proc.lines
    finalized = next(i for i, line in enumerate(lines) if "api finalized" in line)
    signalled = next(i for i, line in enumerate(lines) if "server got SIGTERM" in line)
    assert finalized < signalled, lines
    assert not sf.ours()


ESCAPER = """
import os, sys, time
if os.fork() == 0:
    os.setsid()  # a daemon of its own: out of the command's process group and session
    if os.fork() == 0:
        open("daemon.pid", "w").write(str(os.getpid()))
        time.sleep(300)
    os._exit(0)
print("escaped", flush=True)
time.sleep(300)
"""


def test_a_commands_setsid_and_double_forked_children_live_with_it_and_go_with_it(sf):
    sf.write("escaper.py", ESCAPER)
    python = PYTHON
    sf.write("servicefactory.toml", f"""
        [services.escaper]
        command = ["{python}", "escaper.py"]
        ready = {{ log = "escaped" }}

        [services.job]
        command = ["sh", "-c", "sleep 0.5"]
        restart = "no"
    """)
    assert sf("up").returncode == 0
    daemon = int(wait_until(lambda: (sf.cwd / "daemon.pid").exists() and (sf.cwd / "daemon.pid").read_text(),
                            message="the daemon's pid"))
    escaper = sf.row("escaper")["pid"]
    # another service's exit (the job's) makes the supervisor reap its own orphans: the daemon is not one
    wait_until(lambda: sf.row("job")["state"] == "stopped", message="the job done")
    time.sleep(0.3)
    assert alive(daemon) and alive(escaper)
    assert sf("stop", "escaper").returncode == 0
    wait_until(lambda: gone(daemon), timeout=5, message="the setsid'd daemon gone with its command")
    assert gone(escaper)
    assert sf("down").returncode == 0


STUBBORN = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # it and all it starts ignore a graceful stop
def daemon(depth):
    if os.fork() == 0:
        os.setsid()  # out of the program's process group and session
        if os.fork() == 0:
            if depth:
                daemon(depth - 1)  # a daemon of a daemon
            open(f"daemon{depth}.pid", "w").write(str(os.getpid()))
            time.sleep(300)
        os._exit(0)
daemon(2)
if os.fork() == 0:
    time.sleep(300)  # a plain child, in the program's group
print("escaped", flush=True)
time.sleep(300)
"""


def test_a_supervisor_killed_with_9_leaves_nothing_a_command_started_even_what_it_setsid_away(sf):
    from servicefactory.supervise._reaper import descendants

    sf.write("stubborn.py", STUBBORN)
    sf.write("servicefactory.toml", f"""
        [services.stubborn]
        command = ["{PYTHON}", "stubborn.py"]
        ready = {{ log = "escaped" }}
        stop_timeout = 1
    """)
    assert sf("up").returncode == 0
    wait_until(lambda: all((sf.cwd / f"daemon{depth}.pid").exists() for depth in range(3)), message="the daemons")
    row = sf.row("stubborn")
    program = row["pid"]
    assert argv(program)[1:] == ["stubborn.py"]  # status names the program itself, not its keeper
    keeper = int(Path(f"/proc/{program}/stat").read_text().rsplit(")", 1)[1].split()[1])
    daemons = [int((sf.cwd / f"daemon{depth}.pid").read_text()) for depth in range(3)]
    everything = set(descendants(keeper)) | {keeper}
    assert set(daemons) | {program} <= everything and len(everything) >= 6, everything
    os.kill(supervisor_pid(row), signal.SIGKILL)
    # SIGTERM is ignored by all of them: SIGKILL after the stop timeout (1 s), well within the deadline
    wait_until(lambda: all(gone(pid) for pid in everything), timeout=15,
               message=f"every process of the command gone: {[p for p in everything if alive(p)]}")


def test_a_command_killed_with_9_is_seen_so_and_a_killed_keeper_takes_the_program_and_its_daemons(sf):
    sf.write("escaper.py", ESCAPER)
    sf.write("servicefactory.toml", f"""
        [settings]
        backoff = 0.1

        [services.escaper]
        command = ["{PYTHON}", "escaper.py"]
        ready = {{ log = "escaped" }}
    """)
    assert sf("up").returncode == 0

    def daemon() -> int:
        wait_until(lambda: (sf.cwd / "daemon.pid").exists() and (sf.cwd / "daemon.pid").read_text(),
                   message="the daemon's pid")
        return int((sf.cwd / "daemon.pid").read_text())

    first, program = daemon(), sf.row("escaper")["pid"]
    (sf.cwd / "daemon.pid").unlink()
    os.kill(program, signal.SIGKILL)  # the program itself: its keeper dies the same way, and says so
    wait_until(lambda: sf.row("escaper")["state"] == "running" and sf.row("escaper")["pid"] != program,
               timeout=15, message="restarted")
    assert sf.row("escaper")["last_exit"] == -9 and "escaper killed by SIGKILL" in sf.log("escaper"), sf.log("escaper")
    assert "Traceback" not in sf.log("escaper")
    wait_until(lambda: gone(first), timeout=5, message="the first daemon gone with its program")
    second, program = daemon(), sf.row("escaper")["pid"]
    keeper = int(Path(f"/proc/{program}/stat").read_text().rsplit(")", 1)[1].split()[1])
    os.kill(keeper, signal.SIGKILL)  # its keeper: the kernel ends the program, the supervisor its orphans
    wait_until(lambda: gone(program) and gone(second), timeout=10, message="the program and its daemon gone")
    wait_until(lambda: sf.row("escaper")["state"] == "running" and sf.row("escaper")["pid"] != program,
               timeout=15, message="restarted again")
    assert sf("down").returncode == 0
    assert not sf.ours()


TRAPPER = """
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
def done(signum, frame):
    print("got SIGINT", flush=True)
    sys.exit(0)
signal.signal(signal.SIGINT, done)
print("trapping", flush=True)
while True:
    time.sleep(1)
"""


def test_a_command_is_stopped_with_its_stop_signal_and_dies_with_a_killed_supervisor(sf):
    sf.write("trapper.py", TRAPPER)
    python = PYTHON
    sf.write("servicefactory.toml", f"""
        [services.trapper]
        command = ["{python}", "trapper.py"]
        ready = {{ log = "trapping" }}
        stop_signal = "SIGINT"
        stop_timeout = 20

        [services.sleeper]
        command = ["sleep", "300"]
        ready = {{ command = ["test", "-d", "."] }}
    """)
    assert sf("up").returncode == 0
    began = time.monotonic()
    result = sf("stop", "trapper")
    assert result.returncode == 0 and "killed" not in result.stdout + result.stderr, result
    assert time.monotonic() - began < 10  # SIGINT stopped it, not the SIGKILL after 20 s
    assert "got SIGINT" in sf.log("trapper") and sf.row("trapper")["last_exit"] == 0
    row = sf.row("sleeper")
    os.kill(supervisor_pid(row), signal.SIGKILL)
    wait_until(lambda: gone(row["pid"]), timeout=5, message="the command gone with its supervisor")


def test_a_command_runs_as_the_user_the_file_names(sf):
    if os.geteuid() != 0:
        sf.write("servicefactory.toml", '[services.who]\ncommand = ["id", "-u"]\nuser = "root"\n')
        assert "needs servicefactory to run as root" in sf("up").stderr
        return
    sf.write("servicefactory.toml", '[services.who]\ncommand = ["sh", "-c", "id -u; sleep 300"]\nuser = "nobody"\n'
                                    'ready = { log = "^[0-9]+$" }\n')
    result = sf("up")
    assert result.returncode == 0, result
    import pwd

    assert f"who | {pwd.getpwnam('nobody').pw_uid}" in sf.log("who")
    assert sf("down").returncode == 0


def test_logs_since_keeps_the_recent_lines_and_refuses_what_is_not_a_time(sf):
    sf.write("servicefactory.toml", '[services.talker]\ncommand = ["sh", "-c", "echo hello; sleep 300"]\n'
                                    'ready = { log = "hello" }\n')
    assert sf("up").returncode == 0
    recent = sf("logs", "talker", "--since", "1h")
    assert recent.returncode == 0 and "talker | hello" in recent.stdout, recent
    assert sf("logs", "talker", "--since", "2999-01-01T00:00").stdout == ""
    assert "hello" in sf("logs", "--since", "2000-01-01T00:00").stdout  # every service
    bad = sf("logs", "talker", "--since", "yesterday-ish")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --since 'yesterday-ish' is neither") \
        and "Traceback" not in bad.stderr, bad
    events = [json.loads(line) for line in sf("logs", "talker", "--json").stdout.splitlines()]
    assert {"stream": "event", "message": "ready (pid %d)" % sf.row("talker")["pid"]}.items() <= \
        next(e for e in events if e["stream"] == "event").items(), events
    assert sf("down").returncode == 0


def test_the_example_application_comes_up_and_goes_down(sf):
    example = (ROOT / "examples" / "servicefactory.toml").read_text()
    port = free_port()
    sf.write("servicefactory.toml", example.replace("8765", str(port)))
    sf.write("counter.py", (ROOT / "examples" / "counter.py").read_text())
    result = sf("up")
    assert result.returncode == 0, result
    assert "migrate completed (exit 0)" in result.stdout and "cache running" in result.stdout, result.stdout
    assert json.loads(sf("perform", "Counter", "count").stdout)["ticks"] >= 1
    # while it is up, a dry run of another environment is the plan of what would change (env values unshown)
    plan = sf("up", "--env", "prod", "--dry-run").stdout.splitlines()
    assert plan[0] == "restart cache (env)" and plan[2] == "keep migrate", plan
    result = sf("down")
    assert result.returncode == 0 and result.stdout.splitlines()[0] == "Counter stopped", result
    assert not sf.ours()


APPLIED = """
[services.api]
target = "api:Api"
depends_on = ["web"]

[services.web]
command = ["sleep", "{seconds}"]
{extra}
"""


def test_up_again_restarts_what_changed_starts_what_is_new_stops_what_went_and_keeps_the_rest(sf):
    sf.write("api.py", API)
    sf.write("servicefactory.toml", APPLIED.format(seconds=300, extra='[services.job]\ncommand = ["sleep", "200"]'))
    assert sf("up").returncode == 0
    before = {row["name"]: row["pid"] for row in sf.status()}
    again = sf("up")
    assert again.returncode == 0 and again.stdout.splitlines()[-1] == "nothing to change", again
    assert {row["name"]: row["pid"] for row in sf.status()} == before

    sf.write("servicefactory.toml", APPLIED.format(seconds=301, extra='[services.extra]\ncommand = ["sleep", "100"]'))
    plan = sf("up", "--dry-run")
    assert plan.returncode == 0, plan
    assert plan.stdout.splitlines() == [
        "restart web (command: ['sleep', '300'] -> ['sleep', '301'], target: 'command: sleep 300' -> "
        "'command: sleep 301')",
        "start extra", "stop job", f"keep api (pid {before['api']})"], plan.stdout
    assert {row["name"]: row["pid"] for row in sf.status()} == before  # a dry run changes nothing

    applied = sf("up")
    assert applied.returncode == 0, applied
    after = {row["name"]: row for row in sf.status()}
    assert set(after) == {"api", "web", "extra"}, after
    assert after["api"]["pid"] == before["api"]  # unchanged: not touched
    assert after["web"]["pid"] != before["web"] and after["web"]["state"] == "running"
    assert after["extra"]["state"] == "running" and gone(before["job"])
    assert "web running (pid" in applied.stdout and "extra running (pid" in applied.stdout, applied.stdout
    assert sf("down").returncode == 0
    assert not sf.ours()


def test_a_command_whose_user_is_deleted_while_it_runs_says_so_when_it_restarts(sf):
    """The user existed when the file was read; userdel, then the command exits and is started
    again: one clear reason ('there is no user'), not 'list index out of range' from an empty argv."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd to create and delete a user")
    user = f"sfgone{os.getpid()}"
    subprocess.run(["useradd", "-M", "-r", "-s", "/bin/false", user], check=True, capture_output=True, timeout=30)
    try:
        sf.write("servicefactory.toml", f'[settings]\nbackoff = 0.2\n\n[services.gone]\n'
                                        f'command = ["sh", "-c", "sleep 1; exit 1"]\nuser = "{user}"\n'
                                        f'restart = "always"\n')
        assert sf("up").returncode == 0
    finally:
        subprocess.run(["userdel", "-f", user], capture_output=True, timeout=30)
    wait_until(lambda: "there is no user" in (sf.home / "supervisor.log").read_text(), timeout=20,
               message="the restart's reason in the supervisor's log")
    log = (sf.home / "supervisor.log").read_text()
    assert "list index out of range" not in log and "Traceback" not in log, log
    assert sf("down").returncode == 0
