"""HTTP/1.1 request framing by llhttp (through httptools), and the answers the server writes.

Framing is where leniency becomes request smuggling, so no byte-level parsing is done here: llhttp
(Node.js's parser) decides where a request, its chunks and its trailers begin and end, and refuses
bare LF and CR, obs-fold, Content-Length with Transfer-Encoding, duplicate or signed lengths,
overflowing chunk sizes and control bytes in the target. On top of it, `RequestReader` enforces what
RFC 9112 asks of a server and llhttp leaves to it: exactly one Host on HTTP/1.1, no '_' in header
names (WSGI would fold it into '-'), Transfer-Encoding `chunked` alone, HTTP/1.0 or 1.1 only, and our
size limits. It is fed each received segment once (nothing is rescanned) and queues whole requests,
bodies decoded and in memory, for a worker to run.
"""
from __future__ import annotations

import collections
import io
import json
import re
import sys
import time
from typing import Any
from urllib.parse import unquote_to_bytes

import httptools

MAX_HEAD = 64 * 1024
MAX_HEADERS = 100
# a pipelining client may send thousands of requests in one segment: parse it in slices and stop
# while this many wait, so what a connection holds in memory stays bounded
QUEUE_CAP = 16
_SLICE = 4096
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

# header name (as received) -> environ key; names repeat on every request of a client
_KEYS: dict[bytes, str] = {}
_PROTOCOLS = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0"}
_METHODS = {name.encode(): name for name in ("GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS")}
_ENCODING = "latin-1"


