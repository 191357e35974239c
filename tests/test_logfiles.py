"""Service log files: size rotation with N backups, writes that never raise, tail, and follow across rotations."""
from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from support import wait_until
from servicefactory.supervise.logfiles import RotatingLog, follow, tail


def _descriptor_of(path: Path) -> int:
    """The descriptor this process has open on `path` (what RotatingLog writes through)."""
    for entry in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{entry}") == str(path):
                return int(entry)
        except OSError:
            continue
    raise AssertionError(f"{path} is not open")


def _lines(count: int, width: int = 30) -> list[bytes]:
    return [f"line {index:04d} ".ljust(width - 1, "x").encode() + b"\n" for index in range(count)]


# -- RotatingLog --

def test_rotation_keeps_exactly_the_configured_backups_and_drops_the_oldest(tmp_path):
    path = tmp_path / "svc.log"
    log = RotatingLog(path, max_bytes=100, backups=2)
    lines = _lines(20)  # 30 bytes each: three lines fit in a file
    for line in lines:
        log.write(line)
    log.close()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["svc.log", "svc.log.1", "svc.log.2"]
    assert path.read_bytes() == b"".join(lines[18:])
    assert (tmp_path / "svc.log.1").read_bytes() == b"".join(lines[15:18])
    assert (tmp_path / "svc.log.2").read_bytes() == b"".join(lines[12:15])
    assert path.stat().st_mode & 0o777 == 0o600


def test_zero_backups_starts_the_file_afresh_and_keeps_no_other(tmp_path):
    path = tmp_path / "svc.log"
    log = RotatingLog(path, max_bytes=100, backups=0)
    lines = _lines(10)
    for line in lines:
        log.write(line)
    log.close()
    assert [p.name for p in tmp_path.iterdir()] == ["svc.log"]
    assert path.read_bytes() == lines[9]


def test_a_reopened_log_counts_what_the_file_already_holds(tmp_path):
    path = tmp_path / "svc.log"
    path.write_bytes(b"".join(_lines(3)))  # 90 of 100 bytes used by an earlier run
    path.chmod(0o600)  # as our own runs create it: a log others may read is refused
    log = RotatingLog(path, max_bytes=100, backups=1)
    log.write(b"y" * 29 + b"\n")
    log.close()
    assert (tmp_path / "svc.log.1").read_bytes() == b"".join(_lines(3))
    assert path.read_bytes() == b"y" * 29 + b"\n"


def test_a_write_larger_than_max_bytes_into_an_empty_file_is_kept_whole(tmp_path):
    path = tmp_path / "svc.log"
    log = RotatingLog(path, max_bytes=100, backups=2)
    log.write(b"z" * 500 + b"\n")
    log.close()
    assert path.read_bytes() == b"z" * 500 + b"\n"
    assert not (tmp_path / "svc.log.1").exists()


def test_a_full_disk_never_raises_counts_the_dropped_bytes_and_writing_resumes_when_there_is_room(tmp_path):
    path = tmp_path / "svc.log"
    log = RotatingLog(path, max_bytes=1_000_000, backups=1)
    log.write(b"before\n")
    fd = _descriptor_of(path)
    saved = os.dup(fd)
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, fd)  # every write now fails with ENOSPC
    os.close(full)
    try:
        for _ in range(5):
            log.write(b"lost line\n")
        assert log.dropped == 5 * len(b"lost line\n")
    finally:
        os.dup2(saved, fd)  # room again
        os.close(saved)
    log.write(b"after\n")
    log.close()
    assert path.read_bytes() == b"before\nafter\n"
    assert log.dropped == 50


def test_a_closed_descriptor_never_raises_and_counts_the_dropped_bytes(tmp_path):
    path = tmp_path / "svc.log"
    log = RotatingLog(path, max_bytes=1_000_000, backups=1)
    log.write(b"before\n")
    fd = _descriptor_of(path)
    os.close(fd)
    try:
        log.write(b"lost\n")
        log.write(b"lost too\n")
        assert log.dropped == len(b"lost\n") + len(b"lost too\n")
    finally:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)  # give the number back something harmless for close() to close
        os.close(null)
    log.close()
    assert path.read_bytes() == b"before\n"


def test_a_log_that_cannot_be_opened_never_raises_and_counts_the_dropped_bytes(tmp_path):
    log = RotatingLog(tmp_path / "missing-dir" / "svc.log", max_bytes=100, backups=2)
    log.write(b"nowhere to go\n")
    assert log.dropped == len(b"nowhere to go\n")
    log.close()


