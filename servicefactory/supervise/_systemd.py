"""systemd unit files for services: one `.service` per service and a `.target` that groups them.

Each unit runs `servicefactory serve TARGET` (one service, in the foreground, no supervisor of
ours in between: systemd is the supervisor) as `Type=notify`: the service sends READY=1 once its
API answers, WATCHDOG=1 from its loop when `WatchdogSec=` is set, STOPPING=1 when it stops. The
service's policy becomes systemd's settings: `Restart=`, `TimeoutStopSec=`, `WatchdogSec=`,
`MemoryMax=` (the cgroup limit: a hard one, enforced by the kernel). Pure text: tested by
`systemd-analyze verify` on what it writes (tests/test_systemd.py, tests/test_systemd_app.py).

An application file (`systemd export -f servicefactory.toml`, see `app_units`) also has commands
(`Type=exec`, with `ExecStartPost=` waiting for their `ready` check, so that `After=` means what
`depends_on = "ready"` means), one-shot jobs that others wait to complete (`Type=oneshot` with
`RemainAfterExit=yes`) and instances. A service with `instances = N` is one template unit,
`servicefactory-NAME@.service`, started as `NAME@1` ... `NAME@N` by the target: one file to read and
to keep in step, and `systemctl start servicefactory-NAME@4` adds a fifth process without another
export (N copies would drift apart the first time someone edits one by hand).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

#: unit names start with this, so that `systemctl list-units 'servicefactory-*'` finds them all
PREFIX = "servicefactory-"

_RESTART = {"on-failure": "on-failure", "always": "always", "no": "no"}

#: stands for the instance number in a template unit's command line until it is written as `%i`
INSTANCE = "@INSTANCE@"


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
    requires: list[str] = field(default_factory=list)  # the units it depends on (their file names)
    group: str | None = None  # the target's name (without PREFIX and suffix)
    kind: str = "notify"  # notify: a Service class; exec: a command; oneshot: a job others wait to complete
    kill_signal: str | None = None  # KillSignal= (SIGTERM when None)
    ready_command: list[str] | None = None  # ExecStartPost=: returns once the command is ready
    start_timeout: float | None = None  # TimeoutStartSec=
    instances: int | None = None  # a template unit NAME@.service, started as NAME@1 ... NAME@N
    notes: list[str] = field(default_factory=list)  # comment lines for who reads the unit

    @property
    def file_name(self) -> str:
        """`servicefactory-NAME.service` (`servicefactory-NAME@.service` for instances)."""
        return template_name(self.name) if self.instances else unit_name(self.name, "service")

    def started_units(self) -> list[str]:
        """The units the target starts for this service: itself, or each of its instances."""
        return instance_units(self.name, self.instances)

    def render(self) -> str:
        """The unit file's text."""
        after = ["network.target"] + list(self.requires)
        description = _line(self.description or 'servicefactory service ' + self.name).replace("%", "%%")
        if self.instances:
            description += " (instance %i)"
        lines = [f"# {_line(note)}" for note in self.notes]
        lines += ["[Unit]", f"Description={description}", f"After={' '.join(after)}"]
        if self.requires:
            lines.append(f"Requires={' '.join(self.requires)}")
        if self.group:
            lines.append(f"PartOf={unit_name(self.group, 'target')}")
        lines += ["", "[Service]", f"Type={self.kind}"]
        if self.kind == "notify":
            lines.append("NotifyAccess=main")
        if self.kind == "oneshot":
            lines.append("RemainAfterExit=yes")  # done, and its dependents may start: `completed`
        lines.append(f"ExecStart={exec_line(self.command)}".replace(INSTANCE, "%i"))
        if self.ready_command:
            lines.append(f"ExecStartPost={exec_line(self.ready_command)}")
        if self.reloadable:
            lines.append("ExecReload=/bin/kill -HUP $MAINPID")
        lines.append(f"WorkingDirectory={_path(self.working_directory)}")
        for key, value in sorted(self.environment.items()):
            lines.append(f"Environment={environment_assignment(key, value)}")
        for path in self.environment_files:
            lines.append(f"EnvironmentFile={_path(path)}")
        if self.user:
            lines.append(f"User={_line(self.user)}")
        restart = _RESTART[self.restart]
        if self.kind == "oneshot" and restart == "always":
            restart = "on-failure"  # systemd refuses `always` for a job; it is done once it succeeded
        lines += [f"Restart={restart}", f"RestartSec={_seconds(self.restart_sec)}",
                  f"TimeoutStopSec={_seconds(self.stop_timeout)}"]
        if self.start_timeout and self.kind != "oneshot":  # a job takes as long as it takes
            lines.append(f"TimeoutStartSec={_seconds(self.start_timeout)}")
        if self.kill_signal and self.kill_signal != "SIGTERM":
            lines.append(f"KillSignal={self.kill_signal}")
        # the stop signal to the service alone (it stops its own children), SIGKILL to what is left
        lines.append("KillMode=mixed")
        if self.watchdog:
            lines.append(f"WatchdogSec={_seconds(self.watchdog)}")
        if self.max_memory:
            lines.append(f"MemoryMax={self.max_memory}")
        lines += ["", "[Install]", f"WantedBy={unit_name(self.group, 'target') if self.group else 'multi-user.target'}",
                  ""]
        return "\n".join(lines)


