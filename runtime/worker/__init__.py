"""The worker side of an attempt: the Ray remote function, FileReferences, heartbeats, cleanup.

Rooms: `_attempt` (the remote function: unpack, set the task context, run, pack the output),
`_files` (materialize references before a task, persist them after it), `_taskruntime` (what
`self.heartbeat()` and the cleanup tasks reach), `_cleanup` (scratch folders and TRANSIENT
objects), `_pool_actor` (the warm executor actor of a `Pool`: batches of attempts).
"""

from ._attempt import AttemptInfo, pack_attempt, remote_for, run_attempt
from ._cleanup import cleanup_scratch, cleanup_transient, delete_run_scratch
from ._files import after_task, allowed_roots, before_task, cache_dir, objects_in
from ._pool_actor import FAILED, OK, PoolWorker, pool_actor_class

__all__ = [
    "FAILED",
    "OK",
    "AttemptInfo",
    "PoolWorker",
    "after_task",
    "allowed_roots",
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
]
