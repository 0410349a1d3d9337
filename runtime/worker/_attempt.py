"""The Ray side of a task attempt.

One Ray remote function is made per App class (its closure holds the class), so Ray exports the
class to each worker once. Every call ships one msgpack blob (`pack_attempt`: task name, input
bytes, the run's context packed once per run, call key, attempt number, heartbeat details and
settings): one bytes argument costs Ray as little as raw Ray's `noop(i)`, while four Python
arguments cost 0.1-0.4 ms more per call (benchmarks/PROFILE.md). Each worker process keeps one
App instance per class and one event loop.

The attempt returns the output as msgpack bytes of `model_dump(mode="json")`: the driver journals
those bytes as they are, without serializing the output again. They travel with the attempt's
stamp (worker start and end times, node, pid, files: `_timing`) in one blob.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from typing import Any

import msgpack
import ray
from ray import cloudpickle

from application_sdk import _context
from application_sdk.app import App
from application_sdk.errors import NonRetryableError, PayloadTooLargeError, TaskError

from .._appengine import task_app_context
from .._errors import error_type_names, is_non_retryable
from .._runcontext import RunContext, scratch_dir
from . import _files
from ._taskruntime import WorkerTaskRuntime
from ._timing import file_stats, pack_result, stamp_error

__all__ = ["FAILED", "OK", "STARTED", "AttemptInfo", "batch_remote_for", "pack_attempt",
           "remote_for", "run_attempt"]

OK, FAILED, STARTED = 0, 1, 2
"""Codes of a batch's items: `(OK, result bytes)`, `(FAILED, portable exception)`, and
`(STARTED, None)` first, when the batch's worker begins (the driver's timers count from it)."""


# (call_key, attempt, heartbeat_details or None, monitor actor name or None, heartbeat settings)
AttemptInfo = tuple[str, int, dict[str, Any] | None, Any, tuple[Any, ...] | list[Any]]

_instances: dict[type[App], App] = {}
_loop: asyncio.AbstractEventLoop | None = None
_remotes: dict[type[App], Any] = {}
_batch_remotes: dict[type[App], Any] = {}


def _event_loop() -> asyncio.AbstractEventLoop:
    global _loop
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
    return _loop


def _instance(app_cls: type[App]) -> App:
    app = _instances.get(app_cls)
    if app is None:
        app = _instances[app_cls] = app_cls()
    return app


def execute(
    app_cls: type[App], task_name: str, payload: bytes, run: RunContext, info: AttemptInfo,
) -> bytes:
    """Run one attempt of `task_name` in this worker process; returns msgpack output bytes."""
    run_id, app_name = run.run_id, run.app_name
    call_key, attempt, details, monitor, hb = info
    spec = app_cls._tasks[task_name]
    app = _instance(app_cls)
    inp = spec.input_type.model_validate(msgpack.unpackb(payload, raw=False))
    runtime = WorkerTaskRuntime(run, call_key, attempt, monitor, hb, details)
    task_info = _context.TaskInfo(
        run_id=run_id,
        app_name=app_name,
        task_name=task_name,
        call_key=call_key,
        attempt=attempt,
        scratch_dir=scratch_dir(app_name, run_id, call_key, attempt),
        heartbeat_details=details,
        runtime=runtime,
    )
    token = _context.task_info.set(task_info)
    ctx_token = _context.app_context.set(task_app_context(app_cls, run, task_name, attempt))
    runtime.start()
    try:
        inp = _files.before_task(inp, run, task_info)
        out = _event_loop().run_until_complete(spec.fn(app, inp))
        if isinstance(out, spec.output_type):
            out = _files.after_task(runtime.reuse_uploaded(out), run, task_info)
    finally:
        runtime.stop()
        _context.app_context.reset(ctx_token)
        _context.task_info.reset(token)
    if not isinstance(out, spec.output_type):
        raise NonRetryableError(
            f"task {task_name} returned {type(out).__qualname__}, expected "
            f"{spec.output_type.__qualname__}"
        )
    data = msgpack.packb(out.model_dump(mode="json"), use_bin_type=True)
    limit = app_cls.payload_limit_bytes
    if len(data) > limit:
        raise PayloadTooLargeError(
            f"Output of task {task_name} is {len(data) / 2**20:.1f} MiB, over the "
            f"{limit / 2**20:.0f} MiB payload limit: write the data to a file and return a "
            "FileReference"
        )
    return data, file_stats(_files._references(out))


def pack_attempt(task_name: str, payload: bytes, context: bytes | None, info: AttemptInfo) -> bytes:
    """One attempt's arguments as the single bytes argument of the remote call."""
    return msgpack.packb([task_name, payload, context, *info], use_bin_type=True)


def run_attempt(app_cls: type[App], blob: bytes, run: RunContext | None = None) -> bytes:
    """The body of the remote function: unpack the blob, `execute`, pack output and stamp."""
    started = time.time()
    task_name, payload, context, *info = msgpack.unpackb(blob, raw=False)
    if run is None:
        run = RunContext.unpacked(context)
    try:
        data, files = execute(app_cls, task_name, payload, run, tuple(info))  # type: ignore[arg-type]
    except Exception as exc:
        portable = portable_error(exc)
        stamp_error(portable, started)
        if portable is exc:
            raise
        raise portable from None
    return pack_result(data, started, files)


def portable_error(exc: BaseException) -> BaseException:
    """`exc` if it survives a pickle round trip (Ray carries it to the driver as itself), else
    a `TaskError` with its type names, message, traceback and retry flag: Ray would turn an
    unpicklable exception into "isn't serializable", losing the type `non_retryable_errors`
    matches on."""
    try:
        cloudpickle.loads(cloudpickle.dumps(exc))
        return exc
    except Exception:
        pass
    names = error_type_names(exc)
    return TaskError(
        str(exc), names,
        "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        non_retryable=is_non_retryable(exc))


def remote_for(app_cls: type[App]) -> Any:
    """The Ray remote function that runs attempts of `app_cls`'s tasks (cached per class)."""
    remote = _remotes.get(app_cls)
    if remote is None:

        def attempt(blob: bytes, run: RunContext | None = None) -> bytes:
            return run_attempt(app_cls, blob, run)

        attempt.__name__ = attempt.__qualname__ = f"{app_cls.__name__}.task_attempt"
        remote = ray.remote(max_retries=0, retry_exceptions=False)(attempt)
        _remotes[app_cls] = remote
    return remote


def batch_remote_for(app_cls: type[App]) -> Any:
    """The streaming Ray remote function that runs a batch of `app_cls`'s attempts one after
    the other, yielding each result as it finishes (`runtime.dispatch._batch`; cached per
    class). A failed attempt is a result, `(FAILED, error)`: the batch goes on."""
    remote = _batch_remotes.get(app_cls)
    if remote is None:

        def attempts(blobs: list[bytes], run: RunContext | None = None) -> Any:
            yield STARTED, None
            for blob in blobs:
                try:
                    result: tuple[int, Any] = (OK, run_attempt(app_cls, blob, run))
                except Exception as exc:  # run_attempt made it portable already
                    result = (FAILED, exc)
                yield result

        attempts.__name__ = attempts.__qualname__ = f"{app_cls.__name__}.task_attempts"
        remote = ray.remote(max_retries=0, retry_exceptions=False,
                            num_returns="streaming")(attempts)
        _batch_remotes[app_cls] = remote
    return remote
