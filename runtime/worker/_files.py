"""FileReference handling around a task attempt.

- `before_task`: materialize durable references in a task's input on this worker (into the
  run's per-node object cache, `{scratch_root}/{app}/{run_id}/.objects/`), setting local_path.
- `after_task`: persist local-only references in a task's output to the store, under the
  reference's tier prefix, and mark them durable (before the driver journals the output).
- `objects_in`: journal records ({"y": "o", ...}) of the durable objects in a completed task's
  output, so cleanup and gc work from the store after a driver restart and across nodes.

References are found anywhere in a contract: as a field, or inside lists, tuples, dicts and
nested models. Each persisted reference gets a store folder of its own,
`{tier prefix}/{call key}/a{attempt}-{random}/{field path}/{file name}`: a late-finishing
earlier attempt - or one a dead driver left running, which may carry the same attempt number
as the resumed run's - never overwrites the object another attempt recorded.

Allowed roots (upload): a local-only reference must point inside the run's own scratch folder
on this node (`{scratch root}/{app}/{run_id}`: another run's scratch is not the run's to ship)
or one of the folders in $CONNECTOR_RUNTIME_ALLOWED_ROOTS (os.pathsep-separated), after
resolving symlinks and `..`. Anything else (`/etc/passwd`, `../../x`, another run's files)
fails the task with a non-retryable `PathRefusedError`: a task should not be able to ship
arbitrary files of the worker's host to the store by naming them. Files in the run's scratch
are the runtime's (`persist(owned=True)`: the writers' files may be hard-linked); files under an
allowed root are the user's, copied and never changed.

Allowed objects (download): a durable reference in a task's input must name one of this run's
own objects (`runs/{app}/{run_id}/files/`, `retained/{app}/{run_id}/`,
`persistent/{app}/{run_id}/`); a run's Input naming another run's stored object by path is
refused with `PathRefusedError` before anything is read. Every attempt first checks the scratch
root (`ensure_scratch_root`): a root another user owns or may write to fails the attempt.
"""

from __future__ import annotations

import enum
import os
import typing
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from application_sdk.contracts import FileReference, Input, Output
from storage import (
    PathRefusedError,
    StoreError,
    check_inside,
    materialize,
    persist,
    safe_key,
    tier_prefix,
)

from .._runcontext import RunContext, ensure_scratch_root, safe_component

if TYPE_CHECKING:
    from application_sdk._context import TaskInfo

__all__ = ["after_task", "allowed_roots", "before_task", "cache_dir", "objects_in",
           "without_local_paths"]

ALLOWED_ROOTS_VAR = "CONNECTOR_RUNTIME_ALLOWED_ROOTS"

Visit = Callable[[FileReference, str], FileReference]


def allowed_roots(run: RunContext) -> list[str]:
    """Where the run's local-only references may point for upload: its own scratch folder on
    this node and the operator's $CONNECTOR_RUNTIME_ALLOWED_ROOTS."""
    extra = os.environ.get(ALLOWED_ROOTS_VAR, "")
    return [run.scratch, *(p for p in extra.split(os.pathsep) if p.strip())]


def own_prefixes(run: RunContext) -> list[str]:
    """The store prefixes of the run's own objects, one per tier."""
    return [tier_prefix(tier, run.app_name, run.run_id)
            for tier in ("transient", "retained", "persistent")]


def _check_own(key: str, run: RunContext, info: TaskInfo) -> None:
    prefixes = own_prefixes(run)
    try:
        safe_key(key)  # no `..` walking out of a prefix that matched as text
    except StoreError as exc:
        raise PathRefusedError(f"task {info.task_name}: {exc}") from None
    if not any(key.startswith(p + "/") for p in prefixes):
        raise PathRefusedError(
            f"task {info.task_name}: refused to read stored object {key!r}: it belongs to "
            f"another run (or to no run); run {run.run_id} reads only its own objects, under "
            f"{', '.join(prefixes)}. Pass the data as a file under an allowed root instead"
        )


def cache_dir(run: RunContext) -> str:
    """This node's cache of materialized objects for the run (removed by cleanup_files)."""
    return os.path.join(run.scratch, ".objects")


def _walk(value: Any, visit: Visit, path: str) -> Any:
    """`value` with every FileReference replaced by `visit(ref, field_path)` (copy on change)."""
    if isinstance(value, FileReference):
        return visit(value, path)
    if isinstance(value, BaseModel):
        changes = {}
        for name in type(value).model_fields:
            old = getattr(value, name)
            new = _walk(old, visit, f"{path}.{name}" if path else name)
            if new is not old:
                changes[name] = new
        return value.model_copy(update=changes) if changes else value
    if isinstance(value, (list, tuple)):
        items = [_walk(v, visit, f"{path}.{i}") for i, v in enumerate(value)]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return type(value)(items)
    if isinstance(value, dict):
        out = {k: _walk(v, visit, f"{path}.{k}") for k, v in value.items()}
        if all(out[k] is value[k] for k in value):
            return value
        return out
    return value


