"""`dynamo join/leave/remove --wait`: a membership change followed to its end, with its
progress as plain lines when stderr is not a terminal."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
from conftest import Cluster, status, wait_for
from test_membership_changes import start_without_seeds

from dynamo_core import config as config_mod
from dynamo_core.core import NodeCore
from dynamo_core.progress import ProgressLine
from dynamo_core.wire import Codec

pytestmark = [pytest.mark.timeout(180), pytest.mark.cluster]

FAST = {"anti_entropy": {"interval": 0.1}}


def dynamo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dynamo_core.cli", *args],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)


def test_join_leave_and_remove_wait_for_their_end_and_show_plain_progress(cluster) -> None:
    cl: Cluster = cluster(3, config=FAST)
    with cl.client() as c:
        for i in range(200):
            c.put(f"k{i}", i)
    start_without_seeds(cl, "n4")

    joined = dynamo("join", "--node", cl.address("n4"), "--seed", cl.address("n1"), "--wait")
    assert joined.returncode == 0, joined.stderr
    assert "n4 joined: it is up and its ranges are filled" in joined.stdout
    assert "\x1b" not in joined.stderr and "dynamo join: done" in joined.stderr
    n4 = status(cl, "n4")
    assert n4["anti_entropy"]["ranges_filling"] == 0
    assert {m["name"]: m["status"] for m in n4["members"]}["n4"] == "up"

    left = dynamo("leave", "--node", cl.address("n4"), "--wait")
    assert left.returncode == 0, left.stderr
    assert "n4 left: it handed its ranges over and exited" in left.stdout
    assert cl.nodes["n4"].proc is not None and cl.nodes["n4"].proc.wait(timeout=30) == 0

    cl.kill("n3")
    removed = dynamo("remove", "n3", "--node", cl.address("n1"), "--wait")
    assert removed.returncode == 0, removed.stderr
    assert "n3 removed: its ranges are rebuilt" in removed.stdout
    for name in ("n1", "n2"):
        assert {m["name"]: m["status"] for m in status(cl, name)["members"]}["n3"] == "removed"
    with cl.client("n1", "n2") as c:
        assert [c.get(f"k{i}").values for i in range(0, 200, 20)] == \
            [[i] for i in range(0, 200, 20)]


def test_a_wait_that_runs_out_of_time_says_what_was_not_done(cluster) -> None:
    # No anti-entropy rounds: a leaving node never gets to hand its keys over.
    cl: Cluster = cluster(2, config={"anti_entropy": {"interval": 1e6}}, ready=False)
    with cl.client() as c:
        c.put("k", 1)
    result = dynamo("leave", "--node", cl.address("n2"), "--wait", "--wait-timeout", "2")
    assert result.returncode == 1
    assert "the leave of n2 was not done when --wait-timeout ran out" in result.stderr
    assert "keys and hints handed over" in result.stderr  # its progress, meanwhile


class _Terminal:
    def __init__(self) -> None:
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


def test_a_progress_line_is_a_bar_on_a_terminal_and_sparse_plain_lines_in_a_log() -> None:
    clock = [0.0]
    terminal = _Terminal()
    line = ProgressLine("dynamo leave", terminal, clock=lambda: clock[0])  # type: ignore[arg-type]
    line.update(3, 12, "keys left")
    assert "\r\x1b[Kdynamo leave [######------------------] 3/12" in terminal.text
    log = _Terminal()
    log.isatty = lambda: False  # type: ignore[method-assign]
    line = ProgressLine("dynamo leave", log, plain_every=10, clock=lambda: clock[0])  # type: ignore[arg-type]
    for t in range(25):
        clock[0] = float(t)
        line.update(t, 25, "keys left")
    line.finish("done")
    lines = log.text.splitlines()
    assert lines == ["dynamo leave: 0/25 keys left (0s)", "dynamo leave: 10/25 keys left (10s)",
                     "dynamo leave: 20/25 keys left (20s)", "dynamo leave: done (24s)"]


def test_a_node_told_to_join_is_joining_until_its_ranges_are_filled(cluster) -> None:
    """A node started alone is "up" in a ring of its own; told to join a cluster it is a
    newcomer, whose "not found" must not count until anti-entropy filled its ranges. With no
    anti-entropy rounds it stays joining, its ranges filling."""
    cl: Cluster = cluster(3, config={"anti_entropy": {"interval": 1e6}}, ready=False)
    start_without_seeds(cl, "n4")
    joined = dynamo("join", "--node", cl.address("n4"), "--seed", cl.address("n1"))
    assert joined.returncode == 0, joined.stderr
    def knows_the_cluster() -> dict | None:
        n4 = status(cl, "n4")
        return n4 if len(n4["members"]) == 4 else None

    n4 = wait_for(knows_the_cluster, 15, "n4 to learn the cluster")
    assert {m["name"]: m["status"] for m in n4["members"]}["n4"] == "joining"
    assert n4["anti_entropy"]["ranges_filling"] > 0


def lone_node(seeds: tuple[str, ...] = ()) -> NodeCore:
    """A node core no frame ever reaches, anti-entropy rounds every 0.1 s."""
    config = config_mod.from_mapping({"storage": {"engine": "memory"},
                                      "anti_entropy": {"interval": 0.1}})
    core = NodeCore("n4", "tcp://n4.test:1", config=config, rng=random.Random(4),
                    wall_clock=lambda: 1_800_000_000.0, seeds=seeds)
    core.start(0.0)
    return core


def run_timers(core: NodeCore, start: float, until: float) -> dict:
    """Fire every timer from ``start`` to ``until``; this node's own member record."""
    now = start
    while now < until:
        now = max(core.next_timer() or now + 0.1, now + 0.01)
        core.handle_timer(now)
    return next(m for m in core.status_document()["members"] if m["name"] == "n4")


def test_told_to_join_a_node_alone_stays_joining_until_it_hears_from_the_cluster() -> None:
    """Alone (the seed has not answered yet), its ranges have nobody to be compared with:
    they must not count as filled meanwhile, or it would be up and empty once it learns
    the cluster. Anti-entropy rounds run (timers fire) but no frame ever arrives."""
    core = lone_node()
    core.receive(b"client", [Codec().encode("join", {"seed": "tcp://n1.test:1"}, 1)], 0.1)
    assert run_timers(core, 0.1, 3.0)["status"] == "joining"
    assert core.status_document()["anti_entropy"]["ranges_filling"] > 0
    core.close()


def test_a_node_whose_seeds_never_answer_stays_joining() -> None:
    """Started with a seed, a node's ranges may be held by a cluster it has not heard from:
    however many anti-entropy rounds run alone, it is not up."""
    core = lone_node(seeds=("tcp://n1.test:1",))
    assert run_timers(core, 0.0, 3.0)["status"] == "joining"
    core.close()


def test_wait_drained_follows_the_hints_for_a_returned_node_until_all_are_delivered(
        cluster) -> None:
    cl: Cluster = cluster(4)
    cl.kill("n4")
    with cl.client("n1", "n2", "n3") as c:
        for i in range(60):
            c.put(f"h{i}", i)
    held = sum(status(cl, n)["hints_pending"] for n in ("n1", "n2", "n3"))
    assert held > 0, "no stand-in held a hint for n4"
    cl.restart("n4", wait=False)  # the command waits: for readiness, then for the hints
    result = dynamo("wait", "--node", cl.address("n1"), "--drained", "--timeout", "60")
    assert result.returncode == 0, result.stderr
    assert "every hint is delivered" in result.stdout
    assert sum(status(cl, n)["hints_pending"] for n in cl.names) == 0
