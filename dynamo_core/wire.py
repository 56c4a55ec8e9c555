"""The one wire format: a versioned CBOR envelope, one item per ZeroMQ frame.

Envelope: ``{"v": 1, "t": <type>, "id": <request id or null>, "from": <node name or null>,
"b": <body map>}``, plus ``"exp"``, the wall-clock time after which a request is void, on
requests between nodes (a request that waited in a queue towards a node that was down or
paused must not be carried out long after its sender gave up on it). Every frame from the
network is untrusted: it is decoded with limits
(size, items and decoded size, nesting depth, no indefinite lengths, no duplicate map keys,
map keys only text or bytes, no semantic tags but a small harmless set) and then checked
against the schema of its message type before any protocol code sees it. Anything else
raises :class:`Refused` (a :class:`WireError`) with a message that names the problem and
the request it belongs to, which the node sends back as an error reply. A frame is decoded
at most once, refused or not.
"""

from __future__ import annotations

import datetime
import io
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import cbor2

from .errors import WireError

PROTOCOL_VERSION = 1

#: Default bound on one frame; the transport also sets it as ZeroMQ's MAXMSGSIZE.
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 64
MAX_KEY_CHARS = 4096
#: Keys carried by one replica_put_many.
MAX_BATCH_ITEMS = 1024
#: Frames one ZeroMQ message may carry, each a request (or an answer) of its own: a node
#: sends a turn's requests to one peer, and its answers to one node, as one message.
MAX_PARTS = 64
MAX_BUCKET_CHARS = 128

#: CBOR data items one frame may hold: every head counts (a container, each element, each
#: map key and value, a tag). cbor2 (6.3) has no such limit, and decoding costs per item, not
#: per byte: 16 MiB of empty maps is 16 million dicts, 1.2 GB and seconds of a blocked node.
#: At this cap a frame decodes in at most ~0.15 s even of the costliest items (sets, UUIDs,
#: dates: ~0.5 us each) and is refused after ~50 ms of scanning. Nodes' own frames stay
#: below it: a key's versions are held to it (see :mod:`store`) and a batch of many keys to
#: :data:`SCAN_FREE_BYTES`, and one key is about a hundred items per version plus its value.
MAX_ITEMS = 1 << 18
#: What the objects one frame decodes to may take in memory, estimated from the item heads
#: before anything is allocated (see :data:`_CHARGES`). The frame's string and byte payloads
#: come on top, so decoded size is at most the frame's size plus this: about what
#: :data:`MAX_ITEMS` of ordinary items take (clock entries ~53 bytes an item, lists of small
#: maps ~110), while a frame of nothing but empty sets or one-pair maps is refused well
#: before the item cap.
MAX_OBJECT_BYTES = 32 * 1024 * 1024
#: No encoded byte is charged more than this: a tag's one-byte head (160) plus its share of
#: a one-pair map around it ((232 + 48) / 3).
MAX_CHARGE_PER_BYTE = 256
#: Frames up to this size cannot pass either cap (each item takes at least a byte, each
#: byte is charged at most MAX_CHARGE_PER_BYTE), so they are decoded without a scan: normal
#: traffic pays one length comparison. Batches of many keys are kept to this size.
SCAN_FREE_BYTES = min(MAX_ITEMS, MAX_OBJECT_BYTES // MAX_CHARGE_PER_BYTE)

#: Semantic tags a value may carry: date/times, bignums, UUIDs and sets. Everything else is
#: refused: shared references can build cycles, string references and decimal/bigfloat
#: exponents can blow up memory or CPU, regular expressions can be catastrophic to compile.
SAFE_TAGS = frozenset({0, 1, 2, 3, 37, 258})
_BUILT_IN_TAGS = (4, 5, 25, 28, 29, 30, 35, 36, 52, 54, 100, 256, 260, 261, 1004, 55799)


def _reject_tag(tag: int) -> Callable[..., Any]:
    # cbor2 >= 6 calls a semantic decoder as (value, immutable); accept any arguments so the
    # refusal is ours, with our message, whatever the calling convention.
    def reject(*_args: Any) -> Any:
        raise cbor2.CBORDecodeError(f"semantic tag {tag} is not accepted")
    return reject


def _reject_unknown_tag(*args: Any) -> Any:
    # cbor2 >= 6 calls the tag hook as (tag, immutable); older releases as (decoder, tag).
    tag = next((a for a in args if isinstance(a, cbor2.CBORTag)), None)
    number = tag.tag if tag is not None else "?"
    raise cbor2.CBORDecodeError(f"semantic tag {number} is not accepted")


_REJECTING_DECODERS = {tag: _reject_tag(tag) for tag in _BUILT_IN_TAGS}


def _brief(text: str, limit: int = 200) -> str:
    """Cut a piece of an error message so that attacker-sized input never makes it huge."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _show(value: Any) -> str:
    """A short description of an untrusted value for an error message; never raises."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"a {value.bit_length()}-bit integer"
    try:
        return _brief(repr(value), 60)
    except Exception:  # noqa: BLE001 - a hostile value whose repr fails must not crash
        return f"a {type(value).__name__}"


def _names(keys: Any) -> str:
    """Field names for an error message: at most a few, each cut short."""
    keys = sorted(_brief(str(k), 40) for k in keys)
    more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
    return f"{keys[:5]}{more}"


def _cbor_problem(exc: BaseException) -> str:
    """The decoder's message plus its cause (cbor2 wraps the real reason), kept short."""
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text}: {cause}"
    return _brief(text)


