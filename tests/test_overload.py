"""Overload is explicit and cheap (dynamo_core/overload.py, retry.py): what a node refuses
at once as Busy, per-client admission, and clients that back off.

The pure pieces are driven with an explicit ``now``; a real NodeCore shows where refusals
happen (before the body is decoded, not held for the turn's commit, never for peers); real
node processes show the whole path: a flood answered with Busy while accepted requests are
still served, a rate-limited client refused while another is served, clients that back off
and succeed or give up with Busy, and the bench counting refusals apart from errors.
Assertions are about behaviour, never about speed.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from collections import Counter

import pytest
import zmq

from dynamo_core import config as config_mod
from dynamo_core.access import Principal
from dynamo_core.bench import Recorder
from dynamo_core.client import AsyncClient, Client, _Requests
from dynamo_core.core import Answer, NodeCore
from dynamo_core.errors import Busy, ConfigError, Overloaded
from dynamo_core.overload import (
    ALERT_INTERVALS,
    ClientBuckets,
    OverloadConfig,
    OverloadGuard,
    StandingQueue,
    TopCounts,
    TrafficShares,
)
from dynamo_core.retry import Backoff, Retries
from dynamo_core.wire import Codec

CODEC = Codec()
REQUESTS = _Requests("tcp://n1.test:1", 5.0, route=False)


# ====================================================================== the standing queue


def test_a_queue_never_seen_waiting_is_never_behind():
    queue = StandingQueue(0.02, 0.1)
    assert not queue.behind(0.0) and not queue.behind(1e6)


def test_a_queue_non_empty_past_the_interval_is_behind_until_seen_empty():
    queue = StandingQueue(0.02, 0.1)
    queue.observe(True, 10.0)
    queue.observe(True, 10.05)  # still waiting: the stretch began at 10.0
    assert not queue.behind(10.1)
    assert queue.behind(10.1001)
    queue.observe(False, 10.2)
    assert not queue.behind(10.2) and not queue.behind(50.0)


def test_a_queue_that_empties_within_the_interval_is_not_behind():
    queue = StandingQueue(0.02, 0.1)
    for start in range(100):
        queue.observe(True, start * 0.1)
        assert not queue.behind(start * 0.1 + 0.09)
        queue.observe(False, start * 0.1 + 0.09)


def test_soon_after_being_behind_the_shorter_target_is_enough_then_the_interval_again():
    queue = StandingQueue(0.02, 0.1)
    queue.observe(True, 0.0)
    queue.observe(False, 0.5)  # behind from 0.1 to 0.5
    queue.observe(True, 0.6)
    assert queue.behind(0.6201), "re-entered after the target alone (CoDel's quick re-entry)"
    queue.observe(False, 0.7)
    alert_ends = 0.7 + ALERT_INTERVALS * 0.1
    queue.observe(True, alert_ends + 0.01)
    assert not queue.behind(alert_ends + 0.05), "long after: the interval holds again"
    assert queue.behind(alert_ends + 0.1101)


def test_the_queue_target_must_not_exceed_the_interval():
    with pytest.raises(ValueError, match="0 < target <= interval"):
        StandingQueue(0.2, 0.1)


# ====================================================================== per-client buckets


def test_a_principal_spends_its_burst_then_earns_tokens_at_its_rate():
    buckets = ClientBuckets(rate=10.0, burst=3, capacity=10)
    assert [buckets.take(b"noisy", 0.0) for _ in range(4)] == [True, True, True, False]
    assert buckets.take(b"quiet", 0.0), "another principal has its own bucket"
    assert not buckets.take(b"noisy", 0.05)  # half a token earned
    assert buckets.take(b"noisy", 0.1)
    assert [buckets.take(b"noisy", 100.0) for _ in range(4)] == [True, True, True, False], \
        "saving up stops at the burst"


def test_the_bucket_table_is_bounded_and_forgets_the_least_recently_seen():
    buckets = ClientBuckets(rate=1.0, burst=1, capacity=3)
    for name in (b"a", b"b", b"c"):
        assert buckets.take(name, 0.0)
    assert not buckets.take(b"a", 0.0)  # a is now the most recently seen
    assert buckets.take(b"d", 0.0)  # b, the least recently seen, is forgotten
    assert len(buckets) == 3
    assert not buckets.take(b"a", 0.0) and not buckets.take(b"c", 0.0)
    assert buckets.take(b"b", 0.0), "forgotten: it starts again with a full bucket"
    assert len(buckets) == 3


def test_top_counts_keep_the_heavy_hitters_in_bounded_memory():
    top = TopCounts(4)
    for i in range(1000):
        top.add(b"noisy")
        top.add(f"one-off-{i}".encode())
    assert top.top(1) == [(b"noisy", 1000)]
    assert len(top.top(100)) == 4


def test_traffic_shares_mark_the_senders_of_at_least_half_a_fair_share_as_heavy():
    shares = TrafficShares(window=1.0, capacity=16)
    for i in range(900):
        shares.count(f"flood-{i % 9}".encode(), i / 1000)  # nine senders, 100 each
    shares.count(b"light", 0.9)
    assert all(shares.heavy(f"flood-{i}".encode(), 0.95) for i in range(9))
    assert not shares.heavy(b"light", 0.95)
    assert shares.heavy(b"never-seen-while-others-are-quiet", 5.0), "no traffic: all equal"


def test_traffic_shares_forget_what_is_two_windows_old_and_stay_bounded():
    shares = TrafficShares(window=1.0, capacity=4)
    for i in range(1000):
        shares.count(f"fresh-{i}".encode(), 0.5)
    assert len(shares._current) == 5  # four principals and the shared "others"
    assert shares.heavy(b"fresh-999", 0.6), "the crowd of newcomers is heavy together"
    shares.count(b"later", 3.0)
    assert not shares._previous and shares.heavy(b"later", 3.0)


# ====================================================================== the guard


def guard(in_flight: int = 0, **settings: float) -> tuple[OverloadGuard, list[str]]:
    lines: list[str] = []
    config = OverloadConfig(**settings)  # type: ignore[arg-type]
    return OverloadGuard(config, lambda: in_flight, lines.append), lines


def test_nothing_is_refused_and_nothing_read_while_the_node_keeps_up():
    g, lines = guard()
    assert not g.may_refuse(5.0)
    assert g.screen(b"c", "get", None, 5.0) is None
    assert g.stats(5.0)["overloaded_refusals"] == 0 and lines == []


def test_behind_only_client_data_requests_are_refused_never_a_peers_or_an_operators():
    g, lines = guard()
    g.queue.observe(True, 0.0)
    assert g.may_refuse(1.0)
    for op in ("get", "put", "delete"):
        refusal = g.screen(b"c", op, None, 1.0)
        assert isinstance(refusal, Busy) and isinstance(refusal, Overloaded)
        assert "queue of requests stands" in str(refusal)
    assert g.screen(b"n2", "put", "n2", 1.0) is None, "a forwarded put serves a client already"
    assert g.screen(b"n2", "replica_put", "n2", 1.0) is None
    for op in ("status", "ping", "ring", None):
        assert g.screen(b"c", op, None, 1.0) is None
    stats = g.stats(1.0)
    assert stats["behind"] and stats["overloaded_refusals"] == 3
    assert stats["top_refused"] == [{"principal": b"c".hex(), "refused": 3}]
    assert len(lines) == 1 and "refusing client requests" in lines[0], "logged once"


def test_behind_a_flood_a_light_client_is_served_and_the_flooders_are_refused():
    g, _ = guard()
    for i in range(2000):  # junk from two connections fills the queue
        g.arrived(b"junk-1" if i % 2 else b"junk-2", i / 4000)
    g.arrived(b"light", 0.4)
    g.queue.observe(True, 0.3)
    assert g.may_refuse(0.5)
    assert g.screen(b"light", "put", None, 0.5) is None
    assert isinstance(g.screen(b"junk-1", "get", None, 0.5), Busy)


def test_refusals_are_logged_at_most_every_ten_seconds_with_a_count():
    g, lines = guard()
    g.queue.observe(True, 0.0)
    for i in range(100):
        g.screen(b"c", "get", None, 1.0 + i * 0.1)
    assert len(lines) == 1
    g.screen(b"c", "get", None, 11.5)
    assert len(lines) == 2 and "100 since the last report" in lines[1]


def test_client_requests_past_the_in_flight_cap_are_refused():
    g, _ = guard(in_flight=5, max_in_flight=5)
    refusal = g.screen(b"c", "put", None, 0.0)
    assert isinstance(refusal, Busy) and "coordinates 5 client requests" in str(refusal)
    assert g.stats(0.0)["in_flight_refusals"] == 1


def test_per_client_rate_refuses_the_noisy_principal_and_serves_the_quiet_one():
    g, _ = guard(client_rate=1.0, client_burst=2)
    assert g.may_refuse(0.0), "with a per-client rate every client request is screened"
    noisy = [g.screen(b"noisy", "get", None, 0.0) for _ in range(5)]
    assert [r is None for r in noisy] == [True, True, False, False, False]
    assert "more than 1 requests a second (burst 2)" in str(noisy[-1])
    assert g.screen(b"quiet", "get", None, 0.0) is None
    assert g.screen(b"n2", "get", "n2", 0.0) is None, "peers are never rate-limited"
    stats = g.stats(0.0)
    assert stats["rate_limited"] == 3 and stats["clients_tracked"] == 2
    assert stats["top_refused"][0] == {"principal": b"noisy".hex(), "refused": 3}


# ====================================================================== in a node's core


def one_node(**overload: object) -> NodeCore:
    config = config_mod.from_mapping({"storage": {"engine": "memory"},
                                      "cluster": {"n": 1, "r": 1, "w": 1},
                                      "admission": dict(overload)})
    core = NodeCore("n1", "tcp://n1.test:1", config=config, rng=random.Random(1),
                    wall_clock=lambda: 1_800_000_000.0)
    core.start(0.0)
    return core


def get_frame(key: str, req_id: int, sender: str | None = None) -> bytes:
    return CODEC.encode("get", REQUESTS.get_body("default", key, None, True), req_id, sender)


def answer_of(effects: list[object]) -> tuple[str, dict[str, object]]:
    [answer] = [e for e in effects if isinstance(e, Answer)]
    msg = CODEC.decode(answer.frame)
    return msg.type, msg.body


def test_a_core_behind_refuses_a_clients_get_at_once_and_serves_a_peer():
    core = one_node()
    core.requests_waiting(True, 1.0)
    core.begin_turn()
    msg_type, body = answer_of(core.receive(b"client", [get_frame("k", 7)], 1.2))
    assert (msg_type, body["code"]) == ("error", "busy"), "answered in the turn, not held"
    # a frame whose body would not even decode is refused from its head alone
    broken = CODEC.encode("put", {"bucket": "default", "key": "k", "value": 1}, 8)
    assert answer_of(core.receive(b"client", [broken.replace(b"value", b"valu\xff")],
                                  1.2))[1]["code"] == "busy"
    assert core.receive(b"n2", [get_frame("k", 9, sender="n2")], 1.2) == []  # held
    assert answer_of(core.end_turn(1.2))[0] == "get_ok"
    assert core.status_document()["overload"]["overloaded_refusals"] == 2
    core.requests_waiting(False, 1.3)
    assert answer_of(core.receive(b"client", [get_frame("k", 10)], 1.3))[0] == "get_ok"
    core.close()


def test_with_security_a_client_naming_a_node_as_its_sender_is_still_refused():
    core = one_node()
    core.requests_waiting(True, 1.0)
    posing = core.receive(b"c", [get_frame("k", 1, sender="n2")], 1.2, Principal("admin", b"K"))
    assert answer_of(posing)[1]["code"] == "busy"
    core.begin_turn()
    assert core.receive(b"n2", [get_frame("k", 2, sender="n2")], 1.2,
                        Principal("peer", b"N")) == []  # a node's: served, held for the turn
    assert answer_of(core.end_turn(1.2))[0] == "get_ok"
    core.close()


def test_a_cores_per_client_rate_keys_by_the_principal_the_transport_names():
    """With security, the principal is the client's public key, whatever its connection."""
    core = one_node(client_rate=1, client_burst=1)
    key_a, key_b = Principal("write", b"key-A"), Principal("write", b"key-B")
    assert answer_of(core.receive(b"conn-1", [get_frame("k", 1)], 0.0, key_a))[0] == "get_ok"
    assert answer_of(core.receive(b"conn-2", [get_frame("k", 2)], 0.0, key_a))[1][
        "code"] == "busy", "one principal over two connections shares one bucket"
    assert answer_of(core.receive(b"conn-3", [get_frame("k", 3)], 0.0, key_b))[0] == "get_ok"
    overload = core.status_document()["overload"]
    assert overload["rate_limited"] == 1
    assert overload["top_refused"] == [{"principal": b"key-A".hex(), "refused": 1}]
    core.close()


