"""The simulator: deterministic, faithful to production code, and able to find real bugs.

These tests run the real node cores on the simulated network and clock, so they take
fractions of a second for minutes of simulated time. The invariants are judged by the
history checker (:mod:`dynamo_core.sim.checker`), from the values clients wrote and read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from dynamo_core.coordinator import Coordinator, _GetOp
from dynamo_core.sim import FAULT_KINDS, SimCluster, Spec, check, shrink, simulate
from dynamo_core.sim.clients import CART_BUCKET, History
from dynamo_core.versions import Clock, Version, next_dot

ALL_FAULTS = frozenset(FAULT_KINDS)


# ====================================================================== determinism


def test_the_same_seed_gives_the_same_trace_byte_for_byte() -> None:
    spec = Spec(seed=11, ops=150, faults=ALL_FAULTS)
    first, second = simulate(spec), simulate(spec)
    assert first.trace_sha256 == second.trace_sha256
    assert first.to_json()["acknowledged"] == second.to_json()["acknowledged"]
    assert simulate(Spec(seed=12, ops=150, faults=ALL_FAULTS)).trace_sha256 != \
        first.trace_sha256


def test_the_trace_does_not_depend_on_the_interpreters_hash_seed() -> None:
    """A replay runs in another process, with other string hashes: set iteration order
    must never leak into what a node sends."""
    command = [sys.executable, "-m", "dynamo_core.cli", "sim", "--seed", "5", "--ops", "100",
               "--faults", "crash,partition,loss", "--json"]
    traces = set()
    for hash_seed in ("0", "1", "4242"):
        out = subprocess.run(command, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONHASHSEED": hash_seed}, check=True)
        traces.add(json.loads(out.stdout)["trace_sha256"])
    assert len(traces) == 1


# ====================================================================== invariants hold


@pytest.mark.parametrize("seed", range(1, 7))
def test_no_acknowledged_write_is_lost_under_every_kind_of_fault(seed: int) -> None:
    report = simulate(Spec(seed=seed, ops=300, faults=ALL_FAULTS))
    assert report.ok, "\n".join(report.verdict.findings())
    doc = report.to_json()
    assert doc["acknowledged"] > 100
    assert doc["converged_after"] is not None


def test_without_faults_every_write_is_acknowledged_and_replicas_converge_at_once() -> None:
    report = simulate(Spec(seed=3, ops=200))
    doc = report.to_json()
    assert report.ok, report.verdict.findings()
    attempted = [op for op in report.history.operations if op.kind != "get"]
    assert doc["acknowledged"] == len(attempted)
    assert doc["converged_after"] <= 5.0


@pytest.mark.parametrize("engine", ["memory", "diskcache"])
def test_the_real_storage_engines_run_in_the_simulator_too(engine: str) -> None:
    report = simulate(Spec(seed=2, ops=100, config={"storage": {"engine": engine}}))
    assert report.ok, report.verdict.findings()
    assert report.to_json()["acknowledged"] > 50


# ====================================================================== the checker


def _history(*ops: dict[str, Any]) -> History:
    history = History()
    for fields in ops:
        history.new(**{"client": "c1", "start": 0.0, "bucket": "default", "key": "k",
                       **fields})
    return history


def test_the_checker_finds_a_lost_cart_add_and_a_lost_put() -> None:
    history = _history(
        {"kind": "add", "bucket": CART_BUCKET, "value": "c1-1", "outcome": "ok"},
        {"kind": "add", "bucket": CART_BUCKET, "value": "c1-2", "outcome": "unknown"},
        {"kind": "put", "value": "a", "outcome": "ok"},
        {"kind": "put", "value": "b", "outcome": "ok", "seen": []})
    verdict = check(history, {(CART_BUCKET, "k"): [["c1-9"]], ("default", "k"): ["b"]})
    assert sorted(f.detail.split()[3] for f in verdict.lost) == ["'a'", "'c1-1'"]
    assert not verdict.ok


def test_a_value_read_by_a_later_write_that_survives_is_covered_not_lost() -> None:
    history = _history(
        {"kind": "put", "value": "a", "outcome": "ok"},
        {"kind": "put", "value": "b", "outcome": "unknown", "seen": ["a"]},
        {"kind": "put", "value": "c", "outcome": "ok", "seen": ["b"]})
    assert check(history, {("default", "k"): ["c"]}).ok


def test_the_checker_finds_a_deleted_value_that_came_back_and_duplicate_answers() -> None:
    history = _history(
        {"kind": "put", "value": "a", "outcome": "ok"},
        {"kind": "delete", "outcome": "ok", "seen": ["a"]})
    history.duplicate_answers = 2
    verdict = check(history, {("default", "k"): ["a"]})
    assert [f.kind for f in verdict.resurrected] == ["resurrected"]
    assert verdict.duplicates == 2 and not verdict.ok


# ====================================================================== finding real bugs


#: Seeds searched for a run that shows the bug; a few in ten do (11 and 18 here), which
#: ones depends on every detail of the trace.
BUG_HUNT_SEEDS = range(1, 21)


def _stale_merge_dots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 8's lost-cart-add bug, put back: the dot of a merge written back on read is
    the one the coordinator's replica suggested when the get *started*, not one issued when
    the merge is made; a put coordinated meanwhile takes the same dot."""
    start_get = Coordinator.start_get

    def stale_start_get(self: Coordinator, client: Any, plan: Any, now: float) -> list:
        effects = start_get(self, client, plan, now)
        op = next(reversed(self._ops.values()))
        versions, issued = self.dots.state(plan.bucket, plan.key)  # type: ignore[attr-defined]
        op.stale_dot = next_dot(self.actor, Clock.empty(), versions, issued)
        return effects

    def stale_merge(self: Coordinator, op: _GetOp, value: Any, context: Any, stamp: float,
                    tombstone: bool = False) -> Version | None:
        if self.name not in op.plan.homes or not hasattr(op, "stale_dot"):
            return None
        return Version(value, context.truncated(self.max_clock_entries, keep=self.actor),
                       op.stale_dot, stamp, tombstone)

    monkeypatch.setattr(Coordinator, "start_get", stale_start_get)
    monkeypatch.setattr(Coordinator, "_merged_version", stale_merge)


