"""Plugins at run time: protocol extensions on the bus, lifecycle and observation hooks.

Most tests run real nodes *inside* the test process (``Node`` on an asyncio loop, talking
ZeroMQ over loopback), which is fast and lets a test look at a plugin's state directly; the
test plugins live in ``tests/plugins_for_tests`` and are loaded exactly as a user's are,
through ``[plugins] modules``. Tests that need what only separate processes show (plugins
found through the nodes' ``PYTHONPATH``, the ``dynamo`` command line, the example demo)
start node processes.

Groups: protocol extensions (registration, validation, errors, bounds, periodic tasks,
one-way sends), lifecycle hooks, the observation hook, client and command line, the example
plugins.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import itertools
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, wait_for

from dynamo_core import extensions as extensions_mod
from dynamo_core.client import AsyncClient, Client
from dynamo_core.config import from_mapping
from dynamo_core.errors import (
    ConfigError,
    DynamoError,
    InvalidRequest,
    Overloaded,
    Unavailable,
    WireError,
)
from dynamo_core.hookspecs import PEER_STATES
from dynamo_core.node import Node

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TEST_PLUGINS = Path(__file__).resolve().parent / "plugins_for_tests"
CLI = [sys.executable, "-m", "dynamo_core.cli"]


# ====================================================================== helpers


@pytest.fixture(autouse=True)
def plugin_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process nodes import the test plugins and the examples by name, as configured."""
    monkeypatch.syspath_prepend(str(TEST_PLUGINS))
    monkeypatch.syspath_prepend(str(EXAMPLES))


def plugin(name: str) -> Any:
    """A plugin module, the very object in-process nodes register (and keep state in)."""
    return importlib.import_module(name)


def pythonpath() -> str:
    """PYTHONPATH for node processes: the examples and the test plugins, then the caller's."""
    return os.pathsep.join(p for p in (str(EXAMPLES), str(TEST_PLUGINS),
                                       os.environ.get("PYTHONPATH")) if p)


def config(modules: tuple[str, ...] = (), extensions: dict | None = None, **sections: Any):
    """A node config: memory storage, n=r=w=1, fast gossip; ``sections`` merge over it."""
    data: dict[str, Any] = {
        "storage": {"engine": "memory"},
        "cluster": {"n": 1, "r": 1, "w": 1, "gossip_interval": 0.1, "request_timeout": 1.0},
        "plugins": {"modules": list(modules)},
        "extensions": extensions or {},
    }
    for section, table in sections.items():
        data[section] = {**data.get(section, {}), **table}
    return from_mapping(data)


def make_node(name: str, *modules: str, seeds: tuple[str, ...] = (), **kw: Any) -> Node:
    return Node(name, f"tcp://127.0.0.1:{free_port()}", config=config(modules, **kw),
                data_dir=None, seeds=seeds)


