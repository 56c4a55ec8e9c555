"""Load balancing of the three partition strategies against the size of the membership metadata.

This redoes the comparison of the Dynamo paper's section 6.2 (Figure 8: "comparison of the load
distribution efficiency of different strategies for system with 30 nodes and N=3 with equal
amount of metadata maintained at each node") with this project's own strategy plugins, picked by
name through the plugin manager exactly as a node picks them, and its own :class:`Ring`.

What it measures
    **Load-balancing efficiency** = mean load / max load over the S nodes (the paper's ratio
    of the average node's requests to the hottest node's). 1.0 is perfect balance.

    A node's **load** is the fraction of the hash space for which it is one of the N replicas:
    the sum of the spans of the ring's ranges (``Ring.ranges()``: the token ranges under
    strategy 1, the Q equal partitions under strategies 2 and 3) whose N-long preference list
    contains the node. It is computed exactly with integer arithmetic over the 128-bit space,
    not by sampling keys (the ring is asked for one preference list per token a range ends
    before, which is the same as one per range, and cheaper). Random strategies (1 and 2)
    are averaged over ``--seeds`` token
    draws; strategy 3 is a pure function of the member records (here: names, joined in
    name order), so each seed gives it a different set of names instead. The table also
    shows the worst seed.

Metadata size, in tokens (ring positions with owners that the membership must hold)
    * strategy 1: S·T (every node knows every node's T tokens);
    * strategy 2: S·T as well. Its Q partition boundaries follow from the one constant Q
      (``partition_ends(Q)``), so they need no storage and are not counted; counting them
      would shift strategy 2's points right by Q;
    * strategy 3: Q (the partition -> owner table, the paper's measure). In this project a
      node actually gossips only the S member records and derives the table, but the table
      is what it holds, and Q is what the paper counts.

    The sweep gives all strategies the same sizes: T in {1, 2, 4, ..., 256} for strategies 1
    and 2, and Q = S·T for strategy 3 (Q above the ring's MAX_PARTITIONS is skipped).

    Strategy 2 is drawn once per Q in ``--s2-partitions``: by default the plugin's own default
    Q (what a node runs unless configured otherwise; 1024) and MAX_PARTITIONS (65536). The
    paper asks for Q >> S·T; 65536 keeps that for every T of the default sweep (8.5x at
    T=256, S=30), while the default Q is overtaken once S·T passes it, which is the regime the
    paper's strategy-2 curve shows falling off. Strategy 2 reuses strategy 1's tokens for the
    same seed, so the two differ only by the partitioning.

How this differs from the paper
    The paper measured the requests served by each node of a live system (skewed keys,
    request routing, N replicas). This measures the key space each node replicates, exactly,
    for uniformly spread keys: it isolates the effect of the placement itself. It counts a
    replica's share whether or not it coordinates, and all nodes have capacity 1.

What the default run shows (seeds 0-4; S=30, N=3)
    Strategy 3 is best at every size (0.980 at 7680 tokens, 1.0 at Q=S, dipping to
    0.84-0.90 around Q=2S-8S, where a member's few partitions often sit next to each other
    and it replicates fewer of them). Strategy 1 climbs from about 0.45 (T=1, 2) to 0.93
    (T=256).
    Strategy 2
    with Q >> S·T is strategy 1 to three decimals: equal partitions change nothing while they
    are much finer than the token ranges. With the plugin's default Q=1024 it falls behind
    once S·T passes Q (0.85 at 1920 tokens, 0.88 at 7680 against strategy 1's 0.87 and 0.93),
    and it is the worst line at the largest size, as in the paper's Figure 8.

Run ``python examples/load_balancing.py`` (about 5 s on two cores; ``--quick`` takes about
two seconds). It prints a table and a verdict and saves a PNG (``--out``).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from dynamo_core.hookspecs import MemberInfo, PartitionStrategy
from dynamo_core.plugins import Registry, make_plugin_manager
from dynamo_core.ring import MAX_PARTITIONS, RING_SIZE, Ring

STRATEGY_1, STRATEGY_2, STRATEGY_3 = "strategy-1", "strategy-2", "strategy-3"
#: T values of the default sweep, and of --quick
TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
QUICK_TOKENS = (1, 4, 16)
#: strategy 2's "Q >> S·T" line in --quick (kept small so the quick run stays quick)
QUICK_LARGE_Q = 8192
#: efficiencies closer than this are reported as a tie
TIE = 0.005


@dataclass(frozen=True)
class Setting:
    """One point of the sweep: a strategy, its options, and the metadata they cost."""

    strategy: str
    tokens: int | None  # T, strategies 1 and 2
    partitions: int | None  # Q, strategies 2 and 3
    metadata: int

    @property
    def line(self) -> str:
        """The plot line (and summary name) this point belongs to."""
        if self.strategy == STRATEGY_2:
            return f"{STRATEGY_2} (Q={self.partitions})"
        return self.strategy

    def options(self) -> dict[str, Any]:
        """The ``[partitioning]`` table a node would be configured with."""
        options: dict[str, Any] = {"strategy": self.strategy}
        if self.tokens is not None:
            options["tokens_per_capacity"] = self.tokens
        if self.partitions is not None:
            options["partitions"] = self.partitions
        return options


@dataclass(frozen=True)
class Result:
    setting: Setting
    efficiencies: tuple[float, ...]  # one per seed

    @property
    def mean(self) -> float:
        return statistics.fmean(self.efficiencies)

    @property
    def worst(self) -> float:
        return min(self.efficiencies)


# ------------------------------------------------------------------------------- measuring


def node_loads(ring: Ring, n: int, members: Iterable[str] = ()) -> dict[str, int]:
    """Hash values each node replicates: spans of the ranges whose preference list holds it.

    ``members`` adds nodes holding no part of the ring (a load of 0 still counts in the mean).
    """
    loads = dict.fromkeys(sorted({*ring.nodes, *members}), 0)
    # A range's keys go to the first token at or after its end (the ring's rule), so ranges
    # ending before the same token share one preference list: ask the ring once per token,
    # not once per partition (strategy 2 has up to 65536 partitions on a few hundred tokens).
    tokens = sorted(t for node in ring.nodes for t in ring.tokens_of(node))
    asked: dict[int, list[str]] = {}
    for start, end in ring.ranges():
        span = (end - start) % RING_SIZE or RING_SIZE  # start == end: the whole ring
        slot = bisect_left(tokens, end)
        preference = asked.get(slot)
        if preference is None:
            preference = asked[slot] = ring.preference_list(end, n)
        for node in preference:
            loads[node] += span
    return loads


def efficiency(loads: dict[str, int]) -> float:
    """Mean load over max load (1.0 is perfect balance)."""
    return statistics.fmean(loads.values()) / max(loads.values())


def build_ring(strategy: PartitionStrategy, options: dict[str, Any], nodes: int,
               seed: int) -> tuple[Ring, list[str]]:
    """The ring S unit-capacity members make, the way Membership builds it, and their names."""
    rng = random.Random(seed)
    names = [f"s{seed}-n{i:02d}" if _names_matter(options) else f"n{i:02d}"
             for i in range(nodes)]
    members = [MemberInfo(name, 1, tuple(strategy.initial_tokens(name, 1, options, rng)))
               for name in names]
    ring = Ring(strategy.ring_tokens(members, options), strategy.partition_count(options))
    return ring, names


def _names_matter(options: dict[str, Any]) -> bool:
    # Strategy 3 is a function of the names only: vary them per seed. Strategies 1 and 2
    # keep fixed names so that one seed draws the same tokens for both.
    return options["strategy"] == STRATEGY_3


_REGISTRY: Registry | None = None


def _registry() -> Registry:
    """One plugin registry per process (worker processes build their own)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry(make_plugin_manager())
    return _REGISTRY


