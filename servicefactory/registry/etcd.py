"""The etcd registry: services found across hosts, through etcd v3 (the store Kubernetes runs on).

Selected with `SERVICEFACTORY_REGISTRY=etcd://host:2379[,host2:2379][/prefix]`. Spoken through
`etcd3gw` (etcd's JSON gateway, over requests); etcd 3.4 or newer. Under the key prefix
(`/servicefactory/` unless the URL gives one) each name has:

    claim/NAME    who owns the name: {pid, holder, hostname, create_time, claimed}; created by a
                  transaction that succeeds only if the key does not exist (one winner per race)
    record/NAME   the public ServiceRecord, written only while claim/NAME is still this owner's
    secret/NAME   a supervisor's control token, apart from the record
    run/NAME      how NAME was last run (`remember`), kept after it stops

claim, record and secret are attached to one lease per claim, which the owning process keeps alive
(every TTL/3). A graceful release deletes them and revokes the lease; an owner that dies (kill -9,
a host cut off) stops refreshing and etcd drops all three within the TTL ($SERVICEFACTORY_LEASE_TTL,
default 10 s). Proof of life is the claim (a lease only a live process refreshes), never a pid in a
record; a pid is only checked against /proc when the record is this host's.
"""
from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import socket
import threading
import time

from servicefactory.errors import AlreadyRunning, StateError
from servicefactory.registry.base import (INSTANCE_SEPARATOR, SUPERVISOR_PREFIX, Claim, ServiceRecord,
                                          split_instance)
from servicefactory.registry.local import LocalRegistry, check_name, is_dead, process_start_time, send_signal

TYPE_CHECKING = False  # typing is for type checkers only: importing it would slow `servicefactory perform`
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any, Iterator

logger = logging.getLogger(__name__)

#: the environment variable that sets the lease TTL in seconds
LEASE_TTL_ENV = "SERVICEFACTORY_LEASE_TTL"
DEFAULT_LEASE_TTL = 10
#: one etcd request may take this long before the endpoint counts as unreachable
REQUEST_TIMEOUT = 3.0
DEFAULT_PREFIX = "/servicefactory/"


def parse_url(url: str) -> tuple[list[tuple[str, int]], str]:
    """The endpoints and key prefix of `etcd://host:port[,host:port...][/prefix]` (or `etcds://`:
    the same over TLS); StateError if malformed."""
    scheme = "etcds://" if url.startswith("etcds://") else "etcd://"
    rest = url[len(scheme):] if url.startswith(scheme) else None
    if not rest:
        raise StateError(f"malformed etcd registry URL {url!r}: use etcd://host:2379[,host2:2379][/prefix]")
    hosts, _, path = rest.partition("/")
    endpoints = []
    for part in hosts.split(","):
        host, colon, port = part.strip().rpartition(":")
        if not colon:
            host, port = port, "2379"
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise StateError(f"malformed etcd endpoint {part!r} in {url!r}: use host:port")
        endpoints.append((host, int(port)))
    prefix = "/" + path.strip("/") + "/" if path.strip("/") else DEFAULT_PREFIX
    return endpoints, prefix


def lease_ttl() -> int:
    """The lease TTL in seconds: $SERVICEFACTORY_LEASE_TTL, else 10 (etcd's own minimum is 2)."""
    raw = os.environ.get(LEASE_TTL_ENV, "").strip()
    if not raw:
        return DEFAULT_LEASE_TTL
    try:
        ttl = int(raw)
    except ValueError:
        ttl = 0
    if not 1 <= ttl <= 3600:
        raise StateError(f"${LEASE_TTL_ENV} must be a whole number of seconds from 1 to 3600, not {raw!r}")
    return ttl


#: TLS and etcd's authentication, for every host's processes alike (never in the URL: it is shown)
CA_FILE_ENV = "SERVICEFACTORY_ETCD_CA_FILE"  # the CA that signed etcd's certificate (else the system's)
CERT_FILE_ENV = "SERVICEFACTORY_ETCD_CERT_FILE"  # a client certificate, if etcd asks for one
KEY_FILE_ENV = "SERVICEFACTORY_ETCD_KEY_FILE"  # its key (else in the certificate's file)
USER_ENV = "SERVICEFACTORY_ETCD_USER"  # etcd's authentication: a user ...
PASSWORD_ENV = "SERVICEFACTORY_ETCD_PASSWORD"  # ... and its password