#: The bytes of an item head's argument, by the head's low five bits (24..27); 28..31 are
#: indefinite lengths and reserved values, which the decoder refuses.
_ARG_WIDTH = {24: 1, 25: 2, 26: 4, 27: 8}


def _head(data: bytes, pos: int) -> tuple[int, int, int] | None:
    """The item head at ``pos``: (major type, argument, position after the head), or None
    where no head of a definite item can be read (the end, an indefinite length)."""
    if pos >= len(data):
        return None
    first = data[pos]
    info = first & 31
    if info < 24:
        return first >> 5, info, pos + 1
    width = _ARG_WIDTH.get(info)
    if width is None or pos + 1 + width > len(data):
        return None
    return first >> 5, int.from_bytes(data[pos + 1:pos + 1 + width], "big"), pos + 1 + width


def prescan(data: bytes, max_items: int = MAX_ITEMS, max_objects: int = MAX_OBJECT_BYTES,
            what: str = "frame") -> None:
    """Refuse (WireError) a CBOR item holding more than ``max_items`` items, or whose
    objects would take more than ``max_objects`` bytes decoded, before decoding it.

    Only the item heads are read, in pure Python, and the scan stops as soon as a cap is
    passed: it costs O(min(items, cap)), never O(frame) (string payloads are skipped).
    Malformed CBOR ends the scan quietly: the decoder refuses it, having read no more items
    than the scan did. An item's charge is what CPython allocates for it (3.11, measured),
    the slot it takes in its container included: an integer 40, a string 64, a list 64, a
    float or simple value 48, a tag 160 (a set's table; dates and UUIDs take less), a map 72
    empty, else 232 plus 48 a pair (dicts grow in steps: 224 bytes for 1 to 5 pairs).
    """
    end, pos, todo, items, charge = len(data), 0, 1, 0, 0
    while todo:
        if pos >= end:
            return
        first = data[pos]
        info = first & 31
        if info < 24:
            arg, pos = info, pos + 1
        elif info < 28:
            width = _ARG_WIDTH[info]
            arg = int.from_bytes(data[pos + 1:pos + 1 + width], "big")
            pos += 1 + width
        else:
            return
        major = first >> 5
        todo -= 1
        if major < 2:
            charge += 40
        elif major < 4:
            pos += arg
            charge += 64
        elif major == 4:
            todo += arg
            charge += 64
        elif major == 5:
            todo += 2 * arg
            charge += 232 + 48 * arg if arg else 72
        elif major == 6:
            todo += 1
            charge += 160
        else:
            charge += 48
        items += 1
        if items > max_items:
            raise WireError(f"{what} holds more than {max_items:,} CBOR items (counted to "
                            f"byte {pos:,} of {end:,})")
        if charge > max_objects:
            raise WireError(f"{what} would decode to more than {max_objects:,} bytes of "
                            f"objects ({items:,} items, to byte {pos:,} of {end:,})")


