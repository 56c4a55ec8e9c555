"""A membership change followed to its end from outside, by asking nodes for their status.

``dynamo join/leave/remove --wait`` use these: each polls what the nodes report and draws a
:class:`~dynamo_core.progress.ProgressLine`, until the change is done or time is up.

* **join**: the new node is in the ring at once, but its ranges are *filling* until each was
  compared with another replica (anti-entropy); it is done when it is ``up`` and none is left.
* **leave**: the leaving node hands every key it no longer replicates, and its hints, to
  their new homes, then says it is ``removed`` and exits; done when a remaining node sees it
  ``removed``.
* **remove**: the remaining nodes rebuild a dead node's ranges from the other replicas (the
  ranges they gained are filling); done when every one sees it ``removed`` and none fills.
* **handoff drain**: after an absence, the hints its peers held for a node are delivered;
  done when no member holds a hint.

The total of a bar is the most seen so far: work appears as the ring changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .errors import DynamoError, Timeout
from .progress import ProgressLine

POLL_SECONDS = 0.5
#: How long one node is asked before it counts as not answering.
ASK_TIMEOUT = 2.0

#: Asks the node at an address for its status document (raises DynamoError).
Ask = Callable[[str], dict[str, Any]]


class _Bar:
    """Work left, against the most work seen."""

    def __init__(self, line: ProgressLine) -> None:
        self.line = line
        self.total = 0

    def left(self, remaining: int, note: str) -> None:
        self.total = max(self.total, remaining)
        self.line.update(self.total - remaining, self.total, note)


def _until(done: Callable[[], str | None], deadline: float, what: str) -> str:
    """Poll ``done`` (None: not yet; else how it ended) until the deadline."""
    while True:
        outcome = done()
        if outcome is not None:
            return outcome
        if time.monotonic() >= deadline:
            raise Timeout(f"{what} was not done when --wait-timeout ran out")
        time.sleep(POLL_SECONDS)


def _member(status: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((m for m in status["members"] if m["name"] == name), None)


def follow_join(ask: Ask, address: str, line: ProgressLine, deadline: float) -> str:
    bar = _Bar(line)

    def done() -> str | None:
        status = ask(address)
        me = _member(status, status["node"])
        filling = status["anti_entropy"]["ranges_filling"]
        bar.left(filling, f"of its ranges filled ({len(status['members'])} members known)")
        if me is not None and me["status"] == "up" and filling == 0 and \
                len(status["members"]) > 1:
            return f"{status['node']} joined: it is up and its ranges are filled"
        return None

    return _until(done, deadline, f"the join of the node at {address}")


def follow_leave(ask: Ask, address: str, line: ProgressLine, deadline: float) -> str:
    first = ask(address)
    name = first["node"]
    others = [m["address"] for m in first["members"]
              if m["name"] != name and m["status"] != "removed"]
    bar = _Bar(line)

    def done() -> str | None:
        try:
            status = ask(address)
        except DynamoError:  # gone: it exits once it has handed everything over
            return _removed_somewhere(ask, others, name)
        left = status["anti_entropy"]["unowned"] + status["hints_pending"]
        bar.left(left, "keys and hints handed over")
        return None

    return _until(done, deadline, f"the leave of {name}")


def _removed_somewhere(ask: Ask, addresses: list[str], name: str) -> str | None:
    for address in addresses:
        try:
            member = _member(ask(address), name)
        except DynamoError:
            continue
        if member is not None and member["status"] == "removed":
            return f"{name} left: it handed its ranges over and exited"
    return None


def follow_remove(ask: Ask, address: str, name: str, line: ProgressLine,
                  deadline: float) -> str:
    first = ask(address)
    addresses = [m["address"] for m in first["members"]
                 if m["name"] != name and m["status"] != "removed"]
    bar = _Bar(line)

    def done() -> str | None:
        filling, unaware = 0, 0
        for node in addresses:
            try:
                status = ask(node)
            except DynamoError:  # busy or restarting: it counts as not done yet
                unaware += 1
                continue
            filling += status["anti_entropy"]["ranges_filling"]
            member = _member(status, name)
            unaware += member is not None and member["status"] != "removed"
        bar.left(filling, "ranges rebuilt")
        if filling == 0 and unaware == 0:
            return f"{name} removed: its ranges are rebuilt on the remaining nodes"
        return None

    return _until(done, deadline, f"the removal of {name}")


def follow_handoff(ask: Ask, address: str, line: ProgressLine, deadline: float) -> str:
    first = ask(address)
    addresses = [m["address"] for m in first["members"] if m["status"] != "removed"]
    bar = _Bar(line)

    def done() -> str | None:
        pending = 0
        for node in addresses:
            try:
                pending += ask(node)["hints_pending"]
            except DynamoError:  # a member that does not answer may hold hints still
                return None
        bar.left(pending, "hints delivered")
        return "every hint is delivered" if pending == 0 else None

    return _until(done, deadline, "the delivery of every hint")
