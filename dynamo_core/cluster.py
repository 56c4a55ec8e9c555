"""``dynamo cluster``: K node processes on loopback, ready together, kept running, stopped
together.

Node *i* is named ``n<i>``, listens on ``tcp://127.0.0.1:<base-port + i>`` and keeps its data
in ``<data-dir>/n<i>``; each is seeded with every other node's address. The ports are checked
before anything is started or created. The cluster is announced once every node is *ready*
(see :mod:`readiness`): a put made right after the announcement finds its replicas. A node
that dies is started again (same name, address and data directory) after a pause that
doubles while it keeps dying; on Ctrl-C or SIGTERM every node it runs gets SIGTERM and a few
seconds to close cleanly, then SIGKILL; the nodes also ask the kernel to kill them if this
process dies, so none is ever left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import config as config_mod
from .client import Client
from .errors import DynamoError
from .membership import RING_STATUSES

STOP_GRACE_SECONDS = 5.0
_PR_SET_PDEATHSIG = 1
#: How often the cluster looks at its processes and, while starting, at readiness.
POLL_SECONDS = 0.2
#: While the cluster starts, why it is not ready yet is said this often.
PROGRESS_SECONDS = 10.0
#: A dead node waits this long before it is started again, doubling while it keeps dying.
RESTART_BACKOFF_MIN = 1.0
RESTART_BACKOFF_MAX = 30.0
#: A node that ran this long since its last start restarts after the shortest wait again.
RESTART_HEALTHY_SECONDS = 60.0


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM this process when its parent goes away (Linux)."""
    with contextlib.suppress(OSError):  # not Linux: the children outlive a killed parent
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def local_addresses(base_port: int, count: int) -> list[str]:
    """Where the ``count`` nodes of ``dynamo cluster`` listen."""
    if base_port + count > 65535:
        raise OSError(f"ports {base_port + 1}..{base_port + count} do not fit below 65536")
    return [f"tcp://127.0.0.1:{base_port + i}" for i in range(1, count + 1)]


def check_ports_free(addresses: Sequence[str]) -> None:
    """Raise OSError naming the first port something listens on, and what to do about it.

    Checked before any node starts: a node that cannot bind its port would exit after its
    peers started and after the data directories were made. Bound as ZeroMQ binds (with
    SO_REUSEADDR), so a port left in TIME_WAIT by an earlier run does not count as taken.
    """
    for i, address in enumerate(addresses, 1):
        port = int(address.rsplit(":", 1)[1])
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError as exc:
                raise OSError(
                    f"port {port} for n{i} is taken ({exc.strerror}): another cluster or "
                    f"program listens there; pick free ports with --base-port P (node i "
                    f"listens on P + i)") from None


