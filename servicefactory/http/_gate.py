"""Who may call a service: Host and Origin checks, the caller's uid on loopback, the token.

Loopback services answer their own user and root (and `allow_users`) without a token: the uid
comes from the kernel, once per connection (contract C1's per-connection dict; per request where
the server provides none). Off-host binds need the token from everyone; wrong tokens are
throttled per peer. Every refusal is a (status, error type, message) for the app to answer.
"""
from __future__ import annotations

import logging
from _operator import _compare_digest as compare_digest  # hmac's, without loading OpenSSL (3.7 MiB)
from typing import Iterable

from servicefactory.http._guard import Throttle
from servicefactory._names import is_loopback_address, is_loopback_literal

logger = logging.getLogger(__name__)


def allowed_host(host_header: str, bound_host: str) -> bool:
    """Whether a Host header (or an Origin's host) names a service bound to `bound_host`."""
    if not host_header:
        return True  # HTTP/1.0 clients send none; browsers always do
    host = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
    host = host.lower().strip("[]")
    return host == bound_host or is_loopback_literal(host)


def allowed_origin(origin: str, bound_host: str) -> bool:
    """Whether an Origin header names this service's own origin (never a page of another site)."""
    # `null` (sandboxed frames, file: pages) and `file://` name no host: foreign, like any other page
    scheme, separator, rest = origin.partition("://")
    host = rest.split("/", 1)[0]
    return bool(separator and host) and allowed_host(host, bound_host)


class Gate:
    """The access rules of one service's API."""

    def __init__(self, *, token: str | None = None, require_token: bool | None = None,
                 bound_host: str = "127.0.0.1", local_address: tuple[str, int] | None = None,
                 allowed_uids: Iterable[int] | None = None) -> None:
        self.token = token.encode() if token else None
        # required: every request needs the token (off-host binds); otherwise a token only opens a
        # loopback service to users the peer check refuses
        self.require_token = bool(token) if require_token is None else require_token
        self.bound_host = bound_host
        # a wildcard bind has no single name to check Host against; the token guards it instead
        self.check_host = bound_host not in ("0.0.0.0", "::", "")
        #: the uids whose loopback connections are served without a token; None: no peer check
        self.allowed_uids = frozenset(allowed_uids) if allowed_uids is not None else None
        self.check_peer = self.allowed_uids is not None and not self.require_token
        self.local_address = local_address
        self.throttle = Throttle()
        self._hosts: dict[str, bool] = {}  # Host header -> allowed_host(), as judged once

    def refuse(self, environ: dict) -> tuple[int, str, str] | None:
        """(status, error type, message) if this request may not be served; None if it may."""
        if self.check_host:
            host = environ.get("HTTP_HOST", "")
            allowed = self._hosts.get(host)
            if allowed is None:
                allowed = allowed_host(host, self.bound_host)
                if len(self._hosts) < 64:  # clients send the same Host on every call; bounded, as any may be sent
                    self._hosts[host] = allowed
            if not allowed:
                return (403, "Forbidden", "Host header does not name this service (DNS rebinding?)")
        origin = environ.get("HTTP_ORIGIN")
        if origin is not None and not allowed_origin(origin, self.bound_host):
            return (403, "Forbidden", "cross-origin requests are refused")
        if environ.get("HTTP_SEC_FETCH_SITE") in ("cross-site", "same-site"):
            return (403, "Forbidden", "cross-site requests are refused")
        if self.require_token:
            return self._check_token(environ)
        if not self.check_peer or self.allowed_uids is None:
            return None
        uid = self.peer_uid(environ)
        if uid in self.allowed_uids:
            return None
        if self.token is not None and "HTTP_AUTHORIZATION" in environ:
            return self._check_token(environ, uid)  # a token opens the service to other users
        connection = environ.get("servicefactory.connection")
        if connection is None or not connection.get("refused"):
            if connection is not None:
                connection["refused"] = True
            logger.warning("refused a connection from %s (uid %s): not the service's user; "
                           "endpoint(allow_users=[...]) or a token opens it to others",
                           _peer_text(environ), "unknown" if uid is None else uid)
        return (403, "Forbidden", "this service answers its own user only (and root)")

    def peer_uid(self, environ: dict) -> int | None:
        """The uid owning the peer's socket, looked up once per connection (contract C1)."""
        connection = environ.get("servicefactory.connection")
        if connection is not None and "uid" in connection:
            return connection["uid"]
        uid = None
        remote = environ.get("REMOTE_ADDR", "")
        if is_loopback_address(remote) and self.local_address is not None:
            from servicefactory.http._peercred import peer_uid
            try:
                uid = peer_uid(self.local_address, (remote, int(environ.get("REMOTE_PORT") or 0)))
            except ValueError:
                uid = None
        if connection is not None:
            connection["uid"] = uid
        return uid

    def _throttle_key(self, environ: dict, uid: int | None) -> tuple[str, int | None]:
        # per peer address, and on loopback (one address for every local user) per uid too, so
        # that another local user cannot lock the owner out by failing on purpose
        remote = environ.get("REMOTE_ADDR", "")
        if is_loopback_address(remote):
            return remote, uid if uid is not None else self.peer_uid(environ)
        return _network_of(remote), None

    def _check_token(self, environ: dict, uid: int | None = None) -> tuple[int, str, str] | None:
        peer = self._throttle_key(environ, uid) if self.throttle else None
        wait = self.throttle.wait(peer) if peer is not None else 0.0
        if wait > 0:
            environ["servicefactory.retry_after"] = max(1, int(wait + 0.999))
            return (429, "TooManyRequests", f"too many wrong tokens; retry in {wait:.1f} s")
        given = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, credential = given.partition(" ")
        if scheme.lower() == "bearer" and compare_digest(credential.strip().encode(), self.token or b"\0"):
            if peer is not None:
                self.throttle.succeeded(peer)
            return None
        failures = self.throttle.failed(peer if peer is not None else self._throttle_key(environ, uid))
        logger.warning("refused a request from %s: %s token (%d recent failure%s)", _peer_text(environ),
                       "wrong" if given else "no", failures, "" if failures == 1 else "s")
        return (401, "Unauthorized", "missing or wrong token: send 'Authorization: Bearer <token>'")


def _network_of(address: str) -> str:
    """The unit a peer is throttled by: its IPv4 address, or its IPv6 /64 (which one host gets)."""
    import socket

    try:
        packed = socket.inet_pton(socket.AF_INET6, address.split("%", 1)[0])
    except (OSError, ValueError):
        return address  # IPv4, or not an address at all
    if packed[:12] == bytes(10) + b"\xff\xff":
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return socket.inet_ntop(socket.AF_INET6, packed[:8] + bytes(8)) + "/64"


def _peer_text(environ: dict) -> str:
    address = environ.get("REMOTE_ADDR") or "unknown"
    port = environ.get("REMOTE_PORT")
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
