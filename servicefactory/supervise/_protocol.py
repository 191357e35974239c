"""The protocol between the CLI, the supervisor and each service process, in one place.

Three processes talk: `servicefactory run` starts a detached supervisor, the supervisor starts one
child per service (`python -m servicefactory.supervise._child`). Each side hands the next its settings in
environment variables and hears back on a pipe, one JSON object per line:

- child -> supervisor, on $SERVICEFACTORY_READY_FD: `Ready` (or `StartFailed`), then perhaps
  `Unhealthy`, `Beat` (its loop progresses: the watchdog) and `Reloaded` (after SIGHUP), and last
  `Stopping` with the `StopReason`;
- supervisor -> CLI, on the same variable: one `StartupReport` (every service ready, or why not).

Every message is a small class whose `encode` and `decode` sit side by side, so the two ends
cannot drift apart. Both ends import this module; it imports only json and enum (it is on the
service's start-up path).
"""
from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any, Union

# -- environment variables: the names each side reads and the other sets --

#: the pipe (fd number) on which the started process reports `Ready`/`StartFailed`/... (or a `StartupReport`)
READY_FD_ENV = "SERVICEFACTORY_READY_FD"
#: set to the service's name in a supervised child: its record is written by the supervisor
SUPERVISED_ENV = "SERVICEFACTORY_SUPERVISED"
#: the supervisor's pid: a child whose parent is already another process exits at once
SUPERVISOR_PID_ENV = "SERVICEFACTORY_SUPERVISOR_PID"
#: the read end of a pipe only the supervisor writes to: end of file means the supervisor is gone
LIFELINE_FD_ENV = "SERVICEFACTORY_LIFELINE_FD"
#: seconds a stop may take after the supervisor died, before everything is SIGKILLed
STOP_TIMEOUT_ENV = "SERVICEFACTORY_STOP_TIMEOUT"
#: the service's log file, written by the service itself once its supervisor is gone
LOG_PATH_ENV = "SERVICEFACTORY_LOG_PATH"
#: seconds within which the supervisor must hear a `Beat` from the service's loop, else it restarts it
WATCHDOG_ENV = "SERVICEFACTORY_WATCHDOG"
#: set to "1" for one of several instances of a service: a fixed port is bound with SO_REUSEPORT,
#: shared by every instance (the kernel spreads the connections)
REUSE_PORT_ENV = "SERVICEFACTORY_REUSE_PORT"


class StopReason(str, enum.Enum):
    """Why a service stops, as it tells its supervisor (the value is what goes on the wire)."""

    ACTION = "action"  # a client called its `shutdown` action: the user's wish, as final as `servicefactory stop`
    CALL = "call"  # its own code called stop()
    SIGNAL = "signal"  # SIGTERM/SIGINT/...: from the supervisor itself, or from outside
    EXIT = "exit"  # loop() raised SystemExit or KeyboardInterrupt
    ENDED = "ended"  # loop() returned for good, or an error ended the run
    RELOAD = "reload"  # SIGHUP to a supervised service without reload(): its supervisor starts it again

    @property
    def by_user(self) -> bool:
        """Whether the stop was asked for by a user (the supervisor must not undo it by a restart)."""
        return self is StopReason.ACTION

    def __str__(self) -> str:
        return self.value


# -- child -> supervisor --

@dataclass
class Ready:
    """The service answers on its API (host/port None without one; `tls`: over HTTPS)."""

    name: str | None = None
    pid: int | None = None
    url: str | None = None
    host: str | None = None
    port: int | None = None
    tls: bool = False
    reload: bool = False  # the service defines reload(): SIGHUP calls it (else a reload restarts it)

    def encode(self) -> dict:
        """The JSON object sent on the pipe (one line, see to_line)."""
        return {"ready": True, "name": self.name, "pid": self.pid, "url": self.url, "host": self.host,
                "port": self.port, "tls": self.tls, "reload": self.reload}


@dataclass
class StartFailed:
    """The service could not start; `type` is the exception's class name."""

    error: str
    type: str = ""

    def encode(self) -> dict:
        """The JSON object sent on the pipe (one line, see to_line)."""
        return {"ready": False, "type": self.type, "error": self.error}


