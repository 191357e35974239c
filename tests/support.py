"""What the tests drive, in one place: the real CLI, real subprocesses, and the processes a test left.

Test modules import these names from here (conftest only holds fixtures): one CLI driver, one way
to find a test's processes, one poll loop.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SCRIPT = Path(PYTHON).with_name("servicefactory")
# the installed console script, as a user types it; `python -m` where the script is not installed
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [PYTHON, "-m", "servicefactory"]
MODULE_COMMAND = [PYTHON, "-m", "servicefactory"]
STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}) ")
RUNNING_LINE = re.compile(r"^(?P<name>\S+) running \(pid (?P<pid>\d+), (?P<url>http://127\.0\.0\.1:\d+)\)$")


# -- service modules more than one test file runs -------------------------------------------------

#: Echo (`python echo.py`, or `run echo`): `echo` answers what was sent, `pid` the process id
ECHO = """
import os
from servicefactory import Service


@Service.API.endpoint(port=0)
class Echo(Service.base):
    def loop(self):
        self.sleep(1)

    @Service.API.handle("echo")
    def echo(self, data):
        return data

    @Service.API.handle("pid")
    def pid(self, data):
        return os.getpid()

if __name__ == "__main__":
    Echo().run()
"""

#: Keeper (keeper.py): its own stop timeout ($POLICY_STOP_TIMEOUT) and a finalize() that takes
#: $FINALIZE_SECONDS, logging `finalizing for N s` and then `finalized`; `pid` answers its pid
KEEPER = """
import os, time
from servicefactory import Service

@Service.API.endpoint(port=0)
@Service.policy(stop_timeout=float(os.environ.get("POLICY_STOP_TIMEOUT", "10")))
class Keeper(Service.base):
    def loop(self):
        self.sleep(0.2)

    def finalize(self):
        seconds = float(os.environ.get("FINALIZE_SECONDS", "0"))
        self.log(f"finalizing for {seconds} s")
        time.sleep(seconds)
        self.log("finalized")

    @Service.API.handle("pid")
    def pid(self, data):
        return os.getpid()

if __name__ == "__main__":
    Keeper().run()
"""

#: Alpha (logs a tick, `echo`, `fail` raises ValueError) and Beta, in one module (services.py)
ALPHA_AND_BETA = """
from servicefactory import Service


@Service.API.endpoint(port=0)
class Alpha(Service.base):
    def loop(self):
        self.log("alpha tick")
        self.sleep(0.3)

    @Service.API.handle("echo")
    def echo(self, data):
        return data

    @Service.API.handle("fail")
    def fail(self, data):
        raise ValueError("on purpose")


@Service.API.endpoint(port=0)
class Beta(Service.base):
    def loop(self):
        self.sleep(0.3)
"""


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02, message: str = "condition"):
    """Poll `predicate` until it returns a truthy value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")


def exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[int, dict, bytes]:
    """Send raw bytes to 127.0.0.1:PORT and read one HTTP response: (status, lower-cased headers, body)."""
    import http.client

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            response.close()


def request(port: int, method: str, path: str, body: bytes | None = None, **headers: str) -> tuple[int, dict, bytes]:
    """One HTTP request to 127.0.0.1:PORT: (status, lower-cased headers, body)."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


class Calls:
    """What the calling threads of `calling()` got, in order: answers, failures (every exception)."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.answers: list[Any] = []
        self.failures: list[BaseException] = []


@contextmanager
def calling(call: Callable[[], Any], threads: int = 4) -> Iterator[Calls]:
    """`threads` threads calling `call()` over and over until the block ends (then joined, bounded)."""
    calls = Calls(threads)
    done = threading.Event()

    def caller() -> None:
        while not done.is_set():
            try:
                calls.answers.append(call())
            except BaseException as exc:  # noqa: BLE001 - every failure counts
                calls.failures.append(exc)

    workers = [threading.Thread(target=caller) for _ in range(threads)]
    for worker in workers:
        worker.start()
    try:
        yield calls
    finally:
        done.set()
        for worker in workers:
            worker.join(15)


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- processes ------------------------------------------------------------------------------------

def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie nobody reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def gone(pid: int) -> bool:
    """Whether `pid` has exited (a zombie nobody reaped yet counts as exited)."""
    return not alive(pid)


