"""`status RUN_ID --tasks`: one row per task call, from the journal's history (`_timeline`).

A call's state:

- `completed`: a "t" record;
- `failed`: its last failure was not retried (the retry policy gave up, or the error is
  non-retryable);
- `cancelled`: its last attempt was cancelled by the driver (run() was cancelled or ended);
- `retrying`: it failed and the driver will try again (while the run has a live driver);
- `interrupted`: it failed, was to be retried, and the run has no driver now (`resume`).

Attempts in flight are not in the journal until they end, so a call's first attempt shows up
when it finishes; the run's counters (`status`) count what is running.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._timeline import Span, Timeline

__all__ = ["TaskRow", "task_rows"]


@dataclass(frozen=True)
class TaskRow:
    """One task call."""

    key: str
    task: str
    state: str
    attempts: int
    """Executions: completed and failed attempts (cancelled ones are not executions)."""
    seconds: float | None
    """Total time of its timed attempts (None when none is timed)."""
    last_error: str | None
    """`Type: message` of its last failure."""
    begin: float | None
    """When its first timed attempt began (epoch seconds)."""
    files: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"task": self.task, "key": self.key, "state": self.state,
                "attempts": self.attempts,
                "seconds": round(self.seconds, 6) if self.seconds is not None else None,
                "last_error": self.last_error, "files": self.files}


def _state(spans: list[Span], live: bool) -> str:
    if any(s.outcome == "completed" for s in spans):
        return "completed"
    last = spans[-1]
    if last.outcome == "cancelled":
        return "cancelled"
    if last.failed and not last.retried:
        return "failed"
    return "retrying" if live else "interrupted"


def task_rows(tl: Timeline, live: bool) -> list[TaskRow]:
    """One row per call key, in the order the journal first mentions them. `live`: the run
    has a driver at work (a retried failure is `retrying`, not `interrupted`)."""
    by_key: dict[str, list[Span]] = {}
    for span in tl.spans:
        by_key.setdefault(span.key, []).append(span)
    rows = []
    for key, spans in by_key.items():
        timed = [s.duration for s in spans if s.duration is not None]
        begins = [s.begin for s in spans if s.begin is not None]
        errors = [s for s in spans if s.failed]
        files = next((s.files for s in spans if s.outcome == "completed" and s.files), None)
        rows.append(TaskRow(
            key=key, task=spans[0].task, state=_state(spans, live),
            attempts=sum(1 for s in spans if s.outcome != "cancelled"),
            seconds=sum(timed) if timed else None,
            last_error=errors[-1].error_text if errors else None,
            begin=min(begins) if begins else None, files=files))
    return rows
