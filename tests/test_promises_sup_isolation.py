"""A module planted in the working directory never runs (issue 16, item 2).

`servicefactory run` typed in a shared directory starts the supervisor, its services and, later,
`restart` isolated from that directory: a planted `selectors.py` (imported by the supervisor and by
every service) never runs, while the service's own module in that directory still loads.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support import wait_until

CLI = str(Path(sys.executable).parent / "servicefactory")  # as typed: not `python -m`, which adds the cwd itself

PLANTED = """
import os
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "PLANTED-RAN"), "a") as mark:
    mark.write(f"{os.getpid()}\\n")
print("PLANTED MARKER", flush=True)
"""

SERVICE = """
import selectors  # the real one, please
from servicefactory import Service

@Service.API.endpoint(port=0)
class Local(Service.base):
    @Service.API.handle("where")
    def where(self, data):
        return [selectors.__file__, __file__]
"""


def _cli(cwd: Path, home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["SERVICEFACTORY_HOME"] = str(home)
    return subprocess.run([CLI, *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=60)


def test_a_selectors_module_planted_in_the_working_directory_never_runs(tmp_path, sf_home):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "selectors.py").write_text(PLANTED)
    (shared / "localsvc.py").write_text(SERVICE)
    try:
        started = _cli(shared, sf_home, "run", "localsvc", "--daemon")
        assert started.returncode == 0, started.stdout + started.stderr
        answer = _cli(shared, sf_home, "perform", "Local", "where")
        assert answer.returncode == 0, answer.stderr
        real, own = __import__("json").loads(answer.stdout)
        assert Path(real).parent != shared and Path(own).parent == shared, (real, own)

        again = _cli(shared, sf_home, "restart", "Local")
        assert again.returncode == 0, again.stdout + again.stderr
        stopped = _cli(shared, sf_home, "stop", "Local")
        assert stopped.returncode == 0, stopped.stderr
        # `restart` once the supervisor is gone runs `servicefactory run` again, in that directory
        revived = _cli(shared, sf_home, "restart", "Local")
        assert revived.returncode == 0, revived.stdout + revived.stderr
        assert _cli(shared, sf_home, "perform", "Local", "where").returncode == 0
    finally:
        _cli(shared, sf_home, "stop", "--all")
    assert not (shared / "PLANTED-RAN").exists(), (shared / "PLANTED-RAN").read_text()
    everything = "".join(path.read_text(errors="replace") for path in sf_home.glob("*.log"))
    assert "PLANTED MARKER" not in everything


def test_a_foreground_run_in_a_planted_directory_never_runs_the_planted_module(tmp_path, sf_home):
    import signal

    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "selectors.py").write_text(PLANTED)
    (shared / "localsvc.py").write_text(SERVICE)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["SERVICEFACTORY_HOME"] = str(sf_home)
    proc = subprocess.Popen([CLI, "run", "localsvc"], cwd=shared, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: _cli(shared, sf_home, "perform", "Local", "where").returncode == 0, timeout=20,
                   message="the foreground service answers")
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, output
    assert "PLANTED MARKER" not in output
    assert not (shared / "PLANTED-RAN").exists()