class Reject(Exception):
    """The request is refused with `status`, after which the connection closes."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def _environ_key(name: bytes) -> str:
    key = _KEYS.get(name)
    if key is None:
        if b"_" in name:
            raise Reject("400 Bad Request", "'_' in a header name")
        key = name.decode(_ENCODING).upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        if len(_KEYS) < 512:  # bounded: a client inventing names must not grow it forever
            _KEYS[name] = key
    return key


class RequestReader:
    """llhttp's callbacks for one connection: turns the bytes it is fed into queued WSGI environs.

    `requests` holds, in arrival order, `(environ, keep_alive)` pairs and at most one `Reject`,
    always last: after a framing error nothing more is read from the connection.
    """

    __slots__ = ("parser", "requests", "base", "max_body", "in_message", "in_head", "fed_in_head", "environ",
                 "url", "fields", "body", "body_size", "expect_continue", "continue_sent", "done", "completed",
                 "pending", "chunked")

    def __init__(self, base: dict[str, Any], max_body: int) -> None:
        self.requests: collections.deque = collections.deque()
        self.base = base  # the environ keys every request on this connection shares
        self.max_body = max_body
        self.in_message = False
        self.in_head = False
        self.fed_in_head = 0
        self.environ: dict[str, Any] = {}
        # the open request's target pieces, (name, value) pairs and body pieces, raw: emptied, never
        # replaced, once it completes, as the parser holds their append methods
        self.url: list[bytes] = []
        self.fields: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.body_size = 0
        self.expect_continue = False
        self.continue_sent = False
        self.chunked = False
        self.done = False  # a Reject is queued or the connection was upgraded: read no more
        self.completed = 0
        self.pending: memoryview | None = None  # received, not yet parsed (see QUEUE_CAP)
        # llhttp calls back into Python per request and per header field: where a callback only
        # collects, it is the C method of a list, which costs no Python frame. The body limit holds
        # without a Python on_body: a Content-Length is checked with the head, a chunk's size in
        # on_chunk_header (where its size cannot be read, on_body counts it instead)
        self.parser = httptools.HttpRequestParser(_Callbacks(
            on_message_begin=self.on_message_begin, on_url=self.url.append, on_header=self.on_header,
            on_headers_complete=self.on_headers_complete, on_chunk_header=self.on_chunk_header,
            on_body=self.body.append if _can_peek() else self.on_body,
            on_message_complete=self.on_message_complete))

    def feed(self, data: bytes) -> None:
        """Parse one received segment; complete requests (or a refusal) are appended to `requests`.

        Call only when `pending` is None; a segment that queues QUEUE_CAP requests leaves the rest
        of itself in `pending`, parsed by `pump()` once the queue is served.
        """
        if len(data) <= _SLICE:
            self._parse(data)
        else:
            self.pending = memoryview(data)
            self.pump()

    def pump(self) -> None:
        """Parse more of `pending` while fewer than QUEUE_CAP requests wait."""
        pending = self.pending
        while pending is not None and len(self.requests) < QUEUE_CAP:
            piece, pending = pending[:_SLICE], pending[_SLICE:]
            if not pending:
                pending = None
            self._parse(piece)
        self.pending = None if self.done else pending

    def _parse(self, data: bytes | memoryview) -> None:
        if self.done:
            return
        try:
            self.parser.feed_data(data)
        except Reject as reject:
            self._refuse(reject)
        except httptools.HttpParserUpgrade:
            # Upgrade or CONNECT: we speak HTTP/1.1 only, so the request is answered, then the
            # connection closes rather than reading what follows as another request
            self.done = True
            if self.requests:
                environ, _ = self.requests[-1]
                self.requests[-1] = (environ, False)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._refuse(cause if isinstance(cause, Reject) else Reject("400 Bad Request", str(exc)))
        except httptools.HttpParserError as exc:
            message = str(exc)
            if message.startswith("Invalid") and message.endswith("version"):  # a version, not a malformed line
                self._refuse(Reject("505 HTTP Version Not Supported", "only HTTP/1.0 and HTTP/1.1 are spoken here"))
            else:
                self._refuse(Reject("400 Bad Request", message or "malformed request"))
        else:
            if self.in_head:
                # a head still open: count what it took, as httptools buffers a field until it ends
                self.fed_in_head += len(data)
                if self.fed_in_head > MAX_HEAD + 65536:
                    self._refuse(Reject("431 Request Header Fields Too Large", "request head too large"))
                elif len(self.fields) > MAX_HEADERS:
                    self._refuse(Reject("431 Request Header Fields Too Large", "too many header fields"))

    def needs_continue(self) -> bool:
        """Whether the client waits for `100 Continue` before sending the body of the open request."""
        return self.expect_continue and not self.continue_sent and self.in_message and not self.done

    def _refuse(self, reject: Reject) -> None:
        self.done = True
        self.in_message = False
        self.fields.clear()
        self.requests.append(reject)

    # -- llhttp callbacks: few, and lean, as each is a call from C into Python per request or field --

    def on_message_begin(self) -> None:
        # the rest of the per-request state was reset when the previous request completed
        self.in_message = True
        self.in_head = True

    def on_header(self, name: bytes, value: bytes) -> None:
        # decoded once the head is complete, in one loop; counted after each segment, so that one
        # segment's worth is the most a connection holds beyond the limit, and only briefly
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        fields = self.fields
        if len(fields) > MAX_HEADERS:
            raise Reject("431 Request Header Fields Too Large", "too many header fields")
        pieces = self.url
        url = b"".join(pieces)  # one piece is returned as it is
        pieces.clear()
        if self.fed_in_head:
            # the head spanned segments; within one, a segment (at most MAX_HEAD) bounds it
            size = len(url) + sum(len(name) + len(value) + 4 for name, value in fields)
            if size > MAX_HEAD:
                raise Reject("431 Request Header Fields Too Large", "request head too large")
        environ = self.base.copy()
        self.environ = environ
        keys = _KEYS
        for name, value in fields:
            key = keys.get(name) or _environ_key(name)
            if key in environ:
                if key == "HTTP_HOST" or key == "CONTENT_TYPE":
                    raise Reject("400 Bad Request", f"more than one {name.decode(_ENCODING)} header")
                environ[key] += "," + value.decode(_ENCODING)
            else:
                environ[key] = value.decode(_ENCODING)
        fields.clear()
        parser = self.parser
        version = parser.get_http_version()
        protocol = _PROTOCOLS.get(version)
        if protocol is None:
            raise Reject("505 HTTP Version Not Supported", "only HTTP/1.0 and HTTP/1.1 are spoken here")
        environ["SERVER_PROTOCOL"] = protocol
        method = parser.get_method()
        environ["REQUEST_METHOD"] = _METHODS.get(method) or method.decode(_ENCODING)
        if version == "1.1" and "HTTP_HOST" not in environ:
            raise Reject("400 Bad Request", "HTTP/1.1 request without a Host header")
        encoding = environ.get("HTTP_TRANSFER_ENCODING")
        self.chunked = encoding is not None
        if encoding is not None:
            if encoding.lower() != "chunked":
                # RFC 9112 6.1: chunked not last means no reliable length, 400; chunked after a
                # coding we do not decode (llhttp accepts `gzip, chunked`) is 501
                if encoding.rpartition(",")[2].strip(" \t").lower() != "chunked":
                    raise Reject("400 Bad Request", "Transfer-Encoding must end with chunked")
                raise Reject("501 Not Implemented", "Transfer-Encoding other than chunked")
            del environ["HTTP_TRANSFER_ENCODING"]  # the app gets the decoded body and its length
        else:
            length = environ.get("CONTENT_LENGTH")
            if length is not None and int(length) > self.max_body:  # llhttp checked it is digits
                raise Reject("413 Content Too Large", f"body over the {self.max_body} byte limit")
        expect = environ.get("HTTP_EXPECT")
        if expect is not None and version == "1.1" and expect.lower() == "100-continue":
            self.expect_continue = True
        if url[:1] != b"/":
            if b"://" in url:  # absolute-form: the path is what follows the authority
                rest = url.split(b"://", 1)[1]
                end = min((i for i in (rest.find(b"/"), rest.find(b"?"), len(rest)) if i >= 0))
                authority, url = rest[:end], rest[end:]
                if not url.startswith(b"/"):
                    url = b"/" + url
                if not authority or b"@" in authority:
                    raise Reject("400 Bad Request", "absolute-form target without a plain host")
                # RFC 9112 3.2.2: the target's authority replaces Host, so the Host check judges it
                environ["HTTP_HOST"] = authority.decode(_ENCODING)
        path, _, query = url.partition(b"?")
        environ["PATH_INFO"] = (unquote_to_bytes(path) if b"%" in path else path).decode(_ENCODING)
        environ["QUERY_STRING"] = query.decode(_ENCODING)

    def on_chunk_header(self) -> None:
        size = announced_chunk_size(self.parser)
        if size is not None:
            self.body_size += size  # llhttp holds the chunk to exactly this size
        if self.body_size > self.max_body:
            # refuse before the client sends (and we wait for) a chunk we would not take
            raise Reject("413 Content Too Large", f"body over the {self.max_body} byte limit")

    def on_body(self, body: bytes) -> None:
        """Where llhttp's chunk sizes cannot be read: count the body as it comes."""
        self.body_size += len(body)
        if self.body_size > self.max_body:
            raise Reject("413 Content Too Large", f"body over the {self.max_body} byte limit")
        self.body.append(body)

    def on_message_complete(self) -> None:
        environ = self.environ
        body = self.body
        data = b"".join(body)
        body.clear()
        environ["wsgi.input"] = io.BytesIO(data)
        environ["CONTENT_LENGTH"] = str(len(data)) if data else environ.get("CONTENT_LENGTH", "")
        # llhttp matches Connection by tokens; HTTP/1.0 with chunked closes (RFC 9112 6.1)
        keep_alive = self.parser.should_keep_alive() and not (self.chunked and environ["SERVER_PROTOCOL"] == "HTTP/1.0")
        self.requests.append((environ, keep_alive))
        self.completed += 1
        self.in_message = False
        self.environ = {}
        self.fed_in_head = 0
        if self.body_size:
            self.body_size = 0
        if self.expect_continue:
            self.expect_continue = self.continue_sent = False