def measure(setting: Setting, nodes: int, replicas: int, seed: int) -> float:
    """Efficiency of one setting for one seed, through the real plugin and ring."""
    options = setting.options()
    strategy = _registry().partition_strategy(setting.strategy)
    ring, names = build_ring(strategy, options, nodes, seed)
    return efficiency(node_loads(ring, replicas, names))


def _measure_task(task: tuple[Setting, int, int, int]) -> float:
    return measure(*task)


# ------------------------------------------------------------------------------- the sweep


def sweep(nodes: int, tokens: Sequence[int], s2_partitions: Sequence[int]) -> list[Setting]:
    """Settings of equal metadata sizes: S·T tokens for strategies 1 and 2, Q = S·T for 3."""
    settings = [Setting(STRATEGY_1, t, None, nodes * t) for t in tokens]
    for q in s2_partitions:
        settings += [Setting(STRATEGY_2, t, q, nodes * t) for t in tokens]
    settings += [Setting(STRATEGY_3, None, nodes * t, nodes * t) for t in tokens
                 if nodes * t <= MAX_PARTITIONS]
    return settings


def run(settings: Sequence[Setting], nodes: int, replicas: int, seeds: Sequence[int],
        jobs: int) -> list[Result]:
    tasks = [(s, nodes, replicas, seed) for s in settings for seed in seeds]
    # Costliest first so that the pool's workers finish together.
    order = sorted(range(len(tasks)), key=lambda i: -_cost(tasks[i][0], nodes))
    values: list[float] = [0.0] * len(tasks)
    if jobs <= 1:
        for i in order:
            values[i] = _measure_task(tasks[i])
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for i, value in zip(order, pool.map(_measure_task, [tasks[i] for i in order]),
                                strict=True):
                values[i] = value
    per_seed = len(seeds)
    return [Result(s, tuple(values[k * per_seed:(k + 1) * per_seed]))
            for k, s in enumerate(settings)]


