"""The peers servicefactory is measured next to: Pyro5, a bare loopback HTTP floor, supervisord."""
from __future__ import annotations

import contextlib
import socket
import textwrap
from pathlib import Path
from typing import Callable, Iterator

from bench.harness import PYTHON, VENV_BIN, wait_until
from bench.processes import Spawned, environment, kill_pids, run_timed

CALL_TIMEOUT = 10.0

# -- Pyro5: one exposed object on a threaded daemon (the default server type), no name server --

PYRO_SERVER = textwrap.dedent('''
    import sys
    import Pyro5.api

    @Pyro5.api.expose
    class Echo:
        def echo(self, data):
            return data

    daemon = Pyro5.api.Daemon(host="127.0.0.1", port=0)
    print("URI", daemon.register(Echo(), "echo"), flush=True)
    daemon.requestLoop()
''')


@contextlib.contextmanager
def pyro_server(workdir: Path) -> Iterator[tuple[Spawned, str]]:
    """A Pyro5 daemon in a subprocess; yields it and its object URI."""
    script = workdir / "pyro_echo.py"
    script.write_text(PYRO_SERVER)
    with Spawned([PYTHON, str(script)], workdir / "pyro.log", env=environment()) as server:
        def uri() -> str | None:
            server.check_alive("Pyro5 daemon")
            for line in server.output().splitlines():
                if line.startswith("URI "):
                    return line.split(" ", 1)[1].strip()
            return None

        yield server, wait_until(uri, 15.0, "Pyro5 daemon URI")


def pyro_client(uri: str) -> Callable:
    """A factory of per-thread Pyro5 proxies (a proxy belongs to the thread that made it)."""
    def make() -> tuple[Callable[[int], None], Callable[[], None]]:
        import Pyro5.api
        proxy = Pyro5.api.Proxy(uri)
        proxy._pyroTimeout = CALL_TIMEOUT
        echo = proxy.echo

        def call(i: int) -> None:
            if echo(i) != i:
                raise ValueError("wrong answer")

        return call, proxy._pyroRelease
    return make


# -- the floor: the least a Python keep-alive HTTP/1.1 echo over loopback can cost --

FLOOR_SERVER = textwrap.dedent('''
    import socket, threading

    def serve(conn):
        buffer = b""
        with conn:
            while True:
                while b"\\r\\n\\r\\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\\r\\n\\r\\n")
                length = 0
                for line in head.split(b"\\r\\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                body, buffer = buffer[:length], buffer[length:]
                conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\n"
                             b"Content-Length: %d\\r\\n\\r\\n" % len(body) + body)

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    print("PORT", listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
''')


@contextlib.contextmanager
def floor_server(workdir: Path) -> Iterator[tuple[Spawned, int]]:
    """A thread-per-connection raw-socket HTTP/1.1 echo server; yields it and its port."""
    script = workdir / "floor_echo.py"
    script.write_text(FLOOR_SERVER)
    with Spawned([PYTHON, str(script)], workdir / "floor.log", env=environment()) as server:
        def port() -> int | None:
            server.check_alive("floor server")
            for line in server.output().splitlines():
                if line.startswith("PORT "):
                    return int(line.split()[1])
            return None

        yield server, wait_until(port, 15.0, "floor server port")


def floor_client(port: int) -> Callable:
    """A factory of per-thread raw-socket keep-alive clients posting the JSON body of `i`."""
    def make() -> tuple[Callable[[int], None], Callable[[], None]]:
        sock = socket.create_connection(("127.0.0.1", port), timeout=CALL_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        host = f"127.0.0.1:{port}"

        def call(i: int) -> None:
            body = str(i).encode()
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (host.encode(), len(body), body))
            buffer = b""
            while b"\r\n\r\n" not in buffer:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("floor server closed the connection")
                buffer += data
            head, _, rest = buffer.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            while len(rest) < length:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("floor server closed the connection")
                rest += data
            if rest[:length].rstrip(b"\n") != body:  # servicefactory ends its JSON with a newline
                raise ValueError("wrong answer")

        return call, sock.close
    return make


# -- supervisord: one config, one program, a unix socket in the work dir --

SUPERVISOR_CONFIG = textwrap.dedent('''
    [unix_http_server]
    file={dir}/supervisor.sock

    [supervisord]
    nodaemon=true
    logfile={dir}/supervisord.log
    pidfile={dir}/supervisord.pid
    childlogdir={dir}

    [rpcinterface:supervisor]
    supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

    [supervisorctl]
    serverurl=unix://{dir}/supervisor.sock

    [program:sleeper]
    command={python} -c "import time; time.sleep(3600)"
    autostart={autostart}
    startsecs={startsecs}
    stdout_logfile={dir}/sleeper.log
    redirect_stderr=true
''')


class Supervisord:
    """A running supervisord with one program, `sleeper` (a sleeping Python process).

    With autostart the program is running from the start (startsecs=0, nothing to wait for);
    without, `supervisorctl start sleeper` waits supervisor's default startsecs of 1 s.
    """

    def __init__(self, workdir: Path, autostart: bool) -> None:
        self.config = workdir / "supervisord.conf"
        self.config.write_text(SUPERVISOR_CONFIG.format(dir=workdir, python=PYTHON,
                                                        autostart="true" if autostart else "false",
                                                        # started for us: RUNNING at once; started by a
                                                        # figure: supervisor's default of 1 s
                                                        startsecs=0 if autostart else 1))
        self.process = Spawned([str(VENV_BIN / "supervisord"), "-c", str(self.config)],
                               workdir / "supervisord.out", env=environment())
        self.pid = self.process.pid

    def ctl(self, *args: str, timeout: float = 30.0) -> tuple[float, int, str]:
        """Run supervisorctl; return its wall time, exit code and output."""
        elapsed, result = run_timed([str(VENV_BIN / "supervisorctl"), "-c", str(self.config), *args],
                                    timeout=timeout)
        return elapsed, result.returncode, (result.stdout + result.stderr).decode(errors="replace")

    def wait_state(self, state: str, timeout: float = 15.0) -> None:
        def reached() -> bool:
            self.process.check_alive("supervisord")
            return state in self.ctl("status", "sleeper", timeout=10)[2]
        wait_until(reached, timeout, f"supervisord's sleeper {state}", interval=0.05)

    def close(self) -> None:
        # supervisord puts each program in its own process group: collect them before it goes.
        # It is killed outright: its graceful exit polls for seconds, and a program that dies
        # before supervisord reads its SIGTERM is respawned first.
        import psutil
        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            children = []
        self.process.close(grace=0.0)
        kill_pids(children)


@contextlib.contextmanager
def supervisord(workdir: Path, autostart: bool) -> Iterator[Supervisord]:
    """supervisord answering supervisorctl; with autostart, its sleeper is RUNNING."""
    daemon = Supervisord(workdir, autostart)
    try:
        daemon.wait_state("RUNNING" if autostart else "STOPPED")
        yield daemon
    finally:
        daemon.close()
