"""A node faces hostile frames: it answers each with an error naming the problem, never dies.

Everything here talks to one real node process through a raw ZeroMQ DEALER, the way any
program on the network could. Replies are decoded with the same codec a client uses, so an
error reply that breaks the wire format would fail these tests too.
"""

from __future__ import annotations

import random
import struct
import time
import uuid

import cbor2
import pytest
import zmq

from dynamo_core.client import Client
from dynamo_core.errors import InvalidRequest
from dynamo_core.wire import MAX_DEPTH, MAX_PARTS, Codec, Message

pytestmark = [pytest.mark.timeout(60), pytest.mark.cluster]

MAX_MESSAGE_BYTES = 65536
REPLY_WAIT_MS = 3000


@pytest.fixture(scope="module")
def node(module_cluster):
    """One node, alone (N=R=W=1), with a 64 KiB message limit."""
    return module_cluster(1, config={
        "cluster": {"n": 1, "r": 1, "w": 1},
        "limits": {"max_message_bytes": MAX_MESSAGE_BYTES},
    })


@pytest.fixture
def dealer(node):
    """A raw DEALER connected to the node; closed after the test."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(node.addresses[0])
    yield sock
    sock.close(0)
    ctx.term()


def envelope(msg_type="ping", body=None, req_id=None, **extra) -> bytes:
    doc = {"v": 1, "t": msg_type, "id": req_id, "from": None, "b": {} if body is None else body}
    doc.update(extra)
    return cbor2.dumps(doc)


def exchange(sock: zmq.Socket, *frames: bytes) -> Message:
    """Send one (possibly multi-frame) message and return the node's decoded reply."""
    sock.send_multipart(list(frames))
    assert sock.poll(REPLY_WAIT_MS), "the node did not answer"
    return Codec().decode(sock.recv())


def assert_error(reply: Message, *words: str, req_id=None, code="wire_error") -> None:
    assert reply.type == "error", reply
    assert reply.body["code"] == code, reply.body
    message = reply.body["message"]
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert len(message) < 400, "an error message must stay short whatever the input"
    assert reply.id == req_id


def status(node) -> dict:
    with Client(node.addresses[0], timeout=3) as c:
        return c.status()


# ====================================================================== not CBOR at all


def test_random_bytes_get_an_error_reply(dealer):
    rng = random.Random(20240607)
    for size in (1, 2, 7, 64, 500, 4000):
        for _ in range(5):
            reply = exchange(dealer, bytes(rng.getrandbits(8) for _ in range(size)))
            assert reply.type == "error"
            assert reply.body["code"] == "wire_error"
            assert any(w in reply.body["message"] for w in ("CBOR", "trailing", "envelope",
                                                            "version", "field"))


def test_an_empty_frame_is_not_a_cbor_item(dealer):
    assert_error(exchange(dealer, b""), "not a valid CBOR item")


def test_a_lone_break_code_is_not_a_cbor_item(dealer):
    assert_error(exchange(dealer, b"\xff"), "not a valid CBOR item")


def test_bytes_after_a_valid_envelope_are_refused(dealer):
    assert_error(exchange(dealer, envelope(req_id=1) + b"\x00"), "1 trailing bytes", req_id=1)


# ====================================================================== CBOR of the wrong shape


@pytest.mark.parametrize("item, words", [
    ([1, 2, 3], ["envelope must be a map", "list"]),
    (42, ["envelope must be a map", "int"]),
    ("ping", ["envelope must be a map", "str"]),
    (None, ["envelope must be a map"]),
])
def test_an_envelope_that_is_not_a_map_is_refused(dealer, item, words):
    assert_error(exchange(dealer, cbor2.dumps(item)), *words)


def test_an_envelope_without_a_body_is_refused_with_its_request_id(dealer):
    frame = cbor2.dumps({"v": 1, "t": "ping", "id": 5})
    assert_error(exchange(dealer, frame), "'b'", req_id=5)


def test_an_envelope_without_a_type_is_refused_with_its_request_id(dealer):
    frame = cbor2.dumps({"v": 1, "id": 6, "b": {}})
    assert_error(exchange(dealer, frame), "'t'", req_id=6)


def test_an_envelope_without_a_version_is_refused(dealer):
    frame = cbor2.dumps({"t": "ping", "id": 7, "b": {}})
    assert_error(exchange(dealer, frame), "protocol version", req_id=7)


