"""The node runtime: drives the protocol core with ZeroMQ and asyncio.

Everything that decides lives in :class:`~dynamo_core.core.NodeCore`, which takes frames
and time in and hands effects out. This module is the thin adapter around it (the shape of
aioquic's ``asyncio/protocol.py``): it opens the sockets, feeds the core what arrives with
the loop's monotonic time, carries out the effects, and arms one timer at
``core.next_timer()``. Extension code written for asyncio runs here, at the edge.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from . import tasks
from .access import Principal
from .address import AddressError, advertised, is_loopback, parse
from .config import Config
from .core import Await, CoreEffect, NodeCore
from .security import load_keyring
from .transport import Transport, carry_out
from .zmq_transport import ZmqTransport

log = logging.getLogger(__name__)
T = TypeVar("T")


class FileRecord:
    """``node.cbor`` in the data directory, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> bytes | None:
        return self.path.read_bytes() if self.path.exists() else None

    def save(self, data: bytes) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.path)


def check_resolves(address: str) -> None:
    """Raise AddressError unless the host of ``address`` resolves here, as ZeroMQ will
    resolve it (IPv4 for a name): a node advertising a name nobody can resolve would
    otherwise only see its peers fail to connect, silently."""
    endpoint = parse(address)
    family = socket.AF_INET6 if endpoint.ipv6 else socket.AF_INET
    try:
        socket.getaddrinfo(endpoint.host, endpoint.port, family, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise AddressError(
            f"advertised address {address} does not resolve: host name {endpoint.host!r}: "
            f"{reason}; give an IP address, or a name this node and its peers and clients "
            f"can resolve") from None


class Node:
    """One Dynamo node process: its :class:`NodeCore` behind one ROUTER socket.

    It binds ``listen`` and is known to the cluster by its advertised address: ``advertise``
    if given, else ``[node] advertise`` of the config, else ``listen`` (refused, with
    AddressError, when that is no address a peer could connect to).
    """

    def __init__(self, name: str, listen: str, *, config: Config, data_dir: str | None = None,
                 seeds: tuple[str, ...] = (), rng: random.Random | None = None,
                 keep_stale_data: bool = False, transport: Transport | None = None,
                 advertise: str | None = None) -> None:
        self.name = name
        self.listen = listen
        #: CURVE keys from ``[security]`` (read now: a bad key file stops the start)
        self.keyring = load_keyring(config.security) if config.security else None
        #: the address peers and clients are told
        self.address = advertised(listen, advertise or config.advertise)
        check_resolves(self.address)
        self.config = config
        if data_dir is not None:
            os.makedirs(data_dir, exist_ok=True)
        record = FileRecord(Path(data_dir, "node.cbor")) if data_dir is not None else None
        self.core = NodeCore(name, self.address, config=config,
                             rng=rng or random.Random(int.from_bytes(os.urandom(16), "big")),
                             wall_clock=time.time, data_dir=data_dir, record=record,
                             seeds=seeds, keep_stale_data=keep_stale_data, edge=self,
                             stopwatch=time.monotonic,
                             connected=lambda address: self.transport.connected(address))
        try:
            self.transport = transport or ZmqTransport(name, listen, config.max_message_bytes,
                                                       self.keyring)
        except BaseException:
            self.core.close(clean=False)
            raise
        #: set when this node has left the cluster and should exit
        self.left = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        #: extension coroutines running at the edge (see Await)
        self._external: set[asyncio.Task[Any]] = set()

    # ================================================================== lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.transport.start(self._on_request, self._on_reply, self._on_burst_end,
                             self._on_queue)
        log.info("%s listening on %s%s", self.name, self.listen,
                 "" if self.keyring is None else " with CURVE security")
        if self.keyring is None and not is_loopback(self.listen):
            log.warning("%s: SECURITY IS OFF while listening on %s, beyond loopback: anyone "
                        "who reaches this port may read and write every key and remove "
                        "nodes, and traffic is in clear. Add a [security] section to the "
                        "config (README, Security).", self.name, self.listen)
        self._carry_out(self.core.start(self._now()))

    async def stop(self) -> None:
        self._carry_out(self.core.shutdown(self._now()))  # the stopping hook may still send
        if self._timer is not None:
            self._timer.cancel()
        for task in self._external:
            task.cancel()
        await asyncio.gather(*self._external, return_exceptions=True)
        self.transport.close()
        self.core.close(clean=True)
        log.info("%s stopped", self.name)

    def _now(self) -> float:
        # asyncio's default loop reads time.monotonic(); the core's stopwatch is the same
        # clock, so its readings and the loop's compare.
        return time.monotonic()

    # ================================================================== frames in

    # Frames that arrive together are one turn of the core: their writes share a commit,
    # and their acknowledgements leave once it is made (NodeCore.begin_turn).

    def _on_request(self, identity: bytes, frames: list[bytes], principal: Principal) -> None:
        self.core.begin_turn()
        self._carry_out(self.core.receive(identity, frames, self._now(), principal))

    def _on_reply(self, address: str, frames: list[bytes]) -> None:
        self.core.begin_turn()
        self._carry_out(self.core.receive_reply(address, frames, self._now()))

    def _on_queue(self, waiting: bool) -> None:
        self.core.requests_waiting(waiting, self._now())

    def _on_burst_end(self) -> None:
        if self.core.in_turn:
            self._carry_out(self.core.end_turn(self._now()))

    def _on_timer(self) -> None:
        # asyncio may run a timer up to its clock resolution early: it is due all the same.
        due = max(self._now(), self._timer_at or 0.0)
        self._timer = self._timer_at = None
        self._carry_out(self.core.handle_timer(due))

    # ================================================================== effects out

    def _carry_out(self, effects: list[CoreEffect]) -> None:
        try:
            carry_out(self.core, effects, self.transport, self._now,
                      run=self._start_external, left=self.left.set)
        finally:
            if not self.core.in_turn:  # a turn's frames leave together at its end
                self.transport.flush()
                self._arm()  # whatever went wrong, the node keeps its timer

    def _arm(self) -> None:
        """One timer, at the core's next deadline; re-armed only when that changes."""
        when = self.core.next_timer()
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None
        if when is not None and self._loop is not None:
            self._timer = self._loop.call_at(when, self._on_timer)
            self._timer_at = when

    def _start_external(self, effect: Await) -> None:
        async def run() -> None:
            try:
                async with asyncio.timeout(effect.limit):  # not wait_for: 3.11 cancel bug
                    result: Any = await effect.awaitable
            except TimeoutError:
                result = tasks.CutOff(f"did not finish within {effect.limit:g}s")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the extension's failure, reported
                result = exc
            self._carry_out(self.core.resume(effect.resume, result, self._now()))

        task = asyncio.get_running_loop().create_task(run())
        self._external.add(task)
        task.add_done_callback(self._external.discard)

    # ================================================================== the edge

    def call(self, peer: str, msg_type: str, body: dict[str, Any],
             timeout: float | None) -> Awaitable[dict[str, Any]]:
        """An extension's request to a peer, awaited on asyncio."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def done(result: Any) -> None:
            if future.done():
                return
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        self._carry_out(self.core.call(peer, msg_type, body, timeout, done, self._now()))
        return future

    def send(self, peer: str, msg_type: str, body: dict[str, Any]) -> None:
        self._carry_out(self.core.send_one_way(peer, msg_type, body, self._now()))

    def run(self, awaitable: Awaitable[Any], limit: float) -> Awaitable[Any]:
        return tasks.External(awaitable, limit)


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop's event loop when it is installed, else on asyncio's own.

    uvloop (libuv, in C) is a drop-in asyncio loop: a node spends about a quarter less CPU
    per message on it (a ping: 80 µs of Python instead of 108 on the 2-core reference
    machine), and per-message cost is most of what a request costs.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def run_node(node: Node, stop: asyncio.Event) -> None:
    """Run ``node`` until ``stop`` is set, then shut it down cleanly."""
    await node.start()
    try:
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(node.left.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
    finally:
        await node.stop()
