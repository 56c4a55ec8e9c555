"""Readiness and supervision, against real processes: a node says whether it is ready and
why not, ``dynamo wait`` blocks until a cluster is, ``dynamo cluster`` announces the cluster
only once a put works, refuses taken ports before it creates anything, restarts nodes that
die and stops every node it started.

No assertion depends on how fast things happen: every wait is bounded generously and polls.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    free_port,
    free_port_run,
    process_gone,
    stop_process,
    wait_for,
)

from dynamo_core.client import Client
from dynamo_core.membership import Member
from dynamo_core.readiness import STATUS_MEANINGS, Facts, not_ready
from dynamo_core.sim import SimCluster

pytestmark = [pytest.mark.timeout(120), pytest.mark.cluster]

CLI = [sys.executable, "-m", "dynamo_core.cli"]


def dynamo(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


# ====================================================================== the rules


def _facts(**changes) -> Facts:
    members = [Member(n, f"tcp://{n}:1", 1, (), "up") for n in ("n1", "n2", "n3")]
    facts = dict(me=members[0], members=members, has_seeds=True, digest=b"A",
                 peer_digests={"n2": b"A", "n3": b"A"}, neighbours={"n2", "n3"}, filling=0,
                 is_up=lambda peer: True, connected=lambda address: True)
    return Facts(**{**facts, **changes})


def test_the_reasons_a_node_is_not_ready():
    assert not_ready(_facts()) == []
    assert not_ready(_facts(peer_digests={"n2": b"A", "n3": b"B"})) == \
        ["ring not settled: n3 build another ring"]
    assert not_ready(_facts(peer_digests={"n2": b"A"})) == ["ring not confirmed yet by n3"]
    # Not a neighbour: its ring need not be known, only agree when it is.
    assert not_ready(_facts(peer_digests={"n2": b"A"}, neighbours={"n2"})) == []
    assert not_ready(_facts(connected=lambda address: address != "tcp://n2:1")) == \
        ["no connection yet to n2"]
    # A peer believed down is waited for in nothing.
    assert not_ready(_facts(peer_digests={}, connected=lambda address: False,
                            is_up=lambda peer: False)) == []
    me = _facts().members[0]
    assert not_ready(_facts(me=Member("n1", me.address, 1, (), "joining"), filling=7)) == \
        ["joining: 7 of its ranges not filled yet"]
    assert not_ready(_facts(members=[me], peer_digests={})) == \
        ["has not heard from its seeds yet"]
    assert not_ready(_facts(members=[me], peer_digests={}, has_seeds=False)) == []


# ====================================================================== simulated


def test_a_simulated_node_is_ready_once_it_knows_its_cluster_and_not_while_a_peer_is_gone():
    with SimCluster(3, seed=5) as cl:
        for node in cl.nodes.values():
            node.boot()
        assert all("has not heard from its seeds yet" in cl.core(n).not_ready()
                   for n in cl.nodes)
        cl.run_until(lambda: not any(cl.core(n).not_ready() for n in cl.nodes), 60,
                     "every node ready")
        assert cl.client().put("k", 1) is not None

        cl.crash("n3")
        # Its connection is gone at once; the failure detector takes a while to agree.
        assert "no connection yet to n3" in cl.core("n1").not_ready()
        cl.run_until(lambda: not cl.core("n1").not_ready(), 60, "n1 ready without n3")
        cl.restart("n3")
        cl.run_until(lambda: not any(cl.core(n).not_ready() for n in cl.nodes), 60,
                     "every node ready again")


# ====================================================================== a node's readiness


def test_a_ready_cluster_says_so_in_status(cluster):
    cl = cluster(3)
    for name in cl.names:
        with cl.client(name) as c:
            status = c.status(node=cl.address(name))
        assert status["ready"] is True and status["not_ready"] == [], status["not_ready"]
        assert all(m["meaning"] == STATUS_MEANINGS[m["status"]] for m in status["members"])
    done = dynamo("status", "--node", cl.address("n1"))
    assert done.returncode == 0, done.stderr
    assert "ready: true" in done.stdout
    assert "MEMBERSHIP  the member's own record" in done.stdout  # the legend explains it


@pytest.fixture
def lonely_node(tmp_path: Path):
    """A node seeded with an address nothing listens on: it answers, but is not ready."""
    address = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [*CLI, "node", "--name", "lonely", "--listen", address, "--data-dir",
         str(tmp_path / "lonely"), "--seed", f"tcp://127.0.0.1:{free_port()}",
         "--log-level", "warning"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with Client(address, timeout=1.0) as c:
            wait_for(lambda: c.status(node=address), 30, "the node to answer")
        yield address
    finally:
        stop_process(proc)


def test_a_node_that_has_not_found_its_cluster_says_why_it_is_not_ready(lonely_node):
    with Client(lonely_node, timeout=2.0) as c:
        status = c.status(node=lonely_node)
    assert status["ready"] is False
    assert "has not heard from its seeds yet" in status["not_ready"]
    done = dynamo("status", "--node", lonely_node)
    assert "ready: false (" in done.stdout and "has not heard from its seeds" in done.stdout


# ====================================================================== dynamo wait


def test_dynamo_wait_returns_once_the_cluster_is_ready(cluster):
    cl = cluster(3)
    done = dynamo("wait", "--node", cl.address("n2"), "--nodes", "3", "--timeout", "60")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ready"


def test_dynamo_wait_times_out_with_the_reason(cluster, lonely_node):
    cl = cluster(3)
    done = dynamo("wait", "--node", cl.address("n1"), "--nodes", "4", "--timeout", "1")
    assert done.returncode == 1
    assert "not ready after 1s" in done.stderr and "sees 3 of 4 nodes" in done.stderr

    done = dynamo("wait", "--node", lonely_node, "--timeout", "1")
    assert done.returncode == 1
    assert "lonely is not ready" in done.stderr and "has not heard from its seeds" in \
        done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


# ====================================================================== dynamo cluster


def test_dynamo_cluster_says_ready_only_when_a_put_works_at_once(dynamo_cluster):
    rc = dynamo_cluster(nodes=3)
    # Straight after the line: no retries, no waiting for the ring or connections.
    with Client(rc.addresses, timeout=10.0) as c:
        c.put("first", "write")
        assert c.get("first").values == ["write"]
    lines = rc.lines
    ready_at = next(i for i, line in enumerate(lines) if line.startswith("cluster of 3"))
    for i, address in enumerate(rc.addresses, 1):
        at = next(j for j, line in enumerate(lines) if line.startswith(f"n{i} {address} "))
        assert lines[0].startswith("starting 3 nodes") and 0 < at < ready_at, rc.output


def test_dynamo_cluster_refuses_a_taken_port_before_creating_anything(tmp_path: Path):
    base = free_port_run(3)
    data_dir = tmp_path / "never-made"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 2))
        taken.listen()
        done = dynamo("cluster", "--nodes", "3", "--base-port", str(base),
                      "--data-dir", str(data_dir))
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"port {base + 2} for n2 is taken" in done.stderr
    assert "--base-port" in done.stderr
    assert not data_dir.exists()
    assert done.stdout == ""


def test_dynamo_cluster_restarts_a_killed_node_and_ctrl_c_stops_it_too(dynamo_cluster):
    rc = dynamo_cluster()
    before = rc.node_pids()
    os.kill(before["n2"], signal.SIGKILL)
    wait_for(lambda: "n2 exited with status -9; restarting in 1s (restart 1)" in rc.output,
             30, "the restart to be announced")
    wait_for(lambda: rc.node_pids()["n2"] != before["n2"], 30, "n2 to be started again")
    restarted = rc.node_pids()["n2"]
    with Client(rc.addresses[1], timeout=2.0) as c:
        wait_for(lambda: c.status(node=rc.addresses[1])["ready"], 60, "n2 to be ready again")

    rc.proc.send_signal(signal.SIGINT)
    rc.proc.wait(timeout=30)
    assert rc.proc.returncode == 0, rc.output
    for pid in (before["n1"], restarted):
        wait_for(lambda pid=pid: process_gone(pid), 10, f"node pid {pid} to exit")


def test_dynamo_cluster_no_restart_leaves_a_dead_node_dead(dynamo_cluster):
    rc = dynamo_cluster("--no-restart")
    pids = rc.node_pids()
    os.kill(pids["n2"], signal.SIGKILL)
    wait_for(lambda: "n2 exited with status -9; not restarted (--no-restart)" in rc.output,
             30, "the death to be reported")
    assert "To start it again with its data:" in rc.output and "--name n2" in rc.output
    time.sleep(2.5)  # longer than the first restart's wait: nothing may start meanwhile
    assert "started again" not in rc.output
    assert rc.proc.poll() is None  # n1 still runs, and so does the cluster
