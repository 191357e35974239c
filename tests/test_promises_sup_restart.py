"""Restart promises (issue 17, item 2): `--backoff-max` caps the doubling restart delay, and a
`failed` service is tried again after `--retry-failed-after` (0 keeps it failed); `status` shows
when the next try is due. The service fails until a file (its "database") appears.
"""
from __future__ import annotations

import re
import time

from support import wait_until

NEEDS_DB = """
import os
from servicefactory import Service

{policy}
class Needy(Service.base):
    def loop(self):
        if not os.path.exists("db-up"):
            raise SystemExit(1)  # its database is unreachable: it gives up at once
        self.sleep(1)
"""


def _delays(log: str) -> list[float]:
    return [float(value) for value in re.findall(r"restarting in ([\d.]+) s", log)]


def test_backoff_max_caps_the_doubling_delay(sf):
    sf.write("needy.py", NEEDS_DB.format(policy=""))
    sf.daemon("needy", "--backoff", "0.1", "--backoff-max", "0.3", "--max-failures", "8",
              "--retry-failed-after", "0")
    wait_until(lambda: len(_delays(sf.log("Needy"))) >= 5, timeout=20, message="five restarts")
    delays = _delays(sf.log("Needy"))
    assert delays[:5] == [0.1, 0.2, 0.3, 0.3, 0.3], delays
    (sf.cwd / "db-up").write_text("")
    wait_until(lambda: (sf.row("Needy") or {}).get("state") == "running", timeout=10, message="running again")


def test_the_class_policy_caps_the_delay_and_the_command_line_wins(sf):
    sf.write("needy.py", NEEDS_DB.format(policy="@Service.policy(backoff_max=0.2)"))
    sf.daemon("needy", "--backoff", "0.1", "--max-failures", "5", "--retry-failed-after", "0")
    wait_until(lambda: len(_delays(sf.log("Needy"))) >= 4, timeout=20, message="four restarts")
    assert _delays(sf.log("Needy"))[:4] == [0.1, 0.2, 0.2, 0.2]


def test_a_failed_service_is_tried_again_after_the_cooldown_and_status_says_when(sf):
    sf.write("needy.py", NEEDS_DB.format(policy=""))
    sf.daemon("needy", "--backoff", "0.1", "--max-failures", "2", "--retry-failed-after", "6")
    # judge the very answer that said `failed`: on a loaded machine a second `status` may come after
    # the cooldown, when the service is already being tried again
    seen: list[tuple[float, dict, float]] = []

    def failed() -> bool:
        asked = time.time()
        row = sf.row("Needy") or {}
        seen.append((asked, row, time.time()))
        return row.get("state") == "failed"
    wait_until(failed, timeout=10, message="failed")
    asked, row, answered = seen[-1]
    # it failed while that status call ran at the latest, so the next try is 6 s after that moment
    assert row["next_try"] is not None and asked < row["next_try"] <= answered + 6.5, row
    table = sf("status")
    assert table.returncode == 3
    assert re.search(r"Needy\s+failed \(next try in [0-6]s\)", table.stdout), table.stdout

    (sf.cwd / "db-up").write_text("")  # the outage ends
    wait_until(lambda: (sf.row("Needy") or {}).get("state") == "running", timeout=15,
               message="tried again and running")
    assert "trying again after 6 s" in sf.log("Needy")
    assert sf.row("Needy")["next_try"] is None
    assert sf("status", "Needy").returncode == 0


def test_retry_failed_after_0_leaves_a_failed_service_down(sf):
    sf.write("needy.py", NEEDS_DB.format(policy=""))
    sf.daemon("needy", "--backoff", "0.1", "--max-failures", "2", "--retry-failed-after", "0")
    wait_until(lambda: (sf.row("Needy") or {}).get("state") == "failed", timeout=10, message="failed")
    assert sf.row("Needy")["next_try"] is None
    (sf.cwd / "db-up").write_text("")
    time.sleep(2.0)
    assert sf.row("Needy")["state"] == "failed"
    assert "leaving it down" in sf.log("Needy")


def test_non_finite_or_absurd_durations_are_usage_errors(sf):
    import pytest

    from servicefactory import Service

    sf.write("needy.py", NEEDS_DB.format(policy=""))
    for option, value in [("--backoff", "nan"), ("--backoff-max", "inf"), ("--retry-failed-after", "1e99"),
                          ("--stop-timeout", "nan"), ("--ready-timeout", "inf"), ("--retry-failed-after", "-1")]:
        result = sf("run", "needy", option, value, "--daemon")
        assert result.returncode == 2, (option, value, result.stdout, result.stderr)
        assert option in result.stderr and "Traceback" not in result.stderr
    for bad in (float("nan"), float("inf"), 0, -1):
        with pytest.raises(ValueError):
            Service.policy(backoff_max=bad)
        with pytest.raises(ValueError):
            Service.policy(stop_timeout=bad)

