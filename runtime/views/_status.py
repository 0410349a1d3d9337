"""What `status` shows: the run record plus counts read from the journal."""

from __future__ import annotations

from typing import Any

from storage import RunRecord, RunStore, Store

from ..driver import JournalIndex

__all__ = ["describe"]


def describe(store: Store, record: RunRecord) -> dict[str, Any]:
    runs = RunStore(store, record.app, record.run_id)
    load = runs.load_journal()
    index = JournalIndex(load)
    failed_for_good = sum(
        1 for r in load.records if r.get("y") == "f" and not r.get("r") and r["k"] not in
        index.tasks
    )
    progress = record.progress or {}
    info: dict[str, Any] = {
        "run_id": record.run_id,
        "app": record.app,
        "state": record.status.value,
        "entrypoint": record.entrypoint,
        "tasks_done": len(index.tasks),
        "tasks_running": progress.get("running", 0) if not record.status.finished else 0,
        "tasks_failed": failed_for_good,
        "attempts": index.executions,
        "failed_attempts": sum(index.failures.values()),
        "last_error": index.last_error or record.error,
        "journal_segments": load.segments,
    }
    if progress.get("stalled") and not record.status.finished:
        info["stalled_tasks"] = progress["stalled"]
    if load.corrupt:
        info["corrupt_segments"] = load.corrupt
    if record.warnings:
        info["warnings"] = record.warnings
    if record.error:
        info["error"] = record.error
    return info
