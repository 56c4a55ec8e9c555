"""The hostile sender of the fuzz test (``tests/test_fuzz_node.py``), run as a process.

It sends ``--frames`` messages to one node from a few raw DEALER sockets, the way any
program on the network could, and drains whatever the node answers. Run apart from the test,
it leaves the test's own process (and its GIL) to the legitimate client it times.

Most messages are cheap, drawn from a pool built once from the seed: random bytes,
truncated envelopes, heads claiming huge lengths, deep nesting, indefinite lengths, tags,
duplicate keys, unknown types, wrong-typed fields, oversize strings, replies to nobody,
expired requests, one-way messages and gossip from peers that do not exist. Besides them:
a valid ping with a fresh random sender name every few messages, a message of more frames
than a node takes every few hundred, and a few big expensive frames at fixed points (many
tiny items just under the size that is decoded unscanned, and up to the frame limit). One
more frame, over the frame limit, goes on a socket of its own (ZeroMQ drops that connection).

Sends never block: when a socket's queue is full (its high-water mark), the worker drains
answers and waits for room. Prints one JSON line: what it sent and how many answers came.

Usage::

    python tests/fuzz_worker.py --node tcp://127.0.0.1:7101 --seed 1 --frames 1000000 \
        --max-bytes 16777216
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import time
from collections import Counter
from collections.abc import Callable

import cbor2
import zmq

SOCKETS = 4
POOL = 4096
#: One message in this many is a valid ping from a name never seen before.
FRESH_PING_EVERY = 5
#: One message in this many carries more frames than a node takes (it is refused whole).
TOO_MANY_PARTS_EVERY = 100
#: Cheap frames go this many to a message (a node serves each frame of a message alone).
PARTS = 8
DRAIN_EVERY = 16
#: Answers sent to nobody who asked: a node must drop them.
REPLIES = [("pong", {}), ("put_ok", {"context": b""}), ("error", {"code": "x", "message": "y"}),
           ("get_ok", {"siblings": [], "context": b""})]


def envelope(msg_type: str = "ping", body: object = None, req_id: object = None,
             sender: object = None, **extra: object) -> bytes:
    doc = {"v": 1, "t": msg_type, "id": req_id, "from": sender,
           "b": {} if body is None else body, **extra}
    return cbor2.dumps(doc)


def head(major: int, arg: int) -> bytes:
    """A CBOR item head with a 64-bit argument (any length claimed)."""
    return bytes([major << 5 | 27]) + struct.pack(">Q", arg)


def cheap_kinds(rng: random.Random) -> dict[str, Callable[[], bytes]]:
    """Makers of the cheap hostile frames, each drawing from ``rng``."""
    def name() -> str:
        return f"peer-{rng.getrandbits(40):x}"

    def rid() -> int:
        return rng.randrange(1 << 62)

    def put(**body: object) -> bytes:
        return envelope("put", {"bucket": "default", "key": "k", "value": 1, **body}, rid())

    return {
        "random-bytes": lambda: rng.randbytes(rng.randrange(1, 200)),
        "truncated": lambda: (lambda f: f[:rng.randrange(1, len(f))])(
            put(value=list(range(rng.randrange(1, 50))))),
        "huge-count": lambda: head(rng.randrange(2, 6), 1 << rng.randrange(20, 64))
        + rng.randbytes(rng.randrange(0, 32)),
        "deep": lambda: rng.choice([b"\x81", b"\xa1\x61k", b"\xc6"]) * rng.randrange(65, 3000)
        + b"\x00",
        "indefinite": lambda: rng.choice([b"\x9f", b"\xbf", b"\x5f", b"\x7f"])
        + rng.randbytes(rng.randrange(0, 20)) + b"\xff",
        "tags": lambda: put(value=cbor2.CBORTag(rng.choice([4, 5, 25, 28, 29, 99999, 258]),
                                                [rng.randrange(9), {"a": 1}])),
        "duplicate-keys": lambda: b"\xa6\x61v\x01\x61t\x64ping\x62id\x01\x61v\x01\x64from"
        b"\xf6\x61b\xa0",
        "unknown-type": lambda: envelope(f"t{rng.getrandbits(32):x}", {}, rid()),
        "wrong-types": lambda: rng.choice([
            put(key=rng.randrange(9)), put(bucket=["x"]), put(w=True), put(r=-1),
            envelope("ping", [], rid()), envelope("ping", {}, "seven"), envelope(v=2),
            envelope("get", {"bucket": "default", "key": "k"}, rid(), sender=7),
            envelope("ping", {}, rid(), exp="soon")]),
        "oversize-strings": lambda: put(key="k" * rng.randrange(4097, 9000)),
        "reply-to-nobody": lambda: envelope(*rng.choice(REPLIES), rid(), name()),
        "expired": lambda: envelope("ping", {}, rid(), name(), exp=1.0),
        "one-way-malformed": lambda: envelope("replica_put", {"bucket": "default"}, None,
                                              name()),
        "bad-gossip": lambda: envelope("gossip", {"members": [{"name": 1}] * 3}, rid(),
                                       name()),
    }


def big_frames(max_bytes: int, scan_free_bytes: int) -> list[bytes]:
    """The expensive ones, cheapest first: tiny items just under the size decoded unscanned
    (empty maps, then empty sets), then empty maps up to the frame limit, claimed up front
    and not (a map claiming 2**62 pairs)."""
    def array_of(item: bytes, size: int) -> bytes:
        count = (size - 9) // len(item)
        return head(4, count) + item * count

    return [array_of(b"\xa0", scan_free_bytes - 1),
            array_of(b"\xd9\x01\x02\x80", scan_free_bytes - 1),
            array_of(b"\xa0", max_bytes - 64),
            head(5, 1 << 62) + b"\x00\xa0" * ((max_bytes - 64) // 2)]


class Fuzzer:
    def __init__(self, address: str, seed: int, max_bytes: int, scan_free_bytes: int) -> None:
        self.rng = random.Random(seed)
        kinds = cheap_kinds(self.rng)
        names = sorted(kinds)
        self.pool = [(kind, kinds[kind]()) for kind in
                     (self.rng.choice(names) for _ in range(POOL))]
        self.big = big_frames(max_bytes, scan_free_bytes)
        self.max_bytes = max_bytes
        self.ctx = zmq.Context()
        self.socks = [self._dealer(address) for _ in range(SOCKETS)]
        self.address = address
        self.sent: Counter[str] = Counter()
        self.answers = 0

    def _dealer(self, address: str) -> zmq.Socket[bytes]:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(address)
        return sock

    def run(self, frames: int) -> None:
        """Send ``frames`` frames: cheap ones PARTS to a message, the rest one a message;
        the big ones at even intervals."""
        big = [(frames * (k + 1) // (len(self.big) + 1), frame)
               for k, frame in enumerate(self.big)]
        sent = messages = 0
        while sent < frames:
            sock = self.socks[messages % SOCKETS]
            messages += 1
            if big and sent >= big[0][0]:
                self._send(sock, [big.pop(0)[1]], "big")
                sent += 1
            elif messages % TOO_MANY_PARTS_EVERY == 0:
                self._send(sock, [envelope("ping", {}, sent)] * 65, "too-many-parts")
                sent += 65
            else:
                cheap = [self._cheap(sent + k) for k in range(min(PARTS, frames - sent))]
                self._send(sock, [frame for _, frame in cheap], *[kind for kind, _ in cheap])
                sent += len(cheap)
            if messages % DRAIN_EVERY == 0:
                self._drain(sock)
        self._over_the_limit()
        self._drain_all(settle=1.0)

    def _cheap(self, i: int) -> tuple[str, bytes]:
        if i % FRESH_PING_EVERY == 0:
            return "fresh-ping", envelope("ping", {}, i, f"n-{self.rng.getrandbits(64):x}")
        return self.pool[self.rng.randrange(POOL)]

    def _over_the_limit(self) -> None:
        sock = self._dealer(self.address)
        sock.send(b"\x00" * (self.max_bytes + 1), zmq.NOBLOCK)
        self.sent["over-the-limit"] += 1
        sock.close(100)

    def _send(self, sock: zmq.Socket[bytes], parts: list[bytes], *kinds: str) -> None:
        """Send one message; each kind given counts one frame sent."""
        while True:
            try:
                sock.send_multipart(parts, zmq.NOBLOCK)
                break
            except zmq.Again:  # the high-water mark: make room, wait for it
                self._drain(sock)
                sock.poll(20, zmq.POLLOUT)
        self.sent.update(kinds)

    def _drain(self, sock: zmq.Socket[bytes]) -> None:
        while True:
            try:
                sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.answers += 1

    def _drain_all(self, settle: float) -> None:
        """Read answers until none came for ``settle`` seconds."""
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < settle:
            before = self.answers
            for sock in self.socks:
                self._drain(sock)
            if self.answers != before:
                quiet_since = time.monotonic()
            time.sleep(0.01)

    def close(self) -> None:
        for sock in self.socks:
            sock.close(0)
        self.ctx.term()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node", required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--frames", type=int, required=True)
    parser.add_argument("--max-bytes", type=int, required=True)
    parser.add_argument("--scan-free-bytes", type=int, required=True)
    args = parser.parse_args()
    fuzzer = Fuzzer(args.node, args.seed, args.max_bytes, args.scan_free_bytes)
    started = time.monotonic()
    try:
        fuzzer.run(args.frames)
    finally:
        fuzzer.close()
    print(json.dumps({"sent": dict(fuzzer.sent), "answers": fuzzer.answers,
                      "seconds": round(time.monotonic() - started, 2)}))


if __name__ == "__main__":
    main()
