"""Actions: the per-class handler registry and the WSGI app that serves them as HTTP/JSON."""
from __future__ import annotations

import json
import logging
import re
import threading
from collections import namedtuple
from time import perf_counter
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping

from servicefactory.http._gate import Gate
from servicefactory.http._guard import cut, short_traceback
from servicefactory._metrics import Counters
from servicefactory._names import valid_action_name

logger = logging.getLogger(__name__)

#: built-in actions every service answers; a user's handler may replace one only with override=True
BUILTIN_ACTIONS = ("shutdown", "health", "actions")
#: what every service answers besides its actions (GET, or POST as an action): the Prometheus
#: metrics and the OpenAPI document; a user's handler may take one of these names only with override=True
BUILTIN_ROUTES = ("metrics", "openapi.json")
DEFAULT_MAX_BODY = 1024 * 1024

_MARK = "__servicefactory_action__"
_JSON_TYPE = ("Content-Type", "application/json")
_JSON_HEADERS = [_JSON_TYPE]
_JSON_ANSWER = (_JSON_TYPE,)  # a tuple: our server encodes it once (http._framing.answer)
_STATUS_LINES = {
    200: "200 OK", 400: "400 Bad Request", 401: "401 Unauthorized", 403: "403 Forbidden",
    404: "404 Not Found", 405: "405 Method Not Allowed", 413: "413 Content Too Large",
    415: "415 Unsupported Media Type", 421: "421 Misdirected Request", 422: "422 Unprocessable Content",
    429: "429 Too Many Requests", 500: "500 Internal Server Error",
}
#: only JSON escapes can put a surrogate into a decoded string (the body itself must be UTF-8)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class Action(namedtuple("Action", "name attribute exclusive methods doc builtin",
                        defaults=(False, ("POST",), "", False))):
    """One exposed action: its name, the method implementing it, how it runs, and whether it is
    servicefactory's own (not a user's handler, nor a user's override of a built-in action)."""

    __slots__ = ()

    @property
    def post_only(self) -> bool:
        """Whether a GET of this action is refused (the default: a GET can be sent by any web page)."""
        return "GET" not in self.methods


def handle(action: str, *, exclusive: bool = False, methods: Iterable[str] = ("POST",),
           post_only: bool = False, override: bool = False) -> Callable[[Callable], Callable]:
    """Expose the decorated method as `action`; `exclusive=True` runs it holding the loop lock.

    Actions answer POST only; `methods=("GET", "POST")` also lets a bare GET call it (with None),
    which any web page or `<img>` can send: only for actions without side effects.
    """
    if not valid_action_name(action):
        raise ValueError(f"invalid action name {action!r}: use letters, digits, '_', '-' and single dots")
    wanted = {str(method).upper() for method in methods}
    if "POST" not in wanted or not wanted <= {"GET", "POST"}:
        raise ValueError(f"methods must be ('POST',) or ('GET', 'POST'), not {tuple(methods)!r}")
    methods = ("GET", "POST") if "GET" in wanted else ("POST",)
    if post_only:
        methods = ("POST",)

    def mark(method: Callable) -> Callable:
        setattr(method, _MARK, (action, exclusive, methods, override))
        return method

    return mark


def collect_actions(cls: type, is_builtin: Callable[[type], bool] = lambda klass: False) -> Mapping[str, Action]:
    """Build `cls`'s action table from its own and inherited handlers (subclasses win); the
    handlers of classes `is_builtin` accepts are servicefactory's own."""
    table: dict[str, Action] = {}
    for klass in reversed(cls.__mro__):
        for attribute, value in vars(klass).items():
            mark = getattr(value, _MARK, None)
            if mark is None:
                continue
            name, exclusive, methods, override = mark
            builtin = is_builtin(klass)
            if name in BUILTIN_ACTIONS + BUILTIN_ROUTES and not builtin and not override:
                raise TypeError(
                    f"{cls.__qualname__}.{attribute} would replace the built-in "
                    f"{'action' if name in BUILTIN_ACTIONS else 'route'} {name!r}; "
                    f"pick another name, or pass override=True if you mean to replace it")
            doc = (value.__doc__ or "").strip().splitlines()
            table[name] = Action(name, attribute, exclusive, methods, doc[0] if doc else "", builtin)
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