def test_an_envelope_of_another_protocol_version_is_refused(dealer):
    assert_error(exchange(dealer, envelope(req_id=8, v=2)), "unsupported protocol version 2",
                 req_id=8)


def test_an_envelope_with_unknown_fields_is_refused(dealer):
    assert_error(exchange(dealer, envelope(req_id=9, admin=True)), "unknown fields", "admin",
                 req_id=9)


def test_a_request_missing_a_required_field_names_the_field(dealer):
    frame = envelope("get", {"key": "k"}, req_id=10)
    assert_error(exchange(dealer, frame), "get", "missing field 'bucket'", req_id=10)


def test_a_request_with_a_field_of_the_wrong_type_names_the_field(dealer):
    frame = envelope("get", {"bucket": "default", "key": 12}, req_id=11)
    assert_error(exchange(dealer, frame), "field 'key'", req_id=11)


def test_a_request_with_an_unknown_body_field_names_it(dealer):
    frame = envelope("get", {"bucket": "default", "key": "k", "sudo": 1}, req_id=12)
    assert_error(exchange(dealer, frame), "unknown fields", "sudo", req_id=12)


def test_a_bad_bucket_name_is_refused(dealer):
    frame = envelope("get", {"bucket": "../etc", "key": "k"}, req_id=13)
    assert_error(exchange(dealer, frame), "bucket name", req_id=13)


def test_a_boolean_quorum_is_not_an_integer(dealer):
    frame = envelope("get", {"bucket": "default", "key": "k", "r": True}, req_id=14)
    assert_error(exchange(dealer, frame), "field 'r'", "integer", req_id=14)


def test_a_request_id_that_is_not_an_integer_is_refused(dealer):
    frame = cbor2.dumps({"v": 1, "t": "ping", "id": "seven", "b": {}})
    assert_error(exchange(dealer, frame), "'id'")


def test_a_forged_context_is_an_invalid_request(dealer):
    frame = envelope("put", {"bucket": "default", "key": "k-forged", "value": 1,
                             "context": b"\x00not-a-context"}, req_id=15)
    assert_error(exchange(dealer, frame), "context", req_id=15, code="invalid_request")


def test_a_replica_put_with_garbage_versions_is_refused_and_stores_nothing(dealer, node):
    key = f"garbage-{uuid.uuid4().hex[:6]}"
    frame = envelope("replica_put", {"bucket": "default", "key": key,
                                     "versions": [{"value": 1, "dot": "nope"}]}, req_id=16)
    reply = exchange(dealer, frame)
    assert reply.type == "error" and reply.id == 16
    assert "replica_put" in reply.body["message"]
    with Client(node.addresses[0], timeout=3) as c:
        assert c.inspect(key, node.addresses[0])["versions"] == []


def forged_context(entries: list) -> bytes:
    """A context in the format a get returns, with whatever clock entries an attacker likes."""
    return cbor2.dumps(["dyn1", entries])


def stored_clock_sizes(node, key: str) -> list[int]:
    with Client(node.addresses[0], timeout=3) as c:
        return [len(v["clock"]) for v in c.inspect(key, node.addresses[0])["versions"]]


def test_a_forged_context_naming_many_actors_is_truncated_to_the_clock_limit(node):
    key = f"forged-vector-{uuid.uuid4().hex[:6]}"
    with Client(node.addresses[0], timeout=3) as c:
        c.put(key, 1, context=forged_context([[f"actor{i}", 3, float(i)] for i in range(300)]))
    # max_clock_entries defaults to 10; the coordinator's own entry is kept besides
    assert all(size <= 11 for size in stored_clock_sizes(node, key))


def test_a_forged_context_of_many_isolated_dots_is_truncated_to_the_clock_limit(node):
    key = f"forged-dots-{uuid.uuid4().hex[:6]}"
    with Client(node.addresses[0], timeout=3) as c:
        c.put(key, 1, context=forged_context([[f"actor{i}", 5, 0.0, 1] for i in range(300)]))
        # and the bloat is carried on by an honest read-modify-write
        c.put(key, 2, context=c.get(key).context)
    assert all(size <= 11 for size in stored_clock_sizes(node, key))


# ====================================================================== resource attacks


