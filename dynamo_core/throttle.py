"""Log lines about untrusted input, at most one per kind and source per interval.

A node logs what it refuses, but a flood of hostile frames must not become a flood of log
lines (a million frames were 145 MB of log). :class:`LogThrottle` writes the first event of
a kind from a source at once, then at most one line per interval for it, saying how many
events it stands for and the last one's detail:
``refused a malformed frame from X: 12,345 times in the last 10 s; the last: <reason>``.

Sources are often chosen by the sender (a node name in an envelope, a socket identity), so
the table of them is bounded: past ``max_sources``, new sources share one entry. Idle
entries are dropped by :meth:`flush`, which also writes the counts still pending; call it
now and then (the node does from its heartbeat loop).

Pure logic: time comes in as ``now``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

#: Seconds between two lines about the same kind of event from the same source.
DEFAULT_INTERVAL = 10.0
#: Sources tracked apart; beyond them, new sources are counted together.
DEFAULT_MAX_SOURCES = 64
#: The source that stands for every source past the table's bound.
OTHER_SOURCES = "other sources"


@dataclass
class _Tally:
    #: when the last line about this kind and source was written
    logged_at: float
    level: int
    #: events since that line, and the detail of the latest
    count: int = 0
    detail: str = ""


class LogThrottle:
    """Rate-limited log lines, keyed by (kind, source)."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter,  # type: ignore[type-arg]
                 interval: float = DEFAULT_INTERVAL,
                 max_sources: int = DEFAULT_MAX_SOURCES) -> None:
        self.log = logger
        self.interval = interval
        self.max_sources = max_sources
        self._tallies: dict[tuple[str, str], _Tally] = {}
        self._next_flush = 0.0

    def event(self, kind: str, source: str, detail: str, now: float,
              level: int = logging.WARNING) -> None:
        """One event of ``kind`` (e.g. "refused a malformed frame") from ``source``."""
        key = (kind, source)
        tally = self._tallies.get(key)
        if tally is None and len(self._tallies) >= self.max_sources:
            key = (kind, OTHER_SOURCES)
            tally = self._tallies.get(key)
        if tally is None:
            self._tallies[key] = _Tally(now, level)
            self.log.log(level, "%s from %s: %s", kind, key[1], detail)
            return
        tally.count += 1
        tally.detail = detail
        if now - tally.logged_at >= self.interval:
            self._write(key, tally, now)

    def flush(self, now: float) -> None:
        """Write the counts whose interval is over; forget sources quiet for an interval."""
        if now < self._next_flush:
            return
        self._next_flush = now + self.interval
        for key, tally in list(self._tallies.items()):
            if now - tally.logged_at < self.interval:
                continue
            if tally.count:
                self._write(key, tally, now)
            else:
                del self._tallies[key]

    def _write(self, key: tuple[str, str], tally: _Tally, now: float) -> None:
        self.log.log(tally.level, "%s from %s: %s times in the last %.0f s; the last: %s", key[0],
                     key[1], f"{tally.count:,}", now - tally.logged_at, tally.detail)
        tally.logged_at, tally.count = now, 0
