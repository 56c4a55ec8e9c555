"""Python clients: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio).

Both speak the node protocol over a ZeroMQ DEALER per node address and share everything but
the waiting: request bodies, reply parsing and errors come from one place.

Both route (``route=True``, the default; see :mod:`routing`): they learn the ring from a
node they were given and send a put to the key's first home believed up and a get to one
of its homes, saving the hop a node that is no home would forward over. Without a view of
the ring, or when no home can be reached at once, a request goes to one of the addresses
given (rotating through them), whose node coordinates or forwards it. A node that timed out
is skipped for a while. Gets are retried once on another node when the first times out;
puts and deletes are not, because a put may have been applied even though its answer was
lost. A request a node refused as :class:`~dynamo_core.errors.Busy` (overloaded: nothing
was done) is sent again after a random, growing pause (``retry``, see :mod:`retry`) until
the client's timeout, then the refusal is raised; ``retry=False`` raises it at once.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import zmq

from . import errors
from .api import Resolver, Sibling
from .errors import Busy, DynamoError, InvalidRequest, Timeout
from .retry import Backoff, Retries
from .routing import REFRESH_SECONDS, RingView
from .security import client_keys, secure_client
from .versions import context_from_text
from .wire import Codec, Message, check_value
from .zmq_transport import SocketReader, allow_ipv6, configure

DEFAULT_BUCKET = "default"
#: A key file: its path (see :func:`security.client_keys`).
KeyFile = str | os.PathLike[str]
DEFAULT_TIMEOUT = 5.0
#: Seconds a node that timed out is passed over when another one can be asked.
SKIP_SECONDS = 5.0
#: The requests a routing client sends straight to a home of their key.
ROUTED_OPS = frozenset({"get", "put", "delete"})
#: Seconds a new view waits for its connections to the homes to come up: until then a
#: request to a home would find no connection and go to a given node instead.
CONNECT_WAIT = 0.1
#: ZeroMQ heartbeats on the sockets to homes (milliseconds): a home that stops answering
#: them (a partition, a paused process) loses its connection within HEARTBEAT_TIMEOUT,
#: and requests for it go to a given node at once instead of waiting for their timeout.
#: Kept well under the time nodes take to believe a peer down (a request timeout or
#: more), so a client stops routing to a silent home before the cluster routes around it.
HEARTBEAT_IVL = 100
HEARTBEAT_TIMEOUT = 300


def _open_socket(ctx: zmq.Context[zmq.Socket[bytes]], requests: _Requests, address: str,
                 routed: bool) -> zmq.Socket[bytes]:
    """A DEALER to a node: bounded, secured when the client has keys, connected."""
    sock = ctx.socket(zmq.DEALER)
    configure(sock, requests.codec.max_bytes)
    sock.setsockopt(zmq.LINGER, 0)
    # A blocking send waits for a connection (one whose handshake failed has none): bounded.
    sock.setsockopt(zmq.SNDTIMEO, int(requests.timeout * 1000))
    if requests.keys is not None:
        secure_client(sock, requests.keys)
    if routed:
        _route_socket(sock)
    allow_ipv6(sock, address)
    sock.connect(address)
    return sock


def _route_socket(sock: zmq.Socket[bytes]) -> None:
    """A socket straight to a home: it queues only on a live, heartbeating connection."""
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT)


@dataclass(frozen=True)
class GetResult:
    """What a get returns: every live sibling value and one context superseding them all."""

    values: list[Any]
    context: bytes
    siblings: list[Sibling] = field(default_factory=list)

    def resolve(self, resolver: Resolver | str) -> Any:
        """Merge the siblings client-side with a resolver (object or installed name).

        Returns None when the key is absent. Write the result back with ``self.context``.
        """
        if not self.siblings:
            return None
        if isinstance(resolver, str):
            resolver = _installed_resolver(resolver)
        return resolver.resolve(self.siblings)


def _installed_resolver(name: str) -> Resolver:
    from .plugins import Registry, make_plugin_manager
    return Registry(make_plugin_manager()).resolver(name)


# ====================================================================== shared protocol


class _Requests:
    """Request bodies and reply parsing shared by both clients."""

    def __init__(self, nodes: Sequence[str] | str, timeout: float, route: bool,
                 retry: bool | Backoff = True, key: KeyFile | None = None,
                 server_key: KeyFile | None = None) -> None:
        if isinstance(nodes, str):
            nodes = [nodes]
        if not nodes:
            raise InvalidRequest("a client needs at least one node address")
        for address in nodes:
            if not isinstance(address, str) or not address.startswith("tcp://"):
                raise InvalidRequest(f"node address {address!r} is not a tcp:// endpoint")
        if not timeout > 0:
            raise InvalidRequest(f"timeout must be a positive number of seconds, got {timeout}")
        self.nodes = list(nodes)
        self.timeout = float(timeout)
        #: CURVE keys (see security): None talks to nodes without security
        self.keys = client_keys(key, server_key) if key is not None else None
        self.codec = Codec()
        self._ids = itertools.count(1)
        self._turn = itertools.cycle(range(len(self.nodes)))
        self._skip_until: dict[str, float] = {}
        self.routing = route
        #: the ring as a node last described it (None: not known yet)
        self.view: RingView | None = None
        #: when the ring may next be asked for (after a failed attempt)
        self._ring_retry_at = 0.0
        self._rng = random.Random()
        #: requests sent straight to a home, and those sent to a given address instead
        self.routed = 0
        self.unrouted = 0
        #: how requests refused as Busy are retried (None: they are not)
        self.backoff = Backoff() if retry is True else retry or None

    def next_id(self) -> int:
        return next(self._ids)

    def retries(self) -> Retries:
        """The attempts of one request: retried after Busy, all within the timeout."""
        return Retries(self.backoff, time.monotonic() + self.timeout)

    # ------------------------------------------------------------------ routing

    def wants_ring(self) -> bool:
        """Time to ask a node for the ring: none known yet, old, or said to be stale."""
        if not self.routing:
            return False
        now = time.monotonic()
        if now < self._ring_retry_at:
            return False
        return self.view is None or self.view.due(now)

    def ring_asked(self) -> None:
        """A request for the ring is under way: ask no other until it ends."""
        self._ring_retry_at = time.monotonic() + REFRESH_SECONDS

    def ring_answered(self, body: dict[str, Any] | None) -> RingView | None:
        """The view in the ring a node sent (None if the request failed, or the answer
        made no sense: the client then routes as before)."""
        if body is None:
            return None
        try:
            return RingView.from_wire(body, time.monotonic())
        except ValueError:
            self.routing = False  # a node that sends nonsense is not routed by again
            return None

    def use_view(self, view: RingView) -> None:
        self.view = view
        self._ring_retry_at = 0.0

    def destination(self, msg_type: str, body: dict[str, Any],
                    node: str | None) -> tuple[str, bool]:
        """Where to send a request, and whether it is routed (straight to a home).

        A routed request names the view it was routed by, and so does one sent to a given
        address while a view is known: either node says if the view is not its own.
        """
        view = self.view
        if node is None and view is not None and msg_type in ROUTED_OPS:
            body["ring"] = view.digest
            address = view.route(msg_type, body["bucket"], body["key"], self.usable,
                                 self._rng)
            if address is not None:
                self.routed += 1
                return address, True
        self.unrouted += msg_type in ROUTED_OPS
        return self.pick(node), False

    def usable(self, address: str) -> bool:
        return self._skip_until.get(address, 0.0) <= time.monotonic()

    def note(self, body: dict[str, Any]) -> None:
        """A node answered: if it said the view is not its own, fetch it again soon."""
        if body.get("ring_stale") and self.view is not None:
            self.view.stale = True

    def pick(self, node: str | None, avoid: str | None = None) -> str:
        """The node to ask: the one named, else the next in turn that did not time out."""
        if node is not None:
            return node
        now = time.monotonic()
        for _ in range(len(self.nodes)):
            candidate = self.nodes[next(self._turn)]
            if candidate != avoid and self._skip_until.get(candidate, 0.0) <= now:
                return candidate
        return self.nodes[next(self._turn)]

    def timed_out(self, address: str, msg_type: str) -> Timeout:
        """No answer from ``address``: pass it over for a while, and route by a fresh view
        of the ring (the nodes' opinions of who is up) from the next request on. Returns
        the error to raise."""
        self._skip_until[address] = time.monotonic() + SKIP_SECONDS
        if self.view is not None:
            self.view.stale = True
        # A refused CURVE handshake looks exactly like silence from this side.
        hint = "" if self.keys is None else (
            " (if the node runs with security, check that its configuration allows this "
            "client's key and that the cluster key is right: the node logs refused keys)")
        return Timeout(f"{msg_type} to {address} got no answer within {self.timeout:g}s"
                       f"{hint}")

    @staticmethod
    def key_body(bucket: str, key: Any) -> dict[str, Any]:
        if not isinstance(key, str) or not key:
            raise InvalidRequest(f"a key is a non-empty string, got {key!r}")
        return {"bucket": bucket, "key": key}

    def get_body(self, bucket: str, key: str, r: int | None, resolve: bool) -> dict[str, Any]:
        body = self.key_body(bucket, key)
        if r is not None:
            body["r"] = r
        if not resolve:
            body["resolve"] = False
        return body

    def put_body(self, bucket: str, key: str, value: Any, context: Any, w: int | None,
                 delete: bool) -> dict[str, Any]:
        body = self.key_body(bucket, key)
        body["context"] = _context_bytes(context)
        if not delete:
            check_value(value)
            body["value"] = value
        if w is not None:
            body["w"] = w
        return body

    def reply_type(self, msg_type: str) -> str:
        """The reply a request expects; for an extension's message, ``<type>_ok``.

        An extension's reply is not in the built-in schemas: the client accepts its fields
        unchecked (the decoder's limits still apply), since the caller asked for it by name.
        """
        reply = _REPLY_OF.get(msg_type)
        if reply is None:
            reply = f"{msg_type}_ok"
            self.codec.schemas.setdefault(reply, None)
        return reply

    @staticmethod
    def extension_body(msg_type: str, body: Any) -> dict[str, Any]:
        if not isinstance(msg_type, str) or "." not in msg_type:
            raise InvalidRequest(f"an extension's message type is '<extension>.<verb>', "
                                 f"got {msg_type!r}")
        if body is not None and not isinstance(body, dict):
            raise InvalidRequest(f"a message body is a map, got {type(body).__name__}")
        return dict(body or {})

    @staticmethod
    def parse(msg: Message, expected: str) -> dict[str, Any]:
        if msg.type == "error":
            raise errors.from_wire(msg.body)
        if msg.type != expected:
            raise DynamoError(f"node answered {msg.type}, expected {expected}")
        return msg.body

    @staticmethod
    def get_result(body: dict[str, Any]) -> GetResult:
        siblings = [Sibling(s.get("value"), float(s.get("ts", 0.0)),
                            (str(s["dot"][0]), int(s["dot"][1])))
                    for s in body["siblings"]]
        return GetResult([s.value for s in siblings], body["context"], siblings)


def _context_bytes(context: Any) -> bytes | None:
    """Accept what a get returned, its base64 text (from the CLI), or None."""
    if context is None or isinstance(context, bytes):
        return context
    if isinstance(context, GetResult):
        return context.context
    if isinstance(context, str):
        try:
            return context_from_text(context)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
    raise InvalidRequest(f"context must be the bytes a get returned, got "
                         f"{type(context).__name__}")


_REPLY_OF = {"get": "get_ok", "put": "put_ok", "delete": "put_ok", "status": "status_ok",
             "inspect": "inspect_ok", "preflist": "preflist_ok", "ping": "pong",
             "join": "join_ok", "leave": "leave_ok", "remove": "remove_ok"}


# ====================================================================== blocking client


class Client:
    """A blocking client. Not thread-safe: use one per thread (or :class:`AsyncClient`)."""

    def __init__(self, nodes: Sequence[str] | str, timeout: float = DEFAULT_TIMEOUT,
                 bucket: str = DEFAULT_BUCKET, *, route: bool = True,
                 retry: bool | Backoff = True, key: KeyFile | None = None,
                 server_key: KeyFile | None = None) -> None:
        self._req = _Requests(nodes, timeout, route, retry, key, server_key)
        self.default_bucket = bucket
        self._ctx = zmq.Context()
        self._socks: dict[str, zmq.Socket[bytes]] = {}
        #: sockets straight to home nodes: they queue only on a live connection
        self._routed: dict[str, zmq.Socket[bytes]] = {}

    # ------------------------------------------------------------------ data

    def get(self, key: str, r: int | None = None, *, bucket: str | None = None,
            resolve: bool = True, node: str | None = None) -> GetResult:
        body = self._req.get_body(bucket or self.default_bucket, key, r, resolve)
        try:
            reply = self._call("get", body, node)
        except Timeout:
            if node is not None or (len(self._req.nodes) == 1 and self._req.view is None):
                raise
            # Once more through a node the client was given, which knows who is up.
            reply = self._call("get", body, self._req.pick(None))
        return self._req.get_result(reply)

    def put(self, key: str, value: Any, context: Any = None, w: int | None = None, *,
            bucket: str | None = None, node: str | None = None) -> bytes:
        """Write ``value``; returns the new context (it supersedes what ``context`` did)."""
        body = self._req.put_body(bucket or self.default_bucket, key, value, context, w, False)
        return cast(bytes, self._call("put", body, node)["context"])

    def delete(self, key: str, context: Any = None, w: int | None = None, *,
               bucket: str | None = None, node: str | None = None) -> bytes:
        """Delete what ``context`` saw; without one, read the key first (as Riak's client
        does): a tombstone with no context would supersede nothing."""
        if context is None:
            context = self.get(key, bucket=bucket, node=node, resolve=False).context
        body = self._req.put_body(bucket or self.default_bucket, key, None, context, w, True)
        return cast(bytes, self._call("delete", body, node)["context"])

    def bucket(self, name: str) -> Bucket:
        return Bucket(self, name)

    # ------------------------------------------------------------------ operators

    def status(self, node: str | None = None) -> dict[str, Any]:
        return cast(dict[str, Any], self._call("status", {}, node)["status"])

    def inspect(self, key: str, node: str, bucket: str | None = None) -> dict[str, Any]:
        body = self._req.key_body(bucket or self.default_bucket, key)
        return cast(dict[str, Any], self._call("inspect", body, node)["inspect"])

    def preflist(self, key: str, bucket: str | None = None,
                 node: str | None = None) -> dict[str, Any]:
        body = self._req.key_body(bucket or self.default_bucket, key)
        return cast(dict[str, Any], self._call("preflist", body, node)["preflist"])

    def ping(self, node: str | None = None) -> str:
        return str(self._call("ping", {}, node).get("node", ""))

    def ring(self, node: str | None = None) -> RingView:
        """The ring as ``node`` sees it: tokens, owners, members' addresses and states."""
        body = self._call("ring", {}, node)
        try:
            return RingView.from_wire(body, time.monotonic())
        except ValueError as exc:
            raise DynamoError(f"the ring {node or 'a node'} sent makes no sense: {exc}") \
                from None

    def request(self, msg_type: str, body: dict[str, Any] | None = None,
                node: str | None = None) -> dict[str, Any]:
        """Send a protocol extension's message (``"<extension>.<verb>"``); its reply body."""
        return self._call(msg_type, self._req.extension_body(msg_type, body), node)

    def join(self, node: str, seed: str, keep_data: bool = False) -> None:
        """Ask the node at ``node`` to join the cluster that ``seed`` belongs to.

        A node that was removed rejoins empty unless ``keep_data``: what it held from
        before could bring back keys deleted (and reaped) while it was out.
        """
        body: dict[str, Any] = {"seed": seed}
        if keep_data:
            body["keep_data"] = True
        self._call("join", body, node)

    def leave(self, node: str) -> None:
        """Ask the node at ``node`` to hand its ranges off and leave the cluster."""
        self._call("leave", {}, node)

    def remove(self, name: str, node: str | None = None) -> None:
        """Remove the dead node ``name`` from the cluster (asking ``node``)."""
        self._call("remove", {"name": name}, node)

    # ------------------------------------------------------------------ plumbing

    def _socket(self, address: str, routed: bool = False) -> zmq.Socket[bytes]:
        socks = self._routed if routed else self._socks
        sock = socks.get(address)
        if sock is None:
            sock = socks[address] = _open_socket(self._ctx, self._req, address, routed)
        return sock

    def _refresh_ring(self) -> None:
        self._req.ring_asked()
        try:
            body: dict[str, Any] | None = self._call("ring", {}, None)
        except DynamoError:
            body = None
        view = self._req.ring_answered(body)
        if view is not None:
            # Connected before the first request (a socket that queues only on a live
            # connection is writable once it has one); a dead node is not waited for long.
            deadline = time.monotonic() + CONNECT_WAIT
            for address in view.addresses():
                sock = self._socket(address, routed=True)
                sock.poll(max(0, int((deadline - time.monotonic()) * 1000)), zmq.POLLOUT)
            self._req.use_view(view)

    def _call(self, msg_type: str, body: dict[str, Any], node: str | None) -> dict[str, Any]:
        if msg_type in ROUTED_OPS and node is None and self._req.wants_ring():
            self._refresh_ring()  # a request of its own: the time it takes is not this one's
        retries = self._req.retries()
        while True:
            try:
                return self._attempt(msg_type, body, node, retries.deadline)
            except Busy:
                pause = retries.wait(time.monotonic())
                if pause is None:
                    raise
                time.sleep(pause)

    def _attempt(self, msg_type: str, body: dict[str, Any], node: str | None,
                 deadline: float) -> dict[str, Any]:
        expected = self._req.reply_type(msg_type)
        address, routed = self._req.destination(msg_type, body, node)
        req_id = self._req.next_id()
        frame = self._req.codec.encode(msg_type, body, req_id)
        sock = self._socket(address, routed)
        try:
            try:
                sock.send(frame, zmq.NOBLOCK if routed else 0)
            except zmq.Again:  # no live connection to that home: ask a given node instead
                if not routed:
                    raise
                address = self._req.pick(None)
                sock = self._socket(address)
                sock.send(frame)
        except zmq.Again:  # not even queued within the timeout (SNDTIMEO): no connection
            raise self._req.timed_out(address, msg_type) from None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sock.poll(int(remaining * 1000) + 1, zmq.POLLIN):
                raise self._req.timed_out(address, msg_type)
            msg = self._req.codec.decode(sock.recv())
            if msg.id == req_id:  # anything else is a late answer to an earlier request
                reply = self._req.parse(msg, expected)
                self._req.note(reply)
                return reply

    def close(self) -> None:
        for sock in [*self._socks.values(), *self._routed.values()]:
            sock.close(0)
        self._socks.clear()
        self._routed.clear()
        self._ctx.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Bucket:
    """A bucket view of a client: the same calls, the bucket's settings from the cluster config."""

    def __init__(self, client: Client | AsyncClient, name: str) -> None:
        self._client = client
        self.name = name

    def get(self, key: str, r: int | None = None, **kw: Any) -> Any:
        return self._client.get(key, r, bucket=self.name, **kw)

    def put(self, key: str, value: Any, context: Any = None, w: int | None = None,
            **kw: Any) -> Any:
        return self._client.put(key, value, context, w, bucket=self.name, **kw)

    def delete(self, key: str, context: Any = None, w: int | None = None, **kw: Any) -> Any:
        return self._client.delete(key, context, w, bucket=self.name, **kw)


# ====================================================================== asyncio client


class AsyncClient:
    """The asyncio twin of :class:`Client`; many requests may be in flight at once."""

    def __init__(self, nodes: Sequence[str] | str, timeout: float = DEFAULT_TIMEOUT,
                 bucket: str = DEFAULT_BUCKET, *, route: bool = True,
                 retry: bool | Backoff = True, key: KeyFile | None = None,
                 server_key: KeyFile | None = None) -> None:
        self._req = _Requests(nodes, timeout, route, retry, key, server_key)
        self.default_bucket = bucket
        self._ctx = zmq.Context()
        self._readers: dict[str, SocketReader] = {}
        #: sockets straight to home nodes: they queue only on a live connection
        self._routed: dict[str, SocketReader] = {}
        self._waiting: dict[int, asyncio.Future[Message]] = {}
        self._refreshing: asyncio.Task[None] | None = None

    async def get(self, key: str, r: int | None = None, *, bucket: str | None = None,
                  resolve: bool = True, node: str | None = None) -> GetResult:
        body = self._req.get_body(bucket or self.default_bucket, key, r, resolve)
        try:
            reply = await self._call("get", body, node)
        except Timeout:
            if node is not None or (len(self._req.nodes) == 1 and self._req.view is None):
                raise
            # Once more through a node the client was given, which knows who is up.
            reply = await self._call("get", body, self._req.pick(None))
        return self._req.get_result(reply)

    async def put(self, key: str, value: Any, context: Any = None, w: int | None = None, *,
                  bucket: str | None = None, node: str | None = None) -> bytes:
        body = self._req.put_body(bucket or self.default_bucket, key, value, context, w, False)
        return cast(bytes, (await self._call("put", body, node))["context"])

    async def delete(self, key: str, context: Any = None, w: int | None = None, *,
                     bucket: str | None = None, node: str | None = None) -> bytes:
        """Delete what ``context`` saw; without one, read the key first (see Client)."""
        if context is None:
            context = (await self.get(key, bucket=bucket, node=node, resolve=False)).context
        body = self._req.put_body(bucket or self.default_bucket, key, None, context, w, True)
        return cast(bytes, (await self._call("delete", body, node))["context"])

    def bucket(self, name: str) -> Bucket:
        return Bucket(self, name)

    async def status(self, node: str | None = None) -> dict[str, Any]:
        return cast(dict[str, Any], (await self._call("status", {}, node))["status"])

    async def ping(self, node: str | None = None) -> str:
        return str((await self._call("ping", {}, node)).get("node", ""))

    async def request(self, msg_type: str, body: dict[str, Any] | None = None,
                      node: str | None = None) -> dict[str, Any]:
        """Send a protocol extension's message (``"<extension>.<verb>"``); its reply body."""
        return await self._call(msg_type, self._req.extension_body(msg_type, body), node)

    def _reader(self, address: str, routed: bool = False) -> SocketReader:
        readers = self._routed if routed else self._readers
        reader = readers.get(address)
        if reader is None:
            sock = _open_socket(self._ctx, self._req, address, routed)
            reader = SocketReader(sock, self._on_frames, f"client to {address}")
            readers[address] = reader
        return reader

    async def _refresh_ring(self) -> None:
        """Ask a node for the ring, in the background: requests meanwhile go as before.

        The view is taken into use once the connections to its nodes are up (a socket
        that queues only on a live connection is writable once it has one), or after
        CONNECT_WAIT for a node that does not answer.
        """
        try:
            body: dict[str, Any] | None = await self._call("ring", {}, None)
        except DynamoError:
            body = None
        view = self._req.ring_answered(body)
        if view is not None:
            socks = [self._reader(address, routed=True).sock for address in view.addresses()]
            deadline = time.monotonic() + CONNECT_WAIT
            while time.monotonic() < deadline and not all(
                    int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLOUT for sock in socks):
                await asyncio.sleep(0.002)
            self._req.use_view(view)

    def _on_frames(self, frames: list[bytes]) -> None:
        try:
            msg = self._req.codec.decode(frames[-1])
        except DynamoError:
            return
        waiter = self._waiting.pop(msg.id, None) if msg.id is not None else None
        if waiter is not None and not waiter.done():
            waiter.set_result(msg)

    async def _call(self, msg_type: str, body: dict[str, Any],
                    node: str | None) -> dict[str, Any]:
        retries = self._req.retries()
        while True:
            try:
                return await self._attempt(msg_type, body, node, retries.deadline)
            except Busy:
                pause = retries.wait(time.monotonic())
                if pause is None:
                    raise
                await asyncio.sleep(pause)

    async def _attempt(self, msg_type: str, body: dict[str, Any], node: str | None,
                       deadline: float) -> dict[str, Any]:
        if msg_type in ROUTED_OPS and node is None and self._req.wants_ring():
            self._req.ring_asked()
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh_ring())
        expected = self._req.reply_type(msg_type)
        address, routed = self._req.destination(msg_type, body, node)
        req_id = self._req.next_id()
        frame = self._req.codec.encode(msg_type, body, req_id)
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[req_id] = waiter
        try:
            if routed and not self._sent(self._reader(address, routed=True), frame):
                address, routed = self._req.pick(None), False  # no live connection there
            if not routed and not self._sent(self._reader(address), frame):
                raise Busy(f"send queue towards {address} is full")
            # not wait_for: it can swallow a cancel
            async with asyncio.timeout(deadline - time.monotonic()):
                msg = await waiter
        except TimeoutError:
            raise self._req.timed_out(address, msg_type) from None
        finally:
            self._waiting.pop(req_id, None)
        reply = self._req.parse(msg, expected)
        self._req.note(reply)
        return reply

    @staticmethod
    def _sent(reader: SocketReader, frame: bytes) -> bool:
        try:
            reader.sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            return False
        finally:
            reader.sent()
        return True

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
            await asyncio.gather(self._refreshing, return_exceptions=True)
        for reader in [*self._readers.values(), *self._routed.values()]:
            reader.close()
        self._readers.clear()
        self._routed.clear()
        self._ctx.term()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
