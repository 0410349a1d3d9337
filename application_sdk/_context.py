"""The seam between the documented API and whatever engine runs it.

`application_sdk` holds definitions only. An engine installs an orchestrator while `run()`
executes and a task context while a task executes; both are contextvars so they are scoped to
the coroutine that runs the app and never leak into the engine's own code. Contextvars do not
cross processes: the engine sets the task context in the worker's entry point. The run's
`AppContext` (what `self.context` answers) is a third contextvar, installed by the driver for
run(), entry points and on_complete(), and by the worker for each task attempt.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._appcontext import AppContext
    from .app import App, TaskSpec
    from .contracts import FileReference, HeartbeatDetails, Input, Output


class Orchestrator(Protocol):
    """What the engine provides while `run()` (or an entry point) executes."""

    async def call_task(self, app: App, spec: TaskSpec, input: Input) -> Output: ...

    def recorded_value(self, kind: str, produce: Any) -> Any: ...


class TaskRuntime(Protocol):
    """What the engine provides to a running task."""

    def heartbeat(self, details: HeartbeatDetails | None,
                  files: Sequence[FileReference] = ()) -> None:
        """Liveness, and with details or files a checkpoint durable before this returns."""
        ...

    def last_heartbeat(self) -> tuple[dict[str, Any] | None, list[FileReference]]:
        """The last checkpoint an earlier attempt of this call made (details, files)."""
        ...

    def materialize(self, value: Any, force: bool = False) -> Any:
        """`value` (a FileReference or a model holding some) with durable references
        downloaded to this node (`auto_materialize=False` ones only with `force`)."""
        ...

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
app_context: contextvars.ContextVar[AppContext | None] = contextvars.ContextVar(
    "application_sdk_app_context", default=None
)


class ContinueAsNew(BaseException):
    """Raised by `App.continue_with(input)`: run() ends here and the run continues as a new
    one with `input`. A BaseException, so `except Exception` in run() cannot swallow it."""

    def __init__(self, input: Any) -> None:
        super().__init__("continue_with")
        self.input = input


def current_task() -> TaskInfo:
    info = task_info.get()
    if info is None:
        from .errors import AppContextError

        raise AppContextError(
            "not inside a task: heartbeats, heartbeat details and scratch_dir exist only while "
            "a @task method runs"
        )
    return info


def last_heartbeat() -> tuple[dict[str, Any] | None, list[FileReference]]:
    info = current_task()
    if info.runtime is None:
        return info.heartbeat_details, []
    return info.runtime.last_heartbeat()


def heartbeat_details_as(model: type[HeartbeatDetails]) -> HeartbeatDetails | None:
    details, _ = last_heartbeat()
    if details is None:
        return None
    value = model.model_validate(details)
    runtime = current_task().runtime
    return value if runtime is None else runtime.materialize(value)