@dataclass
class Unhealthy:
    """loop() raised `errors` times in a row; the last one was `error`."""

    errors: int
    error: str | None = None

    def encode(self) -> dict:
        """The JSON object sent on the pipe (one line, see to_line)."""
        return {"unhealthy": self.errors, "error": self.error}


@dataclass
class Beat:
    """The service's loop made progress (sent from the loop's own thread, at most twice per watchdog period)."""

    def encode(self) -> dict:
        """The JSON object sent on the pipe (one line, see to_line)."""
        return {"beat": 1}


@dataclass
class Reloaded:
    """The service ran its reload() after a SIGHUP; `error` says why it failed, if it did."""

    ok: bool = True
    error: str | None = None

    def encode(self) -> dict:
        """The JSON object sent on the pipe (one line, see to_line)."""
        return {"reloaded": self.ok, "error": self.error}


@dataclass
class Stopping:
    """The service stops now, and why."""

    reason: StopReason | None = None
    detail: str = ""  # the signal's or exception's name: for people, never decided on

    def encode(self) -> dict:
        """The JSON object sent on the pipe (one line, see to_line)."""
        return {"stopping": self.reason.value if self.reason else "", "detail": self.detail}


ChildMessage = Union[Ready, StartFailed, Unhealthy, Beat, Reloaded, Stopping]


def decode_child(line: bytes) -> ChildMessage | None:
    """One line from a child's pipe as its message; None for anything else (a child cannot crash us)."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    if data.get("ready") is True:
        port = data.get("port")
        host = data.get("host")
        return Ready(name=_text(data.get("name")), pid=data.get("pid") if isinstance(data.get("pid"), int) else None,
                     url=_text(data.get("url")), host=_text(host),
                     port=port if isinstance(port, int) and not isinstance(port, bool) else None,
                     tls=data.get("tls") is True, reload=data.get("reload") is True)
    if data.get("ready") is False:
        return StartFailed(error=_text(data.get("error")) or "", type=_text(data.get("type")) or "")
    if data.get("unhealthy"):
        errors = data["unhealthy"]
        return Unhealthy(errors=errors if isinstance(errors, int) else 0, error=_text(data.get("error")))
    if data.get("beat") == 1:
        return Beat()
    if "reloaded" in data:
        return Reloaded(ok=data["reloaded"] is True, error=_text(data.get("error")))
    if "stopping" in data:
        try:
            reason: StopReason | None = StopReason(data["stopping"])
        except ValueError:
            reason = None
        return Stopping(reason=reason, detail=_text(data.get("detail")) or "")
    return None


# -- supervisor -> CLI --

@dataclass
class StartupReport:
    """What a detached supervisor tells `servicefactory run` once: every service ready, or why not.

    Ready: `supervisor` (its name), `pid` and `services` (name, pid, url, state, ever_ready of each).
    Not ready: `error`, and `service` (None when the supervisor itself failed), its last `output`
    lines, `exit_code`, the error's `type`.
    """

    ready: bool
    supervisor: str | None = None
    pid: int | None = None
    services: list[dict] = field(default_factory=list)
    service: str | None = None
    error: str | None = None
    output: list[str] = field(default_factory=list)
    exit_code: int | None = None
    type: str | None = None

    def encode(self) -> dict:
        """The JSON object sent on the pipe (one line, see to_line)."""
        if self.ready:
            return {"ready": True, "supervisor": self.supervisor, "pid": self.pid, "services": self.services}
        message: dict[str, Any] = {"ready": False, "service": self.service, "error": self.error,
                                   "output": self.output, "exit_code": self.exit_code}
        if self.type is not None:
            message["type"] = self.type
        return message

    @classmethod
    def decode(cls, line: bytes) -> StartupReport | None:
        """The report in `line`; None if the supervisor said nothing readable (it died)."""
        try:
            data = json.loads(line) if line else None
        except ValueError:
            return None
        if not isinstance(data, dict) or not data:
            return None
        if data.get("ready"):
            return cls(ready=True, supervisor=data.get("supervisor"), pid=data.get("pid"),
                       services=list(data.get("services") or []))
        return cls(ready=False, service=data.get("service"), error=data.get("error"),
                   output=list(data.get("output") or []), exit_code=data.get("exit_code"), type=data.get("type"))


def to_line(message: Any) -> bytes:
    """A message as the one line written to a pipe."""
    return json.dumps(message.encode()).encode() + b"\n"


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