# ====================================================================== configuration


def test_overload_and_admission_settings_default_to_off_and_are_checked():
    default = config_mod.from_mapping({}).overload
    assert default == OverloadConfig() and default.client_rate == 0.0
    got = config_mod.from_mapping({"overload": {"queue_target": 0.01, "queue_interval": 0.05,
                                                "max_in_flight": 50},
                                   "admission": {"client_rate": 100, "client_burst": 10,
                                                 "max_clients": 5}}).overload
    assert got == OverloadConfig(0.01, 0.05, 50, 100.0, 10, 5)


@pytest.mark.parametrize("data,message", [
    ({"admission": {"client_rate": -1}},
     "[admission] client_rate must be a rate per second from 0 (off) and at most 1e+09, got -1"),
    ({"admission": {"client_burst": 0}},
     "[admission] client_burst must be an integer from 1 to 1000000, got 0"),
    ({"admission": {"max_clients": "many"}},
     "[admission] max_clients must be an integer from 1 to 10000000, got 'many'"),
    ({"overload": {"queue_target": 0}},
     "[overload] queue_target must be a number of seconds above 0 and at most 60, got 0"),
    ({"overload": {"queue_target": 0.5, "queue_interval": 0.1}},
     "[overload] queue_interval (0.1s) must be at least queue_target (0.5s)"),
    ({"overload": {"max_in_flight": 0}},
     "[overload] max_in_flight must be an integer from 1 to 10000000, got 0"),
    ({"overload": {"target": 1}}, "config [overload]: unknown setting(s) target"),
])
def test_bad_overload_settings_are_named(data, message):
    with pytest.raises(ConfigError) as err:
        config_mod.from_mapping(data)
    assert message in str(err.value)


