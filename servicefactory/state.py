"""The local state directory: the embedded backend of the service registry.

Per service NAME it holds `NAME.pid` (locked with flock by the live service for as long as it
runs, so a held lock is proof of life that survives pid reuse), `NAME.json` (metadata, written
atomically) and `NAME.log` (a daemon's output).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import stat
import time
from pathlib import Path
from typing import Any, Iterator

from .errors import AlreadyRunning, InvalidName, StateError
from .registry import Claim, ServiceRecord

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")


def default_home() -> Path:
    """Where state lives: $SERVICEFACTORY_HOME, else $XDG_RUNTIME_DIR/servicefactory, else ~/.servicefactory."""
    explicit = os.environ.get("SERVICEFACTORY_HOME")
    if explicit:
        return Path(explicit).expanduser().absolute()  # messages name the directory actually used
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "servicefactory"
    return Path.home() / ".servicefactory"


def check_name(name: str) -> str:
    """Return `name` if it can name a service's files, else raise StateError."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidName(f"invalid service name {name!r}: use letters, digits, '_', '-' and '.'")
    return name


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` so that readers see the old file or the new one, never a part."""
    import tempfile  # only writers pay for it; `perform` and `status` only read

    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def process_start_time(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch, as psutil reports it), or None if it is dead."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        if fields[0] in (b"Z", b"X"):
            return None  # dead, only waiting for its parent to reap it
        ticks = int(fields[19])
        return round(_boot_time() + ticks / os.sysconf("SC_CLK_TCK"), 2)
    except FileNotFoundError:
        return None
    except (OSError, IndexError, ValueError):
        try:
            import psutil
            return round(psutil.Process(pid).create_time(), 2)
        except Exception:
            return None


_boot: list[float] = []


def _boot_time() -> float:
    if not _boot:
        with open("/proc/stat", "rb") as handle:
            for line in handle:
                if line.startswith(b"btime"):
                    _boot.append(float(line.split()[1]))
                    break
    return _boot[0]


def _lock(path: Path, *, create: bool) -> int | None:
    """An fd holding an exclusive flock on `path` (the file now at that path), or None if another holds it."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0), 0o600)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            return None
        # the previous owner may have unlinked the file between our open and our lock
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
        if not create:
            return None


def is_dead(record: ServiceRecord) -> bool:
    """Whether the recorded process is gone (or its pid now names another process)."""
    started = process_start_time(record.pid) if record.pid else None
    return started is None or abs(started - record.create_time) > 1.0


class LocalRegistry:
    """The registry kept in one directory on this host (pidfiles, metadata, logs)."""

    def __init__(self, home: Path | str | None = None) -> None:
        self.home = Path(home) if home is not None else default_home()

    # -- paths --

    def pidfile(self, name: str) -> Path:
        """The pidfile of service `name`."""
        return self.home / f"{check_name(name)}.pid"

    def metadata_file(self, name: str) -> Path:
        """The metadata file of service `name`."""
        return self.home / f"{check_name(name)}.json"

    def log_file(self, name: str) -> Path:
        """The default log file of service `name`."""
        return self.home / f"{check_name(name)}.log"

    def ensure(self) -> Path:
        """Create the directory 0700 if missing; refuse one that others own or may write."""
        try:
            self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        except FileExistsError:
            pass  # a file where the directory should be: check() says so
        except OSError as exc:
            raise StateError(f"cannot create state directory {self.home}: {exc.strerror}") from None
        self.check()
        return self.home

    def check(self) -> None:
        """Raise StateError if the directory is owned by another user or writable by others."""
        try:
            info = self.home.stat()
        except FileNotFoundError:
            raise StateError(f"state directory {self.home} does not exist (was it deleted?)") from None
        except OSError as exc:
            raise StateError(f"state directory {self.home} is unusable: {exc.strerror}") from None
        if not stat.S_ISDIR(info.st_mode):
            raise StateError(f"state directory {self.home} is not a directory; set SERVICEFACTORY_HOME "
                             f"to a directory of your own")
        if info.st_uid != os.geteuid():
            raise StateError(f"state directory {self.home} is owned by uid {info.st_uid}, not by you; "
                             f"set SERVICEFACTORY_HOME to a directory of your own")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise StateError(f"state directory {self.home} is writable by others; run: chmod 700 {self.home}")

    # -- the registry interface --

    def claim(self, name: str) -> Claim:
        """Take the name for this process (flock on its pidfile); raise AlreadyRunning if it is held."""
        self.ensure()
        # a reader's momentary shared lock (status, stop) must not pass for a live owner: retry briefly
        deadline = time.monotonic() + 0.1
        while True:
            fd = _lock(self.pidfile(name), create=True)
            if fd is not None or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        if fd is None:
            record = self.lookup(name)
            if record is not None and record.supervisor and record.state != "running":
                raise AlreadyRunning(f"{name} is {record.state} under {record.supervisor}, which still holds "
                                     f"its name: `servicefactory restart {name}` or `servicefactory stop {name}`")
            where = f" (pid {record.pid}, {record.url or 'no API'})" if record else ""
            raise AlreadyRunning(f"{name} is already running{where}")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return Claim(name=name, handle=fd)

    def publish(self, claim: Claim, record: ServiceRecord) -> None:
        """Write the metadata of the service holding `claim`."""
        write_atomically(self.metadata_file(claim.name), json.dumps(record.to_dict(), indent=1).encode())

    def release(self, claim: Claim) -> None:
        """Remove the service's files and drop the lock (unlink first: a waiter then finds a new file)."""
        for path in (self.metadata_file(claim.name), self.pidfile(claim.name)):
            try:
                os.unlink(path)
            except OSError:
                pass
        try:
            os.close(claim.handle)
        except OSError:
            pass

    def lookup(self, name: str) -> ServiceRecord | None:
        """The recorded metadata of `name`, or None (a missing or half-written file reads as none)."""
        path = self.metadata_file(name)  # an invalid name is the caller's error, not a missing record
        try:
            raw = path.read_bytes()
            return ServiceRecord.from_dict(json.loads(raw))
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def names(self) -> list[str]:
        """Every name with a pidfile or metadata here, sorted."""
        try:
            entries = os.listdir(self.home)
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = {entry.rsplit(".", 1)[0] for entry in entries
                 if entry.endswith((".pid", ".json")) and not entry.startswith(".")}
        return sorted(found)

    def records(self) -> Iterator[ServiceRecord]:
        """The metadata of every registered service."""
        for name in self.names():
            record = self.lookup(name)
            if record is not None:
                yield record

    def is_held(self, name: str) -> bool:
        """Whether a live process holds `name`'s pidfile lock."""
        try:
            fd = os.open(self.pidfile(name), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
        return False

    def state_of(self, name: str) -> tuple[str, ServiceRecord | None]:
        """`running`, `stale`, `stopped`, or what a supervisor reports (`starting`, `backoff`, `failed`, ...)."""
        record = self.lookup(name)
        if not self.is_held(name):
            has_files = record is not None or self.pidfile(name).exists() or self.metadata_file(name).exists()
            return ("stale" if has_files else "stopped"), record
        if record is None:
            return "starting", None
        dead = is_dead(record)
        if record.supervisor:
            if not self.is_held(record.supervisor):
                # its supervisor died; the child follows it out within its stop timeout
                return ("stale" if dead else "stopping"), record
            if record.state == "running" and dead:
                return "starting", record  # it just exited; its supervisor is about to say what next
            return record.state, record
        return ("stale" if dead else "running"), record

    def clean(self, name: str) -> None:
        """Remove a stale service's leftovers, holding its lock meanwhile: never those of a live owner."""
        fd = _lock(self.pidfile(name), create=False)
        if fd is None:
            if self.pidfile(name).exists():
                return  # held: somebody owns the name
            fd = -1  # no pidfile at all: only a leftover metadata file to remove
        try:
            for path in (self.metadata_file(name), self.pidfile(name)):
                try:
                    os.unlink(path)
                except OSError:
                    pass
        finally:
            if fd >= 0:
                os.close(fd)

    def remember(self, name: str, spec: dict[str, Any]) -> None:
        """Keep how `name` was run (target and options), so that `restart` can bring it back later."""
        write_atomically(self.home / f"{check_name(name)}.last", json.dumps(spec).encode())

    def remembered(self, name: str) -> dict[str, Any] | None:
        """How `name` was last run, if known."""
        try:
            spec = json.loads((self.home / f"{check_name(name)}.last").read_bytes())
        except (OSError, ValueError):
            return None
        return spec if isinstance(spec, dict) and isinstance(spec.get("target"), str) else None

    @property
    def token_file(self) -> Path:
        """Where a token can be kept instead of $SERVICEFACTORY_TOKEN (mode 0600)."""
        return self.home / "token"

    def token(self) -> str | None:
        """The API token from $SERVICEFACTORY_TOKEN, else from the `token` file here (must be 0600)."""
        token = os.environ.get("SERVICEFACTORY_TOKEN", "").strip()
        if token:
            return token
        path = self.token_file
        try:
            info = path.stat()
        except OSError:
            return None
        if info.st_mode & 0o077:
            raise StateError(f"token file {path} is readable by others; run: chmod 600 {path}")
        return path.read_text().strip() or None

    def describe(self) -> dict[str, Any]:
        """Where this registry keeps its state, for messages."""
        return {"backend": "local", "home": str(self.home)}
