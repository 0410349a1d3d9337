"""The driver: claim a run, load its journal, replay run() and dispatch what is not recorded.

The run, as data flows through it (DESIGN.md "The run"): validate the input before anything is
written; take the run's lease; load the journal in one batched read; execute run() with the
orchestrator installed; run on_complete(); write the final status once; release the lease.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import ray
from pydantic import ValidationError

from application_sdk import _context
from application_sdk.app import App, CleanupOutput, EntrypointSpec, TaskSpec
from application_sdk.contracts import Input, Output, StorageTier
from application_sdk.errors import NondeterminismError, RunCancelledError, RunFailedError
from storage import (
    Lease,
    LeaseLostError,
    RunRecord,
    RunStatus,
    RunStore,
    Store,
    open_store,
    tier_prefix,
)

from .._errors import InputValidationError, RunConflictError, UsageError
from .._ray import ensure_ray
from .._runcontext import RunContext
from ..dispatch import HeartbeatWatch, RayExecutor, shared_monitor
from . import _guards as guards
from ._journal import GroupCommitter, JournalIndex, commit_interval, record_details
from ._keys import canonical_json, digest
from ._orchestrator import Orchestrator
from ._step import Budget, Progress, StepRunner

__all__ = ["new_run_id", "run_app", "run_app_async", "validate_input"]

_BUILTIN_CLEANUP_STORAGE = App.cleanup_storage.__task_spec__.fn  # type: ignore[attr-defined]

log = logging.getLogger("connector_runtime")

LEASE_TTL = float(os.environ.get("CONNECTOR_RUNTIME_LEASE_TTL", "30"))
_POLL = 0.5


def validate_input(ep: EntrypointSpec, value: Any) -> Input:
    """The run's input as `ep.input_type`; InputValidationError names every bad field."""
    if isinstance(value, ep.input_type):
        return value
    if isinstance(value, Input):
        value = value.model_dump(mode="json")
    if not isinstance(value, dict):
        raise InputValidationError(
            f"input of {ep.name} must be a JSON object matching {ep.input_type.__qualname__}, "
            f"got {type(value).__name__}"
        )
    try:
        return ep.input_type.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"field {'.'.join(str(p) for p in e['loc']) or '(root)'!r}: {e['msg']}"
            for e in exc.errors()
        )
        raise InputValidationError(
            f"invalid input for {ep.input_type.__qualname__}: {problems}"
        ) from None


def new_run_id(app_cls: type[App]) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{app_cls.name.lower()}-{stamp}-{os.urandom(3).hex()}"


def app_path_of(app_cls: type[App]) -> str:
    return f"{app_cls.__module__}:{app_cls.__qualname__}"


def _check_same_run(existing: RunRecord | None, ep: EntrypointSpec, input_digest: str) -> None:
    if existing is None:
        return
    if existing.entrypoint != ep.name or existing.input_digest != input_digest:
        raise RunConflictError(
            f"run {existing.run_id} exists with a different "
            f"{'entry point' if existing.entrypoint != ep.name else 'input'}: a run id names "
            "one run; choose a new --run-id to start another"
        )


