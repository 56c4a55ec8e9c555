"""Plugins at run time: protocol extensions on the bus, lifecycle and observation hooks.

The registries of :mod:`plugins` pick implementations by name; this module runs what
plugins add to a live node:

* :class:`NodeHandle`, the node as plugins see it (the ``NodeAPI`` of :mod:`hookspecs`):
  a narrow, stable surface, so the runtime can change behind it;
* :class:`Extensions`, which builds every installed protocol extension for the node,
  registers its message types with the node's codec (so its messages are validated on
  receipt like the core's), answers them, runs the extensions' periodic tasks under the
  background budget, and calls the lifecycle and observation hooks.

A plugin that raises is logged and counted, never allowed to stop the node or to keep the
other plugins from hearing about an event.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .errors import ConfigError, DynamoError, Overloaded, Timeout, WireError
from .hookspecs import (
    MessageType,
    NodeAPI,
    PeerView,
    PeriodicTask,
    ProtocolExtension,
    Request,
    RequestEvent,
)
from .plugins import Registry
from .ring import key_hash
from .wire import Message

if TYPE_CHECKING:
    from .node import Client, Node

log = logging.getLogger(__name__)

#: Extension messages being answered at once on one node; more get an Overloaded reply.
MAX_HANDLERS_RUNNING = 256
#: The shortest period a periodic task may ask for, in seconds.
MIN_TASK_INTERVAL = 0.01
#: Client operations the observation hook reports.
OBSERVED_OPS = frozenset({"get", "put", "delete"})


class NodeHandle:
    """The :class:`~dynamo_core.hookspecs.NodeAPI` of one node."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self.name = node.name
        self.address = node.listen
        self.rng = node.rng

    def now(self) -> float:
        return self._node.now()

    def members(self) -> list[PeerView]:
        node = self._node
        return [PeerView(m.name, m.address, m.status, node.peer_state(m.name))
                for m in node.membership.members()]

    def preference_list(self, bucket: str, key: str) -> list[str]:
        return list(self._node.membership.ring.walk(key_hash(bucket, key)))

    def local_key_count(self) -> int:
        return self._node.anti_entropy.keys_held()

    def stats(self) -> Mapping[str, Any]:
        return self._node.status_document()

    def options(self, extension: str) -> Mapping[str, Any]:
        return MappingProxyType(dict(self._node.config.extensions.get(extension, {})))

    async def call(self, peer: str, msg_type: str, body: Mapping[str, Any],
                   timeout: float | None = None) -> dict[str, Any]:
        return await self._node.call(peer, msg_type, dict(body), timeout)

    def send(self, peer: str, msg_type: str, body: Mapping[str, Any]) -> None:
        self._node.send_one_way(peer, msg_type, dict(body))

    def __repr__(self) -> str:
        return f"NodeHandle({self.name})"


