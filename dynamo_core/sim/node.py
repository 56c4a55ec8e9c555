"""A simulated node: the production :class:`~dynamo_core.core.NodeCore`, driven by the
simulator's clock and network instead of asyncio and ZeroMQ.

It is the simulator's twin of :class:`dynamo_core.node.Node`, and just as thin: feed the
core what arrives, carry out its effects, arm one timer at ``core.next_timer()``. On top it
has what only a simulation can do to a node: crash it (no clean stop; the engine keeps what
it acknowledged), restart it, and skew its wall clock.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from random import Random
from typing import Any

from ..access import OPEN, Principal
from ..config import Config
from ..core import Await, CoreEffect, NodeCore
from ..transport import carry_out
from .disk import Disks
from .network import Network, SimTransport
from .world import World

log = logging.getLogger(__name__)

#: Wall-clock time at virtual time zero (any plausible epoch time will do).
WALL_EPOCH = 1_800_000_000.0
#: Timer firings at one virtual instant after which a node is declared live-locked.
LIVELOCK_FIRINGS = 10_000


class LiveLock(RuntimeError):
    """A node's timer asked to fire again and again without time moving: a core bug."""


class SimNode:
    def __init__(self, world: World, network: Network, disks: Disks, name: str,
                 address: str, config: Config, seeds: Sequence[str],
                 plugins: Sequence[object] = (), data_dir: str | None = None) -> None:
        self.world = world
        self.network = network
        self.disks = disks
        self.name = name
        self.address = address
        self.config = config
        self.seeds = tuple(seeds)
        self.plugins = tuple(plugins)
        #: where its engines keep their data: a name on the simulated disks, a real
        #: directory for an engine that writes files, nothing for the memory engine
        self.data_dir = data_dir
        #: monotonic clocks start anywhere: mixing two nodes' readings would show
        self.mono_offset = world.rng.uniform(1_000.0, 100_000.0)
        #: this node's wall clock minus true time (the skew fault changes it)
        self.skew = 0.0
        self.core: NodeCore | None = None
        self.transport = SimTransport(network, name, address)
        self.starts = 0
        self.has_left = False
        self._timer_token = 0
        #: the virtual time and the core's monotonic time the timer is armed for
        self._armed: float | None = None
        self._armed_mono = 0.0
        self._firings_at: tuple[float, int] = (-1.0, 0)
        #: paused (SIGSTOP): what arrives waits here, timers wait, until it is resumed
        self.paused = False
        self._stopping = False
        self._backlog: list[tuple[bool, Any, list[bytes]]] = []
        self._timer_due = False

    # ------------------------------------------------------------------ clocks

    def monotonic(self) -> float:
        return self.world.now + self.mono_offset

    def wall(self) -> float:
        return WALL_EPOCH + self.world.now + self.skew

    @property
    def up(self) -> bool:
        return self.core is not None

    # ------------------------------------------------------------------ life and death

    def boot(self, keep_stale_data: bool = False) -> bool:
        """Start the node on what its disk holds (nothing, the first time).

        False if it could not start (a failing disk, say), as a real process would exit.
        """
        assert self.core is None, f"{self.name} is running"
        self.core = NodeCore(
            self.name, self.address, config=self.config,
            rng=Random(self.world.rng.getrandbits(64)), wall_clock=self.wall,
            data_dir=self.data_dir, record=self.disks.record(self.name), seeds=self.seeds,
            keep_stale_data=keep_stale_data, plugins=(self.disks, *self.plugins),
            connected=self.transport.connected)
        self.starts += 1
        # A new process: one that left before starts again (and stays out of the ring,
        # its record says so); it has not left in this life.
        self.has_left = False
        self.transport.start(self._on_request, self._on_reply)
        self.world.note(f"{self.name} starts (actor {self.core.actor})")
        try:
            effects = self.core.start(self.monotonic())
        except Exception as exc:  # noqa: BLE001 - a process that cannot start exits
            self.world.note(f"{self.name} failed to start: {exc}")
            self.transport.close()
            self.core.close(clean=False)
            self.core = None
            return False
        self._carry_out(effects)
        return True

    def crash(self) -> None:
        """Gone at once, as after kill -9: no stop hook, no clean mark, timers dropped."""
        if self.core is None:
            return
        self.transport.close()
        self.paused, self._backlog, self._timer_due = False, [], False
        # Only the engines' handles go (a real process's die with it); nothing is marked,
        # nothing is flushed beyond what each acknowledged write already made durable.
        self.core.close(clean=False)
        self.core = None
        self._disarm()
        self.world.note(f"{self.name} crashes")

    def stop(self) -> None:
        """A clean stop (SIGTERM): hooks told, loops ended, the storage marked clean."""
        if self.core is None:
            return
        core = self.core
        self._stopping = True
        try:
            self._carry_out(core.shutdown(self.monotonic()))
        finally:
            self._stopping = False
        self.transport.close()
        core.close(clean=True)
        self.core = None
        self._disarm()
        self.world.note(f"{self.name} stops")

    # ------------------------------------------------------------------ frames in

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): it keeps its connections and state, answers
        nothing, and its timers stand still; frames sent to it wait in its queues."""
        self.paused = True
        self.world.note(f"{self.name} paused")

    def resume(self) -> None:
        """Thaw it (SIGCONT): it reads what queued up, in order, and its timers catch up."""
        self.paused = False
        self.world.note(f"{self.name} resumed")
        backlog, self._backlog = self._backlog, []
        for is_request, origin, frames in backlog:
            (self._on_request if is_request else self._on_reply)(origin, frames)
        if self._timer_due:
            self._timer_due = False
            self._fire(self._timer_token)

    def _on_request(self, identity: bytes, frames: list[bytes],
                    _principal: Principal = OPEN) -> None:
        """A request; the simulated network has no security: every sender is OPEN."""
        if self.paused:
            self._backlog.append((True, identity, frames))
        elif self.core is not None:
            # Each frame is a turn of its own, its answers released by its commit.
            self.core.begin_turn()
            effects = self.core.receive(identity, frames, self.monotonic())
            self._carry_out(effects + self.core.end_turn(self.monotonic()))

    def _on_reply(self, address: str, frames: list[bytes]) -> None:
        if self.paused:
            self._backlog.append((False, address, frames))
        elif self.core is not None:
            self.core.begin_turn()
            effects = self.core.receive_reply(address, frames, self.monotonic())
            self._carry_out(effects + self.core.end_turn(self.monotonic()))

    def _fire(self, token: int) -> None:
        if token != self._timer_token or self.core is None:
            return
        if self.paused:
            self._timer_due = True
            return
        # Virtual time and the node's monotonic clock differ by an offset: a sum may round
        # a hair below what was armed, and the timer is due all the same.
        due = max(self.monotonic(), self._armed_mono)
        self._armed = None
        at, count = self._firings_at
        count = count + 1 if at == self.world.now else 1
        self._firings_at = (self.world.now, count)
        if count > LIVELOCK_FIRINGS:
            raise LiveLock(f"{self.name}: timer fired {count} times at t={self.world.now} "
                           f"without time moving (next_timer keeps saying now)")
        self._carry_out(self.core.handle_timer(due))

    # ------------------------------------------------------------------ effects out

    def _carry_out(self, effects: list[CoreEffect]) -> None:
        if self.core is None:
            return
        carry_out(self.core, effects, self.transport, self.monotonic, run=self._no_asyncio,
                  left=self._left)
        if self.has_left and self.core is not None and not self._stopping:
            self.stop()  # as a real node process exits once it has left
            return
        self._arm()

    def _no_asyncio(self, effect: Await) -> None:
        """Extensions run on the core's own scheduler here (CoreEdge): no coroutine of
        another world reaches the simulator; should one, it is told so."""
        assert self.core is not None
        self._carry_out(self.core.resume(effect.resume, RuntimeError(
            "the simulator runs no asyncio code"), self.monotonic()))

    def _left(self) -> None:
        self.has_left = True
        self.world.note(f"{self.name} has left the cluster")

    def _arm(self) -> None:
        if self.core is None:
            return
        when = self.core.next_timer()
        if when is None:
            self._disarm()
            return
        at = when - self.mono_offset
        if at == self._armed:
            return
        self._timer_token += 1
        self._armed, self._armed_mono = at, when
        token = self._timer_token
        self.world.at(at, lambda: self._fire(token))

    def _disarm(self) -> None:
        self._timer_token += 1
        self._armed = None
