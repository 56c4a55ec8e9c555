"""Shared fixtures: a cluster of real ``dynamo node`` processes on loopback.

``cluster(k, config=..., extra_toml=...)`` starts ``k`` node processes, each on a free
loopback port with its own data directory and a log file, every node seeded with all the
others, and returns once every node's ``status`` lists all ``k`` members. Whatever happens in
the test, every process it started is stopped afterwards (SIGTERM, then SIGKILL after 5 s);
when a test fails, the tail of each node's log is attached to the failure report.

``cluster`` is function-scoped (for tests that kill and restart nodes);
``module_cluster`` is the same factory with module scope, for tests that share one cluster
and only read and write keys.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dynamo_core.client import AsyncClient, Client
from dynamo_core.cluster import stop_processes
from dynamo_core.config import merge_tables
from dynamo_core.errors import DynamoError

START_TIMEOUT = 15.0
STOP_GRACE = 5.0
LOG_TAIL_CHARS = 4000

#: Settings every test cluster starts from; a test's ``config`` is merged over them.
#: Gossip runs five times a second so that membership converges in well under a second.
BASE_CONFIG: dict[str, Any] = {"cluster": {"gossip_interval": 0.2}}

#: Clusters that are running right now, so a failing test can show their logs.
_ACTIVE: list[Cluster] = []


# ====================================================================== helpers


def free_port() -> int:
    """A loopback TCP port nothing listens on at this moment."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all held open while choosing)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port_run(count: int) -> int:
    """A base port ``b`` such that ``b+1 .. b+count`` are all free (for ``dynamo cluster``)."""
    for _ in range(100):
        first = free_port()
        socks = []
        try:
            for port in range(first, first + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return first - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"found no run of {count} free ports")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(data: Mapping[str, Any], prefix: str = "") -> str:
    """A small TOML writer for nested tables of scalars and lists (enough for node configs)."""
    scalars = {k: v for k, v in data.items() if not isinstance(v, Mapping)}
    tables = {k: v for k, v in data.items() if isinstance(v, Mapping)}
    lines = []
    if prefix and scalars:
        lines.append(f"[{prefix}]")
    lines += [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
    out = "\n".join(lines) + ("\n\n" if lines else "")
    for k, v in tables.items():
        out += to_toml(v, f"{prefix}.{k}" if prefix else k)
    return out


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except (DynamoError, AssertionError) as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM,
                 grace: float = STOP_GRACE) -> None:
    """Signal ``proc`` and reap it; SIGKILL if it is still there after ``grace`` seconds."""
    stop_processes([proc], sig, grace)


# ====================================================================== the cluster