def security(url: str) -> Any:
    """How to connect (`_etcdwire.Security`): TLS for `etcds://`, the files and the user from the
    environment; StateError (exit 10) for a file that cannot be read or a user without a password."""
    from servicefactory.registry._etcdwire import Security

    files = {}
    for variable in (CA_FILE_ENV, CERT_FILE_ENV, KEY_FILE_ENV):
        path = os.environ.get(variable, "").strip() or None
        if path is not None and not os.access(path, os.R_OK):
            raise StateError(f"${variable} names {path}, which cannot be read")
        files[variable] = path
    tls = url.startswith("etcds://")
    if not tls and any(files.values()):
        raise StateError(f"${CA_FILE_ENV}/${CERT_FILE_ENV} are for TLS: use etcds://... in the registry URL")
    user, password = os.environ.get(USER_ENV) or None, os.environ.get(PASSWORD_ENV) or None
    if bool(user) != bool(password):
        raise StateError(f"etcd's authentication needs both ${USER_ENV} and ${PASSWORD_ENV}")
    return Security(tls, files[CA_FILE_ENV], files[CERT_FILE_ENV], files[KEY_FILE_ENV], user, password)


class Unreachable(StateError):
    """No endpoint of the etcd registry answered (refused, timed out, unknown host)."""


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


class _Held:
    """The backend's side of a Claim: the lease and the claim key's create revision, which change
    when the claim is re-taken after etcd lost the lease (both 0: not taken yet, etcd was away)."""

    __slots__ = ("lease", "revision", "value", "record", "secret", "lost", "lock")

    def __init__(self, lease: int, revision: int, value: bytes) -> None:
        self.lock = threading.Lock()  # the keeper's turn on this claim, or its release: never both
        self.lease = lease
        self.revision = revision
        self.value = value  # the claim key's JSON
        self.record: bytes | None = None  # what `publish` last wrote, kept written by the keeper
        self.secret: bytes | None = None
        self.lost = False  # released, or another owner has the name now: never write anything of it again


