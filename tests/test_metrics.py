"""The Prometheus endpoint (``[metrics] listen``, the built-in ``prometheus`` plugin).

Scraped from real nodes and read back with prometheus_client's own text parser: a node
process after puts, gets and a quorum failure; a node inside the test process, to see the
port freed the moment the node stops (a process exiting would free it anyway); a port in
use stopping ``dynamo node`` with one line. The counting itself (bounded labels, forwarded
requests) is unit-tested without a node.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from conftest import RunningCluster, free_port, free_port_run, wait_for
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from test_advertise import ipv6_loopback

from dynamo_core.client import AsyncClient
from dynamo_core.config import from_mapping
from dynamo_core.errors import QuorumNotMet
from dynamo_core.hookspecs import RequestEvent
from dynamo_core.node import Node
from dynamo_plugins import prometheus
from dynamo_plugins.prometheus_metrics import (
    LATENCY_BOUNDS,
    MAX_BUCKETS,
    OTHER,
    STATUS_FIGURES,
    RequestStats,
)

pytestmark = pytest.mark.timeout(60)


def scrape(port: int) -> list[Sample]:
    """Every sample the endpoint serves, parsed by prometheus_client's own parser."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The one sample called ``name`` whose labels include ``labels``."""
    found = [s.value for s in samples
             if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return found[0]


def refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


# ====================================================================== a node process


@pytest.mark.cluster
def test_a_scrape_shows_request_counts_latencies_and_the_nodes_figures(cluster) -> None:
    port = free_port()
    cl = cluster(1, config={"cluster": {"n": 1, "r": 1, "w": 1, "request_timeout": 0.5},
                            # two replicas wanted, one node: every write misses its quorum
                            "buckets": {"pair": {"n": 2, "r": 2, "w": 2}},
                            "metrics": {"listen": f"127.0.0.1:{port}"}})
    with cl.client() as c:
        for i in range(3):
            c.put(f"k{i}", i)
        for i in range(3):
            assert c.get(f"k{i}").values == [i]
        assert c.get("absent").values == []
        with pytest.raises(QuorumNotMet):
            c.bucket("pair").put("k", 1)
        status = c.status(node=cl.address("n1"))
    samples = scrape(port)

    requests = "dynamo_requests_total"
    assert value(samples, requests, op="put", bucket="default", outcome="ok") == 3
    assert value(samples, requests, op="get", bucket="default", outcome="ok") == 4
    assert value(samples, requests, op="put", bucket="pair", outcome="quorum_not_met") == 1
    gets = {"op": "get", "bucket": "default", "outcome": "ok"}
    latency = "dynamo_request_duration_seconds"
    cumulative = [value(samples, f"{latency}_bucket", le=str(bound), **gets)
                  for bound in LATENCY_BOUNDS]
    assert cumulative == sorted(cumulative)
    assert value(samples, f"{latency}_bucket", le="+Inf", **gets) == 4
    assert value(samples, f"{latency}_count", **gets) == 4
    assert value(samples, f"{latency}_sum", **gets) > 0
    # one get found nothing (no sibling, an empty context), three found one version
    assert value(samples, "dynamo_get_siblings_bucket", bucket="default", le="0.0") == 1
    assert value(samples, "dynamo_get_siblings_bucket", bucket="default", le="1.0") == 4
    assert value(samples, "dynamo_get_siblings_sum", bucket="default") == 3
    assert value(samples, "dynamo_get_clock_entries_bucket", bucket="default", le="1.0") == 4

    assert value(samples, "dynamo_node_info", node="n1", address=cl.address("n1")) == 1
    assert [value(samples, "dynamo_peer_state", peer="n1", state=state)
            for state in ("up", "suspect", "down")] == [1, 0, 0]
    # the write that missed its quorum is still kept by its coordinator
    assert value(samples, "dynamo_keys") == status["keys"] == 4
    assert value(samples, "dynamo_requests_pending") == 0
    assert value(samples, "dynamo_hints_pending") == status["hints_pending"]
    assert value(samples, "dynamo_forbidden_requests_total") == 0
    assert value(samples, "dynamo_malformed_frames_total") == status["malformed_frames"]
    for reason in ("standing_queue", "in_flight", "client_rate"):
        assert value(samples, "dynamo_overload_refusals_total", reason=reason) == 0
    assert value(samples, "process_resident_memory_bytes") > 0
    names = {s.name for s in samples}
    missing = [name for name, kind, _, _ in STATUS_FIGURES
               if (f"{name}_total" if kind == "counter" else name) not in names]
    assert missing in ([], ["dynamo_background_latency_seconds"]), missing  # none measured yet

    cl.kill("n1", signal.SIGTERM)
    assert cl.nodes["n1"].proc is not None and cl.nodes["n1"].proc.returncode == 0
    assert refused(port)


@pytest.mark.cluster
def test_a_metrics_port_in_use_stops_the_node_with_one_line(tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "node.toml"
        config.write_text(f'[storage]\nengine = "memory"\n[metrics]\nlisten = '
                          f'"127.0.0.1:{port}"\n')
        done = subprocess.run(
            [sys.executable, "-m", "dynamo_core.cli", "node", "--name", "n1", "--listen",
             f"tcp://127.0.0.1:{free_port()}", "--config", str(config), "--data-dir",
             str(tmp_path / "n1")], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1, done
    assert done.stderr.strip().splitlines()[-1] == (
        f"dynamo node: protocol extension 'prometheus': [metrics] listen 127.0.0.1:{port}: "
        f"cannot listen there: Address already in use")


# ====================================================================== a node in this process


def test_the_endpoint_serves_from_its_own_thread_and_closes_when_the_node_stops() -> None:
    """Scrapes run on the server's threads while the node's loop keeps serving requests;
    after ``stop`` the port is free, in a process that is still running."""
    port = free_port()
    node = Node("m1", f"tcp://127.0.0.1:{free_port()}", data_dir=None, config=from_mapping({
        "storage": {"engine": "memory"}, "cluster": {"n": 1, "r": 1, "w": 1},
        "metrics": {"listen": f"127.0.0.1:{port}"}}))

    async def scenario() -> tuple[list[Sample], list[Sample]]:
        await node.start()
        try:
            async with AsyncClient(node.listen, timeout=3.0) as c:
                await c.put("k", 1)
                first, _ = await asyncio.gather(asyncio.to_thread(scrape, port), c.get("k"))
                second = await asyncio.to_thread(scrape, port)
        finally:
            await node.stop()
        return first, second

    first, second = asyncio.run(asyncio.wait_for(scenario(), 30))
    requests = "dynamo_requests_total"
    assert value(first, requests, op="put", bucket="default", outcome="ok") == 1
    assert value(second, requests, op="get", bucket="default", outcome="ok") == 1
    assert refused(port)  # closed by the time stop() returned
    with pytest.raises(urllib.error.URLError):
        scrape(port)


def test_peer_states_follow_the_failure_detector() -> None:
    port = free_port()
    settings = {"storage": {"engine": "memory"},
                "cluster": {"gossip_interval": 0.1, "heartbeat_interval": 0.1},
                "failure_detector": {"plugin": "timeout", "silence_timeout": 0.3}}
    n1 = Node("p1", f"tcp://127.0.0.1:{free_port()}", data_dir=None, config=from_mapping(
        {**settings, "metrics": {"listen": f"127.0.0.1:{port}"}}))
    n2 = Node("p2", f"tcp://127.0.0.1:{free_port()}", data_dir=None,
              config=from_mapping(settings), seeds=(n1.listen,))

    async def state_of_p2(wanted: str) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            samples = await asyncio.to_thread(scrape, port)
            if any(s.name == "dynamo_peer_state" and s.labels == {"peer": "p2", "state": wanted}
                   and s.value == 1 for s in samples):
                return
            await asyncio.sleep(0.1)
        pytest.fail(f"p1's scrape never showed p2 {wanted}")

    async def scenario() -> None:
        await n1.start()
        try:
            await n2.start()
            try:
                await state_of_p2("up")
            finally:
                await n2.stop()
            await state_of_p2("suspect")  # silent past silence_timeout
        finally:
            await n1.stop()

    asyncio.run(asyncio.wait_for(scenario(), 30))


@pytest.mark.parametrize("host", ["127.0.0.1", pytest.param("[::1]", marks=pytest.mark.skipif(
    not ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine"))])
def test_a_wedged_node_answers_a_scrape_with_503_not_stale_figures(
        monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    monkeypatch.setattr(prometheus, "SNAPSHOT_WAIT", 0.2)
    port = free_port()
    node = Node("m2", f"tcp://127.0.0.1:{free_port()}", data_dir=None, config=from_mapping({
        "storage": {"engine": "memory"}, "metrics": {"listen": f"{host}:{port}"}}))

    def status_of_a_scrape() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as answer:
                return answer.status, ""
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    async def scenario() -> tuple[tuple[int, str], tuple[int, str]]:
        await node.start()
        try:
            with ThreadPoolExecutor(1) as scraper:
                # The node's loop waits for the scrape, doing nothing else: wedged.
                wedged = scraper.submit(status_of_a_scrape).result(timeout=10)
            return wedged, await asyncio.to_thread(status_of_a_scrape)
        finally:
            await node.stop()

    wedged, recovered = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert wedged == (503, "the node did not answer within 0.2s\n")
    assert recovered == (200, "")


def test_without_metrics_listen_the_plugin_is_installed_and_idle() -> None:
    node = Node("m3", f"tcp://127.0.0.1:{free_port()}", data_dir=None,
                config=from_mapping({"storage": {"engine": "memory"}}))
    try:
        assert node.core.extensions.api.metrics_listen is None
        assert "prometheus" in node.core.extensions.installed
        assert node.core.extensions.api not in prometheus._exporters
    finally:
        node.transport.close()
        node.core.close()


# ====================================================================== counting


def event(bucket: str = "b", outcome: str = "ok", **kw: Any) -> RequestEvent:
    return RequestEvent(kw.pop("op", "get"), bucket, "k", kw.pop("latency", 0.003), outcome,
                        **kw)


def test_bucket_labels_are_capped_and_the_rest_counted_as_other() -> None:
    stats = RequestStats()
    for i in range(MAX_BUCKETS + 50):
        stats.observe(event(f"bucket-{i}", siblings=1, clock_entries=2))
    stats.observe(event("bucket-0"))  # a name kept stays kept
    counts = stats.copy()
    buckets = {bucket for _, bucket, _ in counts.latency}
    assert len(buckets) == MAX_BUCKETS + 1 and OTHER in buckets
    assert counts.latency[("get", OTHER, "ok")].count == 50
    assert counts.latency[("get", "bucket-0", "ok")].count == 2
    assert counts.siblings[OTHER].count == counts.clock_entries[OTHER].count == 50


def test_forwarded_requests_are_left_to_the_node_that_forwarded_them() -> None:
    stats = RequestStats()
    stats.observe(event(op="put", forwarded=True))
    stats.observe(event(op="put", outcome="quorum_not_met", latency=0.7))
    counts = stats.copy()
    assert list(counts.latency) == [("put", "b", "quorum_not_met")]
    histogram = counts.latency[("put", "b", "quorum_not_met")]
    assert histogram.total == 0.7
    assert histogram.cumulative()[-1] == ("+Inf", 1.0)
    assert [c for le, c in histogram.cumulative() if le == "0.5"] == [0.0]
    assert [c for le, c in histogram.cumulative() if le == "1.0"] == [1.0]


def test_a_copy_does_not_move_with_later_requests() -> None:
    stats = RequestStats()
    stats.observe(event())
    counts = stats.copy()
    stats.observe(event())
    assert counts.latency[("get", "b", "ok")].count == 1


def test_dynamo_cluster_gives_each_node_its_own_metrics_port(tmp_path) -> None:
    """One config for every node of ``dynamo cluster``: node i serves on listen's port + i - 1."""
    first = free_port_run(2) + 1
    config = tmp_path / "metrics.toml"
    config.write_text(f'[metrics]\nlisten = "127.0.0.1:{first}"\n')
    rc = RunningCluster(tmp_path, "--config", str(config), nodes=2)
    try:
        wait_for(lambda: rc.ready, 30, f"the cluster to be ready:\n{rc.output}")
        for port in (first, first + 1):
            assert value(scrape(port), "dynamo_keys") >= 0
    finally:
        rc.close()
