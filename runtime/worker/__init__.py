"""The worker side of an attempt: the Ray remote function, FileReferences, heartbeats, cleanup.

Rooms: `_attempt` (the remote function: unpack, set the task context, run, pack the output),
`_files` (materialize references before a task, persist them after it), `_taskruntime` (what
`self.heartbeat()` and the cleanup tasks reach), `_cleanup` (scratch folders and TRANSIENT
objects).
"""

from ._attempt import AttemptInfo, pack_attempt, remote_for, run_attempt
from ._cleanup import cleanup_scratch, cleanup_transient, delete_run_scratch
from ._files import (
    after_task,
    allowed_roots,
    before_task,
    cache_dir,
    objects_in,
    without_local_paths,
)

__all__ = [
    "AttemptInfo",
    "after_task",
    "allowed_roots",
    "before_task",
    "cache_dir",
    "cleanup_scratch",
    "cleanup_transient",
    "delete_run_scratch",
    "objects_in",
    "pack_attempt",
    "remote_for",
    "run_attempt",
    "without_local_paths",
]
