"""Always writable under failure, against real node processes: one kill -9 end to end.

A node process killed with SIGKILL (no goodbye, no flush) while a client keeps writing: the
other processes notice over their real sockets, a stand-in takes the write with a hint, and
when the process is started again under the same name, port and data directory the hint
reaches it, as ``dynamo inspect`` (the CLI, run as an operator would) shows on every node.

The protocol logic of failures (hint bounds, strict buckets, failure detection states in
``status``, a node paused under load, the known-bug regressions) is specified on the
simulator, with the same test names, in ``test_sim_failures.py``.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

import pytest
from conftest import Cluster, wait_for

from dynamo_core.client import Client

pytestmark = [pytest.mark.cluster]

REQUEST_TIMEOUT = 1.0

#: Settings every cluster here starts from: failures are noticed within a second or two.
FAST: dict[str, Any] = {
    "cluster": {"gossip_interval": 0.2, "heartbeat_interval": 0.2,
                "request_timeout": REQUEST_TIMEOUT},
    "handoff": {"interval": 0.2},
}

#: How long other nodes may take to notice a killed or frozen node.
DETECTION_SECONDS = 8.0


# ====================================================================== helpers


def preflist(c: Client, cl: Cluster, key: str, bucket: str = "default",
             via: str | None = None) -> tuple[list[str], list[str]]:
    """The key's home nodes and its fallbacks, in preference-list order."""
    nodes = c.preflist(key, bucket=bucket, node=cl.address(via or cl.running()[0]))["nodes"]
    return ([n["name"] for n in nodes if n["role"] == "home"],
            [n["name"] for n in nodes if n["role"] == "fallback"])


def keys_homed_on(c: Client, cl: Cluster, name: str, prefix: str, count: int = 1,
                  bucket: str = "default", position: int | None = None) -> list[str]:
    """``count`` fresh keys that have ``name`` among their homes (at ``position``, if given)."""
    found = []
    for i in range(1000):
        key = f"{prefix}-{i}"
        homes, _ = preflist(c, cl, key, bucket)
        if (name in homes) if position is None else (homes[position] == name):
            found.append(key)
            if len(found) == count:
                return found
    raise AssertionError(f"fewer than {count} of 1000 keys have {name} as a home")


def key_homed_on(c: Client, cl: Cluster, name: str, prefix: str, **kw: Any) -> str:
    return keys_homed_on(c, cl, name, prefix, 1, **kw)[0]


def member(c: Client, cl: Cluster, observer: str, peer: str) -> dict[str, Any]:
    """``peer``'s entry in ``observer``'s status (state, since, ...)."""
    status = c.status(node=cl.address(observer))
    return next(m for m in status["members"] if m["name"] == peer)


def wait_seen(c: Client, cl: Cluster, observers: Iterable[str], peer: str, states: set[str],
              timeout: float, after: float = 0.0) -> float:
    """Wait until every observer sees ``peer`` in one of ``states`` (entered at or after
    ``after``); returns how long that took."""
    started = time.monotonic()
    pending = set(observers)

    def everyone_sees_it() -> bool:
        for observer in sorted(pending):
            m = member(c, cl, observer, peer)
            if m["state"] in states and m["since"] is not None and m["since"] >= after:
                pending.discard(observer)
        return not pending

    wait_for(everyone_sees_it, timeout,
             f"{sorted(pending)} to see {peer} {'/'.join(sorted(states))}", interval=0.05)
    return time.monotonic() - started


def holdings(c: Client, cl: Cluster, key: str, bucket: str = "default") -> dict[str, dict]:
    """``inspect`` of ``key`` on every running node."""
    return {name: c.inspect(key, cl.address(name), bucket=bucket) for name in cl.running()}


def values(inspected: dict[str, Any]) -> list[Any]:
    return [v["value"] for v in inspected["versions"]]


