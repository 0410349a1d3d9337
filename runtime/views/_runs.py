"""Reading runs for the service (and any other reader): one run, a run list, the same-run rule.

Everything here reads the store only, so every service replica (and the CLI) answers alike.
"""

from __future__ import annotations

import time
from typing import Any

from application_sdk.app import EntrypointSpec
from application_sdk.contracts import Input
from storage import Lease, RunRecord, RunStore, Store

from .._errors import RunConflictError
from ..driver._keys import check_same_run, input_digest

__all__ = ["driver_alive", "input_digest", "read_run", "same_run_conflict", "summary"]


def read_run(store: Store, app: str, run_id: str) -> RunRecord | None:
    """The run record of `app`'s run `run_id`, or None (raises StoreError on a bad id)."""
    return RunStore(store, app, run_id).read_run()


def same_run_conflict(record: RunRecord | None, ep: EntrypointSpec, inp: Input) -> str | None:
    """Why starting `ep` with `inp` under `record`'s run id would be refused, or None: the
    driver's own rule (`runtime.driver.check_same_run`), as a message."""
    try:
        check_same_run(record, ep, inp)
    except RunConflictError as exc:
        return str(exc)
    return None


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
