"""`servicefactory top` with `run --instances 2`: a row per instance (Test/1, Test/2), each with
its own pid and address, and the keys act on the selected instance only."""
from __future__ import annotations

import re

from support import Cli, wait_until
from test_top import row, terminal, pytestmark  # noqa: F401 (the tmux fixture, or a skip with its reason)

TEST = '''
from servicefactory import Service


@Service.API.endpoint(port=0)
class Test(Service.base):
    def loop(self):
        self.log("tick")
        self.sleep(0.3)

    @Service.API.handle("echo")
    def echo(self, data):
        return data
'''


def pids(sf: Cli) -> dict[str, int]:
    return {row["name"]: row["pid"] for row in sf.status() if row.get("pid")}


def test_each_instance_has_its_row_and_restart_stop_and_log_act_on_the_selected_one_only(sf: Cli, terminal):
    sf.write("instanced.py", TEST)
    sf.daemon("instanced:Test", "--instances", "2")
    before = pids(sf)
    assert set(before) == {"Test/1", "Test/2"}, before
    term = terminal()
    screen = term.wait_for(r"^Test/2\s+running")
    for name in ("Test/1", "Test/2"):
        cells = row(screen, name)
        status = sf.row(name)
        assert cells[1] == "running" and cells[2] == str(status["pid"]) and cells[-1] == status["url"], screen
    assert row(screen, "Test/1")[-1] != row(screen, "Test/2")[-1], screen  # one address each

    term.keys("j", "r")  # Test/2 is the second row
    term.wait_for(r"^restart Test/2\? y/N")
    term.keys("y")
    screen = term.wait_for(r"Test/2 running \(pid \d+", timeout=30)
    after = pids(sf)
    assert after["Test/2"] != before["Test/2"] and after["Test/1"] == before["Test/1"], (before, after)
    term.wait_for(rf"^Test/2\s+running\s+{after['Test/2']}\s.*\s1\s+\S+\s+http", timeout=10)  # one restart counted
    assert row(term.screen(), "Test/1")[2] == str(before["Test/1"])

    term.keys("l")
    screen = term.wait_for(r"^log of Test/2 ")
    screen = term.wait_for(r"Test/2 \| Test/2 : tick$")
    assert "Test/1 :" not in screen, screen  # the selected instance's log, not the service's
    term.keys("Escape")
    term.wait_for(r"^NAME\s+STATE")

    term.keys("k", "s")
    term.wait_for(r"^stop Test/1\? y/N")
    term.keys("y")
    term.wait_for(r"^Test/1\s+stopped\s+-", timeout=20)
    term.wait_for(r"quit   Test/1 stopped$", timeout=20)
    wait_until(lambda: sf.row("Test/1")["state"] == "stopped", timeout=10, message="Test/1 stopped")
    assert sf.row("Test/2")["state"] == "running" and pids(sf)["Test/2"] == after["Test/2"]
    assert re.search(rf"^Test/2\s+running\s+{after['Test/2']}\s", term.screen(), re.M)
