"""systemd unit files for services: one `.service` per service and a `.target` that groups them.

Each unit runs `servicefactory serve TARGET` (one service, in the foreground, no supervisor of
ours in between: systemd is the supervisor) as `Type=notify`: the service sends READY=1 once its
API answers, WATCHDOG=1 from its loop when `WatchdogSec=` is set, STOPPING=1 when it stops. The
service's policy becomes systemd's settings: `Restart=`, `TimeoutStopSec=`, `WatchdogSec=`,
`MemoryMax=` (the cgroup limit: a hard one, enforced by the kernel). Pure text: tested by
`systemd-analyze verify` on what it writes (tests/test_systemd.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

#: unit names start with this, so that `systemctl list-units 'servicefactory-*'` finds them all
PREFIX = "servicefactory-"

_RESTART = {"on-failure": "on-failure", "always": "always", "no": "no"}


class UnitError(ValueError):
    """A value that cannot be written into a unit file (a newline in an environment value, ...)."""


@dataclass
class Unit:
    """What one service's unit says."""

    name: str  # the service's name
    command: list[str]  # ExecStart, an argument each
    working_directory: str
    description: str = ""
    restart: str = "on-failure"
    restart_sec: float = 1.0
    stop_timeout: float = 10.0
    watchdog: float | None = None
    max_memory: int | None = None  # bytes
    reloadable: bool = False  # ExecReload sends SIGHUP: its reload() runs
    environment: dict[str, str] = field(default_factory=dict)
    environment_files: list[str] = field(default_factory=list)
    user: str | None = None
    requires: list[str] = field(default_factory=list)  # services it depends on (their names)
    group: str | None = None  # the target's name (without PREFIX and suffix)

    @property
    def file_name(self) -> str:
        """`servicefactory-NAME.service`."""
        return unit_name(self.name, "service")

    def render(self) -> str:
        """The unit file's text."""
        after = ["network.target"] + [unit_name(name, "service") for name in self.requires]
        lines = ["[Unit]", f"Description={_line(self.description or 'servicefactory service ' + self.name)}",
                 f"After={' '.join(after)}"]
        if self.requires:
            lines.append(f"Requires={' '.join(unit_name(name, 'service') for name in self.requires)}")
        if self.group:
            lines.append(f"PartOf={unit_name(self.group, 'target')}")
        lines += ["", "[Service]",
                  "Type=notify",
                  "NotifyAccess=main",
                  f"ExecStart={exec_line(self.command)}"]
        if self.reloadable:
            lines.append("ExecReload=/bin/kill -HUP $MAINPID")
        lines.append(f"WorkingDirectory={_path(self.working_directory)}")
        for key, value in sorted(self.environment.items()):
            lines.append(f"Environment={environment_assignment(key, value)}")
        for path in self.environment_files:
            lines.append(f"EnvironmentFile={_path(path)}")
        if self.user:
            lines.append(f"User={_line(self.user)}")
        lines += [f"Restart={_RESTART[self.restart]}", f"RestartSec={_seconds(self.restart_sec)}",
                  f"TimeoutStopSec={_seconds(self.stop_timeout)}",
                  # SIGTERM to the service alone (it stops its own children), SIGKILL to what is left
                  "KillMode=mixed"]
        if self.watchdog:
            lines.append(f"WatchdogSec={_seconds(self.watchdog)}")
        if self.max_memory:
            lines.append(f"MemoryMax={self.max_memory}")
        lines += ["", "[Install]", f"WantedBy={unit_name(self.group, 'target') if self.group else 'multi-user.target'}",
                  ""]
        return "\n".join(lines)


def target(group: str, services: list[str], user: bool) -> str:
    """The `.target` unit that starts every service of `group`, and is started at boot (or login)."""
    wants = " ".join(unit_name(name, "service") for name in services)
    return "\n".join(["[Unit]", f"Description=servicefactory application {_line(group)}", f"Wants={wants}",
                      f"After={wants}", "", "[Install]",
                      f"WantedBy={'default.target' if user else 'multi-user.target'}", ""])


def unit_name(name: str, suffix: str) -> str:
    """`servicefactory-NAME.SUFFIX`, with what a unit name may not hold escaped as systemd-escape does."""
    escaped = "".join(ch if ch.isascii() and (ch.isalnum() or ch in ":_.-") else f"\\x{ord(ch):02x}"
                      for ch in name)
    return f"{PREFIX}{escaped}.{suffix}"


def exec_line(command: list[str]) -> str:
    """A command line as ExecStart= reads it: each argument double-quoted where it needs to be,
    with `\\`, `"`, `$` and `%` escaped (no variable or specifier is ever expanded)."""
    return " ".join(_quote(argument) for argument in command)


def environment_assignment(key: str, value: str) -> str:
    """One `Environment=` assignment, quoted."""
    if not key or not all(ch.isalnum() or ch == "_" for ch in key) or key[0].isdigit():
        raise UnitError(f"not an environment variable name: {key!r}")
    return _quote(f"{key}={value}", always=True, dollars=False)  # Environment= expands no $VAR


def _quote(argument: str, always: bool = False, dollars: bool = True) -> str:
    _line(argument)
    escaped = argument.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    if dollars:
        escaped = escaped.replace("$", "$$")
    if always or not escaped or any(ch in escaped for ch in " \t'\";\\") or escaped != argument:
        return f'"{escaped}"'
    return escaped


def _line(text: str) -> str:
    if any(ch in text for ch in "\n\r\0"):
        raise UnitError(f"a unit file cannot hold a line break or NUL: {text!r}")
    return text


def _path(path: str) -> str:
    _line(path)
    if not path.startswith("/"):
        raise UnitError(f"systemd needs an absolute path, not {path!r}")
    return path.replace("%", "%%")


def _seconds(value: float) -> str:
    return f"{value:g}s" if value != int(value) else f"{int(value)}s"