class Running:
    """Nodes started in the test's event loop; whatever happens, each is stopped once."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []

    async def start(self, node: Node) -> Node:
        await node.start()
        self.nodes.append(node)
        return node

    async def stop(self, node: Node) -> None:
        self.nodes.remove(node)
        await node.stop()

    async def close(self) -> None:
        for node in reversed(self.nodes):
            await node.stop()
        self.nodes.clear()


@contextlib.asynccontextmanager
async def running(*nodes: Node) -> AsyncIterator[Running]:
    group = Running()
    try:
        for node in nodes:
            await group.start(node)
        yield group
    finally:
        await group.close()


def run(coro: Awaitable[Any], timeout: float = 30.0) -> Any:
    """Run one in-process scenario, bounded."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(predicate: Callable[[], Any], timeout: float, what: str,
                interval: float = 0.02) -> Any:
    """Await until ``predicate()`` (sync or async) is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = predicate()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
        except (DynamoError, AssertionError) as exc:
            last = exc
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}"
                        + (f" (last error: {last})" if last else ""))
        await asyncio.sleep(interval)


async def converged(*nodes: Node, timeout: float = 5.0) -> None:
    """Every node knows every other one (through gossip)."""
    names = {n.name for n in nodes}
    await until(lambda: all({m.name for m in n.core.extensions.api.members()} == names
                            for n in nodes), timeout, f"{sorted(names)} to know each other")


def client(node: Node, timeout: float = 3.0) -> AsyncClient:
    return AsyncClient(node.listen, timeout=timeout)


async def plugin_errors(c: AsyncClient) -> int:
    return (await c.status())["plugin_errors"]


def events(node: Node, kind: str | None = None) -> list[dict[str, Any]]:
    """What the recorder plugin logged on ``node``."""
    return [e for e in plugin("recorder").LOGS.get(node.name, [])
            if kind is None or e["kind"] == kind]


def key_homed_on(node: Node, owner: str, prefix: str = "k") -> str:
    """A key whose (n=1) home, as ``node`` sees the ring, is ``owner``."""
    handle = node.core.extensions.api
    for i in range(10_000):
        key = f"{prefix}-{i}"
        if handle.preference_list("default", key)[0] == owner:
            return key
    raise AssertionError(f"no key homed on {owner}")


# ====================================================================== 1. protocol extensions


def test_extension_message_types_are_registered_and_answered_sync_and_async() -> None:
    async def scenario() -> None:
        async with running(make_node("x1", "probe")) as nodes, client(nodes.nodes[0]) as c:
            node = nodes.nodes[0]
            assert (await c.status())["extensions"] == ["probe", "prometheus"]
            body = {"text": "hello", "n": 3}
            # A client sent it: the handler sees no sender.
            assert await c.request("probe.echo", body) == {**body, "sender": None}
            assert await c.request("probe.async_echo", body) == {**body, "sender": None}
            # The blocking client, from another thread, gets the same reply body.

            def blocking() -> dict[str, Any]:
                with Client(node.listen, timeout=3.0) as sync:
                    return sync.request("probe.async_echo", {"text": "sync"})

            assert await asyncio.to_thread(blocking) == {"text": "sync", "sender": None}
            assert await plugin_errors(c) == 0

    run(scenario())


def test_every_node_registers_the_extension_and_node_api_call_reaches_a_peer() -> None:
    async def scenario() -> None:
        a = make_node("ca", "probe")
        async with running(a) as nodes:
            b = await nodes.start(make_node("cb", "probe", seeds=(a.listen,)))
            await converged(a, b)
            async with client(a) as c:
                for node in (a, b):
                    assert (await c.status(node.listen))["extensions"] == ["probe",
                                                                        "prometheus"]
                ask = {"peer": "cb", "type": "probe.echo", "body": {"text": "hi"}}
                reply = await until(lambda: c.request("probe.ask", ask), 5, "a call a -> b")
                # The peer answered, and saw who called.
                assert reply == {"reply": {"text": "hi", "sender": "ca"}}
                # An error the peer replies reaches the caller as the same error...
                with pytest.raises(InvalidRequest, match="refused on purpose"):
                    await c.request("probe.ask", {**ask, "type": "probe.refuse", "body": {}})
                # A peer nobody knows: Unavailable, named.
                with pytest.raises(Unavailable, match="nosuchnode"):
                    await c.request("probe.ask", {**ask, "peer": "nosuchnode"})
                assert await plugin_errors(c) == 0

    run(scenario())


def test_a_wire_error_a_handler_relays_from_a_peer_reaches_the_client_as_itself() -> None:
    async def scenario() -> None:
        a = make_node("ja", "probe")
        async with running(a) as nodes:
            b = await nodes.start(make_node("jb", "probe", seeds=(a.listen,)))
            await converged(a, b)
            async with client(a) as c:
                ask = {"peer": "jb", "type": "probe.echo", "body": {"text": "hi"}}
                await until(lambda: c.request("probe.ask", ask), 5, "a call a -> b")
                # b refuses the body a's handler sent it: a WireError, relayed like the
                # InvalidRequest and Unavailable above (a DynamoError the handler raised).
                with pytest.raises(WireError, match="probe.echo: missing field 'text'") as info:
                    await c.request("probe.ask", {**ask, "body": {}})
                assert "replied an invalid body" not in str(info.value)
                assert await plugin_errors(c) == 0

    run(scenario())


def test_keycount_total_fans_out_to_every_member_over_the_bus() -> None:
    async def scenario() -> None:
        ext = {"keycount": {"interval": 3600}}
        nrw = {"n": 2, "r": 1, "w": 2}
        a = make_node("ka", "keycount", extensions=ext, cluster=nrw)
        async with running(a) as nodes:
            b = await nodes.start(make_node("kb", "keycount", seeds=(a.listen,),
                                            extensions=ext, cluster=nrw))
            await converged(a, b)
            async with client(a) as c:
                await until(lambda: c.put("warm-up", 0), 5, "a put both replicas take")
                for i in range(20):
                    await c.put(f"key-{i}", i)
                total = await c.request("keycount.total")
                assert total["by_node"] == {"ka": 21, "kb": 21}, total
                assert total["missing"] == []
                assert (total["replicas"], total["estimated_keys"]) == (42, 21)
                # The cached answer is the last computed one, from the same node.
                assert (await c.request("keycount.total", {"cached": True}))["replicas"] == 42

    run(scenario())


@pytest.mark.parametrize("body, problem", [
    ({"text": "hi", "bogus": 1}, "unknown fields ['bogus']"),
    ({"n": 1}, "missing field 'text'"),
    ({"text": 42}, "field 'text' must be text, got int"),
    ({"text": "hi", "n": 99}, "field 'n' must be between 0 and 10"),
])
def test_request_bodies_are_checked_against_fields(body: dict, problem: str) -> None:
    async def scenario() -> None:
        async with running(make_node("v1", "probe")) as nodes, client(nodes.nodes[0]) as c:
            for msg_type in ("probe.echo", "probe.async_echo"):
                with pytest.raises(WireError) as info:
                    await c.request(msg_type, body)
                assert problem in str(info.value) and msg_type in str(info.value)
            # The node keeps serving, and no plugin is blamed: the core refused the body.
            assert await c.request("probe.echo", {"text": "still here"})
            assert await plugin_errors(c) == 0

    run(scenario())


def test_unknown_and_reply_types_are_refused_by_the_node() -> None:
    async def scenario() -> None:
        async with running(make_node("u1", "probe")) as nodes, client(nodes.nodes[0]) as c:
            with pytest.raises(WireError, match="unknown message type 'probe.nope'"):
                await c.request("probe.nope")
            with pytest.raises(InvalidRequest, match="is a reply type"):
                await c.request("probe.echo_ok", {"text": "x"})
            assert await c.request("probe.echo", {"text": "fine"})

    run(scenario())


def test_a_reply_breaking_reply_fields_is_an_error_naming_it_and_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with running(make_node("r1", "probe")) as nodes, client(nodes.nodes[0]) as c:
            with pytest.raises(DynamoError) as info:
                await c.request("probe.bad_reply")
            text = str(info.value)
            assert "probe.bad_reply" in text and "invalid body" in text
            assert "'count' must be an integer, got str" in text
            assert await plugin_errors(c) == 1
            assert await c.request("probe.echo", {"text": "still here"})

    with caplog.at_level(logging.ERROR, logger="dynamo_core.extensions"):
        run(scenario())
    assert any("reply_fields refuse" in r.getMessage() for r in caplog.records)


def test_handler_errors_a_dynamo_error_is_replied_any_other_is_an_internal_error(
        caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with running(make_node("e1", "probe")) as nodes, client(nodes.nodes[0]) as c:
            # A DynamoError is the handler's answer: sent back as that error, not counted.
            with pytest.raises(InvalidRequest, match="refused on purpose"):
                await c.request("probe.refuse")
            with pytest.raises(Unavailable, match="nothing is reachable today"):
                await c.request("probe.refuse", {"kind": "unavailable"})
            assert await plugin_errors(c) == 0
            # Any other exception is a plugin bug: an internal-error reply, logged, counted.
            for attempt in (1, 2):
                with pytest.raises(DynamoError) as info:
                    await c.request("probe.crash")
                assert type(info.value) is DynamoError
                assert "internal error in the probe.crash handler" in str(info.value)
                assert "blew up on purpose" in str(info.value)
                assert await plugin_errors(c) == attempt
            assert await c.request("probe.async_echo", {"text": "still here"})

    with caplog.at_level(logging.ERROR, logger="dynamo_core.extensions"):
        run(scenario())
    crashes = [r for r in caplog.records if "probe.crash handler failed" in r.getMessage()]
    assert len(crashes) == 2 and all(r.exc_info for r in crashes)


def test_a_slow_async_handler_is_cut_off_at_twice_the_request_timeout() -> None:
    async def scenario() -> None:
        node = make_node("s1", "probe", cluster={"request_timeout": 0.25})
        async with running(node), client(node, timeout=5.0) as c:
            started = time.monotonic()
            with pytest.raises(DynamoError, match=r"did not answer within 0\.5s"):
                await c.request("probe.slow", {"seconds": 10})
            elapsed = time.monotonic() - started
            assert 0.45 <= elapsed < 2.0, elapsed
            # A handler within the bound answers; the node keeps serving.
            assert await c.request("probe.slow", {"seconds": 0.05}) == {"slept": 0.05}

    run(scenario())


@pytest.mark.parametrize("mode, problem", [
    ("foreign", "'other.verb' must be named 'badext.<verb>'"),
    ("ok_suffix", "'badext.thing_ok' must be named 'badext.<verb>'"),
    ("twice", "'badext.x' is already registered"),
    ("fast_task", "task 'spin' interval must be at least"),
    ("not_extension", "returned dict, not a ProtocolExtension"),
])
def test_bad_extensions_are_refused_at_start_up(mode: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_node("b1", "badext", extensions={"badext": {"mode": mode}})
    assert "protocol extension 'badext'" in str(info.value)
    assert problem in str(info.value)


def test_two_extensions_claiming_one_name_is_a_config_error() -> None:
    # The same extension name from two plugins...
    with pytest.raises(ConfigError, match="protocol extension 'dup' is offered by both "
                                          "dup_a and dup_b"):
        make_node("d1", "dup_a", "dup_b")
    # ...or the same message type from two extensions (each inside its own namespace).
    with pytest.raises(ConfigError, match="'nest.a.b' is already registered"):
        make_node("d2", "nested")


def test_an_unknown_extensions_table_is_a_config_error_listing_the_installed_ones() -> None:
    with pytest.raises(ConfigError) as info:
        make_node("o1", "probe", "keycount", extensions={"unknown": {"x": 1}})
    assert "unknown protocol extension 'unknown'; available: keycount, probe" in str(info.value)


@pytest.mark.parametrize("module, options, problem", [
    ("keycount", {"interval": 0}, "interval must be 0.1 to 3600 seconds"),
    ("keycount", {"interval": "soon"}, "interval must be 0.1 to 3600 seconds"),
    ("keycount", {"intervall": 5}, "unknown option(s): intervall"),
    ("probe", {"tick": "often"}, "tick must be seconds"),
])
def test_a_factory_refusing_its_options_is_a_config_error_naming_the_extension(
        module: str, options: dict, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_node("f1", module, extensions={module: options})
    assert f"protocol extension {module!r}" in str(info.value)
    assert problem in str(info.value)


def test_more_handlers_running_than_the_bound_are_refused_with_overloaded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extensions_mod, "MAX_HANDLERS_RUNNING", 2)

    async def scenario() -> None:
        node = make_node("l1", "probe")
        async with running(node), client(node) as c:
            slow = [asyncio.ensure_future(c.request("probe.slow", {"seconds": 0.4}))
                    for _ in range(2)]
            await asyncio.sleep(0.1)  # both are being answered now
            with pytest.raises(Overloaded, match="2 extension messages are being answered"):
                await c.request("probe.echo", {"text": "one too many"})
            assert await asyncio.gather(*slow) == [{"slept": 0.4}] * 2
            # The slots are free again.
            assert await c.request("probe.echo", {"text": "now"})

    run(scenario())


def test_periodic_tasks_run_at_about_their_interval_under_the_background_budget() -> None:
    async def scenario() -> None:
        node = make_node("t1", "probe", extensions={"probe": {"tick": 0.1, "tock": 0.1}})
        async with running(node), client(node) as c:
            await asyncio.sleep(1.05)
            runs = list(plugin("probe").STATES["t1"].runs)
            started = (await c.status())["background"]["started"]
        for task in ("tick", "tock"):  # a coroutine and a plain function
            starts = [r[1] for r in runs if r[0] == task]
            assert 6 <= len(starts) <= 12, (task, len(starts))
            gaps = [b - a for a, b in itertools.pairwise(starts)]
            # Jittered by 10%, never early.
            assert min(gaps) >= 0.085, gaps
            assert 0.09 <= statistics.median(gaps) <= 0.2, gaps
        # Every run held a slot of the background budget while it ran.
        assert all(r[3] >= 1 for r in runs), runs
        assert started >= len(runs)

    run(scenario())


def test_runs_of_one_periodic_task_never_overlap() -> None:
    async def scenario() -> None:
        # Each run lasts longer than the interval.
        node = make_node("t2", "probe", extensions={"probe": {"tick": 0.02, "tick_sleep": 0.1}})
        async with running(node):
            await asyncio.sleep(0.7)
        probe = plugin("probe").STATES["t2"]
        assert len(probe.runs) >= 4
        assert probe.overlaps["tick"] == 0
        for earlier, later in itertools.pairwise(probe.runs):
            assert later[1] >= earlier[2]

    run(scenario())


def test_periodic_tasks_are_throttled_by_the_background_budget() -> None:
    async def scenario() -> None:
        # One background start a second, a burst of one: a 20 ms task cannot run 50 times.
        node = make_node("t3", "probe", extensions={"probe": {"tock": 0.02}},
                         background={"rate": 1.0, "burst": 1})
        async with running(node):
            await asyncio.sleep(1.0)
        runs = plugin("probe").STATES["t3"].runs
        assert 1 <= len(runs) <= 4, len(runs)

    run(scenario())


def test_a_raising_periodic_run_is_counted_and_the_task_carries_on(
        caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        node = make_node("t4", "probe", extensions={"probe": {"tick": 0.03, "fail_every": 2}})
        async with running(node), client(node) as c:
            probe = plugin("probe").STATES["t4"]
            await until(lambda: len(probe.runs) >= 7, 5, "seven runs")
            runs = list(probe.runs)
            errors = await plugin_errors(c)
        failed = [r for r in runs if r[4]]
        assert len(failed) >= 3
        # Runs went on after a failure, and each failure was counted (once).
        assert runs.index(failed[0]) < len(runs) - 1
        assert len(failed) <= errors <= len(failed) + 1

    with caplog.at_level(logging.ERROR, logger="dynamo_core.extensions"):
        run(scenario())
    assert any("periodic task tick of probe failed" in r.getMessage() for r in caplog.records)


def test_periodic_tasks_stop_when_the_node_stops() -> None:
    async def scenario() -> None:
        node = make_node("t5", "probe", extensions={"probe": {"tick": 0.02, "tock": 0.02}})
        async with running(node) as nodes:
            probe = plugin("probe").STATES["t5"]
            await until(lambda: len(probe.runs) >= 4, 5, "some runs")
            await nodes.stop(node)
            stopped_at = len(probe.runs)
            await asyncio.sleep(0.3)
            assert len(probe.runs) == stopped_at
            assert not probe.running["tick"]

    run(scenario())


def test_a_one_way_send_reaches_the_peer_handler_and_gets_no_reply() -> None:
    async def scenario() -> None:
        a = make_node("wa", "probe")
        async with running(a) as nodes:
            b = await nodes.start(make_node("wb", "probe", seeds=(a.listen,)))
            await converged(a, b)
            notes = plugin("probe").STATES["wb"].notes
            async with client(a) as c:
                await until(lambda: c.request("probe.ask", {
                    "peer": "wb", "type": "probe.echo", "body": {"text": "ready?"}}),
                    5, "a to reach b")
                stale = (await c.status())["stale_replies"]
                assert await c.request("probe.tell", {"peer": "wb", "text": "psst"}) == {}
                await until(lambda: notes, 3, "the note to arrive")
                assert notes == [{"text": "psst", "sender": "wa"}]
                await asyncio.sleep(0.2)
                # The note's handler returned a body, yet no reply came back to a.
                assert (await c.status())["stale_replies"] == stale
                assert await plugin_errors(c) == 0

    run(scenario())


def test_a_one_way_message_the_peer_refuses_gets_no_reply_either() -> None:
    async def scenario() -> None:
        a = make_node("wc", "probe")
        async with running(a) as nodes:
            b = await nodes.start(make_node("wd", "probe", seeds=(a.listen,)))
            await converged(a, b)
            async with client(a) as c:
                await until(lambda: c.request("probe.ask", {
                    "peer": "wd", "type": "probe.echo", "body": {"text": "ready?"}}),
                    5, "a to reach b")
                stale = (await c.status())["stale_replies"]
                await c.request("probe.tell", {"peer": "wd", "text": "-", "body": {"x": 1}})
                await until(lambda: b.core.status_document()["malformed_frames"], 3,
                            "b to refuse the note")
                await asyncio.sleep(0.2)
                assert (await c.status())["stale_replies"] == stale

    run(scenario())


# ====================================================================== 2. lifecycle


def test_started_and_stopping_hooks_are_called_once_each() -> None:
    async def scenario() -> None:
        node = make_node("h1", "recorder")
        async with running(node) as nodes:
            assert [e["kind"] for e in events(node)] == ["started"]
            assert events(node)[0]["members"] == ["h1"]  # the node knows itself by then
            async with client(node) as c:
                await c.put("k", 1)
            await nodes.stop(node)
        kinds = [e["kind"] for e in events(node)]
        assert kinds.count("started") == 1 and kinds.count("stopping") == 1
        assert kinds[-1] == "stopping"
        assert events(node, "stopping")[0]["members"] == ["h1"]

    run(scenario())


def test_membership_hook_on_join_and_removal_and_raising_hooks_are_isolated() -> None:
    """Two nodes loading ``faulty`` (every hook raises) *after* ``recorder``, so that pluggy's
    order (the plugin registered last first) calls it first."""

    async def scenario() -> None:
        faulty = plugin("faulty")
        detector = {"plugin": "timeout", "silence_timeout": 0.3}
        a = make_node("ma", "recorder", "faulty", failure_detector=detector)
        listeners = a.core.registry.listeners("dynamo_membership_changed")
        assert listeners.index("faulty") < listeners.index("recorder")
        async with running(a) as nodes, client(a) as c:
            b = await nodes.start(make_node("mb", "recorder", "faulty", seeds=(a.listen,)))
            await converged(a, b)
            def joined(node: Node) -> bool:  # mb joins, then is up once its ranges filled
                seen = events(node, "membership")
                return bool(seen) and all(m["status"] == "up" for m in seen[-1]["members"])

            await until(lambda: joined(a) and joined(b), 5, "both nodes to report the join")
            for node in (a, b):
                last = events(node, "membership")[-1]
                assert [m["name"] for m in last["members"]] == ["ma", "mb"]
                assert last["peer_views"] is True
                for m in last["members"]:
                    assert m["status"] == "up" and m["state"] in PEER_STATES
                    assert m["address"] == {"ma": a.listen, "mb": b.listen}[m["name"]]
            # Gossip goes on (every 0.1 s), the membership does not change: no more calls.
            seen = len(events(a, "membership"))
            await asyncio.sleep(1.0)
            assert len(events(a, "membership")) == seen

            # b stops: its stopping hook runs once, sees the members, can still send.
            await nodes.stop(b)
            assert [e["members"] for e in events(b, "stopping")] == [["ma", "mb"]]
            await until(lambda: events(a, "note"), 3, "b's farewell")
            assert events(a, "note") == [{"kind": "note", "text": "farewell from mb",
                                          "sender": "mb"}]
            # a's failure detector gives up on b: an opinion, not a membership change.
            seen = len(events(a, "membership"))
            await until(lambda: [m.state for m in a.core.extensions.api.members()]
                        == ["up", "down"],
                        5, "a to consider b down")
            assert len(events(a, "membership")) == seen

            # An operator removes b: a hears of it with the new member list.
            def remove() -> None:
                with Client(a.listen, timeout=3.0) as sync:
                    sync.remove("mb")

            await asyncio.to_thread(remove)
            await until(lambda: events(a, "membership")[-1]["members"][-1]["status"]
                        == "removed", 3, "the removal to be reported")

            # faulty raised in every call; recorder, called after it, heard every event.
            hooks = ("dynamo_node_started", "dynamo_membership_changed")
            raised = sum(faulty.CALLS[("ma", h)] for h in hooks)
            heard = len(events(a, "started")) + len(events(a, "membership"))
            assert raised == heard >= 3
            assert await plugin_errors(c) == raised
            assert faulty.CALLS[("mb", "dynamo_node_stopping")] == 1
            assert await c.put("still-serving", 1)

    faulty = plugin("faulty")
    faulty.CALLS.clear()
    run(scenario())


# ====================================================================== 3. observation


def test_request_completed_once_per_client_request_with_its_outcome() -> None:
    async def scenario() -> None:
        node = make_node("q1", "recorder")
        async with running(node), client(node) as c:
            ctx = await c.put("apple", {"n": 1}, bucket="fruit")
            got = await c.get("apple", bucket="fruit")
            await c.delete("apple", got.context, bucket="fruit")
            with pytest.raises(InvalidRequest, match="r=2 exceeds n=1"):
                await c.get("apple", r=2, bucket="fruit")
            # Not client operations: status, ping, extension messages.
            await c.status()
            await c.ping()
            await c.request("recorder.events")
            assert ctx
            reported = (await c.request("recorder.events", {"kind": "request"}))["events"]
        assert [(e["op"], e["outcome"]) for e in reported] == [
            ("put", "ok"), ("get", "ok"), ("delete", "ok"), ("get", InvalidRequest.code)]
        assert InvalidRequest.code == "invalid_request"
        for e in reported:
            assert (e["bucket"], e["key"], e["forwarded"]) == ("fruit", "apple", False)
            assert 0 < e["latency"] < 1.0
        # siblings: a get's answer only; clock entries: any answer with a context
        assert [(e["siblings"], e["clock_entries"]) for e in reported] == [
            (None, 1), (1, 1), (None, 1), (None, None)]

    run(scenario())


def test_a_forwarded_put_is_reported_by_both_nodes_flagged_on_the_home() -> None:
    async def scenario() -> None:
        a = make_node("fa", "recorder", "probe")
        async with running(a) as nodes:
            b = await nodes.start(make_node("fb", "recorder", "probe", seeds=(a.listen,)))
            await converged(a, b)
            key = key_homed_on(a, "fb")
            async with client(a) as c:
                await until(lambda: c.request("probe.ask", {
                    "peer": "fb", "type": "probe.echo", "body": {"text": "ready?"}}),
                    5, "a to reach b")
                await c.put(key, "v", node=a.listen)   # a is no home (n=1): it forwards
                got = await c.get(key, node=a.listen)
                assert got.values == ["v"]
                await c.delete(key, got.context, node=a.listen)  # forwarded as well
        a_events = [(e["op"], e["key"], e["outcome"], e["forwarded"])
                    for e in events(a, "request")]
        b_events = [(e["op"], e["key"], e["outcome"], e["forwarded"])
                    for e in events(b, "request")]
        assert a_events == [("put", key, "ok", False), ("get", key, "ok", False),
                            ("delete", key, "ok", False)]
        # b coordinated what a forwarded; a's replica read from b is no client request.
        assert b_events == [("put", key, "ok", True), ("delete", key, "ok", True)]

    run(scenario())


def test_a_raising_observer_does_not_break_the_request() -> None:
    async def scenario() -> None:
        faulty = plugin("faulty")
        node = make_node("z1", "faulty", "recorder")
        async with running(node), client(node) as c:
            errors_before = await plugin_errors(c)   # the started hook raised once
            await c.put("k", 1)
            assert (await c.get("k")).values == [1]
            assert await plugin_errors(c) == errors_before + 2
            assert faulty.CALLS[("z1", "dynamo_request_completed")] == 2
            assert [e["op"] for e in events(node, "request")] == ["put", "get"]

    run(scenario())


# ====================================================================== 4. client and CLI


def test_client_request_refuses_a_bad_type_or_body_before_sending() -> None:
    with Client("tcp://127.0.0.1:9", timeout=0.2) as c:  # nothing listens: nothing is sent
        for bad_type in ("nodot", "", 42):
            with pytest.raises(InvalidRequest, match="'<extension>.<verb>'"):
                c.request(bad_type, {})
        for bad_body in ([1], "text", 3):
            with pytest.raises(InvalidRequest, match="a message body is a map"):
                c.request("probe.echo", bad_body)

    async def scenario() -> None:
        async with AsyncClient("tcp://127.0.0.1:9", timeout=0.2) as c:
            with pytest.raises(InvalidRequest, match="'<extension>.<verb>'"):
                await c.request("nodot")
            with pytest.raises(InvalidRequest, match="a message body is a map"):
                await c.request("probe.echo", ["x"])

    run(scenario())


def dynamo(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": pythonpath()}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def procs(module_cluster) -> Any:
    """Two node processes finding the examples and the test plugins on their PYTHONPATH."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", pythonpath())
        return module_cluster(2, config={
            "cluster": {"n": 1, "r": 1, "w": 1},
            "plugins": {"modules": ["keycount", "metrics", "recorder", "probe"]},
            "extensions": {"keycount": {"interval": 0.5}}})


