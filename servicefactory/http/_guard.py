"""Who may call: token strength, failed-token throttling per peer, and safe text for errors and logs."""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict

#: a token must carry at least this many bits of entropy (what `servicefactory token` gives: 256)
MIN_TOKEN_BITS = 128
#: failed token attempts a peer gets before it must wait
FREE_FAILURES = 5
#: the longest a peer is made to wait between attempts, in seconds
MAX_DELAY = 60.0
#: a peer's failures are forgotten after this long without one
FORGET_AFTER = 600.0
#: exception text longer than this is cut in 500 answers and in logs
MAX_ERROR_TEXT = 4096

# the smallest usual alphabet a token's characters come from, and its size
_ALPHABETS = (
    (frozenset("0123456789"), 10),
    (frozenset("0123456789abcdef"), 16),
    (frozenset("0123456789ABCDEF"), 16),
    (frozenset("0123456789abcdefghijklmnopqrstuvwxyz"), 36),
    (frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"), 36),
    (frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"), 62),
    (frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_+/="), 64),
)


def token_bits(token: str) -> float:
    """A generous estimate of the entropy of `token` in bits, as if each character were drawn at random.

    Length times log2 of the smallest usual alphabet holding every character (digits, hex,
    base36, base62, base64), but a string with few distinct characters counts only as much as a
    random one over that small alphabet ("aaaa...", "abab...").
    """
    if not token:
        return 0.0
    # a token that repeats a shorter block ("0123456789abcdef" twice) holds no more than that block
    for period in range(1, len(token) // 2 + 1):
        if token[period:] == token[:-period]:
            return token_bits(token[:period])
    chars = set(token)
    size = next((size for alphabet, size in _ALPHABETS if chars <= alphabet), 95)
    bits = len(token) * math.log2(size)
    # a random string of this length over `size` symbols shows about this many distinct ones;
    # a string showing far fewer is a pattern, not a draw: rate it by the symbols it does use
    expected = size * (1 - (1 - 1 / size) ** len(token))
    if len(chars) < expected / 2:
        bits = len(token) * math.log2(max(2, len(chars)))
    return bits


def weak_token_message(where: str) -> str:
    """The one line refusing a weak token found in `where`."""
    return (f"the token in {where} is too weak (under {MIN_TOKEN_BITS} bits: use at least 22 random "
            f"base64url or 32 hex characters); generate one with `servicefactory token`")


def new_token() -> str:
    """A fresh random token: 256 bits, URL-safe base64 (43 characters)."""
    import secrets

    return secrets.token_urlsafe(32)


class Throttle:
    """Failed token attempts per peer: after FREE_FAILURES, each further one doubles the wait.

    The wait is answered with 429 and Retry-After rather than slept in a worker, so a
    brute-forcing peer holds no thread and other peers are served as usual.
    """

    def __init__(self, max_peers: int = 4096) -> None:
        self._lock = threading.Lock()
        self._peers: OrderedDict[object, tuple[int, float]] = OrderedDict()  # peer -> (failures, last)
        self._max_peers = max_peers

    def __bool__(self) -> bool:
        return bool(self._peers)

    def wait(self, peer: object) -> float:
        """Seconds `peer` must still wait before its next attempt is looked at (0: go ahead)."""
        with self._lock:
            entry = self._peers.get(peer)
        if entry is None:
            return 0.0
        failures, last = entry
        now = time.monotonic()
        if now - last > FORGET_AFTER:
            return 0.0
        if failures < FREE_FAILURES:
            return 0.0
        return max(0.0, last + self._delay(failures) - now)

    def failed(self, peer: object) -> int:
        """Record a failed attempt by `peer`; return its count of recent failures."""
        now = time.monotonic()
        with self._lock:
            failures, last = self._peers.pop(peer, (0, now))
            failures = 1 if now - last > FORGET_AFTER else failures + 1
            self._peers[peer] = (failures, now)
            while len(self._peers) > self._max_peers:
                self._peers.popitem(last=False)  # the peer that failed longest ago
        return failures

    def succeeded(self, peer: object) -> None:
        """Forget `peer`'s failures: it knows the token."""
        if self._peers:
            with self._lock:
                self._peers.pop(peer, None)

    @staticmethod
    def _delay(failures: int) -> float:
        return min(MAX_DELAY, 2.0 ** (failures - FREE_FAILURES))  # 1 s, 2 s, 4 s, ...


def cut(text: str, limit: int = MAX_ERROR_TEXT) -> str:
    """`text`, cut to `limit` characters with a marker saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters cut]"


def short_traceback(error: BaseException) -> str:
    """The traceback of `error` with every message in it cut to MAX_ERROR_TEXT characters."""
    import traceback

    return "".join(cut(part) for part in traceback.format_exception(error)).rstrip("\n")
