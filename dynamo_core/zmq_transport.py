"""ZeroMQ transport: one bound ROUTER per node, one DEALER towards each peer.

Requests arrive on the ROUTER (from clients and peers) and are answered through it; requests
this node makes leave on the DEALER for that peer and their replies come back on the same
DEALER. A DEALER's routing id is this node's name, and the ROUTER allows handover, so a peer
that restarts under the same name takes its identity back at once.

ZeroMQ never says a peer is down: sends queue (up to a high-water mark) and reconnects are
silent. Every wait is therefore bounded by the application's timeouts, ``MAXMSGSIZE`` drops
oversized frames before they are read, and sockets close with a short linger.

Sockets are plain (not ``zmq.asyncio``) and read from the event loop through their file
descriptor: when it signals, every queued message is drained with non-blocking receives.
That costs one callback per burst instead of a future per message, which is most of the
per-hop overhead on a fast loopback. ZeroMQ's descriptor is edge-triggered and any send can
consume the edge, so :class:`SocketReader` re-checks after every send as well.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import zmq

from .transport import ReplyHandler, RequestHandler, SendFailed

log = logging.getLogger(__name__)

FrameHandler = Callable[[list[bytes]], None]

LINGER_MS = 200
SEND_HWM = 10_000
RECV_HWM = 10_000
#: Messages handled per socket before yielding to the event loop (fairness, timers).
BATCH = 256

def configure(sock: zmq.Socket[bytes], max_bytes: int) -> None:
    """The options every socket of this project gets: bounded linger, size and queues."""
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)
    sock.setsockopt(zmq.SNDHWM, SEND_HWM)
    sock.setsockopt(zmq.RCVHWM, RECV_HWM)


class SocketReader:
    """Feeds every message of a plain ZeroMQ socket to a handler, from an asyncio loop."""

    def __init__(self, sock: zmq.Socket[bytes], handle: FrameHandler, what: str) -> None:
        self.sock = sock
        self._handle = handle
        self._what = what
        self._loop = asyncio.get_running_loop()
        self._scheduled = False
        self._fd = int(sock.getsockopt(zmq.FD))
        self._loop.add_reader(self._fd, self.poke)
        self.poke()

    def poke(self) -> None:
        """Make sure queued messages get read soon (call after any send on the socket)."""
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        if self.sock.closed:
            return
        for _ in range(BATCH):
            try:
                if not int(self.sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                    return
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                log.warning("%s: receive failed: %s", self._what, exc)
                return
            try:
                self._handle(frames)
            except Exception:
                log.exception("%s: handler failed on an incoming message", self._what)
        self.poke()  # more may be waiting: continue after other callbacks had a turn

    def close(self) -> None:
        if not self.sock.closed:
            self._loop.remove_reader(self._fd)
            self.sock.close(LINGER_MS)


class ZmqTransport:
    """The production :class:`Transport`: ZeroMQ DEALER/ROUTER, read from an asyncio loop."""

    def __init__(self, name: str, listen: str, max_bytes: int) -> None:
        self.name = name
        self.listen = listen
        self.max_bytes = max_bytes
        self._on_reply: ReplyHandler = lambda address, frames: None
        self._ctx = zmq.Context()
        self._router: SocketReader | None = None
        self._dealers: dict[str, SocketReader] = {}

    def start(self, on_request: RequestHandler, on_reply: ReplyHandler) -> None:
        self._on_reply = on_reply
        router = self._ctx.socket(zmq.ROUTER)
        configure(router, self.max_bytes)
        router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        try:
            router.bind(self.listen)
        except zmq.ZMQError as exc:
            router.close(0)
            raise OSError(f"cannot listen on {self.listen}: {exc}") from None
        self._router = SocketReader(
            router, lambda frames: on_request(frames[0], frames[1:]), f"{self.name} router")

    def reply(self, identity: bytes, frame: bytes) -> None:
        """Answer a request that came in on the ROUTER (dropped if the asker is gone)."""
        assert self._router is not None
        try:
            self._router.sock.send_multipart([identity, frame], flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("%s: reply dropped, send queue towards a client is full", self.name)
        self._router.poke()

    def send(self, address: str, frame: bytes) -> None:
        """Queue a request for the peer at ``address``; raises SendFailed if it cannot.

        Peer sockets queue only on a live connection (``IMMEDIATE``): a send to a peer
        that is gone fails at once instead of waiting in a queue to be delivered, stale,
        when the peer comes back.
        """
        dealer = self._dealers.get(address) or self._connect(address)
        try:
            dealer.sock.send(frame, flags=zmq.NOBLOCK)
        except zmq.Again:
            raise SendFailed(f"no connection to {address}, or its send queue is full "
                             f"({SEND_HWM} messages)") from None
        except zmq.ZMQError as exc:
            raise SendFailed(f"cannot send to {address}: {exc}") from None
        finally:
            dealer.poke()

    def connect(self, address: str) -> None:
        """Open the DEALER towards a peer ahead of the first request to it."""
        if address not in self._dealers:
            self._connect(address)

    def _connect(self, address: str) -> SocketReader:
        sock = self._ctx.socket(zmq.DEALER)
        configure(sock, self.max_bytes)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.ROUTING_ID, self.name.encode("utf-8"))
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        try:
            sock.connect(address)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise SendFailed(f"cannot connect to {address}: {exc}") from None
        reader = SocketReader(sock, lambda frames: self._on_reply(address, frames),
                              f"{self.name} dealer to {address}")
        self._dealers[address] = reader
        return reader

    def close(self) -> None:
        """Close every socket and the context (also for a transport that never started)."""
        for reader in [*self._dealers.values(), self._router]:
            if reader is not None:
                reader.close()
        self._dealers.clear()
        self._router = None
        self._ctx.term()
