"""Actions: the per-class handler registry and the WSGI app that serves them as HTTP/JSON."""
from __future__ import annotations

import json
import logging
from collections import namedtuple
from _operator import _compare_digest as compare_digest  # hmac's, without loading OpenSSL (3.7 MiB)
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping

from ._names import is_loopback, valid_action_name

logger = logging.getLogger(__name__)

#: built-in actions every service answers; a user's handler may replace one only with override=True
BUILTIN_ACTIONS = ("shutdown", "health", "actions")
DEFAULT_MAX_BODY = 1024 * 1024

_MARK = "__servicefactory_action__"
_JSON_HEADERS = [("Content-Type", "application/json")]
_STATUS_LINES = {
    200: "200 OK", 400: "400 Bad Request", 401: "401 Unauthorized", 403: "403 Forbidden",
    404: "404 Not Found", 405: "405 Method Not Allowed", 413: "413 Content Too Large",
    415: "415 Unsupported Media Type", 421: "421 Misdirected Request", 500: "500 Internal Server Error",
}


class Action(namedtuple("Action", "name attribute exclusive post_only doc", defaults=(False, False, ""))):
    """One exposed action: its name, the method implementing it, and how it runs."""

    __slots__ = ()


def handle(action: str, *, exclusive: bool = False, post_only: bool = False,
           override: bool = False) -> Callable[[Callable], Callable]:
    """Expose the decorated method as `action`; `exclusive=True` runs it holding the loop lock."""
    if not valid_action_name(action):
        raise ValueError(f"invalid action name {action!r}: use letters, digits, '_', '-' and single dots")

    def mark(method: Callable) -> Callable:
        setattr(method, _MARK, (action, exclusive, post_only, override))
        return method

    return mark


def collect_actions(cls: type) -> Mapping[str, Action]:
    """Build `cls`'s action table from its own and inherited handlers (subclasses win)."""
    table: dict[str, Action] = {}
    for klass in reversed(cls.__mro__):
        for attribute, value in vars(klass).items():
            mark = getattr(value, _MARK, None)
            if mark is None:
                continue
            name, exclusive, post_only, override = mark
            builtin = getattr(klass, "_servicefactory_builtin", False)
            if name in BUILTIN_ACTIONS and not builtin and not override:
                raise TypeError(
                    f"{cls.__qualname__}.{attribute} would replace the built-in action {name!r}; "
                    f"pick another name, or pass override=True if you mean to replace it")
            doc = (value.__doc__ or "").strip().splitlines()
            table[name] = Action(name, attribute, exclusive, post_only, doc[0] if doc else "")
    return MappingProxyType(table)


class _After:
    """A WSGI body whose close() runs a callback once the server has sent the response."""

    def __init__(self, body: bytes, callback: Callable[[], None]) -> None:
        self._body = [body]
        self._callback = callback

    def __iter__(self):
        return iter(self._body)

    def close(self) -> None:
        """Called by the server once the response is sent."""
        self._callback()


def _error(status: int, kind: str, message: str) -> tuple[int, bytes]:
    return status, json.dumps({"error": {"type": kind, "message": message}}).encode() + b"\n"


def _allowed_host(host_header: str, bound_host: str) -> bool:
    if not host_header:
        return True  # HTTP/1.0 clients send none; browsers always do
    host = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
    host = host.lower()
    return is_loopback(host) or host.strip("[]") == bound_host


