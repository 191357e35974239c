"""Log promises, tried from outside: `logs -f` loses no line across fast rotations (issue 9, item 4);
a child's output cannot write terminal escapes or forge the supervisor's own lines (issue 16, item 6).
"""
from __future__ import annotations

import re
import time

from conftest import PYTHON, wait_until
from test_supervisor import SF, sf  # noqa: F401  (sf is a fixture)

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
