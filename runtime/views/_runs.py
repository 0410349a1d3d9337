"""Reading runs for the service (and any other reader): one run, a run list, the same-run rule.

Everything here reads the store only, so every service replica (and the CLI) answers alike.
"""

from __future__ import annotations

import time
from typing import Any

from application_sdk.app import EntrypointSpec
from application_sdk.contracts import Input
from storage import Lease, RunRecord, RunStore, Store

from ..driver import canonical_json, digest

__all__ = ["driver_alive", "input_digest", "read_run", "same_run_conflict", "summary"]


def read_run(store: Store, app: str, run_id: str) -> RunRecord | None:
    """The run record of `app`'s run `run_id`, or None (raises StoreError on a bad id)."""
    return RunStore(store, app, run_id).read_run()


def input_digest(inp: Input) -> str:
    """The digest the driver records for a run's input (same run id + same digest = same run)."""
    return digest(canonical_json(inp))


def same_run_conflict(record: RunRecord | None, ep: EntrypointSpec, inp: Input) -> str | None:
    """Why starting `ep` with `inp` under `record`'s run id would be refused, or None.

    The driver's rule (runtime.driver `_check_same_run`): a run id names one run, so a different
    entry point or input for an existing run id is a conflict."""
    if record is None:
        return None
    if record.entrypoint != ep.name:
        what = f"entry point {record.entrypoint!r} (not {ep.name!r})"
    elif record.input_digest != input_digest(inp):
        what = "a different input"
    else:
        return None
    return (f"run {record.run_id} exists with {what}: a run id names one run; choose a new "
            "run id to start another")


def driver_alive(store: Store, record: RunRecord) -> bool:
    """True while a live driver holds the run's lease (a dead local pid counts as gone)."""
    info = Lease(RunStore(store, record.app, record.run_id)).read()
    return info is not None and info.live(time.time())


def summary(record: RunRecord) -> dict[str, Any]:
    """One line of a run list (`list --json`'s fields and the run's timings)."""
    return {
        "run_id": record.run_id,
        "workflow_id": record.run_id,
        "app": record.app,
        "status": record.status.value,
        "entrypoint": record.entrypoint,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "finished_at": record.finished_at,
        "tasks_done": record.progress.get("done", 0),
    }
