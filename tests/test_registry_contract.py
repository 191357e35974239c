"""The registry's contract: what every backend must do, tested against each (local and etcd).

A backend is a `registry.Registry`; the commands, the supervisor and the client rely on these
promises and on nothing else. A backend joins by adding a `Backend` below: the same tests then run
against it, with real processes claiming, racing and dying (kill -9). The etcd backend runs against
a real etcd server (tests/etcd_support.py), each test under a key prefix of its own.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Iterator

import pytest

from etcd_support import TEST_TTL, running_etcd
from support import PYTHON, wait_until
from servicefactory.errors import AlreadyRunning
from servicefactory.registry.base import Registry, ServiceRecord, state_of
from servicefactory.registry.local import LocalRegistry, process_start_time


class Backend:
    """One backend under test: fresh registries on one store, and the ways to damage that store."""

    name = "?"
    #: how often an owner rewrites a record found lost or garbled
    keep_interval = 1.0
    #: whether a killed owner's record stays behind (stale) after its claim lapses, or goes with it
    leaves_record_after_death = True

    def registry(self) -> Registry:
        """A new registry object on the store under test (as another process would make it)."""
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        """What a subprocess needs to use the same store through `backends.default_registry()`."""
        raise NotImplementedError

    def corrupt(self, name: str) -> None:
        """Garble the public record of `name` as a full disk or a crash could."""
        raise NotImplementedError

    def plant(self, record: ServiceRecord) -> None:
        """Put `record` where lookups find it, as someone who holds no claim could."""
        raise NotImplementedError

    def public_bytes(self, name: str) -> bytes:
        """Everything stored publicly for `name` (what a reader of records could see)."""
        raise NotImplementedError

    def forget(self, name: str) -> None:
        """Make the store lose `name`'s claim and record while its owner lives (a deleted directory)."""
        raise NotImplementedError


class Local(Backend):
    """The state directory."""

    name = "local"

    def __init__(self, home: Path) -> None:
        self.home = home

    def registry(self) -> Registry:
        return LocalRegistry(self.home)

    def environment(self) -> dict[str, str]:
        return {"SERVICEFACTORY_REGISTRY": "local", **self.registry().environment()}

    def corrupt(self, name: str) -> None:
        (self.home / f"{name}.json").write_bytes(b'{"name": "' + name.encode() + b'", "pid": ')

    def plant(self, record: ServiceRecord) -> None:
        self.home.mkdir(mode=0o700, exist_ok=True)
        (self.home / f"{record.name}.json").write_text(json.dumps(record.to_dict()))

    def forget(self, name: str) -> None:
        for suffix in (".pid", ".json"):
            (self.home / f"{name}{suffix}").unlink()

    def public_bytes(self, name: str) -> bytes:
        return b"".join(path.read_bytes() for path in sorted(self.home.glob(f"{name}.*"))
                        if path.suffix != ".secret")


class Etcd(Backend):
    """etcd v3, a real server; records, claims and secrets under one lease per claim."""

    name = "etcd"
    keep_interval = TEST_TTL / 3
    leaves_record_after_death = False  # the record is on the owner's lease: it expires with the claim

    def __init__(self, url: str, home: Path) -> None:
        from servicefactory.registry.etcd import EtcdRegistry, parse_url

        self.url, self.home = url, home
        self._raw = EtcdRegistry(url, home)  # its wire, to damage the store as an outsider would
        self.prefix = parse_url(url)[1]

    def registry(self) -> Registry:
        from servicefactory.registry.etcd import EtcdRegistry
        return EtcdRegistry(self.url, self.home)

    def environment(self) -> dict[str, str]:
        return {"SERVICEFACTORY_REGISTRY": self.url, "SERVICEFACTORY_LEASE_TTL": str(TEST_TTL),
                "SERVICEFACTORY_HOME": str(self.home)}

    def _post(self, path: str, payload: dict) -> dict:
        return self._raw._request(path, payload)

    def _b64(self, text: str) -> str:
        import base64
        return base64.b64encode(text.encode()).decode()

    def corrupt(self, name: str) -> None:
        # on the record's own lease (ignore_lease): what a garbled write by its owner would leave
        self._post("/kv/put", {"key": self._b64(f"{self.prefix}record/{name}"),
                               "value": self._b64('{"name": "' + name + '", "pid": '), "ignore_lease": True})

    def plant(self, record: ServiceRecord) -> None:
        self._post("/kv/put", {"key": self._b64(f"{self.prefix}record/{record.name}"),
                               "value": self._b64(json.dumps(record.to_dict()))})

    def forget(self, name: str) -> None:
        for kind in ("claim", "record"):
            self._post("/kv/deleterange", {"key": self._b64(f"{self.prefix}{kind}/{name}")})

    def public_bytes(self, name: str) -> bytes:
        import base64
        found = b""
        for kind in ("claim", "record"):
            answer = self._post("/kv/range", {"key": self._b64(f"{self.prefix}{kind}/{name}")})
            found += b"".join(base64.b64decode(kv.get("value", "")) for kv in answer.get("kvs", []))
        return found


