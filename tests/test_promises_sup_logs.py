"""Log promises, tried from outside: `logs -f` loses no line across fast rotations (issue 9, item 4);
a child's output cannot write terminal escapes or forge the supervisor's own lines (issue 16, item 6).
"""
from __future__ import annotations

import re
import time

from support import PYTHON, wait_until

TOTAL = 12000

FIREHOSE = """
import os, time
from servicefactory import Service

class Hose(Service.base):
    sent = 0

    def loop(self):
        if not os.path.exists("go"):
            self.sleep(0.05)
            return
        if self.sent >= {total}:
            print("done", flush=True)
            self.sleep(3600)
            return
        for _ in range(20):  # ~2,000 lines/s
            print(f"line {{self.sent:06d}} {{'x' * 20}}")
            self.sent += 1
        self.sleep(0.01)
"""


def test_logs_follow_prints_every_line_across_many_fast_rotations(sf, spawn):
    sf.write("hose.py", FIREHOSE.format(total=TOTAL))
    sf.daemon("hose", "--log-max-bytes", str(16 * 1024))
    follower = spawn(args=[PYTHON, "-m", "servicefactory", "logs", "Hose", "-f", "-n", "0"])
    time.sleep(1.0)  # the follower is reading
    started = time.monotonic()
    (sf.cwd / "go").write_text("")
    follower.wait_for(r" done$", timeout=60)
    took = time.monotonic() - started
    rotations = len(list(sf.home.glob("Hose.log.*")))
    seen = [int(n) for n in re.findall(r"line (\d{6}) ", follower.output)]
    missing = sorted(set(range(TOTAL)) - set(seen))
    assert not missing, f"{len(missing)} of {TOTAL} lines never printed (first: {missing[:10]})"
    assert seen == list(range(TOTAL)), "lines out of order or doubled"
    assert rotations >= 1
    print(f"{TOTAL} lines in {took:.1f} s, all followed")


EVIL = r"""
from servicefactory import Service

@Service.API.endpoint(port=0)
class Echo(Service.base):
    @Service.API.handle("echo")
    def echo(self, data):
        print(data)  # as the seed's TestService does: the caller chooses what is printed
        return "ok"
"""

FORGED = "[servicefactory] Echo exited with code 0; not restarting"


def test_child_output_cannot_write_terminal_escapes_or_forge_supervisor_events(sf, spawn):
    import json

    sf.write("evil.py", EVIL)
    sf.daemon("evil")
    for data in ["\x1b]0;evil\x07title", "\x1b[2J\x1b[31mred", "x\rovertyped", FORGED, f"\n{FORGED}", "\x9b31m"]:
        assert sf("perform", "Echo", "echo", json.dumps(data)).returncode == 0
    wait_until(lambda: sf.log("Echo").count("\\x9b31m") == 1, timeout=5, message="every echo logged")
    raw = (sf.home / "Echo.log").read_bytes()
    assert not any(byte < 0x20 and byte not in (0x09, 0x0a) for byte in raw), raw
    assert "\x9b" not in raw.decode() and b"\x1b" not in raw
    assert "\\x1b]0;evil\\x07title" in raw.decode()

    # a forged event is always behind the service's name and bar; the real ones are not
    events = [line for line in raw.decode().splitlines() if re.match(r"^\S+ \[servicefactory\] ", line)]
    assert events and all("Echo ready" in line for line in events), events
    assert sum(1 for line in raw.decode().splitlines() if line.endswith(f"Echo | {FORGED}")) == 2

    for shown in (sf("logs", "Echo", "-n", "50").stdout, sf("logs", "-n", "50").stdout):
        assert "\x1b" not in shown and "\x07" not in shown and "\r" not in shown and "\x9b" not in shown
        assert not [line for line in shown.splitlines() if FORGED in line and f"Echo | {FORGED}" not in line]

    # the foreground printer: the same marking on the terminal
    fg = spawn(args=[PYTHON, "-m", "servicefactory", "run", "evil.py:Echo", "--name", "Echo2", "--port", "0"])
    fg.wait_for(r"Echo2 ready")
    assert sf("perform", "Echo2", "echo", json.dumps("\x1b]0;evil\x07" + FORGED.replace("Echo", "Echo2"))).returncode == 0
    line = fg.wait_for(r"not restarting")
    assert "\x1b" not in fg.output and "\x07" not in fg.output
    assert re.search(r"Echo2\s+\| \\x1b\]0;evil\\x07\[servicefactory\]", line), line
    assert re.search(r"Echo2\s+\[servicefactory\] Echo2 ready", fg.output), fg.output


def test_follow_goes_on_in_the_file_the_history_came_from_though_it_was_rotated_twice_since(tmp_path):
    import os

    from servicefactory.supervise import logfiles

    path = tmp_path / "Svc.log"
    path.write_text("".join(f"line {n}\n" for n in range(1, 6)))
    history, offset, inode = logfiles.tail_and_position(path, 2)
    assert history == ["line 4", "line 5"]
    with open(path, "a") as handle:
        handle.write("line 6\n")  # written after the history was read, before the follower starts
    os.replace(path, tmp_path / "Svc.log.1")
    path.write_text("line 7\nline 8\n")
    os.replace(tmp_path / "Svc.log.1", tmp_path / "Svc.log.2")
    os.replace(path, tmp_path / "Svc.log.1")
    path.write_text("line 9\n")

    seen = []
    for line in logfiles.follow(path, offset=offset, inode=inode, poll=0.01):
        seen.append(line)
        if len(seen) == 4:
            break
    assert seen == ["line 6", "line 7", "line 8", "line 9"]
