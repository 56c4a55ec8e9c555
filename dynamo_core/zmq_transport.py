"""ZeroMQ transport: one bound ROUTER per node, one DEALER towards each peer.

Requests arrive on the ROUTER (from clients and peers) and are answered through it; requests
this node makes leave on the DEALER for that peer and their replies come back on the same
DEALER. A DEALER's routing id is left to ZeroMQ (a fresh one per connection), never the
node's name: a ROUTER routes answers by routing id, and with names anyone connecting as
``n2`` could take the answers meant for n2.

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
import time
from collections.abc import Callable

import zmq

from .access import OPEN, Principal
from .address import is_ipv6
from .security import ZAP_ENDPOINT, Keyring, ZapHandler, secure_client, secure_server
from .throttle import LogThrottle
from .transport import BurstHandler, QueueHandler, ReplyHandler, RequestHandler, SendFailed
from .wire import MAX_PARTS

log = logging.getLogger(__name__)

FrameHandler = Callable[[list[bytes]], None]

LINGER_MS = 200
SEND_HWM = 10_000
RECV_HWM = 10_000
#: Messages queued from one asker before ZeroMQ stops reading its connection: a node serves
#: a few hundred a millisecond, and whatever waits here is memory an asker can fill with
#: messages of up to MAX_PARTS frames each, faster than the node serves them.
ROUTER_RECV_HWM = 1_000
#: Requests handled per socket before yielding to the event loop (fairness, timers). Each
#: frame of a message counts: a turn's answers wait for its end (group commit), so a sender
#: of many-frame messages must not stretch a turn (256 messages of 64 frames: half a second).
BATCH = 256
# Plain ints: pyzmq's flags are enum members, and enum arithmetic on every message adds up.
_EVENTS, _POLLIN, _POLLOUT = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.POLLOUT)
_NOBLOCK = int(zmq.NOBLOCK)

def configure(sock: zmq.Socket[bytes], max_bytes: int) -> None:
    """The options every socket of this project gets: bounded linger, size and queues."""
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)
    sock.setsockopt(zmq.SNDHWM, SEND_HWM)
    sock.setsockopt(zmq.RCVHWM, RECV_HWM)


def allow_ipv6(sock: zmq.Socket[bytes], address: str) -> None:
    """Before a bind or connect: ZeroMQ sockets speak IPv4 only unless told otherwise.

    Set only for an IPv6 address, not everywhere: with it, a host name may resolve to its
    IPv6 address first (``localhost`` to ``::1``) while the node listens on IPv4.
    """
    if is_ipv6(address):
        sock.setsockopt(zmq.IPV6, 1)


class SocketReader:
    """Feeds every message of a plain ZeroMQ socket to a handler, from an asyncio loop."""

    def __init__(self, sock: zmq.Socket[bytes], handle: FrameHandler, what: str,
                 burst_end: BurstHandler | None = None,
                 on_queue: QueueHandler | None = None) -> None:
        self.sock = sock
        self._handle = handle
        self._burst_end = burst_end
        self._on_queue = on_queue
        self._what = what
        self._loop = asyncio.get_running_loop()
        self._scheduled = False
        self._fd = int(sock.getsockopt(zmq.FD))
        self._loop.add_reader(self._fd, self.poke)
        self.poke()

    def poke(self) -> None:
        """Make sure queued messages get read soon."""
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._drain)

    def sent(self) -> None:
        """Call after any send on the socket: a send may consume the descriptor's edge, so
        the socket is asked once whether something waits (which re-arms the edge), and a
        read is scheduled only if it does."""
        if not self._scheduled and int(self.sock.getsockopt(_EVENTS)) & _POLLIN:
            self.poke()

    def _drain(self) -> None:
        self._scheduled = False
        if self.sock.closed:
            return
        try:
            self._read_burst()
        finally:  # whatever happened, the burst's turn ends (a no-op if nothing came)
            if self._burst_end is not None:
                self._burst_end()

    def _read_burst(self) -> None:
        """Hand over what the socket holds, up to BATCH requests (a ROUTER's message has
        its asker's identity first), telling ``on_queue`` that some wait, and when none
        is left."""
        budget = BATCH
        while budget > 0:
            try:
                if not int(self.sock.getsockopt(_EVENTS)) & _POLLIN:
                    if self._on_queue is not None:
                        self._on_queue(False)
                    return
                if budget == BATCH and self._on_queue is not None:
                    self._on_queue(True)
                frames = self._receive()
                budget -= max(1, len(frames) - 1)
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

    def _receive(self) -> list[bytes]:
        return self.sock.recv_multipart(_NOBLOCK)

    def close(self) -> None:
        if not self.sock.closed:
            self._loop.remove_reader(self._fd)
            self.sock.close(LINGER_MS)


class AuthenticatedReader(SocketReader):
    """A :class:`SocketReader` for a CURVE server socket: each message is handed over with
    the :class:`Principal` its connection was let in as (ZAP gave the connection its
    public key as User-Id, which ZeroMQ attaches to every message from it)."""

    def __init__(self, sock: zmq.Socket[bytes], handle: Callable[[list[bytes], Principal], None],
                 what: str, keyring: Keyring, burst_end: BurstHandler | None = None,
                 on_queue: QueueHandler | None = None) -> None:
        self._keyring = keyring
        self._principal = OPEN
        self._handle_authenticated = handle
        super().__init__(sock, self._with_principal, what, burst_end, on_queue)

    def _receive(self) -> list[bytes]:
        parts = self.sock.recv_multipart(_NOBLOCK, copy=False)
        try:
            user = parts[0].get("User-Id")
        except zmq.ZMQError:  # no User-Id: ZAP did not let the connection in
            user = None
        principal = self._keyring.principal_of(user if isinstance(user, str) else None)
        if principal is None:  # ZAP lets in known keys only: never happens
            raise zmq.ZMQError(msg="a message from a connection without a known key")
        self._principal = principal
        return [part.bytes for part in parts]

    def _with_principal(self, frames: list[bytes]) -> None:
        self._handle_authenticated(frames, self._principal)


class ZmqTransport:
    """The production :class:`Transport`: ZeroMQ DEALER/ROUTER, read from an asyncio loop."""

    def __init__(self, name: str, listen: str, max_bytes: int,
                 keyring: Keyring | None = None) -> None:
        self.name = name
        self.listen = listen
        self.max_bytes = max_bytes
        #: CURVE keys and who may connect; None: plain sockets, everyone is OPEN
        self.keyring = keyring
        self._zap: SocketReader | None = None
        self._on_reply: ReplyHandler = lambda address, frames: None
        self._burst_end: BurstHandler | None = None
        self._ctx = zmq.Context()
        self._router: SocketReader | None = None
        self._dealers: dict[str, SocketReader] = {}
        #: frames waiting for flush(): requests by peer address, answers by node identity
        self._requests: dict[str, list[bytes]] = {}
        self._answers: dict[bytes, list[bytes]] = {}
        #: an asker that never reads its answers is one line per 10 s, not one per answer
        self._warnings = LogThrottle(log)

    def start(self, on_request: RequestHandler, on_reply: ReplyHandler,
              on_burst_end: BurstHandler | None = None,
              on_queue: QueueHandler | None = None) -> None:
        self._on_reply = on_reply
        self._burst_end = on_burst_end
        router = self._ctx.socket(zmq.ROUTER)
        configure(router, self.max_bytes)
        router.setsockopt(zmq.RCVHWM, ROUTER_RECV_HWM)
        allow_ipv6(router, self.listen)
        if self.keyring is not None:
            self._serve_zap(self.keyring)  # bound before any handshake can ask for it
            secure_server(router, self.keyring)
        try:
            router.bind(self.listen)
        except zmq.ZMQError as exc:
            router.close(0)
            raise OSError(f"cannot listen on {self.listen}: {exc}") from None

        def requests(frames: list[bytes], principal: Principal = OPEN) -> None:
            identity, parts = frames[0], frames[1:]
            if len(parts) > MAX_PARTS:
                on_request(identity, parts, principal)  # refused whole, as any malformed one
                return
            for part in parts:
                on_request(identity, [part], principal)

        what = f"{self.name} router"
        self._router = SocketReader(router, requests, what, on_burst_end, on_queue) \
            if self.keyring is None else \
            AuthenticatedReader(router, requests, what, self.keyring, on_burst_end,
                                on_queue)

    def _serve_zap(self, keyring: Keyring) -> None:
        """Answer the context's authentication requests (ZAP) from the event loop."""
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(ZAP_ENDPOINT)
        handler = ZapHandler(keyring, self.name, asyncio.get_running_loop().time)

        def answer(frames: list[bytes]) -> None:
            reply = handler.handle(frames)
            if reply:
                sock.send_multipart(reply, flags=_NOBLOCK)

        self._zap = SocketReader(sock, answer, f"{self.name} authenticator")

    def reply(self, identity: bytes, frame: bytes, to_peer: bool = False) -> None:
        """Answer a request that came in on the ROUTER (dropped if the asker is gone).

        An answer to a node waits for :meth:`flush`, to leave with the node's other
        answers of the turn; a client's leaves at once, alone (clients read one frame).
        """
        if to_peer:
            self._answers.setdefault(identity, []).append(frame)
            return
        self._send_answers(identity, [frame])

    def _send_answers(self, identity: bytes, frames: list[bytes]) -> None:
        assert self._router is not None
        try:
            self._router.sock.send_multipart([identity, *frames], flags=_NOBLOCK)
        except zmq.Again:
            self._warnings.event(f"{self.name}: dropped answers", f"asker {identity.hex()}",
                                 f"{len(frames)} answers, its send queue is full",
                                 time.monotonic())
        self._router.sent()

    def send(self, address: str, frame: bytes) -> None:
        """Queue a request for the peer at ``address``; raises SendFailed if it cannot.

        Peer sockets queue only on a live connection (``IMMEDIATE``): a send to a peer
        that is gone fails at once instead of waiting in a queue to be delivered, stale,
        when the peer comes back. The frame leaves at :meth:`flush`, with the turn's other
        requests to that peer, in one message.
        """
        dealer = self._dealers.get(address) or self._connect(address)
        if not int(dealer.sock.getsockopt(_EVENTS)) & _POLLOUT:
            raise SendFailed(f"no connection to {address}, or its send queue is full "
                             f"({SEND_HWM} messages)")
        self._requests.setdefault(address, []).append(frame)

    def flush(self) -> None:
        """Send the requests and node answers that wait, one message per peer."""
        requests, self._requests = self._requests, {}
        answers, self._answers = self._answers, {}
        self._warnings.flush(time.monotonic())
        for address, frames in requests.items():
            dealer = self._dealers.get(address)
            if dealer is None:
                continue  # closed meanwhile
            for chunk in _chunks(frames):
                try:
                    dealer.sock.send_multipart(chunk, flags=_NOBLOCK)
                except zmq.ZMQError as exc:  # full since send() looked: they time out
                    self._warnings.event(f"{self.name}: dropped requests", address,
                                         f"{len(chunk)} requests: {exc}", time.monotonic())
            dealer.sent()
        for identity, frames in answers.items():
            for chunk in _chunks(frames):
                self._send_answers(identity, chunk)

    def connect(self, address: str) -> None:
        """Open the DEALER towards a peer ahead of the first request to it."""
        if address not in self._dealers:
            self._connect(address)

    def connected(self, address: str) -> bool:
        """The DEALER towards the peer is open and can send: with ``IMMEDIATE``, POLLOUT
        means a connection to it is up (handshake done) and its queue has room."""
        dealer = self._dealers.get(address)
        return dealer is not None and bool(int(dealer.sock.getsockopt(_EVENTS)) & _POLLOUT)

    def _connect(self, address: str) -> SocketReader:
        sock = self._ctx.socket(zmq.DEALER)
        configure(sock, self.max_bytes)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        allow_ipv6(sock, address)
        if self.keyring is not None:
            secure_client(sock, self.keyring.dialling)
        try:
            sock.connect(address)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise SendFailed(f"cannot connect to {address}: {exc}") from None
        def replies(frames: list[bytes]) -> None:
            if len(frames) > MAX_PARTS:
                self._on_reply(address, frames)  # refused whole
                return
            for part in frames:
                self._on_reply(address, [part])

        reader = SocketReader(sock, replies, f"{self.name} dealer to {address}",
                              self._burst_end)
        self._dealers[address] = reader
        return reader

    def close(self) -> None:
        """Close every socket and the context (also for a transport that never started)."""
        for reader in [*self._dealers.values(), self._router, self._zap]:
            if reader is not None:
                reader.close()
        self._dealers.clear()
        self._router = self._zap = None
        self._ctx.term()


def _chunks(frames: list[bytes]) -> list[list[bytes]]:
    return [frames[i:i + MAX_PARTS] for i in range(0, len(frames), MAX_PARTS)]
