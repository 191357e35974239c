"""One keep-alive HTTP/1.1 connection of the client: send a request, read its answer.

`client.perform` owns the policy (which errors mean what, what may be sent again); this module only
moves bytes: one send and one recv per call on a blocking socket whose timeouts the kernel keeps,
a large body sent in pieces while watching for an early answer (a 413 sent before the body was
read), and the few answer headers a call needs.
"""
from __future__ import annotations

import socket
import struct
import time

#: bodies above this are sent in pieces, watching for an early answer (a 413 sent before the body is read)
_PIECE = 256 * 1024


class Stale(Exception):
    """The request could not be sent: the peer had closed the connection."""


_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT


class Connection:
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
            self.sock.recv(1, _PEEK)
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
                raise Stale() from None
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
