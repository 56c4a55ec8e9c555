"""One simulated run: a cluster, its clients, the faults, the heal, and the verdict.

:func:`simulate` is the whole of it: boot ``nodes`` real node cores on the simulated network,
let ``clients`` run ``ops`` operations while faults of the chosen kinds come and go, heal
everything, wait for the replicas to converge, and hand the history and the replicas' final
contents to the :mod:`checker`. :func:`shrink` replays a failing run with fewer operations,
fewer clients and fewer fault kinds, down to the smallest that still fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..versions import Version, live, reconcile
from .checker import Verdict, check
from .clients import REGISTER_BUCKET, History, SimClient, Workload, cart_models
from .harness import SETTLE_SECONDS, SimCluster
from .node import SimNode

#: What a run can do to the cluster. ``wipe`` (at most once a run, so that no acknowledged
#: write can lose every copy by design) restarts a node on empty storage that kept only its
#: ``node.cbor``: the kv679 case, where a node must not reuse its actor.
FAULT_KINDS = ("partition", "crash", "loss", "skew", "disk", "wipe")
#: Virtual seconds within which replicas must converge once every fault healed.
CONVERGE_SECONDS = 120.0
#: How often convergence and the queue bounds are looked at, in virtual seconds.
CHECK_EVERY = 0.5
#: The longest the operations may take, in virtual seconds (a stuck run ends here).
OPS_DEADLINE = 3600.0

@dataclass(frozen=True)
class Spec:
    """What to simulate; a spec and its seed fix the run entirely."""

    seed: int
    nodes: int = 5
    clients: int = 4
    ops: int = 300
    faults: frozenset[str] = frozenset()
    #: keys of each kind (carts, registers) the clients share: fewer keys, more collisions
    keys: int = 2
    #: mean pause between two operations of one client, in seconds
    think: float = 0.005
    #: configuration overrides, as the TOML file's tables would give them
    config: Mapping[str, Any] = field(default_factory=dict)
    #: extra plugin objects every node loads (a test's recorder, say)
    plugins: tuple[object, ...] = ()

    def __post_init__(self) -> None:
        unknown = set(self.faults) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kind(s) {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(FAULT_KINDS)}")
        if self.nodes < 1 or self.clients < 1 or self.ops < 0 or self.keys < 1:
            raise ValueError("nodes, clients and keys must be at least 1, ops at least 0")
        if not self.think > 0:
            raise ValueError("the think time must be above 0")

    def command(self) -> str:
        """The command line that replays this run."""
        faults = f" --faults {','.join(sorted(self.faults))}" if self.faults else ""
        workload = "" if (self.keys, self.think) == (2, 0.005) else \
            f" --keys {self.keys} --think {self.think * 1000:g}"
        return (f"dynamo sim --seed {self.seed} --nodes {self.nodes} --clients "
                f"{self.clients} --ops {self.ops}{faults}{workload}")


@dataclass
class Report:
    spec: Spec
    verdict: Verdict
    converged_after: float | None
    sim_seconds: float
    wall_seconds: float
    #: the part of wall_seconds the clients' operations took
    ops_wall_seconds: float
    trace_sha256: str
    events: int
    messages: int
    faults_applied: list[str]
    bounds: dict[str, int]
    history: History
    log: list[str]

    @property
    def ok(self) -> bool:
        return self.verdict.ok

    def to_json(self) -> dict[str, Any]:
        v = self.verdict
        return {"seed": self.spec.seed, "nodes": self.spec.nodes,
                "clients": self.spec.clients, "ops": self.spec.ops,
                "faults": sorted(self.spec.faults), "acknowledged": v.acknowledged,
                "lost": len(v.lost), "resurrected": len(v.resurrected),
                "duplicates": v.duplicates, "converged_after": self.converged_after,
                "sim_seconds": round(self.sim_seconds, 3),
                "wall_seconds": round(self.wall_seconds, 3),
                "ops_per_wall_second": round(len(self.history.operations)
                                             / self.ops_wall_seconds, 1)
                if self.ops_wall_seconds else None,
                "trace_sha256": self.trace_sha256, "events": self.events,
                "messages": self.messages, "faults_applied": len(self.faults_applied),
                "bounds": self.bounds, "ok": self.ok, "findings": v.findings(),
                "replay": self.spec.command()}

    def key_history(self, bucket: str, key: str) -> list[str]:
        """The log lines that concern one key's operations, and every fault."""
        ids = {f"#{op.id} " for op in self.history.operations
               if op.bucket == bucket and op.key == key}
        return [line for line in self.log
                if any(i in line for i in ids) or "crashes" in line or "starts" in line
                or "fault" in line]