# ====================================================================== backoff


def test_backoff_is_full_jitter_under_a_doubling_ceiling_and_seeded():
    policy = Backoff(base=0.01, cap=0.08, rng=random.Random(5))
    delays = [[policy.delay(n) for _ in range(200)] for n in range(6)]
    for n, ds in enumerate(delays):
        ceiling = min(0.08, 0.01 * 2 ** n)
        assert all(0 <= d <= ceiling for d in ds)
        assert max(ds) > ceiling * 0.9 and min(ds) < ceiling * 0.1, "spread over [0, ceiling]"
    again = Backoff(base=0.01, cap=0.08, rng=random.Random(5))
    assert [again.delay(0) for _ in range(200)] == delays[0]
    with pytest.raises(ValueError):
        Backoff(base=0.1, cap=0.01)


def test_retries_stop_when_the_wait_would_pass_the_deadline_or_without_a_policy():
    assert Retries(None, 100.0).wait(0.0) is None
    retries = Retries(Backoff(base=1.0, cap=1.0, rng=random.Random(1)), deadline=10.0)
    waits = []
    now = 0.0
    while (pause := retries.wait(now)) is not None:
        waits.append(pause)
        now += pause
    assert now < 10.0 and retries.count == len(waits) > 3
    assert Retries(Backoff(), deadline=0.0).wait(0.0) is None


