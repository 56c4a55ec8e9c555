"""``dynamo sim``: one seeded simulation, or a sweep of seeds, and what the checker found.

One seed prints the verdict (``--json``: one document); a failure is shrunk to the smallest
run that still fails, whose history of the broken key and replay command are printed. A
sweep (``--seeds 1-200``) shows a progress bar, then a summary table; the exit status is 1
when any seed broke an invariant.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, TextIO

from .run import Report, Spec, parse_seeds, shrink, simulate

#: Log lines of the minimal failing run printed with its verdict.
TRACE_LINES = 60


@dataclass(frozen=True)
class Options:
    seeds: Sequence[int]
    nodes: int
    clients: int
    ops: int
    faults: frozenset[str]
    keys: int
    think: float
    engine: str | None
    json: bool
    shrink: bool
    jobs: int

    def spec(self, seed: int) -> Spec:
        config = {"storage": {"engine": self.engine}} if self.engine else {}
        return Spec(seed=seed, nodes=self.nodes, clients=self.clients, ops=self.ops,
                    faults=self.faults, keys=self.keys, think=self.think / 1000,
                    config=config)


def parse_faults(text: str) -> frozenset[str]:
    return frozenset(f.strip() for f in text.split(",") if f.strip())


def run(options: Options, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run the command; returns the exit status."""
    # A simulation logs what a real cluster would (warnings of refused hints, nodes
    # starting epochs...): thousands of lines a run. The verdict is what matters here.
    logging.getLogger("dynamo_core").setLevel(logging.CRITICAL)
    if len(options.seeds) == 1:
        return _one(options, out)
    return _sweep(options, out, err)


# ====================================================================== one seed


def _one(options: Options, out: TextIO) -> int:
    spec = options.spec(options.seeds[0])
    report = simulate(spec)
    smallest: tuple[Spec, Report] | None = None
    if not report.ok and options.shrink:
        smallest = shrink(spec, report)
    if options.json:
        doc = report.to_json()
        if smallest is not None:
            doc["shrunk"] = {"replay": smallest[0].command(),
                             "findings": smallest[1].verdict.findings()}
        print(json.dumps(doc, sort_keys=True), file=out)
    else:
        print(describe(report), file=out)
        if smallest is not None:
            print(describe_failure(*smallest), file=out)
    return 0 if report.ok else 1


def describe(report: Report) -> str:
    doc = report.to_json()
    spec = report.spec
    speed = doc["sim_seconds"] / doc["wall_seconds"] if doc["wall_seconds"] else 0.0
    converged = ("did not converge" if report.converged_after is None
                 else f"converged {report.converged_after:g}s after the heal")
    lines = [
        f"seed {spec.seed}: {spec.nodes} nodes, {spec.clients} clients, {spec.ops} operations, "
        f"faults: {', '.join(sorted(spec.faults)) or 'none'} ({doc['faults_applied']} applied)",
        f"acknowledged {doc['acknowledged']}, lost {doc['lost']}, resurrected "
        f"{doc['resurrected']}, duplicates {doc['duplicates']}",
        f"{converged}; {doc['sim_seconds']:.1f}s simulated in {doc['wall_seconds']:.2f}s "
        f"({speed:.0f}x real time), {doc['messages']:,} messages",
        f"trace sha256 {doc['trace_sha256']}",
    ]
    if report.ok:
        lines.append("OK: every invariant held")
    else:
        lines.append(f"FAILED ({len(report.verdict.findings())} findings):")
        lines.extend(f"  {f}" for f in report.verdict.findings()[:20])
    return "\n".join(lines)


def describe_failure(spec: Spec, report: Report) -> str:
    """The smallest failing run: what broke, the broken key's history, how to replay it."""
    lines = ["", f"smallest failing run found: {spec.command()}"]
    lines.extend(f"  {f}" for f in report.verdict.findings()[:10])
    broken = [*report.verdict.lost, *report.verdict.resurrected]
    if broken:
        first = broken[0]
        history = report.key_history(first.bucket, first.key)
        lines.append(f"history of {first.bucket}/{first.key} and the faults "
                     f"(last {min(len(history), TRACE_LINES)} of {len(history)} lines):")
        lines.extend(history[-TRACE_LINES:])
    lines.append(f"replay: {spec.command()}")
    return "\n".join(lines)


# ====================================================================== a sweep


