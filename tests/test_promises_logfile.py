"""A refused --log-file: one line, exit 10, nothing left in the state directory, never a hang
(found by trying 0.3.0's branches from outside: a FIFO at the path hung `run -d` for good, and a
refused log file left the name's pidfile behind, so `status` said `stale`)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from support import MODULE_COMMAND, Cli

CLI = [sys.executable, "-m", "servicefactory"]

MODULE = """
from servicefactory import Service

@Service.API.endpoint(port=0)
class Alpha(Service.base):
    def loop(self):
        self.sleep(1)
"""


sf = Cli(command=MODULE_COMMAND, timeout=30)  # the CLI as a user runs it; a hang fails the test, not the suite


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_a_refused_log_file_is_one_line_exit_10_and_leaves_no_pidfile(tmp_path: Path, sf_home: Path, kind: str):
    (tmp_path / "svc.py").write_text(MODULE)
    target = tmp_path / "service.log"
    if kind == "fifo":
        os.mkfifo(target, 0o600)  # nobody reads it: opening it for writing would wait for ever
    else:
        target.symlink_to(tmp_path / "elsewhere")
    started = sf("run", "svc:Alpha", "--daemon", "--log-file", str(target), cwd=tmp_path)
    assert started.returncode == 10, started.stdout + started.stderr
    assert started.stderr.count("\n") == 1 and started.stderr.startswith("error: refusing the log file"), \
        started.stderr
    assert "Traceback" not in started.stdout + started.stderr
    assert not (sf_home / "Alpha.pid").exists(), sorted(p.name for p in sf_home.iterdir())
    status = sf("status", cwd=tmp_path)
    assert status.returncode == 0 and "no services" in status.stdout, status.stdout + status.stderr
    if kind == "symlink":
        assert not (tmp_path / "elsewhere").exists()  # nothing was written through the link
    rerun = sf("run", "svc:Alpha", "--daemon", cwd=tmp_path)  # the name is free again at once
    try:
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    finally:
        sf("stop", "Alpha", cwd=tmp_path)
