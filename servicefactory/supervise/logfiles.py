"""Service log files: size-rotated writing, tailing, and following across rotations."""
from __future__ import annotations

import errno
import logging
import os
import stat
import time
from pathlib import Path
from typing import Callable, Iterator

from servicefactory.errors import StateError

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 5

#: C0 controls but tab, DEL and C1 controls, shown as visible escapes: a service's output must not
#: drive the operator's terminal (CSI colours and cursor moves, OSC titles and hyperlinks, a bare CR
#: that overwrites a line) nor start a line of its own
_CONTROLS = {code: f"\\x{code:02x}" for code in [*range(0x00, 0x09), *range(0x0a, 0x20), 0x7f, *range(0x80, 0xa0)]}


def printable(text: str) -> str:
    """`text` with every control character (tab excepted) replaced by a visible `\\xNN` escape."""
    return text.translate(_CONTROLS)


# O_NONBLOCK: opening a FIFO for writing would otherwise wait for a reader, for ever
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


def _open_append(path: Path | str) -> int:
    """An fd appending to `path` (created 0600), blocking again once open; OSError as os.open raises."""
    try:
        fd = os.open(path, _OPEN_FLAGS, 0o600)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a FIFO nobody reads
            raise OSError(errno.ENXIO, "it is a FIFO (named pipe), not a file") from None
        raise
    os.set_blocking(fd, True)  # a terminal or a device must not drop output on EAGAIN
    return fd


def refusal(info: os.stat_result) -> str | None:
    """Why an existing log file must not receive a service's output, or None: it must be ours and
    private (another user could read what the service prints, or have planted it to collect it).
    Devices (/dev/null, /dev/full, a terminal) are fine."""
    if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
        return None
    if not stat.S_ISREG(info.st_mode):
        return "it is not a regular file (a FIFO or a socket would stall or drop the output)"
    if info.st_uid != os.geteuid():
        return f"it is owned by uid {info.st_uid}, not by this service's user"
    if stat.S_ISREG(info.st_mode) and info.st_mode & 0o066:
        return f"it is readable or writable by others (mode {stat.S_IMODE(info.st_mode):o}); run: chmod 600"
    return None


def untrusted(path: Path | str, home: Path | str) -> str | None:
    """Why `logs` must not print the file at `path` (a record's log_path), or None: it must lie in
    the state directory `home` or belong to this user; a planted path could name any file."""
    try:
        info = os.stat(path)
    except OSError:
        return None  # nothing to print; the caller reports the missing file
    inside = os.path.realpath(path).startswith(os.path.realpath(home) + os.sep)
    if inside or info.st_uid == os.geteuid() or stat.S_ISCHR(info.st_mode):
        return None
    return f"{path} is outside the state directory and owned by uid {info.st_uid}, not by you"


def open_private(path: Path | str) -> int:
    """An fd appending to `path`, created 0600, never through a symlink (StateError, one line, if it is one)."""
    try:
        fd = _open_append(path)
    except OSError as exc:
        raise StateError(f"cannot open {path}: " + ("it is a symbolic link" if exc.errno == errno.ELOOP
                                                     else str(exc.strerror))) from None
    info = os.fstat(fd)
    if stat.S_ISREG(info.st_mode) and info.st_mode & 0o077:
        os.fchmod(fd, 0o600)
    return fd


class LogFileRefused(StateError):
    """An existing log file that is not the service's own (see `refusal`), or a symlink."""