class _Callbacks:
    """The callbacks an httptools parser is given (it reads them once, by attribute)."""

    def __init__(self, **callbacks: Any) -> None:
        self.__dict__.update(callbacks)


def base_environ(server_name: str, server_port: int, peer: Any, connection: dict) -> dict[str, Any]:
    """The environ keys shared by every request on one connection (contract C1)."""
    remote = peer if isinstance(peer, tuple) else ("", 0)
    return {
        "SCRIPT_NAME": "", "SERVER_NAME": server_name, "SERVER_PORT": str(server_port),
        "REMOTE_ADDR": str(remote[0]), "REMOTE_PORT": str(remote[1]) if len(remote) > 1 else "",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
        "servicefactory.connection": connection,
    }


_STATUS_LINES: dict[str, bytes] = {}
_OMIT = frozenset(("content-length", "connection", "date"))
# an app's header (name, value) -> its encoded line, or _ASKS_CLOSE for `Connection: close`: apps
# send the same few headers on every answer, so each is checked and encoded once (bounded, as an
# app could send ever new values); the ones we set ourselves (Content-Length, Date) are skipped
_LINES: dict[tuple[str, str], bytes] = {}
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_UNSAFE_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_STATUS = re.compile(r"[1-5][0-9][0-9](?: [^\x00-\x1f\x7f]*)?")
_ASKS_CLOSE = b"Connection: close\r\n"
_KEEP_END = b"\r\n"
_CLOSE_END = _ASKS_CLOSE + b"\r\n"


