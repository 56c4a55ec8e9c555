"""How a node's frames reach the network: the :class:`Transport` interface.

The node core (:mod:`core`) never sees a socket: it hands its driver effects, and
:func:`carry_out` is how every driver (the asyncio node, the simulator) puts them into a
:class:`Transport`. Two implement it: :class:`~dynamo_core.zmq_transport.ZmqTransport`, the
only one a real node uses, and the simulator's in-process network
(:class:`~dynamo_core.sim.network.SimTransport`). Nothing here imports ZeroMQ.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from typing import Protocol

from .access import Principal
from .core import Answer, Await, Connect, CoreEffect, Left, NodeCore, Transmit

#: A request arrived: ``(identity to answer through, frames, who sent it)``.
RequestHandler = Callable[[bytes, list[bytes], Principal], None]
#: A reply arrived from the peer at ``address``: ``(address, frames)``.
ReplyHandler = Callable[[str, list[bytes]], None]
#: The frames that arrived together (one socket drained) have all been handed over.
BurstHandler = Callable[[], None]
#: Whether requests wait in the listening socket's queue, each time the transport looks:
#: True when it starts reading, False when it finds the queue empty.
QueueHandler = Callable[[bool], None]


class SendFailed(Exception):
    """A frame could not be queued for a peer (queue full, socket closed)."""


class Transport(Protocol):
    """A node's two kinds of traffic: requests in (answered through the identity they came
    with) and requests out to peers (their replies come back to ``on_reply``)."""

    def start(self, on_request: RequestHandler, on_reply: ReplyHandler,
              on_burst_end: BurstHandler | None = None,
              on_queue: QueueHandler | None = None) -> None:
        """Listen; from now on arriving frames go to the handlers. Raises OSError if the
        address cannot be listened on.

        ``on_burst_end`` is called after each burst of frames handed over together (what
        one socket held when it was drained): a node commits the writes of a burst as one
        and only then sends what acknowledges them (group commit). ``on_queue`` hears
        whether requests wait to be read: a queue that stays non-empty tells a node it is
        behind (:mod:`~dynamo_core.overload`).
        """
        ...

    def reply(self, identity: bytes, frame: bytes, to_peer: bool = False) -> None:
        """Answer a request (dropped if the asker is gone). Answers ``to_peer`` (a node)
        may wait for :meth:`flush` and leave together."""
        ...

    def send(self, address: str, frame: bytes) -> None:
        """Queue a request for the peer at ``address``; raises SendFailed if it cannot.
        It may wait for :meth:`flush` and leave with the others queued for that peer."""
        ...

    def flush(self) -> None:
        """Send what waits: the driver calls it once the frames of a turn are handed over,
        so the requests to one peer (and the answers to one node) of a turn share one
        message. A transport that sends at once has nothing to do."""
        ...

    def connect(self, address: str) -> None:
        """Open the way to a peer ahead of the first request to it."""
        ...

    def connected(self, address: str) -> bool:
        """Whether a request to the peer at ``address`` can be queued now (the way to it
        is open and live): a node is not ready while the way to a live peer is not."""
        ...

    def close(self) -> None:
        """Stop listening and release everything (also if never started)."""
        ...


def carry_out(core: NodeCore, effects: list[CoreEffect], transport: Transport,
              now: Callable[[], float], *, run: Callable[[Await], None],
              left: Callable[[], None]) -> None:
    """Carry out what the core handed out: frames onto the transport (one that cannot be
    queued goes back to the core, and what it answers is carried out in turn), extension
    coroutines to the driver's runner (``run``), and the news that the node left."""
    queue = deque(effects)
    while queue:
        effect = queue.popleft()
        if isinstance(effect, Transmit):
            try:
                transport.send(effect.address, effect.frame)
            except SendFailed as exc:
                queue.extend(core.send_failed(effect, str(exc), now()))
        elif isinstance(effect, Answer):
            transport.reply(effect.identity, effect.frame, effect.to_peer)
        elif isinstance(effect, Connect):
            # Cannot connect: the first frame to it will say so, and the core hears of it then.
            with contextlib.suppress(SendFailed):
                transport.connect(effect.address)
        elif isinstance(effect, Await):
            run(effect)
        elif isinstance(effect, Left):
            left()
        else:
            raise TypeError(f"unknown effect {effect!r}")