class App:
    """The WSGI application exposing one service instance's actions."""

    #: the registry name callers address this service by (`Servicefactory-Service`, contract C2);
    #: None (an App built without one) answers whatever name a caller sends
    name: str | None = None
    #: the service's name when this is one of its instances (`Test` for `Test/2`): a call meant for
    #: any instance of the service is this one's too, one meant for `Test/1` is not
    service_name: str | None = None

    def __init__(self, service: Any, actions: Mapping[str, Action], *, max_body: int = DEFAULT_MAX_BODY,
                 token: str | None = None, require_token: bool | None = None, bound_host: str = "127.0.0.1",
                 local_address: tuple[str, int] | None = None, allowed_uids: Iterable[int] | None = None,
                 exclusive_lock: Any = None, on_shutdown: Callable[[], None] | None = None,
                 name: str | None = None, counters: Counters | None = None) -> None:
        self.service = service
        self.name = name
        self.service_name = name.partition("/")[0] if name and "/" in name else None
        self.actions = actions
        self.max_body = max_body
        self.gate = Gate(token=token, require_token=require_token, bound_host=bound_host,
                         local_address=local_address, allowed_uids=allowed_uids)
        self.exclusive_lock = exclusive_lock
        self.on_shutdown = on_shutdown
        #: what this app has answered; the service's own (run() shares it with `health`) or a new one
        self.counters = counters if counters is not None else Counters()
        self._exposition: Any = None  # built on the first scrape: importing prometheus-client costs 14 MiB
        self._document: bytes | None = None
        self._lazy_lock = threading.Lock()
        from servicefactory._schema import checks_of
        #: per action whose handler has a data hint: the check that answers 422 before it is called
        self._checks = checks_of(type(service), actions)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        """Answer one request (WSGI), and count it."""
        started = perf_counter()
        status, body, after, counted, failure = self.respond(environ)
        if status == 200 and type(body) is bytes and counted is not _UNCOUNTED:  # the common answer: a JSON result
            if "servicefactory.connection" in environ:  # our server: it sets the length, takes constant heads
                start_response("200 OK", _JSON_ANSWER)
            else:
                start_response("200 OK", [_JSON_TYPE, ("Content-Length", str(len(body)))])
            self.counters.record(counted, 200, perf_counter() - started, None)
            return _After(body, after) if after else [body]
        headers = list(_JSON_HEADERS)
        if status == 405:
            name = environ.get("PATH_INFO", "/")[1:]
            action = self.actions.get(name)
            allowed = action.methods if action else ("GET", "POST") if name in BUILTIN_ROUTES else ("POST",)
            headers.append(("Allow", ", ".join(allowed)))
        if status == 401:
            headers.append(("WWW-Authenticate", 'Bearer realm="servicefactory"'))
        elif status == 429:
            headers.append(("Retry-After", str(environ.get("servicefactory.retry_after", 1))))
        if status in (401, 421, 429) and "servicefactory.connection" in environ:
            # contract C1: our server then closes the connection, so each guess costs a new one
            # (WSGI forbids hop-by-hop headers to other servers; werkzeug's closes after each anyway)
            headers.append(("Connection", "close"))
        if body is _PLAIN_OK:
            headers = [("Content-Type", "text/plain; charset=utf-8")]
        elif type(body) is _Typed:
            headers = [("Content-Type", body.content_type)]
        headers.append(("Content-Length", str(len(body))))
        start_response(_STATUS_LINES.get(status, f"{status} Error"), headers)
        if counted is not _UNCOUNTED:
            self.counters.record(counted, status, perf_counter() - started, failure)
        return _After(body, after) if after else [body]

    def respond(self, environ: dict) -> tuple[int, bytes, Callable[[], None] | None, Any, str | None]:
        """Turn a WSGI environ into (status, body, callback to run after sending, the action to
        count it for (None: no action; _UNCOUNTED: a scrape), the exception type if the handler raised)."""
        # who may ask comes first: a caller this service refuses learns nothing, not even its name
        refusal = self.gate.refuse(environ)
        if refusal:
            return (*_error(*refusal), None, None, None)
        meant = environ.get("HTTP_SERVICEFACTORY_SERVICE")
        if meant is not None and meant != self.name and self.name is not None and meant != self.service_name:
            # the caller's address is stale (its service died and another took the port): running
            # anything here, even `shutdown`, would act on the wrong service
            return (*_error(421, "Misdirected", f"this address serves another service, not {meant!r}"),
                    None, None, None)
        method = environ.get("REQUEST_METHOD", "GET")
        name = environ.get("PATH_INFO", "/")[1:]
        action = self.actions.get(name)  # every name in the table is valid: handle() checked it
        if action is None:
            if name in BUILTIN_ROUTES:
                return self._route(name, method, environ)
            return (*_error(404, "UnknownAction", f"unknown action {name!r}"), None, None, None)
        if method not in action.methods:
            return (*_error(405, "MethodNotAllowed", f"{method} is not allowed for {name!r}"), None, name, None)
        data = None
        if method == "POST":
            try:
                data = self._read_json(environ)
            except _BadRequest as bad:
                return (*_error(bad.status, bad.kind, str(bad)), None, name, None)
        check = self._checks.get(name)
        if check is not None:
            try:
                data = check(data, "data")
            except ValueError as invalid:  # _schema.Invalid: the data does not match the handler's hint
                return (*_error(422, "ValidationError", cut(str(invalid), 1000)), None, name, None)
        try:
            result = self._call(action, data)
        except BaseException as exc:  # even sys.exit() in a handler is the caller's answer, not ours
            # cut: a handler raising with megabytes of text must not fill the logs or the answer
            logger.error("action %r failed\n%s", name, short_traceback(exc))
            return (*_error(500, type(exc).__name__, cut(str(exc))), None, name, type(exc).__name__)
        if result is None:
            # curl and browsers see the founding transcript's `ok`; JSON clients get null, so that
            # perform() returns None, as the transcript's REPL (which echoes no result) shows
            body = b"null\n" if "application/json" in environ.get("HTTP_ACCEPT", "") else _PLAIN_OK
        else:
            try:
                body = _encode(result)
            except (TypeError, ValueError, RecursionError) as exc:
                logger.error("action %r returned a result that is not JSON serialisable: %s", name, exc)
                return (*_error(500, type(exc).__name__, cut(f"result is not JSON serialisable: {exc}")),
                        None, name, type(exc).__name__)
        after = self.on_shutdown if name == "shutdown" and action.builtin else None
        return 200, body, after, name, None

    def _route(self, name: str, method: str, environ: dict) -> tuple[int, bytes, None, Any, None]:
        """Answer GET (or, as for an action, a JSON POST) of /metrics or /openapi.json; not counted."""
        if method not in ("GET", "POST"):
            return (*_error(405, "MethodNotAllowed", f"{method} is not allowed for {name!r}"), None, _UNCOUNTED, None)
        if method == "POST":
            try:
                self._read_json(environ)  # the same 415/413/400 rules as for an action; the data is unused
            except _BadRequest as bad:
                return (*_error(bad.status, bad.kind, str(bad)), None, _UNCOUNTED, None)
        try:
            body = self._metrics(environ.get("HTTP_ACCEPT", "")) if name == "metrics" else self._openapi()
        except Exception as exc:
            logger.error("%s failed\n%s", name, short_traceback(exc))
            return (*_error(500, type(exc).__name__, cut(str(exc))), None, _UNCOUNTED, None)
        return 200, body, None, _UNCOUNTED, None

    def _metrics(self, accept: str) -> bytes:
        with self._lazy_lock:
            if self._exposition is None:
                from servicefactory import __version__
                from servicefactory._metrics import Exposition
                # a service may add families of its own (the supervisor: its children's states)
                extra = getattr(self.service, "_servicefactory_metric_families", None)
                self._exposition = Exposition(self.counters, self.name or type(self.service).__name__,
                                              __version__, extra)
        return _Typed(*self._exposition.render(accept))

    def _openapi(self) -> bytes:
        with self._lazy_lock:
            if self._document is None:
                from servicefactory import __version__
                from servicefactory._schema import openapi_document
                document = openapi_document(self.name or type(self.service).__name__, __version__,
                                            type(self.service), self.actions, self.gate.require_token)
                self._document = json.dumps(document, indent=1).encode() + b"\n"
        return self._document

    def _read_json(self, environ: dict) -> Any:
        content_type = environ.get("CONTENT_TYPE", "")
        if content_type != "application/json" and \
                content_type.split(";", 1)[0].strip().lower() != "application/json":
            # checked on every POST, empty or not: a web page can send a bodiless or a text/plain
            # POST to any address without a preflight, and that alone must never run an action
            raise _BadRequest(415, "UnsupportedMediaType", "send POSTs with Content-Type: application/json")
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
        try:
            value = _decode(body.decode())  # UTF-8, by its fast path
        except RecursionError:
            raise _BadRequest(400, "BadRequest", "JSON nested too deeply") from None
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise _BadRequest(400, "BadRequest", cut(f"malformed JSON: {exc}", 300)) from None
        if b"\\u" in body and _SURROGATE_ESCAPE.search(body) and _has_lone_surrogate(value):
            raise _BadRequest(400, "BadRequest", "malformed JSON: a lone surrogate (\\ud800-\\udfff) "
                                                 "is not a character and cannot be encoded as UTF-8")
        return value

    def _call(self, action: Action, data: Any) -> Any:
        method = getattr(self.service, action.attribute)
        if action.exclusive and self.exclusive_lock is not None:
            with self.exclusive_lock:
                return method(data)
        return method(data)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number out of range: {cut(text, 40)}")
    return value


