"""``dynamo bench``: its key chooser, its statistics, its open loop, and a run against a cluster.

The unit tests pin what makes the figures trustworthy: zipfian key choice with the
theoretical shape, nearest-rank percentiles, and an open loop that times each request from
its intended send time (so queueing behind a slow request shows, where a closed loop hides
it). The end-to-end tests run the command as a user does against three real nodes and check
that the JSON document adds up and that the bench leaves its bucket empty.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import subprocess
import sys
import time
from collections import Counter

import pytest
from conftest import free_port

from dynamo_core import bench, cli
from dynamo_core.bench import (
    PhaseResult,
    PhaseSpec,
    Progress,
    ScrambledZipfian,
    Scrambler,
    ZipfianGenerator,
    closed_loop,
    key_name,
    open_loop,
    percentile,
    split_spec,
    summarize,
    zeta,
)

CLI = [sys.executable, "-m", "dynamo_core.cli"]


def dynamo(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


# ====================================================================== zipfian keys


def test_zipfian_ranks_follow_the_theoretical_probabilities_for_a_small_n():
    gen = ZipfianGenerator(10, rng=random.Random(7))
    draws = 200_000
    counts = Counter(gen.next() for _ in range(draws))
    freq = [counts[k] / draws for k in range(10)]
    assert freq[0] == max(freq)
    assert freq[0] > freq[1] > freq[2]
    # ranks 0 and 1 are exact in Gray's algorithm; the tail is an approximation
    for k in (0, 1):
        assert freq[k] == pytest.approx(gen.probability(k), rel=0.03)
    for k in range(10):
        assert freq[k] == pytest.approx(gen.probability(k), rel=0.25), k
    assert sum(gen.probability(k) for k in range(10)) == pytest.approx(1.0)


def test_zipfian_is_deterministic_with_a_seed_and_stays_in_range():
    for items in (1, 2, 3, 17, 1000, 10**7):
        a = ZipfianGenerator(items, rng=random.Random(42))
        b = ZipfianGenerator(items, rng=random.Random(42))
        seq = [a.next() for _ in range(3000)]
        assert seq == [b.next() for _ in range(3000)]
        assert all(0 <= r < items for r in seq)
    c = ZipfianGenerator(1000, rng=random.Random(43))
    assert [c.next() for _ in range(100)] != seq[:100]


def test_zipfian_on_many_items_is_skewed_and_cheap_to_build():
    began = time.perf_counter()
    gen = ZipfianGenerator(10**8, rng=random.Random(1))
    assert time.perf_counter() - began < 0.5  # zeta is not summed term by term
    draws = [gen.next() for _ in range(20_000)]
    assert Counter(draws).most_common(1)[0][0] == 0
    assert sum(1 for d in draws if d < 100) > 0.2 * len(draws)


def test_zeta_matches_the_exact_sum_past_the_exact_head():
    n = 60_000
    exact = sum(i ** -0.99 for i in range(1, n + 1))
    assert zeta(n, 0.99) == pytest.approx(exact, rel=1e-12)
    assert zeta(1, 0.99) == 1.0


def test_the_scramble_is_a_bijection_that_moves_the_hot_ranks_apart():
    for n in (1, 2, 3, 5, 64, 100, 1000, 4097):
        scramble = Scrambler(n, seed=3)
        assert sorted(scramble(i) for i in range(n)) == list(range(n))
    hot = [Scrambler(1000, seed=3)(r) for r in range(5)]
    assert hot != list(range(5))
    assert max(hot) - min(hot) > 50
    # the scramble depends on the seed only: every client process agrees on the hot keys
    one = ScrambledZipfian(1000, random.Random(1), seed=9)
    two = ScrambledZipfian(1000, random.Random(2), seed=9)
    top = Counter(one.next() for _ in range(20_000)).most_common(1)[0][0]
    assert top == Counter(two.next() for _ in range(20_000)).most_common(1)[0][0]
    assert top == Scrambler(1000, seed=9)(0)


def test_key_names():
    assert key_name(0) == "user0" and key_name(123) == "user123"


# ====================================================================== statistics


def test_percentile_is_nearest_rank():
    hundred = list(range(1, 101))
    random.Random(1).shuffle(hundred)
    assert percentile(hundred, 50) == 50
    assert percentile(hundred, 99) == 99
    assert percentile(hundred, 99.9) == 100
    assert percentile(hundred, 100) == 100
    assert percentile(hundred, 0.5) == 1
    thousand = list(range(1, 1001))
    assert percentile(thousand, 99.9) == 999  # not 1000: decimal arithmetic, not float
    assert percentile([7.0], 50) == 7.0 and percentile([7.0], 99.9) == 7.0
    assert percentile([3, 1, 2, 4], 50) == 2  # no interpolation
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1], 0)


def test_summarize_in_milliseconds_and_empty():
    d = summarize([0.001, 0.002, 0.003, 0.004])
    assert d["count"] == 4
    assert d["p50"] == pytest.approx(2.0) and d["max"] == pytest.approx(4.0)
    assert d["mean"] == pytest.approx(2.5)
    empty = summarize([])
    assert empty["count"] == 0 and empty["p50"] is None and empty["p99.9"] is None


def test_merged_results_rank_over_every_processes_samples():
    def part(samples: list[float], elapsed: float) -> PhaseResult:
        return PhaseResult("run", {"read": samples}, {"read": {"Timeout": 1}}, {}, samples, 1,
                           len(samples) + 1, elapsed, 0.1, 0.2)

    merged = PhaseResult.merge([part([0.001] * 99, 1.0), part([0.5], 2.0)])
    assert len(merged.samples["read"]) == 100
    assert merged.errors == {"read": {"Timeout": 2}}
    assert merged.elapsed == 2.0 and merged.procs == 2 and merged.done == 102
    assert summarize(merged.samples["read"])["p99.9"] == pytest.approx(500.0)


def test_split_spec_divides_the_work_and_keeps_one_in_flight_in_one_process():
    spec = PhaseSpec("a", "run", "a", ops=1001, threads=16, warmup=100, cap=1000)
    parts = split_spec(spec, 3)
    assert sum(p.ops for p in parts) == 1001
    assert sum(p.threads for p in parts) == 16
    assert sum(p.warmup for p in parts) == 100
    opened = split_spec(PhaseSpec("a", "run", "a", ops=900, threads=4, rate=300.0), 3)
    assert [p.rate for p in opened] == [100.0, 100.0, 100.0]
    latency = split_spec(PhaseSpec("latency", "run", "latency", ops=50, threads=1), 4)
    assert [p.ops for p in latency] == [50, 0, 0, 0]
    assert latency[0].threads == 1


# ====================================================================== closed and open loops


SERVICE = 0.03  # seconds the fake operation takes


def test_open_loop_times_each_request_from_its_intended_send_time():
    """One slot, a request every 10 ms, each taking 30 ms: request i is answered about
    (i+1)*30 ms after the start though it was due at i*10 ms; its latency says so."""
    n, rate = 8, 100.0
    latencies: dict[int, float] = {}

    async def slow(i: int, start: float) -> None:
        await asyncio.sleep(SERVICE)
        latencies[i] = time.perf_counter() - start

    stats = asyncio.run(open_loop(slow, n, rate, random.Random(1), arrivals="uniform", cap=1))
    for i in range(n):
        queued = (i + 1) * SERVICE - i / rate
        assert latencies[i] >= queued - 0.002, (i, latencies[i], queued)
        assert latencies[i] <= queued + 0.015 * (i + 1), (i, latencies[i], queued)
    assert latencies[n - 1] > 4 * SERVICE
    assert stats.capped == n - 1
    assert stats.late >= n - 2
    assert stats.max_outstanding == 1
    assert max(stats.lag) >= (n - 1) * (SERVICE - 1 / rate) - 0.002


def test_a_closed_loop_would_hide_that_queueing():
    latencies: list[float] = []

    async def slow(_i: int, start: float) -> None:
        await asyncio.sleep(SERVICE)
        latencies.append(time.perf_counter() - start)

    asyncio.run(closed_loop(slow, 8, 1))
    assert max(latencies) < 2 * SERVICE


def test_open_loop_without_a_binding_cap_sees_only_the_service_time():
    latencies: list[float] = []

    async def slow(_i: int, start: float) -> None:
        await asyncio.sleep(SERVICE)
        latencies.append(time.perf_counter() - start)

    began = time.perf_counter()
    stats = asyncio.run(open_loop(slow, 20, 200.0, random.Random(1), arrivals="uniform",
                                  cap=100))
    elapsed = time.perf_counter() - began
    assert stats.capped == 0
    assert stats.max_outstanding >= 5  # requests overlap: sends did not wait for answers
    assert max(latencies) < SERVICE + 0.05  # queued one behind another, up to 0.5 s
    assert 19 / 200 + SERVICE <= elapsed < 19 / 200 + SERVICE + 0.2


def test_poisson_arrivals_are_seeded_and_average_the_rate():
    def gaps(seed: int) -> list[float]:
        it = bench.arrival_gaps(500.0, "poisson", random.Random(seed))
        return [next(it) for _ in range(20_000)]

    assert gaps(5) == gaps(5) != gaps(6)
    assert sum(gaps(5)) / 20_000 == pytest.approx(1 / 500, rel=0.03)
    uniform = bench.arrival_gaps(4.0, "uniform", random.Random(1))
    assert [next(uniform) for _ in range(3)] == [0.25, 0.25, 0.25]


# ====================================================================== progress


def test_progress_off_a_terminal_is_one_line_per_period_and_none_for_short_phases():
    out = io.StringIO()
    progress = Progress(True, stream=out, quiet_every=0.05)
    with progress.phase("workload a", 100, lambda: 40):
        time.sleep(0.18)
    lines = out.getvalue().splitlines()
    assert 1 <= len(lines) <= 5
    assert all(line.startswith("dynamo bench: workload a: 40/100 ops") for line in lines)
    assert "\r" not in out.getvalue()

    out = io.StringIO()
    with Progress(True, stream=out, quiet_every=10).phase("load", 10, lambda: 10):
        time.sleep(0.05)
    assert out.getvalue() == ""


# ====================================================================== the command line


@pytest.mark.parametrize("bad, words", [
    (["--rate", "0"], "above 0"),
    (["--rate", "-5"], "above 0"),
    (["--threads", "0"], "between 1 and"),
    (["--ops", "0"], "at least 1"),
    (["--records", "0"], "between 1 and"),
    (["--ops", "zero"], "not a whole number"),
    (["--value-size", "0"], "between 1 and"),
    (["--value-size", "100000000"], "between 1 and"),
    (["--workload", "z"], "invalid choice"),
    (["--procs", "8", "--threads", "4"], "--procs 8"),
    (["--sweep-rates", "10,20"], "needs --sweep"),
    (["--workload", "latency", "--rate", "100"], "--rate needs a workload"),
    (["--node", "localhost:7101"], "not an address"),
])
def test_bad_arguments_exit_2_with_one_line(bad, words):
    done = dynamo("bench", *bad, "--node", f"tcp://127.0.0.1:{free_port()}")
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert words in done.stderr


def test_no_cluster_fails_fast_with_a_reason():
    began = time.monotonic()
    done = dynamo("bench", "--node", f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.5")
    assert done.returncode == 1
    assert "is a cluster running there?" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert time.monotonic() - began < 15


def test_plot_without_matplotlib_names_the_extra(monkeypatch, capsys, tmp_path):
    real = bench.importlib.util.find_spec
    monkeypatch.setattr(bench.importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    status = cli.main(["bench", "--plot", str(tmp_path / "x.png"),
                       "--node", f"tcp://127.0.0.1:{free_port()}"])
    assert status == 1
    assert "pip install 'dynamo-py[examples]'" in capsys.readouterr().err


# ====================================================================== against a cluster


@pytest.fixture(scope="module")
def cl(module_cluster):
    return module_cluster(3)


def bucket_is_empty(cl, records: int, bucket: str = "bench") -> bool:
    with cl.client(bucket=bucket) as c:
        return all(c.get(key_name(i)).values == [] for i in range(records))


def run_json(*args: str) -> dict:
    done = dynamo("bench", *args, "--json")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no progress spam off a terminal for a short run
    return json.loads(done.stdout)


@pytest.mark.cluster
@pytest.mark.timeout(60)
def test_workload_a_closed_loop_json_adds_up_and_cleans_up(cl):
    doc = run_json("--workload", "a", "--records", "50", "--ops", "200", "--threads", "4",
                   "--node", cl.addresses[0], "--node", cl.addresses[1])
    p = doc["params"]
    assert (p["workload"], p["records"], p["ops"], p["threads"], p["rate"], p["value_size"],
            p["seed"]) == ("a", 50, 200, 4, None, 100, 1)
    assert p["nodes"] == cl.addresses[:2]
    raw = doc["raw_zmq_round_trip_ms"]
    assert 0 < raw["p50"] <= raw["p99"] <= raw["p99.9"]

    insert = doc["load"]["operations"]["insert"]
    assert insert["count"] == 50 and insert["errors"] == 0 and insert["ops_per_s"] > 0

    run = doc["run"]
    assert run["mode"] == "closed" and run["threads"] == 4 and run["ops"] == 200
    ops = run["operations"]
    assert set(ops) == {"read", "update"}
    assert ops["read"]["count"] + ops["update"]["count"] == 200
    assert ops["read"]["errors"] == ops["update"]["errors"] == run["errors"] == 0
    assert run["all"]["count"] == 200
    assert 50 < ops["read"]["count"] < 150  # 50/50, seeded
    assert ops["read"].get("not_found", 0) == 0
    for op in (*ops.values(), insert):
        assert 0 < op["p50"] <= op["p99"] <= op["p99.9"] <= op["max"]
        assert op["p50_over_raw"] == pytest.approx(op["p50"] / raw["p50"])
        assert op["ops_per_s"] > 0
    assert doc["ratios"]["run.read"] == ops["read"]["p50_over_raw"]
    assert set(doc["operations"]) == {"insert", "read", "update"}
    assert doc["client"]["cpu_seconds"] > 0 and doc["client"]["processes"] == 1
    assert doc["cleanup"]["keys_deleted"] == 50 and doc["cleanup"]["errors"] == 0
    assert doc["cleanup"]["seconds"] > 0
    assert bucket_is_empty(cl, 50)


@pytest.mark.cluster
@pytest.mark.timeout(60)
def test_open_loop_rate_run_reports_offered_and_achieved(cl):
    doc = run_json("--workload", "f", "--records", "30", "--ops", "150", "--rate", "150",
                   "--seed", "3", "--node", cl.addresses[2])
    run = doc["run"]
    assert run["mode"] == "open" and run["offered_ops_per_s"] == 150
    assert doc["params"]["rate"] == 150 and doc["params"]["seed"] == 3
    assert 75 < run["achieved_ops_per_s"] < 300
    assert run["errors"] == 0 and run["all"]["count"] == 150
    ops = run["operations"]
    # every operation reads; an rmw also writes, counted as one rmw and one update
    assert ops["read"]["count"] == 150
    assert ops["rmw"]["count"] == ops["update"]["count"] > 0
    assert ops["rmw"]["p50"] >= ops["update"]["p50"] * 0.5
    assert {"delayed_by_cap", "late", "send_lag_ms"} <= set(run)
    assert doc["cleanup"]["keys_deleted"] == 30
    assert bucket_is_empty(cl, 30)


@pytest.mark.cluster
@pytest.mark.timeout(60)
def test_default_run_with_a_short_sweep_prints_a_table_and_draws_a_plot(cl, tmp_path):
    png = tmp_path / "bench.png"
    done = dynamo("bench", "--records", "20", "--ops", "100", "--threads", "4",
                  "--sweep", "--sweep-rates", "40,80", "--step-seconds", "0.5",
                  "--plot", str(png), "--node", cl.addresses[0])
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for words in ("raw pyzmq DEALER/ROUTER", "latency: read (1 in flight)",
                  "latency: update (1 in flight)", "a: all", "x raw", "offered/s",
                  "knee:", "cleanup: 20 keys deleted", f"plot: {png}", "CPU-seconds"):
        assert words in out, words
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert bucket_is_empty(cl, 20)


@pytest.mark.cluster
@pytest.mark.timeout(60)
def test_two_client_processes_merge_and_keep_leaves_the_keys_in_their_bucket(cl):
    doc = run_json("--workload", "c", "--records", "10", "--ops", "20", "--keep",
                   "--procs", "2", "--threads", "2", "--bucket", "bench-kept",
                   "--node", cl.addresses[1])
    assert doc["cleanup"]["skipped"] is True
    assert doc["load"]["operations"]["insert"]["count"] == 10
    assert doc["run"]["procs"] == doc["client"]["processes"] == 2
    assert doc["run"]["operations"]["read"]["count"] == 20
    assert doc["run"]["operations"]["read"].get("not_found", 0) == 0
    with cl.client(bucket="bench-kept") as c:
        for i in range(10):
            got = c.get(key_name(i))
            assert len(got.values) == 1
            c.delete(key_name(i), context=got.context)