# ====================================================================== the bench's tally


def test_the_bench_counts_busy_as_refused_not_as_an_error():
    rec = Recorder()
    rec.fail("read", Busy("overloaded"))
    rec.failed(Busy("overloaded"))
    rec.fail("update", Overloaded("too many siblings"))  # a bound, not load: an error
    rec.failed(Overloaded("too many siblings"))
    assert rec.refused == Counter({"read": 1}) and rec.total_refused == 1
    assert rec.errors == {"update": Counter({"Overloaded": 1})} and rec.total_errors == 1


# ====================================================================== real processes


def flood(address: str, count: int) -> Counter[str]:
    """Send ``count`` gets without waiting, then read every answer: type or error code."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.connect(address)
    try:
        for i in range(count):
            sock.send(get_frame(f"k{i % 50}", i + 1))
        outcomes: Counter[str] = Counter()
        while sum(outcomes.values()) < count:
            assert sock.poll(30_000), f"only {sum(outcomes.values())} of {count} answered"
            msg = CODEC.decode(sock.recv())
            outcomes[msg.body["code"] if msg.type == "error" else msg.type] += 1
        return outcomes
    finally:
        sock.close(0)
        ctx.term()


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_a_flooded_node_answers_busy_and_still_serves_requests(cluster):
    cl = cluster(3, config={"overload": {"queue_target": 0.001, "queue_interval": 0.002}})
    with cl.client("n1") as c:
        c.put("k0", "before")
    outcomes = flood(cl.address("n1"), 5000)
    assert set(outcomes) <= {"get_ok", "busy"}, outcomes
    assert outcomes["busy"] > 0 and outcomes["get_ok"] > 0, outcomes
    with cl.client("n1") as c:
        overload = c.status(node=cl.address("n1"))["overload"]
    assert overload["overloaded_refusals"] > 0
    assert overload["overloaded_refusals"] + overload["in_flight_refusals"] == outcomes["busy"]
    assert overload["top_refused"][0]["refused"] == outcomes["busy"]
    with cl.client("n1", timeout=10.0) as c:
        assert c.get("k0").values == ["before"], "served once the flood has passed"


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_a_noisy_client_is_rate_limited_while_another_is_served_and_backoff_succeeds(cluster):
    cl = cluster(1, config={"cluster": {"n": 1, "r": 1, "w": 1},
                            "admission": {"client_rate": 5, "client_burst": 2}})
    address = cl.address("n1")
    # route=False: each client keeps one connection, so one principal, to its node
    with Client(address, retry=False, route=False) as noisy, \
            Client(address, retry=False, route=False) as quiet:
        outcomes = []
        for i in range(6):
            try:
                noisy.put(f"noisy{i}", i)
                outcomes.append("ok")
            except Busy as exc:
                assert "more than 5 requests a second (burst 2)" in str(exc)
                outcomes.append("busy")
        assert "busy" in outcomes and outcomes[:2] == ["ok", "ok"]
        quiet.put("quiet", 1)
        assert quiet.get("quiet").values == [1], "the other client is served"
        overload = quiet.status()["overload"]
    assert overload["rate_limited"] == outcomes.count("busy")
    assert overload["top_refused"][0]["refused"] == outcomes.count("busy")
    assert overload["client_rate"] == 5
    # with backoff (the default) a client keeps to the rate and every request succeeds
    with Client(address, timeout=10.0, route=False) as patient:
        for i in range(8):
            patient.put(f"patient{i}", i)
        assert patient.get("patient7").values == [7]


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_a_client_that_runs_out_of_time_backing_off_raises_busy(cluster):
    cl = cluster(1, config={"cluster": {"n": 1, "r": 1, "w": 1},
                            "admission": {"client_rate": 0.01, "client_burst": 1}})

    async def run() -> None:
        async with AsyncClient(cl.address("n1"), timeout=0.5, route=False,
                               retry=Backoff(rng=random.Random(3))) as c:
            await c.put("k", 1)
            with pytest.raises(Busy, match="more than 0.01 requests a second"):
                await c.put("k", 2)

    asyncio.run(run())
    with Client(cl.address("n1"), timeout=0.5, route=False) as c:
        c.put("k", 3)
        with pytest.raises(Busy):
            c.get("k")


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_the_bench_counts_refusals_apart_from_errors(cluster):
    cl = cluster(3, config={"admission": {"client_rate": 20, "client_burst": 5}})
    done = subprocess.run(
        [sys.executable, "-m", "dynamo_core.cli", "bench", "--workload", "a", "--records",
         "20", "--ops", "300", "--rate", "300", "--warmup", "0", "--json",
         *(arg for a in cl.addresses for arg in ("--node", a))],
        capture_output=True, text=True, timeout=100, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    run = doc["run"]
    assert run["refused"] > 0 and run["errors"] == 0
    assert run["all"]["count"] + run["refused"] == 300
    assert run["refused_fraction"] == pytest.approx(run["refused"] / 300)
    ops = run["operations"]
    assert sum(op["refused"] for op in ops.values()) == run["refused"]
    assert doc["load"]["operations"]["insert"]["count"] == 20, "the load retries refusals"
    assert doc["cleanup"]["keys_deleted"] == 20 and doc["cleanup"]["errors"] == 0