def argv(pid: int) -> list[str]:
    """The command line of `pid`, or [] once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def processes_using(home: Path, marker: bytes = b"") -> list[int]:
    """Live processes (other than this one) whose environment points at `home`, optionally whose command line has `marker`."""
    needle = b"\0SERVICEFACTORY_HOME=" + str(home).encode() + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in b"\0" + environ and marker in cmdline and alive(int(entry)):
            found.append(int(entry))
    return found


def kill_all(pids: set[int] | list[int], grace: float = 0.0) -> None:
    """SIGKILL every pid still alive after `grace` seconds, then wait (bounded) until all are gone."""
    deadline = time.monotonic() + grace
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


class Proc:
    """A real subprocess whose combined output is collected in the background."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    @property
    def output(self) -> str:
        """Everything printed so far (stdout and stderr together)."""
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 10.0, count: int = 1) -> str:
        """Block until `count` output lines match the regex `pattern`; fail with the output so far if not."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                hits = [line for line in self.lines if regex.search(line)]
                if len(hits) >= count:
                    return hits[count - 1]
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.popen.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no line matching {pattern!r} (x{count}); output:\n" + "\n".join(self.lines))
                self._changed.wait(min(remaining, 0.1))

    def signal(self, signum: int) -> None:
        """Send `signum` to the process."""
        self.popen.send_signal(signum)

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for the exit and return the exit code."""
        code = self.popen.wait(timeout)
        self._reader.join(2)
        return code

    def kill(self) -> None:
        """SIGKILL the whole process group and reap it (bounded)."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if self.popen.stdout:
            self._reader.join(2)
            self.popen.stdout.close()


# -- the CLI --------------------------------------------------------------------------------------

class Cli:
    """The real `servicefactory` command, as a user runs it, in `cwd` with the state directory `home`.

    Without `home`, the environment's SERVICEFACTORY_HOME is used (the autouse fixture sets one
    per test); `cwd=` and `env=` on a call override the driver's own for that call only.
    """

    def __init__(self, cwd: Path | None = None, home: Path | None = None, *, command: list[str] = COMMAND,
                 timeout: float = 60.0) -> None:
        self.cwd = cwd
        self.home = home
        self.command = list(command)
        self.timeout = timeout

    @property
    def env(self) -> dict[str, str]:
        """The environment every call gets: the test's, with this driver's state directory."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.home is not None:
            env["SERVICEFACTORY_HOME"] = str(self.home)
        env.pop("PYTHONPATH", None)  # the current directory must be importable on its own
        env.pop("SERVICEFACTORY_TOKEN", None)
        return env

    def _home(self) -> Path:
        return self.home if self.home is not None else Path(os.environ["SERVICEFACTORY_HOME"])

    def write(self, name: str, text: str) -> Path:
        """Write a (dedented) file into the driver's directory."""
        assert self.cwd is not None, "this driver has no directory of its own"
        path = self.cwd / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def __call__(self, *args: str, cwd: Path | str | None = None, input: str | bytes | None = None,
                 env: dict[str, str] | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
        """Run one command to its end (text output unless `input` is bytes); a hang fails the test, not the suite."""
        return subprocess.run([*self.command, *args], cwd=cwd or self.cwd, env={**self.env, **(env or {})},
                              input=input, capture_output=True, text=not isinstance(input, bytes),
                              stdin=subprocess.DEVNULL if input is None else None,
                              timeout=self.timeout if timeout is None else timeout)

    def popen(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start one command and return at once (text pipes for stdout and stderr)."""
        return subprocess.Popen([*self.command, *args], cwd=cwd or self.cwd, env={**self.env, **(env or {})},
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def daemon(self, *args: str, **options: Any) -> subprocess.CompletedProcess:
        """`run ARGS --daemon`, which must succeed."""
        result = self("run", *args, "--daemon", **options)
        assert result.returncode == 0, f"run {' '.join(args)} --daemon exited {result.returncode}:\n" \
                                       f"{result.stdout}{result.stderr}"
        return result

    def start(self, *args: str, **options: Any) -> dict[str, int | str]:
        """`run ARGS --daemon`, which must succeed; the one service's name, pid and url."""
        result = self.daemon(*args, **options)
        match = RUNNING_LINE.match(result.stdout.strip())
        assert match, result.stdout
        return {"name": match["name"], "pid": int(match["pid"]), "url": match["url"]}

    def status(self, *names: str, all_: bool = False, **options: Any) -> list[dict[str, Any]]:
        """`status --json` rows (exit 0 or 3 only)."""
        result = self("status", *names, "--json", *(["--all"] if all_ else []), **options)
        assert result.returncode in (0, 3), result.stderr
        return json.loads(result.stdout)

    def row(self, name: str) -> dict[str, Any] | None:
        """The `status --json` row of `name`, or None."""
        return next((row for row in self.status() if row["name"] == name), None)

    def log(self, name: str) -> str:
        """The service's log file as it is on disk now ('' before it exists)."""
        path = self._home() / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def ours(self) -> list:
        """Every live process started with this driver's state home (supervisors, services, followers)."""
        import psutil

        found = []
        for pid in processes_using(self._home()):
            try:
                found.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        return found

    def supervisor_processes(self) -> list:
        """The live supervisors (`python -m servicefactory.supervise.supervisor SPEC`) of this home."""
        return [process for process in self.ours() if "servicefactory.supervise.supervisor" in argv(process.pid)]

    def service_processes(self, name: str) -> list:
        """The live service processes of `name` (`python -m servicefactory.supervise._child TARGET NAME ...`)."""
        found = []
        for process in self.ours():
            words = argv(process.pid)
            if "servicefactory.supervise._child" in words and words[words.index("servicefactory.supervise._child") + 2:][:1] == [name]:
                found.append(process)
        return found

    def shutdown(self) -> None:
        """Stop everything started with this state directory; SIGKILL whatever outlives the deadline."""
        if not processes_using(self._home()):
            return  # nothing runs with it: no `stop --all` (a CLI start) to pay for at every test's end
        try:
            self("stop", "--all", "--timeout", "3", timeout=30)
        except subprocess.TimeoutExpired:
            pass
        kill_all(set(processes_using(self._home())), grace=3)


def supervisor_pid(record: dict[str, Any]) -> int:
    """The pid of the supervisor named in a `status --json` row."""
    assert record["supervisor"] and record["supervisor"].startswith("_supervisor-"), record
    return int(record["supervisor"].rsplit("-", 1)[1])


def stamped(log: str, pattern: str) -> list[float]:
    """Times (seconds since the epoch) of the log lines matching `pattern`."""
    times = []
    for line in log.splitlines():
        match = STAMP.match(line)
        if match and re.search(pattern, line):
            times.append(datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S.%f").timestamp())
    return times