def target(group: str, units: list[str], user: bool) -> str:
    """The `.target` unit that starts every unit of `group` (their file names), and is started at
    boot (or login)."""
    wants = " ".join(units)
    return "\n".join(["[Unit]", f"Description=servicefactory application {_line(group)}", f"Wants={wants}",
                      f"After={wants}", "", "[Install]",
                      f"WantedBy={'default.target' if user else 'multi-user.target'}", ""])


def unit_name(name: str, suffix: str) -> str:
    """`servicefactory-NAME.SUFFIX`, with what a unit name may not hold escaped as systemd-escape does."""
    escaped = "".join(ch if ch.isascii() and (ch.isalnum() or ch in ":_.-") else f"\\x{ord(ch):02x}"
                      for ch in name)
    return f"{PREFIX}{escaped}.{suffix}"


def template_name(name: str) -> str:
    """`servicefactory-NAME@.service`: the template unit of a service's instances."""
    return unit_name(name, "service").rsplit(".", 1)[0] + "@.service"


def instance_units(name: str, instances: int | None) -> list[str]:
    """The units a service runs as: `servicefactory-NAME.service`, or NAME@1 ... NAME@N of its template."""
    if not instances:
        return [unit_name(name, "service")]
    stem = template_name(name)[:-len("@.service")]
    return [f"{stem}@{number}.service" for number in range(1, instances + 1)]


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


# -- an application file's services as units --

