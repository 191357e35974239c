"""TLS on the control API (issue 16, item 4): loopback by user, off-host by token over TLS.

A test CA and a certificate naming 127.0.0.1 and 10.88.0.1 are made with the `openssl` command.
On loopback: a client that trusts the CA is answered; one that does not (no CA, another CA, a
certificate for another address) fails in one line before anything is sent; plain HTTP to a TLS
port (and TLS to a plain port) fails at once, no hang. The CLI serves TLS with `run --tls-cert
--tls-key` (kept by `restart`) and verifies with `perform --ca-file` / $SERVICEFACTORY_CA_FILE.
Off-host: two network namespaces joined by a veth pair; the service binds 10.88.0.1 with a token
and TLS; a client in the other namespace is answered with the CA and the token, refused (401,
then 429) without them, and a packet capture on its side of the link never sees the token, where
the same capture of a plain-HTTP service does.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from support import PYTHON
from servicefactory import Service
from servicefactory.http import client
from servicefactory.errors import InvalidData, ProtocolError, ServiceNotRunning, ServiceTimeout, StartupError
from servicefactory.registry.local import LocalRegistry
from servicefactory.testing import running

STRONG_TOKEN = "q3J0c2v1bW9yZS1yYW5kb20tdGhhbi10aGlzLXJlYWxseQ"
SERVER_IP, CLIENT_IP = "10.88.0.1", "10.88.0.2"
CLI = [PYTHON, "-m", "servicefactory"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60, cwd=cwd)


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-keyout", str(key), "-out", str(cert),
             cwd=directory)
    return cert, key


def _make_server_cert(directory: Path, ca: tuple[Path, Path], name: str, san: str) -> tuple[Path, Path]:
    key, csr, cert = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.pem"
    extensions = directory / f"{name}.ext"
    extensions.write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
                          "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr), cwd=directory)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-days", "2", "-extfile", str(extensions), "-out", str(cert), cwd=directory)
    return cert, key


class Pki:
    """The test CA, a certificate it signed for 127.0.0.1 and 10.88.0.1, and decoys."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        ca = _make_ca(directory, "ca")
        self.ca = str(ca[0])
        cert, key = _make_server_cert(directory, ca, "server", f"IP:127.0.0.1,IP:{SERVER_IP}")
        self.cert, self.key = str(cert), str(key)
        other = _make_ca(directory, "other-ca")
        self.other_ca = str(other[0])
        cert, key = _make_server_cert(directory, ca, "elsewhere", "IP:10.99.0.9")  # right CA, wrong address
        self.elsewhere = (str(cert), str(key))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test CA and certificate")
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(autouse=True)
def _fresh_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("SERVICEFACTORY_CA_FILE", raising=False)
    yield
    client.close_connections()