def _node_command(i: int, addresses: list[str], data_dir: str, config: str | None,
                  log_level: str, log_format: str = "text") -> list[str]:
    """The command running node ``n<i>`` (1-based) of ``addresses``, seeded with the others.

    It advertises its own address whatever the shared config says: a ``[node] advertise``
    there names one machine's node, not each of these; and with ``[metrics] listen`` node
    *i* serves its metrics on that port + *i* - 1.
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
        metrics = config_mod.load(config).metrics_listen
        if metrics is not None:  # one port per node: the config's, then the next ones
            host, port = metrics
            cmd += ["--metrics", f"{f'[{host}]' if ':' in host else host}:{port + i - 1}"]
    return cmd


# ====================================================================== readiness, from outside


def _unready(status: dict[str, Any], nodes: int | None) -> str | None:
    """Why the node whose status this is is not ready, or sees fewer than ``nodes``
    members up on the ring (None: neither)."""
    if not status.get("ready"):
        return f"{status['node']} is not ready: {'; '.join(status.get('not_ready', ['?']))}"
    up = len(_ring_members_up(status))
    if nodes is not None and up < nodes:
        return f"{status['node']} sees {up} of {nodes} nodes up on the ring"
    return None


def _ring_members_up(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in status["members"] if m["status"] in RING_STATUSES and m["state"] == "up"]


def cluster_not_ready(client: Client, node: str, nodes: int | None = None) -> str | None:
    """Why the cluster of the node at ``node`` is not ready (None: it is).

    Ready: that node is, and so is every member it sees up on the ring (each is asked);
    with ``nodes``, each of them also sees at least that many members up on the ring.
    """
    try:
        status = client.status(node=node)
        reason = _unready(status, nodes)
        for member in _ring_members_up(status):
            if reason is not None:
                return reason
            if member["name"] != status["node"]:
                reason = _unready(client.status(node=member["address"]), nodes)
        return reason
    except DynamoError as exc:
        return f"no answer: {exc}"


def wait_ready(client: Client, node: str, nodes: int | None = None,
               timeout: float | None = None,
               carry_on: Callable[[str], bool] = lambda reason: True) -> str | None:
    """Poll :func:`cluster_not_ready` until the cluster is ready (None), ``timeout``
    seconds passed, or ``carry_on`` (told each reason; it may raise) says to stop: then
    the last reason."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        reason = cluster_not_ready(client, node, nodes)
        if reason is None or not carry_on(reason) or \
                (deadline is not None and time.monotonic() >= deadline):
            return reason
        time.sleep(POLL_SECONDS)


# ====================================================================== supervision


@dataclass
class _Supervised:
    name: str
    command: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    #: the last wait before a restart (it doubles while the node keeps dying)
    backoff: float = 0.0
    #: when a dead node is started again (None: it runs, or stays dead)
    restart_at: float | None = None


class Supervisor:
    """Node processes kept running: one that dies is started again, saying so, after a
    pause that doubles (up to RESTART_BACKOFF_MAX) while it keeps dying soon after each
    start, so a node that cannot start does not spin. With ``restart`` False a dead node
    stays dead, and how to start it again by hand is said instead."""

    def __init__(self, commands: dict[str, list[str]], restart: bool,
                 say: Callable[[str], None]) -> None:
        self.nodes = {name: _Supervised(name, cmd) for name, cmd in commands.items()}
        self.restart = restart
        self.say = say

    def start(self) -> None:
        for node in self.nodes.values():
            self._spawn(node, time.monotonic())

    def _spawn(self, node: _Supervised, now: float) -> None:
        node.proc = subprocess.Popen(node.command, preexec_fn=_die_with_parent)
        node.started, node.restart_at = now, None

    def pid(self, name: str) -> int:
        proc = self.nodes[name].proc
        return proc.pid if proc is not None else 0

    def first_death(self) -> str | None:
        """A node that exited, and how (None: all run)."""
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is not None:
                return f"{node.name} exited with status {node.proc.returncode}"
        return None

    def watch(self, now: float) -> None:
        """Notice dead nodes and start again those whose wait is over."""
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is not None:
                self._died(node, now)
            elif node.restart_at is not None and now >= node.restart_at:
                self._spawn(node, now)
                self.say(f"{node.name} started again (pid {self.pid(node.name)})")

    def _died(self, node: _Supervised, now: float) -> None:
        assert node.proc is not None
        status = node.proc.returncode
        node.proc = None
        if not self.restart:
            self.say(f"{node.name} exited with status {status}; not restarted (--no-restart)."
                     f" To start it again with its data: {shlex.join(node.command)}")
            return
        healthy = now - node.started >= RESTART_HEALTHY_SECONDS
        node.backoff = RESTART_BACKOFF_MIN if healthy else \
            min(RESTART_BACKOFF_MAX, max(RESTART_BACKOFF_MIN, node.backoff * 2))
        node.restarts += 1
        node.restart_at = now + node.backoff
        self.say(f"{node.name} exited with status {status}; restarting in {node.backoff:g}s "
                 f"(restart {node.restarts})")

    def all_dead(self) -> bool:
        """Every node is dead and none will be started again."""
        return all(n.proc is None and n.restart_at is None for n in self.nodes.values())

    def stop(self) -> None:
        """Stop every node running now (restarted ones included); start none again."""
        for node in self.nodes.values():
            node.restart_at = None
        stop_processes([n.proc for n in self.nodes.values() if n.proc is not None])


