"""Helpers for testing apps: run one task in-process, replay a recorded run.

    from application_sdk.testing import run_task, replay

    result = run_task(MyConnector, "fetch_page", PageInput(...), heartbeat_details={"page": 7})
    assert result.output.rows == 100 and result.heartbeats[-1] == {"page": 8}

    report = replay(MyConnector, "nightly-2026-11-28", store="s3://bucket/prefix")
    assert not report.divergent
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from . import _context
from .app import App
from .contracts import Input, Output

__all__ = ["TaskResult", "replay", "run_task", "run_task_async"]


@dataclass
class TaskResult:
    output: Output
    heartbeats: list[dict[str, Any] | None] = field(default_factory=list)
    """Every details payload the task recorded with self.heartbeat(), in order."""


class _RecordingRuntime:
    def __init__(self) -> None:
        self.beats: list[dict[str, Any] | None] = []

    def heartbeat(self, details: dict[str, Any] | None) -> None:
        self.beats.append(details)

    def cleanup_files(self) -> int:
        return 0

    def cleanup_storage(self) -> int:
        return 0


async def run_task_async(
    app: App | type[App], task: str, input: Input | dict[str, Any], *,
    heartbeat_details: dict[str, Any] | None = None, attempt: int = 1,
    scratch_dir: str | None = None,
) -> TaskResult:
    """Run one task of `app` in this process, without Ray or a store."""
    instance = app() if isinstance(app, type) else app
    spec = type(instance).tasks().get(task)
    if spec is None:
        raise KeyError(f"{type(instance).__qualname__} has no task {task!r}")
    inp = input if isinstance(input, spec.input_type) else spec.input_type.model_validate(
        input if isinstance(input, dict) else input.model_dump())
    runtime = _RecordingRuntime()
    info = _context.TaskInfo(
        run_id="test-run", app_name=type(instance).name, task_name=spec.name,
        call_key=f"{spec.name}:test:0", attempt=attempt,
        scratch_dir=scratch_dir or os.path.join(tempfile.mkdtemp(prefix="task-"), "scratch"),
        heartbeat_details=heartbeat_details, runtime=runtime,
    )
    token = _context.task_info.set(info)
    try:
        out = await spec.fn(instance, inp)
    finally:
        _context.task_info.reset(token)
    return TaskResult(output=out, heartbeats=runtime.beats)


def run_task(app: App | type[App], task: str, input: Input | dict[str, Any], **kwargs: Any,
             ) -> TaskResult:
    return asyncio.run(run_task_async(app, task, input, **kwargs))


def replay(app_cls: type[App], run_id: str, store: Any = None) -> Any:
    """Replay a recorded run's journal against the current code, executing no task.

    Returns a report: `replayed`, `first_unrecorded`, `not_requested`, `error`, `divergent`.
    """
    from runtime.driver import replay_run  # the engine, loaded only when replaying

    return replay_run(app_cls, run_id, store)
