"""The peer: DBOS Transact (SQLite system database) running the same N no-op steps.

DBOS steps run in the calling process (DBOS has no cluster scheduler of its own), so these
figures are "durable steps in-process with a SQLite checkpoint per step", not Ray tasks. The
workflows are async and gather their async steps, as the runtime's apps do.

Resume: DBOS recovers a workflow whose status is PENDING (its process died) by re-enqueueing it
on its internal queue; the workflow function runs again and every step already recorded in
`operation_outputs` returns its stored output without running. We complete a workflow, set its
status row back to PENDING (what a crash leaves behind), and time `_recover_pending_workflows()`
until the result is back. That path includes DBOS's queue dequeue (polling, 1 s by default).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
import uuid
from typing import Any

__all__ = ["DbosBench", "available"]

try:  # the benchmark runs without DBOS; its rows then say "not available"
    from dbos import DBOS, SetWorkflowID

    _IMPORT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - depends on the environment
    DBOS = None  # type: ignore[assignment,misc]
    _IMPORT_ERROR = str(exc)

STEP_RUNS = 0
"""Executions of the step body in this process (a replayed step does not run it)."""


def available() -> str | None:
    """None if DBOS can run, else why not."""
    return None if _IMPORT_ERROR is None else f"dbos not installed ({_IMPORT_ERROR})"


if DBOS is not None:

    @DBOS.step()
    async def noop_step(i: int) -> int:
        global STEP_RUNS
        STEP_RUNS += 1
        return i

    @DBOS.step()
    async def sleep_step(i: int, sleep_ms: int) -> int:
        global STEP_RUNS
        STEP_RUNS += 1
        await asyncio.sleep(sleep_ms / 1000)
        return i

    @DBOS.workflow()
    async def fan_workflow(n: int) -> int:
        outs = await asyncio.gather(*(noop_step(i) for i in range(n)))
        return len(outs)

    @DBOS.workflow()
    async def seq_workflow(n: int) -> int:
        count = 0
        for i in range(n):
            await noop_step(i)
            count += 1
        return count


class DbosBench:
    """One launched DBOS for the whole benchmark run (DBOS is a process-wide singleton)."""

    def __init__(self, work_dir: str) -> None:
        self.db_path = os.path.join(work_dir, "dbos-bench.sqlite")
        self.launched = False

    def launch(self) -> None:
        if self.launched:
            return
        DBOS(config={
            "name": "connector-runtime-bench",
            "system_database_url": f"sqlite:///{self.db_path}",
            # ERROR: at N >= 1,000 gathered steps DBOS warns for every step that waits for one
            # of its 20 pooled SQLite connections; the defaults are kept, the spam is not
            "log_level": "ERROR",
        })
        DBOS.launch()
        self.launched = True

    def close(self) -> None:
        if self.launched:
            DBOS.destroy()
            self.launched = False

    async def run(self, n: int, parallel: bool, workflow_id: str | None = None) -> float:
        """Seconds to run a workflow of n no-op steps, gathered or sequential."""
        self.launch()
        workflow = fan_workflow if parallel else seq_workflow
        started = time.perf_counter()
        with SetWorkflowID(workflow_id or f"wf-{uuid.uuid4().hex}"):
            count = await workflow(n)
        elapsed = time.perf_counter() - started
        if count != n:
            raise AssertionError(f"DBOS workflow returned {count}, expected {n}")
        return elapsed

    async def prepare_recorded(self, n: int) -> str:
        """A completed fan-out workflow of n steps; its id."""
        workflow_id = f"recorded-{n}-{uuid.uuid4().hex[:8]}"
        await self.run(n, parallel=True, workflow_id=workflow_id)
        return workflow_id

    def _mark_pending(self, workflow_id: str) -> None:
        con = sqlite3.connect(self.db_path, timeout=30)
        try:
            cur = con.execute(
                "UPDATE workflow_status SET status = 'PENDING', recovery_attempts = 0, "
                "output = NULL, completed_at = NULL WHERE workflow_uuid = ?", (workflow_id,))
            if cur.rowcount != 1:
                raise RuntimeError(f"DBOS workflow {workflow_id} not found in {self.db_path}")
            # what a crash leaves behind: the step rows, no workflow output
            con.execute("DELETE FROM workflow_output WHERE workflow_uuid = ?", (workflow_id,))
            con.commit()
        finally:
            con.close()

    async def recover(self, workflow_id: str, n: int) -> float:
        """Seconds for DBOS to recover the workflow: replay its n recorded steps, finish."""
        self._mark_pending(workflow_id)
        runs_before = STEP_RUNS
        started = time.perf_counter()
        handles: list[Any] = await asyncio.to_thread(DBOS._recover_pending_workflows)
        mine = [h for h in handles if h.workflow_id == workflow_id]
        if len(mine) != 1:
            raise RuntimeError(f"DBOS did not recover {workflow_id} (got {len(handles)})")
        count = await asyncio.to_thread(mine[0].get_result)
        elapsed = time.perf_counter() - started
        if count != n:
            raise AssertionError(f"recovered DBOS workflow returned {count}, expected {n}")
        if STEP_RUNS != runs_before:
            raise AssertionError(
                f"DBOS ran {STEP_RUNS - runs_before} recorded steps again during recovery"
            )
        return elapsed