def safe_loads(data: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Any:
    """Decode one untrusted CBOR item with every limit on; raises WireError.

    The frame must hold exactly one item: bytes after it are refused rather than ignored.
    A frame too big to be harmless is scanned first (:func:`prescan`).
    """
    if len(data) > max_bytes:
        raise WireError(f"frame of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    if len(data) > SCAN_FREE_BYTES:
        prescan(data)
    fp = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(
            fp,
            max_depth=MAX_DEPTH,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            strict_hashable_types=True,
            semantic_decoders=_REJECTING_DECODERS,
            tag_hook=_reject_unknown_tag,
        ).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, MemoryError,
            RecursionError, EOFError) as exc:
        raise WireError(f"frame is not a valid CBOR item: {_cbor_problem(exc)}") from None
    # The decoder leaves a seekable stream positioned just after the item it read.
    if fp.tell() != len(data):
        raise WireError(f"frame has {len(data) - fp.tell()} trailing bytes after its CBOR item")
    return item


def _text_at(data: bytes, pos: int, major: int, length: int) -> str | None:
    """The text string whose head ended at ``pos``, if it is one, short and well-formed."""
    if major != 3 or length > 256 or pos + length > len(data):
        return None
    try:
        return data[pos:pos + length].decode("utf-8")
    except UnicodeDecodeError:
        return None


def _envelope_head(frame: bytes) -> dict[str, int | str]:
    """The envelope's integer and text entries before its body ``b``, read from the item
    heads without a decoder: a few bytes' work whatever the frame holds. Reading stops at
    the body or at the first entry that is anything else."""
    head: dict[str, int | str] = {}
    top = _head(frame, 0)
    if top is None or top[0] != 5:
        return head
    pos = top[2]
    for _ in range(min(top[1], 8)):
        key_head = _head(frame, pos)
        if key_head is None:
            break
        key = _text_at(frame, key_head[2], key_head[0], key_head[1])
        value_head = _head(frame, key_head[2] + key_head[1])
        if key is None or key == "b" or value_head is None:
            break
        major, arg, pos = value_head
        if major == 0:
            head[key] = arg
        elif (value := _text_at(frame, pos, major, arg)) is not None:
            head[key] = value
            pos += arg
        elif major != 7:  # null and other simple values are skipped; anything else ends it
            break
    return head


def _origin(rid: Any, sender: Any) -> tuple[int | None, str | None]:
    """A refused frame's request id and sending node, where they are usable as such."""
    return (rid if _is_request_id(rid) else None,
            sender if isinstance(sender, str) and 0 < len(sender) <= 256 else None)


#: What a stored value may be made of: CBOR's plain data and the safe tags' types.
_PLAIN = (str, bytes, int, float, bool, type(None), datetime.datetime, uuid.UUID)


def check_value(value: Any, where: str = "the value", depth: int = 0) -> None:
    """Refuse, naming the place, a value a node would refuse to decode.

    cbor2 encodes far more than a node accepts back (see :data:`SAFE_TAGS`): a set of
    numbers, say, where cbor2's decoder takes only sets of strings. The caller hears of it
    now, with the place named, instead of from a node's refusal.
    """
    if depth > MAX_DEPTH - 8:
        raise WireError(f"{where} is nested deeper than {MAX_DEPTH - 8} levels")
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_value(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, (str, int, bytes)) or isinstance(k, bool):
                raise WireError(f"{where} has a key {k!r}: map keys are strings or integers")
            check_value(item, f"{where}[{k!r}]", depth + 1)
        return
    if isinstance(value, (set, frozenset)):
        if all(isinstance(item, (str, bytes)) for item in value):
            return
        raise WireError(f"{where} is a set holding other things than strings, which the "
                        f"store does not keep (use a list)")
    raise WireError(f"{where} is a {type(value).__name__}, which the store does not keep: "
                    f"values are maps, lists, strings, numbers, bytes, booleans, null, "
                    f"date-times, UUIDs and sets of strings")


def dumps(obj: Any) -> bytes:
    """Encode for the wire or for storage; raises InvalidRequest-style WireError on failure."""
    try:
        return cbor2.dumps(obj)
    except (cbor2.CBOREncodeError, ValueError, TypeError) as exc:
        raise WireError(f"value cannot be encoded as CBOR: {exc}") from None


# ====================================================================== schemas


@dataclass(frozen=True)
class Field:
    """One body field: a check that raises ValueError with the reason, and whether required."""

    check: Callable[[Any], None]
    required: bool = True


def text(max_chars: int = 1024, pattern: Callable[[str], bool] | None = None,
         what: str = "text") -> Callable[[Any], None]:
    def check(v: Any) -> None:
        if not isinstance(v, str):
            raise ValueError(f"must be {what}, got {type(v).__name__}")
        if len(v) > max_chars:
            raise ValueError(f"is {len(v)} characters, more than {max_chars}")
        if pattern is not None and not pattern(v):
            raise ValueError(f"{v[:40]!r} is not a valid {what}")
    return check


def integer(low: int, high: int) -> Callable[[Any], None]:
    def check(v: Any) -> None:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"must be an integer, got {type(v).__name__}")
        if not low <= v <= high:
            raise ValueError(f"must be between {low} and {high}, got {_show(v)}")
    return check