def _simulate_json(spec: Spec) -> dict[str, Any]:
    logging.getLogger("dynamo_core").setLevel(logging.CRITICAL)
    try:
        return simulate(spec).to_json()
    except Exception as exc:  # noqa: BLE001 - a crash of the run is a finding like any other
        return {"seed": spec.seed, "ok": False, "acknowledged": 0, "lost": 0,
                "resurrected": 0, "duplicates": 0, "converged_after": None,
                "sim_seconds": 0.0, "wall_seconds": 0.0, "replay": spec.command(),
                "findings": [f"the simulation raised {type(exc).__name__}: {exc}"]}


def _results(options: Options) -> Iterator[dict[str, Any]]:
    specs = [options.spec(seed) for seed in options.seeds]
    if options.jobs <= 1:
        yield from map(_simulate_json, specs)
        return
    with ProcessPoolExecutor(options.jobs) as pool:
        yield from pool.map(_simulate_json, specs)


def _sweep(options: Options, out: TextIO, err: TextIO) -> int:
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    bar = Progress(len(options.seeds), err)
    for result in _results(options):
        results.append(result)
        bar.advance(failed=not result["ok"])
    bar.close()
    summary = summarize(results, time.monotonic() - started)
    if options.json:
        print(json.dumps({"summary": summary, "runs": results}, sort_keys=True), file=out)
    else:
        print(summary_table(summary, results), file=out)
    return 0 if summary["failed"] == 0 else 1


def summarize(results: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    converged = [r["converged_after"] for r in results if r.get("converged_after") is not None]
    return {
        "runs": len(results),
        "passed": sum(1 for r in results if r["ok"]),
        "failed": sum(1 for r in results if not r["ok"]),
        "failing_seeds": [r["seed"] for r in results if not r["ok"]],
        "acknowledged": sum(r["acknowledged"] for r in results),
        "lost": sum(r["lost"] for r in results),
        "resurrected": sum(r["resurrected"] for r in results),
        "duplicates": sum(r["duplicates"] for r in results),
        "converged_after_median": statistics.median(converged) if converged else None,
        "converged_after_max": max(converged) if converged else None,
        "sim_seconds": round(sum(r["sim_seconds"] for r in results), 1),
        "wall_seconds": round(wall, 1),
    }


def summary_table(summary: dict[str, Any], results: list[dict[str, Any]]) -> str:
    rows = [("runs", summary["runs"]), ("passed", summary["passed"]),
            ("failed", summary["failed"]), ("acknowledged writes", summary["acknowledged"]),
            ("lost", summary["lost"]), ("resurrected", summary["resurrected"]),
            ("duplicate answers", summary["duplicates"]),
            ("converged after heal, median s", summary["converged_after_median"]),
            ("converged after heal, max s", summary["converged_after_max"]),
            ("simulated seconds", summary["sim_seconds"]),
            ("wall seconds", summary["wall_seconds"])]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name.ljust(width)}  {value if value is not None else '-'}"
             for name, value in rows]
    for result in results:
        if not result["ok"]:
            lines.append(f"seed {result['seed']} FAILED: {'; '.join(result['findings'][:3])}")
            lines.append(f"  replay: {result['replay']}")
    return "\n".join(lines)


class Progress:
    """A one-line progress bar on a terminal; a line every tenth of the way otherwise."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.stream = stream
        self.tty = stream.isatty() and os.environ.get("TERM") != "dumb"
        self.started = time.monotonic()

    def advance(self, failed: bool) -> None:
        self.done += 1
        self.failed += failed
        if self.tty:
            width = 30
            filled = width * self.done // self.total
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/"
                              f"{self.total} seeds, {self.failed} failed, "
                              f"{time.monotonic() - self.started:.0f}s")
            self.stream.flush()
        elif self.done * 10 // self.total != (self.done - 1) * 10 // self.total:
            print(f"{self.done}/{self.total} seeds, {self.failed} failed", file=self.stream)

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


def options_from(seed: int | None, seeds: str | None, **rest: Any) -> Options:
    """The command line's values as options; raises ValueError naming a bad one."""
    if (seed is None) == (seeds is None):
        raise ValueError("give one of --seed S or --seeds A-B")
    chosen = [seed] if seed is not None else list(parse_seeds(seeds or ""))
    options = Options(seeds=chosen, **rest)
    options.spec(chosen[0])  # checks the faults and sizes now, not in a worker
    return options
