"""The dashboard with `run --instances 2`, in a real headless Chromium: a row per instance
(Test/1, Test/2) with its own pid, and the buttons and the log act on that instance only."""
from __future__ import annotations

from support import Cli
from test_dashboard import browser, cell, dashboard  # noqa: F401 (fixtures: Chromium, or a skip with its reason)
from test_top_instances import TEST


def click(browser, name: str, action: str) -> None:
    browser.js(f"document.querySelector('tr[data-name=\"{name}\"] button[data-action={action}]').click()")
    browser.wait("document.getElementById('confirm').open")
    assert browser.js("document.getElementById('confirm-text').textContent") == f"{action.title()} {name}?"
    browser.js("document.getElementById('confirm-ok').click()")


def test_each_instance_has_its_row_and_restart_stop_and_log_act_on_that_instance_only(sf: Cli, dashboard, browser):
    sf.write("instanced.py", TEST)
    sf.daemon("instanced:Test", "--instances", "2")
    before = {row["name"]: row["pid"] for row in sf.status()}
    assert set(before) == {"Test/1", "Test/2"}, before
    browser.go(dashboard())
    browser.wait("document.body.dataset.loaded === 'true'")
    browser.wait("document.querySelectorAll('#services tbody tr').length === 2")
    for name in ("Test/1", "Test/2"):
        assert cell(browser, name, "pid") == str(before[name])
        assert browser.js(f"document.querySelector('tr[data-name=\"{name}\"] .state').textContent") == "running"

    browser.js("document.querySelector('tr[data-name=\"Test/2\"] td.name button').click()")
    browser.wait("document.getElementById('log').textContent.includes('Test/2 | Test/2 : tick')")
    assert "Test/1 :" not in browser.js("document.getElementById('log').textContent")
    browser.wait("document.getElementById('health').textContent.includes('iterations')")

    click(browser, "Test/2", "restart")
    browser.wait("/^Test\\/2 running \\(pid \\d+/.test(document.getElementById('message').textContent)", timeout=60)
    after = {row["name"]: row["pid"] for row in sf.status()}
    assert after["Test/2"] != before["Test/2"] and after["Test/1"] == before["Test/1"], (before, after)
    browser.wait(f"(document.querySelector('tr[data-name=\"Test/2\"] td.pid') || {{}}).textContent === '{after['Test/2']}'")
    assert cell(browser, "Test/1", "pid") == str(before["Test/1"])

    click(browser, "Test/1", "stop")
    browser.wait("document.getElementById('message').textContent === 'Test/1 stopped'", timeout=30)
    browser.wait("document.querySelector('tr[data-name=\"Test/1\"] .state').textContent === 'stopped'")
    assert sf.row("Test/1")["state"] == "stopped"
    assert sf.row("Test/2")["state"] == "running" and sf.row("Test/2")["pid"] == after["Test/2"]
    assert browser.js("document.querySelector('tr[data-name=\"Test/2\"] .state').textContent") == "running"
