"""The simulated network: frames between nodes and clients, with latency and faults.

It plays the part ZeroMQ plays in production and is reached the same way, through a
:class:`~dynamo_core.transport.Transport` (:class:`SimTransport`). What it models:

* **latency** per frame: the link's own base delay (each directed link draws one, near
  and far peers) plus exponential jitter, so frames on one link can overtake each other
  (reordering; TCP would not, so this is harsher than production);
* **loss** and **duplication** of frames between nodes, each with a probability;
* **partitions**: any set of directed links cut (a split, or one direction only); frames on
  a cut link vanish, as they do when a ZeroMQ connection stalls;
* **crashes**: a frame to a node that is down is refused at once when sent (ZeroMQ's
  ``IMMEDIATE`` on a refused connection) and dropped if it arrives after the node went
  down or restarted (its connections died with it).

Clients' links to nodes lose nothing: a client talks over one TCP connection and sees at
most one answer per request unless a node answers twice, which is what the checker counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..access import OPEN
from ..transport import BurstHandler, QueueHandler, ReplyHandler, RequestHandler, SendFailed
from .world import World

#: Where a client hears its answers: the raw frame.
ClientHandler = Callable[[bytes], None]


@dataclass
class Endpoint:
    name: str
    address: str | None
    on_request: RequestHandler | None = None
    on_reply: ReplyHandler | None = None
    on_client_frame: ClientHandler | None = None
    up: bool = True
    #: raised at each restart: frames in flight to an earlier incarnation are lost
    incarnation: int = 0

    @property
    def is_node(self) -> bool:
        return self.on_request is not None


@dataclass
class Conditions:
    """What the network does to frames right now (the faults change it)."""

    #: the mean base latency of a link; each directed link draws its own, once, between
    #: half and twice this (near and far peers), and every frame adds exponential jitter
    latency: float = 0.0005
    jitter: float = 0.0005
    loss: float = 0.0
    duplicate: float = 0.0
    #: directed links (sender name, receiver name) that carry nothing
    cut: set[tuple[str, str]] = field(default_factory=set)
    #: seconds added to every frame on a directed link (a slow or distant peer)
    extra_delay: dict[tuple[str, str], float] = field(default_factory=dict)


class Network:
    def __init__(self, world: World) -> None:
        self.world = world
        self.rng = world.rng
        self.conditions = Conditions()
        self.endpoints: dict[str, Endpoint] = {}
        self._link_factors: dict[tuple[str, str], float] = {}
        self._by_address: dict[str, str] = {}
        self.sent = 0
        self.delivered = 0
        self.dropped = 0
        self.duplicated = 0

    # ------------------------------------------------------------------ endpoints

    def attach_node(self, name: str, address: str, on_request: RequestHandler,
                    on_reply: ReplyHandler) -> None:
        old = self.endpoints.get(name)
        self.endpoints[name] = Endpoint(name, address, on_request, on_reply,
                                        incarnation=(old.incarnation + 1) if old else 0)
        self._by_address[address] = name

    def attach_client(self, name: str, on_frame: ClientHandler) -> None:
        self.endpoints[name] = Endpoint(name, None, on_client_frame=on_frame)

    def detach(self, name: str) -> None:
        """The endpoint went down: it neither sends nor receives until attached again."""
        endpoint = self.endpoints.get(name)
        if endpoint is not None:
            endpoint.up = False

    def name_at(self, address: str) -> str | None:
        return self._by_address.get(address)

    def is_up(self, address: str) -> bool:
        """A node listens at ``address`` now (a partition is not seen: ZeroMQ would not
        see one either until its heartbeats gave up)."""
        name = self._by_address.get(address)
        endpoint = self.endpoints.get(name) if name is not None else None
        return endpoint is not None and endpoint.up

    # ------------------------------------------------------------------ frames

    def request(self, src: str, address: str, frame: bytes) -> None:
        """``src`` sends a request to the node at ``address``; its reply comes back to it."""
        dst = self._by_address.get(address)
        endpoint = self.endpoints.get(dst) if dst is not None else None
        if endpoint is None or not endpoint.up:
            raise SendFailed(f"no connection to {address} (connection refused)")
        self._carry(src, endpoint, frame, lambda ep: ep.on_request(  # type: ignore[misc]
            src.encode(), [frame], OPEN))

    def reply(self, src: str, identity: bytes, frame: bytes) -> None:
        """Node ``src`` answers the request that came in from ``identity``."""
        dst = self.endpoints.get(identity.decode("utf-8", "replace"))
        if dst is None or not dst.up:
            self.dropped += 1  # the asker is gone: a ROUTER drops the answer
            return
        source = self.endpoints[src].address or src
        if dst.is_node:
            self._carry(src, dst, frame, lambda ep: ep.on_reply(  # type: ignore[misc]
                source, [frame]))
        else:
            self._carry(src, dst, frame, lambda ep: ep.on_client_frame(frame))  # type: ignore[misc]

    def _carry(self, src: str, dst: Endpoint, frame: bytes,
               deliver: Callable[[Endpoint], None]) -> None:
        self.sent += 1
        c = self.conditions
        between_nodes = dst.is_node and self.endpoints[src].is_node
        if (src, dst.name) in c.cut or (between_nodes and c.loss
                                        and self.rng.random() < c.loss):
            self.dropped += 1
            return
        copies = 2 if between_nodes and c.duplicate and self.rng.random() < c.duplicate else 1
        self.duplicated += copies - 1
        base = self._link_latency(src, dst.name) + c.extra_delay.get((src, dst.name), 0.0)
        for _ in range(copies):
            delay = base + self.rng.expovariate(1.0 / c.jitter) if c.jitter else base
            self.world.after(delay, self._arrival(src, dst.name, frame, deliver))

    def _link_latency(self, src: str, dst: str) -> float:
        """The link's own base latency: drawn at its first frame, then fixed."""
        factor = self._link_factors.get((src, dst))
        if factor is None:
            factor = self._link_factors[(src, dst)] = self.rng.uniform(0.5, 2.0)
        return self.conditions.latency * factor

    def _arrival(self, src: str, dst: str, frame: bytes,
                 deliver: Callable[[Endpoint], None]) -> Callable[[], None]:
        """The frame's arrival; lost if either end went down or restarted meanwhile (its
        connection died with it) or the link was cut."""
        sender, receiver = self.endpoints[src], self.endpoints[dst]
        incarnations = (sender.incarnation, receiver.incarnation)

        def arrive() -> None:
            sender, endpoint = self.endpoints[src], self.endpoints[dst]
            if not endpoint.up or not sender.up or \
                    (sender.incarnation, endpoint.incarnation) != incarnations or \
                    (src, dst) in self.conditions.cut:
                self.dropped += 1
                return
            self.delivered += 1
            self.world.record(src, dst)
            self.world.record_bytes(frame)
            deliver(endpoint)
        return arrive


class SimTransport:
    """A node's :class:`~dynamo_core.transport.Transport` onto the simulated network."""

    def __init__(self, network: Network, name: str, address: str) -> None:
        self.network = network
        self.name = name
        self.address = address

    def start(self, on_request: RequestHandler, on_reply: ReplyHandler,
              on_burst_end: BurstHandler | None = None,
              on_queue: QueueHandler | None = None) -> None:
        """Every frame arrives on its own: the node ends its turn itself (SimNode). No
        queue is watched: a simulated node never finds itself behind."""
        self.network.attach_node(self.name, self.address, on_request, on_reply)

    def reply(self, identity: bytes, frame: bytes, to_peer: bool = False) -> None:
        self.network.reply(self.name, identity, frame)

    def flush(self) -> None:
        """Every frame was carried on its own already."""

    def send(self, address: str, frame: bytes) -> None:
        self.network.request(self.name, address, frame)

    def connect(self, address: str) -> None:
        """Nothing to open: every endpoint is one dictionary lookup away."""

    def connected(self, address: str) -> bool:
        return self.network.is_up(address)

    def close(self) -> None:
        self.network.detach(self.name)