def _cost(setting: Setting, nodes: int) -> int:
    """Rough relative cost: one preference list per range, plus strategy 3's replay of the
    S joins (a few passes over the Q partitions)."""
    ranges = setting.partitions or setting.metadata
    return ranges + (4 * ranges if setting.strategy == STRATEGY_3 else 0)


# ------------------------------------------------------------------------------- reporting


def table(results: Iterable[Result], seeds: int) -> str:
    header = (f"{'strategy':<12}{'T':>5}{'Q':>7}{'metadata':>10}{'efficiency':>12}"
              f"{'worst':>8}")
    lines = [header, "-" * len(header)]
    for r in results:
        s = r.setting
        lines.append(f"{s.strategy:<12}{_or_dash(s.tokens):>5}{_or_dash(s.partitions):>7}"
                     f"{s.metadata:>10}{r.mean:>12.3f}{r.worst:>8.3f}")
    lines.append(f"(metadata in tokens; efficiency = mean/max replica load, mean of {seeds} "
                 f"seed{'s' if seeds != 1 else ''}; worst = lowest seed)")
    return "\n".join(lines)


def _or_dash(value: int | None) -> str:
    return "-" if value is None else str(value)


def by_line(results: Iterable[Result]) -> dict[str, list[Result]]:
    lines: dict[str, list[Result]] = {}
    for r in results:
        lines.setdefault(r.setting.line, []).append(r)
    return lines


def verdict(results: Sequence[Result]) -> list[str]:
    """Which line is best at the largest metadata size all lines share, and the paper's view."""
    lines = by_line(results)
    shared = set.intersection(*({r.setting.metadata for r in rs} for rs in lines.values()))
    if not shared:
        return ["no metadata size is shared by every strategy: nothing to compare"]
    size = max(shared)
    at = {name: next(r.mean for r in rs if r.setting.metadata == size)
          for name, rs in lines.items()}
    ranked = sorted(at, key=lambda name: -at[name])
    figures = ", ".join(f"{name} {at[name]:.3f}" for name in ranked)
    # Lines within TIE of the best (of the worst) share that place.
    best = [name for name in ranked if at[ranked[0]] - at[name] < TIE]
    worst = [name for name in ranked if at[name] - at[ranked[-1]] < TIE and name not in best]
    s3_best = best == [STRATEGY_3]
    s2_worst = bool(worst) and all(name.startswith(STRATEGY_2) for name in worst)
    agreement = ("agrees with the paper" if s3_best and s2_worst
                 else "partly agrees with the paper" if s3_best or s2_worst
                 else "differs from the paper")
    return [
        f"At the largest comparable metadata size ({size} tokens): {figures}.",
        (f"Best: {_places(best)}; worst: {_places(worst) if worst else '-'}. The paper "
         f"(Figure 8) found strategy 3 best and strategy 2 worst, strategy 1 in between: "
         f"this run {agreement}."),
    ]