def answer(status: str, headers: list[tuple[str, str]], body: bytes, keep_alive: bool,
           head_only: bool = False) -> tuple[bytes, bool]:
    """A whole HTTP/1.1 response (Content-Length, Date and Connection set by us), and whether the
    connection stays open: not if `keep_alive` is false or the app's headers say `Connection: close`
    (contract C1).

    Headers given as a tuple (of (name, value) tuples, never changed) are encoded and checked once:
    an app that answers with the same headers each time (api.App does) passes one constant.
    """
    if type(headers) is tuple:
        try:
            cached = _HEADS.get((status, headers))
        except TypeError:  # a header that is a list: unhashable, so encoded each time
            cached = _head(status, headers, remember=False)
        if cached is None:
            cached = _head(status, headers)
        head, keeps = cached
        keep_alive = keep_alive and keeps
        end = _KEEP_END if keep_alive else _CLOSE_END
        length = _LENGTHS.get(len(body)) or _length_line(len(body))
        if head_only:
            return b"".join((head, length, _date_line(), end)), keep_alive
        return b"".join((head, length, _date_line(), end, body)), keep_alive
    parts = [_STATUS_LINES.get(status) or _status_line(status)]
    for header in headers:
        line = _LINES.get(header) if type(header) is tuple else None
        if line is None:
            if header[0] == "Content-Length":  # what every app sends; ours replaces it
                continue
            line = _header_line(tuple(header))
        if line is _ASKS_CLOSE:
            keep_alive = False
        elif line:
            parts.append(line)
    parts.append(b"Content-Length: %d\r\n" % len(body))
    parts.append(_date_line())
    parts.append(_KEEP_END if keep_alive else _CLOSE_END)
    if not head_only:
        parts.append(body)
    return b"".join(parts), keep_alive


_HEADS: dict[tuple, tuple[bytes, bool]] = {}
_LENGTHS: dict[int, bytes] = {}  # body length -> its Content-Length line, for the small bodies most answers have


def _length_line(length: int) -> bytes:
    line = b"Content-Length: %d\r\n" % length
    if length < 4096:
        _LENGTHS[length] = line
    return line


def _head(status: str, headers: tuple, remember: bool = True) -> tuple[bytes, bool]:
    """(status line and header lines, whether they allow keep-alive) for constant headers, cached."""
    parts = [_STATUS_LINES.get(status) or _status_line(status)]
    keeps = True
    for header in headers:
        line = _LINES.get(header) if type(header) is tuple else None
        if line is None:
            if header[0] == "Content-Length":
                continue
            line = _header_line(tuple(header))
        if line is _ASKS_CLOSE:
            keeps = False
        elif line:
            parts.append(line)
    cached = (b"".join(parts), keeps)
    if remember and len(_HEADS) < 64:
        _HEADS[(status, headers)] = cached
    return cached


