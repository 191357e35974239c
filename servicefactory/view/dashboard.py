"""The web dashboard: one page (static files shipped in the package, no build step, no CDN) and a
small JSON API it polls, served by servicefactory's own HTTP server.

Its rules are the control API's: every `/api/` request needs the token (`Authorization: Bearer`),
whatever the bind; Host and Origin are checked as for a service (DNS rebinding, cross-site pages);
a POST must say `Content-Type: application/json` (no form of another site can send it without a
preflight, which we never answer). The page itself holds no data and is served without the token;
it reads the token from the URL's fragment (`#token=...`, which the browser never sends), keeps it
for the tab, and removes it from the address bar. Framing is refused (`frame-ancestors 'none'`), so
no page can trick a click on a stop button.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from importlib import resources
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs

from servicefactory.http._gate import Gate
from servicefactory.registry.base import Registry
from servicefactory.view._actions import ACTIONS, Outcome, run_action
from servicefactory.view._rows import Sampler

logger = logging.getLogger(__name__)

_STATIC = {"/": ("dashboard.html", "text/html; charset=utf-8"),
           "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
           "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8")}
_SECURITY_HEADERS = [
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    ("X-Frame-Options", "DENY"), ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
]
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 413: "Content Too Large", 415: "Unsupported Media Type",
            429: "Too Many Requests"}
#: lines of a log the page may ask for at once
MAX_LOG_LINES = 200
_MAX_BODY = 4096


class Dashboard:
    """The dashboard's WSGI app over one registry."""

    def __init__(self, registry: Registry, token: str, *, bound_host: str = "127.0.0.1",
                 interval: float = 1.0, act: Callable[..., Outcome] = run_action) -> None:
        if not token:
            raise ValueError("the dashboard needs a token")
        self.registry = registry
        self.gate = Gate(token=token, require_token=True, bound_host=bound_host)
        self.interval = interval
        self.act = act
        self.sampler = Sampler(registry)
        self._sampled: tuple[float, list] | None = None
        self._lock = threading.Lock()
        self.pages = {path: resources.files("servicefactory.view").joinpath("static", name).read_bytes()
                      for path, (name, _) in _STATIC.items()}

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        """Answer one request."""
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        status, body, content_type, extra = self._answer(environ, path, method)
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body))), *_SECURITY_HEADERS, *extra]
        start_response(f"{status} {_REASONS.get(status, 'Error')}", headers)
        return [body]

    def _answer(self, environ: dict, path: str, method: str) -> tuple[int, bytes, str, list]:
        if path in _STATIC:
            refusal = self._refuse_host(environ)
            if refusal:
                return _error(*refusal)
            if method not in ("GET", "HEAD"):
                return _error(405, "MethodNotAllowed", f"{method} is not allowed here", [("Allow", "GET, HEAD")])
            return 200, self.pages[path], _STATIC[path][1], []
        if not path.startswith("/api/"):
            return _error(404, "NotFound", f"nothing at {path[:100]!r}")
        refusal = self.gate.refuse(environ)
        if refusal:
            extra = []
            if refusal[0] == 429:
                extra.append(("Retry-After", str(environ.get("servicefactory.retry_after", 1))))
            if refusal[0] == 401:
                extra.append(("Connection", "close"))
            return _error(*refusal, extra)
        endpoint = path[len("/api/"):]
        if endpoint in ("status", "log"):
            if method != "GET":
                return _error(405, "MethodNotAllowed", f"{method} is not allowed here", [("Allow", "GET")])
            if endpoint == "status":
                return _json({"services": self.rows(), "where": str(self.registry.where), "time": time.time()})
            return self._log(parse_qs(environ.get("QUERY_STRING", "")))
        if endpoint in ACTIONS:
            if method != "POST":
                return _error(405, "MethodNotAllowed", "actions are POST only", [("Allow", "POST")])
            if environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower() != "application/json":
                return _error(415, "UnsupportedMediaType", "send Content-Type: application/json")
            data = _read_json(environ)
            name = data.get("name") if isinstance(data, dict) else None
            if not isinstance(name, str) or not name:
                return _error(400, "BadRequest", 'send {"name": "<service>"}')
            return self._act(endpoint, name)
        return _error(404, "NotFound", f"no API endpoint {endpoint[:100]!r}")

    def _refuse_host(self, environ: dict) -> tuple[int, str, str] | None:
        # the page holds no data, but a rebinding name must not serve it as if it were that site's
        from servicefactory.http._gate import allowed_host

        if self.gate.check_host and not allowed_host(environ.get("HTTP_HOST", ""), self.gate.bound_host):
            return (403, "Forbidden", "Host header does not name this dashboard (DNS rebinding?)")
        return None

    def rows(self) -> list[dict[str, Any]]:
        """The services now; read at most once per interval however many pages poll."""
        with self._lock:
            now = time.monotonic()
            if self._sampled is None or now - self._sampled[0] >= self.interval * 0.9:
                self._sampled = (now, self.sampler.sample())
            return self._sampled[1]

    def _log(self, query: dict) -> tuple[int, bytes, str, list]:
        from servicefactory.errors import ServiceFactoryError
        from servicefactory.registry.local import check_name
        from servicefactory.supervise import logfiles

        name = (query.get("name") or [""])[0]
        try:
            check_name(name)
            lines = max(0, min(MAX_LOG_LINES, int((query.get("lines") or ["20"])[0])))
        except (ServiceFactoryError, ValueError) as exc:
            return _error(400, "BadRequest", str(exc))
        path = self.registry.log_of(name)
        refusal = logfiles.untrusted(path, self.registry.private_dir())
        if refusal:
            return _error(403, "Forbidden", f"refusing the log of {name}: {refusal}")
        try:
            tail = logfiles.tail(path, lines)
        except FileNotFoundError:
            tail = []
        except OSError as exc:
            return _error(404, "NotFound", f"cannot read the log of {name}: {exc.strerror or exc}")
        return _json({"name": name, "lines": [logfiles.printable(line) for line in tail]})

    def _act(self, action: str, name: str) -> tuple[int, bytes, str, list]:
        from servicefactory.errors import ServiceFactoryError

        try:
            outcome = self.act(action, name, self.registry)
        except ServiceFactoryError as exc:
            return _error(400, "BadRequest", str(exc))
        logger.info("dashboard: %s %s: %s", action, name, outcome.message)
        with self._lock:
            self._sampled = None  # the next read shows what the action did
        return _json({"ok": outcome.ok, "message": outcome.message})


def _read_json(environ: dict) -> Any:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    if not 0 < length <= _MAX_BODY:
        return None
    try:
        return json.loads(environ["wsgi.input"].read(length))
    except (ValueError, UnicodeDecodeError):
        return None


def _json(data: Any, status: int = 200) -> tuple[int, bytes, str, list]:
    return status, json.dumps(data, allow_nan=False, default=str).encode(), "application/json", []


def _error(status: int, kind: str, message: str, extra: list | None = None) -> tuple[int, bytes, str, list]:
    body = json.dumps({"error": {"type": kind, "message": message}}).encode()
    return status, body, "application/json", list(extra or [])


def serve(registry: Registry, token: str, host: str = "127.0.0.1", port: int = 0) -> Any:
    """Bind and start the dashboard in background threads; return the running Server (`.url`, `.stop()`)."""
    from servicefactory.http.server import Server, bind

    sock = bind(host, port)
    server = Server(Dashboard(registry, token, bound_host=host), sock, max_workers=8)
    server.start()
    return server
