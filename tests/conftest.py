"""Shared fixtures: an isolated state directory per test, and real subprocesses that are always reaped."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


@pytest.fixture(autouse=True)
def sf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own state directory, so no test sees another's (or the user's) services.

    Whatever still runs with that directory when the test ends (a daemon a failed test could not
    stop) is killed: no test leaves a process behind.
    """
    home = tmp_path / "sf-home"
    monkeypatch.setenv("SERVICEFACTORY_HOME", str(home))
    monkeypatch.delenv("SERVICEFACTORY_TOKEN", raising=False)
    from servicefactory import client
    client._addresses.clear()
    client._tokens.clear()
    yield home
    client.close_connections()
    _kill_leftovers(home)


def _kill_leftovers(home: Path) -> None:
    import psutil

    marker = f"SERVICEFACTORY_HOME={home}".encode()
    for pid in psutil.pids():
        if pid == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                if marker + b"\0" not in handle.read() + b"\0":
                    continue
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            continue


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


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
        return self.popen.pid

    @property
    def output(self) -> str:
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
        self.popen.send_signal(signum)

    def wait(self, timeout: float = 10.0) -> int:
        code = self.popen.wait(timeout)
        self._reader.join(2)
        return code

    def kill(self) -> None:
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


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02, message: str = "condition"):
    """Poll `predicate` until it returns a truthy value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")
