"""A copy of the etcd registry's keys kept fresh by an etcd watch, for a long-lived client.

`EtcdRegistry.follow()` starts one: a thread reads the whole prefix once, then watches it from the
revision after that read, applying every put and delete as it arrives. While the watch stream
is up, the registry answers reads from the copy (no round trip); `version` changes with every
event, so that a cached view (the spread of a service's instances) is gathered again at once when
something changed, and never merely because time passed.

While the watch is down the copy still answers for up to `grace` seconds (the lease TTL: what
etcd would have dropped by then may be in it), so that a client calling known instances keeps
calling through a short etcd outage; then reads go to etcd, and fail as it does.

The stream is read with requests (etcd3gw's session), not with etcd3gw's `Watcher`: that one
reads its stream in a pool thread of its own and gives no sign when the stream ends (etcd
restarted, the link was cut) or fails, and it waits for the first answer without a timeout, so
a copy fed by it could go stale without anyone knowing. Here a stream that ends, breaks, is
compacted away or stays silent past `IDLE` is dropped and made anew; until then the copy
answers only within its grace.
"""
from __future__ import annotations

import base64
import json
import logging
import threading
import time

TYPE_CHECKING = False  # typing is for type checkers only: importing it would slow `servicefactory perform`
if TYPE_CHECKING:
    from typing import Any, Callable

logger = logging.getLogger(__name__)

#: seconds a watch may stay silent before it is made anew (a cut link sends nothing, not an error);
#: etcd's progress notifications, asked for, arrive well within this when it is idle
IDLE = 15.0
#: seconds between attempts while etcd cannot be reached
RETRY = 1.0


class _Silent(Exception):
    """The watch sent nothing for IDLE seconds (etcd sends progress notices only every few minutes)."""


class Mirror:
    """The prefix's keys (bytes -> kv dict with decoded key and value), and whether they are current."""

    def __init__(self, prefix: str, read: Callable[[], tuple[list[dict], int]], post_stream: Callable[..., Any],
                 grace: float = 0.0) -> None:
        self.prefix = prefix
        # seconds the copy still answers once its watch is down (etcd away): what etcd itself would
        # have dropped by then (a lease that lapsed) may be in it, so no longer than the lease TTL
        self.grace = grace
        self._lost_at: float | None = None  # when the copy stopped being current, if it was once
        self._read = read  # () -> (decoded kvs of the prefix, the revision they were read at)
        self._post_stream = post_stream  # (path, payload, read_timeout) -> a streaming requests response
        self.kvs: dict[bytes, dict] = {}
        self.revision = 0  # of the last event applied (or of the read)
        self.live = False  # the copy is current: a watch stream is open and nothing was missed
        self.version = 0  # changes with each change of the copy
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._down = False  # an outage was logged: not again until the copy is current again
        self._response: Any = None  # the open watch stream
        self._thread = threading.Thread(target=self._run, daemon=True, name="servicefactory-etcd-watch")
        self._thread.start()

    def stop(self) -> None:
        """Stop answering, and end the thread (its stream is closed under it)."""
        self._stop.set()
        with self.lock:
            self.live = False
        response = self._response
        if response is not None:
            try:
                response.close()  # the blocked read ends with an error, which the stopped thread ignores
            except Exception:
                pass

    def usable(self) -> bool:
        """Whether the copy answers: current, or current less than `grace` seconds ago (a client
        with a fresh-enough view keeps calling while etcd is away)."""
        with self.lock:
            return self._usable()

    def _usable(self) -> bool:
        if self.live:
            return True
        return (self._lost_at is not None and not self._stop.is_set()
                and time.monotonic() - self._lost_at < self.grace)

    def view(self, written: int) -> dict[bytes, dict] | None:
        """A copy of the keys if `usable` and they include revision `written` (this process's last
        write: a process reads its own writes), else None (then etcd is read)."""
        with self.lock:
            if not self._usable() or self.revision < written:
                return None
            return dict(self.kvs)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except _Silent:
                continue  # quiet past IDLE: made anew at once, and not an outage
            except Exception as exc:  # any failure of read or stream: the copy stops answering, then again
                if not self._down:  # once per outage
                    logger.info("registry watch interrupted, reading etcd directly meanwhile: %s", exc)
                self._down = True
                with self.lock:
                    if self.live:
                        self._lost_at = time.monotonic()
                    self.live = False
                self._stop.wait(RETRY)

    def _follow(self) -> None:
        kvs, revision = self._read()
        end = bytearray(self.prefix.encode())
        end[-1] += 1
        request = {"create_request": {"key": _b64(self.prefix.encode()), "range_end": _b64(bytes(end)),
                                      "start_revision": revision + 1, "progress_notify": True}}
        response = self._response = self._post_stream("/watch", request, IDLE)
        try:
            with self.lock:
                self.kvs = {kv["key"]: kv for kv in kvs}
                self.revision, self.live, self._lost_at = revision, True, None
                self.version += 1
            self._down = False
            try:
                for line in response.iter_lines():
                    if self._stop.is_set():
                        return
                    if not line.strip():
                        continue
                    result = json.loads(line).get("result") or {}
                    if result.get("canceled") or int(result.get("compact_revision") or 0):
                        raise RuntimeError("the watch was cancelled or compacted away")
                    self._apply(result)
            except Exception as exc:
                if "timed out" in str(exc).lower():
                    raise _Silent() from None  # the read timeout: nothing came for IDLE seconds
                raise
            raise RuntimeError("the watch stream ended")
        finally:
            response.close()
            if self._stop.is_set():
                with self.lock:
                    self.live = False

    def _apply(self, result: dict) -> None:
        events = result.get("events") or []
        with self.lock:
            for event in events:
                kv = event.get("kv") or {}
                key = base64.b64decode(kv.get("key", ""))
                if event.get("type") == "DELETE":
                    self.kvs.pop(key, None)
                else:
                    self.kvs[key] = dict(kv, key=key, value=base64.b64decode(kv.get("value", "")))
                self.revision = max(self.revision, int(kv.get("mod_revision") or 0))
            if events:
                self.version += 1
            else:  # a progress notice: every event up to its revision has been sent
                self.revision = max(self.revision, int((result.get("header") or {}).get("revision") or 0))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
