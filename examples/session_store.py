"""A user-session store on a ``last-write-wins`` bucket: one value per session, always.

Run it with ``python examples/session_store.py``. It starts a throwaway cluster of three
node processes (``LocalCluster``) whose bucket ``sessions`` uses the ``last-write-wins``
resolver, then: looks up a session that does not exist, logs a user in, updates the session
from two devices at the same time from the same stale context, reads back exactly one value
(the later write), and logs the user out with a delete. Every claim it prints is checked
against what the store returns; it exits 0 only if all held, and always stops its cluster.

The trade-off, shown rather than hidden: of two concurrent updates, last-write-wins keeps
one whole value and silently drops the other. That suits a session (the newest state is the
truth, and a lost preference is cheap); it would not suit a cart.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from _common import CLIENT_TIMEOUT, aretry, claim, heading, local_cluster, retry, run, say

from dynamo_core import AsyncClient, Bucket, Client, GetResult
from dynamo_core.hookspecs import Sibling

BUCKET = "sessions"

CONFIG = f"""
[cluster]
request_timeout = 1.0
gossip_interval = 0.2
heartbeat_interval = 0.2

[buckets.{BUCKET}]
resolver = "last-write-wins"
n = 3
r = 2
w = 2
"""


def session_key(user: str) -> str:
    """One key per user's session; a real store would use an unguessable session id."""
    return f"session:{user}"


def latest_sibling(siblings: list[Sibling]) -> Sibling:
    """The sibling a reader would call the last write: the one with the latest timestamp.

    Deliberately computed here from the raw siblings, not by the resolver, so that the
    example checks the server's choice against an independent reading of the rule.
    """
    return max(siblings, key=lambda s: s.timestamp)


def describe(value: Any) -> str:
    """A session value in one short line."""
    if value is None:
        return "(none)"
    return ", ".join(f"{k}={v}" for k, v in sorted(value.items()))


async def two_devices(addresses: list[str], key: str, start: GetResult,
                      updates: dict[str, dict[str, Any]]) -> None:
    """Every device writes its update at the same moment, each from the same stale context.

    This is what happens when a user's phone and laptop both loaded the session and then
    each saved a change: neither saw the other's write.
    """
    async with AsyncClient(addresses, timeout=CLIENT_TIMEOUT) as client:
        sessions = client.bucket(BUCKET)
        base = start.values[0]
        await asyncio.gather(*(
            aretry(lambda device=device, change=change: sessions.put(
                key, {**base, **change, "device": device}, start.context), f"{device}'s write")
            for device, change in updates.items()))


def main(args: argparse.Namespace) -> None:
    """Start the cluster, run the session's life, stop the cluster."""
    say("starting a local cluster of 3 nodes (bucket 'sessions': last-write-wins, N=3, "
        "R=2, W=2)")
    with (local_cluster(3, CONFIG, args.log_level) as cl,
          Client(cl.addresses, timeout=CLIENT_TIMEOUT) as client):
        sessions = client.bucket(BUCKET)
        absent_session(sessions)
        start = log_in(sessions)
        concurrent_updates(cl.addresses, sessions, start)
        log_out(sessions)


def absent_session(sessions: Bucket) -> None:
    """A session that never existed reads as no values: the application sends a login page."""
    heading("An absent session")
    result = retry(lambda: sessions.get(session_key("mallory")), "the read")
    say(f"get {session_key('mallory')!r}: values={result.values}")
    claim(result.values == [], "an absent session reads as values == [] (not an error)")


def log_in(sessions: Bucket) -> GetResult:
    """Create alice's session with the context of the read that found none."""
    heading("Log in: create the session")
    key = session_key("alice")
    absent = retry(lambda: sessions.get(key), "the read")
    session = {"user": "alice", "device": "laptop", "theme": "light", "cart_items": 0}
    retry(lambda: sessions.put(key, session, absent.context), "the login write")
    result = retry(lambda: sessions.get(key), "the read back")
    say(f"put then get {key!r}: {describe(result.values[0]) if result.values else '(none)'}")
    claim(result.values == [session], "the session reads back as written, one value")
    return result


def concurrent_updates(addresses: list[str], sessions: Bucket, start: GetResult) -> None:
    """Two devices update from the same stale context; exactly one update survives."""
    heading("Two devices update the session at once, from the same stale context")
    key = session_key("alice")
    updates = {"phone": {"theme": "dark"}, "laptop": {"cart_items": 2}}
    for device, change in updates.items():
        say(f"{device} saves {describe(change)} (it read the session before either write)")
    asyncio.run(two_devices(addresses, key, start, updates))

    raw = retry(lambda: sessions.get(key, resolve=False), "the read of the siblings")
    first = min(s.timestamp for s in raw.siblings)
    for s in sorted(raw.siblings, key=lambda s: s.timestamp):
        say(f"sibling stamped t0+{(s.timestamp - first) * 1000:.3f} ms by its coordinator: "
            f"{describe(s.value)}")
    claim({s.value["device"] for s in raw.siblings} == set(updates),
          "the store kept both concurrent writes as siblings (resolve=False shows them)")

    later = latest_sibling(raw.siblings)
    resolved = retry(lambda: sessions.get(key), "the resolved read")
    say(f"get: {[describe(v) for v in resolved.values]}")
    claim(len(resolved.values) == 1, "a get returns exactly one value")
    claim(resolved.values[0] == later.value,
          f"it is the write with the later timestamp (the {later.value['device']}'s)")
    claim(raw.resolve("last-write-wins") == later.value,
          "the same resolver run client-side (GetResult.resolve) picks the same value")
    lost = next(d for d in updates if d != later.value["device"])
    lost_change = describe(updates[lost])
    claim(all(resolved.values[0].get(k) != v for k, v in updates[lost].items()),
          f"the {lost}'s change ({lost_change}) is gone")
    say(f"The trade-off: last-write-wins silently dropped the {lost}'s update. Nothing")
    say("failed and nobody was told. Fine for a session, where the newest state is the")
    say("truth and a lost preference is cheap; a cart needs a merging resolver (cart-union).")


def log_out(sessions: Bucket) -> None:
    """Logging out deletes the session with the context of a read; it then reads as absent."""
    heading("Log out: delete the session")
    key = session_key("alice")
    current = retry(lambda: sessions.get(key), "the read")
    retry(lambda: sessions.delete(key, current.context), "the logout delete")
    after = retry(lambda: sessions.get(key), "the read back")
    say(f"delete with the context of a get, then get {key!r}: values={after.values}")
    claim(after.values == [], "a logged-out session reads as values == [], like one that "
          "never existed")
    again = {"user": "alice", "device": "phone", "theme": "light", "cart_items": 0}
    retry(lambda: sessions.put(key, again, after.context), "the new login")
    back = retry(lambda: sessions.get(key), "the read back")
    say(f"log in again with the context of that empty read: "
        f"{[describe(v) for v in back.values]}")
    claim(back.values == [again], "a new session replaces the deleted one cleanly")


if __name__ == "__main__":
    run(main, __doc__.splitlines()[0])
