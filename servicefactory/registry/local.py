"""The local state directory: the embedded backend of the service registry.

Per service NAME it holds `NAME.pid` (locked with flock by the live service for as long as it
runs, so a held lock is proof of life that survives pid reuse), `NAME.json` (metadata, written
atomically) and `NAME.log` (a daemon's output). Instance 2 of NAME (registry name `NAME/2`) keeps
the same files under the stem `NAME@2` (`NAME@2.pid`, ...): a file name cannot hold a '/', and no
service name holds an '@'.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import stat
import threading
import time

from servicefactory.errors import AlreadyRunning, InvalidName, StateError
from servicefactory.registry.base import INSTANCE_SEPARATOR, SUPERVISOR_PREFIX, Claim, ServiceRecord, split_instance

TYPE_CHECKING = False  # typing is for type checkers only: importing it would slow `servicefactory perform`
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any, Iterator

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
#: a file stem: a service's name, or an instance's (`NAME@2` for `NAME/2`)
_STEM = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}(?:@[1-9][0-9]{0,5})?\Z")
_FILE_SEPARATOR = "@"


def default_home() -> Path:
    """Where state lives: $SERVICEFACTORY_HOME, else $XDG_RUNTIME_DIR/servicefactory, else ~/.servicefactory."""
    from pathlib import Path
    return Path(_default_root())


def _default_root() -> str:
    # default_home() as a string: see LocalRegistry.root
    explicit = os.environ.get("SERVICEFACTORY_HOME")
    if explicit:
        return os.path.abspath(os.path.expanduser(explicit))  # messages name the directory actually used
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "servicefactory")
    return os.path.join(os.path.expanduser("~"), ".servicefactory")


def check_name(name: str) -> str:
    """Return `name` if it can name a service's files (a service's name, or an instance's id such as
    `Test/2`), else raise InvalidName (a usage error, exit 2)."""
    if not isinstance(name, str):
        raise InvalidName(f"invalid service name {name!r}: use letters, digits, '_', '-' and '.'")
    # the service's part first: `../etc` is a bad name, not a bad instance number of `..`
    if not _NAME.match(name.partition(INSTANCE_SEPARATOR)[0]):
        raise InvalidName(f"invalid service name {name!r}: use letters, digits, '_', '-' and '.'")
    try:
        split_instance(name)  # the instance part: its service part was matched above
    except ValueError as exc:
        raise InvalidName(str(exc)) from None
    return name


def _stem(name: str) -> str:
    """The file stem of registry name `name` (checked): `Test@2` for `Test/2`."""
    return check_name(name).replace(INSTANCE_SEPARATOR, _FILE_SEPARATOR)


def _name_of_stem(stem: str) -> str | None:
    """The registry name whose files have stem `stem`, or None if no name has it."""
    return stem.replace(_FILE_SEPARATOR, INSTANCE_SEPARATOR) if _STEM.match(stem) else None


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` so that readers see the old file or the new one, never a part."""
    import tempfile  # only writers pay for it; `perform` and `status` only read

    fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=os.path.dirname(path))
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


def read_nofollow(path: Path | str, limit: int = 1 << 20) -> bytes:
    """The bytes of the regular file at `path`, never through a symlink (OSError otherwise)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            limit -= len(chunk)
            if limit < 0:
                raise OSError(errno.EFBIG, "file too large", str(path))
    finally:
        os.close(fd)


def holds_open(pid: int, path: Path | str) -> bool:
    """Whether process `pid` has the file now at `path` open: proof that it is the service whose
    claim that (locked) pidfile is, which a pid merely written in a record never is."""
    try:
        target = os.stat(path, follow_symlinks=False)
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            info = os.stat(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if info.st_ino == target.st_ino and info.st_dev == target.st_dev:
            return True
    return False


def _supervised_as(pid: int, name: str) -> bool:
    """Whether process `pid` was started by a supervisor as service `name` (its environment says so
    from its start; with the start time checked by the caller, a record alone cannot fake it)."""
    from servicefactory.supervise._protocol import SUPERVISED_ENV

    try:
        environ = read_nofollow(f"/proc/{pid}/environ", 1 << 22)
    except OSError:
        return False
    return f"{SUPERVISED_ENV}={name}".encode() in environ.split(b"\0")


def locker(path: Path | str) -> int | None:
    """The pid that took the flock on the file at `path` (the kernel's /proc/locks), or None."""
    try:
        info = os.stat(path, follow_symlinks=False)
        with open("/proc/locks", "rb") as handle:
            table = handle.read()
    except OSError:
        return None
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}".encode()
    for line in table.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 8294 fe:00:2146387 0 EOF"; waiters ("->") hold nothing
        if len(fields) >= 6 and fields[1] == b"FLOCK" and fields[5] == device and fields[4].isdigit():
            return int(fields[4])
    return None


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