class Echo(Service.base):
    """Counts and echoes what it is sent."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def loop(self) -> None:
        self.sleep(30)

    @Service.API.handle("echo")
    def echo(self, data: Any) -> Any:
        self.calls.append(data)
        return data


def _tls_service(pki: Pki, cert: tuple[str, str] | None = None) -> Echo:
    @Service.API.endpoint(port=0, tls=cert or (pki.cert, pki.key), name=f"Tls{uuid.uuid4().hex[:6]}")
    class Secure(Echo):
        pass

    return Secure()


def _record(service: Echo) -> Any:
    return LocalRegistry().lookup(service._servicefactory_runtime.name)


# -- loopback ------------------------------------------------------------------------------

def test_a_tls_service_is_recorded_as_https_and_answers_a_client_that_trusts_its_ca(pki, monkeypatch):
    with running(_tls_service(pki)) as service:
        name = service._servicefactory_runtime.name
        record = _record(service)
        assert record.tls is True and record.url.startswith("https://127.0.0.1:")
        assert client.perform(name, "echo", {"a": 1}, ca_file=pki.ca) == {"a": 1}
        assert client.perform(name, "echo", 2, ca_file=pki.ca) == 2  # the kept-alive TLS connection
        client.close_connections()
        monkeypatch.setenv("SERVICEFACTORY_CA_FILE", pki.ca)
        assert client.perform(name, "echo", 3) == 3
        assert type(service).perform("echo", 4) == 4  # the class's own perform
        client.close_connections()
        monkeypatch.delenv("SERVICEFACTORY_CA_FILE")
        assert type(service).perform("echo", 4, ca_file=pki.ca) == 4
        monkeypatch.setenv("SERVICEFACTORY_CA_FILE", pki.ca)
        import requests

        with requests.Session() as session:
            assert client.perform(name, "echo", 5, session=session) == 5
            monkeypatch.delenv("SERVICEFACTORY_CA_FILE")
            assert client.perform(name, "echo", 6, session=session, ca_file=pki.ca) == 6
            with pytest.raises(ProtocolError, match="TLS"):
                client.perform(name, "echo", 7, session=session)  # requests' own CAs do not know ours
        assert service.calls == [{"a": 1}, 2, 3, 4, 4, 5, 6]


@pytest.mark.parametrize("case", ["no CA", "another CA", "a certificate for another address"])
def test_a_server_the_client_cannot_verify_gets_nothing_and_the_error_is_one_line(pki, case):
    service = _tls_service(pki, pki.elsewhere if case.startswith("a certificate") else None)
    with running(service):
        name = service._servicefactory_runtime.name
        if not case.startswith("a certificate"):
            assert client.perform(name, "echo", 0, ca_file=pki.ca) == 0  # kept open: must not be reused below
            service.calls.clear()
        ca_file = {"no CA": None, "another CA": pki.other_ca}.get(case, pki.ca)
        with pytest.raises(ProtocolError) as raised:
            client.perform(name, "echo", "secret data", ca_file=ca_file, token=STRONG_TOKEN)
        message = str(raised.value)
        assert "not trusted" in message and "nothing was sent" in message and "\n" not in message
        if case.startswith("a certificate"):
            assert "mismatch" in message and "127.0.0.1" in message  # the address the certificate lacks
        assert service.calls == []


def test_a_missing_ca_file_is_a_usage_error(pki, tmp_path):
    with running(_tls_service(pki)) as service:
        with pytest.raises(InvalidData, match="cannot use the CA file"):
            client.perform(service._servicefactory_runtime.name, "echo", 1, ca_file=str(tmp_path / "nope.pem"))


def test_plain_http_to_a_tls_port_and_tls_to_a_plain_port_fail_at_once(pki, tmp_path):
    elsewhere = LocalRegistry(tmp_path / "empty-home")  # no record: only the fallback address is known
    with running(_tls_service(pki)) as service:
        port = service.address[1]
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1\r\n\r\n1")
            received = b""
            try:
                while chunk := sock.recv(4096):
                    received += chunk
            except ConnectionResetError:
                pass
        assert not received.startswith(b"HTTP/")  # no plain-text answer, and the server closed
        # the server drops the connection without reading a request: nothing ran (the client may
        # call that a protocol error or, as a reset before any answer, "not run; safe to retry")
        with pytest.raises((ProtocolError, ServiceNotRunning)):
            client.perform(service._servicefactory_runtime.name, "echo", 1, registry=elsewhere,
                           fallback=("127.0.0.1", port), timeout=10)
        assert time.monotonic() - started < 5
        assert service.calls == []

    @Service.API.endpoint(port=0)
    class Plain(Echo):
        pass

    with running(Plain()) as plain:
        started = time.monotonic()
        with pytest.raises(ProtocolError, match="TLS handshake failed"):
            client.perform("Plain", "echo", 1, registry=elsewhere, fallback=plain.address, tls=True,
                           ca_file=pki.ca, timeout=10)
        assert time.monotonic() - started < 5
        assert plain.calls == []


def test_a_slow_answer_or_a_silent_handshake_over_tls_is_a_timeout(pki, tmp_path):
    @Service.API.endpoint(port=0, tls=(pki.cert, pki.key), name="Slow")
    class Slow(Echo):
        @Service.API.handle("slow")
        def slow(self, data: Any) -> Any:
            time.sleep(data)
            return data

    with running(Slow()):
        started = time.monotonic()
        with pytest.raises(ServiceTimeout, match="did not answer 'slow' within 0.3 s"):
            client.perform("Slow", "slow", 1.5, ca_file=pki.ca, timeout=0.3)
        assert time.monotonic() - started < 1.2
        assert client.perform("Slow", "slow", 0, ca_file=pki.ca) == 0  # the next call is fine
    elsewhere = LocalRegistry(tmp_path / "empty-home")
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (the kernel does), never speaks
        started = time.monotonic()
        with pytest.raises(ServiceTimeout, match="handshake timed out"):
            client.perform("Silent", "echo", 1, registry=elsewhere, fallback=silent.getsockname(), tls=True,
                           ca_file=pki.ca, timeout=0.3)
        assert time.monotonic() - started < 1.2


def test_large_bodies_over_tls_are_sent_whole_and_one_over_the_limit_is_refused_as_data(pki):
    with running(_tls_service(pki)) as service:
        name = service._servicefactory_runtime.name
        big = "x" * 700_000  # sent in pieces on a plain connection
        assert client.perform(name, "echo", big, ca_file=pki.ca) == big
        with pytest.raises(InvalidData, match="over the limit|rejected"):
            client.perform(name, "echo", "y" * 3_000_000, ca_file=pki.ca)
        assert client.perform(name, "echo", 1, ca_file=pki.ca) == 1
        assert service.calls == [big, 1]


def test_unusable_certificate_files_stop_the_start_in_one_line(pki, tmp_path):
    for cert, key, expected in [(tmp_path / "missing.pem", pki.key, "does not exist"),
                                (pki.cert, pki.elsewhere[1], "cannot be used"),  # a key of another cert
                                (pki.key, pki.cert, "cannot be used")]:
        with pytest.raises(StartupError, match=expected) as raised:
            _tls_service(pki, (str(cert), str(key))).run()
        assert "\n" not in str(raised.value)


    @Service.API.endpoint(port=0, tls=(pki.cert, pki.key), server="werkzeug")
    class OtherServer(Echo):
        pass

    with pytest.raises(StartupError, match="TLS needs the builtin server"):
        OtherServer().run()


def test_an_off_host_bind_without_tls_warns_once_and_with_tls_does_not(pki, monkeypatch, caplog):
    monkeypatch.setenv("SERVICEFACTORY_TOKEN", STRONG_TOKEN)

    @Service.API.endpoint(host="0.0.0.0", port=0)
    class Open(Echo):
        pass

    caplog.set_level(logging.WARNING)
    with running(Open()):
        pass
    warnings = [r.getMessage() for r in caplog.records if "readable on the wire" in r.getMessage()]
    assert len(warnings) == 1 and "0.0.0.0" in warnings[0]
    caplog.clear()

    @Service.API.endpoint(host="0.0.0.0", port=0, tls=(pki.cert, pki.key))
    class Sealed(Echo):
        pass

    with running(Sealed()):
        pass
    assert not [r for r in caplog.records if "readable on the wire" in r.getMessage()]


def test_a_key_every_user_can_read_is_warned_about(pki, tmp_path, caplog):
    key = tmp_path / "open.key"
    key.write_bytes(Path(pki.key).read_bytes())
    key.chmod(0o644)
    caplog.set_level(logging.WARNING)
    with running(_tls_service(pki, (pki.cert, str(key)))):
        pass
    assert [r for r in caplog.records if "readable by every user" in r.getMessage() and str(key) in r.getMessage()]
    caplog.clear()
    key.chmod(0o600)
    with running(_tls_service(pki, (pki.cert, str(key)))):
        pass
    assert not [r for r in caplog.records if "readable by every user" in r.getMessage()]


def test_endpoint_tls_takes_a_pair_of_paths():
    for bad in ["cert.pem", ("cert.pem",), ("cert.pem", ""), ("a", "b", "c"), (1, 2)]:
        with pytest.raises(ValueError, match="tls takes"):
            Service.API.endpoint(tls=bad)


# -- the command line ----------------------------------------------------------------------

SERVICE_FILE = """\
from servicefactory import Service

