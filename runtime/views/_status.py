"""What `status` shows: the run record plus counts read from the journal.

A run whose record says RUNNING but whose lease is free (expired, or held by a dead process on
this host) has no driver: its state is shown as INTERRUPTED, with `driver: gone`, and no tasks
running, instead of the last progress counts its driver wrote; `resume` continues it.
"""

from __future__ import annotations

import time
from typing import Any

from storage import Lease, RunRecord, RunStore, Store

from ..driver._journal import JournalIndex
from ._chain import describe_chain

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
    driver = _driver_state(runs, record)
    live = driver == "running"
    info: dict[str, Any] = {
        "run_id": record.run_id,
        "app": record.app,
        "state": record.status.value if record.status.finished or live else "INTERRUPTED",
        "entrypoint": record.entrypoint,
        "driver": driver,
        "tasks_done": len(index.tasks),
        "tasks_running": progress.get("running", 0) if live else 0,
        "tasks_failed": failed_for_good,
        "attempts": index.executions,
        "failed_attempts": sum(index.failures.values()),
        "last_error": (record.error if record.status.finished and record.error
                       else index.last_error or record.error),
        "journal_segments": load.segments,
    }
    if progress.get("stalled") and live:
        info["stalled_tasks"] = progress["stalled"]
    if load.corrupt:
        info["corrupt_segments"] = load.corrupt
    if record.warnings:
        info["warnings"] = record.warnings
    if record.error:
        info["error"] = record.error
    if record.workflow_id and record.workflow_id != record.run_id:
        info["workflow_id"] = record.workflow_id
    if record.correlation_id and record.correlation_id != record.run_id:
        info["correlation_id"] = record.correlation_id
    chain = describe_chain(store, record)
    if chain is not None:
        info["chain"] = chain
    return info


def _driver_state(runs: RunStore, record: RunRecord) -> str:
    """"running" (a live lease), "gone" (RUNNING without one) or "finished"."""
    if record.status.finished:
        return "finished"
    lease = Lease(runs).read()
    return "running" if lease is not None and lease.live(time.time()) else "gone"
