"""The servicefactory services the figures measure, and how to start and call them."""
from __future__ import annotations

import contextlib
import os
import textwrap
from pathlib import Path
from typing import Callable, Iterator

from bench.harness import PYTHON, wait_until
from bench.processes import Spawned, environment

CALL_TIMEOUT = 10.0
TICK_PERIOD = 0.05

# Echo answers `echo` and counts the ticks of a loop paced with self.sleep(TICK_PERIOD);
# Sleeper's loop blocks in time.sleep(30), the worst case for a stop.
SERVICES_MODULE = textwrap.dedent(f'''
    import time

    from servicefactory import Service


    @Service.API.endpoint(port=0)
    class Echo(Service.base):
        def __init__(self):
            super().__init__()
            self.tick_count = 0
            self.last_tick = None
            self.max_gap = 0.0

        def loop(self):
            self.sleep({TICK_PERIOD})
            now = time.monotonic()
            if self.last_tick is not None:
                self.max_gap = max(self.max_gap, now - self.last_tick)
            self.last_tick = now
            self.tick_count += 1

        @Service.API.handle("echo")
        def handle_echo(self, data):
            return data

        @Service.API.handle("ticks")
        def handle_ticks(self, data):
            """Ticks so far, when the last one was, the longest gap between two since the last call."""
            answer = {{"count": self.tick_count, "last_tick": self.last_tick, "max_gap": self.max_gap}}
            self.max_gap = 0.0
            return answer


    @Service.API.endpoint(port=0)
    class Sleeper(Service.base):
        def loop(self):
            time.sleep(30)


    if __name__ == "__main__":
        Echo().run()
''')

MODULE_NAME = "sfbench_services"


def write_services_module(workdir: Path) -> Path:
    path = workdir / f"{MODULE_NAME}.py"
    path.write_text(SERVICES_MODULE)
    return path


def fleet_module(count: int) -> str:
    """A module defining `count` idle service classes, Fleet00..., each with its own free port."""
    classes = "".join(f"\n\n@Service.API.endpoint(port=0)\nclass Fleet{i:02d}(Service.base):\n    pass\n"
                      for i in range(count))
    return "from servicefactory import Service\n" + classes


@contextlib.contextmanager
def home_in_this_process(home: Path) -> Iterator[None]:
    """Point this process's servicefactory client at `home` (as a user's shell would), then restore."""
    previous = os.environ.get("SERVICEFACTORY_HOME")
    os.environ["SERVICEFACTORY_HOME"] = str(home)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("SERVICEFACTORY_HOME", None)
        else:
            os.environ["SERVICEFACTORY_HOME"] = previous


def answers(name: str) -> bool:
    """Whether service `name` answers `health` now."""
    from servicefactory.http import client
    return bool(client.perform(name, "health", timeout=2.0))


@contextlib.contextmanager
def echo_service(workdir: Path) -> Iterator[Spawned]:
    """`python sfbench_services.py` (runs Echo) in its own process; yields once its API answers.

    The caller's process talks to it through `SERVICEFACTORY_HOME=workdir/home`.
    """
    home = workdir / "home"
    script = write_services_module(workdir)
    with home_in_this_process(home), \
            Spawned([PYTHON, str(script)], workdir / "echo.log", env=environment(home)) as service:
        def ready() -> bool:
            service.check_alive("servicefactory Echo service")
            return answers("Echo")
        wait_until(ready, 15.0, "servicefactory Echo answering")
        yield service


def echo_client_of(port: int) -> Callable:
    """perform() against any keep-alive HTTP echo on `port` (the floor): the client's own cost, apart."""
    def make() -> tuple[Callable[[int], None], Callable[[], None]]:
        from servicefactory.http import client

        def call(i: int) -> None:
            if client.perform("Floor", "echo", i, timeout=CALL_TIMEOUT, fallback=("127.0.0.1", port)) != i:
                raise ValueError("wrong answer")

        return call, client.close_connections
    return make


def echo_client() -> Callable:
    """A factory of clients calling Echo the way users do: servicefactory.http.client.perform."""
    def make() -> tuple[Callable[[int], None], Callable[[], None]]:
        from servicefactory.http import client

        def call(i: int) -> None:
            if client.perform("Echo", "echo", i, timeout=CALL_TIMEOUT) != i:
                raise ValueError("wrong answer")

        return call, client.close_connections
    return make