@Service.API.endpoint(port=0)
class Sealed(Service.base):
    def loop(self):
        self.sleep(30)

    @Service.API.handle("echo")
    def echo(self, data):
        return data
"""


def _cli(*args: str, env: dict | None = None, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    full = {key: value for key, value in os.environ.items() if key != "SERVICEFACTORY_CA_FILE"}
    full.update(env or {})
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=full, cwd=cwd)


def test_cli_run_serves_tls_perform_verifies_and_restart_keeps_it(pki, tmp_path, sf_home):
    (tmp_path / "sealed.py").write_text(SERVICE_FILE)
    try:
        done = _cli("run", "sealed.py:Sealed", "--daemon", "--tls-cert", pki.cert, "--tls-key", pki.key, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "https://127.0.0.1:" in done.stdout + done.stderr
        for attempt in ("first", "after restart", "after stop and restart"):
            done = _cli("perform", "Sealed", "echo", '"hi"', "--ca-file", pki.ca, cwd=tmp_path)
            assert (done.returncode, done.stdout) == (0, '"hi"\n'), (attempt, done.stderr)
            done = _cli("perform", "Sealed", "echo", '"hi"', env={"SERVICEFACTORY_CA_FILE": pki.ca}, cwd=tmp_path)
            assert (done.returncode, done.stdout) == (0, '"hi"\n'), (attempt, done.stderr)
            done = _cli("perform", "Sealed", "echo", '"hi"', cwd=tmp_path)
            assert done.returncode == 8, (attempt, done.stderr)
            assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
            assert "not trusted" in done.stderr and "--ca-file" in done.stderr
            done = _cli("status", "Sealed", "--json", cwd=tmp_path)
            assert json.loads(done.stdout)[0]["url"].startswith("https://"), done.stdout
            if attempt == "after restart":  # not running: `restart` runs it again with the remembered options
                done = _cli("stop", "Sealed", cwd=tmp_path)
                assert done.returncode == 0, done.stdout + done.stderr
            if attempt != "after stop and restart":
                done = _cli("restart", "Sealed", cwd=tmp_path)
                assert done.returncode == 0, done.stdout + done.stderr
                assert "https://" in done.stdout, done.stdout
        done = _cli("perform", "Sealed", "echo", '"hi"', "--ca-file", str(tmp_path / "nope.pem"), cwd=tmp_path)
        assert done.returncode == 2 and "Traceback" not in done.stderr and "nope.pem" in done.stderr
    finally:
        _cli("stop", "--all", cwd=tmp_path)


def test_cli_run_refuses_unusable_tls_options_in_one_line(pki, tmp_path):
    (tmp_path / "sealed.py").write_text(SERVICE_FILE)
    for options, expected in [(["--tls-cert", pki.cert], "go together"),
                              (["--tls-cert", str(tmp_path / "none.pem"), "--tls-key", pki.key], "does not exist"),
                              (["--tls-cert", pki.cert, "--tls-key", pki.elsewhere[1]], "cannot be used")]:
        done = _cli("run", "sealed.py:Sealed", "--daemon", *options, cwd=tmp_path, timeout=30)
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
        assert expected in done.stderr
    assert not LocalRegistry().names()


# -- off-host: two network namespaces joined by a veth pair ---------------------------------

def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=check)


@pytest.fixture
def link() -> Iterator[tuple[str, str]]:
    """(server namespace, client namespace), 10.88.0.1 and 10.88.0.2 on the two ends of a veth pair."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 to create network namespaces joined by a veth pair")
    tag = uuid.uuid4().hex[:6]
    server, peer = f"sftls-s-{tag}", f"sftls-c-{tag}"
    made = []
    try:
        for namespace in (server, peer):
            done = _ip("netns", "add", namespace, check=False)
            if done.returncode:
                pytest.skip(f"cannot create a network namespace here: {done.stderr.strip()}")
            made.append(namespace)
        done = _ip("-n", server, "link", "add", "sf0", "type", "veth", "peer", "name", "sf1", "netns", peer,
                   check=False)
        if done.returncode:
            pytest.skip(f"cannot create a veth pair here: {done.stderr.strip()}")
        for namespace, device, address in ((server, "sf0", SERVER_IP), (peer, "sf1", CLIENT_IP)):
            _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", device)
            _ip("-n", namespace, "link", "set", device, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
        yield server, peer
    finally:
        for namespace in made:  # deleting a namespace deletes its end of the pair, and so the pair
            _ip("netns", "del", namespace, check=False)


OFF_HOST_SERVICE = """\
import sys
from servicefactory import Service

@Service.API.endpoint(host=sys.argv[1], port=0, name=sys.argv[2])
class Remote(Service.base):
    def loop(self):
        self.sleep(30)

    @Service.API.handle("echo")
    def echo(self, data):
        return data

Remote().run(tls=(sys.argv[3], sys.argv[4]) if len(sys.argv) > 4 else None)
"""

# runs in the client's namespace: captures its side of the link while it calls, prints what it saw
OFF_HOST_CLIENT = """\
import json, socket, ssl, sys, threading, time, http.client
from servicefactory.http import client
from servicefactory.errors import ServiceFactoryError

name, port, ca, token, tls = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5] == "tls"
capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL
capture.bind(("sf1", 0))
capture.settimeout(0.2)
frames, done = [], threading.Event()

def sniff():
    while not done.is_set():
        try:
            frames.append(capture.recv(65536))
        except socket.timeout:
            pass

thread = threading.Thread(target=sniff)
thread.start()
out = {}
try:
    out["ok"] = client.perform(name, "echo", "hello", token=token, ca_file=ca, timeout=10)
except ServiceFactoryError as exc:
    out["ok"] = f"{type(exc).__name__}: {exc}"
if tls:
    context = ssl.create_default_context(cafile=ca)
    statuses = []
    for guess in [None] + [token[:-4] + f"{i:04d}" for i in range(7)]:
        connection = http.client.HTTPSConnection(sys.argv[6], port, context=context, timeout=10)
        headers = {"Content-Type": "application/json", "Servicefactory-Service": name}
        if guess:
            headers["Authorization"] = "Bearer " + guess
        connection.request("POST", "/echo", body=b"1", headers=headers)
        statuses.append(connection.getresponse().status)
        connection.close()
    out["statuses"] = statuses
    # what the server sends first on a new connection: a TLS record (22: handshake, 3: TLS version)
    with socket.create_connection((sys.argv[6], port), timeout=10) as raw:
        hello = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls_object = context.wrap_bio(*hello, server_hostname=sys.argv[6])
        try:
            tls_object.do_handshake()
        except ssl.SSLWantReadError:
            pass
        raw.sendall(hello[1].read())
        out["first_bytes"] = raw.recv(3).hex()
time.sleep(0.3)
done.set()
thread.join()
capture.close()
wire = b"".join(frames)
out["captured"] = len(wire)
out["token_on_wire"] = token.encode() in wire
out["authorization_on_wire"] = b"Authorization" in wire
print(json.dumps(out))
"""


def _start_off_host(namespace: str, tmp_path: Path, sf_home: Path, name: str, *tls: str) -> subprocess.Popen:
    script = tmp_path / "remote.py"
    script.write_text(OFF_HOST_SERVICE)
    env = dict(os.environ, SERVICEFACTORY_HOME=str(sf_home), SERVICEFACTORY_TOKEN=STRONG_TOKEN, PYTHONUNBUFFERED="1")
    return subprocess.Popen(["ip", "netns", "exec", namespace, PYTHON, str(script), SERVER_IP, name, *tls],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)


def _wait_for_record(name: str, process: subprocess.Popen, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = LocalRegistry().lookup(name)
        if record is not None and record.port:
            return record
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"{name} did not start: {process.communicate(timeout=10)[0]}")


def _call_from(namespace: str, sf_home: Path, name: str, port: int, ca: str, mode: str) -> dict:
    env = dict(os.environ, SERVICEFACTORY_HOME=str(sf_home))
    env.pop("SERVICEFACTORY_TOKEN", None)
    done = subprocess.run(["ip", "netns", "exec", namespace, PYTHON, "-c", OFF_HOST_CLIENT, name, str(port), ca,
                           STRONG_TOKEN, mode, SERVER_IP], capture_output=True, text=True, timeout=90, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _stop(process: subprocess.Popen) -> str:
    process.terminate()
    try:
        return process.communicate(timeout=15)[0]
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate(timeout=10)[0]


def test_off_host_a_token_over_tls_is_answered_refused_without_it_and_never_on_the_wire(link, pki, tmp_path,
                                                                                         sf_home):
    server, peer = link
    process = _start_off_host(server, tmp_path, sf_home, "Remote", pki.cert, pki.key)
    try:
        record = _wait_for_record("Remote", process)
        assert record.tls and record.url == f"https://{SERVER_IP}:{record.port}"
        # the CLI first: the wrong tokens below get this peer throttled
        env = dict(os.environ, SERVICEFACTORY_HOME=str(sf_home), SERVICEFACTORY_TOKEN=STRONG_TOKEN)
        env.pop("SERVICEFACTORY_CA_FILE", None)
        cli = ["ip", "netns", "exec", peer, *CLI, "perform", "Remote", "echo", '"from afar"']
        by_cli = subprocess.run([*cli, "--ca-file", pki.ca], capture_output=True, text=True, timeout=60, env=env)
        untrusting = subprocess.run(cli, capture_output=True, text=True, timeout=60, env=env)
        seen = _call_from(peer, sf_home, "Remote", record.port, pki.ca, "tls")
    finally:
        output = _stop(process)
    assert seen["ok"] == "hello", seen
    assert (by_cli.returncode, by_cli.stdout) == (0, '"from afar"\n'), by_cli.stderr
    assert untrusting.returncode == 8 and "not trusted" in untrusting.stderr, untrusting.stderr
    assert "Traceback" not in untrusting.stderr
    # no token: 401; wrong ones: 401 until the peer has used its free failures, then 429
    assert seen["statuses"] == [401] * 5 + [429] * 3, seen
    assert seen["first_bytes"][:4] == "1603", seen  # the server's first bytes are a TLS handshake record
    assert seen["captured"] > 1000 and not seen["token_on_wire"] and not seen["authorization_on_wire"], seen
    assert "readable on the wire" not in output
    assert "refused a request from 10.88.0.2" in output, output


def test_off_host_over_plain_http_the_token_is_on_the_wire_and_the_service_warned(link, pki, tmp_path, sf_home):
    """The control for the test above: the same capture does see a token sent without TLS."""
    server, peer = link
    process = _start_off_host(server, tmp_path, sf_home, "Bare")
    try:
        record = _wait_for_record("Bare", process)
        assert not record.tls and record.url.startswith("http://")
        seen = _call_from(peer, sf_home, "Bare", record.port, pki.ca, "plain")
    finally:
        output = _stop(process)
    assert seen["ok"] == "hello", seen
    assert seen["token_on_wire"] and seen["authorization_on_wire"], seen
    assert output.count("readable on the wire") == 1, output


def test_perform_ca_file_means_the_same_on_the_fast_path_and_to_click(pki, tmp_path):
    import click

    from servicefactory.cli import fast
    from servicefactory.cli.main import cli as click_cli

    missing = str(tmp_path / "missing.pem")
    for arguments in (["T", "a", "--ca-file", pki.ca], [f"--ca-file={pki.ca}", "T", "a", "1"],
                      ["T", "a", "--ca-file", missing], ["T", "a", "--ca-file"], ["T", "a", "--ca-file", str(tmp_path)]):
        parsed = fast.parse_perform(arguments)
        try:
            # under the group's context, as the command line runs it: click caches a command's help
            # option from the first context it sees, and a bare one would drop `-h` for later tests
            parent = click.Context(click_cli, info_name="servicefactory", **click_cli.context_settings)
            with click_cli.commands["perform"].make_context("perform", list(arguments), parent=parent) as context:
                clicked = context.params
        except click.UsageError:
            clicked = None
        assert parsed == clicked, arguments
    done = _cli("perform", "T", "a", "--ca-file", missing, cwd=tmp_path)
    assert done.returncode == 2 and "missing.pem" in done.stderr and "Traceback" not in done.stderr
