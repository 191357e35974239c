"""Calling a running service: find its address, send the action, decode the answer or raise.

The default transport is a small keep-alive HTTP/1.1 client over a raw socket, one connection per
thread and address: it costs a fraction of what `requests` costs per call and nothing at import.
Pass `session=requests.Session()` to go through requests instead (proxies, adapters, mocks).

Every call names the service it means (`Servicefactory-Service: NAME`); a service of another name
answers 421 and runs nothing, so an address that outlived its service can never reach another one.
What a caller may retry is typed: `ServiceNotRunning` (and its `ServiceUnavailable`, a 503 from a
stopping service) means the action did not run; `ProtocolError` means it may or may not have.
"""
from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
from _weakrefset import WeakSet

from servicefactory import _spread
from servicefactory._names import connect_host, host_port, valid_action_name
from servicefactory.errors import (ActionFailed, InvalidData, ProtocolError, ServiceNotRunning,
                                   ServiceTimeout, ServiceUnavailable,
                                   Unauthorized, UnknownAction)

TYPE_CHECKING = False  # typing is for type checkers only: importing it would slow `servicefactory perform`
if TYPE_CHECKING:
    from typing import Any

    from servicefactory.registry.base import Registry

DEFAULT_TIMEOUT = 10.0
#: connections a call to one instance (`Test/2`) on a port its service's instances share may open
#: until the kernel hands one to that instance (each other instance answers 421 and runs nothing)
SHARED_PORT_TRIES = 64
#: whether the registry a client finds for itself keeps its view current through a watch when it
#: can (etcd's `follow`: a thread and a stream); the one-shot CLI turns it off
follow_registries = True
_INFINITY = float("inf")
#: bodies above this are sent in pieces, watching for an early answer (a 413 sent before the body is read)
_PIECE = 256 * 1024

# json.dumps(allow_nan=False) builds a new encoder per call (a fifth of a small call's client time)
_ENCODER = json.JSONEncoder(allow_nan=False)
_DECODER = json.JSONDecoder()
# and JSONEncoder.encode still builds json's C encoder on every call (a third of encoding a small
# value): build it once. Without the circular check it holds no state, so threads can share it; a
# value that contains itself then ends in RecursionError, which encode() reports.
_ENCODE = None
if json.encoder.c_make_encoder is not None:  # None on a Python built without _json
    _ENCODE = json.encoder.c_make_encoder(None, _ENCODER.default, json.encoder.encode_basestring_ascii, None,
                                          _ENCODER.key_separator, _ENCODER.item_separator, False, False, False)
_SCAN = _DECODER.scan_once  # JSONDecoder.decode around it costs as much again, for two regex matches
# os.environ.get re-encodes each key per call; the mapping beneath it is CPython's plain dict of bytes
_ENVIRON = getattr(os.environ, "_data", None)


class _Misdirected(ServiceNotRunning):
    """The address answered as another service (421): the record it came from is out of date."""


class _Refused(ServiceNotRunning):
    """Nothing listens at the address: refused before a byte was sent."""


def encode(data: Any) -> bytes:
    """JSON-encode the data to send; raise InvalidData if it cannot be."""
    if data is None:
        return b""
    try:
        if _ENCODE is None or type(data) is str:
            return _ENCODER.encode(data).encode()
        return "".join(_ENCODE(data, 0)).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidData(f"data is not JSON serialisable: {exc}") from None
    except RecursionError:
        raise InvalidData("data is nested too deeply (or contains itself) to send as JSON") from None


def _loads(text: str) -> Any:
    """json.loads for an answer: the scanner alone when the text is one value (and blanks after it)."""
    try:
        value, end = _SCAN(text, 0)
    except StopIteration:
        end = -1
    if end == len(text) or (end > 0 and not text[end:].strip(" \t\n\r")):
        return value
    return _DECODER.decode(text)  # leading blanks, extra data or nothing: its verdict, its error


