"""The two ways the etcd registry reaches one endpoint's v3 JSON gateway, behind one `post(path, payload)`.

- `Library`: etcd3gw's client (over a requests session). Everything that writes goes through it:
  claims, leases and their keep-alives, transactions.
- `Reader`: one keep-alive connection of the standard library's http.client, for a process that
  has only read so far (`status`, a cold `perform`): importing etcd3gw and requests costs such a
  command more than everything else it does (~200 ms of its ~300 ms, measured with -X importtime).
  It posts the same JSON to the same gateway paths that etcd3gw posts for its own reads; the
  messages (the key ranges, base64 keys) are built by the registry for both.

Both raise the same three errors, so that the registry maps them to one message each, and both
connect as `Security` says (TLS, etcd's authentication token).
"""
from __future__ import annotations

import json

TYPE_CHECKING = False  # typing is for type checkers only: importing it would slow `servicefactory perform`
if TYPE_CHECKING:
    from typing import Any

API_PATH = "/v3/"  # etcd >= 3.4: given, so that no process pays a /version round trip


class Security:
    """How every connection to the endpoints is made: TLS (`etcds://`, with a CA, and a client
    certificate if given) and etcd's own authentication (a token from user and password, sent with
    each request; `auth` is shared by every wire of one registry and updated when it expires)."""

    def __init__(self, tls: bool = False, ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, user: str | None = None, password: str | None = None) -> None:
        self.tls, self.ca_file, self.cert_file, self.key_file = tls, ca_file, cert_file, key_file
        self.user, self.password = user, password
        self.auth: dict[str, str] = {}  # {"Authorization": token} once authenticated
        self._context: Any = None

    def context(self) -> Any:
        """The ssl context for http.client (made once), or None without TLS."""
        if not self.tls:
            return None
        if self._context is None:
            import ssl

            context = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file:
                context.load_cert_chain(self.cert_file, self.key_file)
            self._context = context
        return self._context


class NoAnswer(Exception):
    """The endpoint did not answer within the timeout."""


class Failed(Exception):
    """The endpoint could not be reached (refused, unknown host, reset); args[0] says why, in a few words."""


class Rejected(Exception):
    """The endpoint answered, but not with a gateway's JSON success: args[0] is its detail."""


def _why(text: str, timeout: float) -> str:
    """A few words for why a connection failed, out of a long message."""
    text = text.lower()
    for needle, words in (("refused", "connection refused"), ("timed out", f"no answer within {timeout:g} s"),
                          ("name or service not known", "unknown host"), ("resolution", "unknown host"),
                          ("unreachable", "network unreachable"), ("reset", "connection reset"),
                          ("certificate", "TLS certificate refused"), ("ssl", "TLS handshake failed")):
        if needle in text:
            return words
    return " ".join(text.split())[:80]


class Reader:
    """Posts to one endpoint's gateway over a keep-alive http.client connection per thread (an
    http.client connection serves one request at a time: `stop --all` reads from many threads).
    Reads only: a request on a connection the server closed meanwhile is sent again once, which
    only a read may be."""

    def __init__(self, host: str, port: int, timeout: float, security: Security) -> None:
        import threading

        self.host, self.port, self.timeout = host, port, timeout
        self.security = security
        self._local = threading.local()
        self._every: list[Any] = []  # every thread's, to close them all when the reader goes
        self._every_lock = threading.Lock()

    @property
    def _connection(self) -> Any:
        return getattr(self._local, "connection", None)

    @_connection.setter
    def _connection(self, connection: Any) -> None:
        self._local.connection = connection
        if connection is not None:
            with self._every_lock:
                self._every.append(connection)

    def _connect(self) -> Any:
        import http.client

        import socket

        if self.security.tls:
            connection = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                                     context=self.security.context())
        else:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        connection.connect()
        # http.client sends the head and the body in two writes: with Nagle's algorithm the body
        # waits for the server's delayed ACK of the head (~40 ms a request; urllib3 sets this too)
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection

    def post(self, path: str, payload: dict) -> Any:
        """The decoded JSON answer to `payload` posted to `path` (`/kv/range`)."""
        import http.client
        import socket

        body = json.dumps(payload).encode()
        for attempt in (0, 1):
            reused = self._connection is not None
            try:
                if not reused:
                    self._connection = self._connect()
                self._connection.request("POST", API_PATH + path.lstrip("/"), body,
                                         {"Content-Type": "application/json", **self.security.auth})
                response = self._connection.getresponse()
                data = response.read()
            except socket.timeout:
                self.close()
                raise NoAnswer() from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if reused and attempt == 0:
                    continue  # a keep-alive connection the server had closed: once more, on a new one
                raise Failed(_why(str(exc) or type(exc).__name__, self.timeout)) from None
            if response.status != 200:
                raise Rejected(" ".join(f"{data.decode(errors='replace')} {response.reason}".split())[:200])
            try:
                return json.loads(data)
            except ValueError as exc:
                raise Rejected(f"not JSON ({exc})") from None
        raise AssertionError("unreachable")  # the loop returns or raises

    def close(self) -> None:
        """Close this thread's connection (a new one is made on its next post)."""
        connection = self._connection
        if connection is not None:
            connection.close()
            self._local.connection = None
            with self._every_lock:
                self._every.remove(connection)

    def close_all(self) -> None:
        """Close every thread's connection."""
        with self._every_lock:
            every, self._every = self._every, []
        for connection in every:
            connection.close()

    def __del__(self) -> None:
        # a registry dropped without closing: its sockets close quietly, as a requests session's do
        try:
            self.close_all()
        except Exception:
            pass


class Library:
    """Posts through etcd3gw's client (its own requests session, never through an environment's proxy)."""

    def __init__(self, host: str, port: int, timeout: float, security: Security) -> None:
        import etcd3gw
        import requests

        session = requests.Session()
        session.trust_env = False  # never through an HTTP proxy from the environment
        if security.ca_file:
            session.verify = security.ca_file
        if security.cert_file:
            session.cert = (security.cert_file, security.key_file) if security.key_file else security.cert_file
        self.timeout = timeout
        self.security = security
        self.client = etcd3gw.Etcd3Client(host=host, port=port, protocol="https" if security.tls else "http",
                                          timeout=timeout, api_path=API_PATH, session=session)

    def post(self, path: str, payload: dict) -> Any:
        """The decoded JSON answer to `payload` posted to `path`."""
        from etcd3gw import exceptions

        try:
            return self.client.post(self.client.get_url(path), json=payload, headers=dict(self.security.auth))
        except exceptions.ConnectionTimeoutError:
            raise NoAnswer() from None
        except exceptions.ConnectionFailedError as exc:
            raise Failed(_why(str(exc.__context__ or exc), self.timeout)) from None
        except requests_errors() as exc:  # e.g. an unusable CA or certificate file, raised before any connection
            raise Failed(_why(str(exc), self.timeout)) from None
        except exceptions.Etcd3Exception as exc:
            parts = [str(part) for part in (getattr(exc, "detail_text", None), *exc.args) if part]
            raise Rejected(" ".join(" ".join(parts).split())[:200] or type(exc).__name__) from None
        except ValueError as exc:  # not JSON: not etcd's gateway at that address
            raise Rejected(f"not JSON ({exc})") from None

    def close(self) -> None:
        """Close the session's connections."""
        self.client.session.close()


def requests_errors() -> tuple:
    """What requests raises that etcd3gw passes on (an SSL error, a bad certificate file)."""
    import requests

    return (requests.exceptions.RequestException, OSError)
