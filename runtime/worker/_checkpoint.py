"""Heartbeat checkpoints: what `self.heartbeat(details, files=[...])` makes durable before it
returns, and what the next attempt of the call reads back.

```
runs/{app}/{run_id}/files/_heartbeats/{call key}.msgpack   {"a": attempt, "d": details,
                                                            "f": [file references], "t": time}
runs/{app}/{run_id}/files/{call key}/a{attempt}-{token}/...  the files, persisted
```

One object per call, rewritten atomically at each checkpoint (the store's `write`): the next
attempt - after the worker, its node or the driver died - reads the last checkpoint that
returned, whatever died. Both live under the run's TRANSIENT prefix whatever the files' own
tier: they are progress, kept while the run can resume (a failed run keeps them) and deleted by
`cleanup_storage` when it completes or is cancelled (or by `gc`).

Files are persisted the way a task's output is (`_files.after_task`: hashed, confined to the
allowed roots), once per file: an attempt that beats the same pages again and again uploads each
page once (a local file unchanged since its upload - same inode, size, mtime - is the reference
already made). FileReferences inside the details model are persisted the same way, so
`Progress(page=7, parts=[ref, ...])` round-trips typed. Reading a checkpoint back materializes
durable references on this node (`auto_materialize=False` ones are left for the task).

A zombie attempt (its node cut off, not dead) may still write after its retry started; the last
write wins, as with any heartbeat. Rejected: one object per attempt - attempt numbers repeat
after a driver restart (a run resumed while attempt 1 ran dispatches attempt 1 again), so the
reader would need a listing to find the newest; the driver journaling what workers report -
the driver dies too (that was the bug: details of the last second before a driver SIGKILL were
lost), and it reads beats once a second.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from application_sdk.contracts import BoundedList, FileReference, StorageTier
from storage import CorruptRecordError, decode, encode, tier_prefix

from .._runcontext import RunContext, safe_component
from ._files import _references, _walk, after_task, before_task

if TYPE_CHECKING:
    from application_sdk._context import TaskInfo

__all__ = ["checkpoint_key", "materialize_value", "read_checkpoint", "reuse_uploaded",
           "write_checkpoint"]

log = logging.getLogger("connector_runtime")


class _Files(BaseModel):
    """A holder for `heartbeat(files=)`, so they are walked like any model's references."""

    files: BoundedList[FileReference] = []


def checkpoint_key(run: RunContext, call_key: str) -> str:
    return (f"{tier_prefix(StorageTier.TRANSIENT, run.app_name, run.run_id)}/_heartbeats/"
            f"{safe_component(call_key)}.msgpack")


def _stamp(path: str) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def reuse_uploaded(value: Any, uploaded: dict[str, Any], checkpoint: bool = False) -> Any:
    """`value` with local references to files a checkpoint uploaded before (unchanged since,
    and of the same tier) replaced by the durable references made then, so a file is uploaded
    once however often it is beaten and when the task finally returns it. In a `checkpoint`,
    every other local reference becomes TRANSIENT (checkpoints are progress)."""

    def swap(ref: FileReference, _path: str) -> FileReference:
        if ref.is_durable or not ref.local_path or not ref.auto_materialize:
            return ref
        tier = StorageTier.TRANSIENT if checkpoint else ref.tier
        seen = uploaded.get(ref.local_path)
        if seen is not None and seen[1].tier is tier and seen[0] == _stamp(ref.local_path):
            return seen[1]
        return ref if ref.tier is tier else ref.model_copy(update={"tier": tier})

    return _walk(value, swap, "") if uploaded or checkpoint else value


def _remember(before: Any, after: Any, uploaded: dict[str, Any]) -> None:
    for old, new in zip(_references(before), _references(after), strict=True):
        if old.local_path and new.is_durable and not old.is_durable:
            uploaded[old.local_path] = (_stamp(old.local_path), new)


def write_checkpoint(run: RunContext, info: TaskInfo, details: BaseModel | None,
                     files: list[FileReference],
                     uploaded: dict[str, Any]) -> dict[str, Any] | None:
    """Persist the files (and references in `details`), then write the checkpoint; the
    details as recorded (JSON), for the heartbeat monitor."""
    holder = reuse_uploaded(_Files(files=files), uploaded, checkpoint=True)
    stored_files = after_task(holder, run, info)  # type: ignore[arg-type]
    _remember(holder, stored_files, uploaded)
    payload = None
    if details is not None:
        local = reuse_uploaded(details, uploaded, checkpoint=True)
        stored = after_task(local, run, info)  # type: ignore[arg-type]
        _remember(local, stored, uploaded)
        payload = stored.model_dump(mode="json")
    record = {"a": info.attempt, "d": payload, "t": time.time(),
              "f": [f.model_dump(mode="json") for f in stored_files.files]}
    run.store().write(checkpoint_key(run, info.call_key), encode(record))
    return payload


def read_checkpoint(run: RunContext, call_key: str,
                    ) -> tuple[dict[str, Any] | None, list[FileReference]] | None:
    """The last checkpoint of this call (details, files), or None."""
    key = checkpoint_key(run, call_key)
    data = run.store().read(key)
    if data is None:
        return None
    try:
        record = decode(data, key)
    except CorruptRecordError as exc:  # as any torn record: missing, the attempt starts over
        log.warning("heartbeat checkpoint %s is corrupt (%s): the attempt starts without it",
                    key, exc)
        return None
    return record.get("d"), [FileReference.model_validate(f) for f in record.get("f") or ()]


def materialize_value(value: Any, run: RunContext, info: TaskInfo, force: bool = False) -> Any:
    """`value` (a FileReference, or a model holding some) with its durable references
    downloaded to this node, checked to be the run's own. `auto_materialize=False` ones are
    left as they are, unless `force` (the task asked for this one reference)."""
    if isinstance(value, FileReference):
        lazy = not value.auto_materialize
        if lazy and not force:
            return value
        ref = value.model_copy(update={"auto_materialize": True}) if lazy else value
        got = before_task(_Files(files=[ref]), run, info).files[0]  # type: ignore[arg-type]
        return got.model_copy(update={"auto_materialize": False}) if lazy else got
    if isinstance(value, BaseModel):
        return before_task(value, run, info)  # type: ignore[arg-type]
    return value
