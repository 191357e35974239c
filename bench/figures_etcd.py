"""Figure 13: the etcd registry next to the local one, same run: warm calls, lookup + call, how soon a
registration is visible to another client, and `status` of 100 instances on 3 hosts."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

from bench import services
from bench.harness import (PYTHON, VENV_BIN, FigureResult, Row, Sizes, Skipped, fmt_rate, fmt_ratio, fmt_seconds,
                           percentile, ratio, wait_until)
from bench.load import interleaved
from bench.processes import Spawned, environment

CLI = str(VENV_BIN / "servicefactory")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def etcd_server(workdir: Path) -> Iterator[str]:
    """A private etcd on free ports, data in workdir; yields its client endpoint host:port."""
    client, peer = _free_port(), _free_port()
    client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ETCD", "SERVICEFACTORY_"))}
    # through prctl(PR_SET_PDEATHSIG): a bench killed outright (a test's timeout) takes its etcd along,
    # which Spawned's own session would otherwise leave running
    with Spawned(["setpriv", "--pdeathsig", "KILL", "--", shutil.which("etcd") or "etcd", "--name", "bench",
                  "--data-dir", str(workdir / "etcd-data"),
                  "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
                  "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                  "--initial-cluster", f"bench={peer_url}"], workdir / "etcd.log", env=env) as server:
        import http.client

        def healthy() -> bool:
            server.check_alive("etcd")
            connection = http.client.HTTPConnection("127.0.0.1", client, timeout=1)
            try:
                connection.request("GET", "/health")
                return json.loads(connection.getresponse().read()).get("health") == "true"
            finally:
                connection.close()
        wait_until(healthy, 30.0, "etcd healthy", interval=0.05)
        yield f"127.0.0.1:{client}"


def _warm_client(registry) -> Callable:
    def make():
        from servicefactory.http import client

        def call(i: int) -> None:
            if client.perform("Echo", "echo", i, registry=registry) != i:
                raise ValueError("wrong answer")
        return call, client.close_connections
    return make


def _lookup_client(registry) -> Callable:
    """Every call reads the registry again (a fresh lookup), then calls: what a cold client pays."""
    def make():
        from servicefactory.http import client

        def call(i: int) -> None:
            client.resolve("Echo", registry, fresh=True)
            if client.perform("Echo", "echo", i, registry=registry) != i:
                raise ValueError("wrong answer")
        return call, client.close_connections
    return make


def _registration_latencies(make_registry: Callable, count: int, follow: bool = False) -> list[float]:
    """claim + publish by one registry object until another one (its own connection) reads the record;
    with `follow`, the reader follows etcd through a watch (as a long-running client does) and the
    record reaches it as an event."""
    from servicefactory.registry.base import ServiceRecord

    writer, reader = make_registry(), make_registry()
    reader.names()  # its connection open, as a long-running client's is
    if follow:
        reader.follow()
        wait_until(lambda: reader.version() is not None, 20.0, "the watch to be up")
    latencies = []
    for i in range(count):
        name = f"Visible{i}"
        started = time.perf_counter()
        claim = writer.claim(name)
        writer.publish(claim, ServiceRecord(name, os.getpid(), host="127.0.0.1", port=9, started=time.time(),
                                            hostname=socket.gethostname()))
        while reader.lookup(name) is None:
            time.sleep(0.0005)
        latencies.append(time.perf_counter() - started)
        writer.release(claim)
    return latencies


def _cli_seconds(args: list[str], env: dict[str, str], runs: int) -> float:
    """Median wall time of `servicefactory ARGS` (a cold CLI process)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=120)
        times.append(time.perf_counter() - started)
        if done.returncode not in (0, 3):
            raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}")
    return statistics.median(times)


