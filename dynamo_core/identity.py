"""Actor epochs: a node's actor id follows its data, not its directory.

Every version a node coordinates carries a dot ``(actor, counter)``, and the store records,
per key, the highest counter the actor issued. That record is what keeps a dot from being
issued twice. A node whose storage may no longer hold every counter it issued (a memory
engine, a wiped or replaced storage directory, a restored backup, a crash on an engine that
does not sync each commit) must not go on with the same actor: it would hand out dots that
already name other versions, and replicas would keep one of two different writes under one
dot and silently drop the other (the class of bug Riak calls kv679). Such a node starts a
new *actor epoch*: a fresh actor id, persisted before first use.

The rule, checked at every start against two records that are written together:

* ``node.cbor`` in the data directory names the actor and the *boot* (a random token drawn
  at each start);
* the storage engine holds an identity record with the same actor and boot, and whether
  the node stopped cleanly.

The actor is kept only when the engine is durable, the storage's record names the same
actor and boot as ``node.cbor`` (so the storage is the very one this node last ran on, not
a copy or an older backup), and either the engine syncs every commit (power-safe) or the
previous run stopped cleanly. Anything else starts a new epoch. A new epoch costs one more
entry in the clocks of keys this node writes; it never loses data.

This module only decides; the node runtime reads and writes the records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from random import Random
from typing import Any


@dataclass(frozen=True)
class Epoch:
    """The actor a node runs as, and why it is that one."""

    actor: str
    #: True when this start began a new actor epoch
    new: bool
    reason: str


def choose_actor(name: str, saved: Mapping[str, Any] | None,
                 stored: Mapping[str, Any] | None, *, durable: bool, power_safe: bool,
                 rng: Random) -> Epoch:
    """The actor for this start, from ``node.cbor`` (``saved``) and the storage's record."""
    if saved is None:
        reason = "a new node"
    elif not durable:
        reason = "its storage engine does not survive a restart"
    elif stored is None:
        reason = "its storage holds no identity record (new, wiped or replaced storage)"
    elif stored.get("actor") != saved.get("actor") or stored.get("boot") != saved.get("boot"):
        reason = "its storage is not the one it last ran on (a copy or an older backup)"
    elif not power_safe and not stored.get("clean", False):
        reason = "it did not stop cleanly and its engine does not sync each commit"
    else:
        return Epoch(str(saved["actor"]), False, "its storage is the one it last ran on")
    return Epoch(new_actor(name, rng), True, reason)


def new_actor(name: str, rng: Random) -> str:
    """A fresh actor id: the node's name and 48 random bits, so it never repeats."""
    return f"{name}.{rng.getrandbits(48):012x}"


def new_boot(rng: Random) -> str:
    """The token tying ``node.cbor`` to the storage of one run."""
    return f"{rng.getrandbits(64):016x}"
