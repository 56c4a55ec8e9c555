"""Progress of a long operation, shown the way its reader can take it.

On a terminal, one line redrawn in place: ``label [#########-------] 120/300  note``. In a
log or a pipe (not a terminal), no escape codes: a plain line when the operation starts, at
most one every ``plain_every`` seconds while it goes on, and one when it ends, so a CI log
or a ``systemd`` journal shows the progress without filling up.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO

BAR_WIDTH = 24


class ProgressLine:
    """One operation's progress, on ``stream`` (stderr by default)."""

    def __init__(self, label: str, stream: IO[str] | None = None, plain_every: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.plain_every = plain_every
        self._clock = clock
        self._began = clock()
        self._shown_at: float | None = None

    def update(self, done: int, total: int, note: str = "") -> None:
        """``done`` of ``total`` (``total`` 0: nothing to measure yet)."""
        now = self._clock()
        done = max(0, min(done, total))
        elapsed = now - self._began
        if self.tty:
            filled = BAR_WIDTH * done // total if total else 0
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            self.stream.write(f"\r\x1b[K{self.label} [{bar}] {done}/{total}  {note}  "
                              f"{elapsed:.0f}s")
        elif self._shown_at is None or now - self._shown_at >= self.plain_every:
            self.stream.write(f"{self.label}: {done}/{total} {note} ({elapsed:.0f}s)\n")
        else:
            return
        self._shown_at = now
        self.stream.flush()

    def finish(self, message: str) -> None:
        """The operation ended: the last line says how."""
        elapsed = self._clock() - self._began
        clear = "\r\x1b[K" if self.tty else ""
        self.stream.write(f"{clear}{self.label}: {message} ({elapsed:.0f}s)\n")
        self.stream.flush()
