"""An application in one file: `servicefactory.toml` declares services, `up` starts them all.

```toml
[settings]                         # what `run` takes once for every service (optional)
backoff = 0.5

[services.api]
target = "myapp.api:Api"           # a Service class, as on the command line ...
port = 8080
depends_on = { redis = "ready", migrate = "completed" }

[services.redis]
command = ["redis-server", "--port", "6380"]   # ... or any program
ready = { port = 6380 }

[services.migrate]
command = ["python", "-m", "myapp.migrate"]
restart = "no"

[environments.prod.services.api]   # `up --env prod`: merged over the tables above
port = 80
```

`load` turns the file into Specs and Settings, or raises AppFileError: one line naming the file,
the line (where it can be found) and the key. Nothing here starts a process.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal as signals
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from servicefactory.errors import LoadError

#: the file `up` and `down` read when no -f is given
DEFAULT_FILE = "servicefactory.toml"

RESTART = ("on-failure", "always", "no")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class AppFileError(LoadError):
    """The application file is wrong: `FILE:LINE: what` (exit 2)."""


@dataclass
class App:
    """A loaded application file."""

    path: Path
    specs: list  # supervise._supervised.Spec, in the file's order
    settings: Any  # supervise._supervised.Settings
    log_level: str | None = None
    environment: str | None = None
    graph: dict[str, list[str]] = field(default_factory=dict)  # name -> the services it depends on
    # name -> its table as written (environment merged in): what `systemd export` needs beyond a Spec
    # (which env_file names what: a unit reads those files itself)
    tables: dict[str, dict] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """The services' names, in the file's order."""
        return [spec.name for spec in self.specs]


# -- where a key is written: tomllib gives values, not lines --

_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")


def _split_key(text: str) -> tuple[str, ...]:
    parts = re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", text)
    return tuple(part.strip("\"'") for part in parts)


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """The line (1-based) where each table and key is first written, by its dotted path."""
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    in_multiline = False
    for number, line in enumerate(text.splitlines(), 1):
        if in_multiline:
            if line.count('"""') % 2 or line.count("'''") % 2:
                in_multiline = False
            continue
        header = _HEADER.match(line)
        if header:
            table = _split_key(header.group(1))
            for depth in range(1, len(table) + 1):
                lines.setdefault(table[:depth], number)
            continue
        key = _KEY.match(line)
        if key:
            path = table + _split_key(key.group(1))
            for depth in range(len(table) + 1, len(path) + 1):
                lines.setdefault(path[:depth], number)
            rest = line[key.end():]
            if rest.count('"""') % 2 or rest.count("'''") % 2:
                in_multiline = True
    return lines


class _Reader:
    """Checks values against what each key takes, and words errors as `FILE:LINE: ...`."""

    def __init__(self, path: Path, shown: str, text: str) -> None:
        self.path = path
        self.shown = shown
        self.lines = key_lines(text)
        self.prefix: tuple[str, ...] = ()  # an environment's tables are written under environments.NAME

    def line(self, where: tuple[str, ...]) -> int | None:
        # the deepest key written, the environment's own first at each depth: a service's key the
        # environment does not override is on the service's line, not the environment's header
        for depth in range(len(where), 0, -1):
            for key in (self.prefix + where[:depth], where[:depth]):
                if key in self.lines:
                    return self.lines[key]
        return None

    def error(self, where: tuple[str, ...], message: str) -> AppFileError:
        line = self.line(where)
        return AppFileError(f"{self.shown}:{line}: {message}" if line else f"{self.shown}: {message}")


def _table_name(where: tuple[str, ...]) -> str:
    return "[" + ".".join(where) + "]"


# -- the keys each table takes: name -> check(reader, where, value) returning the value to use --

Check = Callable[[_Reader, tuple, Any], Any]


