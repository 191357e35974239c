"""HTTP/1.1 message parsing for the server, strict where leniency lets requests be smuggled.

Header names must be RFC 9110 tokens without '_' (which WSGI would fold into '-'), values carry no
control characters, Transfer-Encoding is `chunked` or nothing, chunk sizes are plain hex, and a
request head must end with CRLF CRLF.
"""
from __future__ import annotations

import json
import re
import sys
import time
from typing import Any, Callable
from urllib.parse import unquote_to_bytes

MAX_HEAD = 64 * 1024
MAX_HEADERS = 100

_TOKEN = re.compile(rb"[!#$%&'*+\-.^`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,8})(?:[ \t]*;[^\r\n]*)?\Z")
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*([0-9]{1,12})[ \t]*\r\n", re.IGNORECASE)
_NEEDS_WORKER = re.compile(rb"\r\n(?:transfer-encoding|expect)[ \t]*:", re.IGNORECASE)


class Reject(Exception):
    """The request is refused with `status`, after which the connection closes."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def head_end(buffer: bytes) -> int:
    """Where the request head in `buffer` ends (index of CRLF CRLF), -1 if not yet; Reject if it never will."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if b"\n\n" in buffer:
            raise Reject("400 Bad Request", "request head lines must end with CRLF")
        if len(buffer) > MAX_HEAD:
            raise Reject("431 Request Header Fields Too Large", "request head too large")
    elif end > MAX_HEAD:
        raise Reject("431 Request Header Fields Too Large", "request head too large")
    return end


def complete_request_length(buffer: bytes, max_body: int) -> int | None:
    """Bytes of the first request in `buffer` if its head and a Content-Length body are all there.

    None means a worker must take over as is: the head is not complete, or the body is chunked,
    expects a 100 Continue, is too large, or is malformed (the worker answers the error).
    """
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buffer[:end + 2]
    if _NEEDS_WORKER.search(head):
        return end + 4
    match = _CONTENT_LENGTH.search(head)
    length = int(match.group(1)) if match else 0
    if length > max_body:
        return end + 4
    return end + 4 + length if len(buffer) >= end + 4 + length else -1


def parse_head(head: bytes, server_name: str, server_port: int) -> tuple[dict[str, Any], str]:
    """The WSGI environ (without wsgi.input) and HTTP version of a request head (CRLF CRLF excluded)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1]:
        raise Reject("400 Bad Request", "malformed request line")
    method, target, version = (part.decode("latin-1") for part in parts)
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise Reject("505 HTTP Version Not Supported", "only HTTP/1.0 and HTTP/1.1 are spoken here")
    if len(lines) > MAX_HEADERS + 1:
        raise Reject("431 Request Header Fields Too Large", "too many header fields")
    if target.startswith(("http://", "https://")):
        target = "/" + target.split("://", 1)[1].partition("/")[2]
    path, _, query = target.partition("?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method, "SCRIPT_NAME": "", "QUERY_STRING": query,
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
        "SERVER_NAME": server_name, "SERVER_PORT": str(server_port), "SERVER_PROTOCOL": version,
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
    }
    for raw in lines[1:]:
        name, colon, value = raw.partition(b":")
        if not colon or not _TOKEN.match(name) or b"_" in name:
            raise Reject("400 Bad Request", "malformed header line")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise Reject("400 Bad Request", "control character in a header value")
        key = name.decode("latin-1").upper().replace("-", "_")
        text = value.decode("latin-1")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if key in environ and environ[key] != text:
                raise Reject("400 Bad Request", f"conflicting {name.decode('latin-1')} headers")
            environ[key] = text
        else:
            key = "HTTP_" + key
            environ[key] = environ[key] + "," + text if key in environ else text
    return environ, version


def body_length(environ: dict[str, Any], max_body: int) -> int | None:
    """The Content-Length to read, or None for a chunked body; Reject what cannot be read safely."""
    encoding = environ.get("HTTP_TRANSFER_ENCODING")
    length_text = environ.get("CONTENT_LENGTH", "")
    if encoding is not None:
        if encoding.strip().lower() != "chunked":
            raise Reject("501 Not Implemented", "Transfer-Encoding other than chunked")
        if length_text:
            raise Reject("400 Bad Request", "both Content-Length and Transfer-Encoding")
        return None
    if not length_text:
        return 0
    if not (length_text.isascii() and length_text.isdigit()):
        raise Reject("400 Bad Request", "invalid Content-Length")
    length = int(length_text)
    if length > max_body:
        raise Reject("413 Content Too Large", f"body over the {max_body} byte limit")
    return length


def read_chunked(recv: Callable[[], bytes], buffer: bytes, max_body: int) -> tuple[bytes, bytes]:
    """Decode a chunked body from `buffer` and more `recv()` calls; return (body, what follows it)."""
    body = bytearray()
    while True:
        while b"\r\n" not in buffer:
            if len(buffer) > 4096:
                raise Reject("400 Bad Request", "invalid chunk header")
            buffer += recv()
        line, buffer = buffer.split(b"\r\n", 1)
        match = _CHUNK_SIZE.match(line)
        if not match:
            raise Reject("400 Bad Request", "invalid chunk size")
        size = int(match.group(1), 16)
        if len(body) + size > max_body:
            raise Reject("413 Content Too Large", f"body over the {max_body} byte limit")
        if size == 0:
            while True:  # trailer fields, then an empty line
                while b"\r\n" not in buffer:
                    if len(buffer) > 4096:
                        raise Reject("400 Bad Request", "trailer too large")
                    buffer += recv()
                line, buffer = buffer.split(b"\r\n", 1)
                if not line:
                    return bytes(body), buffer
        while len(buffer) < size + 2:
            buffer += recv()
        if buffer[size:size + 2] != b"\r\n":
            raise Reject("400 Bad Request", "chunk data not followed by CRLF")
        body += buffer[:size]
        buffer = buffer[size + 2:]


def wants_keep_alive(environ: dict[str, Any], version: str) -> bool:
    """Whether the client keeps the connection open after this request."""
    connection = environ.get("HTTP_CONNECTION", "").lower()
    if version == "HTTP/1.0":
        return "keep-alive" in connection
    return "close" not in connection


def response(status: str, headers: list[tuple[str, str]], body: bytes, keep_alive: bool,
             head_only: bool = False) -> bytes:
    """A whole HTTP/1.1 response, Content-Length and Date set by us."""
    lines = [f"HTTP/1.1 {status}"]
    lines.extend(f"{name}: {value}" for name, value in headers
                 if name.lower() not in ("content-length", "connection", "date"))
    lines.append(f"Content-Length: {len(body)}")
    lines.append(f"Date: {_http_date()}")
    if not keep_alive:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


def error_response(status: str, message: str) -> bytes:
    """A JSON error answer that closes the connection."""
    body = json.dumps({"error": {"type": "HTTPError", "message": message}}).encode() + b"\n"
    return response(status, [("Content-Type", "application/json")], body, keep_alive=False)


_date_cache = [0, ""]


def _http_date() -> str:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[:] = [now, time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now))]
    return _date_cache[1]