async def run_app_async(
    app_cls: type[App],
    input: Input | dict[str, Any],
    *,
    run_id: str | None = None,
    store: str | Store | None = None,
    entrypoint: str | None = None,
    store_options: dict[str, Any] | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> Output:
    """Run (or resume, or return the recorded output of) one run of `app_cls`."""
    ep = app_cls.entrypoint_spec(entrypoint)
    inp = validate_input(ep, input)
    st = store if isinstance(store, Store) else open_store(store, store_options)
    runs = RunStore(st, app_cls.name, run_id or new_run_id(app_cls))
    input_digest = digest(canonical_json(inp))
    existing = await asyncio.to_thread(runs.read_run)
    _check_same_run(existing, ep, input_digest)
    if existing is not None and existing.status is RunStatus.COMPLETED:
        return ep.output_type.model_validate(existing.output)
    ensure_ray()
    _refuse_local_store_on_a_cluster(st)
    driver = _Driver(app_cls, ep, inp, input_digest, runs, on_progress)
    return await driver.execute()


def _refuse_local_store_on_a_cluster(store: Store) -> None:
    if store.protocol != "file" or os.environ.get("CONNECTOR_RUNTIME_ALLOW_LOCAL_STORE") == "1":
        return
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1:
        raise UsageError(
            f"store {store.url} is a local folder, but the Ray cluster has {len(nodes)} nodes: "
            "tasks on other nodes could not read or write it. Use shared storage, e.g. "
            "--store s3://bucket/prefix (or set CONNECTOR_RUNTIME_ALLOW_LOCAL_STORE=1 when "
            "every node shares this filesystem)"
        )


def run_app(
    app_cls: type[App],
    input: Input | dict[str, Any],
    *,
    run_id: str | None = None,
    store: str | Store | None = None,
    entrypoint: str | None = None,
    store_options: dict[str, Any] | None = None,
) -> Output:
    """Synchronous `run_app_async`."""
    return asyncio.run(
        run_app_async(app_cls, input, run_id=run_id, store=store, entrypoint=entrypoint,
                      store_options=store_options)
    )


class _LeaseKeeper(threading.Thread):
    """Renews the run's lease from a thread, so a busy event loop cannot let it expire."""

    def __init__(self, lease: Lease) -> None:
        super().__init__(name="lease-renewal", daemon=True)
        self.lease = lease
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.lease.ttl / 3):
            try:
                self.lease.renew()
            except LeaseLostError as exc:
                log.error("%s", exc)
                return
            except Exception as exc:  # a store hiccup: try again next period
                log.warning("lease renewal failed, retrying: %s", exc)