# built once: json.loads/dumps with options build a new decoder/encoder per call, half of a call's
# cost in this module (profiled: 25 -> 14 us per request)
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
_ENCODER = json.JSONEncoder(allow_nan=False)
# and JSONEncoder.encode still builds json's C encoder on every call, JSONDecoder.decode wraps the
# scanner in two regex matches: a third of a small call's JSON cost each. Without the circular check
# the C encoder holds no state, so the workers share it; a value that contains itself ends in
# RecursionError, which respond() reports like any unserialisable result
_C_ENCODE = None if json.encoder.c_make_encoder is None else json.encoder.c_make_encoder(
    None, _ENCODER.default, json.encoder.encode_basestring_ascii, None, _ENCODER.key_separator,
    _ENCODER.item_separator, False, False, False)
_SCAN = _DECODER.scan_once


def _encode(result: Any) -> bytes:
    """A handler's result as the JSON body of its answer."""
    if _C_ENCODE is None or type(result) is str:
        return _ENCODER.encode(result).encode() + b"\n"
    return "".join(_C_ENCODE(result, 0)).encode() + b"\n"


def _decode(text: str) -> Any:
    """A request body's JSON value; whitespace around it, errors and their messages as json.loads."""
    try:
        value, end = _SCAN(text, 0)
    except StopIteration:  # leading whitespace, or not JSON: the full decoder says which
        return _DECODER.decode(text)
    return value if end == len(text) else _DECODER.decode(text)


def _has_lone_surrogate(value: Any) -> bool:
    """Whether any string in the decoded JSON `value` (keys included) holds a lone surrogate."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


class _BadRequest(Exception):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


class _PlainOk(bytes):
    """The literal `ok` body answered to clients that did not ask for JSON."""


class _Typed(bytes):
    """A body that is not JSON, with its content type (the Prometheus text)."""

    def __new__(cls, body: bytes, content_type: str) -> "_Typed":
        typed = super().__new__(cls, body)
        typed.content_type = content_type
        return typed


#: respond()'s mark of an answer that is not counted as a call (a scrape of /metrics or the document)
_UNCOUNTED = object()


_PLAIN_OK = _PlainOk(b"ok\n")