class App:
    """The WSGI application exposing one service instance's actions."""

    def __init__(self, service: Any, actions: Mapping[str, Action], *, max_body: int = DEFAULT_MAX_BODY,
                 token: str | None = None, bound_host: str = "127.0.0.1",
                 exclusive_lock: Any = None, on_shutdown: Callable[[], None] | None = None,
                 name: str | None = None) -> None:
        self.service = service
        self.name = name  # the registry name callers address this service by (Servicefactory-Service)
        self.actions = actions
        self.max_body = max_body
        self.token = token.encode() if token else None
        self.bound_host = bound_host
        # a wildcard bind has no single name to check Host against; the token guards it instead
        self.check_host = bound_host not in ("0.0.0.0", "::", "")
        self.exclusive_lock = exclusive_lock
        self.on_shutdown = on_shutdown

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        """Answer one request (WSGI)."""
        status, body, after = self.respond(environ)
        headers = list(_JSON_HEADERS)
        if status == 405:
            headers.append(("Allow", "POST" if environ.get("PATH_INFO") == "/shutdown" else "GET, POST"))
        if status == 401:
            headers.append(("WWW-Authenticate", 'Bearer realm="servicefactory"'))
        if body is _PLAIN_OK:
            headers = [("Content-Type", "text/plain; charset=utf-8")]
        headers.append(("Content-Length", str(len(body))))
        start_response(_STATUS_LINES.get(status, f"{status} Error"), headers)
        return _After(body, after) if after else [body]

    def respond(self, environ: dict) -> tuple[int, bytes, Callable[[], None] | None]:
        """Turn a WSGI environ into (status, body, callback to run after sending)."""
        meant = environ.get("HTTP_SERVICEFACTORY_SERVICE")
        if meant is not None and self.name is not None and meant != self.name:
            # the caller's address is stale (its service died and another took the port): running
            # anything here, even `shutdown`, would act on the wrong service
            return (*_error(421, "Misdirected", f"this address serves another service, not {meant!r}"), None)
        refusal = self._refuse(environ)
        if refusal:
            return (*refusal, None)
        method = environ.get("REQUEST_METHOD", "GET")
        name = environ.get("PATH_INFO", "/")[1:]
        action = self.actions.get(name) if valid_action_name(name) else None
        if action is None:
            return (*_error(404, "UnknownAction", f"unknown action {name!r}"), None)
        if method not in ("GET", "POST") or (method == "GET" and action.post_only):
            return (*_error(405, "MethodNotAllowed", f"{method} is not allowed for {name!r}"), None)
        data = None
        if method == "POST":
            try:
                data = self._read_json(environ)
            except _BadRequest as bad:
                return (*_error(bad.status, bad.kind, str(bad)), None)
        try:
            result = self._call(action, data)
        except BaseException as exc:  # even sys.exit() in a handler is the caller's answer, not ours
            logger.exception("action %r failed", name)
            return (*_error(500, type(exc).__name__, str(exc)), None)
        if result is None:
            # curl and browsers see the founding transcript's `ok`; JSON clients get null, so that
            # perform() returns None, as the transcript's REPL (which echoes no result) shows
            body = b"null\n" if "application/json" in environ.get("HTTP_ACCEPT", "") else _PLAIN_OK
        else:
            try:
                body = json.dumps(result, allow_nan=False).encode() + b"\n"
            except (TypeError, ValueError, RecursionError) as exc:
                logger.error("action %r returned a result that is not JSON serialisable: %s", name, exc)
                return (*_error(500, type(exc).__name__, f"result is not JSON serialisable: {exc}"), None)
        after = self.on_shutdown if name == "shutdown" and action.attribute == "_servicefactory_shutdown" else None
        return 200, body, after

    def _refuse(self, environ: dict) -> tuple[int, bytes] | None:
        if self.check_host and not _allowed_host(environ.get("HTTP_HOST", ""), self.bound_host):
            return _error(403, "Forbidden", "Host header does not name this service (DNS rebinding?)")
        origin = environ.get("HTTP_ORIGIN")
        if origin and not _allowed_host(origin.split("://", 1)[-1], self.bound_host):
            return _error(403, "Forbidden", "cross-origin requests are refused")
        if environ.get("HTTP_SEC_FETCH_SITE") in ("cross-site", "same-site"):
            return _error(403, "Forbidden", "cross-site requests are refused")
        if self.token is not None:
            given = environ.get("HTTP_AUTHORIZATION", "")
            scheme, _, credential = given.partition(" ")
            if scheme.lower() != "bearer" or not compare_digest(credential.strip().encode(), self.token):
                return _error(401, "Unauthorized", "missing or wrong token: send 'Authorization: Bearer <token>'")
        return None

    def _read_json(self, environ: dict) -> Any:
        length_text = environ.get("CONTENT_LENGTH")
        if not length_text and environ.get("wsgi.input_terminated"):
            # a chunked body the server passes through: read no more than one byte past the limit
            body = environ["wsgi.input"].read(self.max_body + 1)
            if len(body) > self.max_body:
                raise _BadRequest(413, "ContentTooLarge", f"body over the {self.max_body} byte limit")
        else:
            try:
                length = int(length_text or "0")
            except ValueError:
                raise _BadRequest(400, "BadRequest", "invalid Content-Length") from None
            if length > self.max_body:
                raise _BadRequest(413, "ContentTooLarge", f"body over the {self.max_body} byte limit")
            body = environ["wsgi.input"].read(length) if length else b""
        if not body:
            return None
        content_type = environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
        if content_type != "application/json":
            # form and text types can be sent cross-site by any web page without a preflight
            raise _BadRequest(415, "UnsupportedMediaType", "send the body as Content-Type: application/json")
        try:
            return json.loads(body, parse_constant=_reject_constant)
        except RecursionError:
            raise _BadRequest(400, "BadRequest", "JSON nested too deeply") from None
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise _BadRequest(400, "BadRequest", f"malformed JSON: {exc}") from None

    def _call(self, action: Action, data: Any) -> Any:
        method = getattr(self.service, action.attribute)
        if action.exclusive and self.exclusive_lock is not None:
            with self.exclusive_lock:
                return method(data)
        return method(data)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


class _BadRequest(Exception):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


class _PlainOk(bytes):
    """The literal `ok` body answered to clients that did not ask for JSON."""


_PLAIN_OK = _PlainOk(b"ok\n")