def decode_answer(status: int, content_type: str, body: bytes, action: str, name: str) -> Any:
    """Turn an HTTP answer into the handler's result, or raise the matching typed error."""
    if status == 200 and content_type.startswith("text/plain") and body.strip() == b"ok":
        return None  # a handler that returned None, answered to a client that did not ask for JSON
    try:
        payload = _loads(body.decode()) if body else None  # str: no guessing the encoding
    except ValueError:
        if status in (413, 421, 503):  # a proxy's or another server's page: the status says enough
            payload = None
        elif status == 200 and action == "metrics":
            # the built-in /metrics route answers Prometheus text (a handler that overrides it answers
            # JSON and never gets here): it is a scrape, not an action
            raise UnknownAction(f"{name} has no action 'metrics': GET /metrics is its Prometheus scrape "
                                f"(e.g. curl); the action 'health' answers the same counts as JSON") from None
        else:
            raise ProtocolError(f"{name} answered {status} with a body that is not JSON") from None
    if status == 200:
        return payload
    error = payload.get("error") if isinstance(payload, dict) else None
    kind = error.get("type", "") if isinstance(error, dict) else ""
    message = error.get("message", "") if isinstance(error, dict) else str(error or "")
    if status == 404:
        raise UnknownAction(f"{name} has no action {action!r}")
    if status in (401, 403, 429):  # 429: too many wrong tokens from this peer, for a while
        raise Unauthorized(f"{name} refused the request: {message}")
    if status in (400, 413, 415, 422):  # 422: the data does not match the handler's type hints
        raise InvalidData(f"{name} rejected the data for {action!r}: {message or 'body over the limit'}")
    if status == 421:
        raise _Misdirected(f"{name} is not running: its recorded address now serves another service")
    if status == 503:
        raise ServiceUnavailable(f"{name} is stopping and did not run {action!r} (not run; safe to retry)")
    if status == 500 and kind:
        raise ActionFailed(f"{name}.{action} failed: {kind}: {message}", kind, message, status)
    raise ProtocolError(f"{name} answered HTTP {status} to {action!r}: {message or body[:200]!r}")


def _owner_is_dead(registry: Registry, record: Any) -> bool:
    """Whether the process that published `record` on this host has exited (the registry's proof)."""
    if not record.pid or not record.create_time:
        return False  # a record that names no process: nothing to check here
    if record.hostname and record.hostname != socket.gethostname():
        return False  # another host's process: this host cannot see it
    return registry.is_gone(record)


def _host_header(address: tuple[str, int]) -> str:
    return host_port(*address)


class _Pool(dict):
    """One thread's connections; closed with the thread, so no socket is left for the collector."""

    def __del__(self) -> None:
        for connection in self.values():
            connection.close()


class _Unread(Exception):
    """The server reset the connection before answering: the kernel does that only when a socket is
    closed with received bytes still unread, so the request was not read whole, hence not run.
    (A server that read the request and then died closes with a FIN, which stays 'may have run'.)"""


class _Stale(Exception):
    """The request could not be sent: the peer had closed the connection."""


_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT
# the socket's own recv: on a TLS socket it peeks at the raw stream (ssl's recv refuses flags)
_recv = socket.socket.recv


