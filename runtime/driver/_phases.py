"""A driver session's phases, journaled as "p" records: what the driver spent its time on.

  {"y": "p", "ep": lease epoch, "n": phase, "b": begin, "e": end}   epoch seconds, driver clock

The first record of a session ("claim") also names the driver: "h" host, "pid" its pid. A
session's phases follow each other without gaps, each beginning where the last ended:

  claim        take the lease, read the run record
  load         read the journal
  seal         seal the journal, write the record RUNNING (both conditional)
  setup        the heartbeat monitor, the executor, a pending cancellation
  run          run(): its begin is journaled when run() starts ("e" absent), so a driver
               killed during run() shows it begun and never ended; then again with its end
  replay       nested at the start of `run` on a resume: until the first dispatch
  on_complete  make completions durable, then on_complete(), close the committer
  finish       the final run record

Records ride along with the journal's own segments (no write of their own), except `finish`,
which happens after the last one: it rides in the compacted segment the session writes after
the final record, or, for a journal too short to compact, in one small segment of its own. The
compaction itself is the one step not timed (nothing is written after it). A session that
finds the run COMPLETED, or loses its lease, journals no phases.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

__all__ = ["SessionPhases"]


class SessionPhases:
    """The phases of one driver session, gathered until the journal takes them."""

    def __init__(self, epoch: int, began: float) -> None:
        self.epoch = epoch
        self._last = began
        self._pending: list[dict[str, Any]] = []

    def _record(self, name: str, begin: float, end: float | None) -> dict[str, Any]:
        record: dict[str, Any] = {"y": "p", "ep": self.epoch, "n": name, "b": begin}
        if end is not None:
            record["e"] = end
        self._pending.append(record)
        return record

    def mark(self, name: str) -> float:
        """Phase `name` ended now, having begun where the last one ended; returns now."""
        now = time.time()
        record = self._record(name, self._last, now)
        if name == "claim":
            record["h"], record["pid"] = socket.gethostname(), os.getpid()
        self._last = now
        return now

    def begin(self, name: str) -> float:
        """Phase `name` begins now (journaled open, so a driver that dies in it shows it)."""
        now = time.time()
        self._record(name, now, None)
        self._last = now
        return now

    def nested(self, name: str, begin: float) -> None:
        """A phase inside the current one, from `begin` to now (the sequence does not move)."""
        self._record(name, begin, time.time())

    def take(self) -> list[dict[str, Any]]:
        """The records not journaled yet (and forget them)."""
        pending, self._pending = self._pending, []
        return pending
