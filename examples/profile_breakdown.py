"""Where a process's time goes, by kind of work, from a py-spy profile.

Record a node (or the bench client) while a load runs, in py-spy's raw format::

    py-spy record --pid PID --duration 10 --rate 500 --format raw --output node.txt

then::

    python examples/profile_breakdown.py node.txt [more.txt ...]

Each sample's stack is read from the innermost frame outwards and charged to the first
kind of work a frame belongs to: a sample inside cbor2 called from the wire codec counts as
encoding, one inside SQLite called from the store counts as storage. The kinds are the
README's performance breakdown.
"""

from __future__ import annotations

import sys
from collections import Counter

#: (kind, markers): a frame belongs to the kind if its text holds one of the markers.
#: Checked in this order for each frame, innermost frame first.
KINDS: list[tuple[str, tuple[str, ...]]] = [
    ("storage engine (SQLite/LMDB)", ("diskcache/", "sqlite3", "lmdb", "_storage.py")),
    ("ZeroMQ sends, receives, polls", ("zmq/", "getsockopt", "zmq_transport.py")),
    ("event loop (uvloop or asyncio; epoll)", ("asyncio/", "selectors.py", "uvloop")),
    ("schema checks, version parsing", ("check_body", "_envelope", "from_wire",
                                        "_parse_entry", "parse_timestamp", "check_value")),
    ("CBOR encode/decode", ("cbor2", "wire.py", "to_wire", "encode_context",
                            "decode_context", "_wire_bytes", "fingerprint")),
    ("Merkle trees, anti-entropy filing", ("merkle.py", "antientropy.py")),
    ("ring walk, preference list, liveness", ("ring.py", "sloppy", "liveness.py",
                                              "failure_detectors.py", "plan (")),
    ("versions: reconcile, clocks", ("versions.py",)),
    ("store: records, cache, batches", ("store.py",)),
    ("coordinator and node logic", ("coordinator.py", "core.py", "tasks.py", "node.py",
                                    "transport.py", "admission.py", "handoff.py")),
    ("client and bench", ("client.py", "bench.py", "routing.py")),
]
OTHER = "other (interpreter, imports, logging)"


def kind_of(stack: list[str]) -> str:
    for frame in reversed(stack):
        for kind, markers in KINDS:
            if any(marker in frame for marker in markers):
                return kind
    return OTHER


def breakdown(paths: list[str]) -> tuple[Counter[str], int]:
    counts: Counter[str] = Counter()
    total = 0
    for path in paths:
        with open(path) as f:
            for line in f:
                stack, _, n = line.rstrip("\n").rpartition(" ")
                if not n.isdigit():
                    continue
                counts[kind_of(stack.split(";"))] += int(n)
                total += int(n)
    return counts, total


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    counts, total = breakdown(argv)
    if not total:
        print("no samples", file=sys.stderr)
        return 1
    for kind, n in counts.most_common():
        print(f"{100 * n / total:5.1f}%  {kind}")
    print(f"({total} samples)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