_SCALARS = (str, int, float, bool, bytes, type(None))
_holds: dict[type[BaseModel], bool] = {}


def _may_hold(tp: Any) -> bool:
    """Whether a value of annotation `tp` can contain a FileReference (True when unsure)."""
    if tp in _SCALARS or tp is Ellipsis:
        return False
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return False
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return False
    if origin is not None:  # list[int], dict[str, int], int | None, Annotated[int, ...]
        args = typing.get_args(tp)
        if origin is typing.Annotated:
            args = args[:1]
        return any(_may_hold(arg) for arg in args)
    return True  # a model (its instance may be a subclass with more fields), Any, anything else


def _model_may_hold(cls: type[BaseModel]) -> bool:
    holds = _holds.get(cls)
    if holds is None:
        holds = _holds[cls] = any(_may_hold(f.annotation) for f in cls.model_fields.values())
    return holds


def _references(value: Any) -> list[FileReference]:
    if isinstance(value, BaseModel) and not _model_may_hold(type(value)):
        return []  # only scalars and containers of scalars: nothing to walk (most tasks)
    found: list[FileReference] = []

    def collect(ref: FileReference, _path: str) -> FileReference:
        found.append(ref)
        return ref

    _walk(value, collect, "")
    return found


def before_task(inp: Input, run: RunContext, info: TaskInfo) -> Input:
    ensure_scratch_root()  # before the task can write a byte there (one lstat once checked)
    refs = [r for r in _references(inp) if r.is_durable and r.storage_path
            and r.auto_materialize]
    if not refs:
        return inp  # local-only references are usable where they were made: nothing to fetch
    for ref in refs:  # all refused before anything is read
        _check_own(ref.storage_path.rstrip("/"), run, info)  # type: ignore[union-attr]
    store = run.store()
    cache = cache_dir(run)

    def fetch(ref: FileReference, _path: str) -> FileReference:
        if not ref.is_durable or not ref.storage_path or not ref.auto_materialize:
            return ref  # auto_materialize=False: the task fetches it when it wants
        return ref.model_copy(update={"local_path": materialize(store, ref, cache)})

    return _walk(inp, fetch, "")


def after_task(out: Output, run: RunContext, info: TaskInfo) -> Output:
    if not _references(out):
        return out
    store = run.store()
    roots = allowed_roots(run)
    own = os.path.realpath(run.scratch)
    call = safe_component(info.call_key)
    token = uuid.uuid4().hex[:8]  # an attempt of a dead driver may still run with this number

    def upload(ref: FileReference, path: str) -> FileReference:
        if ref.is_durable or not ref.local_path or not ref.auto_materialize:
            return ref  # auto_materialize=False: the app owns its upload
        real = check_inside(ref.local_path, roots, action="upload")
        name = safe_component(os.path.basename(real.rstrip(os.sep))) or "data"
        field = safe_component(path) or "output"
        key = (f"{tier_prefix(ref.tier, run.app_name, run.run_id)}/{call}/"
               f"a{info.attempt}-{token}/{field}/{name}")
        stored = persist(store, real, key, known_size=ref.size_bytes,
                         known_sha256=ref.sha256, stamp_dir=cache_dir(run),
                         owned=real.startswith(own + os.sep))
        return ref.model_copy(update={
            "storage_path": stored.storage_path,
            "is_durable": True,
            "size_bytes": stored.size_bytes,
            "sha256": stored.sha256,
            "file_count": stored.file_count,
        })

    return _walk(out, upload, "")


def objects_in(key: str, output: Output) -> list[dict[str, Any]]:
    """Journal records of the durable objects `output` refers to (one per storage path)."""
    seen: set[str] = set()
    records = []
    for ref in _references(output):
        if ref.is_durable and ref.storage_path and ref.storage_path not in seen:
            seen.add(ref.storage_path)
            records.append({"y": "o", "k": key, "p": ref.storage_path, "t": ref.tier.value})
    return records


def without_local_paths(value: Output) -> Output:
    """A run's output as its caller gets it (and its record keeps it): durable references
    without `local_path`, which names a worker's scratch folder that cleanup deletes; their
    `storage_path` (a key in the run's store) is where the data is."""
    if not _references(value):
        return value

    def strip(ref: FileReference, _path: str) -> FileReference:
        if ref.is_durable and ref.local_path:
            return ref.model_copy(update={"local_path": None})
        return ref

    return _walk(value, strip, "")
