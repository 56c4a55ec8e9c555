"""The wire format as a specification: what a node accepts, and how it refuses the rest.

Every frame from the network is hostile until proven otherwise. Whatever arrives, decoding
either yields a schema-checked :class:`Message` or raises :class:`WireError` (an
``InvalidRequest``) whose message names the problem and is short enough to travel back in an
``error`` reply. It never raises anything else, never hangs and never allocates what a
header merely claims.
"""

from __future__ import annotations

import datetime
import struct
import uuid

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynamo_core.errors import InvalidRequest, WireError
from dynamo_core.wire import (
    BUILT_IN_SCHEMAS,
    MAX_DEPTH,
    MAX_KEY_CHARS,
    PROTOCOL_VERSION,
    Codec,
    Field,
    Message,
    integer,
    text,
)

# Guard against hangs: every test here is meant to finish in well under a second or two.
pytestmark = pytest.mark.timeout(60)

FUZZ = settings(max_examples=400, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


# ====================================================================== helpers


def envelope(msg_type: str = "ping", body: object = None, **fields: object) -> dict:
    env = {"v": PROTOCOL_VERSION, "t": msg_type, "id": 7, "from": "n1",
           "b": {} if body is None else body}
    env.update(fields)
    return env


def frame(msg_type: str = "ping", body: object = None, **fields: object) -> bytes:
    return cbor2.dumps(envelope(msg_type, body, **fields))


def put_body(**fields: object) -> dict:
    return {"bucket": "carts", "key": "alice", "value": {"items": ["book"]}, **fields}


def head(major: int, argument: int) -> bytes:
    """A CBOR initial byte plus argument, in the shortest form that holds the argument."""
    if argument < 24:
        return bytes([major << 5 | argument])
    for info, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
        try:
            return bytes([major << 5 | info]) + struct.pack(fmt, argument)
        except struct.error:
            continue
    raise ValueError(argument)


def text_item(s: str) -> bytes:
    return cbor2.dumps(s)


def raw_map(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """A definite-length map built from already-encoded keys and values."""
    return head(5, len(pairs)) + b"".join(k + v for k, v in pairs)


def put_frame_with_raw_value(raw_value: bytes) -> bytes:
    """A valid ``put`` envelope whose value is the given hand-made CBOR bytes."""
    body = raw_map([(text_item("bucket"), text_item("carts")),
                    (text_item("key"), text_item("alice")),
                    (text_item("value"), raw_value)])
    return raw_map([(text_item("v"), cbor2.dumps(PROTOCOL_VERSION)),
                    (text_item("t"), text_item("put")),
                    (text_item("id"), cbor2.dumps(7)),
                    (text_item("from"), cbor2.dumps(None)),
                    (text_item("b"), body)])


def tag(number: int, raw_content: bytes) -> bytes:
    return head(6, number) + raw_content


def rejects(codec: Codec, data: bytes, *words: str) -> str:
    """Assert the frame is refused with a WireError naming the problem; return the message.

    Also checks the refusal can travel: its message fits the ``error`` reply schema, so the
    peer that sent the bad frame can decode the answer.
    """
    with pytest.raises(WireError) as info:
        codec.decode(data)
    message = str(info.value)
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not in {message!r}"
    reply = codec.encode("error", {"code": info.value.code, "message": message})
    assert codec.decode(reply).body["message"] == message
    return message


def decodes_or_wire_error(codec: Codec, data: bytes) -> None:
    try:
        msg = codec.decode(data)
    except WireError as exc:
        assert str(exc)
        assert len(str(exc)) <= 4096
    else:
        assert isinstance(msg, Message)
        assert msg.type in codec.schemas
        assert isinstance(msg.body, dict)


@pytest.fixture
def codec() -> Codec:
    return Codec()


# ====================================================================== the error type


def test_wire_error_is_an_invalid_request():
    assert issubclass(WireError, InvalidRequest)


# ====================================================================== random input


@FUZZ
@given(data=st.binary(max_size=2048))
def test_random_bytes_decode_to_a_message_or_raise_wire_error(data):
    decodes_or_wire_error(Codec(), data)


@FUZZ
@given(data=st.binary(max_size=64))
def test_random_bytes_after_a_valid_prefix_decode_or_raise_wire_error(data):
    # Start inside a valid put so the fuzzer reaches the body and value decoding.
    prefix = put_frame_with_raw_value(b"")
    decodes_or_wire_error(Codec(), prefix + data)


@FUZZ
@given(original=st.sampled_from(sorted(BUILT_IN_SCHEMAS)), data=st.data())
def test_corrupted_valid_frames_decode_or_raise_wire_error(original, data):
    good = Codec().encode(original, VALID_BODIES[original], req_id=3, sender="n1")
    cut = data.draw(st.integers(0, len(good)), label="cut")
    index = data.draw(st.integers(0, len(good) - 1), label="index")
    byte = data.draw(st.integers(0, 255), label="byte")
    flipped = good[:index] + bytes([byte]) + good[index + 1:]
    decodes_or_wire_error(Codec(), flipped)
    decodes_or_wire_error(Codec(), good[:cut])


_heads = st.builds(
    lambda major, info, arg: bytes([major << 5 | info]) + arg,
    st.integers(0, 7), st.integers(0, 31), st.binary(max_size=8))


@FUZZ
@given(pieces=st.lists(st.one_of(_heads, st.binary(max_size=3)), max_size=40))
def test_random_cbor_headers_decode_or_raise_wire_error(pieces):
    # Streams of plausible CBOR heads (any major type, any length form, any tag number).
    decodes_or_wire_error(Codec(), b"".join(pieces))


_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(t=st.sampled_from(sorted(BUILT_IN_SCHEMAS)) | st.text(max_size=10),
       body=st.dictionaries(st.sampled_from(["bucket", "key", "value", "r", "w", "context",
                                             "versions", "members", "values", "code",
                                             "message", "node", "x"]), _values, max_size=6),
       req_id=_values, sender=_values)
def test_well_formed_cbor_of_any_shape_decodes_or_raises_wire_error(t, body, req_id, sender):
    decodes_or_wire_error(Codec(), cbor2.dumps(envelope(t, body, id=req_id, **{"from": sender})))


# ====================================================================== wrong shapes


@pytest.mark.parametrize("item, words", [
    ([1, 2, 3], ["envelope", "map", "list"]),
    (42, ["envelope", "map", "int"]),
    ("ping", ["envelope", "map", "str"]),
    (None, ["envelope", "map"]),
    (b"\x00", ["envelope", "map", "bytes"]),
], ids=["list", "int", "text", "null", "bytes"])
def test_an_envelope_that_is_not_a_map_is_refused(codec, item, words):
    rejects(codec, cbor2.dumps(item), *words)


def test_an_envelope_without_a_type_is_refused(codec):
    env = envelope()
    del env["t"]
    rejects(codec, cbor2.dumps(env), "'t'", "type")


@pytest.mark.parametrize("t", [1, None, b"ping", ["ping"]])
def test_a_message_type_that_is_not_text_is_refused(codec, t):
    rejects(codec, frame(t=t), "'t'", "text")


@pytest.mark.parametrize("body", [[], "x", 3, None], ids=["list", "text", "int", "null"])
def test_a_body_that_is_not_a_map_is_refused(codec, body):
    env = envelope()
    env["b"] = body
    rejects(codec, cbor2.dumps(env), "'b'", "body", "map")


def test_an_envelope_without_a_body_is_refused(codec):
    env = envelope()
    del env["b"]
    rejects(codec, cbor2.dumps(env), "body")


@pytest.mark.parametrize("version", [2, 0, None, "1", True, 1.0, 2 ** 20_000],
                         ids=["2", "0", "null", "text", "true", "float", "bignum"])
def test_any_protocol_version_but_1_is_refused(codec, version):
    message = rejects(codec, frame(v=version), "protocol version", "speaks 1")
    assert len(message) < 200


def test_an_envelope_without_a_version_is_refused(codec):
    env = envelope()
    del env["v"]
    rejects(codec, cbor2.dumps(env), "version")


def test_an_unknown_envelope_field_is_refused_by_name(codec):
    rejects(codec, frame(trace="abc"), "unknown", "trace")


def test_an_unknown_message_type_is_refused_by_name(codec):
    rejects(codec, frame("launch_missiles"), "unknown message type", "launch_missiles")


def test_an_unknown_body_field_is_refused_by_name(codec):
    rejects(codec, frame("put", put_body(ttl=5)), "put", "unknown", "ttl")


@pytest.mark.parametrize("missing", ["bucket", "key", "value"])
def test_a_missing_required_field_is_refused_by_name(codec, missing):
    body = put_body()
    del body[missing]
    rejects(codec, frame("put", body), "put", "missing", repr(missing))


def test_optional_fields_may_be_left_out_or_null(codec):
    assert codec.decode(frame("put", put_body())).body == put_body()
    body = put_body(context=None, w=None, forwarded=None)
    assert codec.decode(frame("put", body)).body == body


@pytest.mark.parametrize("field, value, words", [
    ("key", 42, ["'key'", "int"]),
    ("key", b"alice", ["'key'", "bytes"]),
    ("bucket", ["carts"], ["'bucket'", "list"]),
    ("w", True, ["'w'", "integer", "bool"]),
    ("w", 2.0, ["'w'", "integer", "float"]),
    ("w", "2", ["'w'", "integer", "str"]),
    ("w", 0, ["'w'", "between 1 and 64"]),
    ("w", 65, ["'w'", "between 1 and 64"]),
    ("w", -1, ["'w'", "between"]),
    ("context", "opaque", ["'context'", "bytes"]),
    ("forwarded", 1, ["'forwarded'", "boolean"]),
], ids=["key-int", "key-bytes", "bucket-list", "w-bool", "w-float", "w-text", "w-zero",
        "w-too-big", "w-negative", "context-text", "forwarded-int"])
def test_a_field_of_the_wrong_type_or_range_is_refused_by_name(codec, field, value, words):
    rejects(codec, frame("put", put_body(**{field: value})), "put", *words)


def test_a_huge_integer_in_a_field_is_refused_with_a_short_message(codec):
    message = rejects(codec, frame("put", put_body(w=2 ** 100_000)), "'w'", "bit integer")
    assert len(message) < 200


@pytest.mark.parametrize("req_id", [-1, 2 ** 63, 2 ** 64, 2 ** 200, True, "7", 1.5],
                         ids=["negative", "2**63", "2**64", "bignum", "bool", "text", "float"])
def test_a_request_id_that_is_not_a_non_negative_64_bit_integer_is_refused(codec, req_id):
    rejects(codec, frame(id=req_id), "'id'", "non-negative integer")


def test_the_largest_and_smallest_request_ids_and_null_are_accepted(codec):
    for req_id in (0, 2 ** 63 - 1, None):
        assert codec.decode(frame(id=req_id)).id == req_id


@pytest.mark.parametrize("sender", [5, "n" * 257, b"n1"])
def test_a_sender_that_is_not_a_short_node_name_is_refused(codec, sender):
    rejects(codec, frame(**{"from": sender}), "'from'")


@pytest.mark.parametrize("bucket", ["a/b", "../etc", "", "carts bucket", "b" * 129],
                         ids=["slash", "dotdot-slash", "empty", "space", "too-long"])
def test_a_bad_bucket_name_is_refused(codec, bucket):
    rejects(codec, frame("get", {"bucket": bucket, "key": "alice"}), "get", "'bucket'")


def test_bucket_names_of_letters_digits_and_dot_dash_underscore_are_accepted(codec):
    body = {"bucket": "Carts_v2.eu-west", "key": "alice"}
    assert codec.decode(frame("get", body)).body == body


def test_an_empty_key_is_refused(codec):
    rejects(codec, frame("get", {"bucket": "carts", "key": ""}), "get", "'key'", "non-empty")


def test_a_key_longer_than_the_limit_is_refused(codec):
    body = {"bucket": "carts", "key": "k" * (MAX_KEY_CHARS + 1)}
    rejects(codec, frame("get", body), "'key'", f"more than {MAX_KEY_CHARS}")


def test_a_key_exactly_at_the_limit_is_accepted(codec):
    body = {"bucket": "carts", "key": "k" * MAX_KEY_CHARS}
    assert codec.decode(frame("get", body)).body["key"] == body["key"]


@pytest.mark.parametrize("msg_type, body, words", [
    ("replica_put", {"bucket": "b", "key": "k", "versions": [1]}, ["'versions'", "item 0"]),
    ("replica_put", {"bucket": "b", "key": "k", "versions": {}}, ["'versions'", "list"]),
    ("replica_get_ok", {"versions": [{}] * 1025}, ["'versions'", "more than 1024"]),
    ("gossip", {"members": ["n1"]}, ["'members'", "item 0", "map"]),
    ("error", {"code": "x", "message": "m" * 4097}, ["'message'", "more than 4096"]),
], ids=["versions-item", "versions-map", "too-many-values", "members-item", "error-too-long"])
def test_lists_and_texts_in_bodies_are_checked_item_by_item_and_bounded(codec, msg_type, body,
                                                                      words):
    rejects(codec, frame(msg_type, body), msg_type, *words)


def test_the_message_naming_many_unknown_fields_stays_short(codec):
    body = put_body(**{f"{i:05d}" + "x" * 10_000: i for i in range(1000)})
    message = rejects(codec, frame("put", body), "unknown fields", "more")
    assert len(message) < 1000


# ====================================================================== huge claimed lengths


@pytest.mark.parametrize("data", [
    head(3, 2 ** 32 - 1) + b"abc",                          # text string of 4 GiB - 1
    head(2, 2 ** 32) + b"abc",                              # byte string of 4 GiB
    head(2, 2 ** 64 - 1) + b"abc",                          # byte string of 16 EiB
    head(4, 2 ** 60) + b"\x01\x02",                         # array of 2**60 items
    head(4, 2 ** 32) + b"\x01",                             # array of 2**32 items
    head(5, 2 ** 60) + text_item("a") + b"\x01",            # map of 2**60 pairs
    put_frame_with_raw_value(head(2, 2 ** 32) + b"xy"),     # inside a valid put
    put_frame_with_raw_value(head(4, 2 ** 60) + b"\x00"),   # inside a valid put
], ids=["text-4GiB", "bytes-4GiB", "bytes-2**64", "array-2**60", "array-2**32", "map-2**60",
        "put-value-bytes-4GiB", "put-value-array-2**60"])
def test_a_header_claiming_a_huge_length_fails_fast_without_allocating(codec, data):
    rejects(codec, data, "not a valid CBOR item")


@pytest.mark.parametrize("data", [
    head(4, 2 ** 60) + b"\x00" * 100,
    head(5, 2 ** 60) + (text_item("a") + b"\x00") * 50,
], ids=["array", "map"])
def test_a_huge_claimed_length_with_some_items_following_fails_fast(codec, data):
    rejects(codec, data, "not a valid CBOR item")


def test_request_id_of_a_huge_claimed_length_is_none(codec):
    assert codec.request_id_of(head(2, 2 ** 32) + b"abc") is None


# ====================================================================== nesting


@pytest.mark.parametrize("data", [
    b"\x81" * 10_000 + b"\x00",                              # [[[[...0...]]]]
    b"\xa1\x61a" * 10_000 + b"\x00",                         # {"a": {"a": ...}}
    head(6, 9999) * 10_000 + b"\x00",                        # tag(tag(tag(...)))
    head(6, 258) * 10_000 + b"\x80",                         # set(set(set(...)))
    put_frame_with_raw_value(b"\x81" * 10_000 + b"\x00"),    # deep inside a valid put
], ids=["arrays", "maps", "unknown-tags", "set-tags", "inside-put"])
def test_deep_nesting_is_refused(codec, data):
    rejects(codec, data, "depth")


def test_moderately_nested_values_are_accepted(codec):
    depth = MAX_DEPTH - 8  # the envelope and body maps take two levels
    value = 0
    for _ in range(depth):
        value = [value]
    assert codec.decode(frame("put", put_body(value=value))).body["value"] == value


# ====================================================================== CBOR features refused


@pytest.mark.parametrize("raw", [
    b"\x9f\x01\x02\xff",                                     # array
    b"\xbf\x61a\x01\xff",                                    # map
    b"\x7f\x61a\x61b\xff",                                   # text string
    b"\x5f\x41a\x41b\xff",                                   # byte string
], ids=["array", "map", "text", "bytes"])
def test_indefinite_length_items_are_refused(codec, raw):
    rejects(codec, put_frame_with_raw_value(raw), "indefinite")


def test_an_indefinite_length_envelope_is_refused(codec):
    rejects(codec, b"\xbf" + text_item("v") + b"\x01\xff", "indefinite")


def test_a_duplicate_envelope_key_is_refused(codec):
    data = raw_map([(text_item("v"), b"\x01"), (text_item("t"), text_item("ping")),
                    (text_item("b"), b"\xa0"), (text_item("t"), text_item("put"))])
    rejects(codec, data, "duplicate")


def test_a_duplicate_body_key_is_refused(codec):
    body = raw_map([(text_item("bucket"), text_item("carts")),
                    (text_item("key"), text_item("alice")),
                    (text_item("key"), text_item("bob"))])
    data = raw_map([(text_item("v"), b"\x01"), (text_item("t"), text_item("get")),
                    (text_item("b"), body)])
    rejects(codec, data, "duplicate")


def test_a_duplicate_key_inside_a_value_is_refused(codec):
    value = raw_map([(text_item("a"), b"\x01"), (text_item("a"), b"\x02")])
    rejects(codec, put_frame_with_raw_value(value), "duplicate")


@pytest.mark.parametrize("raw_key", [
    b"\x01",                     # integer
    b"\x20",                     # negative integer
    b"\xf9\x7e\x00",             # float NaN
    b"\x81\x01",                 # array
    b"\xf5",                     # true
    b"\xf6",                     # null
], ids=["int", "negative-int", "nan", "array", "bool", "null"])
def test_map_keys_that_are_not_text_are_refused(codec, raw_key):
    rejects(codec, raw_map([(raw_key, b"\x01")]), "map key")
    rejects(codec, put_frame_with_raw_value(raw_map([(raw_key, b"\x01")])), "map key")


def test_trailing_bytes_after_the_envelope_are_refused(codec):
    rejects(codec, frame() + b"\x00", "trailing")


def test_an_empty_frame_is_refused(codec):
    rejects(codec, b"", "not a valid CBOR item")


def test_text_that_is_not_utf8_is_refused(codec):
    rejects(codec, put_frame_with_raw_value(b"\x62\xff\xfe"), "text string")


# ====================================================================== semantic tags


@pytest.mark.parametrize("number, raw_content", [
    (28, b"\x81\x01"),                                       # shareable (value sharing)
    (29, b"\x00"),                                           # shared reference
    (25, b"\x00"),                                           # string reference
    (256, b"\x81\x63abc"),                                   # string-ref namespace
    (35, text_item("^(a+)+$")),                              # regular expression
    (4, cbor2.dumps([-(10 ** 9), 5])),                       # decimal fraction, huge exponent
    (5, cbor2.dumps([10 ** 18, 5])),                         # bigfloat, huge exponent
    (4, cbor2.dumps([2 ** 70, 5])),                          # decimal fraction, bignum exponent
    (30, cbor2.dumps([1, 3])),                               # rational
    (9999, b"\x01"),                                         # unknown tag
    (55799, b"\x01"),                                        # self-described CBOR
    (36, text_item("Content-Type: text/plain\n\nhi")),       # MIME message
], ids=["28-shareable", "29-sharedref", "25-stringref", "256-stringref-namespace",
        "35-regex", "4-decimal", "5-bigfloat", "4-decimal-bignum-exponent", "30-rational",
        "9999-unknown", "55799-self-describe", "36-mime"])
def test_semantic_tags_outside_the_safe_set_are_refused_by_number(codec, number, raw_content):
    rejects(codec, put_frame_with_raw_value(tag(number, raw_content)),
            f"semantic tag {number}", "not accepted")


def test_a_refused_tag_deep_inside_a_value_is_still_refused(codec):
    value = raw_map([(text_item("items"), b"\x82\x01" + tag(29, b"\x00"))])
    rejects(codec, put_frame_with_raw_value(value), "semantic tag 29")


def test_a_refused_tag_on_the_envelope_itself_is_refused(codec):
    rejects(codec, tag(28, frame()), "semantic tag 28")


@pytest.mark.parametrize("raw, expected", [
    (tag(0, text_item("2020-01-02T03:04:05Z")),
     datetime.datetime(2020, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)),
    (tag(1, cbor2.dumps(1_500_000_000)),
     datetime.datetime.fromtimestamp(1_500_000_000, datetime.UTC)),
    (tag(2, cbor2.dumps(b"\x01" + b"\x00" * 16)), 2 ** 128),
    (tag(3, cbor2.dumps(b"\x01" + b"\x00" * 16)), -(2 ** 128) - 1),
    (tag(37, cbor2.dumps(uuid.UUID(int=12345).bytes)), uuid.UUID(int=12345)),
    (tag(258, cbor2.dumps(["book", "pen"])), {"book", "pen"}),
], ids=["0-datetime", "1-epoch", "2-bignum", "3-negative-bignum", "37-uuid", "258-set"])
def test_the_safe_tags_are_accepted_inside_a_put_value(codec, raw, expected):
    assert codec.decode(put_frame_with_raw_value(raw)).body["value"] == expected


@pytest.mark.parametrize("raw", [
    tag(0, text_item("not a date")),
    tag(1, cbor2.dumps(10 ** 30)),
    tag(1, b"\xf9\x7e\x00"),                                 # NaN seconds
    tag(2, text_item("123")),
    tag(37, cbor2.dumps(b"short")),
], ids=["0-garbage", "1-out-of-range", "1-nan", "2-text", "37-short"])
def test_a_safe_tag_with_malformed_content_is_refused(codec, raw):
    rejects(codec, put_frame_with_raw_value(raw), "not a valid CBOR item")


def test_safe_tagged_values_round_trip_through_the_codec(codec):
    value = {"when": datetime.datetime(2021, 5, 6, 7, 8, 9, tzinfo=datetime.UTC),
             "id": uuid.UUID(int=7), "big": -(2 ** 100), "tags": {"a", "b"}}
    data = codec.encode("put", put_body(value=value))
    assert codec.decode(data).body["value"] == value


# ====================================================================== frame size


def test_a_frame_over_the_size_limit_is_refused_before_decoding():
    small = Codec(max_bytes=1024)
    # Garbage of 1025 bytes: the size, not the CBOR, is what the message names.
    rejects(small, b"\xff" * 1025, "1025 bytes", "1024-byte limit")
    big_but_valid = frame("put", put_body(value="x" * 2000))
    rejects(small, big_but_valid, "exceeds", "1024-byte limit")
    # Only the envelope's head is read to address the refusal: the sender hears why.
    assert small.request_id_of(big_but_valid) == 7


def test_a_frame_exactly_at_the_size_limit_is_accepted():
    data = frame("put", put_body(value="x" * 500))
    assert Codec(max_bytes=len(data)).decode(data).body["value"] == "x" * 500


def test_encoding_a_message_over_the_size_limit_is_refused():
    with pytest.raises(WireError, match="exceeds the 1024-byte limit"):
        Codec(max_bytes=1024).encode("put", put_body(value="x" * 2000))


def test_encoding_a_value_cbor_cannot_represent_is_a_wire_error(codec):
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(WireError, match="cannot be encoded"):
        codec.encode("put", put_body(value=cyclic))
    with pytest.raises(WireError, match="cannot be encoded"):
        codec.encode("put", put_body(value=object()))


# ====================================================================== round trips

#: One valid body per built-in message type, using every optional field somewhere.
VALID_BODIES: dict[str, dict] = {
    "get": {"bucket": "carts", "key": "alice", "r": 2, "resolve": True,
            "ring": b"\x07" * 16},
    "put": {"bucket": "carts", "key": "alice", "value": {"items": ["book", "pen"], "n": 2},
            "context": b"\x01ctx", "w": 2, "forwarded": False},
    "delete": {"bucket": "carts", "key": "alice", "context": b"ctx", "w": 1,
               "forwarded": True},
    "status": {},
    "inspect": {"bucket": "default", "key": "alice"},
    "preflist": {"bucket": "default", "key": "alice"},
    "ping": {},
    "ring": {},
    "replica_get": {"bucket": "carts", "key": "alice"},
    "replica_put": {"bucket": "carts", "key": "alice",
                    "versions": [{"value": [1, 2], "clock": [["n1", 3]], "tombstone": False}]},
    "replica_put_many": {"items": [{"bucket": "carts", "key": "alice", "versions": []}]},
    "gossip": {"members": [{"name": "n1", "address": "tcp://127.0.0.1:7101", "state": "up",
                            "tokens": [1, 2 ** 40]}]},
    "get_ok": {"siblings": [{"value": {"items": ["book"]}, "timestamp": 1.5}],
               "context": b"ctx"},
    "put_ok": {"context": b"ctx", "ring_stale": True},
    "ring_ok": {"digest": b"\x07" * 16, "q": 256, "tokens": b"\x00" * 32, "owners": [0, 1],
                "members": [["n1", "tcp://127.0.0.1:7101", "up"],
                            ["n2", "tcp://127.0.0.1:7102", "down"]],
                "n": 3, "buckets": {"carts": 3}},
    "replica_get_ok": {"versions": []},
    "replica_put_ok": {},
    "replica_put_many_ok": {"results": [True, False, "refused: too many siblings"]},
    "gossip_ok": {"members": [{"name": "n2", "state": "suspect"}]},
    "status_ok": {"status": {"node": "n1", "keys": 10, "hints_pending": 0}},
    "inspect_ok": {"inspect": {"node": "n1", "key": "alice", "versions": []}},
    "preflist_ok": {"preflist": {"key": "alice", "nodes": [{"name": "n1", "role": "home"}]}},
    "pong": {"node": "n1"},
    "error": {"code": "wire_error", "message": "frame is not a valid CBOR item"},
    "ae_roots": {"n": 3, "depth": 6, "ranges": [[2 ** 127, 5], [5, 2 ** 100]]},
    "ae_hashes": {"n": 3, "depth": 6, "start": 5, "end": 2 ** 100, "level": 1,
                  "indices": [0, 1]},
    "ae_keys": {"n": 3, "depth": 6, "start": 5, "end": 2 ** 100, "leaf": 63},
    "reap": {"bucket": "carts", "key": "alice", "versions": []},
    "join": {"seed": "tcp://127.0.0.1:7101"},
    "leave": {},
    "remove": {"name": "n4"},
    "ae_roots_ok": {"roots": [b"\x00" * 16, None]},
    "ae_hashes_ok": {"hashes": [b"\x01" * 16, b"\x02" * 16]},
    "ae_keys_ok": {"keys": {"carts/alice": b"\x03" * 16}},
    "reap_ok": {"reaped": True},
    "join_ok": {},
    "leave_ok": {},
    "remove_ok": {},
}


def test_there_is_a_valid_example_body_for_every_built_in_message_type():
    assert set(VALID_BODIES) == set(BUILT_IN_SCHEMAS)


@pytest.mark.parametrize("msg_type", sorted(BUILT_IN_SCHEMAS))
def test_every_built_in_message_type_round_trips(codec, msg_type):
    body = VALID_BODIES[msg_type]
    data = codec.encode(msg_type, body, req_id=42, sender="n1")
    assert codec.decode(data) == Message(msg_type, body, 42, "n1")


@pytest.mark.parametrize("msg_type", sorted(BUILT_IN_SCHEMAS))
def test_every_built_in_message_type_round_trips_without_id_or_sender(codec, msg_type):
    data = codec.encode(msg_type, VALID_BODIES[msg_type])
    assert codec.decode(data) == Message(msg_type, VALID_BODIES[msg_type], None, None)


def test_an_encoded_frame_is_the_versioned_envelope(codec):
    data = codec.encode("get", VALID_BODIES["get"], req_id=9, sender="n3")
    assert cbor2.loads(data) == {"v": 1, "t": "get", "id": 9, "from": "n3",
                                 "b": VALID_BODIES["get"]}


def test_register_adds_a_message_type_to_that_codec_only(codec):
    schema = {"range": Field(text(64)), "root": Field(integer(0, 2 ** 64 - 1)),
              "depth": Field(integer(0, 16), required=False)}
    data = codec.encode("ping", {})  # any codec can encode; decoding is what checks types
    raw = cbor2.dumps(envelope("merkle_root", {"range": "0-99", "root": 12345}))
    rejects(codec, raw, "unknown message type", "merkle_root")

    codec.register("merkle_root", schema)
    assert codec.decode(raw) == Message("merkle_root", {"range": "0-99", "root": 12345}, 7,
                                        "n1")
    rejects(codec, cbor2.dumps(envelope("merkle_root", {"range": "0-99"})), "missing",
            "'root'")
    rejects(codec, cbor2.dumps(envelope("merkle_root", {"range": "0-99", "root": -1})),
            "'root'", "between")

    # Each node has its own codec: another one does not know the new type.
    rejects(Codec(), raw, "unknown message type")
    assert "merkle_root" not in BUILT_IN_SCHEMAS
    assert codec.decode(data).type == "ping"


def test_registering_a_message_type_twice_raises_value_error(codec):
    codec.register("merkle_root", {})
    with pytest.raises(ValueError, match="merkle_root"):
        codec.register("merkle_root", {})


def test_registering_over_a_built_in_message_type_raises_value_error(codec):
    with pytest.raises(ValueError, match="'put'"):
        codec.register("put", {})


# ====================================================================== request_id_of


@pytest.mark.parametrize("data", [
    frame("launch_missiles"),                                # unknown type
    frame("put", {"bucket": "carts"}),                       # missing fields
    frame("put", put_body(w=0)),                             # field out of range
    frame(v=2),                                              # wrong version
    frame(trace=1),                                          # unknown envelope field
], ids=["unknown-type", "missing-field", "bad-field", "wrong-version", "unknown-envelope-field"])
def test_request_id_of_recovers_the_id_of_a_frame_that_fails_validation(codec, data):
    with pytest.raises(WireError):
        codec.decode(data)
    assert codec.request_id_of(data) == 7


@pytest.mark.parametrize("data", [
    b"",
    b"\xff\x00garbage",
    b"\x81" * 10_000,
    cbor2.dumps([7]),
    cbor2.dumps(7),
    cbor2.dumps({"v": 1, "t": "ping", "b": {}}),
    frame(id=-1),
    frame(id=True),
    frame(id="7"),
    frame(id=2 ** 64),
], ids=["empty", "garbage", "deep", "list", "int", "no-id", "negative-id", "bool-id",
        "text-id", "bignum-id"])
def test_request_id_of_is_none_for_garbage_or_an_unusable_id(codec, data):
    assert codec.request_id_of(data) is None


@FUZZ
@given(data=st.binary(max_size=256))
def test_request_id_of_never_raises(data):
    rid = Codec().request_id_of(data)
    assert rid is None or (type(rid) is int and 0 <= rid < 2 ** 63)