def of_type(*types: type, what: str) -> Callable[[Any], None]:
    def check(v: Any) -> None:
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            raise ValueError(f"must be {what}, got {type(v).__name__}")
    return check


def list_of(item: Callable[[Any], None] | None, max_items: int) -> Callable[[Any], None]:
    def check(v: Any) -> None:
        if not isinstance(v, list):
            raise ValueError(f"must be a list, got {type(v).__name__}")
        if len(v) > max_items:
            raise ValueError(f"has {len(v)} items, more than {max_items}")
        if item is not None:
            for i, x in enumerate(v):
                try:
                    item(x)
                except ValueError as exc:
                    raise ValueError(f"item {i} {exc}") from None
    return check


def anything(_v: Any) -> None:
    """Application values: any CBOR item the decoder accepted."""


def is_bucket_name(name: str) -> bool:
    return bool(name) and all(c.isalnum() or c in "_.-" for c in name)


BUCKET = Field(text(MAX_BUCKET_CHARS, is_bucket_name, "bucket name (letters, digits, _ . -)"))
KEY = Field(text(MAX_KEY_CHARS, lambda k: len(k) > 0, "non-empty key"))
QUORUM = Field(integer(1, 64), required=False)
CONTEXT = Field(of_type(bytes, type(None), what="context bytes or null"), required=False)
MAP = of_type(dict, what="a map")
VERSIONS = Field(list_of(MAP, 1024))
MEMBERS = Field(list_of(MAP, 4096))

FACTOR = Field(integer(1, 64))
RING_DIGEST = Field(of_type(bytes, what="a ring digest"), required=False)
STALE = Field(of_type(bool, what="a boolean"), required=False)
DEPTH = Field(integer(0, 16))
TOKEN = Field(integer(0, (1 << 128) - 1))
def _token_range(v: Any) -> None:
    list_of(integer(0, (1 << 128) - 1), 2)(v)
    if len(v) != 2:
        raise ValueError("must be a [start, end] pair of ring tokens")


RANGE = _token_range

#: A message type's body fields; None (clients only: the reply of an extension message)
#: leaves the fields to the caller, within the decoder's limits.
Schema = Mapping[str, Field] | None

