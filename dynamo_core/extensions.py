"""Plugins at run time: protocol extensions on the bus, lifecycle and observation hooks.

The registries of :mod:`plugins` pick implementations by name; this module runs what
plugins add to a live node:

* :class:`NodeHandle`, the node as plugins see it (the ``NodeAPI`` of :mod:`api`): a
  narrow, stable surface, so the core can change behind it;
* :class:`Extensions`, which builds every installed protocol extension for the node,
  registers its message types with the node's codec (so its messages are validated on
  receipt like the core's), answers them, runs the extensions' periodic tasks under the
  background budget, and calls the lifecycle and observation hooks in pluggy's order.

Extension code is the plugin author's, and may be written for asyncio. Where it runs is the
driver's business, reached through an :class:`Edge`: the asyncio adapter runs handlers and
periodic tasks as asyncio tasks (``asyncio.gather``, ``asyncio.sleep`` work there); the
simulator runs them on the core's own scheduler (:class:`CoreEdge`), where ``node.call``
and ``node.send`` work and asyncio's own primitives are refused with a clear error.

A plugin that raises is logged and counted, never allowed to stop the node or to keep the
other plugins from hearing about an event.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from random import Random
from types import MappingProxyType
from typing import Any, Protocol

from . import tasks
from .access import ROLES
from .api import (
    MessageType,
    NodeAPI,
    PeerView,
    PeriodicTask,
    ProtocolExtension,
    Request,
    RequestEvent,
)
from .config import Config
from .errors import ConfigError, DynamoError, Overloaded, Timeout, WireError
from .plugins import Registry, call_order
from .versions import context_entries
from .wire import Codec, Message

log = logging.getLogger(__name__)

#: Extension messages being answered at once on one node; more get an Overloaded reply.
MAX_HANDLERS_RUNNING = 256
#: The shortest period a periodic task may ask for, in seconds.
MIN_TASK_INTERVAL = 0.01
#: Client operations the observation hook reports.
OBSERVED_OPS = frozenset({"get", "put", "delete"})


class Edge(Protocol):
    """How extension code reaches the node: the driver's side of the core."""

    def call(self, peer: str, msg_type: str, body: dict[str, Any],
             timeout: float | None) -> Awaitable[dict[str, Any]]:
        """A request to a peer; the awaitable gives the reply body or raises."""
        ...

    def send(self, peer: str, msg_type: str, body: dict[str, Any]) -> None:
        """A one-way message to a peer."""
        ...

    def run(self, awaitable: Awaitable[Any], limit: float) -> Awaitable[Any]:
        """Awaited by a core task: run an extension's awaitable for at most ``limit``
        seconds; raises :class:`~dynamo_core.tasks.CutOff` past it."""
        ...


class CoreEdge:
    """Extension code on the core's own scheduler (the simulator, and in-process tests)."""

    def __init__(self, send: Callable[[str, str, dict[str, Any]], None]) -> None:
        self._send = send

    def call(self, peer: str, msg_type: str, body: dict[str, Any],
             timeout: float | None) -> Awaitable[dict[str, Any]]:
        return tasks.Call(peer, msg_type, body, timeout)

    def send(self, peer: str, msg_type: str, body: dict[str, Any]) -> None:
        self._send(peer, msg_type, body)

    def run(self, awaitable: Awaitable[Any], limit: float) -> Awaitable[Any]:
        return tasks.within(awaitable, limit)


class ExtensionHost(Protocol):
    """What the extension runtime needs of the node core."""

    name: str
    address: str
    rng: Random
    config: Config
    codec: Codec

    def wall(self) -> float: ...

    def members(self) -> list[PeerView]: ...

    def preference_list(self, bucket: str, key: str) -> list[str]: ...

    def local_key_count(self) -> int: ...

    def status_document(self) -> dict[str, Any]: ...

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any]) -> tasks.Task: ...

    def answer(self, client: Any, msg_type: str, body: dict[str, Any]) -> None: ...

    def answer_error(self, client: Any, exc: DynamoError) -> None: ...

    def background_done(self) -> None: ...


