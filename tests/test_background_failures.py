"""No background loop dies, and a failing disk costs clear errors, not a wedged node.

In-process nodes on the test engine ``failing-disk`` (tests/plugins_for_tests), whose writes
raise ``OSError`` (ENOSPC) on demand.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from test_extensions import TEST_PLUGINS, client, make_node, plugin, run, running, until

from dynamo_core.errors import StorageFailed

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def plugin_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TEST_PLUGINS))


def failing_node(name: str) -> Any:
    return make_node(name, "failing_disk", storage={"engine": "failing-disk", "label": name})


def test_a_node_whose_disk_fails_answers_clear_errors_and_recovers_when_writes_succeed():
    disk = plugin("failing_disk").FAILING

    async def scenario() -> None:
        async with running(failing_node("fd1")) as nodes, client(nodes.nodes[0]) as c:
            await c.put("k", "before")
            disk.add("fd1")
            try:
                for _ in range(3):
                    with pytest.raises(StorageFailed, match="No space left on device"):
                        await c.put("k", "during")
                assert (await c.get("k")).values == ["before"]  # reads still served
                status = await c.status()
                assert status["pending_requests"] == 0, "a failed write leaves nothing open"
            finally:
                disk.discard("fd1")
            await c.put("k", "after", (await c.get("k")).context)
            assert (await c.get("k")).values == ["after"]

    run(scenario())


def test_the_timer_loop_survives_an_exception_and_operations_still_time_out():
    async def scenario() -> None:
        node = make_node("tl1")
        real_tick = node.core.coordinator.on_tick
        raised = []

        def tick_that_fails_once(now: float) -> list:
            if not raised:
                raised.append(now)
                raise RuntimeError("a bug in a timer")
            return real_tick(now)

        node.core.coordinator.on_tick = tick_that_fails_once  # type: ignore[method-assign]
        async with running(node), client(node) as c:
            await c.put("k", "v")  # an operation arms the coordinator's timer
            await until(lambda: raised, 5.0, "the timer to fail once")
            await until(lambda: node.core.loop_failures.get("timers") == 1, 5.0,
                        "the failure to be counted")
            assert (await c.get("k")).values == ["v"]
            assert (await c.status())["loop_failures"] == {"timers": 1}
            # Timers run again: an operation with a silent replica still ends by its deadline.
            assert await asyncio.wait_for(_deadline_fires(node), 5.0)

    run(scenario())


async def _deadline_fires(node: Any) -> bool:
    """A get whose only replica never answers is failed by the timer, not left open."""
    from dynamo_core.coordinator import KeyPlan
    from dynamo_core.core import Client

    answered: list[Any] = []
    core = node.core
    core.answer_error = lambda client, exc: answered.append(exc)  # type: ignore[method-assign]
    node._carry_out(core._run(core.coordinator.start_get(
        Client(b"probe", 1, core.now()), KeyPlan("default", "x", ("ghost",), 1),
        core.now())) or [])
    while not answered:
        await asyncio.sleep(0.05)
    return core.coordinator.pending() == 0


def test_a_handoff_batch_that_raises_gives_its_delivery_slot_back():
    async def scenario() -> None:
        node = make_node("ho1")

        def broken_batch(target: str, limit: int) -> list:
            raise OSError(5, "Input/output error")

        core = node.core
        core.hints.batch = broken_batch  # type: ignore[method-assign]
        core.handoff.planner.started("elsewhere")
        core.spawn("handoff to elsewhere", core.handoff.deliver("elsewhere"))
        core.tasks.run_ready()
        assert "elsewhere" not in core.handoff.planner.active()
        assert core.status_document()["loop_failures"] == {"handoff": 1}
        core.close()
        node.transport.close()

    run(scenario())