@pytest.mark.cluster
def test_node_processes_load_extensions_from_config_and_call_each_other(procs) -> None:
    n1, n2 = procs.addresses
    with Client(procs.addresses, timeout=3.0) as c:
        for address in (n1, n2):
            assert c.status(address)["extensions"] == ["keycount", "metrics", "probe",
                                                       "prometheus", "recorder"]
        # n1's socket towards n2 may still be reconnecting just after start-up: retry.
        reply = wait_for(lambda: c.request("probe.ask", {
            "peer": "n2", "type": "probe.async_echo", "body": {"text": "across"}}, node=n1),
            5, "n1 to reach n2")
        assert reply == {"reply": {"text": "across", "sender": "n1"}}
        # A forwarded put, between processes: reported on both, counted once by metrics.
        key = next(k for k in (f"proc-{i}" for i in range(1000))
                   if c.preflist(k, node=n1)["nodes"][0]["name"] == "n2")
        c.put(key, 1, node=n1)
        seen = {name: [e for e in c.request("recorder.events", {"kind": "request"},
                                            node=address)["events"] if e["key"] == key]
                for name, address in (("n1", n1), ("n2", n2))}
        assert [(e["op"], e["forwarded"]) for e in seen["n1"]] == [("put", False)]
        assert [(e["op"], e["forwarded"]) for e in seen["n2"]] == [("put", True)]
        puts = sum(c.request("metrics.snapshot", node=a)["requests"].get("put ok", 0)
                   for a in (n1, n2))
        assert puts == 1