class NodeHandle:
    """The :class:`~dynamo_core.api.NodeAPI` of one node."""

    def __init__(self, host: ExtensionHost, edge: Edge) -> None:
        self._host = host
        self._edge = edge
        self.name = host.name
        self.address = host.address
        self.rng = host.rng
        self.metrics_listen = host.config.metrics_listen

    def now(self) -> float:
        return self._host.wall()

    def members(self) -> list[PeerView]:
        return self._host.members()

    def preference_list(self, bucket: str, key: str) -> list[str]:
        return self._host.preference_list(bucket, key)

    def local_key_count(self) -> int:
        return self._host.local_key_count()

    def stats(self) -> Mapping[str, Any]:
        return self._host.status_document()

    def options(self, extension: str) -> Mapping[str, Any]:
        return MappingProxyType(dict(self._host.config.extensions.get(extension, {})))

    async def call(self, peer: str, msg_type: str, body: Mapping[str, Any],
                   timeout: float | None = None) -> dict[str, Any]:
        return await self._edge.call(peer, msg_type, dict(body), timeout)

    def send(self, peer: str, msg_type: str, body: Mapping[str, Any]) -> None:
        self._edge.send(peer, msg_type, dict(body))

    def __repr__(self) -> str:
        return f"NodeHandle({self.name})"


def check_options(options: Mapping[str, Any], registry: Registry) -> None:
    """Options (``[extensions.<name>]``) for an extension that is not installed stop a node
    at start, and ``dynamo plugins --config`` says so too: ConfigError listing the names."""
    for name in options:
        registry.pick("protocol extension", name)