class RotatingLog:
    """Appends to `path`; past `max_bytes` renames it to path.1 (path.1 to path.2, ...), keeping `backups`.

    Never through a symlink; an existing file must be the service user's and private (LogFileRefused).
    """

    def __init__(self, path: Path | str, max_bytes: int = DEFAULT_MAX_BYTES, backups: int = DEFAULT_BACKUPS) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.dropped = 0
        self._file = None
        self._size = 0
        self._regular = True
        try:
            fd = _open_append(self.path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise LogFileRefused(f"refusing the log file {self.path}: it is a symbolic link") from None
            if exc.errno == errno.ENXIO:
                raise LogFileRefused(f"refusing the log file {self.path}: {exc.strerror}") from None
            fd = None  # a full disk, a read-only directory: warned about below, retried on each write
        if fd is not None:
            why = refusal(os.fstat(fd))
            if why:
                os.close(fd)
                raise LogFileRefused(f"refusing the log file {self.path}: {why}")
            os.close(fd)
        self._open()

    def _open(self) -> None:
        try:
            # created 0600; an existing file keeps its mode (it may be a device such as /dev/null)
            fd = _open_append(self.path)
            info = os.fstat(fd)
            why = refusal(info)
            if why:  # planted by another user after a rotation, between our rename and this open
                os.close(fd)
                raise OSError(errno.EPERM, f"refusing it: {why}")
            self._file = os.fdopen(fd, "ab", buffering=0)
            self._regular = stat.S_ISREG(info.st_mode)
            self._size = info.st_size if self._regular else 0
        except OSError as exc:
            self._file = None
            logger.warning("cannot open log file %s: %s", self.path, exc)

    def write(self, data: bytes) -> None:
        """Append `data` (whole lines); on a full disk drop it and go on, never raise."""
        if self._file is None:
            self._open()
            if self._file is None:
                self.dropped += len(data)
                return
        if self._regular and self._size and self._size + len(data) > self.max_bytes:
            self.rotate()  # only regular files: a device or a pipe is never renamed
            if self._file is None:
                self.dropped += len(data)
                return
        try:
            self._file.write(data)
            self._size += len(data)
        except OSError as exc:
            if not self.dropped:
                logger.warning("writing %s failed (%s); dropping output until it works again", self.path, exc)
            self.dropped += len(data)

    def rotate(self) -> None:
        """Shift path -> path.1 -> ... -> path.N, dropping the oldest, and start a new file."""
        self.close()
        try:
            if self.backups <= 0:
                os.unlink(self.path)
            else:
                for index in range(self.backups - 1, 0, -1):
                    older = self.path.with_name(f"{self.path.name}.{index}")
                    if older.exists():
                        os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        except OSError as exc:
            logger.warning("rotating %s failed: %s", self.path, exc)
        self._open()

    def fileno(self) -> int | None:
        """The descriptor of the file written now (None while it cannot be opened)."""
        return self._file.fileno() if self._file is not None else None

    def reopen(self) -> None:
        """Close and open the path again: after logrotate moved the file, write to a new one there."""
        self.close()
        self._open()

    def close(self) -> None:
        """Close the current file."""
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None


def _open_for_reading(path: Path | str):  # type: ignore[no-untyped-def]
    """The file at `path` for reading, never through a symlink; a directory is an OSError here."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO must not hang us
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def tail(path: Path | str, lines: int) -> list[str]:
    """The last `lines` lines of `path` (fewer if it is shorter), read from the end."""
    if lines <= 0:
        return []
    complete, offset = tail_and_offset(path, lines)
    with _open_for_reading(path) as handle:
        handle.seek(offset)
        partial = handle.read().decode(errors="replace")
    return (complete + partial.splitlines())[-lines:]


def tail_and_offset(path: Path | str, lines: int) -> tuple[list[str], int]:
    """The last `lines` complete lines of `path`, and the offset just after them (to follow from)."""
    text, offset, _ = tail_and_position(path, lines)
    return text, offset


def tail_and_position(path: Path | str, lines: int) -> tuple[list[str], int, int]:
    """tail_and_offset, and the inode of the file read: `follow(offset=, inode=)` then goes on from
    there even if the file was rotated in between (printing a long history takes time)."""
    with _open_for_reading(path) as handle:
        inode = os.fstat(handle.fileno()).st_ino
        handle.seek(0, os.SEEK_END)
        end = position = handle.tell()
        data = b""
        while position > 0 and data.count(b"\n") <= lines:
            step = min(65536, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
    complete = data.rfind(b"\n") + 1  # a line still being written is left to the follower
    offset = end - (len(data) - complete)
    text = data[:complete].decode(errors="replace").splitlines()
    return (text[-lines:] if lines > 0 else []), offset, inode


def follow(path: Path | str, *, stop: Callable[[], bool] = lambda: False, poll: float = 0.2,
           offset: int | None = None, inode: int | None = None) -> Iterator[str]:
    """Yield lines appended to `path` after `offset` (default: its current end; its start if it does
    not exist yet), losing none across rotations: when `path` was rotated (once or many times since
    the last look), every rotated file newer than the one being read is read whole, oldest first.
    With `inode` (from tail_and_position), `offset` is in that file, wherever rotation moved it."""
    path = Path(path)
    handle = None  # `inode` is then the inode of the file `handle` reads
    newer: list = []  # open files written after the current one, oldest first: complete, read whole
    pending = b""
    start: int | None = offset
    first = True
    try:
        while not stop():
            if handle is None:
                try:
                    handle = open(path, "rb")
                except FileNotFoundError:
                    first = False  # it appears later: everything in it is new
                    start = 0
                    time.sleep(poll)
                    continue
                opened = os.fstat(handle.fileno()).st_ino
                if first and inode is not None and opened != inode:
                    # rotated since the offset was taken: go on in that file, then in every newer one
                    newer = _newer_than(path, inode)
                    handle.close()
                    handle = _find(path, inode)
                    if handle is None:  # rotated away meanwhile: from the oldest file still there
                        start = 0
                        handle = newer.pop(0) if newer else open(path, "rb")
                    opened = os.fstat(handle.fileno()).st_ino
                inode = opened
                if start is None and first:
                    handle.seek(0, os.SEEK_END)
                elif start:
                    handle.seek(start)
                start, first = 0, False
            chunk = handle.read(65536)
            if chunk:
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    yield line.decode(errors="replace")
                continue
            if newer:  # a newer file exists, so the writer is done with this one: go on with the next
                handle.close()
                handle = newer.pop(0)
                inode = os.fstat(handle.fileno()).st_ino
                continue
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            if current is not None and current.st_ino != inode:
                # rotated: read what is left of ours (the last write may have landed just before the
                # rename), then every file written since, in order
                newer = _newer_than(path, inode)
                continue
            if current is not None and current.st_size < handle.tell():
                handle.seek(0)  # truncated in place
                continue
            time.sleep(poll)
    finally:
        for leftover in [handle] + newer:
            if leftover is not None:
                leftover.close()


def _find(path: Path, inode: int):
    """The rotated file of `path`'s chain that is `inode`, opened, or None if it is gone."""
    index = 1
    while True:
        try:
            handle = open(path.with_name(f"{path.name}.{index}"), "rb")
        except OSError:
            return None
        if os.fstat(handle.fileno()).st_ino == inode:
            return handle
        handle.close()
        index += 1


def _newer_than(path: Path, inode: int | None) -> list:
    """Open the files of `path`'s rotation chain written after the file with `inode`, oldest first.

    Names are opened newest first (path, path.1, path.2, ...): a rotation meanwhile only moves every
    file one name further, so none newer than ours can be passed over; an open file keeps its
    content whatever its name becomes. Stops at ours (or when the chain ends: ours was dropped).
    """
    found: list = []
    seen: set[int] = set()
    index = 0
    while True:
        name = path if index == 0 else path.with_name(f"{path.name}.{index}")
        index += 1
        try:
            handle = open(name, "rb")
        except FileNotFoundError:
            if index > 1:
                break
            continue  # between a rotation's rename and the new file's creation
        except OSError:
            break
        number = os.fstat(handle.fileno()).st_ino
        if number == inode:
            handle.close()
            break
        if number in seen:  # met again under its next name after a rotation meanwhile
            handle.close()
            continue
        seen.add(number)
        found.append(handle)
    found.reverse()
    return found