@dataclass
class NodeProcess:
    name: str
    port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen | None = None
    #: wall-clock time of the latest spawn (what the node has heard since counts)
    started_at: float = 0.0
    #: the address it tells peers and clients (``--advertise``), when not the one it listens on
    advertise: str | None = None

    @property
    def listen(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        """Where peers and clients reach it."""
        return self.advertise or self.listen

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Cluster:
    """``k`` real node processes on loopback, named ``n1`` .. ``nk``."""

    def __init__(self, root: Path, k: int, config: Mapping[str, Any] | None = None,
                 extra_toml: str = "", key: Path | None = None, ready: bool = True) -> None:
        self.root = root
        #: wait_converged also waits for every node to be ready (False: a test whose nodes
        #: cannot be, say with anti-entropy off so that they stay joining)
        self.wait_ready = ready
        #: the secret key file the test's clients use (a cluster run with security)
        self.key = key
        self.config_path = root / "config.toml"
        self.config_path.write_text(
            to_toml(merge_tables(BASE_CONFIG, config or {})) + extra_toml)
        ports = free_ports(k)
        self.nodes: dict[str, NodeProcess] = {}
        for i, port in enumerate(ports, start=1):
            name = f"n{i}"
            self.nodes[name] = NodeProcess(name, port, root / name / "data",
                                           root / f"{name}.log")

    # ------------------------------------------------------------------ views

    @property
    def names(self) -> list[str]:
        return list(self.nodes)

    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes.values()]

    def address(self, name: str) -> str:
        return self.nodes[name].address

    def name_of(self, address: str) -> str:
        return next(n.name for n in self.nodes.values() if n.address == address)

    def data_dir(self, name: str) -> Path:
        return self.nodes[name].data_dir

    def pid(self, name: str) -> int:
        proc = self.nodes[name].proc
        assert proc is not None
        return proc.pid

    def running(self) -> list[str]:
        return [n.name for n in self.nodes.values() if n.running]

    def client(self, *names: str, timeout: float = 5.0, bucket: str = "default") -> Client:
        """A blocking client on the named nodes (default: every running node)."""
        names = names or tuple(self.running())
        return Client([self.address(n) for n in names], timeout=timeout, bucket=bucket,
                      key=self.key)

    def logs(self) -> str:
        parts = []
        for node in self.nodes.values():
            try:
                text = node.log_path.read_text(errors="replace")
            except FileNotFoundError:
                text = "(no log)"
            if len(text) > LOG_TAIL_CHARS:
                text = "..." + text[-LOG_TAIL_CHARS:]
            parts.append(f"----- {node.name} ({node.address}) -----\n{text}")
        return "\n".join(parts)

    # ------------------------------------------------------------------ processes

    def command(self, name: str) -> list[str]:
        node = self.nodes[name]
        cmd = [sys.executable, "-m", "dynamo_core.cli", "node", "--name", name,
               "--listen", node.listen, "--data-dir", str(node.data_dir),
               "--config", str(self.config_path), "--log-level", "warning"]
        if node.advertise:
            cmd += ["--advertise", node.advertise]
        for other in self.nodes.values():
            if other.name != name:
                cmd += ["--seed", other.address]
        return cmd

    def spawn(self, name: str) -> None:
        node = self.nodes[name]
        assert not node.running, f"{name} is already running"
        node.data_dir.mkdir(parents=True, exist_ok=True)
        node.started_at = time.time()
        with open(node.log_path, "ab") as log:
            node.proc = subprocess.Popen(self.command(name), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log)

    def start(self) -> None:
        for name in self.nodes:
            self.spawn(name)
        self.wait_converged()

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the node and reap it (SIGKILL after 5 s if it lingers)."""
        node = self.nodes[name]
        assert node.proc is not None
        stop_process(node.proc, sig)

    def restart(self, name: str, wait: bool = True) -> None:
        """Start the node again: same name, same port, same data directory."""
        if self.nodes[name].running:
            self.kill(name, signal.SIGTERM)
        self.spawn(name)
        if wait:
            self.wait_converged()

    def stop_all(self) -> None:
        stop_processes([n.proc for n in self.nodes.values() if n.proc is not None],
                       grace=STOP_GRACE)

    def wait_converged(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until every running node's status lists every member of the cluster and it
        has heard from every other running node since it (re)started.

        Listing the members is not enough: a restarted node knows them from ``node.cbor``
        at once, before its connections to them are up, and a request it coordinates then
        finds no peer to send to. Every running node must also build the same ring (the
        same ``ring_digest``): members choose their join orders through gossip, and a test
        that reads where keys live must not start while the ring still settles. And every
        running node must be *ready* (its own judgment, ``ready`` in its status): among
        other things its connections to every peer it believes up are open, so a request
        made right away does not fail with "no connection".
        """
        expected = set(self.nodes)
        pending = set(self.running())
        digests: dict[str, str] = {}

        def converged() -> bool:
            running = set(self.running())
            unready = {}
            for name in sorted(running):
                if not self.nodes[name].running:
                    proc = self.nodes[name].proc
                    pytest.fail(f"node {name} exited with status "
                                f"{proc.returncode if proc else '?'}:\n{self.logs()}")
                with Client(self.address(name), timeout=0.5, key=self.key) as c:
                    status = c.status(node=self.address(name))
                digests[name] = status["ring_digest"]
                if self.wait_ready and not status["ready"]:
                    unready[name] = "; ".join(status["not_ready"])
                members = {m["name"]: m for m in status["members"]}
                since = self.nodes[name].started_at
                if name in pending and set(members) == expected and all(
                        (members[peer]["last_heard"] or 0) >= since
                        for peer in running - {name}):
                    pending.discard(name)
            assert not unready, f"not ready: {unready}"
            return not pending and len({digests[n] for n in running}) == 1

        wait_for(converged, timeout, f"nodes {sorted(pending)} to see all of {sorted(expected)} "
                                     f"and every node to build the same ring and be ready")


