"""The node core's scheduler: coroutines that await only the core's own operations.

A tiny owner stands in for the core here: its clock is a number the test moves, its calls
are answered by the test, and its background budget has a fixed number of slots.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import pytest

from dynamo_core import tasks
from dynamo_core.errors import DynamoError, Timeout


class Owner:
    def __init__(self, slots: int = 1) -> None:
        self.now = 0.0
        self.calls: list[tuple[tasks.Call, Callable[[Any], None]]] = []
        self.free = slots
        self.waiting: deque[Callable[[], bool]] = deque()
        self.crashes: list[BaseException] = []
        self.scheduler = tasks.Scheduler(lambda: self.now, self._call, self._admit,
                                         lambda op, done: done(RuntimeError("no asyncio")),
                                         lambda task, exc: self.crashes.append(exc))

    def _call(self, call: tasks.Call, done: Callable[[Any], None]) -> None:
        self.calls.append((call, done))

    def _admit(self, granted: Callable[[], bool]) -> None:
        if self.free:
            self.free -= 1
            if not granted():
                self.free += 1
        else:
            self.waiting.append(granted)

    def done(self) -> None:
        """A task gives its slot back; the next waiting one takes it."""
        self.free += 1
        while self.waiting and self.free:
            self.free -= 1
            if not self.waiting.popleft()():
                self.free += 1

    def advance(self, to: float) -> None:
        self.now = to
        self.scheduler.run_due()

    def answer(self, index: int, result: Any) -> None:
        self.calls[index][1](result)
        self.scheduler.run_ready()


def test_a_sleep_ends_when_the_owners_clock_reaches_it_and_not_before() -> None:
    owner, woke = Owner(), []

    async def sleeper() -> None:
        await tasks.sleep(2.0)
        woke.append(owner.now)

    owner.scheduler.spawn("s", sleeper())
    owner.scheduler.run_ready()
    assert owner.scheduler.next_deadline() == 2.0
    owner.advance(1.999)
    assert woke == []
    owner.advance(2.0)
    assert woke == [2.0]
    assert not owner.scheduler.tasks


def test_a_call_resumes_with_the_reply_or_raises_the_error_it_failed_with() -> None:
    owner, seen = Owner(), []

    async def asker() -> None:
        seen.append(await tasks.Call("n2", "ping", {}))
        try:
            await tasks.Call("n3", "ping", {})
        except Timeout as exc:
            seen.append(str(exc))

    owner.scheduler.spawn("a", asker())
    owner.scheduler.run_ready()
    owner.answer(0, {"node": "n2"})
    owner.answer(1, Timeout("ping to n3 got no answer"))
    assert seen == [{"node": "n2"}, "ping to n3 got no answer"]


def test_a_stale_resumption_of_a_task_is_dropped() -> None:
    """A reply arriving after the task moved on (it was resumed by something else, or it
    was cancelled) must not step it a second time."""
    owner, seen = Owner(), []

    async def asker() -> None:
        seen.append(await tasks.Call("n2", "ping", {}))
        await tasks.sleep(10)

    owner.scheduler.spawn("a", asker())
    owner.scheduler.run_ready()
    owner.answer(0, "first")
    owner.answer(0, "again")  # the same callback, once more: ignored
    assert seen == ["first"]


def test_gather_runs_at_most_limit_at_once_and_returns_results_in_order() -> None:
    owner, running, peak = Owner(), [0], [0]

    async def job(i: int) -> int:
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        await tasks.sleep(1.0 + i % 2)
        running[0] -= 1
        return i * 10

    results: list[list[int]] = []

    async def parent() -> None:
        results.append(await tasks.gather([job(i) for i in range(5)], limit=2))

    owner.scheduler.spawn("p", parent())
    owner.scheduler.run_ready()
    for t in range(1, 10):
        owner.advance(float(t))
    assert results == [[0, 10, 20, 30, 40]]
    assert peak[0] == 2


def test_the_first_failure_in_a_gather_cancels_the_others_and_is_raised() -> None:
    owner, finished, caught = Owner(), [], []

    async def slow() -> None:
        try:
            await tasks.sleep(5.0)
        finally:
            finished.append("slow closed")

    async def failing() -> None:
        await tasks.sleep(1.0)
        raise DynamoError("boom")

    async def parent() -> None:
        try:
            await tasks.gather([slow(), failing()], limit=2)
        except DynamoError as exc:
            caught.append(str(exc))

    owner.scheduler.spawn("p", parent())
    owner.scheduler.run_ready()
    owner.advance(1.0)
    assert caught == ["boom"]
    assert finished == ["slow closed"]  # its finally ran: cancelled, not abandoned
    owner.advance(6.0)
    assert not owner.scheduler.tasks


def test_within_cuts_off_an_awaitable_that_runs_past_its_limit() -> None:
    owner, outcome = Owner(), []

    async def forever() -> None:
        await tasks.sleep(100.0)

    async def parent() -> None:
        try:
            await tasks.within(forever(), 2.0)
        except tasks.CutOff as exc:
            outcome.append(str(exc))

    owner.scheduler.spawn("p", parent())
    owner.scheduler.run_ready()
    owner.advance(2.0)
    assert outcome == ["did not finish within 2s"]
    assert not owner.scheduler.tasks


def test_a_task_cancelled_while_it_waits_for_a_budget_slot_gives_the_slot_back() -> None:
    owner = Owner(slots=1)
    got: list[str] = []

    async def worker(name: str) -> None:
        await tasks.admitted()
        got.append(name)

    holder = owner.scheduler.spawn("holder", worker("holder"))
    waiter = owner.scheduler.spawn("waiter", worker("waiter"))
    late = owner.scheduler.spawn("late", worker("late"))
    owner.scheduler.run_ready()
    assert got == ["holder"] and holder.done
    owner.scheduler.cancel(waiter)
    owner.done()  # the holder's slot: the cancelled waiter refuses it, the next one takes it
    owner.scheduler.run_ready()
    assert got == ["holder", "late"] and late.done
    assert owner.free == 0  # exactly one slot in use, none leaked


def test_a_task_that_raises_is_reported_to_its_owner() -> None:
    owner = Owner()

    async def broken() -> None:
        await tasks.sleep(0)
        raise ValueError("a bug")

    owner.scheduler.spawn("b", broken())
    owner.scheduler.run_ready()
    owner.advance(0.0)
    assert [str(e) for e in owner.crashes] == ["a bug"]


def test_awaiting_anything_but_the_cores_own_operations_is_refused_with_a_clear_error() -> None:
    owner, caught = Owner(), []

    class Foreign:
        def __await__(self) -> Any:
            return (yield "an asyncio future")

    async def misled() -> None:
        try:
            await Foreign()
        except DynamoError as exc:
            caught.append(str(exc))

    owner.scheduler.spawn("m", misled())
    owner.scheduler.run_ready()
    assert caught and "the node core cannot run" in caught[0]


@pytest.mark.parametrize("seconds", [-1.0, 0.0])
def test_sleep_zero_or_negative_lets_what_is_due_go_first_and_never_goes_back(
        seconds: float) -> None:
    owner, order = Owner(), []

    async def a() -> None:
        await tasks.sleep(seconds)
        order.append("a")

    owner.now = 5.0
    owner.scheduler.spawn("a", a())
    owner.scheduler.run_ready()
    assert order == [] and owner.scheduler.next_deadline() == 5.0
    owner.advance(5.0)
    assert order == ["a"]
