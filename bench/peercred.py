"""Measure the peer-uid check: one lookup by netlink vs /proc/net/tcp, and its cost in perform throughput.

Run it inside a network namespace of its own to control how many sockets exist:
    ip netns exec sf-sec .venv/bin/python bench/peercred.py [--sockets 2000] [--seconds 3]
Prints µs per lookup for both methods with N extra connected sockets open, then perform() calls/s
with 1 client against one service with the check on and one with it off, interleaved rounds,
same run, and the relative cost.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time


def _open_sockets(count: int) -> list[socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1024)
    opened = [server]
    for _ in range(count // 2):
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        opened += [client, accepted]
    return opened


def lookups(count: int, repeat: int = 2000) -> dict[str, float]:
    """µs per lookup for each method, with `count` sockets open."""
    from servicefactory import _peercred

    extra = _open_sockets(count)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname())
    accepted, peer = server.accept()
    local = accepted.getsockname()
    try:
        result = {}
        for label, function in (("netlink", _peercred.peer_uid), ("proc", _peercred.proc_uid)):
            assert function(local, peer) == os.geteuid(), label
            runs = repeat if label == "netlink" else max(20, repeat // 50)
            started = time.perf_counter()
            for _ in range(runs):
                function(local, peer)
            result[label] = (time.perf_counter() - started) / runs * 1e6
        return result
    finally:
        for sock in extra + [client, accepted, server]:
            sock.close()


def throughput(seconds: float, rounds: int) -> dict[str, float]:
    """perform() calls/s with one client, check on vs off, interleaved rounds; medians."""
    os.environ.setdefault("SERVICEFACTORY_HOME", tempfile.mkdtemp(prefix="sf-bench-peercred-"))
    from servicefactory import Service, testing
    from servicefactory.client import perform

    @Service.API.endpoint(port=0, name="PeerOn")
    class On(Service.base):
        @Service.API.handle("echo")
        def echo(self, data):
            return data

    # allow_users=... with the service's own uid only: same answer, and the check still runs;
    # the "off" service skips it through the module flag, set around its calls
    @Service.API.endpoint(port=0, name="PeerOff")
    class Off(On):
        pass

    figures: dict[str, list[float]] = {"on": [], "off": []}
    with testing.running(On()), testing.running(Off()) as off_service:
        app = off_service._servicefactory_runtime.server.app
        app.check_peer = False
        for _ in range(rounds):
            for label, name in (("on", "PeerOn"), ("off", "PeerOff")):
                calls = 0
                deadline = time.perf_counter() + seconds
                started = time.perf_counter()
                while time.perf_counter() < deadline:
                    perform(name, "echo", 1)
                    calls += 1
                figures[label].append(calls / (time.perf_counter() - started))
    on, off = statistics.median(figures["on"]), statistics.median(figures["off"])
    return {"on": on, "off": off, "cost_percent": (off - on) / off * 100}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for count in (0, args.sockets):
        figures = lookups(count)
        print(f"{count:5d} sockets open: netlink {figures['netlink']:7.1f} µs/lookup, "
              f"/proc/net/tcp {figures['proc']:8.1f} µs/lookup")
    result = throughput(args.seconds, args.rounds)
    print(f"perform, 1 client: check on {result['on']:,.0f} calls/s, off {result['off']:,.0f} calls/s, "
          f"cost {result['cost_percent']:.1f} %")
    sys.stdout.flush()


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