def test_a_rotation_that_cannot_reopen_the_file_never_raises_and_counts_the_dropped_bytes(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    log = RotatingLog(folder / "svc.log", max_bytes=100, backups=2)
    log.write(b"a" * 80 + b"\n")
    shutil.rmtree(folder)  # the log directory is deleted under the running service
    log.write(b"b" * 80 + b"\n")  # past max_bytes: rotates, and the new file cannot be created
    assert log.dropped == 81
    log.close()


# -- tail --

def test_tail_returns_the_last_lines_of_a_file_bigger_than_its_read_chunks(tmp_path):
    path = tmp_path / "big.log"
    path.write_text("".join(f"line {index:06d}\n" for index in range(100_000)))  # 1.2 MB
    assert tail(path, 3) == ["line 099997", "line 099998", "line 099999"]
    assert tail(path, 10_000) == [f"line {index:06d}" for index in range(90_000, 100_000)]


def test_tail_of_long_lines_spanning_read_chunks_returns_them_whole(tmp_path):
    path = tmp_path / "wide.log"
    lines = [chr(ord("a") + index) * 100_000 for index in range(4)]
    path.write_text("\n".join(lines) + "\n")
    assert tail(path, 2) == lines[2:]


def test_tail_of_a_file_shorter_than_asked_returns_every_line(tmp_path):
    path = tmp_path / "short.log"
    path.write_text("one\ntwo\n")
    assert tail(path, 10) == ["one", "two"]
    assert tail(path, 0) == []


def test_tail_keeps_a_last_line_without_newline_and_reads_an_empty_file_as_no_lines(tmp_path):
    path = tmp_path / "partial.log"
    path.write_text("one\ntwo\nthree")
    assert tail(path, 2) == ["two", "three"]
    empty = tmp_path / "empty.log"
    empty.write_text("")
    assert tail(empty, 5) == []


# -- follow --

class Follower:
    """follow() in a background thread, collecting what it yields; stopped and joined at the end."""

    def __init__(self, path: Path, **options) -> None:
        self.lines: list[str] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(path, options), daemon=True)
        self.thread.start()

    def _run(self, path: Path, options: dict) -> None:
        for line in follow(path, stop=self.done.is_set, poll=0.02, **options):
            self.lines.append(line)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[str]:
        wait_until(lambda: len(self.lines) >= count, timeout=timeout, message=f"{count} lines, got {self.lines}")
        return list(self.lines)

    def stop(self) -> None:
        self.done.set()
        self.thread.join(2)
        assert not self.thread.is_alive(), "follow() did not return after stop() became true"


@pytest.fixture
def following() -> Iterator:
    followers: list[Follower] = []

    def start(path: Path, **options) -> Follower:
        follower = Follower(path, **options)
        followers.append(follower)
        time.sleep(0.1)  # let it open the file and reach its end
        return follower

    yield start
    for follower in followers:
        follower.stop()


def _append(path: Path, *lines: str) -> None:
    with open(path, "a") as handle:
        handle.write("".join(f"{line}\n" for line in lines))


def test_follow_yields_only_lines_appended_after_it_started(tmp_path, following):
    path = tmp_path / "svc.log"
    _append(path, "old 1", "old 2")
    follower = following(path)
    _append(path, "new 1", "new 2")
    assert follower.wait_for(2) == ["new 1", "new 2"]


def test_follow_joins_a_line_written_in_two_parts(tmp_path, following):
    path = tmp_path / "svc.log"
    path.write_text("")
    follower = following(path)
    with open(path, "a") as handle:
        handle.write("first half, ")
        handle.flush()
        time.sleep(0.1)
        handle.write("second half\n")
    assert follower.wait_for(1) == ["first half, second half"]


def test_follow_reads_the_rest_of_a_rotated_file_then_the_new_one(tmp_path, following):
    path = tmp_path / "svc.log"
    _append(path, "before")
    follower = following(path)
    _append(path, "a 1")
    follower.wait_for(1)
    _append(path, "a 2", "a 3")
    os.replace(path, tmp_path / "svc.log.1")  # rotation by rename, as RotatingLog does it
    _append(path, "b 1", "b 2")
    assert follower.wait_for(5) == ["a 1", "a 2", "a 3", "b 1", "b 2"]
    time.sleep(0.2)
    assert len(follower.lines) == 5


def test_follow_keeps_going_across_rotations_by_rotating_log(tmp_path, following):
    path = tmp_path / "svc.log"
    log = RotatingLog(path, max_bytes=100, backups=2)
    log.write(b"start\n")
    follower = following(path)
    expected = []
    for index in range(12):  # four rotations, paced so the follower sees each file
        line = f"line {index:04d} ".ljust(29, "x")
        expected.append(line)
        log.write(line.encode() + b"\n")
        if index % 3 == 2:
            follower.wait_for(len(expected))
    log.close()
    assert follower.wait_for(12) == expected


def test_follow_starts_over_when_the_file_is_truncated_in_place(tmp_path, following):
    path = tmp_path / "svc.log"
    path.write_text("")
    follower = following(path)
    _append(path, "a fairly long old line 1", "a fairly long old line 2")
    follower.wait_for(2)
    with open(path, "w") as handle:  # truncated, as `> svc.log` or copytruncate do
        handle.write("new 1\nnew 2\n")
    assert follower.wait_for(4) == ["a fairly long old line 1", "a fairly long old line 2", "new 1", "new 2"]


def test_follow_reads_a_file_created_after_it_started_from_its_first_line(tmp_path, following):
    path = tmp_path / "later.log"
    follower = following(path)
    _append(path, "first", "second")
    assert follower.wait_for(2) == ["first", "second"]


def test_follow_returns_once_stop_is_true_even_while_the_file_is_missing(tmp_path):
    follower = Follower(tmp_path / "never.log")
    time.sleep(0.1)
    started = time.monotonic()
    follower.stop()
    assert time.monotonic() - started < 1.0


def test_a_device_as_log_file_is_neither_chmodded_nor_rotated(tmp_path):
    """--log-file /dev/null must stay /dev/null: no chmod, no rename, however much is written."""
    from servicefactory.supervise.logfiles import RotatingLog

    before = os.stat("/dev/null")
    log = RotatingLog("/dev/null", max_bytes=1024, backups=2)
    for _ in range(20):
        log.write(b"x" * 200 + b"\n")
    log.close()
    after = os.stat("/dev/null")
    assert (after.st_mode, after.st_ino, after.st_rdev) == (before.st_mode, before.st_ino, before.st_rdev)
    assert not os.path.exists("/dev/null.1")
