"""No client can hold a worker: half-sent requests wait in the selector, unread answers are written
by the selector, and pipelined floods are served one request per connection per turn."""
from __future__ import annotations

import socket
import subprocess
import sys
import time

from http_support import CountingApp, serving, timed_health_call

from support import wait_until

WORKERS = 16  # the default pool: the issue starved exactly this many


def _p99(latencies: list[float]) -> float:
    return sorted(latencies)[int(len(latencies) * 0.99) - 1]


def test_heads_waiting_for_their_bodies_hold_no_worker_and_calls_stay_fast():
    """2x the workers of connections each holding a chunked head, an Expect head and an overlong
    length (13 digits) with a short body: a well-behaved client's calls keep p99 under 50 ms."""
    app = CountingApp()
    hogs: list[socket.socket] = []
    with serving(app, max_workers=WORKERS) as server:
        address = ("127.0.0.1", server.port)
        try:
            for _ in range(2 * WORKERS):
                for head in (b"POST /h HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
                             b"POST /h HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n",
                             b"POST /h HTTP/1.1\r\nHost: x\r\nContent-Length: 0000000000010\r\n\r\n12"):
                    sock = socket.create_connection(address, timeout=5)
                    sock.sendall(head)
                    hogs.append(sock)
            time.sleep(0.2)  # every hog is read and parsed
            with socket.create_connection(address, timeout=5) as client:
                timed_health_call(client)
                latencies = [timed_health_call(client) for _ in range(300)]
            assert _p99(latencies) < 0.050, f"p99 {_p99(latencies) * 1000:.1f} ms"
            assert [path for _, path, _ in app.seen] == ["/health"] * 301
            # the Expect heads got their 100 Continue from the selector, and no answer beyond it
            expecting = hogs[1::3]
            for sock in expecting:
                sock.settimeout(2)
                assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        finally:
            for sock in hogs:
                sock.close()


def test_a_client_that_never_reads_its_answers_holds_no_worker():
    big = b"x" * (24 * 1024 * 1024)  # more than the kernel's socket buffers hold

    def handler(environ):
        return None

    app = CountingApp(handler)

    def big_app(environ, start_response):
        if environ["PATH_INFO"] == "/big":
            start_response("200 OK", [("Content-Type", "application/octet-stream")])
            return [big]
        return app(environ, start_response)

    with serving(big_app, max_workers=1, io_timeout=30) as server:
        address = ("127.0.0.1", server.port)
        stuck = []
        try:
            for _ in range(2):  # twice the single worker
                sock = socket.create_connection(address, timeout=5)
                sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
                stuck.append(sock)
            time.sleep(0.3)
            with socket.create_connection(address, timeout=5) as client:
                latencies = [timed_health_call(client) for _ in range(20)]
            # a held worker would make these wait for io_timeout (30 s); the bound is only a safety
            # net for a loaded machine, where the first call has waited 1.4 s behind the 48 MiB copies
            assert max(latencies) < 5, latencies
            # and the non-reader still gets its whole answer when it reads at last
            stuck[0].settimeout(10)
            received = 0
            while received < len(big):
                chunk = stuck[0].recv(1 << 20)
                assert chunk
                received += len(chunk)
        finally:
            for sock in stuck:
                sock.close()


_FLOODER = r"""
import socket, sys, threading, time
address = ("127.0.0.1", int(sys.argv[1]))
flood = b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n" * 2000

def flooder():
    with socket.create_connection(address, timeout=5) as sock:
        sock.setblocking(False)
        while True:
            try:
                sock.send(flood)  # never reads: its answers back up, then its requests
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:
                return

for _ in range(16):
    threading.Thread(target=flooder, daemon=True).start()
time.sleep(60)
"""


def test_a_pipelined_flood_from_16_clients_does_not_delay_another_clients_calls():
    """The flooders run in their own process, so what is measured is the server, not our GIL."""
    app = CountingApp()
    with serving(app, max_workers=WORKERS) as server:
        flood = subprocess.Popen([sys.executable, "-c", _FLOODER, str(server.port)])
        try:
            wait_until(lambda: len(app.seen) > 1000, timeout=20, message="the flood to be under way")
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as client:
                latencies = [timed_health_call(client) for _ in range(50)]
            # 0.2.0 made such a call wait 6.4 s; one request per connection per turn keeps it short.
            # 3 s is the net for a loaded machine (the suite runs next to others), far from 6.4 s
            assert max(latencies) < 3.0, f"max {max(latencies) * 1000:.0f} ms"
        finally:
            flood.kill()
            flood.wait(10)


def test_a_request_that_does_not_arrive_in_time_is_answered_408_and_closed():
    app = CountingApp()
    with serving(app, header_timeout=0.5) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            started = time.monotonic()
            sock.sendall(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12")
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            assert data.startswith(b"HTTP/1.1 408 "), data
            assert time.monotonic() - started < 3.0
    assert app.seen == []


def test_a_client_that_takes_none_of_its_answer_for_io_timeout_is_dropped():
    big = b"z" * (24 * 1024 * 1024)

    def big_app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [big]

    with serving(big_app, io_timeout=1.0) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(3.5)  # io_timeout, plus the once-a-second sweep, plus slack
            received = 0
            sock.settimeout(5)
            try:
                while True:
                    chunk = sock.recv(1 << 20)
                    if not chunk:
                        break
                    received += len(chunk)
            except ConnectionResetError:
                pass
            assert received < len(big)  # the server gave up on the rest rather than hold it forever


def _paced_body_cpu(server, segment: int, count: int) -> float:
    """The selector thread's CPU seconds to take one request whose body comes in `count` paced segments."""
    clock = time.pthread_getcpuclockid(server._selector_thread.ident)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        piece = b"b" * segment
        sock.sendall(b"POST /paced HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (segment * count))
        started = time.clock_gettime(clock)
        for _ in range(count):
            sock.sendall(piece)
            time.sleep(0.0002)  # so that most segments are read alone, as from a slow link
        sock.settimeout(10)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        return time.clock_gettime(clock) - started


def test_a_body_in_thousands_of_segments_is_parsed_once_not_rescanned_on_every_read():
    """Issue 10: a 1 MiB body in 4,097 paced segments cost 0.2.0 three times the CPU it should, as
    each read re-copied and rescanned the buffer. Each segment is now fed once: the selector's
    CPU for 2,048 segments of 512 bytes (1 MiB) stays close to its CPU for 2,048 of 16 bytes."""
    app = CountingApp()
    with serving(app, max_body=1024 * 1024) as server:
        small = min(_paced_body_cpu(server, 16, 2048) for _ in range(2))
        large = min(_paced_body_cpu(server, 512, 2048) for _ in range(2))
    assert [len(body) for _, _, body in app.seen] == [16 * 2048] * 2 + [512 * 2048] * 2
    # a rescan of everything received so far on each read costs ~1 GiB of copying here: many times `small`
    assert large < 2 * small + 0.02, f"1 MiB: {large * 1000:.0f} ms of CPU; 32 KiB: {small * 1000:.0f} ms"
