"""Helpers the domain examples share: a narrative printer, claims that fail loudly, pauses.

The examples are meant to be read as much as run, so the plumbing lives here: each example
keeps only its story. Every claim an example prints is checked with :func:`claim`, so a
run that exits 0 is evidence the store behaved as described, not just a printout.

``python examples/<name>.py`` puts this directory first on ``sys.path``, which is how the
examples import this module as plain ``_common``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from dynamo_core import Client, DynamoError
from dynamo_core.cluster import LocalCluster
from dynamo_core.core import request_lifetime

T = TypeVar("T")

#: Seconds a client waits for a node: generous, because a loaded 2-core CI machine runs the
#: example, pytest and four node processes at once.
CLIENT_TIMEOUT = 10.0


class ClaimFailed(AssertionError):
    """The store did not behave as the example says it does."""


def claim(condition: bool, text: str) -> None:
    """Print ``text`` as a checked claim, or raise :class:`ClaimFailed` if it is false.

    An example that only printed values would keep "passing" after a regression; raising
    here turns every sentence of the narrative into a check.
    """
    if not condition:
        raise ClaimFailed(text)
    print(f"   [ok] {text}")


def heading(title: str) -> None:
    """Start a part of the narrative."""
    print(f"\n== {title}")


def say(text: str) -> None:
    """One line of the narrative."""
    print(f"   {text}")


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The examples' common command line: ``--help`` and a node log level, nothing to set up.

    Each example starts its own throwaway cluster, so there is nothing to point it at.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--log-level", default="error",
                        help="log level of the node processes (default: error)")
    return parser.parse_args(argv)


def run(main: Callable[[argparse.Namespace], None], description: str) -> None:
    """Run an example's ``main``; exit 1 with a one-line reason if a claim or the store fails."""
    args = parse_args(description)
    started = time.monotonic()
    try:
        main(args)
    except ClaimFailed as exc:
        print(f"FAILED: the store did not behave as claimed: {exc}", file=sys.stderr)
        sys.exit(1)
    except (DynamoError, OSError) as exc:
        print(f"FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
    print(f"\nall claims held ({time.monotonic() - started:.1f}s, cluster stopped)")


@contextlib.contextmanager
def local_cluster(nodes: int, config_toml: str, log_level: str = "error",
                  attempts: int = 3) -> Iterator[LocalCluster]:
    """A running ``LocalCluster``, started again on fresh ports if a start fails.

    ``LocalCluster`` picks free ports before its nodes bind them; on a busy machine another
    process can take one in between and the node exits. That is a start-up accident, not
    something the example is about, so the start is retried (and said so); a cluster that
    never starts still fails the example. The cluster is stopped however the block ends.
    """
    for attempt in range(1, attempts + 1):
        cluster = LocalCluster(nodes, config_toml=config_toml, log_level=log_level)
        try:
            cluster.start()
            break
        except OSError as exc:
            cluster.stop()
            if attempt == attempts:
                raise
            say(f"(the cluster did not start: {exc}; starting it again on new ports)")
    try:
        yield cluster
    finally:
        cluster.stop()


def retry(action: Callable[[], T], what: str, deadline: float = 15.0,
          pause: float = 0.2) -> T:
    """``action()``, retried on store errors until it succeeds or ``deadline`` seconds pass.

    Reads are always safe to retry. The examples also retry writes: a failed put may still
    have been applied, but every put they make is idempotent under their bucket's resolver
    (the same cart again, the same score again), so a duplicate sibling changes nothing.
    Each retry is printed, so the narrative never hides a hiccup.
    """
    end = time.monotonic() + deadline
    while True:
        try:
            return action()
        except DynamoError as exc:
            if time.monotonic() >= end:
                raise
            say(f"(retrying {what}: {type(exc).__name__}: {exc})")
            time.sleep(pause)


async def aretry(action: Callable[[], Awaitable[T]], what: str, deadline: float = 15.0,
                 pause: float = 0.2) -> T:
    """The asyncio twin of :func:`retry`: ``await action()``, retried on store errors."""
    end = time.monotonic() + deadline
    while True:
        try:
            return await action()
        except DynamoError as exc:
            if time.monotonic() >= end:
                raise
            say(f"(retrying {what}: {type(exc).__name__}: {exc})")
            await asyncio.sleep(pause)


def wait_until(predicate: Callable[[], T], timeout: float, what: str,
               interval: float = 0.1) -> T:
    """Poll ``predicate`` until it returns something truthy; raise ClaimFailed on timeout.

    Store errors while polling count as "not yet": the cluster is expected to be healing.
    """
    end = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            result = predicate()
            if result:
                return result
            last = result
        except DynamoError as exc:
            last = exc
        if time.monotonic() >= end:
            raise ClaimFailed(f"{what} (not within {timeout:g}s; last: {last!r})")
        time.sleep(interval)


def preference_list(client: Client, key: str, bucket: str) -> tuple[list[str], list[str]]:
    """The key's home nodes and its fallbacks, by name, as the cluster sees them."""
    nodes = client.preflist(key, bucket=bucket)["nodes"]
    homes = [n["name"] for n in nodes if n["role"] == "home"]
    fallbacks = [n["name"] for n in nodes if n["role"] == "fallback"]
    return homes, fallbacks


def sees_up(client: Client, cluster: LocalCluster, observer: str,
            peers: Iterable[str]) -> bool:
    """Whether node ``observer`` believes every node of ``peers`` is up."""
    members = client.status(node=cluster.address(observer))["members"]
    states = {m["name"]: m["state"] for m in members}
    return all(states.get(p) == "up" for p in peers)


def pause(cluster: LocalCluster, names: Iterable[str]) -> None:
    """Freeze node processes with SIGSTOP: to their peers they are silent, as if cut off.

    A frozen node keeps its sockets, so messages to it queue in the kernel; the nodes stamp
    every request with an expiry, so whatever waited longer than that is dropped when the
    node resumes instead of leaking across the "partition".
    """
    for name in names:
        cluster.procs[name].send_signal(signal.SIGSTOP)


def resume(cluster: LocalCluster, names: Iterable[str]) -> None:
    """Thaw node processes frozen by :func:`pause` (harmless on running ones)."""
    for name in names:
        proc = cluster.procs.get(name)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)


@contextlib.contextmanager
def thawed_on_exit(cluster: LocalCluster) -> Iterator[None]:
    """Resume every node when the block ends, however it ends.

    ``LocalCluster`` stops nodes with SIGTERM, which a frozen process only sees after a
    SIGCONT; without this a failed example would wait out the stop grace period.
    """
    try:
        yield
    finally:
        resume(cluster, cluster.names)


def request_expiry(request_timeout: float) -> float:
    """Seconds after which a node drops a request that waited in a queue.

    It is the node's rule (twice the request timeout plus one second): waiting that long
    after one side's last write before thawing the other side guarantees nothing the first
    side sent leaks across the "partition" when the other side wakes up.
    """
    return request_lifetime(request_timeout)
