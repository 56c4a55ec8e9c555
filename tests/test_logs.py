"""What a node tells its operator in its log: peers changing state and members changing,
at info level, as plain text or one JSON object a line (the process-level side is in
tests/test_cli.py)."""

from __future__ import annotations

import json
import logging
import sys

from dynamo_core.cli import JsonLines
from dynamo_core.liveness import Liveness
from dynamo_core.membership import membership_changes


class Scripted:
    """A failure detector whose opinion the test sets."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}

    def heard_from(self, peer: str, now: float) -> None:
        pass

    def request_failed(self, peer: str, now: float) -> None:
        pass

    def state(self, peer: str, now: float) -> str:
        return self.states.get(peer, "up")

    def forget(self, peer: str) -> None:
        pass


def test_liveness_reports_each_change_of_a_peers_state_once() -> None:
    detector = Scripted()
    changes: list[tuple[str, str, str]] = []
    liveness = Liveness("n1", detector, 0.5, on_change=lambda *c: changes.append(c))
    liveness.refresh(["n1", "n2"], 0.0)
    assert changes == []  # the first opinion is no change
    detector.states["n2"] = "down"
    liveness.refresh(["n2"], 1.0)
    liveness.state("n2", 1.5)
    detector.states["n2"] = "up"
    liveness.refresh(["n2"], 2.0)
    assert changes == [("n2", "up", "down"), ("n2", "down", "up")]


def test_membership_changes_say_who_appeared_changed_status_or_moved() -> None:
    before = {"n1": ("up", "tcp://a:1"), "n2": ("up", "tcp://b:1")}
    after = {"n1": ("up", "tcp://a:1"), "n2": ("leaving", "tcp://c:1"),
             "n3": ("joining", "tcp://d:1")}
    assert membership_changes(before, after) == [
        "n2 is leaving (was up)", "n2 moved to tcp://c:1 (was tcp://b:1)",
        "n3 appeared at tcp://d:1 (joining)"]
    assert membership_changes(after, after) == []


def test_json_log_records_are_one_line_each_even_with_a_traceback() -> None:
    try:
        raise ValueError("boom\non two lines")
    except ValueError:
        record = logging.LogRecord("dynamo.n1", logging.ERROR, __file__, 1, "failed: %s",
                                   ("x",), sys.exc_info())
    line = JsonLines().format(record)
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["level"] == "error" and doc["logger"] == "dynamo.n1"
    assert doc["message"] == "failed: x" and "ValueError: boom" in doc["exception"]
    assert doc["time"].endswith("+00:00")