# ====================================================================== dynamo cluster


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (absent, or a zombie nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


class RunningCluster:
    """``dynamo cluster`` in its own session, its output read line by line in a thread."""

    def __init__(self, tmp_path: Path, *args: str, nodes: int = 2) -> None:
        self.base = free_port_run(nodes)
        self.addresses = [f"tcp://127.0.0.1:{self.base + i}" for i in range(1, nodes + 1)]
        self.data_dir = tmp_path / "cluster-data"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dynamo_core.cli", "cluster", "--nodes", str(nodes),
             "--base-port", str(self.base), "--data-dir", str(self.data_dir), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True, start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def ready(self) -> bool:
        """It said the cluster is ready."""
        return any(re.match(r"cluster of \d+ nodes ready", line) for line in self.lines)

    def node_pids(self) -> dict[str, int]:
        """Every node process it said it started (restarted ones too), latest last."""
        return {m[0]: int(m[1]) for m in re.findall(
            r"^(n\d+) (?:tcp://\S+ \(|started again \()pid (\d+)", self.output, re.MULTILINE)}

    def all_pids(self) -> list[int]:
        return [int(p) for p in re.findall(r"^n\d+ .*?\(pid (\d+)", self.output, re.MULTILINE)]

    def close(self) -> None:
        """Whatever the test did, leave nothing running."""
        pids = self.all_pids()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for pid in pids:
            if not process_gone(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


# ====================================================================== fixtures


class _Factory:
    def __init__(self, make_root) -> None:
        self._make_root = make_root
        self.clusters: list[Cluster] = []

    def __call__(self, k: int = 3, config: Mapping[str, Any] | None = None,
                 extra_toml: str = "", key: Path | None = None, ready: bool = True) -> Cluster:
        cl = Cluster(self._make_root(), k, config, extra_toml, key, ready)
        self.clusters.append(cl)
        _ACTIVE.append(cl)
        cl.start()
        return cl

    def close(self) -> None:
        for cl in self.clusters:
            try:
                cl.stop_all()
            finally:
                if cl in _ACTIVE:
                    _ACTIVE.remove(cl)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[_Factory]:
    """Factory: ``cluster(k, config={...}, extra_toml="...", key=..., ready=...)`` -> a
    running :class:`Cluster` (``key``: the secret key file its clients use, for security;
    ``ready=False``: do not wait for the nodes to be ready, only converged)."""
    counter = iter(range(1, 1000))
    factory = _Factory(lambda: _mkdir(tmp_path / f"cluster{next(counter)}"))
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def dynamo_cluster(tmp_path: Path) -> Iterator[Any]:
    """Factory: ``dynamo_cluster(*args, nodes=2)`` runs ``dynamo cluster`` with ``args`` and
    returns its :class:`RunningCluster` once it said the cluster is ready; everything it
    started is killed at the end of the test."""
    clusters: list[RunningCluster] = []

    def start(*args: str, nodes: int = 2) -> RunningCluster:
        rc = RunningCluster(tmp_path / f"run{len(clusters)}", *args, nodes=nodes)
        clusters.append(rc)
        wait_for(lambda: rc.ready or rc.proc.poll() is not None, 60,
                 "dynamo cluster to say it is ready")
        assert rc.proc.poll() is None, rc.output
        return rc

    try:
        yield start
    finally:
        for rc in clusters:
            rc.close()


@pytest.fixture(scope="module")
def module_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Factory]:
    """The same factory, shared by the tests of one module (for clusters no test disturbs)."""
    factory = _Factory(lambda: tmp_path_factory.mktemp("cluster"))
    try:
        yield factory
    finally:
        factory.close()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Attach the tail of every running node's log to a failed test's report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and _ACTIVE and not hasattr(report, "wasxfail"):
        for cl in _ACTIVE:
            report.sections.append((f"node logs ({cl.root.name})", cl.logs()))


# ====================================================================== shared helpers


def load(cl: Cluster, keys: dict[str, Any], concurrency: int = 32) -> None:
    """Write every key (W = 2) through every node in turn, many at a time."""

    async def run() -> None:
        async with AsyncClient(cl.addresses, timeout=10.0) as c:
            sem = asyncio.Semaphore(concurrency)

            async def one(key: str, value: Any) -> None:
                async with sem:
                    await c.put(key, value)

            await asyncio.gather(*(one(k, v) for k, v in keys.items()))

    asyncio.run(run())


def status(cl: Cluster, name: str) -> dict[str, Any]:
    with cl.client(name, timeout=3.0) as c:
        return c.status(node=cl.address(name))


def homes(cl: Cluster, key: str, via: str) -> list[str]:
    with cl.client(via) as c:
        nodes = c.preflist(key, node=cl.address(via))["nodes"]
    return [n["name"] for n in nodes if n["role"] == "home"]