class Extensions:
    """Every installed protocol extension of one node, and its plugins' hooks."""

    def __init__(self, node: Node, registry: Registry) -> None:
        self.node = node
        self.api: NodeAPI = NodeHandle(node)
        self.hook = registry.pm.hook
        #: hooks that raised, and extension handlers or tasks that failed unexpectedly
        self.errors = 0
        self._running: set[asyncio.Task] = set()
        self._check_options(registry)
        self.installed: dict[str, ProtocolExtension] = {
            name: self._build(name, registry.pick("protocol extension", name))
            for name in registry.names("protocol extension")}
        # Observation runs once per request: skip building events when nobody listens.
        self._observers = self.hook.dynamo_request_completed.get_hookimpls()

    # ------------------------------------------------------------------ set-up

    def _check_options(self, registry: Registry) -> None:
        for name in self.node.config.extensions:
            registry.pick("protocol extension", name)  # unknown: ConfigError listing them

    def _build(self, name: str, factory: Callable[[NodeAPI], ProtocolExtension]
               ) -> ProtocolExtension:
        try:
            extension = factory(self.api)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"protocol extension {name!r}: {exc}") from None
        if not isinstance(extension, ProtocolExtension):
            raise ConfigError(f"protocol extension {name!r} returned "
                              f"{type(extension).__name__}, not a ProtocolExtension")
        for message in extension.messages:
            self._register(name, message)
        for task in extension.tasks:
            if not task.interval >= MIN_TASK_INTERVAL:
                raise ConfigError(f"protocol extension {name!r}: task {task.name!r} interval "
                                  f"must be at least {MIN_TASK_INTERVAL}s, got {task.interval}")
        return extension

    def _register(self, extension: str, message: MessageType) -> None:
        verb = message.name[len(extension) + 1:]
        if (not message.name.startswith(f"{extension}.") or not verb
                or message.name.endswith("_ok")):
            raise ConfigError(f"protocol extension {extension!r}: message type "
                              f"{message.name!r} must be named '{extension}.<verb>' "
                              f"(not ending in _ok, which names its reply)")
        codec = self.node.codec
        try:
            codec.register(message.name, dict(message.fields))
            codec.register(f"{message.name}_ok", dict(message.reply_fields))
        except ValueError as exc:
            raise ConfigError(f"protocol extension {extension!r}: {exc}") from None

    def handlers(self) -> dict[str, Callable[[Message, Client], None]]:
        """The node's request handlers for every extension message type."""
        return {message.name: self._handler_of(message)
                for extension in self.installed.values() for message in extension.messages}

    # ------------------------------------------------------------------ messages

    def _handler_of(self, message: MessageType) -> Callable[[Message, Client], None]:
        def accept(msg: Message, client: Client) -> None:
            if len(self._running) >= MAX_HANDLERS_RUNNING:
                raise Overloaded(f"{MAX_HANDLERS_RUNNING} extension messages are being "
                                 f"answered already; {msg.type} refused")
            task = asyncio.get_running_loop().create_task(self._answer(message, msg, client))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        return accept

    async def _answer(self, message: MessageType, msg: Message, client: Client) -> None:
        """Run the handler, check its reply against ``reply_fields``, send it back."""
        node = self.node
        body: dict[str, Any] = {}
        error: DynamoError | None = None
        limit = node.config.request_timeout * 2
        try:
            result = message.handler(self.api, Request(msg.type, msg.body, msg.sender))
            if inspect.isawaitable(result):
                async with asyncio.timeout(limit):
                    result = await result
            body = dict(result or {})
        except asyncio.TimeoutError:
            self.errors += 1
            log.error("%s: %s handler did not answer within %gs", node.name, msg.type, limit)
            error = Timeout(f"{msg.type} handler did not answer within {limit:g}s")
        except DynamoError as exc:  # the handler's answer, or a peer's error it relays
            error = exc
        except Exception as exc:  # noqa: BLE001 - a plugin bug must not reach the loop
            self.errors += 1
            log.exception("%s: %s handler failed", node.name, msg.type)
            error = DynamoError(f"internal error in the {msg.type} handler: {exc}")
        else:
            try:
                node.codec.check_body(f"{message.name}_ok", body)
            except WireError as exc:
                self.errors += 1
                log.error("%s: %s handler replied a body its reply_fields refuse: %s",
                          node.name, msg.type, exc)
                error = DynamoError(f"{msg.type} handler replied an invalid body: {exc}")
        if client.req_id is None:  # one-way: nobody waits for an answer
            return
        if error is not None:
            node.reply_error(client, error)
        else:
            node.reply(client, f"{message.name}_ok", body)

    # ------------------------------------------------------------------ tasks

    def start_tasks(self) -> list[asyncio.Task]:
        return [asyncio.get_running_loop().create_task(self._every(name, task),
                                                       name=f"{name}:{task.name}")
                for name, extension in self.installed.items() for task in extension.tasks]

    async def _every(self, extension: str, task: PeriodicTask) -> None:
        budget, rng = self.node.budget, self.node.rng
        while True:
            await asyncio.sleep(task.interval * rng.uniform(0.9, 1.1))
            while not budget.try_start(time.time()):
                await asyncio.sleep(0.01)
            try:
                result = task.run(self.api)
                if inspect.isawaitable(result):
                    # A hung run would hold its background slot, starving handoff and
                    # anti-entropy: it is cut off. (asyncio.timeout, not wait_for: on 3.11
                    # wait_for can swallow the cancellation of a stopping node.)
                    async with asyncio.timeout(self._task_limit(task)):
                        await result
            except asyncio.CancelledError:
                raise
            except asyncio.TimeoutError:
                self.errors += 1
                log.error("%s: periodic task %s of %s cut off after %gs", self.node.name,
                          task.name, extension, self._task_limit(task))
            except Exception:  # noqa: BLE001 - the task runs again next period
                self.errors += 1
                log.exception("%s: periodic task %s of %s failed", self.node.name, task.name,
                              extension)
            finally:
                budget.done()

    def _task_limit(self, task: PeriodicTask) -> float:
        """How long one run of a periodic task may take: its period, at least 2 timeouts."""
        return max(task.interval, self.node.config.request_timeout * 2)

    async def stop(self) -> None:
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)

    # ------------------------------------------------------------------ hooks

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call a lifecycle hook on every plugin implementing it, each failure isolated."""
        for impl in getattr(self.hook, hook_name).get_hookimpls():
            self._call_impl(impl, hook_name, {"node": self.api, **kwargs})

    def request_completed(self, client: Client, outcome: str, now: float) -> None:
        """Tell observers a client request was answered (``outcome``: "ok" or error code)."""
        if not self._observers or client.op is None:
            return
        event = RequestEvent(client.op, client.bucket, client.key, now - client.arrived,
                             outcome, client.forwarded)
        for impl in self._observers:
            self._call_impl(impl, "dynamo_request_completed", {"node": self.api,
                                                               "event": event})

    def _call_impl(self, impl: Any, hook_name: str, kwargs: Mapping[str, Any]) -> None:
        try:
            impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
        except Exception:  # noqa: BLE001 - one plugin's bug is not the node's
            self.errors += 1
            log.exception("%s: plugin %s failed in %s", self.node.name, impl.plugin_name,
                          hook_name)
