"""Attempts as the journal records them: outcome and, when recorded, duration.

A completed attempt is a "t" record (outcome `completed`), a failed one an "f" record whose
`e.kind` is the outcome (`error`, `timeout`, `lost`, `heartbeat`). Records may carry
`"ts": {"d": dispatched_at, "s": started_at, "e": ended_at}` (epoch seconds; start and end from
the worker's clock, so `e - s` is free of clock skew between driver and worker); records
without it have no duration and are counted but not timed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["Attempt", "attempts"]


@dataclass(frozen=True)
class Attempt:
    """One attempt of a task call, from its journal record."""

    task: str
    """The task's name."""
    outcome: str
    """`completed`, or the failure kind: `error`, `timeout`, `lost`, `heartbeat`."""
    duration: float | None
    """Seconds from start to end on the worker, when the record carries "ts"."""
    queued: float | None
    """Seconds from dispatch (driver clock) to start (worker clock), when recorded."""


def _span(ts: Any, start: str, end: str) -> float | None:
    if not isinstance(ts, dict):
        return None
    a, b = ts.get(start), ts.get(end)
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or b < a:
        return None
    return float(b - a)


def attempts(records: Iterable[dict[str, Any]]) -> list[Attempt]:
    """Every attempt ("t" and "f" records) in journal `records`, in journal order."""
    out = []
    for record in records:
        kind = record.get("y")
        if kind == "t":
            outcome = "completed"
        elif kind == "f":
            error = record.get("e")
            outcome = str(error.get("kind") or "error") if isinstance(error, dict) else "error"
        else:
            continue
        ts = record.get("ts")
        out.append(Attempt(str(record.get("n", "?")), outcome, _span(ts, "s", "e"),
                           _span(ts, "d", "s")))
    return out
