"""Calling a running service: find its address, send the action, decode the answer or raise.

The default transport is a small keep-alive HTTP/1.1 client over a raw socket, one connection per
thread and address: it costs a fraction of what `requests` costs per call and nothing at import.
Pass `session=requests.Session()` to go through requests instead (proxies, adapters, mocks).
"""
from __future__ import annotations

import json
import socket
import threading
import time

from ._names import connect_host, host_port, valid_action_name
from .errors import (ActionFailed, InvalidData, ProtocolError, ServiceNotRunning, ServiceTimeout,
                     Unauthorized, UnknownAction)

TYPE_CHECKING = False  # typing is for type checkers only: importing it would slow `servicefactory perform`
if TYPE_CHECKING:
    from typing import Any

DEFAULT_TIMEOUT = 10.0

_local = threading.local()
_addresses: dict[tuple[str, str], tuple[str, int]] = {}
_tokens: dict[str, str | None] = {}


def encode(data: Any) -> bytes:
    """JSON-encode the data to send; raise InvalidData if it cannot be."""
    if data is None:
        return b""
    try:
        return json.dumps(data, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidData(f"data is not JSON serialisable: {exc}") from None
    except RecursionError:
        raise InvalidData("data is nested too deeply to send as JSON") from None


def decode_answer(status: int, content_type: str, body: bytes, action: str, name: str) -> Any:
    """Turn an HTTP answer into the handler's result, or raise the matching typed error."""
    if status == 200 and content_type.startswith("text/plain") and body.strip() == b"ok":
        return None  # a handler that returned None, answered to a client that did not ask for JSON
    try:
        payload = json.loads(body) if body else None
    except ValueError:
        raise ProtocolError(f"{name} answered {status} with a body that is not JSON") from None
    if status == 200:
        return payload
    error = payload.get("error") if isinstance(payload, dict) else None
    kind = error.get("type", "") if isinstance(error, dict) else ""
    message = error.get("message", "") if isinstance(error, dict) else str(error or "")
    if status == 404:
        raise UnknownAction(f"{name} has no action {action!r}")
    if status in (401, 403):
        raise Unauthorized(f"{name} refused the request: {message}")
    if status in (400, 413, 415):
        raise InvalidData(f"{name} rejected the data for {action!r}: {message}")
    if status == 500 and kind:
        raise ActionFailed(f"{name}.{action} failed: {kind}: {message}", kind, message, status)
    raise ProtocolError(f"{name} answered HTTP {status} to {action!r}: {message or body[:200]!r}")


def resolve(name: str, registry: Any = None, fallback: tuple[str, int] | None = None,
            fresh: bool = False) -> tuple[str, int]:
    """The (host, port) of service `name`: the registry's record, else `fallback`, else ServiceNotRunning."""
    if registry is None:
        from .registry import default_registry
        registry = default_registry()
    key = (str(getattr(registry, "home", id(registry))), name)
    if not fresh and key in _addresses:
        return _addresses[key]
    record = registry.lookup(name)
    if record is not None and record.address is not None:
        address = record.address
    elif record is not None and record.state == "running" and fallback is None:
        raise ServiceNotRunning(f"{name} runs without an API (its class declares no Service.API.endpoint): "
                                f"there is nothing to perform")
    elif fallback is not None and fallback[1]:
        address = (connect_host(fallback[0]), fallback[1])
    else:
        home = getattr(registry, "home", None)
        if home is not None and not home.exists():
            raise ServiceNotRunning(f"{name} is not running, or cannot be found: the state directory {home} "
                                    f"does not exist (deleted? services started with it keep running)")
        raise ServiceNotRunning(f"{name} is not running (nothing registered in {home or 'the registry'})")
    _addresses[key] = address
    return address


def _token(registry: Any) -> str | None:
    key = str(getattr(registry, "home", id(registry)))
    if key not in _tokens:
        _tokens[key] = registry.token() if hasattr(registry, "token") else None
    return _tokens[key]


def perform(name: str, action: str, data: Any = None, *, timeout: float = DEFAULT_TIMEOUT,
            registry: Any = None, fallback: tuple[str, int] | None = None, session: Any = None,
            token: str | None = None) -> Any:
    """Call `action` on the running service `name` with JSON `data`; return the decoded result."""
    if registry is None:
        from .registry import default_registry
        registry = default_registry()
    if not timeout > 0:
        raise InvalidData(f"timeout must be positive, not {timeout!r}")
    if not valid_action_name(action):
        raise InvalidData(f"invalid action name {action!r}: use letters, digits, '_', '-' and single dots")
    body = encode(data)
    token = token if token is not None else _token(registry)
    address = resolve(name, registry, fallback)
    try:
        return _send(address, name, action, body, timeout, session, token)
    except ServiceNotRunning:
        fresh = resolve(name, registry, fallback, fresh=True)  # it may have restarted elsewhere
        if fresh == address:
            raise
        return _send(fresh, name, action, body, timeout, session, token)


def _send(address: tuple[str, int], name: str, action: str, body: bytes, timeout: float,
          session: Any, token: str | None) -> Any:
    if session is not None:
        return _send_requests(session, address, name, action, body, timeout, token)
    headers = [f"POST /{action} HTTP/1.1", f"Host: {_host_header(address)}", "Accept: application/json",
               f"Content-Length: {len(body)}"]
    if body:
        headers.append("Content-Type: application/json")
    if token:
        headers.append(f"Authorization: Bearer {token}")
    request = ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + body
    deadline = time.monotonic() + timeout
    for attempt in (1, 2):
        connection, reused = _connection(address, name, timeout)
        try:
            status, content_type, answer = connection.exchange(request, deadline)
        except _Stale:
            connection.close()
            if reused and attempt == 1:
                continue  # the request could not be sent at all: nothing ran, sending again is safe
            raise ProtocolError(f"{name} closed the connection before the request was sent") from None
        except socket.timeout:
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


def _host_header(address: tuple[str, int]) -> str:
    return host_port(*address)


class _Pool(dict):
    """One thread's connections; closed with the thread, so no socket is left for the collector."""

    def __del__(self) -> None:
        for connection in self.values():
            connection.close()


def _connection(address: tuple[str, int], name: str, timeout: float) -> tuple["_Connection", bool]:
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = _Pool()
    connection = pool.get(address)
    if connection is not None:
        if connection.usable():
            return connection, True
        connection.close()  # closed by the server while idle: never send a request into it
    try:
        sock = socket.create_connection(address, timeout=min(timeout, 5.0))
    except ConnectionRefusedError:
        raise ServiceNotRunning(f"{name} is not running (connection to {_host_header(address)} refused)") from None
    except socket.timeout:
        raise ServiceTimeout(f"connecting to {name} at {_host_header(address)} timed out") from None
    except OSError as exc:
        raise ServiceNotRunning(f"{name} cannot be reached at {_host_header(address)}: {exc.strerror or exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connection = pool[address] = _Connection(sock)
    return connection, False


class _Stale(Exception):
    """The request could not be sent: the peer had closed the connection."""


class _Connection:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.open = True

    def usable(self) -> bool:
        """Whether the idle connection is still open and has nothing unread (peeked, without blocking)."""
        if not self.open:
            return False
        try:
            self.sock.settimeout(0)  # with a timeout set, Python would wait on EAGAIN instead of raising
            self.sock.recv(1, socket.MSG_PEEK)
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

    def exchange(self, request: bytes, deadline: float) -> tuple[int, str, bytes]:
        """Send one request and read its answer: (status, content type, body)."""
        sock = self.sock
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            raise _Stale() from None
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                raise OSError("connection closed before the answer" if not buffer else
                              "connection closed in the middle of the answer")
            buffer += data
        head, _, rest = buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            raise OSError(f"malformed status line {lines[0][:80]!r}") from None
        headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        if "content-length" in headers:
            length_text = headers["content-length"]
            if not (length_text.isascii() and length_text.isdigit()):
                raise OSError(f"invalid Content-Length {length_text[:20]!r}")
            length = int(length_text)
            while len(rest) < length:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                data = sock.recv(min(1 << 20, length - len(rest)))
                if not data:
                    raise OSError("connection closed in the middle of the answer")
                rest += data
            body = rest[:length]
        else:  # no length: the body runs to the end of the connection
            chunks = [rest]
            while True:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
            body = b"".join(chunks)
            headers["connection"] = "close"
        if "close" in headers.get("connection", "").lower():
            self.close()
        return status, headers.get("content-type", ""), body


def _send_requests(session: Any, address: tuple[str, int], name: str, action: str, body: bytes,
                   timeout: float, token: str | None) -> Any:
    import requests

    headers = {"Accept": "application/json"}
    if body:
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    url = f"http://{_host_header(address)}/{action}"
    try:
        response = session.post(url, data=body, headers=headers, timeout=timeout)
    except requests.exceptions.ConnectionError as exc:
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            raise ServiceTimeout(f"connecting to {name} timed out") from None
        if _caused_by(exc, ConnectionRefusedError):
            raise ServiceNotRunning(f"{name} is not running ({url} refused)") from None
        raise ProtocolError(f"connection to {name} failed: {exc}; {action!r} may or may not have run") from None
    except requests.exceptions.Timeout:
        raise ServiceTimeout(f"{name} did not answer {action!r} within {timeout:g} s") from None
    return decode_answer(response.status_code, response.headers.get("Content-Type", ""),
                         response.content, action, name)


def _caused_by(error: BaseException | None, kind: type, depth: int = 0) -> bool:
    # requests wraps urllib3's errors, which wrap the socket's: look through args, reason and context
    if error is None or depth > 8:
        return False
    if isinstance(error, kind):
        return True
    inner = [arg for arg in getattr(error, "args", ()) if isinstance(arg, BaseException)]
    inner += [getattr(error, "reason", None), error.__cause__, error.__context__]
    return any(_caused_by(item, kind, depth + 1) for item in inner if isinstance(item, BaseException))


def close_connections() -> None:
    """Close this thread's keep-alive connections (they are also closed when the thread ends)."""
    pool = getattr(_local, "pool", None) or {}
    for connection in pool.values():
        connection.close()
    pool.clear()