@pytest.mark.parametrize("header, what", [
    (b"\x5b" + struct.pack(">Q", 1 << 62), "byte string of 2**62 bytes"),
    (b"\x7b" + struct.pack(">Q", 1 << 62), "text string of 2**62 bytes"),
    (b"\x9b" + struct.pack(">Q", 1 << 62), "array of 2**62 items"),
    (b"\xbb" + struct.pack(">Q", 1 << 62), "map of 2**62 pairs"),
    (b"\x5a\xff\xff\xff\xff", "byte string of 4 GiB"),
])
def test_a_header_claiming_a_huge_length_is_refused_without_allocating_it(dealer, header, what):
    started = time.monotonic()
    assert_error(exchange(dealer, header + b"\x00" * 16), "not a valid CBOR item")
    assert time.monotonic() - started < 2.0, what


@pytest.mark.parametrize("opener", [b"\x81", b"\xa1\x61k"], ids=["lists", "maps"])
def test_ten_thousand_deep_nesting_is_refused_at_the_depth_limit(dealer, opener):
    frame = opener * 10_000 + b"\x00"
    assert_error(exchange(dealer, frame), "nesting depth", f"({MAX_DEPTH})")


def raw_map(**encoded_values: bytes) -> bytes:
    """A CBOR map (fewer than 24 pairs) whose values are already-encoded CBOR items."""
    return bytes([0xa0 + len(encoded_values)]) + b"".join(
        cbor2.dumps(k) + v for k, v in encoded_values.items())


def test_deep_nesting_inside_an_otherwise_valid_put_is_refused(dealer):
    deep_value = b"\x81" * 10_000 + b"\x00"
    body = raw_map(bucket=cbor2.dumps("default"), key=cbor2.dumps("deep"), value=deep_value)
    frame = raw_map(v=cbor2.dumps(1), t=cbor2.dumps("put"), id=cbor2.dumps(17), b=body)
    assert_error(exchange(dealer, frame), "nesting depth", req_id=17)


@pytest.mark.parametrize("tag", [28, 29, 35, 4, 5, 99999])
def test_semantic_tags_outside_the_safe_set_are_refused(dealer, tag):
    frame = envelope("put", {"bucket": "default", "key": "tagged",
                             "value": cbor2.CBORTag(tag, [1, 2])}, req_id=18)
    assert_error(exchange(dealer, frame), f"semantic tag {tag}", req_id=18)


def test_a_huge_unknown_type_name_is_cut_short_in_the_error(dealer):
    frame = envelope("x" * 50_000, req_id=19)
    assert_error(exchange(dealer, frame), "unknown message type", req_id=19)


def test_a_flood_of_garbage_is_answered_frame_by_frame(dealer):
    count = 500
    for i in range(count):
        dealer.send(b"\xfe garbage %d" % i)
    answered = 0
    while answered < count and dealer.poll(REPLY_WAIT_MS):
        assert Codec().decode(dealer.recv()).type == "error"
        answered += 1
    assert answered == count


# ====================================================================== the wrong message


def test_an_unknown_message_type_is_named_in_the_error(dealer):
    assert_error(exchange(dealer, envelope("frobnicate", req_id=20)),
                 "unknown message type 'frobnicate'", req_id=20)


def test_each_frame_of_a_multi_frame_message_is_a_request_answered_on_its_own(dealer):
    dealer.send_multipart([envelope(req_id=21), b"not cbor", envelope(req_id=23)])
    answers = []
    for _ in range(3):
        assert dealer.poll(REPLY_WAIT_MS), "the node did not answer every frame"
        answers.append(Codec().decode(dealer.recv()))
    by_id = {m.id: m for m in answers}
    assert by_id[21].type == "pong" and by_id[23].type == "pong"
    assert by_id[None].type == "error" and by_id[None].body["code"] == "wire_error"


def test_a_message_of_more_frames_than_a_node_takes_is_refused_whole(dealer):
    reply = exchange(dealer, envelope(req_id=22), *[envelope(req_id=99)] * MAX_PARTS)
    assert reply.type == "error" and reply.body["code"] == "wire_error"
    assert f"at most {MAX_PARTS} frames" in reply.body["message"]
    assert reply.id == 22, "the refusal carries the request id of the first frame"
    assert not dealer.poll(200), "nothing of the refused message was served"


@pytest.mark.parametrize("reply_type, body", [
    ("get_ok", {"siblings": [], "context": b""}),
    ("put_ok", {"context": b""}),
    ("pong", {}),
    ("error", {"code": "x", "message": "y"}),
    ("replica_put_ok", {}),
])
def test_a_reply_type_sent_as_a_request_is_refused(dealer, reply_type, body):
    reply = exchange(dealer, envelope(reply_type, body, req_id=23))
    assert_error(reply, f"{reply_type} is a reply type", req_id=23, code="invalid_request")