def dynamo_inspect(cl: Cluster, key: str, name: str) -> dict[str, Any]:
    """``dynamo inspect KEY --node ADDR --json``, as an operator would run it."""
    done = subprocess.run(
        [sys.executable, "-m", "dynamo_core.cli", "inspect", key, "--node", cl.address(name),
         "--json"], check=False, capture_output=True, text=True, timeout=20,
        stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# ====================================================================== hinted handoff


@pytest.mark.timeout(90)
def test_a_killed_home_gets_its_hinted_write_back_and_the_stand_in_lets_go_of_it(cluster):
    cl = cluster(5, config=FAST)
    victim = "n3"
    with cl.client() as c:
        key = key_homed_on(c, cl, victim, "handoff")
        homes, fallbacks = preflist(c, cl, key)
    live_homes = [h for h in homes if h != victim]
    others = [n for n in cl.names if n != victim]

    with cl.client(*live_homes, timeout=5.0) as c:
        context = c.put(key, "v0", w=3)
        cl.kill(victim, signal.SIGKILL)
        killed_at = time.time()

        # Puts with W=2 keep succeeding, from the kill through its detection, without
        # waiting on the dead home.
        detected = threading.Event()

        def watch() -> None:
            with cl.client(*others) as watcher:
                wait_seen(watcher, cl, others, victim, {"down"}, DETECTION_SECONDS,
                          after=killed_at)
            detected.set()

        threading.Thread(target=watch, daemon=True).start()
        latencies = []
        for i in itertools.count(1):
            started = time.monotonic()
            context = c.put(key, f"v{i}", context=context, w=2)
            latencies.append(time.monotonic() - started)
            if detected.is_set() or time.time() - killed_at > DETECTION_SECONDS + 2:
                break
            time.sleep(0.1)
        assert detected.is_set(), f"the other nodes never saw {victim} down"
        assert max(latencies) < REQUEST_TIMEOUT, latencies
        # Now every node knows: the next writes go to a stand-in, with a hint.
        for j in range(i + 1, i + 4):
            context = c.put(key, f"v{j}", context=context, w=2)
        last = f"v{j}"
        print(f"\n{i} puts during detection (max {max(latencies) * 1000:.0f} ms), 3 after")

        # Exactly one stand-in, the first fallback, holds exactly one hint: for the victim.
        held = holdings(c, cl, key)
        hinting = {name: info["hints"] for name, info in held.items() if info["hints"]}
        assert list(hinting) == [fallbacks[0]], hinting
        stand_in = fallbacks[0]
        [hint] = hinting[stand_in]
        assert hint["for"] == victim
        assert [v["value"] for v in hint["versions"]] == [last]
        assert held[stand_in]["versions"] == []  # a hint, not a replica of its own
        status = c.status(node=cl.address(stand_in))
        assert status["hints_pending"] == 1 and status["hints_by_target"] == {victim: 1}

        # The victim comes back: the hint is delivered and deleted within 10 s.
        restarted = time.monotonic()
        cl.restart(victim)

        def delivered() -> bool:
            return (c.inspect(key, cl.address(stand_in))["hints"] == []
                    and values(c.inspect(key, cl.address(victim))) == [last])

        wait_for(delivered, restarted + 10.0 - time.monotonic(),
                 f"{stand_in} to hand its hint for {key} over to {victim}")
        print(f"hint delivered {time.monotonic() - restarted:.2f}s after the restart")
        status = c.status(node=cl.address(stand_in))
        assert status["hints_delivered"] >= 1
        assert status["hints_pending"] == 0

    # Exactly the N home nodes hold the key, each the latest value; nobody holds a hint.
    seen = {name: dynamo_inspect(cl, key, name) for name in cl.names}
    assert {name for name, info in seen.items() if info["versions"]} == set(homes)
    for name in homes:
        assert values(seen[name]) == [last], (name, seen[name])
    assert all(info["hints"] == [] for info in seen.values()), seen
