"""Dynamo in Python: a networked, always-writable key-value store after Amazon's Dynamo.

The public Python API is the clients; plugins use :mod:`dynamo_core.hookspecs`.
"""

from .client import AsyncClient, Bucket, Client, GetResult
from .errors import (
    DynamoError,
    InvalidRequest,
    Overloaded,
    QuorumNotMet,
    ResolverFailed,
    Timeout,
    Unavailable,
)

__all__ = [
    "AsyncClient",
    "Bucket",
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
