"""The worker side of an attempt: the Ray remote function, FileReferences, heartbeats, cleanup.

Rooms: `_attempt` (the remote function: unpack, set the task context, run, pack the output),
`_files` (materialize references before a task, persist them after it), `_taskruntime` (what
`self.heartbeat()` and the cleanup tasks reach), `_cleanup` (scratch folders and TRANSIENT
objects), `_timing` (what an attempt reports about itself: times, node, pid, files),
`_pool_actor` (the warm executor actor of a `Pool`: batches of attempts).
"""

from ._attempt import (
    FAILED,
    OK,
    STARTED,
    AttemptInfo,
    batch_remote_for,
    pack_attempt,
    remote_for,
    run_attempt,
)
from ._cleanup import cleanup_scratch, cleanup_transient, delete_run_scratch
from ._files import (
    after_task,
    allowed_roots,
    before_task,
    cache_dir,
    objects_in,
    without_local_paths,
)
from ._pool_actor import PoolWorker, pool_actor_class
from ._timing import STAMP_ATTR, unpack_result

__all__ = [
    "FAILED",
    "OK",
    "STAMP_ATTR",
    "STARTED",
    "AttemptInfo",
    "PoolWorker",
    "after_task",
    "allowed_roots",
    "batch_remote_for",
    "before_task",
    "cache_dir",
    "cleanup_scratch",
    "cleanup_transient",
    "delete_run_scratch",
    "objects_in",
    "pack_attempt",
    "pool_actor_class",
    "remote_for",
    "run_attempt",
    "unpack_result",
    "without_local_paths",
]