def app_units(app: Any, *, group: str, environment: dict[str, str], serve: Callable[[Any], list[str]],
              reloadable: Callable[[Any], bool], user_units: bool = False,
              run_as: str | None = None) -> tuple[list[Unit], list[str]]:
    """(one Unit per service of a loaded application file, warnings for who exports): `serve(spec)`
    is the command line that runs a Service class in the foreground; `environment` goes to every
    Service class's unit (the state directory, ...). UnitError for what a unit cannot say."""
    from servicefactory.appfile import read_env_file

    awaited = {needed for spec in app.specs for needed, condition in (spec.depends_on or {}).items()
               if condition == "completed"}
    instances = {spec.name: spec.instances if (spec.instances or 1) > 1 else None for spec in app.specs}
    units, warnings = [], []
    for spec in app.specs:
        table = app.tables.get(spec.name, {})
        base = os.path.dirname(str(app.path))
        user = spec.user or run_as
        if user and user_units:
            raise UnitError(f"[services.{spec.name}] runs as user {user!r}: a user unit cannot switch users "
                            f"(export system units: drop --user)")
        notes: list[str] = []
        env = dict(environment) if not spec.command else {}
        files = [os.path.abspath(os.path.join(base, name)) for name in
                 ([table["env_file"]] if isinstance(table.get("env_file"), str) else table.get("env_file") or [])]
        written = {key: (spec.env or {})[key] for key in table.get("env") or {}}
        from_files: dict[str, str] = {}
        for path in files:
            from_files.update(read_env_file(Path(path), str(app.path)))
        clash = sorted(key for key in written if key in from_files and from_files[key] != written[key])
        odd = [path for path in files if not _systemd_reads_alike(path)]
        if clash or odd:
            # EnvironmentFile= wins over Environment= in systemd (the file's `env` wins in ours), and
            # systemd reads `export` and a trailing `# comment` differently: the values go in the unit
            why = (f"env sets {', '.join(clash)} that its env_file sets too (systemd would let the file win)"
                   if clash else f"{', '.join(odd)} uses `export` or trailing comments, which systemd reads "
                                 f"differently")
            warnings.append(f"{spec.name}: {why}: its env_file values are written into the unit; export "
                            f"again after editing the file")
            env.update(spec.env or {})
            files = []
        else:
            env.update(written)
        if spec.command:
            program = _program(spec.command[0], spec.cwd or base, (spec.env or {}).get("PATH"))
            command = [program, *spec.command[1:]]
            kind = "oneshot" if spec.name in awaited else "exec"
            ready_command = None
            if spec.ready and kind == "exec":
                if spec.ready.get("log"):
                    notes.append(f"ready = {{ log = ... }}: systemd cannot watch a log line; units after "
                                 f"this one start once it has started")
                else:
                    import json
                    from servicefactory.supervise._supervised import python_command

                    ready_command = python_command("servicefactory.supervise._systemd") + [
                        "wait-ready", json.dumps(spec.ready, separators=(",", ":"))]
        else:
            command = serve(spec)
            kind = "notify"
            ready_command = None
            if instances[spec.name]:
                if spec.port:
                    env["SERVICEFACTORY_REUSE_PORT"] = "1"  # the instances share the port, as under `up`
        requires = [unit for needed in spec.depends_on or {} for unit in instance_units(needed, instances[needed])]
        units.append(Unit(
            name=spec.name, command=command, working_directory=spec.cwd or base,
            description=f"servicefactory service {spec.name} ({spec.target})", restart=spec.restart,
            restart_sec=app.settings.backoff, stop_timeout=spec.stop_timeout,
            watchdog=spec.watchdog if not spec.command else None, max_memory=spec.max_memory,
            reloadable=not spec.command and reloadable(spec), environment=env, environment_files=files,
            user=user, requires=requires, group=group, kind=kind, kill_signal=spec.stop_signal,
            ready_command=ready_command, start_timeout=app.settings.ready_timeout,
            instances=instances[spec.name], notes=notes))
    return units, warnings


def _program(program: str, cwd: str, path: str | None) -> str:
    """A command's program as an absolute path (ExecStart= wants one on older systemd)."""
    import shutil

    if os.sep in program:
        return os.path.abspath(os.path.join(cwd, program))
    found = shutil.which(program, path=path or os.environ.get("PATH", os.defpath))
    if found is None:
        raise UnitError(f"{program!r} is not an executable program on PATH")
    return os.path.abspath(found)


def _systemd_reads_alike(path: str) -> bool:
    """Whether systemd's EnvironmentFile= reads this dotenv file as servicefactory does: no
    `export NAME=` lines, no `# comment` after an unquoted value."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    for line in lines:
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        if stripped.startswith("export "):
            return False
        value = stripped.partition("=")[2].strip()
        if value[:1] not in ("'", '"') and "#" in value:
            return False
        if value[:1] == '"' and "\\" in value:  # escapes: ours take \n, systemd's do not
            return False
    return True


def wait_ready(ready: dict) -> int:
    """ExecStartPost= of a command with a `ready` check: return (0) once it passes, as the
    supervisor's check would; systemd's TimeoutStartSec= ends the wait."""
    from servicefactory.supervise._commands import CHECK_EVERY, ReadyCheck

    check = ReadyCheck(ready, cwd=os.getcwd(), env=dict(os.environ))
    try:
        while not check.poll(time.monotonic()):
            time.sleep(CHECK_EVERY)
    finally:
        check.close()
    return 0


if __name__ == "__main__":
    import json

    if sys.argv[1:2] != ["wait-ready"] or len(sys.argv) != 3:
        sys.exit("usage: python -m servicefactory.supervise._systemd wait-ready JSON")
    sys.exit(wait_ready(json.loads(sys.argv[2])))
