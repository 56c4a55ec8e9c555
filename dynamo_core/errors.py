"""Errors a user of the store can meet. Each says what happened in words.

The wire carries an error as ``{"code": <class code>, "message": <text>, ...details}`` and
:func:`from_wire` turns it back into the same class on the client side.
"""

from __future__ import annotations

from typing import Any


class DynamoError(Exception):
    """Base of every error this package raises on purpose."""

    code = "error"

    def details(self) -> dict[str, Any]:
        """Structured fields carried on the wire beside the message."""
        return {}


class InvalidRequest(DynamoError):
    """The request itself is wrong (bad key, bad value, bad quorum numbers, bad context)."""

    code = "invalid_request"


class ConfigError(DynamoError):
    """The configuration file or a command-line setting is wrong."""

    code = "config_error"


class WireError(InvalidRequest):
    """A frame could not be decoded or does not fit the message schema."""

    code = "wire_error"


class Forbidden(DynamoError):
    """The sender's key does not have the role the request needs (see ``access``)."""

    code = "forbidden"


class Timeout(DynamoError):
    """No answer arrived in time."""

    code = "timeout"


class Unavailable(DynamoError):
    """No node that could serve the request is reachable."""

    code = "unavailable"


class Overloaded(DynamoError):
    """A bound was hit (open requests, siblings, queue); the request was refused, not queued."""

    code = "overloaded"


class Busy(Overloaded):
    """The node is past its load limits right now (its queue of requests is standing, it
    coordinates as many requests as it may, or this client sent more than its rate) and
    refused the request at once, before doing anything with it.

    Safe to retry, puts included: nothing was applied. Retry after a pause that grows
    with each refusal (the clients do, see :mod:`dynamo_core.retry`), or ask another node.
    """

    code = "busy"


class StorageFailed(DynamoError):
    """A node's storage engine raised (disk full, I/O error): nothing was stored there."""

    code = "storage_failed"


class ResolverFailed(DynamoError):
    """A bucket's resolver raised on the siblings of a key (a resolver bug, or bad data)."""

    code = "resolver_failed"


class QuorumNotMet(DynamoError):
    """Fewer replicas answered than the quorum needs."""

    code = "quorum_not_met"

    def __init__(self, op: str, answered: int, required: int, asked: int, why: str = "") -> None:
        self.op = op
        self.answered = answered
        self.required = required
        self.asked = asked
        suffix = f": {why}" if why else ""
        super().__init__(
            f"{op} quorum not met: {answered} of {asked} replicas answered, "
            f"{required} required{suffix}"
        )

    def details(self) -> dict[str, Any]:
        return {"op": self.op, "answered": self.answered, "required": self.required,
                "asked": self.asked}


_BY_CODE = {cls.code: cls for cls in (DynamoError, InvalidRequest, ConfigError, WireError,
                                        Forbidden, Timeout, Unavailable, Overloaded, Busy,
                                        ResolverFailed, StorageFailed)}


def to_wire(error: DynamoError) -> dict[str, Any]:
    return {"code": error.code, "message": str(error), **error.details()}


def from_wire(body: dict[str, Any]) -> DynamoError:
    """Rebuild the error a node reported; unknown codes become a plain DynamoError."""
    code = body.get("code")
    message = str(body.get("message", "unknown error"))
    if code == QuorumNotMet.code:
        try:
            err = QuorumNotMet(str(body["op"]), int(body["answered"]), int(body["required"]),
                               int(body["asked"]))
            err.args = (message,)
            return err
        except (KeyError, TypeError, ValueError):
            return DynamoError(message)
    return _BY_CODE.get(str(code), DynamoError)(message)