def response(status: str, headers: list[tuple[str, str]], body: bytes, keep_alive: bool,
             head_only: bool = False) -> bytes:
    """A whole HTTP/1.1 response, Content-Length, Date and Connection set by us."""
    return answer(status, headers, body, keep_alive, head_only)[0]


def _status_line(status: str) -> bytes:
    if not isinstance(status, str) or not _STATUS.fullmatch(status):
        raise ValueError(f"the app's status {status!r} is not a code and a reason on one line")
    line = f"HTTP/1.1 {status}\r\n".encode(_ENCODING)
    if len(_STATUS_LINES) < 64:
        _STATUS_LINES[status] = line
    return line


def _header_line(header: tuple[str, str]) -> bytes:
    name, value = header
    # checked once per distinct header (then cached): a CR or LF from the app would let whatever
    # it echoes (a caller's input) write headers, or a whole second answer, of its own
    if not (isinstance(name, str) and isinstance(value, str) and _TOKEN.fullmatch(name)
            and not _UNSAFE_VALUE.search(value)):
        raise ValueError(f"the app's header {header!r} cannot be sent: not a token name and a one-line value")
    lower = name.lower()
    if lower == "connection":
        line = _ASKS_CLOSE if "close" in (token.strip().lower() for token in value.split(",")) else b""
    elif lower in _OMIT:
        return b""  # its value varies: not worth a cache entry
    else:
        line = f"{name}: {value}\r\n".encode(_ENCODING)
    if len(_LINES) < 256:
        _LINES[header] = line
    return line


def error_response(status: str, message: str, kind: str = "HTTPError") -> bytes:
    """A JSON error answer that closes the connection."""
    body = json.dumps({"error": {"type": kind, "message": message}}).encode() + b"\n"
    return response(status, [("Content-Type", "application/json")], body, keep_alive=False)


def unavailable() -> bytes:
    """Contract C3: the answer to a request received but not run because the service stops."""
    return error_response("503 Service Unavailable", "the service is stopping; the request was not run; "
                          "safe to retry", kind="ServiceUnavailable")


_date_cache: list = [0, b""]


def _date_line() -> bytes:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[:] = [now, time.strftime("Date: %a, %d %b %Y %H:%M:%S GMT\r\n", time.gmtime(now)).encode()]
    return _date_cache[1]


_peek: list = []  # [function or None], decided on first use


def announced_chunk_size(parser: httptools.HttpRequestParser) -> int | None:
    """The size llhttp just read from a chunk header, or None where it cannot be seen.

    httptools gives no size with `on_chunk_header`; llhttp holds it in its `content_length`. We read
    it through ctypes, at offsets checked first against a parser fed a known chunk (and, each time,
    that the struct points back to its parser), so a different build degrades to enforcing the
    body limit only as chunk data arrives, never to a wrong read.
    """
    if not _peek:
        _peek.append(_make_peek())
    peek = _peek[0]
    return None if peek is None else peek(parser)


def _can_peek() -> bool:
    """Whether announced_chunk_size() can read sizes on this build (decided once)."""
    if not _peek:
        _peek.append(_make_peek())
    return _peek[0] is not None


def _make_peek() -> Any:
    import ctypes

    word = ctypes.sizeof(ctypes.c_void_p)
    if word != 8:
        return None
    # cdef class HttpParser: PyObject_HEAD (2 words), its vtable pointer, then `llhttp_t* _cparser`;
    # llhttp_t: _index, _span_pos0, _span_cb0, error, reason, error_pos, data (at 48), _current,
    # content_length (at 64)
    def peek(parser: httptools.HttpRequestParser) -> int | None:
        struct = ctypes.c_void_p.from_address(id(parser) + 3 * word).value
        if not struct or ctypes.c_void_p.from_address(struct + 48).value != id(parser):
            return None
        return ctypes.c_uint64.from_address(struct + 64).value

    class Probe:
        seen: int | None = None

        def on_chunk_header(self) -> None:
            Probe.seen = peek(parser)

    try:
        parser = httptools.HttpRequestParser(Probe())
        parser.feed_data(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nabc\r\n")
    except Exception:  # pragma: no cover - any surprise: do without
        return None
    return peek if Probe.seen == 0xabc else None
