"""Dynamo in Python: a networked, always-writable key-value store after Amazon's Dynamo.

The public Python API is the clients; plugins use :mod:`dynamo_core.hookspecs`.
"""

from .client import AsyncClient, Bucket, Client, GetResult
from .errors import (
    Busy,
    DynamoError,
    InvalidRequest,
    Overloaded,
    QuorumNotMet,
    ResolverFailed,
    Timeout,
    Unavailable,
)
from .retry import Backoff

__all__ = [
    "AsyncClient",
    "Backoff",
    "Bucket",
    "Busy",
    "Client",
    "DynamoError",
    "GetResult",
    "InvalidRequest",
    "Overloaded",
    "QuorumNotMet",
    "ResolverFailed",
    "Timeout",
    "Unavailable",
]
