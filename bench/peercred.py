"""Measure the peer-uid check: one lookup by netlink vs /proc/net/tcp, and its cost in perform throughput.

Run it inside a network namespace of its own to control how many sockets exist:
    ip netns exec sf-sec .venv/bin/python bench/peercred.py [--sockets 2000] [--seconds 3]
Prints µs per lookup for both methods with N extra connected sockets open, then calls/s with 1
client against one service with the check on and one with it off, in interleaved rounds of the
same run: through perform() (a kept connection: one check) and with a new connection per call.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time

from ab import echo_pair, interleaved


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
    from servicefactory.http import _peercred

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


def _fresh_connection_call(port: int) -> None:
    """One call on a new connection, as curl makes it: the peer check runs every time."""
    request = (b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: 1\r\nConnection: close\r\n\r\n1")
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request)
        while sock.recv(65536):
            pass


def throughput(seconds: float, rounds: int) -> dict[str, dict[str, float]]:
    """Calls/s with one client, check on vs off, in interleaved rounds; medians and median ratio.

    `perform` keeps its connection, so the check runs once; `fresh` opens one per call (curl).
    """
    os.environ.setdefault("SERVICEFACTORY_HOME", tempfile.mkdtemp(prefix="sf-bench-peercred-"))
    from servicefactory.http.client import perform

    with echo_pair("Peer") as (on_service, off_service):
        off_service._servicefactory_runtime.server.app.gate.check_peer = False  # the same app, unchecked
        on_port, off_port = on_service.address[1], off_service.address[1]
        return {
            "perform": interleaved({"on": lambda: perform("PeerOn", "echo", 1),
                                    "off": lambda: perform("PeerOff", "echo", 1)}, seconds, rounds),
            "fresh": interleaved({"on": lambda: _fresh_connection_call(on_port),
                                  "off": lambda: _fresh_connection_call(off_port)}, seconds, rounds),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print one JSON object (for bench/run.py)")
    args = parser.parse_args()
    if args.json:
        print(json.dumps({"lookups": {str(count): lookups(count) for count in (0, args.sockets)},
                          "throughput": throughput(args.seconds, args.rounds)}))
        return
    for count in (0, args.sockets):
        figures = lookups(count)
        print(f"{count:5d} sockets open: netlink {figures['netlink']:7.1f} µs/lookup, "
              f"/proc/net/tcp {figures['proc']:8.1f} µs/lookup")
    for mode, result in throughput(args.seconds, args.rounds).items():
        print(f"{mode:8s} 1 client: check on {result['on']:,.0f} calls/CPU-s, off {result['off']:,.0f} calls/CPU-s, "
              f"cost {result['cost_percent']:.1f} % (median of same-round ratios)")
    sys.stdout.flush()


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
