"""ZeroMQ transport: one bound ROUTER per node, one DEALER towards each peer.

Requests arrive on the ROUTER (from clients and peers) and are answered through it; requests
this node makes leave on the DEALER for that peer and their replies come back on the same
DEALER. A DEALER's routing id is this node's name, and the ROUTER allows handover, so a peer
that restarts under the same name takes its identity back at once.

ZeroMQ never says a peer is down: sends queue (up to a high-water mark) and reconnects are
silent. Every wait is therefore bounded by the application's timeouts, ``MAXMSGSIZE`` drops
oversized frames before they are read, and sockets close with a short linger.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

import zmq
import zmq.asyncio

log = logging.getLogger(__name__)

LINGER_MS = 200
SEND_HWM = 10_000
RECV_HWM = 10_000

#: ``on_request(identity, frames)`` and ``on_reply(address, frames)``
RequestHandler = Callable[[bytes, list[bytes]], Awaitable[None] | None]
ReplyHandler = Callable[[str, list[bytes]], Awaitable[None] | None]


class SendFailed(Exception):
    """A frame could not be queued for a peer (queue full, socket closed)."""


def _common_options(sock: zmq.asyncio.Socket, max_bytes: int) -> None:
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)
    sock.setsockopt(zmq.SNDHWM, SEND_HWM)
    sock.setsockopt(zmq.RCVHWM, RECV_HWM)


class ZmqTransport:
    def __init__(self, name: str, listen: str, max_bytes: int,
                 on_request: RequestHandler, on_reply: ReplyHandler) -> None:
        self.name = name
        self.listen = listen
        self.max_bytes = max_bytes
        self._on_request = on_request
        self._on_reply = on_reply
        self._ctx = zmq.asyncio.Context()
        self._router: zmq.asyncio.Socket | None = None
        self._dealers: dict[str, zmq.asyncio.Socket] = {}
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        router = self._ctx.socket(zmq.ROUTER)
        _common_options(router, self.max_bytes)
        router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # Replies to a client that vanished are dropped, not an error that stops us.
        router.setsockopt(zmq.ROUTER_MANDATORY, 0)
        try:
            router.bind(self.listen)
        except zmq.ZMQError as exc:
            router.close(0)
            raise OSError(f"cannot listen on {self.listen}: {exc}") from None
        self._router = router
        self._tasks.append(asyncio.create_task(self._serve_router(), name="router"))

    async def _serve_router(self) -> None:
        assert self._router is not None
        router = self._router
        await self._serve(router, lambda frames: self._on_request(frames[0], frames[1:]))

    async def _serve_dealer(self, address: str, sock: zmq.asyncio.Socket) -> None:
        await self._serve(sock, lambda frames: self._on_reply(address, frames))

    async def _serve(self, sock: zmq.asyncio.Socket,
                     handle: Callable[[list[bytes]], Awaitable[None] | None]) -> None:
        """Receive forever; a handler's failure is logged and never stops the socket."""
        while True:
            frames = await sock.recv_multipart(copy=True)
            try:
                result = handle(frames)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:  # noqa: BLE001 - the node must keep serving
                log.exception("%s: handler failed on an incoming message", self.name)

    def reply(self, identity: bytes, frame: bytes) -> None:
        """Answer a request that came in on the ROUTER (dropped if the asker is gone)."""
        assert self._router is not None
        try:
            self._router.send_multipart([identity, frame], flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("%s: reply dropped, send queue towards a client is full", self.name)

    def send(self, address: str, frame: bytes) -> None:
        """Queue a request for the peer at ``address``; raises SendFailed if it cannot."""
        sock = self._dealers.get(address) or self._connect(address)
        try:
            sock.send(frame, flags=zmq.NOBLOCK)
        except zmq.Again:
            raise SendFailed(f"send queue towards {address} is full "
                             f"({SEND_HWM} messages waiting)") from None
        except zmq.ZMQError as exc:
            raise SendFailed(f"cannot send to {address}: {exc}") from None

    def _connect(self, address: str) -> zmq.asyncio.Socket:
        sock = self._ctx.socket(zmq.DEALER)
        _common_options(sock, self.max_bytes)
        sock.setsockopt(zmq.ROUTING_ID, self.name.encode("utf-8"))
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        try:
            sock.connect(address)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise SendFailed(f"cannot connect to {address}: {exc}") from None
        self._dealers[address] = sock
        self._tasks.append(asyncio.create_task(self._serve_dealer(address, sock),
                                               name=f"dealer {address}"))
        return sock

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sock in [*self._dealers.values(), self._router]:
            if sock is not None:
                sock.close(LINGER_MS)
        self._dealers.clear()
        self._ctx.term()
