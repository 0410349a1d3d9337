"""FileReference handling around a task attempt (filled in by the FileReference work).

- `before_task`: materialize durable references in a task's input on this worker.
- `after_task`: persist local-only references in a task's output to the store.
- `objects_in`: journal records ({"y": "o", ...}) of the objects a completed task's output
  created, so cleanup works after a driver restart and across nodes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from application_sdk.contracts import Input, Output

if TYPE_CHECKING:
    from application_sdk._context import TaskInfo

    from ._worker import RunContext

__all__ = ["after_task", "before_task", "objects_in"]


def before_task(inp: Input, run: RunContext, info: TaskInfo) -> Input:
    return inp


def after_task(out: Output, run: RunContext, info: TaskInfo) -> Output:
    return out


def objects_in(key: str, output: Output) -> list[dict[str, Any]]:
    return []