#: The built-in message types. Replies are checked too: a client or peer trusts nothing.
BUILT_IN_SCHEMAS: dict[str, Schema] = {
    # client -> any node
    # "ring": the digest of the ring view a routing client sent the request by
    "get": {"bucket": BUCKET, "key": KEY, "r": QUORUM,
            "resolve": Field(of_type(bool, what="a boolean"), required=False),
            "ring": RING_DIGEST},
    "put": {"bucket": BUCKET, "key": KEY, "value": Field(anything), "context": CONTEXT,
            "w": QUORUM, "forwarded": Field(of_type(bool, what="a boolean"), required=False),
            "ring": RING_DIGEST},
    "delete": {"bucket": BUCKET, "key": KEY, "context": CONTEXT, "w": QUORUM,
               "forwarded": Field(of_type(bool, what="a boolean"), required=False),
               "ring": RING_DIGEST},
    # a routing client asks for the ring (see routing.py)
    "ring": {},
    "status": {},
    "inspect": {"bucket": BUCKET, "key": KEY},
    "preflist": {"bucket": BUCKET, "key": KEY},
    "ping": {},
    # node -> node
    "replica_get": {"bucket": BUCKET, "key": KEY,
                    # true: only this node's own replica, not what it holds as a stand-in
                    "own": Field(of_type(bool, what="a boolean"), required=False)},
    "replica_put": {"bucket": BUCKET, "key": KEY, "versions": VERSIONS,
                    # set on a stand-in's copy: the home node it holds the write for
                    "hint": Field(text(256, lambda n: len(n) > 0, "node name"), required=False)},
    # many keys in one message (hint delivery, anti-entropy, range transfer): each item is
    # a replica_put body without a hint, answered by one result each
    "replica_put_many": {"items": Field(list_of(MAP, MAX_BATCH_ITEMS))},
    # "ring": the digest of the ring the sender's members make (see readiness)
    "gossip": {"members": MEMBERS, "ring": RING_DIGEST},
    # anti-entropy: compare Merkle trees of ranges both replicate, then their leaves
    "ae_roots": {"n": FACTOR, "depth": DEPTH, "ranges": Field(list_of(RANGE, 4096))},
    "ae_hashes": {"n": FACTOR, "depth": DEPTH, "start": TOKEN, "end": TOKEN,
                  "level": Field(integer(0, 16)),
                  "indices": Field(list_of(integer(0, 1 << 16), 1 << 16))},
    "ae_keys": {"n": FACTOR, "depth": DEPTH, "start": TOKEN, "end": TOKEN,
                "leaf": Field(integer(0, 1 << 16))},
    # tombstone reaping: delete the key if it holds exactly these versions
    "reap": {"bucket": BUCKET, "key": KEY, "versions": VERSIONS},
    # membership changes asked by an operator
    "join": {"seed": Field(text(512, lambda a: a.startswith("tcp://"), "tcp:// address")),
             "keep_data": Field(of_type(bool, what="a boolean"), required=False)},
    "leave": {},
    "remove": {"name": Field(text(256, lambda n: len(n) > 0, "node name"))},
    # replies
    # "ring_stale": the request was routed by a ring view that is not the node's own
    "get_ok": {"siblings": Field(list_of(MAP, 1024)),
               "context": Field(of_type(bytes, what="bytes")), "ring_stale": STALE},
    "put_ok": {"context": Field(of_type(bytes, what="bytes")), "ring_stale": STALE},
    "ring_ok": {"digest": Field(of_type(bytes, what="bytes")), "q": Field(integer(0, 1 << 16)),
                "tokens": Field(of_type(bytes, what="bytes")),
                "owners": Field(list_of(integer(0, 1 << 20), 1 << 20)),
                "members": Field(list_of(of_type(list, what="a member"), 1 << 16)),
                "n": FACTOR, "buckets": Field(MAP)},
    "replica_get_ok": {"versions": VERSIONS,
                       # true: this node is still receiving the key's range (see coordinator)
                       "filling": Field(of_type(bool, what="a boolean"), required=False)},
    "replica_put_ok": {"changed": Field(of_type(bool, what="a boolean"), required=False)},
    # per item: true/false (changed or not), or the text of the error that refused it
    "replica_put_many_ok": {"results": Field(list_of(of_type(bool, str, what="a result"),
                                                     MAX_BATCH_ITEMS))},
    "ae_roots_ok": {"roots": Field(list_of(None, 4096))},
    "ae_hashes_ok": {"hashes": Field(list_of(of_type(bytes, what="bytes"), 1 << 16))},
    "ae_keys_ok": {"keys": Field(MAP)},
    "reap_ok": {"reaped": Field(of_type(bool, what="a boolean"))},
    "join_ok": {}, "leave_ok": {}, "remove_ok": {},
    "gossip_ok": {"members": MEMBERS, "ring": RING_DIGEST},
    "status_ok": {"status": Field(MAP)},
    "inspect_ok": {"inspect": Field(MAP)},
    "preflist_ok": {"preflist": Field(MAP)},
    "pong": {"node": Field(text(256), required=False)},
    "error": {"code": Field(text(64)), "message": Field(text(4096)),
              # QuorumNotMet's details: which operation, how many answered of how many
              "op": Field(text(16), required=False), "answered": Field(integer(0, 64), False),
              "required": Field(integer(0, 64), False), "asked": Field(integer(0, 64), False)},
}


def _is_request_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 63


@dataclass(frozen=True)
class Message:
    """A decoded, schema-checked envelope."""

    type: str
    body: dict[str, Any]
    id: int | None = None
    sender: str | None = None
    #: wall-clock time after which the request is void (requests between nodes only)
    expires: float | None = None


class Refused(WireError):
    """A frame the codec refused, with what could be learnt of its origin without decoding
    it again: the request to address the refusal to, and the node that sent it."""

    def __init__(self, message: str, req_id: int | None, sender: str | None) -> None:
        super().__init__(message)
        self.req_id = req_id
        self.sender = sender


