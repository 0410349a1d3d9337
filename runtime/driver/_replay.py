"""Replaying a recorded run against the current code, without executing any task.

Like a workflow replayer: run() executes with the journal's outputs; the first call that has no
recorded result stops the replay (it would have dispatched a task), and recorded calls that
run() never asked for are reported. Used by `application_sdk.testing.replay`.
"""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass, field
from typing import Any

from application_sdk import _context
from application_sdk.app import App, TaskSpec
from application_sdk.contracts import Input, Output
from storage import RunStore, Store, find_runs, open_store

from .._appengine import RunEngine, app_context
from .._runcontext import RunContext
from . import _guards as guards
from ._journal import JournalIndex
from ._orchestrator import Orchestrator
from ._step import decode_output

__all__ = ["ReplayReport", "replay_run"]


@dataclass
class ReplayReport:
    """What replaying a journal against the current code found."""

    replayed: int = 0
    """Calls answered from the journal."""
    first_unrecorded: str | None = None
    """The first call with no recorded result (replay stops there), if any."""
    not_requested: list[str] = field(default_factory=list)
    """Recorded calls run() never asked for: a divergence."""
    error: str | None = None
    """An error run() raised during the replay (other than reaching an unrecorded call)."""
    output: dict[str, Any] | None = None
    continued_with: dict[str, Any] | None = None
    """The input run() gave continue_with() (the run continued), if it did."""
    corrupt: list[str] = field(default_factory=list)
    """Journal segments that failed their checksum (ignored, as the driver ignores them). What
    they held was taken again by the driver, so recorded calls made from the lost records are
    expected in `not_requested` and are no divergence."""

    @property
    def divergent(self) -> bool:
        return (bool(self.not_requested) and not self.corrupt) or self.error is not None


class _Unrecorded(Exception):
    pass


class _ReplaySteps:
    def __init__(self, index: JournalIndex, report: ReplayReport) -> None:
        self.index = index
        self.report = report
        self.failures: list[Any] = []

    def recorded(self, spec: TaskSpec, key: str) -> Output | None:
        record = self.index.tasks.get(key)
        if record is None:
            return None
        self.report.replayed += 1
        return decode_output(spec, record["o"], replay=True)

    async def invoke(self, spec: TaskSpec, key: str, inp: Input, payload: bytes) -> Output:
        recorded = self.recorded(spec, key)
        if recorded is None:
            self.report.first_unrecorded = f"{spec.name} ({key})"
            raise _Unrecorded(key)
        return recorded


class _NullCommitter:
    has_urgent = False

    def append(self, record: dict[str, Any], urgent: bool = False) -> None:
        pass


async def replay_run_async(app_cls: type[App], run_id: str,
                           store: str | Store | None = None) -> ReplayReport:
    st = store if isinstance(store, Store) else open_store(store)
    found = [r for r in find_runs(st, run_id) if r.app == app_cls.name]
    if not found:
        raise LookupError(f"no run {run_id!r} of {app_cls.name} in store {st.url}")
    runs: RunStore = found[0]
    record = runs.read_run()
    assert record is not None
    ep = app_cls.entrypoint_spec(record.entrypoint)
    load = runs.load_journal()
    index = JournalIndex(load)
    report = ReplayReport(corrupt=list(load.corrupt))
    orch = Orchestrator(app_cls, _ReplaySteps(index, report), index,
                        _NullCommitter())  # type: ignore[arg-type]
    ctx = contextvars.copy_context()
    ctx.run(_context.orchestrator.set, orch)
    ctx.run(_context.app_context.set, _replay_context(app_cls, runs, record))
    guards.activate(ctx, app_cls)
    app = app_cls()
    inp = ep.input_type.model_validate(record.input)
    task = asyncio.get_running_loop().create_task(getattr(app, ep.method)(inp), context=ctx)
    try:
        out = await task
        report.output = out.model_dump(mode="json") if isinstance(out, Output) else None
    except _Unrecorded:
        return report
    except _context.ContinueAsNew as cont:
        given = cont.input
        report.continued_with = given.model_dump(mode="json") if isinstance(given, Input) \
            else dict(given) if isinstance(given, dict) else None
    except Exception as exc:
        if report.first_unrecorded is None:
            report.error = f"{type(exc).__name__}: {exc}"
            return report
    finally:
        guards.deactivate()
    recorded = {k: r["n"] for k, r in index.tasks.items() if not k.startswith("on_complete/")}
    report.not_requested = sorted(f"{n} ({k})" for k, n in recorded.items()
                                  if k not in orch.requested)
    return report


def _replay_context(app_cls: type[App], runs: RunStore, record: Any) -> Any:
    """self.context during a replay: the run's ids, a logger that stays quiet (everything
    replayed was logged when it ran), no state or secrets (run() may use neither)."""
    run = RunContext(runs.run_id, runs.app, runs.store.url, runs.store.options or None,
                     {"workflow_id": record.workflow_id, "correlation_id": record.correlation_id,
                      "started_at": record.created_at, "app_version": str(app_cls.version)})
    return app_context(app_cls, run, RunEngine(run, "run", replaying=lambda: True,
                                               cancelled=lambda: False))


def replay_run(app_cls: type[App], run_id: str, store: str | Store | None = None) -> ReplayReport:
    return asyncio.run(replay_run_async(app_cls, run_id, store))