def _places(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names)} (tied within {TIE})"


def plot(results: Sequence[Result], path: str, nodes: int, replicas: int, seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    # Strategy 2 with Q >> S·T retraces strategy 1: draw strategy 1 wide and strategy 2
    # dashed on top, so that both stay visible where they coincide.
    styles: dict[str, dict[str, Any]] = {
        STRATEGY_1: {"marker": "o", "linewidth": 4, "markersize": 9, "alpha": 0.5},
        STRATEGY_2: {"marker": "s", "linestyle": "--", "markerfacecolor": "none"},
        STRATEGY_3: {"marker": "^"},
    }
    for name, rs in by_line(results).items():
        rs = sorted(rs, key=lambda r: r.setting.metadata)
        ax.plot([r.setting.metadata for r in rs], [r.mean for r in rs], label=name,
                **styles[rs[0].setting.strategy])
    ax.set_xscale("log")
    ax.set_xlabel("metadata size (tokens)")
    ax.set_ylabel("load-balancing efficiency")
    ax.set_ylim(top=1.01)
    ax.set_title(f"Load-balancing efficiency of the partition strategies\n"
                 f"S={nodes} nodes, N={replicas} (replica key-space load, mean of {seeds} "
                 f"seed{'s' if seeds != 1 else ''})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------- command line


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare the load-balancing efficiency of partition strategies 1, 2 and 3 "
                    "against membership metadata size (Dynamo paper, section 6.2, Figure 8).")
    parser.add_argument("--nodes", "-S", type=int, default=30, help="S, nodes (default 30)")
    parser.add_argument("--replicas", "-N", type=int, default=3, help="N, replicas (default 3)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="seeds to average over (default 5, 2 with --quick)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are consecutive from it")
    parser.add_argument("--tokens", type=_int_list, default=None,
                        help="T values, comma-separated (default 1,2,4,...,256; 1,4,16 quick)")
    parser.add_argument("--s2-partitions", type=_int_list, default=None,
                        help="strategy 2's Q values, comma-separated (default: the plugin's "
                             f"default and {MAX_PARTITIONS}; {QUICK_LARGE_Q} with --quick)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="worker processes (default: CPU count; 1 with --quick)")
    parser.add_argument("--out", default="load_balancing.png", help="PNG to write")
    parser.add_argument("--quick", action="store_true", help="fewer points, for tests")
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.replicas < 1:
        parser.error("--nodes and --replicas must be at least 1")
    if args.seeds is not None and args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.s2_partitions and max(args.s2_partitions) > MAX_PARTITIONS:
        parser.error(f"--s2-partitions: the ring allows at most {MAX_PARTITIONS}")
    return args


def require_matplotlib() -> None:
    """Say what to install before the sweep's minutes of work, not after them."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        sys.exit("load_balancing.py draws its plot with matplotlib, which is not installed: "
                 "python -m pip install -e '.[examples]' (from the repository root)")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    require_matplotlib()
    started = time.perf_counter()
    seeds = range(args.first_seed,
                  args.first_seed + (args.seeds or (2 if args.quick else 5)))
    tokens = args.tokens or (QUICK_TOKENS if args.quick else TOKENS)
    s2_partitions = args.s2_partitions or [
        _registry().partition_strategy(STRATEGY_2).partition_count({}),
        QUICK_LARGE_Q if args.quick else MAX_PARTITIONS]
    jobs = args.jobs or (1 if args.quick else os.cpu_count() or 1)

    settings = sweep(args.nodes, tokens, sorted(set(s2_partitions)))
    results = run(settings, args.nodes, args.replicas, list(seeds), jobs)

    print(f"Load-balancing efficiency, S={args.nodes} nodes, N={args.replicas}, "
          f"seeds {seeds.start}..{seeds.stop - 1}")
    print(table(results, len(seeds)))
    for line in verdict(results):
        print(line)
    plot(results, args.out, args.nodes, args.replicas, len(seeds))
    print(f"plot saved to {args.out} ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