class Codec:
    """Encodes and checks envelopes against the message types a node knows.

    Each node has its own codec (protocol extensions add types to it); there is no global
    registry to mutate.
    """

    def __init__(self, schemas: Mapping[str, Schema] = BUILT_IN_SCHEMAS,
                 max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.schemas: dict[str, Schema] = dict(schemas)
        self.max_bytes = max_bytes

    def register(self, msg_type: str, schema: Schema) -> None:
        if msg_type in self.schemas:
            raise ValueError(f"message type {msg_type!r} is already registered")
        self.schemas[msg_type] = schema

    def encode(self, msg_type: str, body: Mapping[str, Any], req_id: int | None = None,
               sender: str | None = None, expires: float | None = None) -> bytes:
        envelope = {"v": PROTOCOL_VERSION, "t": msg_type, "id": req_id, "from": sender,
                    "b": dict(body)}
        if expires is not None:
            envelope["exp"] = expires
        data = dumps(envelope)
        if len(data) > self.max_bytes:
            raise WireError(f"{msg_type} message of {len(data)} bytes exceeds the "
                            f"{self.max_bytes}-byte limit")
        return data

    def decode(self, frame: bytes) -> Message:
        """The checked message of ``frame``; raises :class:`Refused`.

        The frame is decoded once. A refusal names the request and sender from the decoded
        envelope when there is one, else from the item heads before the body (a frame
        refused for something in its body still names the request to answer), never by
        decoding the frame again.
        """
        try:
            envelope = safe_loads(frame, self.max_bytes)
        except WireError as exc:
            head = _envelope_head(frame)
            raise Refused(str(exc), *_origin(head.get("id"), head.get("from"))) from None
        try:
            msg_type, req_id, sender, body = self._envelope(envelope)
            self.check_body(msg_type, body)
        except WireError as exc:
            found = envelope if isinstance(envelope, dict) else {}
            raise Refused(str(exc), *_origin(found.get("id"), found.get("from"))) from None
        return Message(msg_type, body, req_id, sender, envelope.get("exp"))

    def request_id_of(self, frame: bytes) -> int | None:
        """The request id in the head of a frame that is not decoded (an answer to fail, one
        of a message of too many frames): read from its item heads, never decoded."""
        return _origin(_envelope_head(frame).get("id"), None)[0]

    def head_of(self, frame: bytes) -> tuple[str | None, int | None, str | None]:
        """Best effort, from the envelope's head alone: the message type, the request id
        and the sending node. What a node needs to refuse a request without decoding its
        body (see :mod:`dynamo_core.overload`)."""
        head = _envelope_head(frame)
        msg_type = head.get("t")
        return (msg_type if isinstance(msg_type, str) else None,
                *_origin(head.get("id"), head.get("from")))

    def _envelope(self, envelope: Any) -> tuple[str, int | None, str | None, dict[str, Any]]:
        if not isinstance(envelope, dict):
            raise WireError(f"envelope must be a map, got {type(envelope).__name__}")
        unknown = set(envelope) - {"v", "t", "id", "from", "b", "exp"}
        if unknown:
            raise WireError(f"envelope has unknown fields: {_names(unknown)}")
        version = envelope.get("v")
        if type(version) is not int or version != PROTOCOL_VERSION:  # not True, not 1.0
            raise WireError(f"unsupported protocol version {_show(version)} "
                            f"(this node speaks {PROTOCOL_VERSION})")
        msg_type = envelope.get("t")
        if not isinstance(msg_type, str):
            raise WireError("envelope field 't' (message type) must be text")
        if msg_type not in self.schemas:
            raise WireError(f"unknown message type {msg_type[:64]!r}")
        req_id = envelope.get("id")
        if req_id is not None and not _is_request_id(req_id):
            raise WireError("envelope field 'id' must be a non-negative integer or null")
        sender = envelope.get("from")
        if sender is not None and (not isinstance(sender, str) or len(sender) > 256):
            raise WireError("envelope field 'from' must be a node name or null")
        body = envelope.get("b")
        if not isinstance(body, dict):
            raise WireError("envelope field 'b' (body) must be a map")
        expires = envelope.get("exp")
        if expires is not None and (isinstance(expires, bool) or not isinstance(
                expires, (int, float)) or expires != expires):
            raise WireError("envelope field 'exp' must be a time in seconds or absent")
        return msg_type, req_id, sender, body

    def check_body(self, msg_type: str, body: dict[str, Any]) -> None:
        """Raise WireError naming the first way ``body`` breaks the schema of ``msg_type``."""
        schema = self.schemas[msg_type]
        if schema is None:  # a reply the client asked for by name: its fields are the asker's
            return
        unknown = set(body) - set(schema)
        if unknown:
            raise WireError(f"{msg_type}: unknown fields {_names(unknown)}")
        for name, spec in schema.items():
            if name not in body:
                if spec.required:
                    raise WireError(f"{msg_type}: missing field {name!r}")
                continue
            if body[name] is None and not spec.required:
                continue
            try:
                spec.check(body[name])
            except ValueError as exc:
                raise WireError(f"{msg_type}: field {name!r} {exc}") from None
