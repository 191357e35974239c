"""The web dashboard (`servicefactory dashboard`), loaded in a real headless Chromium driven over
the DevTools protocol (on a pipe: `--remote-debugging-pipe`, so no WebSocket client and no
selenium is needed), and its API refused the ways a hostile page or peer would try.
Every wait has a deadline."""
from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from support import ALPHA_AND_BETA, Cli, exchange, wait_until

SERVICES = ALPHA_AND_BETA  # Alpha and Beta, from support.py (test_top and test_dashboard both run them)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Browser:
    """Headless Chromium, one page, driven over the DevTools protocol on fds 3 and 4."""

    def __init__(self, profile: Path) -> None:
        to_chrome_read, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_write = os.pipe()
        # above 10, so that `3<&R 4>&W` cannot overwrite one with the other (bash: dash takes one-digit fds only)
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_chrome_read, from_chrome_write)]
        for fd in (to_chrome_read, from_chrome_write):
            os.close(fd)
        flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                 "--disable-extensions", "--disable-background-networking", "--window-size=1400,800",
                 f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
        command = f"exec {CHROMIUM} {' '.join(flags)} 3<&{high[0]} 4>&{high[1]} {high[0]}<&- {high[1]}>&-"
        self.process = subprocess.Popen(["bash", "-c", command], pass_fds=high, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        for fd in high:
            os.close(fd)
        self._next = 0
        self._answers: dict[int, dict] = {}
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Page.enable", session=True)

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                data = os.read(self._from_chrome, 65536)
            except OSError:
                data = b""
            if not data:
                with self._changed:
                    self._answers[-1] = {"error": {"message": "the browser closed its pipe"}}
                    self._changed.notify_all()
                return
            buffer += data
            *messages, buffer = buffer.split(b"\0")
            with self._changed:
                for message in messages:
                    decoded = json.loads(message)
                    if "id" in decoded:
                        self._answers[decoded["id"]] = decoded
                self._changed.notify_all()

    def send(self, method: str, params: dict | None = None, *, session: bool = False, timeout: float = 30.0) -> dict:
        """Send one command and return its result; fail on an error or after `timeout`."""
        self._next += 1
        ident = self._next
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._changed:
            while ident not in self._answers and -1 not in self._answers:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"the browser did not answer {method} within {timeout} s"
                self._changed.wait(remaining)
            answer = self._answers.pop(ident, None) or self._answers[-1]
        assert "error" not in answer, f"{method}: {answer['error']}"
        return answer["result"]

    def go(self, url: str) -> None:
        """Load `url` in the page."""
        self.send("Page.navigate", {"url": url}, session=True)

    def js(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, session=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 20.0, message: str = "") -> Any:
        """Poll a JavaScript expression until it is truthy (throwing counts as not yet: the page may
        still be loading, with no body); fail after `timeout`."""
        guarded = f"(() => {{ try {{ return ({expression}); }} catch (error) {{ return false; }} }})()"
        return wait_until(lambda: self.js(guarded), timeout=timeout, interval=0.1,
                          message=message or expression)

    def screenshot(self, path: Path) -> None:
        """Save the page as a PNG."""
        data = self.send("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        """End the browser (its whole process group), within a deadline."""
        try:
            os.killpg(self.process.pid, 9)
        except ProcessLookupError:
            pass
        self.process.wait(10)
        os.close(self._to_chrome)


def start_dashboard(sf: Cli, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`servicefactory dashboard ARGS` in the background, and the address it printed."""
    process = sf.popen("dashboard", *args, env=env)
    lines: list[str] = []

    def first_line() -> str | None:
        line = process.stdout.readline()
        lines.append(line)
        return line

    reader = threading.Thread(target=first_line, daemon=True)
    reader.start()
    reader.join(30)
    assert lines and lines[0].startswith("dashboard at "), f"no address printed: {lines!r}"
    return process, lines[0].split()[-1] if "(log in" not in lines[0] else lines[0].split()[2]


@pytest.fixture
def dashboard(sf: Cli):
    """Factory: dashboard(args...) -> the printed address; every dashboard is stopped at teardown."""
    started: list[subprocess.Popen] = []

    def start(*args: str, env: dict | None = None) -> str:
        process, address = start_dashboard(sf, *args, env=env)
        started.append(process)
        return address

    yield start
    for process in started:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        for stream in (process.stdout, process.stderr):
            stream.close()


@pytest.fixture
def browser(tmp_path: Path):
    """A headless Chromium for this test, closed at teardown."""
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (.ci/run installs it)")
    opened = Browser(tmp_path / "chromium-profile")
    yield opened
    opened.close()


def cell(browser: Browser, name: str, column: str) -> Any:
    return browser.js(f"(document.querySelector('tr[data-name=\"{name}\"] td.{column}') || {{}}).textContent")


def test_the_page_shows_every_service_and_restart_asks_then_gives_a_new_pid(sf: Cli, dashboard, browser, tmp_path):
    sf.write("services.py", SERVICES)
    sf.daemon("services.py")
    rows = {row["name"]: row for row in sf.status()}
    address = dashboard()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/#token=[A-Za-z0-9_-]{43}", address), address
    browser.go(address)
    browser.wait("document.body.dataset.loaded === 'true'")
    for name in ("Alpha", "Beta"):
        assert cell(browser, name, "pid") == str(rows[name]["pid"])
    assert browser.js("document.querySelector('tr[data-name=\"Alpha\"] .state').textContent") == "running"
    assert "token" not in browser.js("location.href")  # taken out of the address bar and the history

    # restart asks first; Cancel changes nothing
    browser.js("document.querySelector('tr[data-name=\"Alpha\"] button[data-action=restart]').click()")
    browser.wait("document.getElementById('confirm').open")
    assert browser.js("document.getElementById('confirm-text').textContent") == "Restart Alpha?"
    browser.js("document.getElementById('confirm-cancel').click()")
    browser.wait("document.getElementById('message').textContent === 'restart Alpha: cancelled'")
    assert sf.row("Alpha")["pid"] == rows["Alpha"]["pid"]

    browser.js("document.querySelector('tr[data-name=\"Alpha\"] button[data-action=restart]').click()")
    browser.wait("document.getElementById('confirm').open")
    browser.js("document.getElementById('confirm-ok').click()")
    browser.wait("/^Alpha running \\(pid \\d+/.test(document.getElementById('message').textContent)", timeout=60)
    after = sf.row("Alpha")
    assert after["pid"] != rows["Alpha"]["pid"] and after["state"] == "running"
    browser.wait(f"(document.querySelector('tr[data-name=\"Alpha\"] td.pid') || {{}}).textContent === '{after['pid']}'")
    assert cell(browser, "Beta", "pid") == str(rows["Beta"]["pid"])  # the other one untouched
    browser.screenshot(tmp_path / "dashboard.png")


def test_stop_from_the_page_stops_the_service_and_its_log_and_health_are_shown(sf: Cli, dashboard, browser):
    sf.write("services.py", SERVICES)
    sf.daemon("services.py")
    browser.go(dashboard())
    browser.wait("document.body.dataset.loaded === 'true'")
    browser.js("document.querySelector('tr[data-name=\"Alpha\"] td.name button').click()")
    browser.wait("document.getElementById('log').textContent.includes('Alpha | Alpha : alpha tick')")
    browser.wait("document.getElementById('health').textContent.includes('iterations')")
    browser.js("document.querySelector('tr[data-name=\"Beta\"] button[data-action=stop]').click()")
    browser.wait("document.getElementById('confirm').open")
    assert browser.js("document.getElementById('confirm-text').textContent") == "Stop Beta?"
    browser.js("document.getElementById('confirm-ok').click()")
    browser.wait("document.getElementById('message').textContent === 'Beta stopped'", timeout=30)
    browser.wait("document.querySelector('tr[data-name=\"Beta\"] .state').textContent === 'stopped'")
    assert sf.row("Beta")["state"] == "stopped" and sf.row("Alpha")["state"] == "running"


def test_calls_per_second_and_the_latency_sparkline_follow_the_traffic(sf: Cli, dashboard, browser):
    from test_top import calling

    sf.write("services.py", SERVICES)
    sf.daemon("services.py")
    browser.go(dashboard())
    browser.wait("document.body.dataset.loaded === 'true'")
    stop = threading.Event()
    thread = calling("Alpha", stop)
    try:
        browser.wait("parseFloat(document.querySelector('tr[data-name=\"Alpha\"] td.calls').textContent) >= 3")
        # a line once two intervals with calls were measured; Beta, never called, has none
        browser.wait("document.querySelector('tr[data-name=\"Alpha\"] svg.spark polyline') !== null")
        assert browser.js("document.querySelector('tr[data-name=\"Beta\"] td.calls').textContent") == "0.0"
        assert browser.js("document.querySelector('tr[data-name=\"Beta\"] svg.spark polyline')") is None
    finally:
        stop.set()
        thread.join(10)


# -- the rules: what a page of another site, a wrong token or a remote peer cannot do -----------------

def _port_and_token(address: str) -> tuple[int, str]:
    match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/#token=(\S+)", address)
    assert match, address
    return int(match[1]), match[2]


def _request(port: int, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> tuple:
    head = {"Host": f"127.0.0.1:{port}", "Content-Length": str(len(body)), "Connection": "close", **(headers or {})}
    raw = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n"
    return exchange(port, raw.encode() + body)


def test_the_api_needs_the_token_and_refuses_cross_site_requests_while_the_page_refuses_framing(sf: Cli, dashboard):
    sf.write("services.py", SERVICES)
    sf.daemon("services.py")
    port, token = _port_and_token(dashboard())
    bearer = {"Authorization": f"Bearer {token}"}
    status, headers, body = _request(port, "GET", "/")
    assert status == 200 and b"<table id=\"services\">" in body
    assert "frame-ancestors 'none'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"
    assert _request(port, "GET", "/api/status")[0] == 401
    assert _request(port, "GET", "/api/status", {"Authorization": "Bearer " + "x" * 43})[0] == 401
    status, _, body = _request(port, "GET", "/api/status", bearer)
    assert status == 200 and {row["name"] for row in json.loads(body)["services"]} == {"Alpha", "Beta"}
    stop = json.dumps({"name": "Beta"}).encode()
    # what a page of another site can send: a form type (415), or JSON with its Origin (403)
    assert _request(port, "POST", "/api/stop", {**bearer, "Content-Type": "text/plain"}, stop)[0] == 415
    assert _request(port, "POST", "/api/stop", {**bearer, "Content-Type": "application/json",
                                                "Origin": "http://evil.example"}, stop)[0] == 403
    assert _request(port, "POST", "/api/stop", {**bearer, "Content-Type": "application/json",
                                                "Sec-Fetch-Site": "cross-site"}, stop)[0] == 403
    assert _request(port, "POST", "/api/stop", {"Content-Type": "application/json"}, stop)[0] == 401
    assert _request(port, "GET", "/api/stop", bearer)[0] == 405
    # DNS rebinding: a name of the attacker's pointed at 127.0.0.1
    assert _request(port, "GET", "/", {"Host": f"evil.example:{port}"})[0] == 403
    assert _request(port, "GET", "/api/status", {**bearer, "Host": f"evil.example:{port}"})[0] == 403
    assert _request(port, "GET", "/api/log?name=../../etc/passwd", bearer)[0] == 400
    assert sf.row("Beta")["state"] == "running"  # none of it stopped anything
    status, _, body = _request(port, "POST", "/api/stop", {**bearer, "Content-Type": "application/json"}, stop)
    assert status == 200 and json.loads(body) == {"ok": True, "message": "Beta stopped"}
    assert sf.row("Beta")["state"] == "stopped"


def test_serving_off_loopback_without_a_token_is_refused_in_one_line(sf: Cli):
    result = sf("dashboard", "--host", "0.0.0.0")
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: serving the dashboard on 0.0.0.0 needs a token: set SERVICEFACTORY_TOKEN "
                                     "(`servicefactory token` makes one), or bind to 127.0.0.1"), result.stderr


def test_with_a_configured_token_the_address_carries_no_token_and_that_token_opens_the_api(sf: Cli, dashboard):
    token = sf("token").stdout.strip()
    process, address = start_dashboard(sf, env={"SERVICEFACTORY_TOKEN": token})
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", address), address
        port = int(address.rsplit(":", 1)[1].strip("/"))
        assert _request(port, "GET", "/api/status", {"Authorization": f"Bearer {token}"})[0] == 200
        assert _request(port, "GET", "/api/status")[0] == 401
    finally:
        process.terminate()
        assert process.wait(10) == 0  # SIGTERM stops it cleanly
        process.stdout.close()
        process.stderr.close()


def test_a_supervisor_serves_the_dashboard_and_servicefactory_dashboard_prints_its_address(sf: Cli):
    import socket

    sf.write("services.py", SERVICES)
    sf.daemon("services.py", "--dashboard-port", "0")
    printed = sf("dashboard")  # finds the supervisor's, prints it and returns: it serves nothing itself
    assert printed.returncode == 0, printed.stderr
    port, token = _port_and_token(printed.stdout.strip().split()[-1])
    bearer = {"Authorization": f"Bearer {token}"}
    status, _, body = _request(port, "GET", "/api/status", bearer)
    assert status == 200 and {row["name"] for row in json.loads(body)["services"]} == {"Alpha", "Beta"}
    assert _request(port, "GET", "/api/status")[0] == 401
    before = sf.row("Beta")["pid"]
    answer = _request(port, "POST", "/api/restart", {**bearer, "Content-Type": "application/json"},
                      json.dumps({"name": "Beta"}).encode())
    assert answer[0] == 200 and json.loads(answer[2])["ok"], answer
    assert sf.row("Beta")["state"] == "running" and sf.row("Beta")["pid"] != before
    assert sf("stop", "--all").returncode == 0
    # the dashboard ends with its supervisor

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return False
        except OSError:
            return True
    wait_until(refused, timeout=10, message="the dashboard's port to close")


def test_run_with_a_dashboard_off_loopback_and_no_token_is_refused_before_anything_starts(sf: Cli):
    sf.write("services.py", SERVICES)
    result = sf("run", "services.py", "--daemon", "--dashboard-port", "0", "--dashboard-host", "0.0.0.0")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: serving the dashboard on 0.0.0.0 needs a token"), result.stderr
    assert sf.status() == []