def _text(reader: _Reader, where: tuple, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise reader.error(where, f"{where[-1]} in {_table_name(where[:-1])} must be a non-empty string, "
                                  f"not {_shown(value)}")
    return value


def _number(low: float, high: float = 365 * 86400, integer: bool = False) -> Check:
    def check(reader: _Reader, where: tuple, value: Any) -> Any:
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
            kind = "a whole number" if integer else "a number"
            raise reader.error(where, f"{where[-1]} in {_table_name(where[:-1])} must be {kind} from {low:g} "
                                      f"to {high:g}, not {_shown(value)}")
        return value
    return check


def _choice(options: tuple[str, ...]) -> Check:
    def check(reader: _Reader, where: tuple, value: Any) -> Any:
        if value not in options:
            raise reader.error(where, f"{where[-1]} in {_table_name(where[:-1])} must be one of "
                                      f"{', '.join(repr(o) for o in options)}, not {_shown(value)}")
        return value
    return check


def _words(reader: _Reader, where: tuple, value: Any) -> list[str]:
    given = value
    if isinstance(value, str):
        try:
            value = shlex.split(value)
        except ValueError as exc:
            raise reader.error(where, f"{where[-1]} in {_table_name(where[:-1])} cannot be split into words: "
                                      f"{exc}") from None
    if not isinstance(value, list) or not value or not all(isinstance(word, str) for word in value) or not value[0]:
        raise reader.error(where, f"{where[-1]} in {_table_name(where[:-1])} must be a list of strings "
                                  f"(the program first), not {_shown(given)}")
    return value


def _environment(reader: _Reader, where: tuple, value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise reader.error(where, f"env in {_table_name(where[:-1])} must be a table of NAME = \"value\", "
                                  f"not {_shown(value)}")
    result = {}
    for name, item in value.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise reader.error(where + (name,), f"env in {_table_name(where[:-1])}: {name!r} is not a variable name")
        if isinstance(item, bool):
            item = "true" if item else "false"
        if not isinstance(item, (str, int, float)):
            raise reader.error(where + (name,), f"env.{name} in {_table_name(where[:-1])} must be a string or a "
                                                f"number, not {_shown(item)}")
        result[name] = str(item)
    return result


def _files(reader: _Reader, where: tuple, value: Any) -> list[str]:
    files = [value] if isinstance(value, str) else value
    if not isinstance(files, list) or not files or not all(isinstance(f, str) and f for f in files):
        raise reader.error(where, f"env_file in {_table_name(where[:-1])} must be a file name or a list of "
                                  f"them, not {_shown(value)}")
    return files


def _signal(reader: _Reader, where: tuple, value: Any) -> str:
    name = value.upper() if isinstance(value, str) else value
    if isinstance(name, str) and not name.startswith("SIG"):
        name = "SIG" + name
    if not isinstance(name, str) or not isinstance(getattr(signals, name, None), signals.Signals) \
            or name in ("SIGKILL", "SIGSTOP"):
        raise reader.error(where, f"stop_signal in {_table_name(where[:-1])} must name a signal such as "
                                  f"\"SIGTERM\" or \"SIGINT\", not {_shown(value)}")
    return name


def _size(reader: _Reader, where: tuple, value: Any) -> int:
    from servicefactory.supervise._limits import parse_size

    try:
        return parse_size(value)
    except ValueError as exc:
        raise reader.error(where, f"{where[-1]} in {_table_name(where[:-1])}: {exc}") from None


def _patterns(reader: _Reader, where: tuple, value: Any) -> tuple[str, ...]:
    patterns = [value] if isinstance(value, str) else value
    if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
        raise reader.error(where, f"{where[-1]} in {_table_name(where[:-1])} must be a glob such as "
                                  f"\"generated_*.py\" or a list of them, not {_shown(value)}")
    return tuple(patterns)


def _depends(reader: _Reader, where: tuple, value: Any) -> dict[str, str]:
    from servicefactory.supervise._dependencies import CONDITIONS

    if isinstance(value, list) and all(isinstance(name, str) for name in value):
        value = {name: "ready" for name in value}  # a list waits for each to be ready
    if not isinstance(value, dict):
        raise reader.error(where, f"depends_on in {_table_name(where[:-1])} must be a table such as "
                                  f"{{ redis = \"ready\" }} or a list of names, not {_shown(value)}")
    for name, condition in value.items():
        if condition not in CONDITIONS:
            raise reader.error(where + (name,), f"depends_on.{name} in {_table_name(where[:-1])} must be one of "
                                                f"{', '.join(repr(c) for c in CONDITIONS)}, not {_shown(condition)}")
    return dict(value)


def _ready(reader: _Reader, where: tuple, value: Any) -> dict:
    table = _table_name(where[:-1])
    if not isinstance(value, dict):
        raise reader.error(where, f"ready in {table} must be a table: {{ port = N }}, {{ command = [...] }} "
                                  f"or {{ log = \"regex\" }}, not {_shown(value)}")
    known = {"port", "host", "command", "log"}
    for key in value:
        if key not in known:
            raise reader.error(where + (key,), f"unknown key {key!r} in ready of {table} "
                                               f"(it takes port and host, command, or log)")
    kinds = [key for key in ("port", "command", "log") if key in value]
    if len(kinds) != 1:
        raise reader.error(where, f"ready in {table} takes exactly one of port, command or log"
                                  + (f", not {' and '.join(kinds)}" if kinds else ""))
    result: dict[str, Any] = {}
    if "port" in value:
        result["port"] = _number(1, 65535, integer=True)(reader, where + ("port",), value["port"])
        if "host" in value:
            result["host"] = _text(reader, where + ("host",), value["host"])
    elif "host" in value:
        raise reader.error(where + ("host",), f"ready.host in {table} goes with ready.port")
    if "command" in value:
        result["command"] = _words(reader, where + ("command",), value["command"])
    if "log" in value:
        pattern = _text(reader, where + ("log",), value["log"])
        try:
            re.compile(pattern)
        except re.error as exc:
            raise reader.error(where + ("log",), f"ready.log in {table} is not a regular expression: {exc}") from None
        result["log"] = pattern
    return result


SERVICE_KEYS: dict[str, Check] = {
    "target": _text, "command": _words, "host": _text, "port": _number(0, 65535, integer=True),
    "instances": _number(1, 64, integer=True), "env": _environment, "env_file": _files, "cwd": _text,
    "restart": _choice(RESTART), "stop_timeout": _number(0.1), "stop_signal": _signal, "depends_on": _depends,
    "ready": _ready, "log_file": _text, "backoff_max": _number(0.01), "tls_cert": _text, "tls_key": _text,
    "user": _text, "max_memory": _size, "watchdog": _number(0.1),
}

SETTINGS_KEYS: dict[str, Check] = {
    "max_failures": _number(1, 10**6, integer=True), "backoff": _number(0.01), "backoff_max": _number(0.01),
    "retry_failed_after": _number(0), "ready_timeout": _number(0.1),
    "log_max_bytes": _number(1024, 2**62, integer=True), "log_backups": _number(0, 1000, integer=True),
    "log_level": _choice(LOG_LEVELS), "watch_ignore": _patterns,
    "dashboard_port": _number(0, 65535, integer=True), "dashboard_host": _text,  # run --dashboard-port/-host
}

TOP_KEYS = ("services", "settings", "environments")


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "a table" if value else "an empty table"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    if isinstance(value, str):
        return repr(value)
    return f"{value!r} ({type(value).__name__})"


def _unknown(reader: _Reader, where: tuple, key: str, known: Any) -> AppFileError:
    import difflib

    close = difflib.get_close_matches(key, list(known), 1)
    hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(known)})"
    place = f" in {_table_name(where)}" if where else ""
    return reader.error(where + (key,), f"unknown key {key!r}{place}{hint}")


