"""The history checker: did the cluster keep what it acknowledged?

It judges a run from the clients' history and the replicas' final contents, and decides
from *values* alone (every value and cart item a client writes is unique, and every write
records what its writer had read), never from the vector clocks the nodes keep: a bug that
issues a dot twice makes the clocks themselves lie, and a checker that trusted them would
lie along.

* **lost**: an acknowledged cart add (``cart-union``, and ``orset-cart`` where that
  example package is installed) whose item is not in the final cart; an acknowledged
  put whose value is neither in the final state nor *covered*, that is read (and so
  superseded) by a later write whose own value survives or is covered in turn, or by a
  delete that may have been applied;
* **resurrected**: a value an acknowledged write had read, and so superseded, that is in
  the final state again (a deleted or overwritten value coming back);
* **duplicates**: requests a client got more than one answer to.

Other findings (a replica set that did not converge, a queue past its bound, a client or
node that crashed with an exception) are listed as ``problems``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .clients import CartModel, History, Operation, cart_models


@dataclass(frozen=True)
class Finding:
    kind: str
    bucket: str
    key: str
    detail: str
    #: the operations involved (their ids in the history)
    ops: tuple[int, ...] = ()

    def __str__(self) -> str:
        ops = f" (ops {', '.join(map(str, self.ops))})" if self.ops else ""
        return f"{self.kind}: {self.bucket}/{self.key}: {self.detail}{ops}"


@dataclass
class Verdict:
    acknowledged: int
    lost: list[Finding] = field(default_factory=list)
    resurrected: list[Finding] = field(default_factory=list)
    duplicates: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.resurrected or self.duplicates or self.problems)

    def findings(self) -> list[str]:
        out = [str(f) for f in (*self.lost, *self.resurrected)]
        if self.duplicates:
            out.append(f"duplicates: {self.duplicates} requests got more than one answer")
        return out + self.problems


#: The final live values of each key: ``(bucket, key) -> values``.
FinalState = Mapping[tuple[str, str], list[Any]]


def check(history: History, final: FinalState, problems: Iterable[str] = (),
          carts: Iterable[CartModel] | None = None) -> Verdict:
    """Judge the history against the final state of every key the clients touched; keys of
    a cart bucket (``carts``: every kind the clients fill) are judged as carts."""
    by_bucket = {model.bucket: model for model in (cart_models() if carts is None else carts)}
    verdict = Verdict(acknowledged=len(history.acknowledged()),
                      duplicates=history.duplicate_answers, problems=list(problems))
    by_key: dict[tuple[str, str], list[Operation]] = defaultdict(list)
    for op in history.operations:
        by_key[(op.bucket, op.key)].append(op)
    for (bucket, key), ops in sorted(by_key.items()):
        values = final.get((bucket, key), [])
        if bucket in by_bucket:
            verdict.lost.extend(_lost_cart_adds(by_bucket[bucket], key, ops, values))
        else:
            verdict.lost.extend(_lost_puts(bucket, key, ops, values))
            verdict.resurrected.extend(_resurrected(bucket, key, ops, values))
    return verdict


def _lost_cart_adds(model: CartModel, key: str, ops: list[Operation],
                    values: list[Any]) -> list[Finding]:
    items, bucket = model.items(values), model.bucket
    return [Finding("lost", bucket, key, f"acknowledged add of {op.value!r} is not in the "
                    f"final cart of {len(items)} items", (op.id,))
            for op in ops if op.kind == "add" and op.outcome == "ok" and op.value not in items]


def _covered(ops: list[Operation], values: list[Any]) -> set[Any]:
    """The final values, and every value read by a write that may have been applied and is
    itself covered (a delete counts as covering what it read: its tombstone is no value)."""
    covered = set(_hashable(values))
    writes = [op for op in ops if op.kind in ("put", "delete")
              and op.outcome in ("ok", "unknown")]
    changed = True
    while changed:
        changed = False
        for op in writes:
            if op.kind == "delete" or op.value in covered:
                fresh = set(_hashable(op.seen)) - covered
                if fresh:
                    covered |= fresh
                    changed = True
    return covered


def _lost_puts(bucket: str, key: str, ops: list[Operation],
               values: list[Any]) -> list[Finding]:
    covered = _covered(ops, values)
    return [Finding("lost", bucket, key, f"acknowledged put of {op.value!r} is neither in "
                    f"the final values {sorted(map(repr, values))} nor read by a later write",
                    (op.id,))
            for op in ops if op.kind == "put" and op.outcome == "ok"
            and op.value not in covered]


def _resurrected(bucket: str, key: str, ops: list[Operation],
                 values: list[Any]) -> list[Finding]:
    final = set(_hashable(values))
    found = []
    for op in ops:
        if op.kind in ("put", "delete") and op.outcome == "ok":
            back = sorted(map(repr, final.intersection(_hashable(op.seen))))
            if back:
                found.append(Finding("resurrected", bucket, key,
                                     f"{', '.join(back)} superseded by acknowledged "
                                     f"{op.kind} #{op.id} is back", (op.id,)))
    return found


def _hashable(values: Iterable[Any]) -> list[Any]:
    return [repr(v) if isinstance(v, (list, dict, set)) else v for v in values]