@pytest.mark.cluster
def test_cli_request_prints_the_reply_body_as_json(procs) -> None:
    n1 = procs.address("n1")
    done = dynamo("request", "keycount.total", "--node", n1)
    assert done.returncode == 0, done.stderr
    total = json.loads(done.stdout)
    assert sorted(total["by_node"]) == ["n1", "n2"] and total["missing"] == []
    done = dynamo("request", "probe.echo", '{"text": "from the shell", "n": 2}', "--node", n1)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"text": "from the shell", "n": 2, "sender": None}
    # The status document shows the extensions and the plugin error count.
    done = dynamo("status", "--node", n1, "--json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["extensions"] == ["keycount", "metrics", "probe", "prometheus", "recorder"]
    assert status["plugin_errors"] == 0


@pytest.mark.cluster
@pytest.mark.parametrize("args, status, problem", [
    (("probe.echo", "{text: 1}"), 2, "BODY is not valid JSON"),
    (("probe.echo", "[1, 2]"), 2, "BODY must be a JSON object"),
    (("probe.echo", '{"text": 5}'), 1, "field 'text' must be text"),
    (("nodot",), 2, "'<extension>.<verb>'"),  # a command-line mistake
])
def test_cli_request_failures_exit_non_zero_with_one_line(procs, args, status, problem) -> None:
    done = dynamo("request", *args, "--node", procs.address("n1"))
    assert done.returncode == status, done
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and problem in lines[0], done.stderr


def test_cli_plugins_lists_extensions_and_event_hooks_of_configured_modules(
        tmp_path: Path) -> None:
    cfg = tmp_path / "plugins.toml"
    cfg.write_text('[plugins]\nmodules = ["keycount", "metrics"]\n')
    done = dynamo("plugins", "--config", str(cfg), "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    from_config = "config [plugins] modules"
    assert {"name": "keycount", "plugin": "keycount", "from": from_config} in \
        doc["protocol extension"]
    assert {"name": "metrics", "plugin": "metrics", "from": from_config} in \
        doc["protocol extension"]
    built_in = ("prometheus", f"dynamo-py {version('dynamo-py')}")  # the metrics endpoint
    for hook in ("dynamo_node_started", "dynamo_node_stopping", "dynamo_membership_changed",
                 "dynamo_request_completed"):
        # the config's module first (registered last), then the built-in, if it listens
        expected = [("metrics", from_config)] + (
            [] if hook == "dynamo_membership_changed" else [built_in])
        assert [(e["plugin"], e["from"]) for e in doc[hook]] == expected, (hook, doc[hook])
    # The table shows the same rows.
    done = dynamo("plugins", "--config", str(cfg))
    assert done.returncode == 0, done.stderr
    rows = [line.split(None, 3) for line in done.stdout.splitlines()]
    assert ["dynamo_request_completed", "metrics", "metrics", from_config] in rows
    assert any(line.startswith("protocol extension") and "keycount" in line
               and line.rstrip().endswith(from_config) for line in done.stdout.splitlines())


# ====================================================================== 5. example plugins


@pytest.mark.cluster
@pytest.mark.timeout(100)
def test_keycount_demo_runs_end_to_end() -> None:
    done = subprocess.run([sys.executable, str(EXAMPLES / "keycount_demo.py")],
                          capture_output=True, text=True, timeout=90, cwd=ROOT,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "extensions on n1: ['keycount', 'prometheus']" in out
    assert "wrote 300 keys" in out
    assert "keycount.total from n1: 900 replicas on 3 nodes" in out
    assert "about 300 distinct keys" in out
    assert "cached by n2's background refresh): 300 keys" in out
    assert out.rstrip().endswith("cluster stopped")


def test_metrics_snapshot_counts_requests_by_op_and_outcome_forwarded_once() -> None:
    async def scenario() -> dict[str, dict[str, Any]]:
        a = make_node("ga", "metrics", "probe")
        async with running(a) as nodes:
            b = await nodes.start(make_node("gb", "metrics", "probe", seeds=(a.listen,)))
            await converged(a, b)
            async with AsyncClient([a.listen, b.listen], timeout=3.0) as c:
                await until(lambda: c.request("probe.ask", {
                    "peer": "gb", "type": "probe.echo", "body": {"text": "ready?"}},
                    node=a.listen), 5, "a to reach b")
                keys = [f"m-{i}" for i in range(12)]
                for k in keys:  # every put through a: those homed on b are forwarded
                    await c.put(k, 1, node=a.listen)
                for k in keys:
                    assert (await c.get(k, node=b.listen)).values == [1]
                with pytest.raises(InvalidRequest):
                    await c.get("m-0", r=3, node=a.listen)
                forwarded = sum(a.core.extensions.api.preference_list("default", k)[0] == "gb"
                                for k in keys)
                assert 0 < forwarded < len(keys)
                return {n.name: await c.request("metrics.snapshot", node=n.listen)
                        for n in (a, b)}

    snaps = run(scenario())
    assert snaps["ga"]["requests"] == {"put ok": 12, "get invalid_request": 1}
    assert snaps["gb"]["requests"] == {"get ok": 12}
    for snap in snaps.values():
        hist = snap["latency_ms"]
        assert sum(hist["counts"]) == sum(snap["requests"].values())
        assert len(hist["counts"]) == len(hist["buckets"]) + 1
        assert hist["p50"] is not None and snap["uptime"] > 0