# -- reading the file --

def _parse(path: Path, shown: str) -> tuple[dict, str]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise AppFileError(f"{shown}: no such file (an application is declared in {DEFAULT_FILE}; "
                           f"-f FILE names another)") from None
    except IsADirectoryError:
        raise AppFileError(f"{shown}: is a directory, not an application file") from None
    except OSError as exc:
        raise AppFileError(f"{shown}: cannot read it: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")  # a leading BOM (editors on Windows) is not TOML
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise AppFileError(f"{shown}:{line}: not UTF-8 text ({exc.reason})") from None
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = re.search(r"\(at line (\d+), column (\d+)\)", message)
        if found:
            message = message[:found.start()].strip()
            raise AppFileError(f"{shown}:{found.group(1)}: {message} (column {found.group(2)}): "
                               f"not valid TOML") from None
        raise AppFileError(f"{shown}: {message}: not valid TOML") from None


def _merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_env_file(path: Path, shown: str) -> dict[str, str]:
    """A dotenv file as a dict: `NAME=value` lines, `export` allowed, quotes stripped (double quotes
    take \\n escapes), `#` comments; AppFileError naming the file and line for anything else."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (editors on Windows) is no part of a name
    except FileNotFoundError:
        raise AppFileError(f"{shown}: env_file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AppFileError(f"{shown}: env_file {path} cannot be read: {getattr(exc, 'strerror', None) or exc}") \
            from None
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("export "):
            stripped = stripped[len("export "):].lstrip()
        name, equals, value = stripped.partition("=")
        name = name.strip()
        if not equals or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise AppFileError(f"{path}:{number}: not NAME=value (an env_file of {shown})")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            quote, value = value[0], value[1:-1]
            if quote == '"':
                value = value.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
        else:
            value = re.sub(r"\s+#.*$", "", value)  # an unquoted value ends at a comment
        values[name] = value
    return values


def declared(file: str | os.PathLike | None = None) -> list[str]:
    """The names of the services the file declares, in its order (those its environments add
    last), reading no more than that: AppFileError only for a file that is not TOML or declares none."""
    shown = str(file) if file is not None else DEFAULT_FILE
    data, _ = _parse(Path(shown).expanduser().absolute(), shown)
    def tables(services: object) -> list[str]:  # `a = 3` under [services] is no service (load says so)
        return [name for name, value in services.items() if isinstance(value, dict)] \
            if isinstance(services, dict) else []

    names = tables(data.get("services"))
    environments = data.get("environments")
    for environment in (environments.values() if isinstance(environments, dict) else ()):
        services = environment.get("services") if isinstance(environment, dict) else None
        names += [name for name in tables(services) if name not in names]
    if not names:
        raise AppFileError(f"{shown}: no services: declare each as a [services.NAME] table")
    return names


def load(file: str | os.PathLike | None = None, environment: str | None = None, *,
         check_targets: bool = True) -> App:
    """Read the application file (default ./servicefactory.toml) into Specs and Settings."""
    from servicefactory.supervise._supervised import Settings

    shown = str(file) if file is not None else DEFAULT_FILE
    path = Path(shown).expanduser().absolute()
    data, text = _parse(path, shown)
    reader = _Reader(path, shown, text)
    for key in data:
        if key not in TOP_KEYS:
            raise _unknown(reader, (), key, TOP_KEYS)
    environments = data.get("environments", {})
    if not isinstance(environments, dict):
        raise reader.error(("environments",), "environments must hold one table per environment")
    for name, override in environments.items():  # each one's shape, even when another is chosen
        if not isinstance(override, dict):
            raise reader.error(("environments", name), f"[environments.{name}] must be a table")
        for key, value in override.items():
            if key not in ("services", "settings"):
                raise _unknown(reader, ("environments", name), key, ("services", "settings"))
            if not isinstance(value, dict):
                raise reader.error(("environments", name, key), f"{key} in [environments.{name}] must be a table "
                                                                 f"([environments.{name}.{key}...])")
    if environment is not None:
        if environment not in environments:
            defined = ", ".join(environments) or "none"
            raise AppFileError(f"{shown}: no environment {environment!r} (environments defined: {defined})")
        data = _merge(data, environments[environment])  # its shape was checked above
        reader.prefix = ("environments", environment)  # a key the override wrote is found there first
    services = data.get("services")
    if not isinstance(services, dict) or not services:
        raise reader.error(("services",), "no services: declare each as a [services.NAME] table with a target "
                                          "(a Service class) or a command")
    settings_table = data.get("settings", {})
    if not isinstance(settings_table, dict):
        raise reader.error(("settings",), "settings must be a table")
    settings_values = {}
    for key, value in settings_table.items():
        if key not in SETTINGS_KEYS:
            raise _unknown(reader, ("settings",), key, SETTINGS_KEYS)
        settings_values[key] = SETTINGS_KEYS[key](reader, ("settings", key), value)
    log_level = settings_values.pop("log_level", None)
    settings = Settings(keep_going=True, **{key: value for key, value in settings_values.items()
                                            if key not in ("backoff_max", "watch_ignore")})
    settings.watch_ignored = settings_values.get("watch_ignore", ())  # what `up --watch` ignores too
    if "backoff_max" in settings_values:
        settings.backoff_max = settings_values["backoff_max"]
    specs = []
    for name, table in services.items():
        specs.append(_service(reader, name, table, path.parent, check_targets))
    graph = {spec.name: list(spec.depends_on or {}) for spec in specs}
    for spec in specs:
        for needed in spec.depends_on or {}:
            if needed not in graph:
                raise reader.error(("services", spec.name, "depends_on", needed),
                                   f"[services.{spec.name}] depends on {needed!r}, which is not a service in "
                                   f"this file (services: {', '.join(graph)})")
            if needed == spec.name:
                raise reader.error(("services", spec.name, "depends_on"),
                                   f"[services.{spec.name}] depends on itself")
    from servicefactory.supervise._dependencies import find_cycle

    cycle = find_cycle(graph)
    if cycle:
        raise reader.error(("services", cycle[0], "depends_on"), f"dependency cycle: {' -> '.join(cycle)}")
    return App(path=path, specs=specs, settings=settings, log_level=log_level, environment=environment,
               graph=graph, tables=services)


def _service(reader: _Reader, name: str, table: Any, base: Path, check_targets: bool) -> Any:
    from servicefactory.errors import ServiceFactoryError
    from servicefactory.registry.local import check_name
    from servicefactory.supervise._supervised import Spec

    where = ("services", name)
    if not isinstance(table, dict):
        raise reader.error(where, f"services.{name} must be a table ([services.{name}])")
    try:
        check_name(name)
    except ServiceFactoryError as exc:
        raise reader.error(where, f"[services.{name}]: {exc}") from None
    if name.startswith("_") or name == "supervisor":
        raise reader.error(where, f"[services.{name}]: the name {name!r} is reserved for servicefactory's own "
                                  f"records; pick another")
    values = {}
    for key, value in table.items():
        if key not in SERVICE_KEYS:
            raise _unknown(reader, where, key, SERVICE_KEYS)
        values[key] = SERVICE_KEYS[key](reader, where + (key,), value)
    if ("target" in values) == ("command" in values):
        raise reader.error(where, f"[services.{name}] needs either target (a Service class, \"module:Class\") "
                                  f"or command (any program), " + ("not both" if "target" in values else "not neither"))
    if "ready" in values and "command" not in values:
        raise reader.error(where + ("ready",), f"ready in [services.{name}] is for a command; a Service class is "
                                               f"ready when its API answers")
    if "command" in values and "watchdog" in values:
        raise reader.error(where + ("watchdog",), f"watchdog in [services.{name}] is for a Service class (target): "
                                                  f"its loop tells the supervisor it progresses; a command cannot")
    if "command" in values:
        for key in ("host", "port", "tls_cert", "tls_key"):
            if key in values:
                raise reader.error(where + (key,), f"{key} in [services.{name}] is for a Service class (target); "
                                                   f"pass a command's own options in its command line")
    cwd = (base / values.pop("cwd", ".")).resolve()
    if not cwd.is_dir():
        raise reader.error(where + ("cwd",), f"cwd of [services.{name}]: {cwd} is not a directory")
    env: dict[str, str] = {}
    for file in values.pop("env_file", []):
        env.update(read_env_file((base / file), reader.shown))
    env.update(values.pop("env", {}))
    user = values.pop("user", None)
    if user is not None:
        _check_user(reader, where + ("user",), name, user)
    for key in ("log_file", "tls_cert", "tls_key"):
        if key in values:
            values[key] = str((base / values[key]).resolve())
    if values.get("log_file") and not os.access(os.path.dirname(values["log_file"]), os.W_OK):
        raise reader.error(where + ("log_file",), f"log_file of [services.{name}]: "
                                                  f"{os.path.dirname(values['log_file'])} is not a writable directory")
    command = values.pop("command", None)
    spec = Spec(name=name, target=values.pop("target", None) or "", cwd=str(cwd), env=env or None, user=user,
                command=command, **values)
    if command is not None:
        spec.target = "command: " + shlex.join(command)
        program = command[0]
        search = env.get("PATH", os.environ.get("PATH", os.defpath))
        found = (os.path.isfile(cwd / program) and os.access(cwd / program, os.X_OK)) if os.sep in program \
            else shutil.which(program, path=search)
        if not found:
            raise reader.error(where + ("command",), f"command of [services.{name}]: {program!r} is not an "
                                                     f"executable program" + ("" if os.sep in program else " on PATH"))
    elif check_targets:
        _check_target(reader, where, spec, set(table))
    return spec


def _check_user(reader: _Reader, where: tuple, name: str, user: str) -> None:
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise reader.error(where, f"user of [services.{name}]: no user named {user!r}") from None
    if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
        raise reader.error(where, f"user = {user!r} in [services.{name}] needs servicefactory to run as root "
                                  f"(it drops to that user before the service starts)")


def _check_target(reader: _Reader, where: tuple, spec: Any, given: set[str]) -> None:
    """Import the Service class as `run` would, from the service's directory; its name and policy
    fill what the file left out."""
    from servicefactory.service import describe
    from servicefactory.supervise.loader import TargetImportError, load as load_target

    module_part, colon, _ = spec.target.partition(":")
    if module_part.endswith(".py") or os.sep in module_part:
        module_part = str((Path(spec.cwd) / module_part).resolve())
        spec.target = module_part + spec.target[len(spec.target.partition(":")[0]):]
    before = os.getcwd()
    try:
        os.chdir(spec.cwd)
        classes = load_target(spec.target)
    except TargetImportError as exc:
        exc.args = (f"{reader.shown}:{reader.line(where + ('target',))}: [services.{spec.name}] {exc}",)
        raise
    except LoadError as exc:
        raise reader.error(where + ("target",), f"target of [services.{spec.name}]: {exc}") from None
    finally:
        os.chdir(before)
    if len(classes) != 1:
        raise reader.error(where + ("target",), f"target of [services.{spec.name}]: {spec.target} defines "
                                                f"{len(classes)} services; name one as module:Class")
    service = describe(classes[0])
    if not colon:
        spec.target = f"{spec.target}:{classes[0].__qualname__}"
    if "restart" not in given:
        spec.restart = service.policy.restart
    if "stop_timeout" not in given:
        spec.stop_timeout = service.policy.stop_timeout
    if "backoff_max" not in given and spec.backoff_max is None:
        spec.backoff_max = service.policy.backoff_max
    # as `run` does: what the class's policy says unless the file says otherwise
    if "instances" not in given:
        spec.instances = service.policy.instances
    if "watchdog" not in given:
        spec.watchdog = service.policy.watchdog
    if "max_memory" not in given:
        spec.max_memory = service.policy.max_memory
