"""``dynamo cluster``: K node processes on loopback, stopped together.

Node *i* is named ``n<i>``, listens on ``tcp://127.0.0.1:<base-port + i>`` and keeps its data
in ``<data-dir>/n<i>``; each is seeded with every other node's address. On Ctrl-C or SIGTERM
every node gets SIGTERM and a few seconds to close cleanly, then SIGKILL; the nodes also ask
the kernel to kill them if this process dies, so none is ever left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .client import Client
from .errors import DynamoError

STOP_GRACE_SECONDS = 5.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM this process when its parent goes away (Linux)."""
    with contextlib.suppress(OSError):  # not Linux: the children outlive a killed parent
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def node_command(i: int, base_port: int, count: int, data_dir: str, config: str | None,
                 log_level: str, log_format: str = "text") -> list[str]:
    addresses = [f"tcp://127.0.0.1:{base_port + j}" for j in range(1, count + 1)]
    return _node_command(i, addresses, data_dir, config, log_level, log_format)


def _node_command(i: int, addresses: list[str], data_dir: str, config: str | None,
                  log_level: str, log_format: str = "text") -> list[str]:
    """The command running node ``n<i>`` (1-based) of ``addresses``, seeded with the others.

    It advertises its own address whatever the shared config says: a ``[node] advertise``
    there names one machine's node, not each of these.
    """
    cmd = [sys.executable, "-m", "dynamo_core.cli", "node", "--name", f"n{i}",
           "--listen", addresses[i - 1], "--advertise", addresses[i - 1],
           "--data-dir", os.path.join(data_dir, f"n{i}"), "--log-level", log_level,
           "--log-format", log_format]
    for j, address in enumerate(addresses, 1):
        if j != i:
            cmd += ["--seed", address]
    if config:
        cmd += ["--config", config]
    return cmd


def run_cluster(count: int, base_port: int, data_dir: str, config: str | None,
                log_level: str, log_format: str = "text") -> str:
    if base_port + count > 65535:
        raise OSError(f"ports {base_port + 1}..{base_port + count} do not fit below 65536")
    stopping = False

    def stop(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for i in range(1, count + 1):
            cmd = node_command(i, base_port, count, data_dir, config, log_level, log_format)
            procs[f"n{i}"] = subprocess.Popen(cmd, preexec_fn=_die_with_parent)
            print(f"n{i} tcp://127.0.0.1:{base_port + i} (pid {procs[f'n{i}'].pid}, "
                  f"data {os.path.join(data_dir, f'n{i}')})", flush=True)
        print(f"cluster of {count} nodes running; Ctrl-C stops them all", flush=True)
        exited: set[str] = set()
        while not stopping:
            for name, proc in procs.items():
                if name not in exited and proc.poll() is not None:
                    print(f"{name} exited with status {proc.returncode}", flush=True)
                    exited.add(name)
            if len(exited) == len(procs):
                raise OSError("every node of the cluster exited; see the messages above")
            time.sleep(0.2)
    finally:
        stop_processes(list(procs.values()))
    return "cluster stopped"


def stop_processes(procs: list[subprocess.Popen[bytes]], sig: int = signal.SIGTERM,
                   grace: float = STOP_GRACE_SECONDS) -> None:
    """Signal every process, give them ``grace`` seconds together, then SIGKILL the rest."""
    for proc in procs:
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
                # A paused (SIGSTOPped) node would hold the signal pending for the whole grace.
                proc.send_signal(signal.SIGCONT)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports: all held open while choosing, so none is picked twice."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalCluster:
    """A throwaway cluster of node processes on free loopback ports, for scripts and tests.

    ::

        with LocalCluster(3, config_toml='[buckets.carts]\nresolver = "cart-union"') as cl:
            with Client(cl.addresses) as c:
                ...

    Data lives in a temporary directory removed on exit (or in ``data_dir``, kept). Entering
    waits until every node sees every other one up; leaving stops every process, however
    the block ended. With a ``[security]`` section in the config, ``key`` is the secret key
    file (a role of ``read`` or more) it asks the nodes with while it waits.
    """

    def __init__(self, nodes: int = 3, *, config_toml: str = "", data_dir: str | None = None,
                 log_level: str = "warning", ready_timeout: float = 30.0,
                 key: str | os.PathLike[str] | None = None) -> None:
        self.size = nodes
        self.config_toml = config_toml
        self.key = key
        self.log_level = log_level
        self.ready_timeout = ready_timeout
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="dynamo-")
            data_dir = self._tmp.name
        self.data_dir: str = data_dir
        self.addresses = [f"tcp://127.0.0.1:{port}" for port in _free_ports(nodes)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def names(self) -> list[str]:
        return [f"n{i}" for i in range(1, self.size + 1)]

    def address(self, name: str) -> str:
        return self.addresses[self.names.index(name)]

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        config = None
        if self.config_toml:
            config = os.path.join(self.data_dir, "config.toml")
            Path(config).write_text(self.config_toml)
        for i, name in enumerate(self.names, 1):
            cmd = _node_command(i, self.addresses, self.data_dir, config, self.log_level)
            self.procs[name] = subprocess.Popen(cmd, preexec_fn=_die_with_parent)
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        problem: str | None = "no node answered yet"
        with Client(self.addresses, timeout=1.0, key=self.key) as client:
            while time.monotonic() < deadline:
                for name, proc in self.procs.items():
                    if proc.poll() is not None:
                        raise OSError(f"node {name} exited with status {proc.returncode}")
                try:
                    problem = self._not_ready(client)
                except DynamoError as exc:
                    problem = str(exc)
                if problem is None:
                    return
                time.sleep(0.1)
        raise OSError(f"the local cluster was not ready after {self.ready_timeout:g}s: "
                      f"{problem}")

    def _not_ready(self, client: Client) -> str | None:
        """Why the cluster is not ready yet (None: every node sees every other one up)."""
        for address in self.addresses:
            members = client.status(node=address)["members"]
            up = {m["name"] for m in members if m["state"] == "up" and m["status"] == "up"}
            if up != set(self.names):
                return f"{address} sees {sorted(up)} up"
        return None

    def stop(self) -> None:
        stop_processes(list(self.procs.values()))
        self.procs.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
