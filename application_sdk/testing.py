"""Helpers for testing apps: run one task in-process, replay a recorded run.

    from application_sdk.testing import run_task, replay

    result = run_task(MyConnector, "fetch_page", PageInput(...), heartbeat_details={"page": 7})
    assert result.output.rows == 100 and result.heartbeats[-1] == {"page": 8}

    report = replay(MyConnector, "nightly-2026-11-28", store="s3://bucket/prefix")
    assert not report.divergent
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from . import _context
from ._appcontext import AppContext, note_secret
from ._state import check_state
from .app import App
from .contracts import FileReference, Input, Output

__all__ = ["TaskResult", "replay", "run_task", "run_task_async"]


@dataclass
class TaskResult:
    output: Output
    heartbeats: list[dict[str, Any] | None] = field(default_factory=list)
    """Every details payload the task recorded with self.heartbeat(), in order."""
    files: list[list[FileReference]] = field(default_factory=list)
    """The files each of those heartbeats carried (`heartbeat(..., files=)`), in order."""
    state: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The app state after the task (`save_state` writes here; pass `state=` to seed it)."""
    logs: list[logging.LogRecord] = field(default_factory=list)
    """What the task logged through `self.logger` (records carry the bound fields)."""


class _RecordingRuntime:
    def __init__(self, details: dict[str, Any] | None,
                 files: list[FileReference] | None) -> None:
        self.beats: list[dict[str, Any] | None] = []
        self.files: list[list[FileReference]] = []
        self.previous = (details, list(files or ()))

    def heartbeat(self, details: Any, files: Any = ()) -> None:
        self.beats.append(None if details is None else details.model_dump(mode="json"))
        self.files.append(list(files))

    def last_heartbeat(self) -> tuple[dict[str, Any] | None, list[FileReference]]:
        return self.previous

    def materialize(self, value: Any, force: bool = False) -> Any:
        return value  # in-process: local paths are already here

    def cleanup_files(self) -> int:
        return 0

    def cleanup_storage(self) -> int:
        return 0


class _TestEngine:
    """The AppContext engine of run_task: state in a dict, secrets from a dict then the
    environment, never cancelled."""

    where = "task"

    def __init__(self, state: dict[str, dict[str, Any]], secrets: dict[str, str]) -> None:
        self.state = state
        self.secrets = secrets

    def replaying(self) -> bool:
        return False

    def is_cancelled(self) -> bool:
        return False

    async def save_state(self, key: str, value: dict[str, Any]) -> None:
        self.state[key] = json.loads(check_state(key, value, saving=True))  # as stored

    async def load_state(self, key: str) -> dict[str, Any] | None:
        check_state(key)
        value = self.state.get(key)
        return None if value is None else json.loads(json.dumps(value))

    async def secret(self, name: str) -> str | None:
        value = self.secrets.get(name, os.environ.get(name))
        if value is not None:
            note_secret(value)
        return value


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def run_task_async(
    app: App | type[App], task: str, input: Input | dict[str, Any], *,
    heartbeat_details: dict[str, Any] | None = None, attempt: int = 1,
    scratch_dir: str | None = None, heartbeat_files: list[FileReference] | None = None,
    context: AppContext | None = None, state: dict[str, dict[str, Any]] | None = None,
    secrets: dict[str, str] | None = None,
) -> TaskResult:
    """Run one task of `app` in this process, without Ray or a store.

    `heartbeat_details`/`heartbeat_files`: what an earlier attempt checkpointed. `context`:
    the ids the task's `self.context` reports (app name and version default to the App's).
    `state`: the app state `load_state` sees (a dict, changed in place by `save_state`).
    `secrets`: what `get_secret` finds before the environment.
    """
    instance = app() if isinstance(app, type) else app
    cls = type(instance)
    spec = cls.tasks().get(task)
    if spec is None:
        raise KeyError(f"{cls.__qualname__} has no task {task!r}")
    inp = input if isinstance(input, spec.input_type) else spec.input_type.model_validate(
        input if isinstance(input, dict) else input.model_dump())
    runtime = _RecordingRuntime(heartbeat_details, heartbeat_files)
    base = context or AppContext(app_name=cls.name, app_version=str(cls.version))
    run_id = base.run_id or "test-run"
    info = _context.TaskInfo(
        run_id=run_id, app_name=cls.name, task_name=spec.name,
        call_key=f"{spec.name}:test:0", attempt=attempt,
        scratch_dir=scratch_dir or os.path.join(tempfile.mkdtemp(prefix="task-"), "scratch"),
        heartbeat_details=heartbeat_details, runtime=runtime,
    )
    kept = state if state is not None else {}
    ctx = replace(base, run_id=run_id, workflow_id=base.workflow_id or run_id,
                  correlation_id=base.correlation_id or run_id,
                  started_at=base.started_at or datetime.now(UTC), task_name=spec.name,
                  attempt=attempt, _engine=_TestEngine(kept, dict(secrets or {})), _logger=None)
    collect = _Collect()
    logger = logging.getLogger(f"app.{cls.name}")
    level = logger.level
    logger.addHandler(collect)
    logger.setLevel(logging.DEBUG)  # result.logs has everything the task said
    tokens = (_context.task_info.set(info), _context.app_context.set(ctx))
    try:
        out = await spec.fn(instance, inp)
    finally:
        _context.app_context.reset(tokens[1])
        _context.task_info.reset(tokens[0])
        logger.removeHandler(collect)
        logger.setLevel(level)
    return TaskResult(output=out, heartbeats=runtime.beats, files=runtime.files, state=kept,
                      logs=collect.records)


def run_task(app: App | type[App], task: str, input: Input | dict[str, Any], **kwargs: Any,
             ) -> TaskResult:
    return asyncio.run(run_task_async(app, task, input, **kwargs))


def replay(app_cls: type[App], run_id: str, store: Any = None) -> Any:
    """Replay a recorded run's journal against the current code, executing no task.

    Returns a report: `replayed`, `first_unrecorded`, `not_requested`, `error`, `divergent`.
    """
    from runtime.driver import replay_run  # the engine, loaded only when replaying

    return replay_run(app_cls, run_id, store)