def send_signal(pid: int, signum: int, *, group: bool = False) -> bool:
    """Send `signum` to `pid` (its process group too if `group` and it leads one); True if sent."""
    try:
        if group and os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _readers_only(path: Path) -> bool | None:
    """Whether no exclusive flock is held on `path` (at most readers probing), per /proc/locks; None if unknown."""
    try:
        info = os.stat(path)
        with open("/proc/locks", "rb") as f:
            table = f.read().split(b"\n")
    except OSError:
        return None
    where = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}".encode()
    kinds = {fields[3] for fields in map(bytes.split, table)
             if len(fields) >= 6 and fields[1] == b"FLOCK" and fields[5] == where}  # "->" rows wait, not hold
    return b"WRITE" not in kinds  # none at all: the reader let go since our try, so try again


def _lock(path: Path, *, create: bool) -> int | None:
    """An fd holding an exclusive flock on `path` (the file now at that path), or None if another holds it.

    Never through a symlink, never on anything but a regular file (StateError, one line, otherwise).
    """
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_CREAT if create else 0), 0o600)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _unusable(path, exc) from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise StateError(f"{path} is not a regular file; remove it")
        if create and info.st_nlink > 1:  # a hard link: claiming would overwrite the file it shares
            os.close(fd)
            raise StateError(f"{path} is a hard link to another file; remove it")
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


def _unusable(path: Path, exc: OSError) -> StateError:
    if exc.errno == errno.ELOOP:
        return StateError(f"{path} is a symbolic link; refusing to follow it (remove it)")
    if exc.errno == errno.EISDIR:
        return StateError(f"{path} is a directory, not a pidfile; remove it")
    return StateError(f"cannot use {path}: {exc.strerror}")


#: the locked pidfiles this process holds by `claim`: a forked child (os.fork, multiprocessing's
#: "fork") closes its copies, or, outliving a `kill -9` of the service, it would hold the name for ever
_CLAIMED: set[int] = set()


def _close_claims_in_child() -> None:
    for fd in _CLAIMED:
        try:
            os.close(fd)  # the parent's copy keeps the lock: a flock belongs to the open file, not the fd
        except OSError:
            pass
    _CLAIMED.clear()


os.register_at_fork(after_in_child=_close_claims_in_child)


def is_dead(record: ServiceRecord) -> bool:
    """Whether the recorded process is gone (or its pid now names another process)."""
    started = process_start_time(record.pid) if record.pid else None
    return started is None or abs(started - record.create_time) > 1.0


