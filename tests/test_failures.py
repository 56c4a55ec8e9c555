"""Always writable under failure, against real node processes that die, pause and come back.

Each test gets a cluster of its own (it kills, stops or restarts nodes), configured to notice
trouble fast: gossip and heartbeats every 0.2 s, a 1 s request timeout, hint delivery rounds
every 0.2 s. Nodes are killed with SIGKILL (no goodbye, no flush) or frozen with SIGSTOP (the
TCP connections stay up, the process answers nothing), then restarted under the same name,
port and data directory.

What a node holds is read with ``inspect`` (its own versions, and the hints it keeps for
other nodes) and what it believes with ``status`` (each peer up, suspect or down, since when).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import Cluster, wait_for

from dynamo_core.client import Client
from dynamo_core.errors import DynamoError, QuorumNotMet

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


def fast(**sections: dict[str, Any]) -> dict[str, Any]:
    """``FAST`` with some sections extended or added."""
    merged = {k: dict(v) for k, v in FAST.items()}
    for name, table in sections.items():
        merged.setdefault(name, {}).update(table)
    return merged


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


@pytest.mark.timeout(60)
def test_a_full_hint_store_refuses_hints_with_a_log_line_while_writes_carry_on(cluster):
    max_hints = 3
    cl = cluster(5, config=fast(handoff={"max_hints": max_hints}))
    victim = "n3"
    others = [n for n in cl.names if n != victim]
    with cl.client(*others) as c:
        keys = keys_homed_on(c, cl, victim, "bounded", 20)
        killed_at = time.time()
        cl.kill(victim, signal.SIGKILL)
        wait_seen(c, cl, others, victim, {"down"}, DETECTION_SECONDS, after=killed_at)

        # W=3 needs the stand-in's hint: accepted until the stand-ins of a key are full,
        # then refused with a quorum error that says why.
        accepted, refused = [], {}
        for key in keys[:14]:
            try:
                c.put(key, key, w=3)
                accepted.append(key)
            except QuorumNotMet as exc:
                refused[key] = exc
        print(f"\nW=3 with the hint stores bounded at {max_hints}: {len(accepted)} accepted, "
              f"{len(refused)} refused")
        assert len(accepted) >= max_hints, "not even one stand-in took hints up to its bound"
        assert refused, "every W=3 write found room for a hint: the bound did not bite"
        for exc in refused.values():
            # Hopeless once both stand-ins refused, it may answer before the second live
            # home's acknowledgement arrives.
            assert exc.answered <= 2 and exc.required == 3, exc
            assert "hint store full" in str(exc), exc

        # Writes are still accepted by other means: W=2 is met by the two live homes.
        for key in [*refused, *keys[14:]]:
            c.put(key, f"{key}-w2", w=2)

        # Nothing grows past the bound, nothing crashes, and each stand-in that refused a
        # hint said so in its log.
        for name in others:
            status = c.status(node=cl.address(name))
            assert status["hints_pending"] <= max_hints, (name, status["hints_by_target"])
        refusing = {name for exc in refused.values()
                    for name in re.findall(r"(\w+): hint store full", str(exc))}
        assert refusing
        for name in refusing:
            assert c.status(node=cl.address(name))["hints_pending"] == max_hints
            log = cl.nodes[name].log_path.read_text(errors="replace").splitlines()
            assert any("hint store full" in line and victim in line for line in log), \
                f"{name} refused hints for {victim} without saying so in its log"
        assert sorted(cl.running()) == sorted(others)

    # Nothing acknowledged is lost: back up, the victim ends up holding every key, by
    # handoff where a stand-in had room and by anti-entropy where none had.
    cl.restart(victim)
    with cl.client() as c:
        def victim_caught_up() -> bool:
            return all(c.inspect(key, cl.address(victim))["versions"] for key in keys)

        wait_for(victim_caught_up, 20.0, f"{victim} to hold every key written while it was dead")
        # Anti-entropy may get there first; the hints are still delivered, then deleted.
        wait_for(lambda: all(c.status(node=cl.address(n))["hints_pending"] == 0
                             for n in cl.names), 20.0, "every hint to be delivered")


# ====================================================================== strict buckets


@pytest.mark.timeout(60)
def test_a_strict_bucket_refuses_a_write_its_dead_home_misses_while_a_normal_one_uses_a_stand_in(
        cluster):
    cl = cluster(5, config=fast(buckets={"strictb": {"n": 3, "w": 3, "strict": True},
                                         "normalb": {"n": 3, "w": 3}}))
    victim = "n3"
    others = [n for n in cl.names if n != victim]
    with cl.client(*others) as c:
        strict_key = key_homed_on(c, cl, victim, "strict", bucket="strictb")
        normal_key = key_homed_on(c, cl, victim, "normal", bucket="normalb")
        strict_homes, _ = preflist(c, cl, strict_key, "strictb")
        normal_homes, normal_fallbacks = preflist(c, cl, normal_key, "normalb")
        killed_at = time.time()
        cl.kill(victim, signal.SIGKILL)
        wait_seen(c, cl, others, victim, {"down"}, DETECTION_SECONDS, after=killed_at)

        coordinator = cl.address(next(h for h in strict_homes if h != victim))
        with pytest.raises(QuorumNotMet) as info:
            c.bucket("strictb").put(strict_key, "strict", node=coordinator)
        assert info.value.answered == 2 and info.value.required == 3, info.value
        assert "strict" in str(info.value), info.value
        assert victim in str(info.value), info.value

        coordinator = cl.address(next(h for h in normal_homes if h != victim))
        c.bucket("normalb").put(normal_key, "sloppy", node=coordinator)
        hints = c.inspect(normal_key, cl.address(normal_fallbacks[0]), bucket="normalb")["hints"]
        assert [h["for"] for h in hints] == [victim]


# ====================================================================== failure detection


@pytest.mark.timeout(60)
@pytest.mark.parametrize("detector", ["phi-accrual", "timeout"])
def test_status_shows_a_killed_node_down_since_the_kill_and_up_again_after_a_restart(
        cluster, detector):
    cl = cluster(3, config=fast(failure_detector={"plugin": detector}))
    victim = "n3"
    others = [n for n in cl.names if n != victim]
    with cl.client(*others) as c:
        assert c.status(node=cl.address("n1"))["failure_detector"] == detector
        assert all(member(c, cl, o, victim)["state"] == "up" for o in others)

        killed_at = time.time()
        cl.kill(victim, signal.SIGKILL)
        took = wait_seen(c, cl, others, victim, {"down"}, DETECTION_SECONDS, after=killed_at)
        for observer in others:
            m = member(c, cl, observer, victim)
            assert m["state"] == "down"
            assert killed_at <= m["since"] <= killed_at + DETECTION_SECONDS, (m, killed_at)
        print(f"\n{detector}: {victim} seen down by {others} {took:.2f}s after kill -9")

    restarted_at = time.time()
    cl.restart(victim)
    with cl.client() as c:
        took = wait_seen(c, cl, others, victim, {"up"}, DETECTION_SECONDS, after=restarted_at)
        print(f"{detector}: {victim} seen up again {took:.2f}s after the restart")
        assert all(member(c, cl, victim, o)["state"] == "up" for o in others)


# ====================================================================== a paused node


@dataclass
class Outcome:
    op: str
    phase: str
    latency: float
    error: str | None


class Load:
    """One thread of puts (fresh keys, W=2) and gets (recent keys), at most ``rate`` pairs a
    second: the write count is the test's, not the machine's speed."""

    def __init__(self, addresses: list[str], client_timeout: float,
                 rate: float = 150.0) -> None:
        self.addresses = addresses
        self.client_timeout = client_timeout
        self.rate = rate
        self.phase = "before"
        self.outcomes: list[Outcome] = []
        #: key -> phase, for every acknowledged put
        self.acked: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="load")

    def __enter__(self) -> Load:  # noqa: PYI034 - never subclassed
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.client_timeout * 3)
        assert not self._thread.is_alive(), "the load thread hangs"

    def _timed(self, op: str, call) -> bool:
        phase, started = self.phase, time.monotonic()
        try:
            call()
            error = None
        except DynamoError as exc:
            error = f"{type(exc).__name__}: {exc}"
        self.outcomes.append(Outcome(op, phase, time.monotonic() - started, error))
        return error is None

    def _run(self) -> None:
        with Client(self.addresses, timeout=self.client_timeout) as c:
            started = time.monotonic()
            for i in itertools.count():
                if self._stop.wait(max(0.0, started + i / self.rate - time.monotonic())):
                    return
                key, phase = f"load-{i}", self.phase
                if self._timed("put", lambda k=key, v=i: c.put(k, v, w=2)):
                    self.acked[key] = phase
                self._timed("get", lambda k=f"load-{i // 2}": c.get(k))

    def figures(self, phase: str, op: str) -> tuple[int, int, float]:
        """Requests, failures and the longest latency of one kind in one phase."""
        done = [o for o in self.outcomes if o.phase == phase and o.op == op]
        return (len(done), sum(o.error is not None for o in done),
                max((o.latency for o in done), default=0.0))


@pytest.mark.timeout(120)
def test_a_node_paused_for_20s_under_load_neither_hangs_requests_nor_misses_writes(cluster):
    cl = cluster(5, config=FAST)
    victim = "n3"
    others = [n for n in cl.names if n != victim]
    client_timeout = 3 * REQUEST_TIMEOUT
    pause = 20.0

    with cl.client(*others) as c, Load([cl.address(n) for n in others], client_timeout) as load:
        time.sleep(1.0)
        load.phase = "stopped"
        stopped_at = time.time()
        os.kill(cl.pid(victim), signal.SIGSTOP)
        try:
            wait_seen(c, cl, others, victim, {"suspect", "down"}, 5.0, after=stopped_at)
            noticed = time.time() - stopped_at
            wait_seen(c, cl, others, victim, {"down"}, pause - 6.0, after=stopped_at)
            down = time.time() - stopped_at
            time.sleep(max(0.0, stopped_at + pause - time.time()))
        finally:
            os.kill(cl.pid(victim), signal.SIGCONT)
        load.phase = "after"
        resumed_at = time.time()
        up = wait_seen(c, cl, others, victim, {"up"}, DETECTION_SECONDS, after=resumed_at)
        time.sleep(1.0)

    print(f"\n{victim} paused {pause:g}s: seen suspect or down by all {noticed:.2f}s after "
          f"SIGSTOP, down by all after {down:.2f}s, up again {up:.2f}s after SIGCONT")
    for phase in ("before", "stopped", "after"):
        for op in ("put", "get"):
            count, failed, slowest = load.figures(phase, op)
            print(f"  {phase:8} {op}: {count} requests, {failed} failed, "
                  f"max latency {slowest * 1000:.0f} ms")
    for o in load.outcomes:
        if o.error:
            print(f"  failure ({o.phase} {o.op}, {o.latency:.2f}s): {o.error}")

    # No request hangs: each one completes or fails within the client timeout.
    slowest = max(load.outcomes, key=lambda o: o.latency)
    assert slowest.latency < client_timeout, slowest
    # And nearly all succeed while the node is frozen.
    for op in ("put", "get"):
        count, failed, _ = load.figures("stopped", op)
        assert count >= 50, f"only {count} {op}s ran while {victim} was stopped"
        assert failed <= 0.05 * count, f"{failed} of {count} {op}s failed"

    # It catches up: every key written while it was stopped that it is home for ends up in
    # its own storage, and nobody keeps a hint for it.
    with cl.client() as c:
        written = [k for k, phase in load.acked.items() if phase == "stopped"]
        mine = [k for k in written if victim in preflist(c, cl, k)[0]]
        assert mine
        missing = list(mine)

        def caught_up() -> bool:
            missing[:] = [k for k in missing if not c.inspect(k, cl.address(victim))["versions"]]
            hints = sum(c.status(node=cl.address(n))["hints_by_target"].get(victim, 0)
                        for n in others)
            return not missing and hints == 0

        wait_for(caught_up, max(1.0, resumed_at + 15.0 - time.time()),
                 f"{victim} to hold every key written while it was stopped")
        took = time.time() - resumed_at
        print(f"  {len(mine)} of {len(written)} keys written while stopped are homed on "
              f"{victim}; all there {took:.1f}s after SIGCONT "
              f"(recovery {len(mine) / took:.0f} keys/s, detection included)")


# ====================================================================== known bugs


@pytest.mark.timeout(60)
def test_a_put_entering_through_a_non_home_node_succeeds_right_after_its_first_home_dies(
        cluster):
    cl = cluster(5, config=FAST)
    victim = "n3"
    with cl.client() as c:
        key = key_homed_on(c, cl, victim, "forward", position=0)
        _, fallbacks = preflist(c, cl, key)
        c.put(key, "v1", w=3)
    cl.kill(victim, signal.SIGKILL)
    with cl.client(fallbacks[0]) as c:
        # W=2: the two live homes can take it, and nobody has noticed the death yet.
        c.put(key, "v2", w=2)


@pytest.mark.timeout(60)
def test_a_put_that_failed_while_its_home_was_dead_does_not_come_back_when_the_home_does(
        cluster):
    cl = cluster(5, config=FAST)
    victim = "n3"
    others = [n for n in cl.names if n != victim]
    with cl.client() as c:
        key = key_homed_on(c, cl, victim, "zombie", position=0)
        homes, fallbacks = preflist(c, cl, key)
        context = c.put(key, "v1", w=3)
    killed_at = time.time()
    cl.kill(victim, signal.SIGKILL)
    with cl.client(fallbacks[0]) as c:
        try:  # forwarded to the dead home: it fails (or, were it retried, succeeds)
            context = c.put(key, "v2", context=context, w=2)
        except DynamoError:
            pass
    with cl.client(*(h for h in homes if h != victim)) as c:
        wait_seen(c, cl, others, victim, {"down"}, DETECTION_SECONDS, after=killed_at)
        c.put(key, "v3", context=context, w=2)  # supersedes everything acknowledged so far
    cl.restart(victim)
    with cl.client() as c:
        wait_for(lambda: "v3" in values(c.inspect(key, cl.address(victim))), 10.0,
                 "the hint to reach the restarted home")
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and len(c.get(key, r=3).values) == 1:
            time.sleep(0.1)
        assert c.get(key, r=3).values == ["v3"]


@pytest.mark.timeout(60)
def test_status_never_pairs_a_state_with_a_since_older_than_that_state(cluster):
    # A long heartbeat interval widens the window; gossip still feeds the detector.
    cl = cluster(3, config=fast(cluster={"heartbeat_interval": 2.0}))
    victim = "n3"
    observers = ["n1", "n2"]
    with cl.client(*observers) as c:
        #: observer -> (state it last showed, when that request was sent)
        shown = {o: ("up", time.time()) for o in observers}
        cl.kill(victim, signal.SIGKILL)
        inconsistent = []
        deadline = time.monotonic() + DETECTION_SECONDS
        while time.monotonic() < deadline and any(s != "down" for s, _ in shown.values()):
            for observer in observers:
                asked = time.time()
                m = member(c, cl, observer, victim)
                state, since = m["state"], m["since"]
                previous, previous_asked = shown[observer]
                # It was still `previous` when we last asked, so `state` began after that.
                if state != previous and (since is None or since < previous_asked):
                    inconsistent.append((observer, previous, state,
                                         None if since is None else
                                         round(since - previous_asked, 3)))
                shown[observer] = (state, asked)
        assert all(s == "down" for s, _ in shown.values()), shown
        assert inconsistent == [], inconsistent