class Extensions:
    """Every installed protocol extension of one node, and its plugins' hooks."""

    def __init__(self, host: ExtensionHost, registry: Registry, edge: Edge,
                 logger: logging.Logger | logging.LoggerAdapter[Any] = log) -> None:
        self.host = host
        self.edge = edge
        self.log = logger
        self.api: NodeAPI = NodeHandle(host, edge)
        self.pm = registry.pm
        #: hooks that raised, and extension handlers or tasks that failed unexpectedly
        self.errors = 0
        self._running = 0
        check_options(self.host.config.extensions, registry)
        self.installed: dict[str, ProtocolExtension] = {
            name: self._build(name, registry.pick("protocol extension", name))
            for name in registry.names("protocol extension")}
        self._handlers = {message.name: message for extension in self.installed.values()
                          for message in extension.messages}
        #: the role each extension message needs (see access)
        self.roles = {name: message.access for name, message in self._handlers.items()}
        # Observation runs once per request: skip building events when nobody listens.
        self._observers = call_order(self.pm, "dynamo_request_completed")

    # ------------------------------------------------------------------ set-up

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
        if message.access not in ROLES:
            raise ConfigError(f"protocol extension {extension!r}: message type "
                              f"{message.name!r} has access {message.access!r}; it must be "
                              f"one of {', '.join(ROLES)}")
        codec = self.host.codec
        try:
            codec.register(message.name, dict(message.fields))
            codec.register(f"{message.name}_ok", dict(message.reply_fields))
        except ValueError as exc:
            raise ConfigError(f"protocol extension {extension!r}: {exc}") from None

    def message_types(self) -> list[str]:
        """Every message type the installed extensions answer."""
        return list(self._handlers)

    # ------------------------------------------------------------------ messages

    def accept(self, msg: Message, client: Any) -> None:
        """Answer an extension message: its handler runs as a task of its own."""
        if self._running >= MAX_HANDLERS_RUNNING:
            raise Overloaded(f"{MAX_HANDLERS_RUNNING} extension messages are being "
                             f"answered already; {msg.type} refused")
        self._running += 1
        self.host.spawn(f"handler {msg.type}", self._answer(self._handlers[msg.type], msg,
                                                            client))

    async def _answer(self, message: MessageType, msg: Message, client: Any) -> None:
        """Run the handler, check its reply against ``reply_fields``, send it back."""
        try:
            body, error = await self._handle(message, msg)
        finally:
            self._running -= 1
        if client.req_id is None:  # one-way: nobody waits for an answer
            return
        if error is not None:
            self.host.answer_error(client, error)
        else:
            self.host.answer(client, f"{message.name}_ok", body)

    async def _handle(self, message: MessageType, msg: Message
                      ) -> tuple[dict[str, Any], DynamoError | None]:
        limit = self.host.config.request_timeout * 2
        try:
            result = message.handler(self.api, Request(msg.type, msg.body, msg.sender))
            if inspect.isawaitable(result):
                result = await self.edge.run(result, limit)
            body = dict(result or {})
        except tasks.CutOff:
            self.errors += 1
            self.log.error("%s handler did not answer within %gs", msg.type, limit)
            return {}, Timeout(f"{msg.type} handler did not answer within {limit:g}s")
        except DynamoError as exc:  # the handler's answer, or a peer's error it relays
            return {}, exc
        except Exception as exc:
            self.errors += 1
            self.log.exception("%s handler failed", msg.type)
            return {}, DynamoError(f"internal error in the {msg.type} handler: {exc}")
        try:
            self.host.codec.check_body(f"{message.name}_ok", body)
        except WireError as exc:
            self.errors += 1
            self.log.error("%s handler replied a body its reply_fields refuse: %s",
                           msg.type, exc)
            return {}, DynamoError(f"{msg.type} handler replied an invalid body: {exc}")
        return body, None

    # ------------------------------------------------------------------ tasks

    def loops(self) -> dict[str, Callable[[], Coroutine[Any, Any, None]]]:
        """The periodic tasks of every extension, as loops for the core to run."""
        return {f"{name}:{task.name}": self._loop_of(name, task)
                for name, extension in self.installed.items() for task in extension.tasks}

    def _loop_of(self, extension: str, task: PeriodicTask
                 ) -> Callable[[], Coroutine[Any, Any, None]]:
        return lambda: self._every(extension, task)

    async def _every(self, extension: str, task: PeriodicTask) -> None:
        rng = self.host.rng
        while True:
            await tasks.sleep(task.interval * rng.uniform(0.9, 1.1))
            await tasks.admitted()
            try:
                result = task.run(self.api)
                if inspect.isawaitable(result):
                    # A hung run would hold its background slot, starving handoff and
                    # anti-entropy: it is cut off.
                    await self.edge.run(result, self._task_limit(task))
            except tasks.CutOff:
                self.errors += 1
                self.log.error("periodic task %s of %s cut off after %gs", task.name,
                               extension, self._task_limit(task))
            except Exception:
                self.errors += 1
                self.log.exception("periodic task %s of %s failed", task.name, extension)
            finally:
                self.host.background_done()

    def _task_limit(self, task: PeriodicTask) -> float:
        """How long one run of a periodic task may take: its period, at least 2 timeouts."""
        return max(task.interval, self.host.config.request_timeout * 2)

    # ------------------------------------------------------------------ hooks

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call a lifecycle hook on every plugin implementing it, in pluggy's order, each
        failure isolated."""
        for impl in call_order(self.pm, hook_name):
            self._call_impl(impl, hook_name, {"node": self.api, **kwargs})

    def request_completed(self, client: Any, msg_type: str, body: Mapping[str, Any],
                          now: float) -> None:
        """Tell observers a client request was answered with ``msg_type`` and ``body``."""
        if not self._observers or client.op is None:
            return
        ok = msg_type != "error"
        siblings = body.get("siblings") if ok else None
        event = RequestEvent(client.op, client.bucket, client.key, now - client.arrived,
                             "ok" if ok else body["code"], client.forwarded,
                             siblings=None if siblings is None else len(siblings),
                             clock_entries=context_entries(body["context"]) if ok else None)
        for impl in self._observers:
            self._call_impl(impl, "dynamo_request_completed", {"node": self.api,
                                                               "event": event})

    def _call_impl(self, impl: Any, hook_name: str, kwargs: Mapping[str, Any]) -> None:
        try:
            impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
        except Exception:
            self.errors += 1
            self.log.exception("plugin %s failed in %s", impl.plugin_name, hook_name)


def members_view(members: Sequence[Any], state: Callable[[str], str]) -> list[PeerView]:
    """Member records as plugins see them, each with this node's opinion of it."""
    return [PeerView(m.name, m.address, m.status, state(m.name)) for m in members]
