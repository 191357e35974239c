"""Names shared by server and client: which action names are valid, which hosts are loopback, host:port."""
from __future__ import annotations

import re

# letters, digits, '_' and '-', in dot-separated words: no '..', no '/', no NUL, no unicode, no CR/LF
_ACTION_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\Z")


def valid_action_name(name: object) -> bool:
    """Whether `name` may name an action (ASCII words joined by single dots)."""
    return isinstance(name, str) and bool(_ACTION_NAME.match(name))


#: the one name a Host header may use for a loopback service besides literal loopback addresses:
#: browsers resolve `localhost` to loopback themselves; any other name could be DNS-rebound
LOOPBACK_NAMES = frozenset({"localhost"})
#: a wildcard bind is reached through loopback on this host
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def is_loopback_address(address: str) -> bool:
    """Whether `address` is a literal loopback IP address: 127.0.0.0/8, ::1, or IPv4-mapped 127.x."""
    import socket

    address = address.strip("[]").split("%", 1)[0]
    try:
        if ":" not in address:
            return socket.inet_pton(socket.AF_INET, address)[0] == 127  # dotted quads only: not 127.1
        packed = socket.inet_pton(socket.AF_INET6, address)
    except (OSError, ValueError):
        return False
    return packed == _IPV6_LOOPBACK or (packed[:12] == _IPV4_MAPPED and packed[12] == 127)


_IPV6_LOOPBACK = bytes(15) + b"\x01"
_IPV4_MAPPED = bytes(10) + b"\xff\xff"


def is_loopback_literal(host: str) -> bool:
    """Whether a Host or Origin may name a loopback service by `host`: `localhost` or a loopback address."""
    return host.lower() in LOOPBACK_NAMES or (host[:1].isdigit() or ":" in host) and is_loopback_address(host)


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps a service reachable from this machine only.

    Decided by resolving, never by spelling: every address the name resolves to must be loopback
    (`localhost.localdomain` may point anywhere). A name that does not resolve is not loopback.
    """
    import socket

    host = host.strip("[]")
    if not host:
        return False
    if is_loopback_address(host):
        return True
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError, ValueError):
        return False
    return bool(infos) and all(is_loopback_address(str(info[4][0])) for info in infos)


def connect_host(host: str) -> str:
    """The address a client on this host connects to for a service bound to `host`."""
    return _WILDCARDS.get(host, host)


def host_port(host: str, port: int) -> str:
    """`host:port`, with an IPv6 host in brackets (as in URLs and Host headers)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