class LocalRegistry:
    """The registry kept in one directory on this host (pidfiles, metadata, logs)."""

    #: one host's directory: never shared with another host
    many_hosts = False

    #: how often an owner checks that its record is still there and intact (and rewrites it if not)
    KEEP_INTERVAL = 1.0

    def __init__(self, home: Path | str | None = None) -> None:
        #: the directory, as a string: the reads `servicefactory perform` makes go through os.* with
        #: it, so that perform never imports pathlib (with the urllib.parse it imports, ~7 ms of a
        #: ~50 ms cold start); `home` is the same directory as a Path, for everything else
        self.root = os.path.normpath(os.fspath(home)) if home is not None else _default_root()
        #: the registry's `where`: the directory
        self.where = self.root
        self._home: Path | None = None
        self._published: dict[str, tuple[Claim, bytes]] = {}
        self._keeper: threading.Thread | None = None
        self._keeping = threading.Lock()

    # -- paths --

    @property
    def home(self) -> Path:
        """The state directory."""
        if self._home is None:
            from pathlib import Path
            self._home = Path(self.root)
        return self._home

    def _file(self, name: str, suffix: str) -> str:
        # pidfile(), metadata_file() as strings: see `root`
        return os.path.join(self.root, _stem(name) + suffix)

    def pidfile(self, name: str) -> Path:
        """The pidfile of service `name`."""
        return self.home / f"{_stem(name)}.pid"

    def metadata_file(self, name: str) -> Path:
        """The metadata file of service `name`."""
        return self.home / f"{_stem(name)}.json"

    def secret_file(self, name: str) -> Path:
        """The file of `name`'s secret (a supervisor's control token), apart from its record."""
        return self.home / f"{_stem(name)}.secret"

    def log_file(self, name: str) -> Path:
        """The default log file of service `name`."""
        return self.home / f"{_stem(name)}.log"

    def ensure(self) -> Path:
        """Create the directory 0700 if missing; refuse one that others own or may write, or that
        cannot be written at all (a read-only file system): StateError, exit 10."""
        try:
            self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        except FileExistsError:
            pass  # a file where the directory should be: check() says so
        except OSError as exc:
            raise StateError(f"cannot create state directory {self.home}: {exc.strerror}") from None
        self.check()
        try:
            read_only = os.statvfs(self.home).f_flag & os.ST_RDONLY
        except OSError:
            read_only = False
        if read_only or not os.access(self.home, os.W_OK | os.X_OK):
            raise StateError(f"state directory {self.home} is not writable"
                             f"{' (read-only file system)' if read_only else ''}; "
                             f"set SERVICEFACTORY_HOME to a writable directory of your own")
        return self.home

    def check(self) -> None:
        """Raise StateError if the directory is owned by another user or writable by others."""
        try:
            info = os.stat(self.root)
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

    def check_safe(self) -> None:
        """Raise StateError if the directory exists but cannot be trusted; a missing one holds nothing."""
        if os.path.lexists(self.root):
            self.check()

    def exists(self) -> bool:
        """Whether the state directory exists (nothing can be registered in a missing one)."""
        return os.path.exists(self.root)

    def environment(self) -> dict[str, str]:
        """SERVICEFACTORY_HOME, absolute: a process started elsewhere must use this very directory."""
        return {"SERVICEFACTORY_HOME": self.root}

    def private_dir(self) -> Path:
        """The state directory itself (0700, this user's: `ensure` and `check` see to it)."""
        return self.home

    # -- the registry interface --

    def claim(self, name: str) -> Claim:
        """Take the name for this process (flock on its pidfile); raise AlreadyRunning if it is held."""
        self.ensure()
        # a reader's momentary shared lock (status, stop) must not pass for a live owner: retry while
        # only readers hold it (a reader descheduled on a loaded machine may hold it for long), and
        # give up at once, after a short grace, when an exclusive lock shows a live owner
        path = self.pidfile(name)
        grace, patience = time.monotonic() + 0.1, time.monotonic() + 5.0
        while True:
            fd = _lock(path, create=True)
            now = time.monotonic()
            if fd is not None or now > patience or (now > grace and _readers_only(path) is not True):
                break
            time.sleep(0.005)
        if fd is None:
            record = self.lookup(name)
            if record is not None and record.supervisor and record.state != "running":
                raise AlreadyRunning(f"{name} is {record.state} under {record.supervisor}, which still holds "
                                     f"its name: `servicefactory restart {name}` or `servicefactory stop {name}`")
            if record is not None and is_dead(record):
                raise AlreadyRunning(f"{name} is not running (pid {record.pid} has exited), but a process it left "
                                     f"behind still holds {self.pidfile(name)}; end that process first")
            where = f" (pid {record.pid}, {record.url or 'no API'})" if record else ""
            raise AlreadyRunning(f"{name} is already running{where}")
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:  # a full disk: leave no empty pidfile to read as a `stale` service
            try:
                os.unlink(self.pidfile(name))  # still under our lock, as `release` does
            except OSError:
                pass
            os.close(fd)
            raise _unusable(self.pidfile(name), exc) from None
        _CLAIMED.add(fd)
        return Claim(name=name, handle=fd)

    def supervisor_name(self, pid: int) -> str:
        """`_supervisor-PID`: one host's state directory, one host's pids."""
        return f"{SUPERVISOR_PREFIX}{pid}"

    def inheritable(self, claim: Claim) -> tuple[int, ...]:
        """The claim's locked pidfile: a child holding it open is proven to be the service (`owner_alive`)."""
        return (claim.handle,)

    def hand_over(self, claim: Claim, pid: int) -> None:
        """Write `pid` into the claim's pidfile: the supervisor keeps the lock, the child runs the service."""
        os.ftruncate(claim.handle, 0)
        os.pwrite(claim.handle, f"{pid}\n".encode(), 0)

    def owns(self, claim: Claim) -> bool:
        """Whether the pidfile now at the claim's path is still the file this claim locked (the
        state directory may have been deleted and the name claimed again by a new owner)."""
        try:
            here = os.stat(self.pidfile(claim.name), follow_symlinks=False)
            mine = os.fstat(claim.handle)
        except OSError:
            return False
        return (here.st_ino, here.st_dev) == (mine.st_ino, mine.st_dev)

    def publish(self, claim: Claim, record: ServiceRecord) -> None:
        """Write the metadata of the service holding `claim`, and keep it written: a record found
        missing or unreadable later (a full disk, a truncated or garbled file) is rewritten."""
        data = json.dumps(record.to_dict(), indent=1).encode()
        with self._keeping:
            self._published[claim.name] = (claim, data)
            if self._keeper is None:
                self._keeper = threading.Thread(target=self._keep, daemon=True, name="servicefactory-registry")
                self._keeper.start()
            if not self.owns(claim):
                return  # the name is another owner's now: never overwrite its record
            self._write_record(claim.name, data)

    def publish_secret(self, claim: Claim, secret: str) -> None:
        """Write `secret` to NAME.secret (0600), not into the record that every lookup reads."""
        if self.owns(claim):
            write_atomically(self.secret_file(claim.name), secret.encode())

    def secret(self, name: str) -> str | None:
        """The secret in NAME.secret, if this user can read it."""
        self.check_safe()
        try:
            return read_nofollow(self._file(name, ".secret"), 4096).decode().strip() or None
        except (OSError, UnicodeDecodeError):
            return None

    def _write_record(self, name: str, data: bytes) -> None:
        path = self.metadata_file(name)
        try:
            write_atomically(path, data)
        except IsADirectoryError:
            os.rmdir(path)  # an empty directory in its place (a non-empty one stays: OSError)
            write_atomically(path, data)

    def _keep(self) -> None:
        while True:
            time.sleep(self.KEEP_INTERVAL)
            with self._keeping:
                if not self._published:
                    self._keeper = None
                    return
                for name, (claim, data) in list(self._published.items()):
                    if not self.owns(claim):
                        continue
                    try:
                        if read_nofollow(self.metadata_file(name)) == data:
                            continue
                    except OSError:
                        pass
                    try:
                        self._write_record(name, data)
                    except OSError:
                        pass  # still full (or worse): try again next time

    def release(self, claim: Claim) -> None:
        """Remove the service's files and drop the lock (unlink first: a waiter then finds a new file).

        Only files this claim still owns: an old owner never deletes a new owner's pidfile or record.
        """
        with self._keeping:
            if self._published.get(claim.name, (None,))[0] == claim:
                del self._published[claim.name]
            if self.owns(claim):
                for path in (self.metadata_file(claim.name), self.secret_file(claim.name), self.pidfile(claim.name)):
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
        _CLAIMED.discard(claim.handle)
        try:
            os.close(claim.handle)
        except OSError:
            pass

    def lookup(self, name: str) -> ServiceRecord | None:
        """The recorded metadata of `name`, or None (a missing, half-written or garbled file reads as
        none). Raises StateError for a state directory others could have planted it in."""
        path = self._file(name, ".json")  # an invalid name is the caller's error, not a missing record
        self.check_safe()
        try:
            record = ServiceRecord.from_dict(json.loads(read_nofollow(path)))
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None
        return record if record.name == name else None

    def names(self) -> list[str]:
        """Every name with a pidfile or metadata here, sorted."""
        return self._names((".pid", ".json"))

    def remembered_names(self) -> list[str]:
        """Every name run here whose last stop was not asked for with `stop`, sorted (a supervisor
        that was signalled or crashed leaves its services listed, as `stopped`)."""
        return [name for name in self._names((".last",))
                if not (self.remembered(name) or {}).get("stopped_by_user")]

    def _entries(self) -> list[str]:
        try:
            return os.listdir(self.root)  # a str: `perform` never imports pathlib
        except (FileNotFoundError, NotADirectoryError):
            return []

    def _names(self, suffixes: tuple[str, ...]) -> list[str]:
        found = {_name_of_stem(entry.rsplit(".", 1)[0]) for entry in self._entries()
                 if entry.endswith(suffixes) and not entry.startswith(".")}
        return sorted(name for name in found if name is not None)

    def instances_of(self, service: str) -> list[str]:
        """The names registered now under `service`: itself and its instances (`Test`, `Test/1`, ...),
        in instance order."""
        check_name(service)
        prefix = service + _FILE_SEPARATOR
        found = {_name_of_stem(entry.rsplit(".", 1)[0]) for entry in self._entries()
                 if entry.endswith((".pid", ".json")) and (entry.startswith(prefix) or entry.rsplit(".", 1)[0] == service)}
        return sorted((name for name in found if name is not None), key=lambda name: split_instance(name)[1] or 0)

    def records(self) -> Iterator[ServiceRecord]:
        """The metadata of every registered service."""
        for name in self.names():
            record = self.lookup(name)
            if record is not None:
                yield record

    def is_held(self, name: str) -> bool:
        """Whether a live process holds `name`'s pidfile lock."""
        try:
            fd = os.open(self._file(name, ".pid"), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return False
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return False
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
        return False

    def has_leftovers(self, name: str) -> bool:
        """Whether `name` has a pidfile or a record here (a dead owner's, if nobody holds the name)."""
        return os.path.lexists(self._file(name, ".pid")) or os.path.lexists(self._file(name, ".json"))

    def is_gone(self, record: ServiceRecord) -> bool:
        """Whether the recorded process has exited (or its pid now names another process)."""
        return is_dead(record)

    def is_suspended(self, record: ServiceRecord) -> bool:
        """Whether the recorded process is stopped by a signal (state T or t in /proc)."""
        try:
            with open(f"/proc/{record.pid}/stat", "rb") as handle:
                return handle.read().rsplit(b")", 1)[1].split()[0] in (b"T", b"t")
        except (OSError, IndexError):
            return False

    def usage(self, record: ServiceRecord) -> dict[str, Any]:
        """The recorded process's cpu seconds and resident memory (psutil), or {}."""
        try:
            import psutil

            process = psutil.Process(record.pid)
            with process.oneshot():
                times = process.cpu_times()
                return {"cpu": round(times.user + times.system, 2), "memory": process.memory_info().rss}
        except Exception:
            return {}

    def owner_alive(self, record: ServiceRecord) -> bool:
        """Whether `record.pid` is the live service itself: it has the name's locked pidfile open (for
        a supervisor, its own `_supervisor-N` pidfile) and started when the record says."""
        if not record.pid or is_dead(record):
            return False
        return holds_open(record.pid, self.pidfile(record.name)) or _supervised_as(record.pid, record.name)

    def signal(self, record: ServiceRecord, signum: int, *, group: bool = False) -> bool:
        """Send `signum` to the recorded process (its process group too if `group` and it leads one),
        only if it is proven to be the service (`owner_alive`); True if it was sent."""
        if not self.owner_alive(record):
            return False
        return send_signal(record.pid, signum, group=group)

    def owner(self, name: str) -> ServiceRecord | None:
        """What the live process holding `name` proves about itself when its record is missing,
        unreadable or an older owner's: its pid (and its supervisor's name); None if nobody holds it."""
        pidfile = self.pidfile(name)
        try:
            pid = int(read_nofollow(pidfile, 64).split()[0])
        except (OSError, ValueError, IndexError):
            pid = 0
        locked_by = locker(pidfile)
        supervisor = None
        if locked_by and locked_by != pid and holds_open(locked_by, pidfile):
            supervisor = f"{SUPERVISOR_PREFIX}{locked_by}"
        if not (pid > 0 and holds_open(pid, pidfile)):
            if supervisor is None:
                return None
            pid = 0  # a supervisor between two runs of its child
        started = (process_start_time(pid) or 0.0) if pid else 0.0
        return ServiceRecord(name, pid, create_time=started, started=started or time.time(),
                             supervisor=supervisor, state="running" if pid else "backoff")

    def is_current(self, record: ServiceRecord) -> bool:
        """Whether `record` was written by the name's present owner (not left by an older one)."""
        pidfile = self.pidfile(record.name)
        locked_by = locker(pidfile)
        if locked_by is None:
            return True  # cannot tell (no /proc/locks): believe the file
        if not record.supervisor:
            return record.pid == locked_by
        if record.supervisor != f"{SUPERVISOR_PREFIX}{locked_by}":
            return False
        try:  # the supervisor writes each new child's pid here first: a record naming another is older
            pid = int(read_nofollow(pidfile, 64).split()[0])
        except (OSError, ValueError, IndexError):
            return True
        # a record with no process (waiting for a dependency, blocked) while the pidfile still names
        # the supervisor that claimed the name: nothing newer was started since
        return pid == record.pid or not holds_open(pid, pidfile) or (not record.pid and pid == locked_by)

    def just_claimed(self, name: str) -> bool:
        """A name claimed moments ago whose owner has not published yet (it is still starting)."""
        try:
            age = time.time() - os.stat(self.pidfile(name), follow_symlinks=False).st_mtime
        except OSError:
            return False
        return age < 3.0 and not os.path.lexists(self.metadata_file(name))

    def log_of(self, name: str) -> Path:
        """Where `name` logs: its record's log path, else the --log-file it was last run with, else NAME.log."""
        from pathlib import Path  # only `logs` needs it: `perform` stays free of pathlib

        record = self.lookup(name)
        if record is not None and record.log_path:
            return Path(record.log_path)
        remembered = self.remembered(name) or {}
        if isinstance(remembered.get("log_file"), str):
            return Path(remembered["log_file"])
        return self.log_file(name)

    def logs(self) -> dict[str, Path]:
        """Every service's log that exists: NAME.log files here, and the --log-file of each service
        registered or remembered here (public names only: a supervisor's own log is not a service's)."""
        found = {_name_of_stem(entry[:-4]): self.home / entry for entry in sorted(self._entries())
                 if entry.endswith(".log") and _STEM.match(entry[:-4]) and entry != "supervisor.log"}
        for name in set(self.names()) | set(self.remembered_names()):
            if not name.startswith("_"):
                found[name] = self.log_of(name)
        return {name: path for name, path in sorted(found.items())
                if os.path.isfile(path) and not os.path.islink(path)}

    def clean(self, name: str) -> None:
        """Remove a stale service's leftovers, holding its lock meanwhile: never those of a live owner."""
        fd = _lock(self.pidfile(name), create=False)
        if fd is None:
            if os.path.lexists(self.pidfile(name)):
                return  # held: somebody owns the name
            fd = -1  # no pidfile at all: only a leftover metadata file to remove
        try:
            for path in (self.metadata_file(name), self.secret_file(name), self.pidfile(name)):
                try:
                    os.unlink(path)
                except OSError:
                    pass
        finally:
            if fd >= 0:
                os.close(fd)

    def remember(self, name: str, spec: dict[str, Any]) -> None:
        """Keep how `name` was run (target and options), so that `restart` can bring it back later."""
        write_atomically(self.home / f"{_stem(name)}.last", json.dumps(spec).encode())

    def remembered(self, name: str) -> dict[str, Any] | None:
        """How `name` was last run, if known."""
        try:
            spec = json.loads(read_nofollow(self.home / f"{_stem(name)}.last"))
        except (OSError, ValueError):
            return None
        return spec if isinstance(spec, dict) and isinstance(spec.get("target"), str) else None

    def mark_stopped(self, name: str) -> None:
        """Note that `name` was stopped on purpose, so that `status` no longer lists it."""
        spec = self.remembered(name)
        if spec is not None and not spec.get("stopped_by_user"):
            try:
                self.remember(name, dict(spec, stopped_by_user=True))
            except OSError:
                pass

    @property
    def token_file(self) -> Path:
        """Where a token can be kept instead of $SERVICEFACTORY_TOKEN (mode 0600)."""
        return self.home / "token"

    def token_hint(self) -> str:
        """Where a token can be put for `token()` to find it, for messages: the token file."""
        return str(self.token_file)

    def token(self) -> str | None:
        """The API token from $SERVICEFACTORY_TOKEN, else from the `token` file here (must be 0600)."""
        token = os.environ.get("SERVICEFACTORY_TOKEN", "").strip()
        if token:
            return token
        path = os.path.join(self.root, "token")  # not token_file: see `root`
        try:
            info = os.lstat(path)
        except OSError:
            return None
        if not stat.S_ISREG(info.st_mode):  # a directory, a link, a FIFO: no token, and not "readable by others"
            raise StateError(f"token file {path} is not a regular file; remove it or put a token in it")
        if info.st_mode & 0o077:
            raise StateError(f"token file {path} is readable by others; run: chmod 600 {path}")
        try:
            return read_nofollow(path, 4096).decode().strip() or None
        except (OSError, UnicodeDecodeError) as exc:
            raise StateError(f"token file {path} is unusable: {exc}") from None
