"""The engine behind `self.context` (`application_sdk.AppContext`): one per run() in the driver,
one per task attempt on a worker.

What each may do follows from where it runs:

- in a task: `save_state`/`load_state` read and write `state/{app}/{key}` in the store (in a
  thread, so the task's event loop keeps running), `get_secret` reads the run's secret folder
  or the worker's environment, `is_cancelled()` reads the run's cancellation request from the
  store (at most once a second per attempt: a loop that asks on every row costs nothing);
- in run(): state and secrets are refused - both are I/O, neither replays the same way, and a
  secret read there would travel in a task input, which is stored; `is_cancelled()` is the
  driver's own flag; the logger is quiet while run() replays recorded calls;
- in on_complete(): as run(), except that secrets may be read (it is not replayed, and a
  notification needs its token).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from application_sdk._appcontext import AppContext
from application_sdk._state import check_state
from application_sdk.errors import AppContextError, StateError
from storage import RunStore, load_app_state, save_app_state

from ._runcontext import RunContext
from ._secrets import read_secret

__all__ = ["RunEngine", "app_context", "task_app_context"]

_CANCEL_EVERY = 1.0
"""Seconds between two reads of the cancellation request from a task."""


class RunEngine:
    """What an AppContext may do in one place of a run (see the module docstring)."""

    def __init__(self, run: RunContext, where: str,
                 replaying: Callable[[], bool] | None = None,
                 cancelled: Callable[[], bool] | None = None,
                 completing: Callable[[], bool] | None = None) -> None:
        self.run = run
        self.where = where
        self._replaying = replaying
        self._cancelled = cancelled
        self._completing = completing
        self._cancel_seen = (0.0, False)

    def replaying(self) -> bool:
        return self._replaying is not None and self._replaying()

    def is_cancelled(self) -> bool:
        if self._cancelled is not None:
            return self._cancelled()
        checked_at, seen = self._cancel_seen
        if seen or time.monotonic() - checked_at < _CANCEL_EVERY:
            return seen
        request = RunStore(self.run.store(), self.run.app_name, self.run.run_id).cancel_request()
        after = (self.run.identity or {}).get("cancel_after") or 0
        seen = request is not None and request[1] > after
        self._cancel_seen = (time.monotonic(), seen)
        return seen

    async def save_state(self, key: str, value: dict[str, Any]) -> None:
        data = check_state(key, value, saving=True)
        self._task_only("save_state")
        await asyncio.to_thread(save_app_state, self.run.store(), self.run.app_name, key,
                                json.loads(data))

    async def load_state(self, key: str) -> dict[str, Any] | None:
        check_state(key)
        self._task_only("load_state")
        return await asyncio.to_thread(load_app_state, self.run.store(), self.run.app_name, key)

    async def secret(self, name: str) -> str | None:
        if self.where == "run" and not (self._completing and self._completing()):
            raise AppContextError(
                f"get_secret({name!r}) called inside run(): a secret read there would travel "
                "in a task's input, which is stored in the journal. Read it inside the @task "
                "that uses it")
        folder = (self.run.identity or {}).get("secrets_dir")
        if self.where == "run":
            return await asyncio.to_thread(read_secret, name, folder)
        return read_secret(name, folder)  # a file read of a few bytes: no thread hop

    def _task_only(self, what: str) -> None:
        if self.where != "task":
            raise StateError(
                f"{what}() called outside a task: app state is I/O in the store, and run() "
                "(and on_complete()) must not do I/O. Call it inside a @task (save the "
                "watermark in the task that read the data)")


def app_context(app_cls: type, run: RunContext, engine: RunEngine, *,
                task_name: str | None = None, attempt: int | None = None) -> AppContext:
    """The AppContext of a run (or of one task attempt of it)."""
    ident = run.identity or {}
    started = ident.get("started_at")
    return AppContext(
        app_name=run.app_name, app_version=str(ident.get("app_version", app_cls.version)),
        run_id=run.run_id, workflow_id=ident.get("workflow_id") or run.run_id,
        correlation_id=ident.get("correlation_id") or run.run_id,
        started_at=datetime.fromtimestamp(started, UTC) if started else None,
        task_name=task_name, attempt=attempt, _engine=engine)


_logging_ready = False


def _task_logging() -> None:
    """Once per worker process: what a task logs through `self.logger` reaches stderr (which
    Ray streams to the driver) at INFO, unless the process configured logging itself."""
    global _logging_ready
    if _logging_ready:
        return
    _logging_ready = True
    logger = logging.getLogger("app")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if not logger.hasHandlers():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(
            "%(levelname)s %(name)s [%(task_name)s attempt %(attempt)s, run %(run_id)s]: "
            "%(message)s", defaults={"task_name": "-", "attempt": "-", "run_id": "-"}))
        logger.addHandler(handler)


def task_app_context(app_cls: type, run: RunContext, task_name: str,
                     attempt: int) -> AppContext:
    """The AppContext of one task attempt on a worker."""
    _task_logging()
    return app_context(app_cls, run, RunEngine(run, "task"), task_name=task_name,
                       attempt=attempt)
