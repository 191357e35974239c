"""Names shared by server and client: which action names are valid, which hosts are loopback, host:port."""
from __future__ import annotations

import re

# letters, digits, '_' and '-', in dot-separated words: no '..', no '/', no NUL, no unicode, no CR/LF
_ACTION_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\Z")


def valid_action_name(name: object) -> bool:
    """Whether `name` may name an action (ASCII words joined by single dots)."""
    return isinstance(name, str) and bool(_ACTION_NAME.match(name))


#: what a Host header may say for a service bound to loopback
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "localhost.localdomain", "ip6-localhost"})
#: a wildcard bind is reached through loopback on this host
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps a service reachable from this machine only."""
    return host.strip("[]").lower() in LOOPBACK_NAMES


def connect_host(host: str) -> str:
    """The address a client on this host connects to for a service bound to `host`."""
    return _WILDCARDS.get(host, host)


def host_port(host: str, port: int) -> str:
    """`host:port`, with an IPv6 host in brackets (as in URLs and Host headers)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