class Simulation:
    """A cluster of simulated nodes, its clients and its faults, on one virtual clock."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.cluster = SimCluster(spec.nodes, seed=spec.seed, config=spec.config,
                                  plugins=spec.plugins)
        self.world = self.cluster.world
        self.network = self.cluster.network
        self.disks = self.cluster.disks
        self.config = self.cluster.config
        self.nodes = self.cluster.nodes
        self.rng = self.world.rng
        self.history = History()
        self.workload = Workload(ops=spec.ops, cart_keys=spec.keys, register_keys=spec.keys,
                                 think=spec.think)
        self._ops_left = spec.ops
        self.carts = cart_models()
        self.clients = [SimClient(f"c{i}", self.world, self.network,
                                  [self.cluster.address(n) for n in self.nodes], self.history,
                                  self.workload, self._take_op, self.carts)
                        for i in range(1, spec.clients + 1)]
        self.faults_applied: list[str] = []
        self._heals: dict[int, Callable[[], None]] = {}
        self._base_conditions = replace(self.network.conditions)
        self._wiped = False
        #: loss faults active now: fault id -> (loss, duplication, jitter factor)
        self._lossy: dict[int, tuple[float, float, float]] = {}
        self._fault_ids = 0
        self.bounds: dict[str, int] = {"open_requests": 0, "tasks": 0, "calls": 0,
                                       "hints": 0}
        self.problems: list[str] = []
        #: wall-clock seconds the clients' operations took (settling and healing aside)
        self.ops_wall_seconds = 0.0

    # ------------------------------------------------------------------ the run

    def run(self) -> Report:
        try:
            return self._run()
        finally:
            self.cluster.close()

    def _run(self) -> Report:
        started = time.monotonic()
        self.cluster.start(SETTLE_SECONDS)
        for client in self.clients:
            client.start()
        if self.spec.faults:
            self._next_fault()
        self._watch()
        ops_started = time.monotonic()
        self.world.run_until(OPS_DEADLINE, stop=self._clients_done)
        self.ops_wall_seconds = time.monotonic() - ops_started
        if not self._clients_done():
            self.problems.append(f"the clients did not finish within {OPS_DEADLINE:g}s")
        self._heal_all()
        healed_at = self.world.now
        converged_after = self._await_convergence(healed_at)
        if converged_after is None:
            self.problems.append(f"replicas did not converge within {CONVERGE_SECONDS:g}s "
                                 f"of the heal: {self._divergence()}")
        self.problems.extend(f"client {c.name} crashed: {c.crashed}" for c in self.clients
                             if c.crashed)
        verdict = check(self.history, self.final_state(), self.problems, self.carts)
        return Report(self.spec, verdict, converged_after, self.world.now,
                      time.monotonic() - started, self.ops_wall_seconds,
                      self.world.trace_sha256(), self.world.events, self.network.delivered,
                      self.faults_applied, self.bounds, self.history, self.world.log)

    def _take_op(self) -> bool:
        if self._ops_left <= 0:
            return False
        self._ops_left -= 1
        return True

    def _clients_done(self) -> bool:
        return all(client.done for client in self.clients)

    # ------------------------------------------------------------------ faults

    def _next_fault(self) -> None:
        self.world.after(self.rng.uniform(0.05, 0.5), self._inject)

    def _inject(self) -> None:
        if self._clients_done():
            return
        kind = self.rng.choice(sorted(self.spec.faults))
        heal = getattr(self, f"_fault_{kind}")()
        if heal is not None:
            self._fault_ids += 1
            fault_id = self._fault_ids
            self._heals[fault_id] = heal
            self.world.after(self.rng.uniform(0.1, 2.0), lambda: self._heal(fault_id))
        self._next_fault()

    def _heal(self, fault_id: int) -> None:
        heal = self._heals.pop(fault_id, None)
        if heal is not None:
            heal()

    def _heal_all(self) -> None:
        for fault_id in sorted(self._heals):
            self._heal(fault_id)
        self.world.note("fault: every fault healed")

    def _applied(self, text: str) -> None:
        self.faults_applied.append(text)
        self.world.note(f"fault: {text}")

    def _up(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.up]

    def _fault_crash(self) -> Callable[[], None] | None:
        down = len(self.nodes) - len(self._up())
        if down >= (len(self.nodes) - 1) // 2 or not self._up():
            return None
        node = self.rng.choice(self._up())
        clean = self.rng.random() < 0.3
        if clean:
            node.stop()
        else:
            node.crash()
        self._applied(f"{node.name} {'stopped' if clean else 'crashed'}")
        return self._restarter(node)

    def _fault_wipe(self) -> Callable[[], None] | None:
        if self._wiped or not self._up():
            return None
        self._wiped = True
        node = self.rng.choice(self._up())
        node.crash()
        self.disks.wipe(node.name, keep_record=True)
        self._applied(f"{node.name} crashed and lost its data (node.cbor kept)")
        return self._restarter(node)

    def _restarter(self, node: SimNode) -> Callable[[], None]:
        """The heal of a node that went down: start it again, and while it cannot start (its
        disk fails), try again a second later, as an operator or supervisor would."""
        def restart() -> None:
            if node.up:
                return
            if node.boot():
                self._applied(f"{node.name} restarted")
            else:
                self.world.after(1.0, restart)
        return restart

    def _fault_partition(self) -> Callable[[], None]:
        names = sorted(self.nodes)
        self.rng.shuffle(names)
        split = self.rng.randrange(1, len(names)) if len(names) > 1 else 1
        sides = [names[:split], names[split:]]
        for client in self.clients:
            sides[self.rng.randrange(2)].append(client.name)
        one_way = self.rng.random() < 0.3
        cut = {(a, b) for a in sides[0] for b in sides[1]}
        if not one_way:
            cut |= {(b, a) for a, b in cut}
        fresh = cut - self.network.conditions.cut
        self.network.conditions.cut |= fresh
        self._applied(f"partition {sorted(sides[0])} {'->' if one_way else '|'} "
                      f"{sorted(sides[1])}")

        def heal() -> None:
            self.network.conditions.cut -= fresh
            self._applied("partition healed")
        return heal

    def _fault_loss(self) -> Callable[[], None]:
        c = self.network.conditions
        self._lossy[self._fault_ids + 1] = (self.rng.uniform(0.02, 0.3),
                                            self.rng.uniform(0.0, 0.1),
                                            self.rng.uniform(1.0, 20.0))
        self._apply_loss()
        self._applied(f"loss {c.loss:.2f}, duplication {c.duplicate:.2f}, jitter "
                      f"{c.jitter * 1000:.1f}ms")
        fault_id = self._fault_ids + 1

        def heal() -> None:
            del self._lossy[fault_id]
            self._apply_loss()
            self._applied("loss healed" if not self._lossy else "one loss fault healed")
        return heal

    def _apply_loss(self) -> None:
        """The network's conditions are those of the worst loss fault still active."""
        c, base = self.network.conditions, self._base_conditions
        c.loss = max([base.loss, *(f[0] for f in self._lossy.values())])
        c.duplicate = max([base.duplicate, *(f[1] for f in self._lossy.values())])
        c.jitter = base.jitter * max([1.0, *(f[2] for f in self._lossy.values())])

    def _fault_skew(self) -> Callable[[], None]:
        node = self.rng.choice(sorted(self.nodes.values(), key=lambda n: n.name))
        skew = self.rng.choice((-1, 1)) * self.rng.uniform(0.05, 1.5)
        node.skew += skew
        self._applied(f"{node.name}'s clock skewed by {skew:+.3f}s")

        def heal() -> None:
            node.skew -= skew
            self._applied(f"{node.name}'s clock set back by {-skew:+.3f}s")
        return heal

    def _fault_disk(self) -> Callable[[], None] | None:
        node = self.rng.choice(sorted(self.nodes))
        if node in self.disks.failing:
            return None
        self.disks.failing.add(node)
        self._applied(f"{node}'s disk fails writes")

        def heal() -> None:
            self.disks.failing.discard(node)
            self._applied(f"{node}'s disk mended")
        return heal

    # ------------------------------------------------------------------ bounds

    def _watch(self) -> None:
        """Sample the queues every CHECK_EVERY seconds; any past its bound is a problem."""
        for node in self._up():
            core = node.core
            assert core is not None
            sample = {"open_requests": core.coordinator.pending(),
                      "tasks": len(core.tasks.tasks), "calls": len(core._calls),
                      "hints": core.hints.pending()}
            for name, value in sample.items():
                self.bounds[name] = max(self.bounds[name], value)
            if sample["open_requests"] > self.config.max_pending_requests:
                self.problems.append(f"{node.name} holds {sample['open_requests']} open "
                                     f"requests, past its bound")
        self.world.after(CHECK_EVERY, self._watch)

    # ------------------------------------------------------------------ convergence

    def _keys(self) -> list[tuple[str, str]]:
        w = self.workload
        return [*((model.bucket, f"cart{i}") for model in self.carts
                  for i in range(w.cart_keys)),
                *((REGISTER_BUCKET, f"reg{i}") for i in range(w.register_keys))]

    def _divergence(self) -> str | None:
        return self.cluster.divergence(self._keys())

    def _await_convergence(self, since: float) -> float | None:
        while self.world.now - since <= CONVERGE_SECONDS:
            if self._divergence() is None:
                return round(self.world.now - since, 3)
            self.world.run_until(self.world.now + CHECK_EVERY)
        return None

    def final_state(self) -> dict[tuple[str, str], list[Any]]:
        """Every key's live values, reconciled over every copy any node holds."""
        final = {}
        for bucket, key in self._keys():
            versions: list[Version] = []
            for node in self._up():
                assert node.core is not None
                versions.extend(node.core.store.read(bucket, key))
                for hinted in node.core.hints.for_key(bucket, key).values():
                    versions.extend(hinted)
            final[(bucket, key)] = [v.value for v in live(reconcile(versions))]
        return final


