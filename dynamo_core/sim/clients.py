"""Simulated clients and the history they leave for the checker.

A :class:`SimClient` speaks the node protocol exactly as :class:`dynamo_core.Client` does
(the same request bodies and reply parsing, from :mod:`dynamo_core.client`), over the
simulated network, with a timeout per request. Its workload is what applications built on a
Dynamo do, on a few hot keys so that writers collide:

* **cart adds**: read a ``cart-union`` cart, add one new item, write the cart back with the
  context of the read (the paper's shopping cart);
* **register puts**: read a key of a bucket without a resolver, write a new value with the
  read's context;
* **deletes**: read a key, delete what the read saw;
* **reads**;
* **blind puts**: write a register with no context at all (a sibling of what is there).

Every value and item written is unique, and every write records what its writer had read
(``seen``), so the checker can decide from values alone, without trusting vector clocks,
whether a write survived or was superseded by a writer who saw it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import errors, tasks
from ..client import _REPLY_OF, GetResult, _Requests
from ..errors import DynamoError, WireError
from ..transport import SendFailed
from ..wire import Codec
from .network import Network
from .world import World

CART_BUCKET = "carts"
ORSET_BUCKET = "orset-carts"
REGISTER_BUCKET = "default"


#: One client's way of adding to carts: ``(key, sibling values read, new item)`` -> the
#: value to write back with the read's context.
Adder = Callable[[str, list[Any], str], Any]


@dataclass(frozen=True)
class CartModel:
    """How clients of one resolver's carts add an item, and what a cart holds."""

    bucket: str
    resolver: str
    #: a client's adder, given the client's name (its actor)
    writer: Callable[[str], Adder]
    #: the items a cart's sibling values hold
    items: Callable[[list[Any]], set[Any]]


def _union_items(values: list[Any]) -> set[Any]:
    return {item for value in values if isinstance(value, list) for item in value}


def _union_writer(actor: str) -> Adder:
    return lambda key, values, item: sorted(_union_items(values) | {item})


CART_UNION = CartModel(CART_BUCKET, "cart-union", _union_writer, _union_items)


def orset_model() -> CartModel | None:
    """The ``orset-cart`` example resolver's carts, when that package is installed (as a
    plugin: the nodes must find its resolver through its entry point)."""
    if not any(ep.name == "orset-cart"
               for ep in importlib.metadata.entry_points(group="dynamo")):
        return None
    try:
        orset = importlib.import_module("dynamo_orset_cart")
    except ImportError:
        return None

    def writer(actor: str) -> Adder:
        """As the package asks of an actor: keep each cart between writes and merge every
        new read into it, so that the actor always writes from a state holding its own
        earlier adds (a stale read alone would number two adds alike)."""
        carts: dict[str, Any] = {}

        def add(key: str, values: list[Any], item: str) -> Any:
            cart = carts.setdefault(key, orset.Cart(actor))
            cart.merge(orset.Cart.from_values(values, actor=actor))
            cart.add(item)
            return cart.to_value()
        return add

    def items(values: list[Any]) -> set[Any]:
        return set(orset.Cart.from_values(values, actor="checker").items())

    return CartModel(ORSET_BUCKET, "orset-cart", writer, items)


def cart_models() -> list[CartModel]:
    """Every kind of cart the clients fill: cart-union always, orset-cart if installed."""
    return [CART_UNION, *filter(None, [orset_model()])]


@dataclass
class Operation:
    """One client operation as the checker sees it."""

    id: int
    client: str
    kind: str  # "add", "put", "delete" or "get"
    bucket: str
    key: str
    start: float
    #: the item added, or the value written (None for deletes and gets)
    value: Any = None
    #: the values the writer's read returned (what its context covers)
    seen: list[Any] = field(default_factory=list)
    end: float | None = None
    #: "ok"; "unknown" (timed out or failed after it was sent: it may have been stored);
    #: "refused" (never reached a node, or its read failed: certainly not stored)
    outcome: str = "pending"
    node: str = ""
    error: str = ""
    #: a get's values
    read: list[Any] = field(default_factory=list)