def _status_call_seconds(make_registry: Callable, runs: int) -> float:
    """Median time of control.status() in this process, with a new registry each time: the registry's
    share of `status`, without the CLI's start-up."""
    from servicefactory.supervise import control

    times = []
    for _ in range(runs):
        registry = make_registry()
        started = time.perf_counter()
        control.status(registry=registry)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _fleet(make_registry: Callable, count: int, hosts: int) -> list:
    """`count` instances of Fleet, spread over `hosts` hostnames (this one and made-up others), each
    claimed and published by a registry object of its own host (so that claim and record agree, as
    on real hosts); [(registry, claim)]."""
    from servicefactory.registry.base import ServiceRecord
    from servicefactory.registry.local import process_start_time

    registries = []
    for host in range(hosts):
        registry = make_registry()
        if host and hasattr(registry, "hostname"):
            registry.hostname = f"bench-host-{host}"
        registries.append(registry)
    claims = []
    for i in range(1, count + 1):
        name = f"Fleet/{i}"
        registry = registries[i % hosts]
        claim = registry.claim(name)
        registry.publish(claim, ServiceRecord(name, os.getpid(), instance=i, host="127.0.0.1", port=10000 + i,
                                              started=time.time(), create_time=process_start_time(os.getpid()) or 0,
                                              hostname=getattr(registry, "hostname", None) or socket.gethostname()))
        claims.append((registry, claim))
    return claims


