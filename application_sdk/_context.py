"""The seam between the documented API and whatever engine runs it.

`application_sdk` holds definitions only. An engine installs an orchestrator while `run()`
executes and a task context while a task executes; both are contextvars so they are scoped to
the coroutine that runs the app and never leak into the engine's own code. Contextvars do not
cross processes: the engine sets the task context in the worker's entry point.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .app import App, TaskSpec
    from .contracts import HeartbeatDetails, Input, Output


class Orchestrator(Protocol):
    """What the engine provides while `run()` (or an entry point) executes."""

    async def call_task(self, app: App, spec: TaskSpec, input: Input) -> Output: ...

    def recorded_value(self, kind: str, produce: Any) -> Any: ...


class TaskRuntime(Protocol):
    """What the engine provides to a running task."""

    def heartbeat(self, details: dict[str, Any] | None) -> None: ...

    def cleanup_files(self) -> int: ...

    def cleanup_storage(self) -> int: ...


@dataclass(frozen=True)
class TaskInfo:
    """Facts about the running attempt of a task."""

    run_id: str
    """The run this attempt belongs to."""
    app_name: str
    """The app's name in the store."""
    task_name: str
    """The task's name (`@task(name=...)` or the method name)."""
    call_key: str
    """Stable identity of this call in the run: the same on every attempt and replay."""
    attempt: int
    """1 for the first attempt, 2 for the first retry, and so on."""
    scratch_dir: str
    """A directory of this attempt's own for local files."""
    heartbeat_details: dict[str, Any] | None = None
    """The last details recorded by an earlier attempt of this call, if any."""
    runtime: TaskRuntime | None = field(default=None, compare=False, repr=False)


orchestrator: contextvars.ContextVar[Orchestrator | None] = contextvars.ContextVar(
    "application_sdk_orchestrator", default=None
)
task_info: contextvars.ContextVar[TaskInfo | None] = contextvars.ContextVar(
    "application_sdk_task_info", default=None
)


def current_task() -> TaskInfo:
    info = task_info.get()
    if info is None:
        raise RuntimeError(
            "not inside a task: heartbeats, heartbeat details and scratch_dir exist only while "
            "a @task method runs"
        )
    return info


def heartbeat_details_as(model: type[HeartbeatDetails]) -> HeartbeatDetails | None:
    details = current_task().heartbeat_details
    return None if details is None else model.model_validate(details)
