"""Hostile input costs nothing: the pieces that make it so, each on its own.

* the item and decoded-size caps of a frame, checked from its item heads before decoding;
* a refused frame is decoded once, and its refusal still names the request;
* the failure detector hears of members only, whatever names envelopes carry;
* log lines about what the network sends are rate-limited, with a bounded table of sources;
* a key is never stored bigger than one frame can carry back.
"""

from __future__ import annotations

import logging
import random
import struct

import cbor2
import pytest

from dynamo_core import config as config_mod
from dynamo_core import errors, wire
from dynamo_core.core import Answer, NodeCore
from dynamo_core.errors import WireError
from dynamo_core.membership import Member
from dynamo_core.store import MAX_KEY_ITEMS, LocalStore
from dynamo_core.throttle import OTHER_SOURCES, LogThrottle
from dynamo_core.versions import Clock, Version
from dynamo_core.wire import MAX_ITEMS, MAX_OBJECT_BYTES, SCAN_FREE_BYTES, Codec, Refused, prescan
from dynamo_plugins.memory_storage import MemoryEngine

CODEC = Codec()


def array_head(count: int) -> bytes:
    return b"\x9b" + struct.pack(">Q", count)


def zeros(count: int) -> bytes:
    """A top-level array of ``count`` small integers: count + 1 items."""
    return array_head(count) + b"\x00" * count


# ====================================================================== the caps


def test_a_frame_of_exactly_max_items_items_is_decoded() -> None:
    frame = zeros(MAX_ITEMS - 1)
    assert len(frame) > SCAN_FREE_BYTES, "the scan must run for this test to mean anything"
    with pytest.raises(WireError, match="envelope must be a map"):  # decoded, then refused
        CODEC.decode(frame)


def test_one_item_more_than_max_items_is_refused_before_decoding() -> None:
    with pytest.raises(WireError, match=f"frame holds more than {MAX_ITEMS:,} CBOR items"):
        CODEC.decode(zeros(MAX_ITEMS))


def test_the_scan_stops_at_the_cap_not_at_the_end_of_the_frame() -> None:
    frame = zeros(wire.DEFAULT_MAX_MESSAGE_BYTES - 16)
    with pytest.raises(WireError, match=rf"counted to byte {MAX_ITEMS + 9:,} of"):
        prescan(frame)


@pytest.mark.parametrize("item, charge", [
    (b"\x00", 40), (b"\x60", 64), (b"\x41x", 64), (b"\x80", 64), (b"\xa0", 72),
    (b"\xa1\x00\x00", 232 + 48 + 40 + 40), (b"\xc1\x00", 160 + 40), (b"\xf6", 48),
    (b"\xfb" + b"\x00" * 8, 48),
], ids=["int", "text", "bytes", "list", "empty-map", "one-pair-map", "tag", "null", "float"])
def test_each_item_is_charged_what_it_takes_decoded_and_the_cap_is_exact(
        item: bytes, charge: int) -> None:
    frame = b"\x83" + item * 3
    total = 64 + 3 * charge
    prescan(frame, max_objects=total)
    with pytest.raises(WireError, match=f"would decode to more than {total - 1:,} bytes"):
        prescan(frame, max_objects=total - 1)


def test_item_counts_include_containers_keys_values_and_tags() -> None:
    frame = cbor2.dumps({"a": [1, 2], "b": cbor2.CBORTag(1, 0)})  # 1 + (1 + 3) + (1 + 2)
    prescan(frame, max_items=8)
    with pytest.raises(WireError, match="more than 7 CBOR items"):
        prescan(frame, max_items=7)


def test_a_huge_claimed_map_is_refused_by_its_charge_at_its_head() -> None:
    frame = b"\xbb" + struct.pack(">Q", 1 << 62) + b"\x00\xa0" * 100_000
    with pytest.raises(WireError, match=r"would decode to more than .* \(1 items, to byte 9 "):
        CODEC.decode(frame)


