"""Background work as coroutines with no event loop: the node core's own scheduler.

Anti-entropy, hint delivery, range transfer, gossip and leaving are sequences of requests
and waits. Written as ``async def`` coroutines they read as the protocol does; run on
asyncio they would tie the protocol to a real clock and real sockets. Here they await only
the small operations below, which a :class:`Scheduler` turns into timers and requests and
resumes when the answer comes. Each coroutine is a state machine in all but name: it
consumes replies and timer events and emits sends, exactly like the coordinator's
operations, and whoever drives the core (the asyncio adapter, or the simulator) feeds it
time. Nothing here reads a clock.

* :func:`sleep` waits for ``seconds`` of the driver's monotonic time (``sleep(0)`` lets
  the messages already waiting go first);
* :class:`Call` sends a request to a peer and resumes with its reply body, or raises the
  :class:`~dynamo_core.errors.DynamoError` it failed with (timeouts included);
* :func:`admitted` waits for a slot of the background budget (a queue, not a poll);
* :func:`within` runs an awaitable for at most ``limit`` seconds, raising :class:`CutOff`
  past it;
* :class:`External` hands an awaitable of another world (an extension's asyncio
  coroutine) to the driver;
* :func:`gather` runs coroutines side by side, at most ``limit`` at once; the first
  failure cancels the others and is raised.

A cancelled task is closed (``GeneratorExit`` at its await), so its ``finally`` blocks run.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import DynamoError

T = TypeVar("T")


class CutOff(Exception):
    """An awaitable ran past the time it was given (see :func:`within`)."""


class _Op:
    """Something a task waits for; the scheduler resumes it with the result."""

    def __await__(self) -> Generator[_Op, Any, Any]:
        return (yield self)


@dataclass(eq=False)
class Sleep(_Op):
    seconds: float


@dataclass(eq=False)
class Call(_Op):
    peer: str
    msg_type: str
    body: dict[str, Any]
    timeout: float | None = None


@dataclass(eq=False)
class Admit(_Op):
    """Wait for a background-budget slot; the task must give it back once done."""


@dataclass(eq=False)
class External(_Op):
    """An awaitable the scheduler cannot run itself (an extension's asyncio coroutine): the
    driver runs it, at most ``limit`` seconds, and resumes the task with its outcome (a
    :class:`CutOff` past the limit)."""

    awaitable: Awaitable[Any]
    limit: float


@dataclass(eq=False)
class Within(_Op):
    awaitable: Awaitable[Any]
    limit: float


@dataclass(eq=False)
class Gather(_Op):
    coros: list[Coroutine[Any, Any, Any]]
    limit: int


def sleep(seconds: float) -> Awaitable[None]:
    return Sleep(max(0.0, seconds))


def admitted() -> Awaitable[None]:
    return Admit()


def within(awaitable: Awaitable[T], limit: float) -> Awaitable[T]:
    return Within(awaitable, limit)


async def gather(coros: Sequence[Coroutine[Any, Any, T]], limit: int) -> list[T]:
    if not coros:
        return []
    return await Gather(list(coros), max(1, limit))  # type: ignore[no-any-return]


@dataclass(eq=False)
class Task:
    name: str
    coro: Coroutine[Any, Any, Any]
    #: called once with (result, exception) when the task ends, unless it was cancelled
    on_end: Callable[[Any, BaseException | None], None] | None = None
    done: bool = False
    #: a waiting ticket: a resumption carrying an older ticket is stale and dropped
    ticket: int = 0
    children: list[Task] = field(default_factory=list)


#: How the scheduler's owner starts a request: ``(call, done)``; ``done`` gets the reply
#: body or a DynamoError, exactly once (possibly before ``start_call`` returns).
CallStarter = Callable[[Call, Callable[[Any], None]], None]
#: How it asks for a background slot: ``granted`` is called once a slot is taken for the
#: task and returns whether the task still wants it (False: give the slot back).
Admitter = Callable[[Callable[[], bool]], None]
#: How it hands an :class:`External` to its driver: ``done`` gets the result or exception.
ExternalRunner = Callable[[External, Callable[[Any], None]], None]


async def _awaiting(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _bind(ended: Callable[[int, Any, BaseException | None], None], i: int
          ) -> Callable[[Any, BaseException | None], None]:
    """``ended`` with its first argument fixed: the callback of the ``i``-th gathered task."""
    return lambda result, exc: ended(i, result, exc)


class Scheduler:
    """Runs tasks: resumes them when their sleep ends, their call returns, their slot frees.

    Resumptions are queued and run by :meth:`run_ready`, never nested inside the event that
    caused them, so a reply handled deep in the core cannot re-enter it.
    """

    def __init__(self, clock: Callable[[], float], start_call: CallStarter, admit: Admitter,
                 external: ExternalRunner, on_crash: Callable[[Task, BaseException], None]
                 ) -> None:
        #: the owner's monotonic time: sleeps and limits count from it
        self._clock = clock
        self._start_call = start_call
        self._admit = admit
        self._external = external
        self._on_crash = on_crash
        #: (when, sequence, callback): sleeps ending and time limits running out
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._ready: deque[tuple[Task, int, Any, BaseException | None]] = deque()
        self._seq = itertools.count()
        self._tickets = itertools.count(1)
        self.tasks: set[Task] = set()

    # ------------------------------------------------------------------ the owner's side

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any],
              on_end: Callable[[Any, BaseException | None], None] | None = None) -> Task:
        task = Task(name, coro, on_end)
        self.tasks.add(task)
        self._wake(task, task.ticket, None, None)
        return task

    def cancel(self, task: Task) -> None:
        """Stop a task where it waits; its children go with it. It never resumes."""
        if task.done:
            return
        task.done = True
        self.tasks.discard(task)
        for child in task.children:
            self.cancel(child)
        task.coro.close()

    def cancel_all(self) -> None:
        for task in list(self.tasks):
            self.cancel(task)

    def next_deadline(self) -> float | None:
        if self._ready:
            return self._clock()
        return self._timers[0][0] if self._timers else None

    def run_due(self) -> None:
        """Fire the timers whose time has come, then run everything ready."""
        now = self._clock()
        while self._timers and self._timers[0][0] <= now:
            heapq.heappop(self._timers)[2]()
        self.run_ready()

    def run_ready(self) -> None:
        while self._ready:
            task, ticket, value, exc = self._ready.popleft()
            if not task.done and ticket == task.ticket:
                self._step(task, value, exc)

    # ------------------------------------------------------------------ stepping

    def _at(self, when: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (when, next(self._seq), callback))

    def _wake(self, task: Task, ticket: int, value: Any, exc: BaseException | None) -> None:
        self._ready.append((task, ticket, value, exc))

    def _resumer(self, task: Task) -> Callable[[Any], None]:
        """A callback resuming ``task`` with a value, or raising an exception in it."""
        ticket = task.ticket = next(self._tickets)

        def resume(result: Any) -> None:
            if isinstance(result, BaseException):
                self._wake(task, ticket, None, result)
            else:
                self._wake(task, ticket, result, None)
        return resume

    def _step(self, task: Task, value: Any, exc: BaseException | None) -> None:
        try:
            op = task.coro.throw(exc) if exc is not None else task.coro.send(value)
        except StopIteration as stop:
            self._end(task, stop.value, None)
            return
        except Exception as error:  # noqa: BLE001 - a task's failure is its owner's news
            self._end(task, None, error)
            return
        self._wait(task, op)

    def _wait(self, task: Task, op: Any) -> None:
        resume = self._resumer(task)
        if isinstance(op, Sleep):
            self._at(self._clock() + op.seconds, lambda: resume(None))
        elif isinstance(op, Call):
            self._start_call(op, resume)
        elif isinstance(op, Admit):
            self._admit(lambda: self._granted(task, resume))
        elif isinstance(op, Gather):
            self._gather(task, op, resume)
        elif isinstance(op, Within):
            self._within(task, op, resume)
        elif isinstance(op, External):
            self._external(op, resume)
        else:
            resume(DynamoError(f"task {task.name} awaited {type(op).__name__}, which the "
                               "node core cannot run (only its own operations)"))

    def _granted(self, task: Task, resume: Callable[[Any], None]) -> bool:
        if task.done:
            return False  # cancelled while it waited its turn: the slot goes back
        resume(None)
        return True

    def _end(self, task: Task, result: Any, exc: BaseException | None) -> None:
        task.done = True
        self.tasks.discard(task)
        if task.on_end is not None:
            task.on_end(result, exc)
        elif exc is not None:
            self._on_crash(task, exc)

    def _within(self, parent: Task, op: Within, resume: Callable[[Any], None]) -> None:
        def ended(result: Any, exc: BaseException | None) -> None:
            parent.children.remove(child)
            resume(exc if exc is not None else result)

        child = self.spawn(f"{parent.name}/within", _awaiting(op.awaitable), ended)
        parent.children.append(child)

        def cut_off() -> None:
            if not child.done:
                self.cancel(child)
                parent.children.remove(child)
                resume(CutOff(f"did not finish within {op.limit:g}s"))
        self._at(self._clock() + op.limit, cut_off)

    def _gather(self, parent: Task, op: Gather, resume: Callable[[Any], None]) -> None:
        results: list[Any] = [None] * len(op.coros)
        waiting = deque(enumerate(op.coros))
        running = 0
        failed = False

        def start_next() -> None:
            nonlocal running
            while waiting and running < op.limit:
                i, coro = waiting.popleft()
                running += 1
                child = self.spawn(f"{parent.name}[{i}]", coro, _bind(ended, i))
                parent.children.append(child)

        def ended(i: int, result: Any, exc: BaseException | None) -> None:
            nonlocal running, failed
            running -= 1
            if failed:
                return
            if exc is not None:
                failed = True
                for child in parent.children:
                    self.cancel(child)
                for _, coro in waiting:
                    coro.close()
                parent.children.clear()
                resume(exc)
                return
            results[i] = result
            start_next()
            if running == 0 and not waiting:
                parent.children.clear()
                resume(results)

        start_next()
