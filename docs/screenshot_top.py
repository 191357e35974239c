"""Make docs/top.png: `servicefactory top` over a few live services, as a terminal shows it.

It runs top in a real tmux pane (120x16), reads the pane with its colours (`capture-pane -e`),
has rich write that as an SVG (`Console.export_svg`) and headless Chromium photograph the SVG.
Run from the repository: `.venv/bin/python docs/screenshot_top.py` (needs tmux and chromium).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SERVICES = '''
from servicefactory import Service


@Service.API.endpoint(port=0)
class Api(Service.base):
    def loop(self):
        self.sleep(0.5)

    @Service.API.handle("echo")
    def echo(self, data):
        return data

    @Service.API.handle("fail")
    def fail(self, data):
        raise ValueError("on purpose")


@Service.API.endpoint(port=0)
class Worker(Service.base):
    def loop(self):
        self.sleep(0.5)


@Service.API.endpoint(port=0)
class Batch(Service.base):
    def loop(self):
        self.sleep(0.5)


if __name__ == "__main__":
    Batch().run()  # standalone: killed with -9 below, nobody restarts it, top shows it stale
'''


def main() -> None:
    """Start the services, call them, photograph top, stop everything."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None or shutil.which("tmux") is None:
        sys.exit("needs tmux and chromium")
    work = Path(tempfile.mkdtemp(prefix="sf-screenshot-"))
    home = work / "home"
    os.environ["SERVICEFACTORY_HOME"] = str(home)
    (work / "services.py").write_text(SERVICES)
    sf = [sys.executable, "-m", "servicefactory"]
    socket = str(work / "tmux.sock")
    stop = threading.Event()
    try:
        subprocess.run([*sf, "run", "services:Api", "--daemon"], cwd=work, check=True)
        subprocess.run([*sf, "run", "services:Worker", "--instances", "2", "--daemon"], cwd=work, check=True)
        batch = subprocess.Popen([sys.executable, "services.py"], cwd=work, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        while b"Batch" not in subprocess.run([*sf, "status"], cwd=work, capture_output=True).stdout:
            time.sleep(0.2)
        time.sleep(1)
        batch.kill()
        batch.wait()
        threading.Thread(target=traffic, args=(stop,), daemon=True).start()
        command = f"env SERVICEFACTORY_HOME={home} TERM=xterm-256color {' '.join(sf)} top; sleep 60"
        subprocess.run(["tmux", "-f", "/dev/null", "-S", socket, "new-session", "-d", "-s", "top",
                        "-x", "120", "-y", "11", command], check=True)
        time.sleep(8)  # a few readings: CPU and the rates need two
        subprocess.run(["tmux", "-S", socket, "send-keys", "-t", "top", "j"], check=True)
        time.sleep(1.5)
        screen = subprocess.run(["tmux", "-S", socket, "capture-pane", "-e", "-N", "-p", "-t", "top"],
                                capture_output=True, text=True, check=True).stdout
        photograph(screen, work, chromium, HERE / "top.png")
    finally:
        stop.set()
        subprocess.run(["tmux", "-S", socket, "kill-server"], capture_output=True)
        subprocess.run([*sf, "stop", "--all"], cwd=work, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def traffic(stop: threading.Event) -> None:
    """Calls to Api: 20 a second, one in ten failing."""
    from servicefactory.errors import ActionFailed
    from servicefactory.http import client

    while not stop.is_set():
        for _ in range(9):
            client.perform("Api", "echo", 1)
        try:
            client.perform("Api", "fail")
        except ActionFailed:
            pass
        stop.wait(0.5)


def photograph(screen: str, work: Path, chromium: str, out: Path) -> None:
    """`screen` (text with ANSI colours) as a PNG of a terminal window."""
    from rich.console import Console
    from rich.text import Text

    console = Console(record=True, width=120, file=open(os.devnull, "w"), force_terminal=True,
                      color_system="truecolor")
    for line in screen.rstrip("\n").split("\n"):
        console.print(Text.from_ansi(line), no_wrap=True, crop=True)
    svg = console.export_svg(title="servicefactory top")
    width, height = (float(number) for number in re.search(r'viewBox="0 0 ([\d.]+) ([\d.]+)"', svg).groups())
    (work / "top.svg").write_text(svg)
    (work / "top.html").write_text('<html><body style="margin:0;background:#fff">'
                                   f'<img src="top.svg" width="{width:.0f}" height="{height:.0f}"></body></html>')
    subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={work / 'profile'}", f"--window-size={width:.0f},{height:.0f}",
                    f"--screenshot={out}", (work / "top.html").as_uri()],
                   check=True, capture_output=True, timeout=60)


if __name__ == "__main__":
    main()
