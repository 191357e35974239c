"""A real etcd for the tests: started on free ports with a temporary data directory, stopped (and its
directory removed) with a deadline. Never a mock: the etcd registry is tested against the server."""
from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from typing import Iterator

import pytest

ETCD = shutil.which("etcd")
#: the lease TTL the tests run services with: etcd's minimum, so that expiry is seconds, not ten
TEST_TTL = 2


def _die_with_parent() -> None:
    # a test process killed outright must not leave its etcd running
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now at `host`."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _plain_environment() -> dict[str, str]:
    # nothing of the test's own: a test's teardown kills what carries its SERVICEFACTORY_HOME, and
    # an ETCD_* variable would configure the server
    return {key: value for key, value in os.environ.items()
            if not key.startswith(("SERVICEFACTORY_", "ETCD"))}


class Etcd:
    """One etcd server process; `url()` gives a registry URL with a key prefix of its own."""

    def __init__(self, host: str = "127.0.0.1", command_prefix: tuple[str, ...] = ()) -> None:
        self.host = host
        self.command_prefix = command_prefix
        self.data_dir = tempfile.mkdtemp(prefix="sf-etcd-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        self.process: subprocess.Popen | None = None
        self.port = 0
        self.log_path = os.path.join(self.data_dir, "etcd.log")

    @property
    def endpoint(self) -> str:
        """host:port of the client API."""
        return f"{self.host}:{self.port}"

    def url(self, prefix: str | None = None) -> str:
        """An etcd registry URL on this server, under `prefix` (a fresh one by default)."""
        return f"etcd://{self.endpoint}/{prefix or 'sf-' + uuid.uuid4().hex[:12]}"

    def _launch(self, timeout: float) -> bool:
        """Start etcd on self.port (and a free peer port); True once it answers, False if it exited."""
        peer = free_port(self.host)
        client_url, peer_url = f"http://{self.host}:{self.port}", f"http://{self.host}:{peer}"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*self.command_prefix, ETCD, "--name", "sf-test", "--data-dir", os.path.join(self.data_dir, "data"),
                 "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
                 "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                 "--initial-cluster", f"sf-test={peer_url}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
                env=_plain_environment())
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if self._healthy():
                return True
            if time.monotonic() > deadline:
                self.stop(remove=False)
                raise RuntimeError(f"etcd did not become healthy within {timeout:g} s: {self.log_tail()}")
            time.sleep(0.05)
        return False

    def start(self, timeout: float = 20.0) -> "Etcd":
        """Start etcd and wait until it answers; a port taken in between is retried on new ports."""
        for _ in range(3):
            self.port = free_port(self.host)
            if self._launch(timeout):
                return self
        raise RuntimeError(f"etcd would not start: {self.log_tail()}")

    def _healthy(self) -> bool:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=1)  # never through a proxy
        try:
            connection.request("GET", "/health")
            return json.loads(connection.getresponse().read()).get("health") == "true"
        except (OSError, ValueError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    def kill(self) -> None:
        """SIGKILL etcd (its data stays, for `restart`)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)

    def restart(self, timeout: float = 20.0) -> None:
        """Stop etcd if it runs (SIGTERM) and start it again on the same client port and data."""
        self.stop(remove=False)
        if not self._launch(timeout):
            raise RuntimeError(f"etcd did not come back: {self.log_tail()}")

    def log_tail(self) -> str:
        """The end of etcd's log, for failure messages."""
        try:
            with open(self.log_path, "rb") as handle:
                return handle.read()[-1500:].decode(errors="replace")
        except OSError:
            return "(no log)"

    def stop(self, remove: bool = True) -> None:
        """SIGTERM, SIGKILL after 10 s; then remove the data directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None
        if remove:
            shutil.rmtree(self.data_dir, ignore_errors=True)


@contextlib.contextmanager
def running_etcd(**kwargs) -> Iterator[Etcd]:
    """An etcd for the duration of the block (skips the test where the etcd binary is not installed)."""
    if ETCD is None:
        pytest.skip("the etcd binary is not installed (Debian: apt-get install etcd-server; .ci/run does)")
    server = Etcd(**kwargs).start()
    try:
        yield server
    finally:
        server.stop()