@dataclass
class Workload:
    """What clients do: how many operations, on how many keys, in what mix."""

    ops: int
    cart_keys: int = 2
    register_keys: int = 2
    #: relative weights of cart adds, register puts, deletes, reads and blind puts (a put
    #: with no context, whose writer read nothing first)
    mix: tuple[float, float, float, float, float] = (0.5, 0.25, 0.05, 0.15, 0.05)
    #: mean pause between two operations of one client (exponential), seconds
    think: float = 0.005
    timeout: float = 5.0


class History:
    """Every operation the clients started, and the answers they got."""

    def __init__(self) -> None:
        self.operations: list[Operation] = []
        #: requests that got more than one answer (the checker's "duplicates")
        self.duplicate_answers = 0
        #: answers that came after the client gave up on the request
        self.late_answers = 0

    def new(self, **fields: Any) -> Operation:
        op = Operation(id=len(self.operations) + 1, **fields)
        self.operations.append(op)
        return op

    def acknowledged(self, kind: str | None = None) -> list[Operation]:
        return [op for op in self.operations if op.outcome == "ok" and op.kind != "get"
                and (kind is None or op.kind == kind)]


class SimClient:
    """One application process talking to the cluster, its requests run as coroutines on
    the virtual clock (the node core's scheduler, with the client's own calls)."""

    def __init__(self, name: str, world: World, network: Network, addresses: list[str],
                 history: History, workload: Workload, budget: Callable[[], bool],
                 carts: list[CartModel]) -> None:
        self.name = name
        self.carts = carts
        self._adders = {model.bucket: model.writer(name) for model in carts}
        self.world = world
        self.network = network
        self.addresses = addresses
        self.history = history
        self.workload = workload
        #: takes one operation from the shared budget; False once it is spent
        self._budget = budget
        self.rng = world.rng
        self.protocol = _Requests(addresses, workload.timeout, route=False)
        self.codec = Codec()
        #: request id -> (the reply type it expects, who awaits it)
        self._pending: dict[int, tuple[str, Callable[[Any], None]]] = {}
        self._answered: set[int] = set()
        self._items = 0
        self.crashed: str | None = None
        self.scheduler = tasks.Scheduler(lambda: world.now, self._start_call,
                                         lambda granted: None, self._no_external,
                                         self._crash)
        self._armed: float | None = None
        network.attach_client(name, self._on_frame)

    def start(self) -> None:
        self.scheduler.spawn(self.name, self.run())
        self._kick()

    @property
    def done(self) -> bool:
        return not self.scheduler.tasks

    def _kick(self) -> None:
        """Run what is ready and arm the next timer; after anything resumed the client."""
        self.scheduler.run_ready()
        when = self.scheduler.next_deadline()
        if when is not None and when != self._armed:
            self._armed = when
            self.world.at(when, self._fire)

    def _fire(self) -> None:
        self._armed = None
        self.scheduler.run_due()
        self._kick()

    @staticmethod
    def _no_external(op: tasks.External, done: Callable[[Any], None]) -> None:
        done(RuntimeError("simulated clients await only requests and sleeps"))

    def _crash(self, task: tasks.Task, exc: BaseException) -> None:
        self.crashed = f"{task.name}: {exc!r}"

    # ------------------------------------------------------------------ requests

    def _start_call(self, call: tasks.Call, done: Callable[[Any], None]) -> None:
        req_id = self.protocol.next_id()
        frame = self.codec.encode(call.msg_type, call.body, req_id)
        try:
            self.network.request(self.name, call.peer, frame)
        except SendFailed as exc:
            done(errors.Unavailable(str(exc)))
            return
        self._pending[req_id] = (_REPLY_OF[call.msg_type], done)
        self.world.after(call.timeout or self.workload.timeout,
                         lambda: self._expire(req_id, call))

    def _expire(self, req_id: int, call: tasks.Call) -> None:
        pending = self._pending.pop(req_id, None)
        if pending is not None:
            pending[1](errors.Timeout(f"{call.msg_type} to {call.peer} got no answer"))
            self._kick()

    def _on_frame(self, frame: bytes) -> None:
        try:
            msg = self.codec.decode(frame)
        except WireError:
            return
        if msg.id is None:
            return
        pending = self._pending.pop(msg.id, None)
        if pending is None:
            if msg.id in self._answered:
                self.history.duplicate_answers += 1
                self.world.note(f"{self.name}: request {msg.id} answered twice")
            else:
                self.history.late_answers += 1
            return
        self._answered.add(msg.id)
        expected, done = pending
        try:
            done(_Requests.parse(msg, expected))
        except DynamoError as exc:
            done(exc)
        self._kick()

    async def request(self, address: str, msg_type: str, body: dict[str, Any]
                      ) -> dict[str, Any]:
        return await tasks.Call(address, msg_type, body,  # type: ignore[no-any-return]
                                self.workload.timeout)

    # ------------------------------------------------------------------ the workload

    def _node(self) -> str:
        return self.addresses[self.rng.randrange(len(self.addresses))]

    async def run(self) -> None:
        w = self.workload
        kinds = ("add", "put", "delete", "get", "blind")
        while self._budget():
            await tasks.sleep(self.rng.expovariate(1.0 / w.think))
            kind = self.rng.choices(kinds, weights=w.mix)[0]
            if kind == "add":
                model = self.carts[self.rng.randrange(len(self.carts))]
                await self.add_to_cart(model, f"cart{self.rng.randrange(w.cart_keys)}")
            else:
                await self.register(kind, f"reg{self.rng.randrange(w.register_keys)}")

    async def read(self, bucket: str, key: str) -> tuple[GetResult | None, str]:
        """A get, retried on other nodes while they fail (at most three tries)."""
        problem = ""
        for _ in range(3):
            node = self._node()
            try:
                body = await self.request(node, "get", self.protocol.get_body(
                    bucket, key, None, True))
                return _Requests.get_result(body), node
            except DynamoError as exc:
                problem = f"{type(exc).__name__}: {exc}"
        return None, problem

    async def add_to_cart(self, model: CartModel, key: str) -> None:
        self._items += 1
        item = f"{self.name}-{self._items}"
        op = self.history.new(client=self.name, kind="add", bucket=model.bucket, key=key,
                              start=self.world.now, value=item)
        result, where = await self.read(model.bucket, key)
        if result is None:
            self._finish(op, "refused", f"its read failed: {where}")
            return
        op.seen = sorted(model.items(result.values))
        value = self._adders[model.bucket](key, result.values, item)
        await self._write(op, self.protocol.put_body(model.bucket, key, value, result.context,
                                                     None, False), "put")

    async def register(self, kind: str, key: str) -> None:
        value = f"{self.name}-v{len(self.history.operations) + 1}"
        blind = kind == "blind"
        kind = "put" if blind else kind
        op = self.history.new(client=self.name, kind=kind, bucket=REGISTER_BUCKET, key=key,
                              start=self.world.now, value=value if kind == "put" else None)
        if blind:  # no read, no context: the new value is a sibling of whatever is there
            await self._write(op, self.protocol.put_body(REGISTER_BUCKET, key, value, None,
                                                         None, False), "put")
            return
        result, where = await self.read(REGISTER_BUCKET, key)
        if result is None:
            self._finish(op, "refused", f"its read failed: {where}")
            return
        op.seen = list(result.values)
        if kind == "get":
            op.read = list(result.values)
            self._finish(op, "ok")
            return
        body = self.protocol.put_body(REGISTER_BUCKET, key, value, result.context, None,
                                      kind == "delete")
        await self._write(op, body, "delete" if kind == "delete" else "put")

    async def _write(self, op: Operation, body: dict[str, Any], msg_type: str) -> None:
        node = self._node()
        op.node = self.network.name_at(node) or node
        self.world.note(f"{self.name} {op.kind} #{op.id} {op.bucket}/{op.key} "
                        f"{op.value!r} via {op.node}")
        try:
            await self.request(node, msg_type, body)
        except errors.Unavailable as exc:
            if "connection refused" in str(exc):
                self._finish(op, "refused", str(exc))  # never left the client
            else:
                self._finish(op, "unknown", str(exc))
        except DynamoError as exc:
            self._finish(op, "unknown", f"{type(exc).__name__}: {exc}")
        else:
            self._finish(op, "ok")

    def _finish(self, op: Operation, outcome: str, error: str = "") -> None:
        op.end = self.world.now
        op.outcome = outcome
        op.error = error
        if op.kind != "get":
            self.world.note(f"{self.name} {op.kind} #{op.id} {outcome}"
                            + (f" ({error[:120]})" if error else ""))