def simulate(spec: Spec) -> Report:
    """Run one simulation and judge it."""
    return Simulation(spec).run()


def shrink(spec: Spec, report: Report, fails: Callable[[Report], bool] | None = None,
           budget: int = 24) -> tuple[Spec, Report]:
    """The smallest run found that still fails: fewer operations, clients, fault kinds.

    Each candidate is a full replay (same seed): deterministic, so a candidate that fails
    once fails every time. At most ``budget`` replays.
    """
    fails = fails or (lambda r: not r.ok)
    best, best_report = spec, report
    tries = 0

    def attempt(candidate: Spec) -> bool:
        nonlocal best, best_report, tries
        if tries >= budget:
            return False
        tries += 1
        result = simulate(candidate)
        if fails(result):
            best, best_report = candidate, result
            return True
        return False

    # Fewer operations replay the same run up to where the clients stop, so the failure
    # stays once enough operations ran: bisect for that point.
    passing = 0
    while best.ops - passing > max(1, best.ops // 32):
        middle = (passing + best.ops) // 2
        if not attempt(replace(best, ops=middle)):
            if tries >= budget:
                break
            passing = middle
    for kind in sorted(best.faults):
        attempt(replace(best, faults=best.faults - {kind}))
    while best.clients > 1 and attempt(replace(best, clients=best.clients - 1)):
        pass
    return best, best_report


def parse_seeds(text: str) -> Sequence[int]:
    """``"7"`` or ``"1-200"``: the seeds of a sweep."""
    first, dash, last = text.partition("-")
    try:
        low, high = int(first), int(last) if dash else int(first)
    except ValueError:
        raise ValueError(f"seeds are a number or a range like 1-200, got {text!r}") from None
    if high < low:
        raise ValueError(f"seed range {text!r} is empty")
    return range(low, high + 1)