class _Driver:
    def __init__(
        self,
        app_cls: type[App],
        ep: EntrypointSpec,
        inp: Input,
        input_digest: str,
        runs: RunStore,
        on_progress: Callable[[dict[str, Any]], None] | None,
    ) -> None:
        self.app_cls = app_cls
        self.ep = ep
        self.inp = inp
        self.input_digest = input_digest
        self.runs = runs
        self.on_progress = on_progress
        self.progress = Progress()
        self.cancel_reason: str | None = None
        self.lease = Lease(runs, ttl=LEASE_TTL)
        self.heartbeats: HeartbeatWatch | None = None
        self.journal_version = app_cls.version
        self.recorded_at_start: dict[str, str] = {}

    async def execute(self) -> Output:
        await asyncio.to_thread(self.lease.acquire)
        keeper = _LeaseKeeper(self.lease)
        keeper.start()
        try:
            return await self._claimed()
        finally:
            keeper.stopped.set()
            await asyncio.to_thread(self.lease.release)

    async def _claimed(self) -> Output:
        runs = self.runs
        record = await asyncio.to_thread(runs.read_run)
        _check_same_run(record, self.ep, self.input_digest)
        if record is not None and record.status is RunStatus.COMPLETED:
            return self.ep.output_type.model_validate(record.output)
        if record is None:
            record = RunRecord(
                app=runs.app, run_id=runs.run_id, app_path=app_path_of(self.app_cls),
                entrypoint=self.ep.name, input=self.inp.model_dump(mode="json"),
                input_digest=self.input_digest, app_version=self.app_cls.version,
            )
        self.journal_version = record.app_version
        record.app_version = self.app_cls.version
        record.status, record.error, record.finished_at = RunStatus.RUNNING, None, None
        await asyncio.to_thread(runs.clear_cancel)
        await asyncio.to_thread(runs.write_run, record)
        load = await asyncio.to_thread(runs.load_journal)
        for key in load.corrupt:
            log.warning("journal segment %s failed its checksum; its tasks will run again", key)
        index = JournalIndex(load)
        self.recorded_at_start = {k: r["n"] for k, r in index.tasks.items()
                                  if not k.startswith("on_complete/")}
        committer = GroupCommitter(runs, self.lease, load.next_seq.get(self.lease.epoch, 0),
                                   interval=commit_interval(runs.store))
        committer.start()
        run_ctx = RunContext(runs.run_id, runs.app, runs.store.url, runs.store.options or None)
        monitor, monitor_name = await shared_monitor()
        executor = RayExecutor(self.app_cls, run_ctx, monitor_name)
        self.heartbeats = HeartbeatWatch(
            monitor, runs.run_id, executor, functools.partial(record_details, index, committer))
        budget = Budget(self.app_cls.max_task_executions, index.executions, runs.run_id)
        steps = StepRunner(index, committer, executor, budget, self.progress,
                           before_retry=self.heartbeats.latest_details,
                           local=functools.partial(self._answer_locally, index))
        orch = Orchestrator(self.app_cls, steps, index, committer)
        log.info("run %s: %d task results recorded, %d segments", runs.run_id,
                 len(index.tasks), load.segments)
        watch = asyncio.get_running_loop().create_task(self.heartbeats.run())
        self.load = load
        try:
            return await self._orchestrate(record, orch, executor, committer)
        finally:
            watch.cancel()
            self.heartbeats.close()

    async def _orchestrate(
        self, record: RunRecord, orch: Orchestrator, executor: RayExecutor,
        committer: GroupCommitter,
    ) -> Output:
        app = self.app_cls()
        ctx = contextvars.copy_context()
        ctx.run(_context.orchestrator.set, orch)
        complete_ctx = ctx.copy()  # on_complete() may do what run() may not: no guards
        guards.activate(ctx, self.app_cls)
        loop = asyncio.get_running_loop()
        run_task = loop.create_task(getattr(app, self.ep.method)(self.inp), context=ctx)
        watcher = loop.create_task(self._watch(record, run_task))
        output: Output | None = None
        error: BaseException | None = None
        try:
            output = self._check_output(await run_task)
            self._check_divergence(record, orch)
            outcome = "completed"
        except asyncio.CancelledError:
            self.cancel_reason = self.cancel_reason or "interrupted"
            outcome = "cancelled"
        except Exception as exc:
            error, outcome = exc, "failed"
        executor.cancel_all()
        orch.outcome, orch.prefix = outcome, f"on_complete/{record.finish_count}/"
        try:
            await loop.create_task(app.on_complete(), context=complete_ctx)
        except Exception as exc:
            log.error("run %s: on_complete() failed: %s: %s", record.run_id,
                      type(exc).__name__, exc)
            if outcome == "completed":
                error, outcome, output = exc, "failed", None
        watcher.cancel()
        await committer.close()
        try:
            await asyncio.to_thread(committer.compact, self.load)
        except Exception as exc:  # the journal is intact without it, only slower to load
            log.warning("run %s: journal compaction skipped: %s", record.run_id, exc)
        return await self._finish(record, orch, outcome, output, error)

    async def _answer_locally(self, index: JournalIndex, spec: TaskSpec,
                              inp: Input) -> Output | None:
        """The built-in cleanup_storage when it has nothing to do, answered in the driver: a Ray
        task (and an S3 client in its worker) for an empty prefix cost a run on moto S3 about
        1 s. After a failed run() it keeps everything (a resume needs it); otherwise it is
        dispatched only if the journal records a TRANSIENT object or the run's TRANSIENT prefix
        lists anything (an attempt that uploaded, then failed, leaves unrecorded objects)."""
        if spec.fn is not _BUILTIN_CLEANUP_STORAGE:
            return None
        if getattr(inp, "outcome", "") == "failed":
            return CleanupOutput(deleted=0)
        if any(obj.get("t") == StorageTier.TRANSIENT.value for obj in index.objects):
            return None
        prefix = tier_prefix(StorageTier.TRANSIENT, self.runs.app, self.runs.run_id)
        if await asyncio.to_thread(self.runs.store.list, prefix):
            return None
        return CleanupOutput(deleted=0)

    def _check_divergence(self, record: RunRecord, orch: Orchestrator) -> None:
        """A resumed run() that no longer asks for recorded tasks is reported, not ignored."""
        missing = sorted(f"{name} ({key})" for key, name in self.recorded_at_start.items()
                         if key not in orch.requested)
        if not missing:
            return
        new = sorted(k for k in orch.requested if k not in self.recorded_at_start)
        app = self.app_cls.__qualname__
        if self.app_cls.version > self.journal_version:
            record.warnings.append(
                f"run() of {app} version {self.app_cls.version} no longer asks for "
                f"{len(missing)} call(s) recorded by version {self.journal_version}: "
                f"{', '.join(missing[:20])}; accepted because App.version was bumped"
            )
            log.warning("%s", record.warnings[-1])
            return
        raise NondeterminismError(
            f"run {record.run_id} diverged from its journal: run() did not ask again for "
            f"recorded call(s) {', '.join(missing[:20])}"
            + (f"; it asked instead for {', '.join(new[:20])}" if new else "")
            + f". run() must replay the same way; if {app}.run() was changed on purpose, "
            f"bump {app}.version (now {self.app_cls.version}) to accept the change"
        )

    def _check_output(self, value: Any) -> Output:
        expected = self.ep.output_type
        if isinstance(value, expected):
            return value
        if isinstance(value, dict):
            return expected.model_validate(value)
        raise TypeError(
            f"{self.app_cls.__qualname__}.{self.ep.method}() returned "
            f"{type(value).__qualname__}, expected {expected.__qualname__}"
        )

    async def _finish(
        self, record: RunRecord, orch: Orchestrator, outcome: str, output: Output | None,
        error: BaseException | None,
    ) -> Output:
        if self.lease.lost:
            raise LeaseLostError(f"run {record.run_id}: lease lost; final status not written")
        record.status = {"completed": RunStatus.COMPLETED, "failed": RunStatus.FAILED,
                         "cancelled": RunStatus.CANCELLED}[outcome]
        record.output = output.model_dump(mode="json") if output is not None else None
        record.finish_count += 1
        record.finished_at = time.time()
        record.progress = self.progress.snapshot()
        reason = self._reason(orch, error)
        if error is not None:
            record.error = {"type": type(error).__name__, "message": reason}
        elif outcome == "cancelled":
            record.error = {"type": "Cancelled", "message": self.cancel_reason or "cancelled"}
        await asyncio.to_thread(self.runs.write_run, record)
        if outcome == "completed":
            assert output is not None
            return output
        if outcome == "cancelled":
            raise RunCancelledError(f"run {record.run_id} was cancelled ({self.cancel_reason})")
        raise RunFailedError(f"run {record.run_id} failed: {reason}") from error

    @staticmethod
    def _reason(orch: Orchestrator, error: BaseException | None) -> str:
        if error is None:
            return ""
        for failure in orch.steps.failures:
            if failure.error is error:
                return failure.reason
        return f"{type(error).__name__}: {error}"

    async def _watch(self, record: RunRecord, run_task: asyncio.Task[Any]) -> None:
        """Poll for cancellation requests and lease loss; publish progress."""
        last_written: dict[str, int] = {}
        last_write = 0.0
        while not run_task.done():
            await asyncio.sleep(_POLL)
            if self.lease.lost:
                self.cancel_reason = "lease lost to another driver"
                run_task.cancel()
                return
            reason = await asyncio.to_thread(self.runs.cancel_requested)
            if reason is not None:
                self.cancel_reason = reason
                run_task.cancel()
                return
            snap: dict[str, Any] = self.progress.snapshot()
            if self.heartbeats is not None and self.heartbeats.stalled:
                snap["stalled"] = {k: round(v) for k, v in self.heartbeats.stalled.items()}
            if self.on_progress is not None:
                self.on_progress(snap)
            if snap != last_written and time.monotonic() - last_write > 2.0:
                record.progress, last_written, last_write = snap, snap, time.monotonic()
                await asyncio.to_thread(self.runs.write_run, record)