class EtcdRegistry:
    """The registry kept in etcd, shared by every host that uses the same endpoints and prefix."""

    #: every host that uses the same endpoints and prefix shares it
    many_hosts = True

    def __init__(self, url: str, home: Path | str | None = None) -> None:
        self.endpoints, self.prefix = parse_url(url)
        self.security = security(url)
        #: the registry's `where`: the URL, as given
        self.where = url
        self.ttl = lease_ttl()
        self.hostname = socket.gethostname()
        #: logs, the token file and a supervisor's working directory stay on this host
        self.local = LocalRegistry(home)
        self._clients: list[Any] = []  # _etcdwire.Library per endpoint, once this process writes
        self._readers: list[Any] = []  # _etcdwire.Reader per endpoint, until then
        self._current = 0
        self._held: dict[str, tuple[Claim, _Held]] = {}
        self._unsaved: dict[str, dict[str, Any]] = {}  # `remember`s etcd was away for
        self._views = threading.local()  # `snapshot()`'s view, per thread
        self._keeping = threading.Lock()
        self._keeper: threading.Thread | None = None
        self._mirror: Any = None  # _etcdwatch.Mirror, once `follow()` was called
        self._written = 0  # the revision of this process's last write: a mirror behind it is not read

    # -- the wire: every request goes through _request, which fails over and maps errors --

    def _wire(self, index: int, write: bool) -> Any:
        """Endpoint `index`'s way in: etcd3gw once anything has been written (or is about to be),
        the standard library's http.client for a process that has only read (see _etcdwire)."""
        from servicefactory.registry import _etcdwire

        if write and not self._clients:
            self._clients = [_etcdwire.Library(host, port, REQUEST_TIMEOUT, self.security)
                             for host, port in self.endpoints]
            for reader in self._readers:
                reader.close_all()
            self._readers = []
        if self._clients:
            return self._clients[index]
        if not self._readers:
            self._readers = [_etcdwire.Reader(host, port, REQUEST_TIMEOUT, self.security)
                             for host, port in self.endpoints]
        return self._readers[index]

    def _request(self, path: str, payload: dict, *, write: bool = True) -> Any:
        """Post `payload` to the gateway's `path` at the current endpoint, moving to the next one if
        it is unreachable; `write=False` for a request that only reads. With etcd's authentication,
        a token is fetched first, and again when etcd says it expired."""
        if self.security.user and not self.security.auth:
            self._authenticate()
        try:
            return self._post(path, payload, write)
        except StateError as exc:
            if not (self.security.user and "invalid auth token" in str(exc)):
                raise
            self._authenticate()  # simple tokens expire (etcd's --auth-token-ttl): once more with a new one
            return self._post(path, payload, write)

    def _authenticate(self) -> None:
        self.security.auth.clear()
        result = self._post("/auth/authenticate", {"name": self.security.user, "password": self.security.password},
                            False)
        self.security.auth["Authorization"] = str(result.get("token") or "")

    def _post(self, path: str, payload: dict, write: bool) -> Any:
        from servicefactory.registry._etcdwire import Failed, NoAnswer, Rejected

        failures = []
        for attempt in range(len(self.endpoints)):
            index = (self._current + attempt) % len(self.endpoints)
            host, port = self.endpoints[index]
            try:
                result = self._wire(index, write).post(path, payload)
            except NoAnswer:
                failures.append(f"{host}:{port} (no answer within {REQUEST_TIMEOUT:g} s)")
                continue
            except Failed as exc:
                failures.append(f"{host}:{port} ({exc})")
                continue
            except Rejected as exc:
                detail = str(exc)
                if detail.startswith("not JSON"):
                    raise StateError(f"etcd registry {self.where} answered garbage from {host}:{port} "
                                     f"({detail}); is it etcd 3.4 or newer?") from None
                if "Not Found" in detail:
                    detail = f"HTTP 404 from {host}:{port}: not etcd's v3 gateway (etcd 3.4 or newer?)"
                raise StateError(f"etcd registry {self.where} refused a request: {detail}") from None
            self._current = index
            if write and isinstance(result, dict):
                self._written = max(self._written, int((result.get("header") or {}).get("revision") or 0))
            return result
        raise Unreachable(f"etcd registry unreachable: {'; '.join(failures)}")

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}/{check_name(name)}"

    def _range(self, key: str, prefix: bool = False, keys_only: bool = False) -> list[dict]:
        view = getattr(self._views, "kvs", None)
        if view is None and self._mirror is not None:
            view = self._mirror.view(self._written)  # `follow()`: the watched copy, while it is current
        if view is not None and key.startswith(self.prefix):  # inside `snapshot()`: no round trip
            wanted = key.encode()
            if prefix:
                return [kv for name, kv in sorted(view.items()) if name.startswith(wanted)]
            return [view[wanted]] if wanted in view else []
        payload: dict[str, Any] = {"key": _b64(key)}
        if prefix:
            payload["range_end"] = _b64(_prefix_end(key))
        if keys_only:
            payload["keys_only"] = True
        result = self._request("/kv/range", payload, write=False)
        kvs = result.get("kvs") or []
        for kv in kvs:
            kv["key"] = base64.b64decode(kv["key"])
            kv["value"] = base64.b64decode(kv.get("value", ""))
        return kvs

    def _get(self, key: str) -> dict | None:
        kvs = self._range(key)
        return kvs[0] if kvs else None

    def _txn(self, compare: list, success: list, failure: list = ()) -> dict:
        self._views.kvs = None  # a write inside `snapshot()`: read what is there from now on
        payload = {"compare": compare, "success": success, "failure": list(failure)}
        return self._request("/kv/txn", payload)

    @staticmethod
    def _ours(key: str, revision: int) -> dict:
        """A transaction's condition: `key` is still the claim key created at `revision`."""
        return {"key": _b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": revision}

    @staticmethod
    def _put(key: str, value: bytes, lease: int) -> dict:
        return {"request_put": {"key": _b64(key), "value": _b64(value), "lease": lease}}

    @staticmethod
    def _delete(key: str) -> dict:
        return {"request_delete_range": {"key": _b64(key)}}

    def follow(self) -> None:
        """Keep a copy of the prefix fresh through an etcd watch (a thread of its own, see
        _etcdwatch) and answer reads from it while it is current: a long-lived client then reads
        etcd only when something changed. Idempotent."""
        with self._keeping:
            if self._mirror is not None:
                return
            from servicefactory.registry._etcdwatch import Mirror

            # its own connections: never a session or a connection shared with a caller's thread;
            # and nothing of `self`, so that a registry nobody uses any more ends its watch (__del__)
            watcher = EtcdRegistry.__new__(EtcdRegistry)
            watcher.__dict__.update(self.__dict__, _clients=[], _readers=[], _held={}, _unsaved={}, _keeper=None,
                                    _views=threading.local(), _mirror=None)

            def read() -> tuple[list[dict], int]:
                payload = {"key": _b64(watcher.prefix), "range_end": _b64(_prefix_end(watcher.prefix))}
                result = watcher._request("/kv/range", payload)  # through etcd3gw's session, as the stream
                kvs = result.get("kvs") or []
                for kv in kvs:
                    kv["key"] = base64.b64decode(kv["key"])
                    kv["value"] = base64.b64decode(kv.get("value", ""))
                return kvs, int(result["header"]["revision"])

            def post_stream(path: str, payload: dict, idle: float) -> Any:
                client = watcher._wire(watcher._current, True).client
                if watcher.security.user and not watcher.security.auth:
                    watcher._authenticate()
                response = client.session.post(client.get_url(path), json=payload, stream=True,
                                               timeout=(REQUEST_TIMEOUT, idle), headers=dict(watcher.security.auth))
                response.raise_for_status()
                return response

            self._mirror = Mirror(self.prefix, read, post_stream, grace=float(self.ttl))

    def __del__(self) -> None:
        mirror = self.__dict__.get("_mirror")
        if mirror is not None:
            mirror.stop()

    def version(self) -> int | None:
        """A number that changes whenever the followed copy changes (None unless `follow()`ing and
        the copy answers, see _etcdwatch): a view cached while it stays the same is still true."""
        mirror = self._mirror
        return mirror.version if mirror is not None and mirror.usable() else None

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Within the block, this thread's reads are answered from one read of the whole prefix,
        made on entry (one round trip for `status` of any number of services, instead of ~3 per
        service); a write by this thread ends it. Only for reports that show one moment."""
        previous = getattr(self._views, "kvs", None)
        self._views.kvs = None
        view = {kv["key"]: kv for kv in self._range(self.prefix, prefix=True)}
        self._views.kvs = view
        try:
            yield
        finally:
            self._views.kvs = previous

    def _grant(self) -> int:
        self._views.kvs = None
        result = self._request("/lease/grant", {"TTL": self.ttl, "ID": 0})
        return int(result["ID"])

    def _revoke(self, lease: int) -> None:
        self._views.kvs = None
        try:
            self._request("/lease/revoke", {"ID": lease})
        except StateError:
            pass  # already gone (expired, or etcd lost it): its keys are gone with it

    # -- owning a name --

    def claim(self, name: str) -> Claim:
        """Take `name` with a transaction that creates its claim key only if absent; AlreadyRunning if held."""
        key = self._key("claim", name)
        value = json.dumps({"pid": os.getpid(), "holder": os.getpid(), "hostname": self.hostname,
                            "create_time": process_start_time(os.getpid()) or 0.0,
                            "claimed": time.time()}).encode()
        try:
            lease = self._grant()
        except Unreachable:
            # a service started while etcd is away serves, and its keeper claims the name once etcd
            # answers (unless another owner has it by then): as after a partition
            return self._keep_claim(Claim(name=name, handle=_Held(0, 0, value)))
        try:
            result = self._txn([{"key": _b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": 0}],
                               [self._put(key, value, lease)])
        except BaseException:
            self._revoke(lease)
            raise
        if not result.get("succeeded"):
            self._revoke(lease)
            record = self.lookup(name)
            if record is not None and record.supervisor and record.state != "running":
                raise AlreadyRunning(f"{name} is {record.state} under {record.supervisor}, which still holds "
                                     f"its name: `servicefactory restart {name}` or `servicefactory stop {name}`")
            where = f" (pid {record.pid} on {record.hostname or '?'}, {record.url or 'no API'})" if record else ""
            raise AlreadyRunning(f"{name} is already running{where}")
        return self._keep_claim(Claim(name=name, handle=_Held(lease, int(result["header"]["revision"]), value)))

    def _keep_claim(self, claim: Claim) -> Claim:
        with self._keeping:
            self._held[claim.name] = (claim, claim.handle)
            self._start_keeper()
        return claim

    def supervisor_name(self, pid: int, hostname: str | None = None) -> str:
        """`_supervisor-HOST-PID` (this host's, or `hostname`'s): pids repeat across hosts (a
        container's supervisor is often pid 1 on each), names in one etcd must not."""
        host = re.sub(r"[^A-Za-z0-9_.-]", "_", self.hostname if hostname is None else hostname) or "_"
        return f"{SUPERVISOR_PREFIX}{host}-{pid}"

    def inheritable(self, claim: Claim) -> tuple[int, ...]:
        """Nothing: a child proves itself through the claim key, which `hand_over` points at it."""
        return ()

    def hand_over(self, claim: Claim, pid: int) -> None:
        """Point the claim key at process `pid` (a supervised child); the starter keeps the lease alive."""
        held: _Held = claim.handle
        data = json.loads(held.value)
        data.update(pid=pid, create_time=process_start_time(pid) or 0.0)
        held.value = json.dumps(data).encode()  # the keeper writes it if etcd is away now
        if held.revision and not held.lost:
            key = self._key("claim", claim.name)
            try:
                self._txn([self._ours(key, held.revision)], [self._put(key, held.value, held.lease)])
            except Unreachable:
                pass

    def publish(self, claim: Claim, record: ServiceRecord) -> None:
        """Write `record` while the claim key is still this claim's (a transaction), and keep it written."""
        held: _Held = claim.handle
        held.record = json.dumps(self._advertised(record).to_dict()).encode()
        self._write_guarded(claim.name, held, "record", held.record)

    def publish_secret(self, claim: Claim, secret: str) -> None:
        """Write `secret` under secret/NAME, apart from the record, on the claim's lease."""
        held: _Held = claim.handle
        held.secret = secret.encode()
        self._write_guarded(claim.name, held, "secret", held.secret)

    def _write_guarded(self, name: str, held: _Held, kind: str, data: bytes, *, defer: bool = True) -> bool:
        """Write under the claim's lease while the claim key is still this claim's; with `defer`, an
        unreachable etcd is left to the keeper (which writes what `held` keeps) instead of raising."""
        if held.lost or not held.revision:
            return False
        claim_key = self._key("claim", name)
        try:
            result = self._txn([self._ours(claim_key, held.revision)],
                               [self._put(self._key(kind, name), data, held.lease)])
        except Unreachable:
            if not defer:
                raise
            return False
        return bool(result.get("succeeded"))

    def _advertised(self, record: ServiceRecord) -> ServiceRecord:
        """`record` with a wildcard bind replaced by this host's address on the way to etcd: what
        other hosts connect to (a loopback bind stays loopback: reachable from this host only)."""
        if record.host not in ("0.0.0.0", "::", ""):
            return record
        advertised = os.environ.get("SERVICEFACTORY_ADVERTISE", "").strip() or self._own_address(record.host)
        if not advertised:
            return record
        return ServiceRecord.from_dict(dict(record.to_dict(), host=advertised))

    def _own_address(self, bound: str) -> str | None:
        """The address this host reaches etcd from: routable on the network the hosts share."""
        host, port = self.endpoints[self._current]
        family = socket.AF_INET6 if ":" in host or bound == "::" else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((host, port))  # UDP: no packet sent, only a route chosen
                return probe.getsockname()[0]
        except OSError:
            return None

    def release(self, claim: Claim) -> None:
        """Delete the claim's keys if they are still its own, then revoke its lease."""
        held: _Held = claim.handle
        with self._keeping:
            if self._held.get(claim.name, (None,))[0] is claim:
                del self._held[claim.name]
        with held.lock:  # after the keeper's turn: it must not take a released name back
            was_lost, held.lost = held.lost, True
        if not held.revision:
            return  # never taken: nothing of it in etcd
        try:
            if not was_lost:
                self._txn([self._ours(self._key("claim", claim.name), held.revision)],
                          [self._delete(self._key(kind, claim.name)) for kind in ("record", "secret", "claim")])
            self._revoke(held.lease)
        except StateError as exc:
            logger.warning("could not withdraw %s from the registry (its lease expires within %d s): %s",
                           claim.name, self.ttl, exc)

    # -- keeping: leases alive, records written, a lost lease re-taken --

    def _start_keeper(self) -> None:
        # called with _keeping held
        if self._keeper is None:
            self._keeper = threading.Thread(target=self._keep, daemon=True, name="servicefactory-etcd")
            self._keeper.start()

    def _keep(self) -> None:
        # its own clients (its own requests sessions): never a session shared with a caller's thread
        keeper = EtcdRegistry.__new__(EtcdRegistry)
        keeper.__dict__.update(self.__dict__, _clients=[], _readers=[], _held={}, _unsaved={}, _keeper=None,
                               _views=threading.local(), _mirror=None)
        unreachable_since: float | None = None
        delay = self.ttl / 3
        while True:
            time.sleep(delay)
            began = time.monotonic()
            with self._keeping:
                held = list(self._held.values())
                unsaved = dict(self._unsaved)
                if not held and not unsaved:
                    self._keeper = None
                    return
            try:
                # every lease first (one request each), then one read for all the checks: a pass
                # must stay well within the TTL however many names this process holds
                alive = []
                for claim, state in held:
                    with state.lock:
                        if keeper._refresh(claim, state):
                            alive.append((claim, state))
                if alive:
                    view = {kv["key"]: kv for kv in keeper._range(keeper.prefix, prefix=True)}
                    for claim, state in alive:
                        with state.lock:
                            keeper._check(claim, state, view)
                for name, spec in unsaved.items():
                    keeper._save(name, spec)
                    with self._keeping:
                        if self._unsaved.get(name) is spec:
                            del self._unsaved[name]
            except StateError as exc:
                if unreachable_since is None:  # logged once per outage, not once per try
                    unreachable_since = time.monotonic()
                    logger.warning("registry unreachable, still serving; retrying: %s", exc)
                delay = min(max(delay * 2, 0.5), self.ttl / 3)
                continue
            if unreachable_since is not None:
                logger.warning("registry reachable again after %.1f s", time.monotonic() - unreachable_since)
                unreachable_since = None
            delay = max(0.05, self.ttl / 3 - (time.monotonic() - began))  # a slow pass must not stretch the TTL

    def _refresh(self, claim: Claim, held: _Held) -> bool:
        """Keep the claim's lease alive (or take the name again if etcd lost it); True if the claim
        stands and its keys should be checked."""
        if held.lost:
            return False
        if not held.revision:
            self._retake(claim, held)  # claimed while etcd was away
            return False
        result = self._request("/lease/keepalive", {"ID": held.lease})
        if int((result.get("result") or {}).get("TTL", -1)) <= 0:
            self._retake(claim, held)
            return False
        return True

    def _check(self, claim: Claim, held: _Held, view: dict[bytes, dict]) -> None:
        """Write again what `view` (one read of the prefix) shows lost or garbled of this claim's keys."""
        if held.lost:
            return  # released since the view was read
        found = view.get(self._key("claim", claim.name).encode())
        if found is None or int(found["create_revision"]) != held.revision:
            # deleted under a live lease (by hand, or a lost directory of keys): the name is not
            # ours any more; as with the state directory, never take it back behind a new owner
            held.lost = True
            logger.warning("%s: its claim was removed from the registry; no longer publishing it", claim.name)
            return
        if found["value"] != held.value:  # a hand-over made while etcd was away
            self._write_guarded(claim.name, held, "claim", held.value, defer=False)
        for kind, data in (("record", held.record), ("secret", held.secret)):
            if data is not None:
                current = view.get(self._key(kind, claim.name).encode())
                if current is None or current["value"] != data:  # lost or garbled: write it again
                    self._write_guarded(claim.name, held, kind, data, defer=False)

    def _retake(self, claim: Claim, held: _Held) -> None:
        """etcd lost the lease (expired while cut off, or a restored etcd): claim the name again
        under a new lease, unless another owner took it meanwhile."""
        lease = self._grant()
        key = self._key("claim", claim.name)
        result = self._txn([{"key": _b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": 0}],
                           [self._put(key, held.value, lease)])
        if not result.get("succeeded"):
            self._revoke(lease)
            held.lost = True
            logger.error("%s: registered again by another owner while this one was cut off; "
                         "no longer publishing it", claim.name)
            return
        first = not held.revision
        held.lease, held.revision = lease, int(result["header"]["revision"])
        for kind, data in (("record", held.record), ("secret", held.secret)):
            if data is not None:
                self._write_guarded(claim.name, held, kind, data, defer=False)
        logger.warning("%s: registered %s", claim.name,
                       "now that the registry answers" if first else "again (the registry had lost its lease)")

    # -- reading --

    def _claim_of(self, name: str) -> dict | None:
        found = self._get(self._key("claim", name))
        if found is None:
            return None
        try:
            data = json.loads(found["value"])
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        data["_revision"] = int(found["create_revision"])
        return data

    @staticmethod
    def _parse(name: str, value: bytes) -> ServiceRecord | None:
        try:
            record = ServiceRecord.from_dict(json.loads(value))
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        return record if record.name == name else None

    def lookup(self, name: str) -> ServiceRecord | None:
        """The record published under `name`, or None (missing or garbled); StateError if etcd is unreachable."""
        found = self._get(self._key("record", name))
        return None if found is None else self._parse(name, found["value"])

    def _names_of(self, kind: str, beginning: str = "") -> list[str]:
        start = f"{self.prefix}{kind}/"
        return [kv["key"].decode(errors="replace")[len(start):]
                for kv in self._range(start + beginning, prefix=True, keys_only=True)]

    def names(self) -> list[str]:
        """Every name with a claim or a record, sorted."""
        return sorted(set(self._names_of("claim")) | set(self._names_of("record")))

    def instances_of(self, service: str) -> list[str]:
        """`service` itself if registered and its instances' ids (`Test/1`, ...), in instance order."""
        check_name(service)
        found = set()
        for kind in ("claim", "record"):
            found.update(name for name in self._names_of(kind, service)
                         if name == service or name.startswith(service + INSTANCE_SEPARATOR))
        return sorted(found, key=lambda name: split_instance(name)[1] or 0)

    def records(self) -> Iterator[ServiceRecord]:
        """Every published record (one range request)."""
        start = f"{self.prefix}record/"
        for kv in self._range(start, prefix=True):
            record = self._parse(kv["key"].decode(errors="replace")[len(start):], kv["value"])
            if record is not None:
                yield record

    def secret(self, name: str) -> str | None:
        """The secret published for `name`, or None."""
        found = self._get(self._key("secret", name))
        return found["value"].decode(errors="replace").strip() or None if found else None

    def token(self) -> str | None:
        """$SERVICEFACTORY_TOKEN, else this host's token file: etcd never holds the API token."""
        return self.local.token()

    def token_hint(self) -> str:
        """Where a token can be put: $SERVICEFACTORY_TOKEN (the same on every host), or this host's file."""
        return f"$SERVICEFACTORY_TOKEN or {self.local.token_hint()}"

    # -- liveness --

    def is_held(self, name: str) -> bool:
        """Whether a claim key exists: a live process keeps its lease."""
        return self._get(self._key("claim", name)) is not None

    def _is_here(self, hostname: str | None) -> bool:
        return not hostname or hostname == self.hostname

    def owner(self, name: str) -> ServiceRecord | None:
        """What the claim key says of the live holder (its pid, its supervisor), or None."""
        claim = self._claim_of(name)
        if claim is None or not isinstance(claim.get("pid"), int):
            return None
        pid, holder, hostname = claim["pid"], claim.get("holder"), claim.get("hostname") or ""
        supervisor = self.supervisor_name(holder, hostname) if isinstance(holder, int) and holder != pid else None
        if self._is_here(hostname) and is_dead(ServiceRecord(name, pid, create_time=claim.get("create_time") or 0.0)):
            if supervisor is None:
                return None
            pid = 0  # a supervisor between two runs of its child
        started = float(claim.get("create_time") or 0.0) if pid else 0.0
        return ServiceRecord(name, pid, create_time=started, started=started or time.time(), hostname=hostname,
                             supervisor=supervisor, state="running" if pid else "backoff")

    def _claim_names(self, claim: dict, record: ServiceRecord) -> bool:
        """Whether the claim key is the one `record` was written under (same host, its pid or its supervisor)."""
        if (claim.get("hostname") or "") != (record.hostname or claim.get("hostname") or ""):
            return False
        if record.supervisor:
            return record.supervisor == self.supervisor_name(claim.get("holder"), claim.get("hostname") or "")
        return claim.get("pid") == record.pid

    def is_current(self, record: ServiceRecord) -> bool:
        """Whether `record` was written by the name's present owner."""
        claim = self._claim_of(record.name)
        if claim is None:
            return True  # nobody holds it: nothing newer to prefer
        if record.supervisor and self._claim_names(claim, record):
            if not record.pid and claim.get("pid") == claim.get("holder"):
                return True  # no process yet (waiting for a dependency, blocked), none started since
            return claim.get("pid") == record.pid or (self._is_here(claim.get("hostname")) and is_dead(
                ServiceRecord(record.name, claim.get("pid") or 0, create_time=claim.get("create_time") or 0.0)))
        return self._claim_names(claim, record)

    def just_claimed(self, name: str) -> bool:
        """A claim taken moments ago whose owner has not published yet."""
        claim = self._claim_of(name)
        if claim is None or self._get(self._key("record", name)) is not None:
            return False
        claimed = claim.get("claimed")
        return isinstance(claimed, (int, float)) and abs(time.time() - claimed) < 3.0

    def has_leftovers(self, name: str) -> bool:
        """Whether anything of `name` is still registered (a claim or a record)."""
        return self.is_held(name) or self._get(self._key("record", name)) is not None

    def is_gone(self, record: ServiceRecord) -> bool:
        """This host's process: /proc says; another host's: its claim no longer names it (the lease lapsed)."""
        if self._is_here(record.hostname):
            return is_dead(record)
        claim = self._claim_of(record.name)
        if claim is None:
            return True
        if not self._claim_names(claim, record):
            return True
        return claim.get("pid") != record.pid and not record.supervisor

    def is_suspended(self, record: ServiceRecord) -> bool:
        """Whether this host's recorded process is stopped (SIGSTOP); another host's cannot be seen."""
        return self._is_here(record.hostname) and self.local.is_suspended(record)

    def owner_alive(self, record: ServiceRecord) -> bool:
        """Whether the claim key names `record`'s process (and, on this host, that process lives)."""
        if not record.pid:
            return False
        claim = self._claim_of(record.name)
        if claim is None or not self._claim_names(claim, record) or claim.get("pid") != record.pid:
            return False
        return not (self._is_here(record.hostname) and is_dead(record))

    def signal(self, record: ServiceRecord, signum: int, *, group: bool = False) -> bool:
        """Signal the service only on this host and only if proven (`owner_alive`); another host's is
        stopped through its API, never by a pid that means another process here."""
        if not self._is_here(record.hostname) or not self.owner_alive(record):
            return False
        return send_signal(record.pid, signum, group=group)

    def usage(self, record: ServiceRecord) -> dict[str, Any]:
        """cpu and memory of this host's service; {} for another host's."""
        return self.local.usage(record) if self._is_here(record.hostname) else {}

    def clean(self, name: str) -> None:
        """Delete a record and secret left without a claim (a transaction: never under a live claim)."""
        claim_key = self._key("claim", name)
        self._txn([{"key": _b64(claim_key), "result": "EQUAL", "target": "CREATE", "create_revision": 0}],
                  [self._delete(self._key("record", name)), self._delete(self._key("secret", name))])

    # -- how services were run --

    def remember(self, name: str, spec: dict[str, Any]) -> None:
        """Keep how `name` was run under run/NAME (no lease: it outlives the run); while etcd is away
        the keeper writes it once etcd answers."""
        try:
            self._save(name, spec)
        except Unreachable:
            with self._keeping:
                self._unsaved[name] = spec
                self._start_keeper()

    def _save(self, name: str, spec: dict[str, Any]) -> None:
        self._views.kvs = None
        key = self._key("run", name)
        self._request("/kv/put", {"key": _b64(key), "value": _b64(json.dumps(spec))})

    def remembered(self, name: str) -> dict[str, Any] | None:
        """How `name` was last run, if known."""
        found = self._get(self._key("run", name))
        try:
            spec = json.loads(found["value"]) if found else None
        except ValueError:
            return None
        return spec if isinstance(spec, dict) and isinstance(spec.get("target"), str) else None

    def remembered_names(self) -> list[str]:
        """Every name remembered whose last stop was not asked for with `stop`, sorted."""
        start = f"{self.prefix}run/"
        names = []
        for kv in self._range(start, prefix=True):
            try:
                spec = json.loads(kv["value"])
            except ValueError:
                continue
            if isinstance(spec, dict) and isinstance(spec.get("target"), str) and not spec.get("stopped_by_user"):
                names.append(kv["key"].decode(errors="replace")[len(start):])
        return sorted(names)

    def mark_stopped(self, name: str) -> None:
        """Note that `name` was stopped on purpose."""
        spec = self.remembered(name)
        if spec is not None and not spec.get("stopped_by_user"):
            self.remember(name, dict(spec, stopped_by_user=True))

    # -- the place --

    def ensure(self) -> None:
        """Check that etcd answers (StateError, exit 10, otherwise) and that this host's directory is usable."""
        self._request("/maintenance/status", {}, write=False)
        self.local.ensure()

    def check_safe(self) -> None:
        """Nothing to check before reading: etcd's own auth and TLS decide who may write to it."""

    def exists(self) -> bool:
        """True once etcd answers (it can hold records); StateError (exit 10) if it is unreachable."""
        self._request("/maintenance/status", {}, write=False)
        return True

    def environment(self) -> dict[str, str]:
        """$SERVICEFACTORY_REGISTRY, and the TTL and local directory this process uses."""
        return {"SERVICEFACTORY_REGISTRY": self.where, LEASE_TTL_ENV: str(self.ttl), **self.local.environment()}

    def private_dir(self) -> Path:
        """This host's state directory (logs, a supervisor's working directory)."""
        return self.local.ensure()

    def log_file(self, name: str) -> Path:
        """Where `name` logs by default: this host's state directory."""
        return self.local.log_file(name)

    def log_of(self, name: str) -> Path:
        """Where `name` logs: its record's log path, else the one it was last run with, else `log_file`."""
        from pathlib import Path

        record = self.lookup(name)
        if record is not None and record.log_path and self._is_here(record.hostname):
            return Path(record.log_path)
        remembered = self.remembered(name) or {}
        if isinstance(remembered.get("log_file"), str):
            return Path(remembered["log_file"])
        return self.log_file(name)

    def logs(self) -> dict[str, Any]:
        """The log files on this host of every service registered or remembered (others' hosts keep theirs)."""
        found = self.local.logs()
        for name in set(self.names()) | set(self.remembered_names()):
            if not name.startswith("_"):
                path = self.log_of(name)
                if os.path.isfile(path) and not os.path.islink(path):
                    found[name] = path
        return dict(sorted(found.items()))


def _prefix_end(prefix: str) -> bytes:
    """The range end that covers every key starting with `prefix`."""
    data = bytearray(prefix.encode())
    data[-1] += 1
    return bytes(data)