def figure_13(workdir: Path, sizes: Sizes) -> FigureResult:
    """perform through etcd vs the local registry (warm, and with a lookup per call), registration
    visible to another client, `status` of 100 instances on 3 hosts."""
    if shutil.which("etcd") is None:
        raise Skipped("the etcd binary is not installed (Debian: etcd-server)")
    try:
        import etcd3gw  # noqa: F401
    except ImportError:
        raise Skipped("etcd3gw is not installed (pip install 'servicefactory[etcd]')") from None
    from servicefactory.registry.etcd import EtcdRegistry
    from servicefactory.registry.local import LocalRegistry

    rounds = 1 if sizes.smoke else 5
    seconds = 0.2 if sizes.smoke else 1.0
    fleet_size, runs, visible = (10, 1, 20) if sizes.smoke else (100, 5, 300)
    script = services.write_services_module(workdir)
    with etcd_server(workdir) as endpoint:
        url = f"etcd://{endpoint}/bench"
        homes = {"local": workdir / "home-local", "etcd": workdir / "home-etcd"}
        envs = {"local": environment(homes["local"]),
                "etcd": environment(homes["etcd"], SERVICEFACTORY_REGISTRY=url)}
        registries = {"local": LocalRegistry(homes["local"]), "etcd": EtcdRegistry(url, homes["etcd"])}
        with Spawned([PYTHON, str(script)], workdir / "local.log", env=envs["local"]) as local_service, \
                Spawned([PYTHON, str(script)], workdir / "etcd.log", env=envs["etcd"]) as etcd_service:
            from servicefactory.http import client
            for kind, service in (("local", local_service), ("etcd", etcd_service)):
                def ready(kind=kind, service=service) -> bool:
                    service.check_alive(f"Echo ({kind} registry)")
                    return bool(client.perform("Echo", "health", registry=registries[kind], timeout=2.0))
                wait_until(ready, 20.0, f"Echo answering through the {kind} registry")
            warm = interleaved({kind: _warm_client(r) for kind, r in registries.items()}, 1, rounds, seconds,
                               sizes.warmup_calls)
            looked_up = interleaved({kind: _lookup_client(r) for kind, r in registries.items()}, 1, rounds,
                                    seconds, 5)
            cold = {kind: _cli_seconds(["perform", "Echo", "echo", "1"], envs[kind], runs) for kind in registries}
        latencies = {kind: _registration_latencies(
            (lambda: LocalRegistry(homes["local"])) if kind == "local" else (lambda: EtcdRegistry(url, homes["etcd"])),
            visible) for kind in registries}
        watched = _registration_latencies(lambda: EtcdRegistry(url, homes["etcd"]), visible, follow=True)
        status_times, status_calls = {}, {}
        for kind in registries:
            def make(kind=kind):
                return LocalRegistry(homes["local"]) if kind == "local" else EtcdRegistry(url, homes["etcd"])
            claims = _fleet(make, fleet_size, 3)
            try:
                status_times[kind] = _cli_seconds(["status", "--json"], envs[kind], runs)
                status_calls[kind] = _status_call_seconds(make, runs)
            finally:
                for owner, claim in claims:
                    owner.release(claim)
    warm_ratio = ratio(warm["etcd"]["calls_per_s"], warm["local"]["calls_per_s"])
    lookup_cost = {kind: 1.0 / m["calls_per_s"] - 1.0 / warm[kind]["calls_per_s"] for kind, m in looked_up.items()}
    p99 = {kind: percentile(values, 99) for kind, values in latencies.items()}
    rows = [
        Row("warm perform, 1 client (address cached: no registry round trip per call)",
            fmt_rate(warm["etcd"]["calls_per_s"]), f"local {fmt_rate(warm['local']['calls_per_s'])}",
            f"{fmt_ratio(warm_ratio)} local", ">= 0.90x local", warm_ratio >= 0.9),
        Row("lookup + call, 1 client (a fresh registry read every call)",
            fmt_rate(looked_up["etcd"]["calls_per_s"]), f"local {fmt_rate(looked_up['local']['calls_per_s'])}",
            f"{fmt_ratio(ratio(looked_up['etcd']['calls_per_s'], looked_up['local']['calls_per_s']))} local",
            "report"),
        Row("  of which the lookup", fmt_seconds(lookup_cost["etcd"]), f"local {fmt_seconds(lookup_cost['local'])}",
            "", "report"),
        Row("cold `servicefactory perform` (a new process: imports, one lookup, one call)",
            fmt_seconds(cold["etcd"]), f"local {fmt_seconds(cold['local'])}",
            f"{fmt_ratio(ratio(cold['etcd'], cold['local']))} local", "report"),
        Row("claim + publish until another client reads it, p50 / p99",
            f"{fmt_seconds(percentile(latencies['etcd'], 50))} / {fmt_seconds(p99['etcd'])}",
            f"local {fmt_seconds(percentile(latencies['local'], 50))} / {fmt_seconds(p99['local'])}", "",
            "p99 < 100 ms", p99["etcd"] < 0.1),
        Row("  the same, the reader following etcd through a watch (a long-running client)",
            f"{fmt_seconds(percentile(watched, 50))} / {fmt_seconds(percentile(watched, 99))}", "", "",
            "p99 < 100 ms", percentile(watched, 99) < 0.1),
        Row(f"`servicefactory status` of {fleet_size} instances on 3 hosts (cold CLI)",
            fmt_seconds(status_times["etcd"]), f"local {fmt_seconds(status_times['local'])}",
            f"{fmt_ratio(ratio(status_times['etcd'], status_times['local']))} local", "< 0.5 s",
            status_times["etcd"] < 0.5),
        Row(f"  of which control.status() itself (in-process, {fleet_size} instances)",
            fmt_seconds(status_calls["etcd"]), f"local {fmt_seconds(status_calls['local'])}",
            f"{fmt_ratio(ratio(status_calls['etcd'], status_calls['local']))} local", "report"),
    ]
    return FigureResult(rows, {"warm": warm, "lookup_and_call": looked_up, "lookup_cost_s": lookup_cost,
                               "registration_visible_s": {k: {"p50": percentile(v, 50), "p99": percentile(v, 99)}
                                                          for k, v in latencies.items()},
                               "registration_visible_watched_s": {"p50": percentile(watched, 50),
                                                                  "p99": percentile(watched, 99)},
                               "status_s": status_times, "status_call_s": status_calls, "cold_perform_s": cold, "fleet": fleet_size, "etcd_url": url})