# ====================================================================== the size limit


def test_a_frame_over_the_size_limit_is_dropped_and_the_node_keeps_serving(dealer, node):
    big = envelope("put", {"bucket": "default", "key": "big",
                           "value": b"x" * (2 * MAX_MESSAGE_BYTES)}, req_id=24)
    assert len(big) > MAX_MESSAGE_BYTES
    dealer.send(big)
    assert not dealer.poll(1000), "an oversized frame must be dropped by ZeroMQ, not answered"

    # ZeroMQ dropped the connection of the sender; that same socket reconnects and is served...
    reply = exchange(dealer, envelope(req_id=25))
    assert reply.type == "pong" and reply.id == 25
    # ...and so is any other client, and the oversized value was never stored.
    with Client(node.addresses[0], timeout=3) as c:
        assert c.get("big").values == []
        c.put("after-big", "fine")
        assert c.get("after-big").values == ["fine"]


def test_a_frame_just_under_the_size_limit_is_served(dealer, node):
    key = f"near-limit-{uuid.uuid4().hex[:6]}"
    value = b"y" * (MAX_MESSAGE_BYTES - 1024)
    reply = exchange(dealer, envelope("put", {"bucket": "default", "key": key, "value": value},
                                      req_id=26))
    assert reply.type == "put_ok" and reply.id == 26


# ====================================================================== afterwards


def test_malformed_frames_are_counted_in_status(dealer, node):
    before = status(node)["malformed_frames"]
    bad = [b"\xff", cbor2.dumps([1]), envelope("nope", req_id=1), b"\x81" * 100 + b"\x00"]
    for frame in bad:
        assert exchange(dealer, frame).type == "error"
    assert status(node)["malformed_frames"] == before + len(bad)


def test_after_all_of_it_the_node_still_serves_reads_and_writes(node):
    # Runs last in this module: the node has seen every hostile frame above.
    with Client(node.addresses[0], timeout=3) as c:
        c.put("survivor", {"ok": True})
        r = c.get("survivor")
        assert r.values == [{"ok": True}]
        c.put("survivor", {"ok": "still"}, r.context)
        assert c.get("survivor").values == [{"ok": "still"}]
        s = c.status()
    assert s["malformed_frames"] > 50
    assert s["pending_requests"] == 0
    assert node.running() == ["n1"]


# ====================================================================== a client's mistakes


def test_a_put_whose_value_holds_a_set_is_answered_at_once_with_its_request_id(dealer):
    """cbor2 encodes a Python set as tag 258, which a node refuses: the refusal must still
    reach the request it belongs to, or the client waits out its whole timeout."""
    frame = envelope("put", {"bucket": "default", "key": "s", "value": {1, 2},
                             "context": None}, req_id=41)
    assert_error(exchange(dealer, frame), "set", req_id=41)


def test_the_client_refuses_a_value_the_store_cannot_keep_before_sending_it(node):
    with Client(node.addresses[0], timeout=3) as c:
        started = time.monotonic()
        with pytest.raises(InvalidRequest, match=r"value\['tags'\] is a set holding.*use a list"):
            c.put("s", {"tags": {1, 2}})
        assert time.monotonic() - started < 0.5


@pytest.mark.parametrize("ts", [float("nan"), float("inf"), 10**30, -(10**30)])
def test_a_replica_put_with_a_timestamp_out_of_range_is_refused_cleanly(dealer, ts):
    version = {"value": 1, "clock": [], "dot": ["x", 1], "ts": ts, "tomb": False}
    frame = envelope("replica_put", {"bucket": "default", "key": "t", "versions": [version]},
                     req_id=7)
    reply = exchange(dealer, frame)
    assert reply.type == "error" and reply.id == 7, reply
    assert reply.body["code"] in ("invalid_request", "wire_error"), reply.body
    assert "internal" not in reply.body["message"]


def test_a_counter_near_2_63_is_refused_and_the_key_stays_writable(node, dealer):
    version = {"value": 1, "clock": [["x", (1 << 63) - 2, 0.0]], "dot": ["x", (1 << 63) - 1],
               "ts": 1.0, "tomb": False}
    frame = envelope("replica_put", {"bucket": "default", "key": "big", "versions": [version]},
                     req_id=8)
    reply = exchange(dealer, frame)
    assert reply.type == "error" and "2**48" in reply.body["message"], reply.body
    with Client(node.addresses[0], timeout=3) as c:
        c.put("big", "fine")
        assert c.get("big").values == ["fine"]