class _Connection:
    """One keep-alive HTTP/1.1 connection.

    The socket stays in blocking mode and the kernel enforces the timeout (SO_RCVTIMEO and
    SO_SNDTIMEO, set only when it changes): a call costs one send and one recv, where Python's own
    timeouts would add a poll per read and a mode switch per peek.
    """

    __slots__ = ("sock", "open", "limit")

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(None)
        self.sock = sock
        self.open = True
        self.limit = 0.0

    def _limit(self, seconds: float) -> None:
        """Let each later send or recv block at most `seconds` (whole milliseconds, at least one)."""
        milliseconds = int(seconds * 1000) or 1
        if milliseconds != self.limit:
            value = struct.pack("ll", milliseconds // 1000, milliseconds % 1000 * 1000)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
            self.limit = milliseconds

    def usable(self) -> bool:
        """Whether the idle connection is still open and has nothing unread (peeked, without blocking)."""
        if not self.open:
            return False
        try:
            _recv(self.sock, 1, _PEEK)
        except BlockingIOError:
            return True  # nothing to read: open and quiet, as an idle keep-alive connection should be
        except OSError:
            return False
        return False  # end of file, or bytes nobody asked for: either way not reusable

    def close(self) -> None:
        """Close the socket; the pool then opens a new connection."""
        self.open = False
        try:
            self.sock.close()
        except OSError:
            pass

    def _remaining(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("deadline passed")
        self._limit(remaining)

    def exchange(self, request: bytes, deadline: float, timeout: float) -> tuple[int, str, bytes]:
        """Send one request and read its answer: (status, content type, body)."""
        sock = self.sock
        self._limit(timeout)
        early = False
        try:
            if len(request) <= _PIECE:
                sock.sendall(request)
            else:
                early = self._send_watching(request, deadline)
        except (BrokenPipeError, ConnectionResetError):
            # the server may have answered (413) and closed before reading the rest: read that answer
            answer = self._answer_left(deadline)
            if answer is None:
                raise _Stale() from None
            return answer
        answer = self._read_answer(deadline)
        if early:
            self.close()  # the rest of the body was never sent: the connection cannot carry another call
        return answer

    def _send_watching(self, request: bytes, deadline: float) -> bool:
        """Send a large request in pieces; stop early (True) if the server answers before the end."""
        view = memoryview(request)
        sent = 0
        while sent < len(view):
            self._remaining(deadline)
            sent += self.sock.send(view[sent:sent + _PIECE])
            try:
                if self.sock.recv(1, _PEEK):
                    return True  # answered before reading the whole body (413): sending more is waste
            except BlockingIOError:
                pass
        return False

    def _answer_left(self, deadline: float) -> tuple[int, str, bytes] | None:
        """The answer a server sent before it closed on our request, if one is readable; else None."""
        try:
            self._limit(min(1.0, max(0.001, deadline - time.monotonic())))
            answer = self._read_answer(deadline)
        except OSError:
            return None
        self.close()
        return answer

    def _read_answer(self, deadline: float) -> tuple[int, str, bytes]:
        sock = self.sock
        buffer = b""
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end >= 0:
                if buffer.startswith(b"HTTP/1.1 100") or buffer.startswith(b"HTTP/1.0 100"):
                    buffer = buffer[end + 4:]  # an interim 100 Continue: the answer follows
                    continue
                break
            if buffer:
                self._remaining(deadline)
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                if not buffer:
                    raise _Unread() from None
                data = b""
            if not data:
                raise OSError("connection closed before the answer" if not buffer else
                              "connection closed in the middle of the answer")
            buffer += data
        head, rest = buffer[:end], buffer[end + 4:]
        code = head[9:12]
        if head[:5] != b"HTTP/" or not (code.isdigit() and code.isascii()) or head[12:13] not in (b" ", b"\r", b""):
            status_line = head.partition(b"\r\n")[0]
            raise OSError(f"malformed status line {status_line[:80]!r}")
        status = int(code)
        lower = head.lower()  # header names are case-insensitive: find them in one lower-cased copy
        length_text = _header(head, lower, b"\r\ncontent-length:")
        if length_text is not None:
            if not (length_text.isdigit() and length_text.isascii()):
                raise OSError(f"invalid Content-Length {length_text[:20]!r}")
            length = int(length_text)
            while len(rest) < length:
                self._remaining(deadline)
                data = sock.recv(min(1 << 20, length - len(rest)))
                if not data:
                    raise OSError("connection closed in the middle of the answer")
                rest += data
            body = rest[:length]
        else:  # no length: the body runs to the end of the connection
            chunks = [rest]
            while True:
                self._remaining(deadline)
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
            body = b"".join(chunks)
            self.close()
        if b"\r\nconnection:" in lower and b"close" in (_header(head, lower, b"\r\nconnection:") or b"").lower():
            self.close()
        # the content type only tells the plain `ok` (a None answered to curl) from JSON
        content_type = (_header(head, lower, b"\r\ncontent-type:") or b"") if body[:2] == b"ok" else b""
        return status, content_type.decode("latin-1"), body


def _header(head: bytes, lower: bytes, key: bytes) -> bytes | None:
    """The value of the first header named `key` (lower case, with its CRLF and colon), or None."""
    start = lower.find(key)
    if start < 0:
        return None
    start += len(key)
    end = lower.find(b"\r\n", start)
    return head[start:end if end >= 0 else len(head)].strip()


def _caused_by(error: BaseException | None, kind: type, depth: int = 0) -> bool:
    # requests wraps urllib3's errors, which wrap the socket's: look through args, reason and context
    if error is None or depth > 8:
        return False
    if isinstance(error, kind):
        return True
    inner = [arg for arg in getattr(error, "args", ()) if isinstance(arg, BaseException)]
    inner += [getattr(error, "reason", None), error.__cause__, error.__context__]
    return any(_caused_by(item, kind, depth + 1) for item in inner if isinstance(item, BaseException))


class Client:
    """A caller's state, kept between calls: addresses, tokens, registries, request heads and one
    keep-alive connection per thread and address. `default` serves `perform()` and `Service.perform`;
    a fresh `Client()` starts with nothing remembered (each test gets one)."""

    __slots__ = ("_addresses", "_tokens", "_registries", "_registry_keys", "_heads", "_valid_actions", "_secure",
                 "_local", "__weakref__")

    def __init__(self) -> None:
        self._addresses: dict[tuple[str, str], tuple[str, int]] = {}
        self._tokens: dict[str, str | None] = {}
        self._registries: dict[tuple, Any] = {}
        self._registry_keys: dict[int, str] = {}
        self._heads: dict[tuple, bytes] = {}  # request heads up to "Content-Length: ", per address, name, action, token
        self._valid_actions: set[str] = set()
        self._secure: set[tuple[str, int]] = set()  # addresses whose service serves TLS (its record, or tls=True)
        self._local = threading.local()
        _clients.add(self)

    def _default_registry(self) -> Registry:
        # one registry per environment that decides where the state directory is: no Path per call
        if _ENVIRON is not None:
            get = _ENVIRON.get
            key = (get(b"SERVICEFACTORY_HOME"), get(b"XDG_RUNTIME_DIR"), get(b"HOME"), get(b"SERVICEFACTORY_REGISTRY"))
        else:
            key = (os.environ.get("SERVICEFACTORY_HOME"), os.environ.get("XDG_RUNTIME_DIR"), os.environ.get("HOME"),
                   os.environ.get("SERVICEFACTORY_REGISTRY"))
        if key[0] and key[0][:1] not in (b"/", "/"):
            key += (os.getcwd(),)  # a relative SERVICEFACTORY_HOME is read against the current directory
        registry = self._registries.get(key)
        if registry is None:
            from servicefactory.registry.backends import default_registry
            registry = self._registries[key] = default_registry()
            self._registry_keys[id(registry)] = registry.where  # kept alive by _registries: the id stays its own
            if follow_registries and hasattr(registry, "follow"):
                registry.follow()  # etcd: a watch keeps this process's view current (not the one-shot CLI)
        return registry

    def _registry_key(self, registry: Registry) -> str:
        key = self._registry_keys.get(id(registry))
        return key if key is not None else registry.where

    def resolve(self, name: str, registry: Registry | None = None, fallback: tuple[str, int] | None = None,
                fresh: bool = False) -> tuple[str, int]:
        """The (host, port) of service `name`: its live record's, else `fallback`, else ServiceNotRunning.

        A record whose process is gone (or whose pid now names another process) is never used: its port
        may belong to anyone by now. Addresses are cached; `fresh=True` reads the registry again.
        """
        if registry is None:
            registry = self._default_registry()
        key = (self._registry_key(registry), name)
        if not fresh:
            address = self._addresses.get(key)
            if address is not None:
                return address
        record = registry.lookup(name)
        dead = record is not None and _owner_is_dead(registry, record)
        if record is not None and not dead and record.address is not None:
            address = record.address
            if getattr(record, "tls", False):
                self._secure.add(address)  # from now on only a verified TLS connection is made to it
            else:
                self._secure.discard(address)
        elif record is not None and not dead and record.state == "running" and fallback is None:
            if record.target.startswith("command: "):  # an application file's command service (appfile)
                raise UnknownAction(f"{name} is a command ({record.target[len('command: '):]}), not a Service "
                                    f"class: it has no actions to perform")
            raise ServiceNotRunning(f"{name} runs without an API (its class declares no Service.API.endpoint): "
                                    f"there is nothing to perform")
        elif fallback is not None and fallback[1]:
            address = (connect_host(fallback[0]), fallback[1])  # the server checks the name we send
        elif dead and record.supervisor and record.state in ("starting", "running", "backoff"):
            raise ServiceNotRunning(f"{name} is not running right now: its supervisor is restarting it")
        elif dead:
            raise ServiceNotRunning(f"{name} is not running (its record names pid {record.pid}, which has exited)")
        else:
            if not registry.exists():
                raise ServiceNotRunning(f"{name} is not running, or cannot be found: the state directory "
                                        f"{registry.where} does not exist (deleted? services started with it "
                                        f"keep running)")
            raise ServiceNotRunning(f"{name} is not running (nothing registered in {registry.where})")
        self._addresses[key] = address
        return address

    def _token(self, registry: Registry) -> str | None:
        key = self._registry_key(registry)
        if key not in self._tokens:
            self._tokens[key] = registry.token()
        return self._tokens[key]

    def perform(self, name: str, action: str, data: Any = None, *, timeout: float = DEFAULT_TIMEOUT,
                registry: Registry | None = None, fallback: tuple[str, int] | None = None, session: Any = None,
                token: str | None = None, ca_file: str | None = None, tls: bool = False) -> Any:
        """Call `action` on the running service `name` with JSON `data`; return the decoded result.

        Retried once, on a fresh lookup, only when the action certainly did not run: the address was
        refused, answered as another service (421), or the service was stopping (503).
        A service whose record says TLS (or a `fallback` with `tls=True`) is called over TLS, its
        certificate verified against `ca_file` (else $SERVICEFACTORY_CA_FILE, else the system's CAs).
        """
        if registry is None:
            registry = self._default_registry()
        if not isinstance(timeout, (int, float)) or not 0 < timeout < _INFINITY:  # also false for nan
            raise InvalidData(f"timeout must be a positive number of seconds, not {timeout!r}")
        if action not in self._valid_actions:
            if not valid_action_name(action):
                raise InvalidData(f"invalid action name {action!r}: use letters, digits, '_', '-' and single dots")
            self._valid_actions.add(action)
        body = encode(data)
        registry_key = self._registry_key(registry)
        if token is None:
            token = self._tokens[registry_key] if registry_key in self._tokens else self._token(registry)
        if tls and fallback is not None:
            self._secure.add((connect_host(fallback[0]), fallback[1]))
        key = (registry_key, name)
        address = self._addresses.get(key)
        if address is None:
            # a service run as several instances: each call goes to the next live one
            spread = _spread.cached(key) or _spread.gather(key, name, registry, _owner_is_dead, self._secure)
            if spread is not None:
                return self._perform_spread(spread, key, name, action, body, timeout, session, token, ca_file, registry)
            try:
                address = self.resolve(name, registry, fallback)
            except ServiceNotRunning:
                if _spread.has_instances(name, registry):
                    raise ServiceNotRunning(f"no instance of {name} is running right now (its supervisor may be "
                                            f"restarting them; see `servicefactory status {name}`)") from None
                raise
        try:
            return self._send(address, name, action, body, timeout, session, token, ca_file)
        except ServiceNotRunning as first:  # nothing ran: refused, another service, or stopping
            self._addresses.pop((registry_key, name), None)
            fresh = self.resolve(name, registry, fallback, fresh=True)  # it may be back elsewhere
            if fresh == address and isinstance(first, _Misdirected) and _spread.INSTANCE_SEPARATOR in name:
                # one instance on the port its service's instances share: another one took the
                # connection (and closed it); a new connection may reach the one meant
                for _ in range(SHARED_PORT_TRIES):
                    try:
                        return self._send(address, name, action, body, timeout, session, token, ca_file)
                    except _Misdirected:
                        continue
            if fresh == address and isinstance(first, _Misdirected):
                self._addresses.pop((registry_key, name), None)  # the registry still names the other service's port
                raise ServiceNotRunning(f"{name} is not running: {host_port(*address)} now serves another "
                                        f"service") from None
            try:
                return self._send(fresh, name, action, body, timeout, session, token, ca_file)
            except ServiceNotRunning:
                self._addresses.pop((registry_key, name), None)
                raise
        except ProtocolError:  # e.g. the port now speaks TLS, or no longer does: read the record again next time
            self._addresses.pop((registry_key, name), None)
            raise

    def _perform_spread(self, spread: _spread.Spread, key: tuple[str, str], name: str, action: str, body: bytes,
                        timeout: float, session: Any, token: str | None, ca_file: str | None,
                        registry: Registry) -> Any:
        """Send the call to the next live instance; one that certainly did not run it (refused, 421, 503)
        passes it on to the next, each instance tried once, on a fresh view of the registry."""
        tried: dict[tuple, int] = {}
        last = ServiceNotRunning(f"{name} is not running: no live instance")  # until an instance says why
        while True:
            entry = spread.next(tried)
            if entry is None:
                raise last
            target, address, sharing = entry
            try:
                return self._send(address, target, action, body, timeout, session, token, ca_file)
            except ServiceNotRunning as exc:
                last = exc
                tried[target, address] = tried.get((target, address), 0) + 1
                _spread.forget(key)
                fresh = _spread.gather(key, name, registry, _owner_is_dead, self._secure)
                if fresh is None:
                    raise
                spread = fresh
            except ProtocolError:  # it may have run: never sent again; read the registry next time
                _spread.forget(key)
                raise

    def _head(self, address: tuple[str, int], name: str, action: str, token: str | None) -> bytes:
        """The request head up to the body's length, built once per address, service, action and token."""
        key = (address, name, action, token)
        head = self._heads.get(key)
        if head is None:
            if not name.isprintable() or not name.isascii() or ":" in name:
                raise InvalidData(f"invalid service name {name!r}")
            lines = [f"POST /{action} HTTP/1.1", f"Host: {host_port(*address)}", "Accept: application/json",
                     "Content-Type: application/json", f"Servicefactory-Service: {name}"]
            if token:
                lines.append(f"Authorization: Bearer {token}")
            lines.append("Content-Length: ")
            head = "\r\n".join(lines).encode("latin-1")
            if len(self._heads) > 4096:
                self._heads.clear()  # a program calling ever new names: keep the cache bounded
            self._heads[key] = head
        return head

    def _send(self, address: tuple[str, int], name: str, action: str, body: bytes, timeout: float,
              session: Any, token: str | None, ca_file: str | None = None) -> Any:
        if session is not None:
            return self._send_requests(session, address, name, action, body, timeout, token, ca_file)
        request = b"%s%d\r\n\r\n%s" % (self._head(address, name, action, token), len(body), body)
        deadline = time.monotonic() + timeout
        for attempt in (1, 2):
            connection, reused = self._connection(address, name, timeout, ca_file)
            try:
                status, content_type, answer = connection.exchange(request, deadline, timeout)
            except _Stale:
                connection.close()
                if reused and attempt == 1:
                    continue  # the request could not be sent at all: nothing ran, sending again is safe
                raise ServiceUnavailable(f"{name} closed the connection before {action!r} was sent "
                                         f"(not run; safe to retry)") from None
            except _Unread:
                # a reset with no answer: the server closed with our request still unread (a stopping
                # service's accept queue or last moment), and it runs nothing it has not read whole
                connection.close()
                raise ServiceUnavailable(f"{name} reset the connection without reading {action!r} "
                                         f"(not run; safe to retry)") from None
            except (socket.timeout, BlockingIOError):  # BlockingIOError: the kernel's SO_RCVTIMEO ran out
                connection.close()
                raise ServiceTimeout(f"{name} did not answer {action!r} within {timeout:g} s") from None
            except OSError as exc:
                connection.close()
                raise ProtocolError(f"{name} closed the connection without a complete answer ({exc}); "
                                    f"{action!r} may or may not have run") from None
            except BaseException:
                connection.close()  # half-read: the next call on it would read this call's answer
                raise
            return decode_answer(status, content_type, answer, action, name)
        raise AssertionError("unreachable")

    def _connection(self, address: tuple[str, int], name: str, timeout: float,
                    ca_file: str | None = None) -> tuple["_Connection", bool]:
        try:
            pool = self._local.pool
        except AttributeError:
            pool = self._local.pool = _Pool()
        # a TLS connection was verified against one CA file: a call trusting another one needs its own
        key: Any = address if address not in self._secure else (
            address, ca_file or os.environ.get("SERVICEFACTORY_CA_FILE"))
        connection = pool.get(key)
        if connection is not None:
            if connection.usable():
                return connection, True
            connection.close()  # closed by the server while idle: never send a request into it
        host, port = address
        try:
            # an ASCII host goes as bytes: for a str, getaddrinfo() loads the idna codec, ~2.5 ms of a
            # cold `servicefactory perform`; a non-ASCII name still needs it
            sock = socket.create_connection((host.encode() if host.isascii() else host, port),
                                            timeout=min(timeout, 5.0))
        except ConnectionRefusedError:
            raise _Refused(f"{name} is not running (connection to {_host_header(address)} refused)") from None
        except socket.timeout:
            raise ServiceTimeout(f"connecting to {name} at {_host_header(address)} timed out") from None
        except OSError as exc:
            raise ServiceNotRunning(f"{name} cannot be reached at {_host_header(address)}: "
                                    f"{exc.strerror or exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if address in self._secure:  # only here is ssl imported: a plain call never pays for it
            from servicefactory.http._tls import TLSConnection, wrap
            connection = pool[key] = TLSConnection(wrap(sock, host, name, _host_header(address), ca_file))
            return connection, False
        connection = pool[address] = _Connection(sock)
        return connection, False

    def _send_requests(self, session: Any, address: tuple[str, int], name: str, action: str, body: bytes,
                       timeout: float, token: str | None, ca_file: str | None = None) -> Any:
        import requests

        headers = {"Accept": "application/json", "Content-Type": "application/json",
                   "Servicefactory-Service": name}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        url = f"http://{_host_header(address)}/{action}"
        options = {}
        if address in self._secure:
            from servicefactory.http._tls import verify_option
            url = "https" + url[4:]
            options["verify"] = verify_option(ca_file)
        try:
            response = session.post(url, data=body, headers=headers, timeout=timeout, **options)
        except requests.exceptions.SSLError as exc:
            raise ProtocolError(f"{name} at {_host_header(address)}: the TLS connection failed ({exc}); "
                                f"is its CA given (--ca-file, $SERVICEFACTORY_CA_FILE)?") from None
        except requests.exceptions.ConnectionError as exc:
            if isinstance(exc, requests.exceptions.ConnectTimeout):
                raise ServiceTimeout(f"connecting to {name} timed out") from None
            if _caused_by(exc, ConnectionRefusedError):
                raise _Refused(f"{name} is not running ({url} refused)") from None
            raise ProtocolError(f"connection to {name} failed: {exc}; {action!r} may or may not have run") from None
        except requests.exceptions.Timeout:
            raise ServiceTimeout(f"{name} did not answer {action!r} within {timeout:g} s") from None
        return decode_answer(response.status_code, response.headers.get("Content-Type", ""),
                             response.content, action, name)

    def close_connections(self) -> None:
        """Close this thread's keep-alive connections (they are also closed when the thread ends)."""
        pool = getattr(self._local, "pool", None) or {}
        for connection in pool.values():
            connection.close()
        pool.clear()


# every client, so that a forked child drops each one's kept-open sockets (it would read its parent's
# answers); threading already imported _weakrefset, so it costs `perform` nothing
_clients: WeakSet = WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_clients):
        client._local = threading.local()


os.register_at_fork(after_in_child=_after_fork_in_child)
#: the client the module's functions (and `Service.perform`) use
default = Client()


def perform(name: str, action: str, data: Any = None, *, timeout: float = DEFAULT_TIMEOUT,
            registry: Registry | None = None, fallback: tuple[str, int] | None = None, session: Any = None,
            token: str | None = None, ca_file: str | None = None, tls: bool = False) -> Any:
    """Call `action` on the running service `name` through the `default` client (see `Client.perform`)."""
    return default.perform(name, action, data, timeout=timeout, registry=registry, fallback=fallback,
                           session=session, token=token, ca_file=ca_file, tls=tls)


def resolve(name: str, registry: Registry | None = None, fallback: tuple[str, int] | None = None,
            fresh: bool = False) -> tuple[str, int]:
    """The (host, port) of service `name`, as the `default` client finds it (see `Client.resolve`)."""
    return default.resolve(name, registry, fallback, fresh)


def close_connections() -> None:
    """Close this thread's keep-alive connections of the `default` client."""
    default.close_connections()
