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
import sys
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

    def __init__(self, host: str = "127.0.0.1", command_prefix: tuple[str, ...] = (),
                 namespace: str | None = None, tls: "Pki | None" = None) -> None:
        self.host = host
        self.tls = tls  # serve TLS only, with this PKI's server certificate, asking clients for theirs
        self.command_prefix = command_prefix
        self.namespace = namespace  # the network namespace it runs in: probed from there
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
        return f"etcd{'s' if self.tls else ''}://{self.endpoint}/{prefix or 'sf-' + uuid.uuid4().hex[:12]}"

    def _tls_arguments(self) -> list[str]:
        if self.tls is None:
            return []
        return ["--cert-file", str(self.tls.server[0]), "--key-file", str(self.tls.server[1]),
                "--trusted-ca-file", str(self.tls.ca[0]), "--client-cert-auth"]

    def _launch(self, timeout: float) -> bool:
        """Start etcd on self.port (and a free peer port); True once it answers, False if it exited."""
        peer = free_port(self.host) if self.namespace is None else 2380
        client_url = f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"
        peer_url = f"http://{self.host}:{peer}"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*self.command_prefix, ETCD, "--name", "sf-test", "--data-dir", os.path.join(self.data_dir, "data"),
                 "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
                 "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                 "--initial-cluster", f"sf-test={peer_url}", *self._tls_arguments()],
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
            # a namespace of its own has no other listener: any port is free there
            self.port = free_port(self.host) if self.namespace is None else 2379
            if self._launch(timeout):
                return self
        raise RuntimeError(f"etcd would not start: {self.log_tail()}")

    def _healthy(self) -> bool:
        if self.namespace is not None:
            probe = ("import http.client, json, sys; c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), "
                     "timeout=1); c.request('GET', '/health'); "
                     "sys.exit(json.loads(c.getresponse().read()).get('health') != 'true')")
            return subprocess.run(["ip", "netns", "exec", self.namespace, sys.executable, "-c", probe, self.host,
                                   str(self.port)], capture_output=True, timeout=20).returncode == 0
        if self.tls is not None:
            connection = http.client.HTTPSConnection(self.host, self.port, timeout=1, context=self.tls.context())
        else:
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


def _openssl(*args: str, cwd: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60, cwd=cwd)


class Pki:
    """A test CA (made with the `openssl` command) and two certificates it signed for 127.0.0.1:
    etcd's (`server`) and a client's (`client`), each (certificate, key)."""

    def __init__(self, directory: str) -> None:
        if shutil.which("openssl") is None:
            pytest.skip("needs the openssl command to make a test CA")
        self.directory = directory
        self.ca = self._make("ca", None, "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n")
        # clientAuth too: etcd's JSON gateway calls etcd's gRPC server with the server's own certificate
        self.server = self._make("server", self.ca, "subjectAltName=IP:127.0.0.1\n"
                                                    "extendedKeyUsage=serverAuth,clientAuth\n")
        self.client = self._make("client", self.ca, "extendedKeyUsage=clientAuth\n")

    def _make(self, name: str, ca: tuple[str, str] | None, extensions: str) -> tuple[str, str]:
        key, cert = os.path.join(self.directory, f"{name}.key"), os.path.join(self.directory, f"{name}.pem")
        ext = os.path.join(self.directory, f"{name}.ext")
        with open(ext, "w") as handle:
            handle.write(extensions)
        # the client's without a CN: etcd refuses a gateway request whose certificate names a user
        # that way (it would be ignored there) while its authentication is on
        subject = f"/O={name}" if name == "client" else f"/CN={name}"
        common = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", subject,
                  "-keyout", key]
        if ca is None:
            _openssl("req", "-x509", *common, "-days", "2", "-extensions", "v3", "-config", self._config(ext),
                     "-out", cert, cwd=self.directory)
        else:
            csr = os.path.join(self.directory, f"{name}.csr")
            _openssl("req", "-new", *common, "-out", csr, cwd=self.directory)
            _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial", "-days", "2",
                     "-extfile", ext, "-out", cert, cwd=self.directory)
        return cert, key

    def _config(self, ext: str) -> str:
        config = ext + ".cnf"
        with open(ext) as source, open(config, "w") as handle:
            handle.write("[req]\ndistinguished_name=dn\n[dn]\n[v3]\n" + source.read())
        return config

    def context(self):
        """An ssl context that trusts the CA and shows the client certificate."""
        import ssl

        context = ssl.create_default_context(cafile=self.ca[0])
        context.load_cert_chain(*self.client)
        return context


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


# -- hosts: Linux network namespaces on one bridge ----------------------------------------------------

def netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here (not root, no `ip`, a kernel that refuses), or None."""
    if shutil.which("ip") is None:
        return "the ip command is not installed (Debian: iproute2; .ci/run installs it)"
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs the suite as root)"
    probe = f"sfprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


class Network:
    """Hosts for the tests: one network namespace each (with a hostname of its own, through a UTS
    namespace per process), joined by veth pairs to a bridge that lives in a namespace of its own,
    addressed in 10.88.0.0/24, which nothing but these namespaces uses. Nothing is added to the
    machine's own network; `close` kills every process left in the namespaces and deletes them."""

    SUBNET = "10.88.0"

    def __init__(self) -> None:
        self.tag = f"sf{os.getpid() % 100000}{uuid.uuid4().hex[:4]}"
        self.switch = f"{self.tag}-sw"
        self.hosts: dict[str, str] = {}  # host name -> its address
        self.processes: list[subprocess.Popen] = []
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")

    def namespace(self, host: str) -> str:
        """The network namespace of `host`."""
        return f"{self.tag}-{host}"

    def add(self, host: str) -> str:
        """A new host on the bridge; its address."""
        address = f"{self.SUBNET}.{len(self.hosts) + 1}"
        namespace = self.namespace(host)
        port = f"p{len(self.hosts) + 1}"  # its end of the cable, on the switch
        _ip("netns", "add", namespace)
        _ip("-n", namespace, "link", "set", "lo", "up")
        _ip("-n", namespace, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", self.switch)
        _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        self.hosts[host] = address
        return address

    def _port(self, host: str) -> str:
        return f"p{list(self.hosts).index(host) + 1}"

    def cut(self, host: str) -> None:
        """Unplug `host` from the bridge (a partition: it still runs, and reaches only itself)."""
        _ip("-n", self.switch, "link", "set", self._port(host), "down")

    def mend(self, host: str) -> None:
        """Plug `host` back in."""
        _ip("-n", self.switch, "link", "set", self._port(host), "up")

    def command(self, host: str, args: list[str]) -> list[str]:
        """`args` run on `host`: in its network namespace, with its hostname."""
        return ["ip", "netns", "exec", self.namespace(host), "unshare", "--uts", "sh", "-c",
                'hostname "$0" && exec "$@"', host, *args]

    def popen(self, host: str, args: list[str], env: dict[str, str], **options) -> subprocess.Popen:
        """Start `args` on `host` (killed by `close`)."""
        process = subprocess.Popen(self.command(host, args), env=env, preexec_fn=_die_with_parent, **options)
        self.processes.append(process)
        return process

    def run(self, host: str, args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
        """Run `args` on `host` to its end."""
        return subprocess.run(self.command(host, args), env=env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=timeout)

    def close(self) -> None:
        """Kill whatever runs in the namespaces (bounded), then delete them."""
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for namespace in [self.namespace(host) for host in self.hosts] + [self.switch]:
            pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                pass
            for stream in (process.stdout, process.stderr):
                if stream:
                    stream.close()
        for namespace in [self.namespace(host) for host in self.hosts] + [self.switch]:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