@pytest.fixture(scope="module")
def etcd_server() -> Iterator:
    with running_etcd() as server:
        yield server


@pytest.fixture(params=["local", "etcd"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    if request.param == "etcd":
        monkeypatch.setenv("SERVICEFACTORY_LEASE_TTL", str(TEST_TTL))
        return Etcd(request.getfixturevalue("etcd_server").url(), tmp_path / "registry")
    return Local(tmp_path / "registry")


def record_of(name: str, pid: int | None = None, **values: object) -> ServiceRecord:
    """A record of process `pid` (this one by default), with its real start time."""
    pid = os.getpid() if pid is None else pid
    return ServiceRecord(name, pid, create_time=process_start_time(pid) or 0.0, started=time.time(),
                         host="127.0.0.1", port=4242, **values)


# a process that claims a name (after `go` exists), says `won` or `lost`, and if it won publishes
# its record and holds the name until its stdin closes
CLAIMANT = textwrap.dedent("""
    import os, sys, time
    from servicefactory.registry.backends import default_registry
    from servicefactory.errors import AlreadyRunning
    from servicefactory.registry.base import ServiceRecord
    from servicefactory.registry.local import process_start_time

    name, go = sys.argv[1], sys.argv[2]
    registry = default_registry()
    while not os.path.exists(go):
        time.sleep(0.001)
    try:
        claim = registry.claim(name)
    except AlreadyRunning:
        print("lost", flush=True)
        sys.exit(0)
    registry.publish(claim, ServiceRecord(name, os.getpid(), create_time=process_start_time(os.getpid()),
                                          started=time.time(), host="127.0.0.1", port=4242))
    print("won", flush=True)
    sys.stdin.read()
    registry.release(claim)
""")


@pytest.fixture
def claimants(backend: Backend, tmp_path: Path) -> Iterator:
    """Start claimant processes on the backend's store; every one is killed at the end."""
    started: list[subprocess.Popen] = []

    def start(name: str, go: Path) -> subprocess.Popen:
        process = subprocess.Popen([PYTHON, "-c", CLAIMANT, name, str(go)], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True, env=dict(os.environ, **backend.environment()))
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
        process.wait(10)
        for stream in (process.stdin, process.stdout):
            stream.close()


def test_a_name_has_one_owner_at_a_time_and_is_free_again_once_released(backend: Backend):
    registry, other = backend.registry(), backend.registry()
    claim = registry.claim("Solo")
    with pytest.raises(AlreadyRunning):
        other.claim("Solo")
    assert other.is_held("Solo")
    registry.release(claim)
    assert not other.is_held("Solo")
    other.release(other.claim("Solo"))


def test_of_claimants_racing_in_separate_processes_exactly_one_wins(backend: Backend, claimants, tmp_path: Path):
    go = tmp_path / "go"
    racers = [claimants("Race", go) for _ in range(4)]
    time.sleep(0.3)  # all of them waiting on `go` (they only poll a file: no answer depends on this)
    go.touch()
    answers = {racer: racer.stdout.readline().strip() for racer in racers}
    assert sorted(answers.values()) == ["lost", "lost", "lost", "won"]
    (winner,) = [racer for racer, answer in answers.items() if answer == "won"]
    registry = backend.registry()
    record = registry.lookup("Race")
    assert record is not None and record.pid == winner.pid
    assert state_of(registry, "Race") == ("running", record)
    with pytest.raises(AlreadyRunning):
        registry.claim("Race")


def test_a_published_record_is_found_by_lookup_names_and_records(backend: Backend):
    registry, reader = backend.registry(), backend.registry()
    claim = registry.claim("Api")
    record = record_of("Api", target="app:Api")
    registry.publish(claim, record)
    assert reader.lookup("Api") == record
    assert "Api" in reader.names()
    assert record in list(reader.records())
    assert reader.owner_alive(record) and not reader.is_gone(record)
    assert state_of(reader, "Api") == ("running", record)
    registry.release(claim)
    assert reader.lookup("Api") is None and "Api" not in reader.names()
    assert state_of(reader, "Api") == ("stopped", None)


def test_an_old_owner_never_overwrites_or_removes_the_next_owners_record(backend: Backend, claimants,
                                                                          tmp_path: Path):
    registry = backend.registry()
    old = registry.claim("Handed")
    registry.publish(old, record_of("Handed", target="old:Owner"))
    backend.forget("Handed")  # the store lost the name: a new owner takes it while the old one lives
    go = tmp_path / "go"
    go.touch()
    new_owner = claimants("Handed", go)
    assert new_owner.stdout.readline().strip() == "won"
    registry.publish(old, record_of("Handed", target="old:Again"))  # a late write by the old owner
    time.sleep(backend.keep_interval * 1.5)  # the old owner's keeper must not rewrite it either
    registry.release(old)  # and its release
    reader = backend.registry()
    record = reader.lookup("Handed")
    assert record is not None and record.pid == new_owner.pid
    assert reader.is_held("Handed") and reader.owner_alive(record)


def test_after_kill_9_of_the_owner_the_name_is_stale_never_signalled_and_free(backend: Backend, claimants,
                                                                            tmp_path: Path):
    go = tmp_path / "go"
    go.touch()
    owner = claimants("Doomed", go)
    assert owner.stdout.readline().strip() == "won"
    registry = backend.registry()
    record = registry.lookup("Doomed")
    assert record is not None and registry.owner_alive(record)
    owner.kill()
    owner.wait(10)
    assert registry.is_gone(record) and not registry.owner_alive(record)
    assert not registry.signal(record, signal.SIGTERM)
    assert state_of(registry, "Doomed")[0] == "stale"  # at once: its claim may not have lapsed yet
    wait_until(lambda: not registry.is_held("Doomed"), timeout=5, message="the killed owner's claim to lapse")
    assert not registry.owner_alive(record) and not registry.signal(record, signal.SIGTERM)
    if backend.leaves_record_after_death:
        assert state_of(registry, "Doomed")[0] == "stale"
    else:
        assert registry.lookup("Doomed") is None and state_of(registry, "Doomed") == ("stopped", None)
    registry.clean("Doomed")
    assert state_of(registry, "Doomed") == ("stopped", None)
    registry.release(registry.claim("Doomed"))


def test_a_corrupt_record_reads_as_none_and_the_live_owner_proves_itself(backend: Backend):
    registry = backend.registry()
    claim = registry.claim("Garbled")
    registry.publish(claim, record_of("Garbled"))
    backend.corrupt("Garbled")
    reader = backend.registry()
    assert reader.lookup("Garbled") is None
    state, proven = state_of(reader, "Garbled")
    assert (state, proven.pid if proven else None) == ("running", os.getpid())
    registry.release(claim)
    assert state_of(reader, "Garbled") == ("stopped", None)


def test_a_corrupt_record_without_an_owner_is_stale_until_cleaned(backend: Backend):
    backend.plant(record_of("Left"))
    backend.corrupt("Left")
    registry = backend.registry()
    assert registry.lookup("Left") is None
    assert state_of(registry, "Left") == ("stale", None)
    registry.clean("Left")
    assert state_of(registry, "Left") == ("stopped", None)


def test_a_planted_record_naming_a_live_foreign_process_proves_nothing(backend: Backend):
    bystander = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(60)"])
    try:
        wait_until(lambda: process_start_time(bystander.pid) is not None, timeout=5, message="bystander")
        forged = record_of("Victim", bystander.pid)
        backend.plant(forged)
        registry = backend.registry()
        assert registry.lookup("Victim") == forged
        assert not registry.owner_alive(forged)
        assert not registry.signal(forged, signal.SIGKILL)
        assert state_of(registry, "Victim")[0] == "stale"
        registry.clean("Victim")
        assert bystander.poll() is None  # never signalled
    finally:
        bystander.kill()
        bystander.wait(10)


def test_a_secret_is_readable_by_its_name_but_never_part_of_the_public_record(backend: Backend):
    registry = backend.registry()
    claim = registry.claim("_supervisor-1")
    registry.publish_secret(claim, "s3cret-control-token")
    registry.publish(claim, record_of("_supervisor-1"))
    reader = backend.registry()
    assert reader.secret("_supervisor-1") == "s3cret-control-token"
    assert "s3cret" not in json.dumps(reader.lookup("_supervisor-1").to_dict())
    assert b"s3cret" not in backend.public_bytes("_supervisor-1")
    registry.release(claim)
    assert reader.secret("_supervisor-1") is None


def test_a_child_handed_the_claim_is_proven_the_owner_while_its_starter_keeps_the_name(backend: Backend):
    registry = backend.registry()
    claim = registry.claim("Child")
    child = subprocess.Popen([PYTHON, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                             pass_fds=registry.inheritable(claim))
    try:
        registry.hand_over(claim, child.pid)
        wait_until(lambda: process_start_time(child.pid) is not None, timeout=5, message="child")
        record = record_of("Child", child.pid, supervisor=registry.supervisor_name(os.getpid()))
        registry.publish(claim, record)
        assert registry.owner_alive(record)
        child.stdin.close()
        child.wait(10)
        assert registry.is_gone(record) and not registry.owner_alive(record)
        assert registry.is_held("Child")  # the starter still owns the name between two runs
    finally:
        child.kill()
        child.wait(10)
        registry.release(claim)


def test_how_a_service_was_run_is_remembered_until_it_is_stopped_on_purpose(backend: Backend):
    registry = backend.registry()
    registry.ensure()  # as a supervisor has, by claiming its names, before it remembers one
    registry.remember("Kept", {"target": "app:Kept", "settings": {"backoff": 2.0}})
    reader = backend.registry()
    assert reader.remembered("Kept") == {"target": "app:Kept", "settings": {"backoff": 2.0}}
    assert "Kept" in reader.remembered_names()
    reader.mark_stopped("Kept")
    assert "Kept" not in backend.registry().remembered_names()
    assert reader.remembered("Kept")["target"] == "app:Kept"  # restart still knows how
    assert reader.remembered("Never") is None


def test_instances_are_claimed_one_id_each_and_listed_in_instance_order(backend: Backend):
    registry, reader = backend.registry(), backend.registry()
    claims = [registry.claim(name) for name in ("Inst/10", "Inst/2", "Inst", "Instead", "Inst/1")]
    registry.publish(claims[1], record_of("Inst/2", instance=2))
    with pytest.raises(AlreadyRunning):
        reader.claim("Inst/2")  # two owners of one instance: never
    assert reader.instances_of("Inst") == ["Inst", "Inst/1", "Inst/2", "Inst/10"]
    assert reader.lookup("Inst/2").instance == 2 and reader.lookup("Inst/2").service == "Inst"
    assert {"Inst/1", "Inst/2", "Inst/10"} <= set(reader.names())
    for claim in claims:
        registry.release(claim)
    assert reader.instances_of("Inst") == []