def test_the_simulator_finds_issue_8s_lost_cart_add_when_its_fix_is_reverted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _stale_merge_dots(monkeypatch)
    assert any(simulate(Spec(seed=seed, ops=400, clients=6)).verdict.lost
               for seed in BUG_HUNT_SEEDS), "the stale-dot bug went unnoticed"


def test_a_failure_shrinks_to_a_smaller_run_that_still_fails(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _stale_merge_dots(monkeypatch)
    spec = next(s for s in (Spec(seed=seed, ops=400, clients=6) for seed in BUG_HUNT_SEEDS)
                if not simulate(s).ok)
    smaller, report = shrink(spec, simulate(spec))
    assert not report.ok
    assert smaller.ops < spec.ops
    assert smaller.command().startswith(f"dynamo sim --seed {spec.seed} ")


# ====================================================================== the command


def test_dynamo_sim_prints_one_json_document_with_the_promised_fields() -> None:
    out = subprocess.run([sys.executable, "-m", "dynamo_core.cli", "sim", "--seed", "1",
                          "--ops", "50", "--faults", "crash", "--json"],
                         capture_output=True, text=True, timeout=120, check=True)
    doc = json.loads(out.stdout)
    for field in ("seed", "nodes", "ops", "acknowledged", "lost", "resurrected",
                  "duplicates", "converged_after", "sim_seconds", "wall_seconds",
                  "trace_sha256"):
        assert field in doc
    assert doc["seed"] == 1 and doc["ops"] == 50 and doc["lost"] == 0


def test_a_sweep_prints_a_summary_and_exits_zero_when_every_seed_holds() -> None:
    out = subprocess.run([sys.executable, "-m", "dynamo_core.cli", "sim", "--seeds", "1-3",
                          "--ops", "60", "--faults", "partition,skew"],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "passed" in out.stdout and "3/3 seeds" in out.stderr


def test_a_bad_fault_kind_is_a_usage_error_naming_the_known_ones() -> None:
    out = subprocess.run([sys.executable, "-m", "dynamo_core.cli", "sim", "--seed", "1",
                          "--faults", "meteor"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "meteor" in out.stderr and "partition" in out.stderr


# ====================================================================== the harness


def test_a_scripted_cluster_serves_reads_through_a_crash_and_converges_after() -> None:
    cluster = SimCluster(3, seed=1)
    cluster.start()
    client = cluster.client()
    client.put("alice", {"items": ["book"]})
    cluster.crash("n2")
    cluster.run(5.0)
    client.put("bob", 1)
    assert client.get("alice").values == [{"items": ["book"]}]
    cluster.restart("n2")
    keys = [("default", "alice"), ("default", "bob")]
    cluster.run_until(lambda: cluster.divergence(keys) is None, 30.0, "replicas to converge")
    assert cluster.core("n2").store.read("default", "bob")


# ====================================================================== bugs it found


def test_a_node_in_a_new_actor_epoch_counts_its_dots_from_one_and_clocks_stay_compact() -> None:
    """Found by the simulator (``dynamo sim --seed 3 --ops 2000 --faults wipe,crash`` before
    the fix): a node starting a new actor epoch counted its dots on from the key's old
    counter (the previous actor's), so its events stayed isolated dots that a clock never
    folds into a vector entry. Clocks grew with every write until truncation forgot events,
    and superseded values came back as siblings."""
    cluster = SimCluster(3, seed=2)
    cluster.start()
    client = cluster.client(via=["n1"])
    context = None
    for i in range(20):
        context = client.put("k", i, context, node="n1")
    cluster.crash("n1")
    cluster.restart("n1")  # kill -9 on an engine that does not sync each commit: new epoch
    cluster.run(3.0)  # it finds its peers again
    for i in range(150):
        context = client.put("k", 100 + i, context, node="n1")
    [version] = cluster.core("n1").store.read("default", "k")
    assert version.value == 249
    # one vector entry per actor that wrote the key: n1's two epochs (at most)
    assert len(version.history()) <= 3, version.history().to_wire()


def test_a_node_that_lost_its_storage_but_kept_its_identity_file_never_reuses_a_dot() -> None:
    """Riak's kv679: the data directory is empty (a replaced volume) but ``node.cbor``
    survived. Reusing the actor would reissue dots its old versions carry, and a blind put
    would then be swallowed by replicas whose clocks already cover that dot."""
    cluster = SimCluster(3, seed=4)
    cluster.start()
    client = cluster.client(via=["n1"])
    context = None
    for i in range(5):
        context = client.put("k", f"old-{i}", context, node="n1")
    cluster.crash("n1")
    cluster.disks.wipe("n1", keep_record=True)
    cluster.restart("n1")
    cluster.run(0.1)  # it knows its peers from node.cbor; anti-entropy has not refilled it
    client.put("k", "blind", node="n1")  # no context: a sibling of what is there
    keys = [("default", "k")]
    cluster.run_until(lambda: cluster.divergence(keys) is None, 60.0, "replicas to converge")
    values = client.get("k", node="n2").values
    assert "blind" in values, f"the acknowledged blind put is gone: {values}"