def _say(text: str) -> None:
    print(text, flush=True)


def run_cluster(count: int, base_port: int, data_dir: str, config: str | None,
                log_level: str, log_format: str = "text", restart: bool = True) -> str:
    """``dynamo cluster``: check the ports, start the nodes, announce them once the cluster
    is ready, keep them running (``restart``) until Ctrl-C or SIGTERM, then stop them all.
    Raises OSError (exit status 1) when a port is taken or a node dies while starting."""
    addresses = local_addresses(base_port, count)
    check_ports_free(addresses)
    keys = _cluster_keys(config)
    stopping = False

    def stop(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    supervisor = Supervisor({f"n{i}": _node_command(i, addresses, data_dir, config, log_level,
                                                    log_format)
                             for i in range(1, count + 1)}, restart, _say)
    try:
        supervisor.start()
        _say(f"starting {count} nodes on {addresses[0]}..{addresses[-1]}, data in "
             f"{data_dir}; waiting until they are ready")
        if not _wait_started(supervisor, addresses, keys, lambda: stopping):
            return "cluster stopped"
        for i, address in enumerate(addresses, 1):
            _say(f"n{i} {address} (pid {supervisor.pid(f'n{i}')}, "
                 f"data {os.path.join(data_dir, f'n{i}')})")
        _say(f"cluster of {count} nodes ready; Ctrl-C stops them all")
        while not stopping:
            supervisor.watch(time.monotonic())
            if supervisor.all_dead():
                raise OSError("every node of the cluster exited; see the messages above")
            time.sleep(POLL_SECONDS)
    finally:
        supervisor.stop()
    return "cluster stopped"


def _cluster_keys(config: str | None) -> tuple[str | None, str | None]:
    """The secret key this process asks its own nodes with, and the cluster's public key
    (None, None without security): the nodes' own, which makes it a peer to them. Reading
    the config also stops a bad one before anything starts."""
    security = config_mod.load(config).security
    if security is None:
        return None, None
    return security.node_key or security.cluster_key, security.cluster_key


def _wait_started(supervisor: Supervisor, addresses: list[str],
                  keys: tuple[str | None, str | None], stopping: Callable[[], bool]) -> bool:
    """Wait until every node is ready (True) or Ctrl-C (False), saying now and then why
    not yet. A node that dies while the cluster starts stops it: restarting it would hide
    why (a taken port, a bad config)."""
    said = time.monotonic()

    def carry_on(reason: str) -> bool:
        nonlocal said
        death = supervisor.first_death()
        if death is not None:
            raise OSError(f"{death} before the cluster was ready; see its messages above")
        if time.monotonic() - said >= PROGRESS_SECONDS:
            said = time.monotonic()
            _say(f"not ready yet: {reason}")
        return not stopping()

    key, server_key = keys
    with Client(addresses, timeout=1.0, key=key, server_key=server_key) as client:
        return wait_ready(client, addresses[0], len(addresses), carry_on=carry_on) is None


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
    waits until every node is ready and sees every node up on the ring; leaving stops every
    process, however the block ended. With a ``[security]`` section in the config, ``key``
    is the secret key file (a role of ``read`` or more) it asks the nodes with while it
    waits.
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
        def carry_on(_reason: str) -> bool:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise OSError(f"node {name} exited with status {proc.returncode}")
            return True

        with Client(self.addresses, timeout=1.0, key=self.key) as client:
            problem = wait_ready(client, self.addresses[0], self.size, self.ready_timeout,
                                 carry_on)
        if problem is not None:
            raise OSError(f"the local cluster was not ready after {self.ready_timeout:g}s: "
                          f"{problem}")

    def stop(self) -> None:
        stop_processes(list(self.procs.values()))
        self.procs.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