def test_string_payloads_are_skipped_not_counted() -> None:
    prescan(cbor2.dumps(["x" * 1_000_000, b"y" * 1_000_000]), max_items=3, max_objects=256)


def test_no_frame_up_to_scan_free_bytes_can_pass_a_cap() -> None:
    """The costliest bytes there are, as many as fit unscanned: within both caps."""
    worst = [b"\xc1\x00", b"\xa1\xc1\x00\x00", b"\xa0", b"\xd9\x01\x02\x80", b"\x00"]
    for item in worst:
        count = (SCAN_FREE_BYTES - 9) // len(item)
        prescan(array_head(count) + item * count)


def test_the_caps_bound_what_a_refused_frame_could_have_cost() -> None:
    assert MAX_ITEMS * 232 > MAX_OBJECT_BYTES >= SCAN_FREE_BYTES * wire.MAX_CHARGE_PER_BYTE


# ====================================================================== decoded once


@pytest.fixture
def decoders(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every CBOR decoder the wire module makes."""
    made: list[int] = []
    real = wire.cbor2.CBORDecoder

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(wire.cbor2, "CBORDecoder", counting)
    return made


def envelope(msg_type: str = "ping", body: object = None, **fields: object) -> bytes:
    doc = {"v": 1, "t": msg_type, "id": 7, "from": "n9", "b": body or {}}
    doc.update(fields)
    return cbor2.dumps(doc)


@pytest.mark.parametrize("frame", [
    envelope("put", {"bucket": "default", "key": "k", "value": cbor2.CBORTag(28, 1)}),
    envelope("put", {"bucket": "default", "key": "k", "value": [[[0]]] * 10, "w": "two"}),
    envelope("frobnicate"),
    envelope(v=2),
], ids=["forbidden-tag-in-body", "bad-field", "unknown-type", "wrong-version"])
def test_a_refused_frame_is_decoded_once_and_names_its_request_and_sender(
        decoders: list[int], frame: bytes) -> None:
    with pytest.raises(Refused) as refused:
        CODEC.decode(frame)
    assert len(decoders) == 1
    assert (refused.value.req_id, refused.value.sender) == (7, "n9")


def test_a_frame_over_a_cap_is_not_decoded_at_all_yet_names_its_request(
        decoders: list[int]) -> None:
    frame = envelope("put", {"bucket": "default", "key": "k", "value": [{}] * MAX_ITEMS})
    with pytest.raises(Refused, match="CBOR items") as refused:
        CODEC.decode(frame)
    assert decoders == []
    assert refused.value.req_id == 7


@pytest.mark.parametrize("frame", [b"", b"\xff", cbor2.dumps([7]),
                                   cbor2.dumps({"id": [7], "v": 1}),
                                   cbor2.dumps({"from": "a" * 257, "id": -1})],
                         ids=["empty", "break", "list", "id-in-a-list", "unusable-id"])
def test_a_refusal_names_no_request_when_none_can_be_read_from_the_head(frame: bytes) -> None:
    with pytest.raises(Refused) as refused:
        CODEC.decode(frame)
    assert (refused.value.req_id, refused.value.sender) == (None, None)


# ====================================================================== liveness


def one_node() -> NodeCore:
    config = config_mod.from_mapping({"storage": {"engine": "memory"},
                                      "cluster": {"n": 1, "r": 1, "w": 1}})
    core = NodeCore("n1", "tcp://n1.test:1", config=config, rng=random.Random(1),
                    wall_clock=lambda: 1_800_000_000.0)
    core.start(0.0)
    core.membership.merge([Member("n2", "tcp://n2.test:1", 1, (5,), "up"),
                           Member("gone", "tcp://gone.test:1", 1, (9,), "removed")])
    return core


def ping(sender: str, req_id: int | None = 1) -> bytes:
    return CODEC.encode("ping", {}, req_id, sender)


def test_requests_from_names_that_are_not_members_are_answered_but_not_watched() -> None:
    core = one_node()
    for i in range(100):
        effects = core.receive(b"x", [ping(f"stranger-{i}")], 1.0)
        assert [CODEC.decode(e.frame).type for e in effects if isinstance(e, Answer)] == \
            ["pong"]
    assert all(core.liveness.last_heard(f"stranger-{i}") is None for i in range(100))
    core.receive(b"x", [ping("gone")], 2.0)
    assert core.liveness.last_heard("gone") is None, "a removed member is no current member"


def test_a_request_from_a_member_is_heard() -> None:
    core = one_node()
    core.receive(b"x", [ping("n2")], 3.0)
    assert core.liveness.last_heard("n2") == 3.0


def test_replies_are_heard_from_members_only() -> None:
    core = one_node()
    core.receive_reply("tcp://n2.test:1", [CODEC.encode("pong", {}, None, "stranger")], 4.0)
    core.receive_reply("tcp://n2.test:1", [CODEC.encode("pong", {}, None, "n2")], 5.0)
    assert core.liveness.last_heard("stranger") is None
    assert core.liveness.last_heard("n2") == 5.0


# ====================================================================== log throttle


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def lines() -> Lines:
    handler = Lines()
    logger = logging.getLogger("test.throttle")
    logger.addHandler(handler)
    logger.propagate = False
    yield handler
    logger.removeHandler(handler)


def test_the_first_event_is_logged_at_once_the_rest_once_per_interval_with_a_count(
        lines: Lines) -> None:
    throttle = LogThrottle(logging.getLogger("test.throttle"), interval=10.0)
    for i in range(12_346):
        throttle.event("refused a malformed frame", "X", f"reason {i}", i / 1000)
    assert lines.lines == [
        "refused a malformed frame from X: reason 0",
        "refused a malformed frame from X: 10,000 times in the last 10 s; the last: "
        "reason 10000"]
    throttle.flush(20.0)
    assert lines.lines[-1] == ("refused a malformed frame from X: 2,345 times in the last "
                               "10 s; the last: reason 12345")


def test_kinds_and_sources_are_counted_apart(lines: Lines) -> None:
    throttle = LogThrottle(logging.getLogger("test.throttle"))
    for source in ("a", "b"):
        for kind in ("refused a frame", "dropped a reply"):
            throttle.event(kind, source, "why", 0.0)
            throttle.event(kind, source, "why", 0.1)
    assert len(lines.lines) == 4


def test_past_the_bound_new_sources_share_one_entry(lines: Lines) -> None:
    throttle = LogThrottle(logging.getLogger("test.throttle"), max_sources=3)
    for i in range(10_000):
        throttle.event("refused a frame", f"name-{i}", "why", 1.0)
    assert len(throttle._tallies) == 4
    assert lines.lines[-1] == f"refused a frame from {OTHER_SOURCES}: why"
    assert len(lines.lines) == 4


def test_flush_forgets_quiet_sources_and_writes_nothing_for_them(lines: Lines) -> None:
    throttle = LogThrottle(logging.getLogger("test.throttle"), interval=10.0)
    throttle.event("refused a frame", "a", "why", 0.0)
    throttle.flush(5.0)
    assert len(throttle._tallies) == 1
    throttle.flush(20.0)
    assert throttle._tallies == {} and len(lines.lines) == 1


# ====================================================================== stored keys


def test_a_key_is_never_stored_with_more_items_than_a_frame_carries_back() -> None:
    store = LocalStore(MemoryEngine(), max_siblings=10, actor="a")
    fits = Version([0] * (MAX_KEY_ITEMS - 64), Clock.empty(), ("x", 1), 1.0)
    assert store.apply("default", "big", [fits])
    sibling = Version([0] * 1000, Clock.empty(), ("y", 1), 1.0)
    with pytest.raises(errors.Overloaded, match="its record holds more than .* CBOR items"):
        store.apply("default", "big", [sibling])
    assert [v.dot for v in store.read("default", "big")] == [("x", 1)]
