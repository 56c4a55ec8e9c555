"""Who may ask a node for what: roles, and every permission rule in one place.

With security on (see :mod:`security`), every connection is authenticated by its CURVE
public key, and the key's place in the node's configuration gives the connection a role:

``peer``
    a node of the cluster: every message, including the internal ones (replica reads and
    writes, gossip, anti-entropy, reaping) and the internal field ``forwarded``.
``admin``
    an operator: everything a ``write`` client may do, plus membership changes (``join``,
    ``leave``, ``remove``) and extension messages marked ``access="admin"``.
``write``
    an application: reads and writes of data (``get``, ``put``, ``delete``), and what a
    ``read`` client may do; extension messages are ``write`` unless marked otherwise.
``read``
    a reader: ``get``, the ring, status, inspection, preference lists, ping.

With security off, every connection is :data:`OPEN`: it may do anything, as on a
developer's loopback cluster. The rules are data, not code paths, so a test can walk all
of them and nothing slips through a forgotten ``if``.

This module is pure: it knows message types and body fields, never sockets or keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Roles from the least to the most trusted; each may do what the ones before it may.
ROLES = ("read", "write", "admin", "peer")
#: The roles a client key may be given in configuration (``peer`` comes from the peers list).
CLIENT_ROLES = ROLES[:3]

#: The least role each built-in request needs.
REQUIRED_ROLE: Mapping[str, str] = {
    "get": "read", "ring": "read", "status": "read", "inspect": "read",
    "preflist": "read", "ping": "read",
    "put": "write", "delete": "write",
    "join": "admin", "leave": "admin", "remove": "admin",
    "replica_get": "peer", "replica_put": "peer", "replica_put_many": "peer",
    "gossip": "peer", "ae_roots": "peer", "ae_hashes": "peer", "ae_keys": "peer",
    "reap": "peer",
}
#: Body fields only a node may set, whatever the message: ``forwarded`` tells a home that
#: the put was sent on by another node (so it must coordinate, not forward again).
PEER_ONLY_FIELDS = frozenset({"forwarded"})
#: The role an extension message needs when its ``MessageType`` does not say.
DEFAULT_EXTENSION_ROLE = "write"


@dataclass(frozen=True)
class Principal:
    """Who sent a request: the role its key was given, and the key (empty when open).

    ``key`` is what per-client accounting (admission) counts by when security is on.
    """

    role: str
    key: bytes = b""

    @property
    def is_open(self) -> bool:
        return self.role == "open"

    @property
    def may_be_node(self) -> bool:
        """Whether what the sender says of itself (its node name) may be believed."""
        return self.role in ("open", "peer")


#: Security off: anyone who reaches the port may do anything.
OPEN = Principal("open")


def admission_key(identity: bytes, principal: Principal) -> bytes:
    """What per-client admission counts a request against: the client's public key with
    security on (however many connections it opens), else its connection."""
    return principal.key or identity


def includes(role: str, required: str) -> bool:
    """Whether ``role`` may do what ``required`` may (roles are ordered)."""
    return ROLES.index(role) >= ROLES.index(required)


def refusal(principal: Principal, msg_type: str, body: Mapping[str, Any],
            extension_roles: Mapping[str, str]) -> str | None:
    """Why ``principal`` may not send this request, or None if it may.

    ``extension_roles`` gives the role each extension message type needs. A type found in
    neither table (a reply type sent as a request) needs ``peer``: it is refused as a
    request later anyway, and a client learns nothing from which of the two refused it.
    """
    if principal.is_open:
        return None
    required = REQUIRED_ROLE.get(msg_type) or extension_roles.get(msg_type) or "peer"
    if not includes(principal.role, required):
        return (f"{msg_type} needs the {required} role; this client's key has the "
                f"{principal.role} role")
    if principal.role != "peer":
        internal = PEER_ONLY_FIELDS.intersection(body)
        if internal:
            return (f"{msg_type}: field {sorted(internal)[0]!r} is set only by nodes, "
                    f"and this client's key has the {principal.role} role")
    return None
