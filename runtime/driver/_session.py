"""One driver session of a run: claim it, replay and dispatch, finish it, let it go.

The order matters, and each step is there to keep a promise:

1. Claim: take the lease (a compare-and-swap), read the run record with its version token,
   load the journal, then seal it (`RunStore.seal`: segments a stale driver writes from now on
   do not count) and write the record RUNNING - both conditional, both before anything runs.
2. A cancellation requested while no driver was alive is honoured here, before anything is
   dispatched: run() is not executed, on_complete() runs, the run ends CANCELLED.
3. Orchestrate run() under the determinism guards; the journal is group-committed.
4. Before on_complete() starts, every completion is made durable (`committer.flush()`):
   `cleanup_storage` deletes TRANSIENT objects, and a completion that points at one must never
   be lost after the object is gone.
5. Finish: the final record, conditional on this session's version of it; then the journal
   is compacted (one object for the next load).

Each step's time is journaled as a phase ("p" records: `_phases`), so `trace` and the run page
show where a driver spent its time, also for a driver that was killed.

Fencing: every write and every dispatch first calls `lease.ensure()`, which trusts the lease
only within its TTL on this process's monotonic clock. A session that finds its lease lost
(taken over while it was frozen, or not renewable) stops where it is: in-flight attempts are
cancelled, on_complete() does not run (a cleanup would delete what the new owner's run needs),
no final record is written, and `LeaseLostError` is raised (CLI exit 3).
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

from application_sdk import _context
from application_sdk._appcontext import AppContext
from application_sdk.app import App, CleanupOutput, EntrypointSpec, TaskSpec
from application_sdk.contracts import Input, Output
from application_sdk.errors import (
    ContractError,
    NondeterminismError,
    RunCancelledError,
    RunFailedError,
)
from storage import Lease, LeaseLostError, RunRecord, RunStatus, RunStore

from .._appengine import RunEngine, app_context
from .._errors import InputValidationError, RunConflictError
from .._runcontext import RunContext
from ..dispatch import HeartbeatWatch, RayExecutor, shared_monitor
from ..worker import cleanup_scratch, cleanup_transient, objects_in, without_local_paths
from . import _guards as guards
from ._journal import GroupCommitter, JournalIndex, commit_interval
from ._keys import KEY_SCHEME
from ._orchestrator import Orchestrator
from ._phases import SessionPhases
from ._step import Budget, Progress, StepRunner

__all__ = ["Continued", "DriverSession", "app_path_of", "recorded_output"]

_BUILTIN_CLEANUP_STORAGE = App.cleanup_storage.__task_spec__.fn  # type: ignore[attr-defined]
_BUILTIN_CLEANUP_FILES = App.cleanup_files.__task_spec__.fn  # type: ignore[attr-defined]

log = logging.getLogger("connector_runtime")

LEASE_TTL = float(os.environ.get("CONNECTOR_RUNTIME_LEASE_TTL", "30"))
_POLL = 0.5
_PROGRESS_EVERY = 2.0


class Continued(Exception):
    """The run ended with continue_with(input): `run_id` is the continuation to run next."""

    def __init__(self, run_id: str) -> None:
        super().__init__(run_id)
        self.run_id = run_id


def recorded_output(ep: EntrypointSpec, record: RunRecord) -> Output:
    """The stored output of a completed run, as the entry point's current Output class."""
    try:
        return ep.output_type.model_validate(record.output)
    except ValueError as exc:
        raise ContractError(
            f"run {record.run_id}: its recorded output no longer matches "
            f"{ep.output_type.__qualname__} ({exc.errors()[0]['msg']} at field "  # type: ignore[attr-defined]
            f"{'.'.join(str(p) for p in exc.errors()[0]['loc'])!r}). A breaking change of "  # type: ignore[attr-defined]
            "the run's Output needs a new model (e.g. a V2 class) or a new run id"
        ) from exc


def version_key(version: int | str) -> tuple[tuple[int, int, str], ...]:
    """An app version as comparable parts: 3 < "3.1" < "3.10.0" < "3.10.0rc" (numbers first)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in str(version).split("."))


def app_path_of(app_cls: type[App]) -> str:
    """`module:Class` of an App, as the run record keeps it."""
    return f"{app_cls.__module__}:{app_cls.__qualname__}"


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


class DriverSession:
    """One driver's claim on one run, from lease to final record."""

    def __init__(
        self,
        app_cls: type[App],
        ep: EntrypointSpec,
        inp: Input,
        input_digest: str,
        key_scheme: int,
        runs: RunStore,
        on_progress: Callable[[dict[str, Any]], None] | None,
        origin: dict[str, Any] | None = None,
        secrets_dir: str | None = None,
        fresh: bool = False,
    ) -> None:
        self.app_cls = app_cls
        self.fresh = fresh
        """The caller found no record of this run: its lease is created without a read."""
        self.origin = origin or {}
        """For a run this session creates: workflow_id, correlation_id, continued_from, chain."""
        self.secrets_dir = secrets_dir
        self.continuation: Input | None = None
        """The input continue_with() gave, once run() ended with it."""
        self.ep = ep
        self.inp = inp
        self.input_digest = input_digest
        self.key_scheme = key_scheme
        self.runs = runs
        self.on_progress = on_progress
        self.progress = Progress()
        self.cancel_reason: str | None = None
        self.lease = Lease(runs, ttl=LEASE_TTL)
        self.heartbeats: HeartbeatWatch | None = None
        self.journal_version = app_cls.version
        self.recorded_at_start: dict[str, str] = {}
        self.corrupt_segments: list[str] = []
        """Journal segments that failed their checksum at load (ignored: treated as missing)."""
        self._token: Any = None
        """Version of the run record this session last read or wrote."""
        self._record_lock = threading.Lock()

    # -- the session -----------------------------------------------------------------------

    async def execute(self, check_same_run: Callable[[RunRecord | None], None]) -> Output:
        began = time.time()
        await asyncio.to_thread(self.lease.acquire, self.fresh)
        self.phases = SessionPhases(self.lease.epoch, began)
        keeper = _LeaseKeeper(self.lease)
        keeper.start()
        try:
            return await self._claimed(check_same_run)
        finally:
            keeper.stopped.set()
            await asyncio.to_thread(self.lease.release)

    async def _claimed(self, check_same_run: Callable[[RunRecord | None], None]) -> Output:
        runs = self.runs
        # A run with no record whose lease this driver created: no driver ever wrote its
        # record (drivers write it only under the lease), so there is nothing to read. If a
        # tool wrote one meanwhile, the conditional write of the running record says so.
        found = None if self.fresh and self.lease.created else \
            await asyncio.to_thread(runs.read_run_versioned)
        record, self._token = found if found is not None else (None, None)
        check_same_run(record)
        if record is not None and record.status is RunStatus.COMPLETED:
            return recorded_output(self.ep, record)
        self.phases.mark("claim")
        load = await asyncio.to_thread(runs.load_journal)
        self.phases.mark("load")
        self.corrupt_segments = list(load.corrupt)
        for key in load.corrupt:
            log.warning("journal segment %s failed its checksum; its tasks will run again", key)
        for key in load.fenced:
            log.warning("journal segment %s was written by a stale driver after a takeover; "
                        "it is not counted", key)
        record = self._running_record(record)
        committer = GroupCommitter(runs, self.lease, load.next_seq.get(self.lease.epoch, 0),
                                   interval=commit_interval(runs.store))
        committer.start()
        committer.append(runs.seal(self.lease.epoch, load.next_seq), urgent=True)
        self._journal_phases(committer)
        await committer.flush()
        await self._write_record(record)
        self.phases.mark("seal")
        pending_cancel = await asyncio.to_thread(runs.cancel_request)
        if pending_cancel is not None and pending_cancel[1] <= (record.cancel_honoured_at or 0):
            pending_cancel = None  # honoured already: this is a resume of the cancelled run
        index = JournalIndex(load)
        self.recorded_at_start = {k: r["n"] for k, r in index.tasks.items()
                                  if not k.startswith("on_complete/")}
        run_ctx = RunContext(runs.run_id, runs.app, runs.store.url, runs.store.options or None,
                             self._identity(record))
        monitor, monitor_name = await shared_monitor()
        executor = RayExecutor(self.app_cls, run_ctx, monitor_name, admit=self.lease.ensure)
        # heartbeat details are checkpointed by the workers (runtime/worker/_checkpoint.py):
        # the watch judges liveness only, and the journal keeps none
        self.heartbeats = HeartbeatWatch(
            monitor, runs.run_id, executor,
            on_replaced=functools.partial(setattr, executor, "monitor"))
        budget = Budget(self.app_cls.max_task_executions, index.executions, runs.run_id)
        steps = StepRunner(index, committer, executor, budget, self.progress,
                           local=functools.partial(self._answer_locally, run_ctx, index))
        steps.workers.load(load.records)
        orch = Orchestrator(self.app_cls, steps, index, committer, key_scheme=self.key_scheme)
        log.info("run %s: %d task results recorded, %d segments", runs.run_id,
                 len(index.tasks), load.segments)
        watch = asyncio.get_running_loop().create_task(self.heartbeats.run())
        self.load = load
        self._committer = committer
        try:
            return await self._orchestrate(record, orch, executor, committer, pending_cancel)
        finally:
            watch.cancel()
            self.heartbeats.close()
            executor.close()  # its pools park their idle actors for the next run

    def _running_record(self, record: RunRecord | None) -> RunRecord:
        if record is None:
            record = RunRecord(
                app=self.runs.app, run_id=self.runs.run_id, app_path=app_path_of(self.app_cls),
                entrypoint=self.ep.name, input=self.inp.model_dump(mode="json"),
                input_digest=self.input_digest, app_version=self.app_cls.version,
                key_scheme=self.key_scheme,
                workflow_id=self.origin.get("workflow_id") or self.runs.run_id,
                correlation_id=self.origin.get("correlation_id") or self.runs.run_id,
                continued_from=self.origin.get("continued_from"),
                chain=self.origin.get("chain", 0),
            )
        self.journal_version = record.app_version
        record.app_version = self.app_cls.version
        record.status, record.error, record.finished_at = RunStatus.RUNNING, None, None
        record.epoch = self.lease.epoch
        return record

    def _identity(self, record: RunRecord) -> dict[str, Any]:
        """What `self.context` reports in tasks (RunContext.identity)."""
        return {"workflow_id": record.workflow_id or record.run_id,
                "correlation_id": record.correlation_id or record.run_id,
                "started_at": record.created_at, "app_version": str(self.app_cls.version),
                "secrets_dir": self.secrets_dir, "cancel_after": record.cancel_honoured_at}

    def _app_context(self, run: RunContext, orch: Orchestrator) -> AppContext:
        engine = RunEngine(run, "run", replaying=lambda: orch.replaying,
                           cancelled=lambda: self.cancel_reason is not None,
                           completing=lambda: bool(orch.outcome))
        return app_context(self.app_cls, run, engine)

    async def _write_record(self, record: RunRecord) -> None:
        """Write the run record, conditional on this session's last version of it."""
        await asyncio.to_thread(self._write_record_now, record)

    def _write_record_now(self, record: RunRecord) -> None:
        # In the thread, under a lock, token update included: a coroutine cancelled while it
        # awaited a write (the progress writer, when run() ends) does not stop the thread,
        # and the next write must start from the version that write made.
        with self._record_lock:
            self.lease.ensure()
            token = self.runs.replace_run(record, self._token)
            if token is None:
                self.lease.lost = True
                raise LeaseLostError(
                    f"run {record.run_id}: its record was changed by another driver (epoch "
                    f"{self.lease.epoch} is stale); this driver stops without recording "
                    "anything"
                )
            self._token = token

    async def _orchestrate(
        self, record: RunRecord, orch: Orchestrator, executor: RayExecutor,
        committer: GroupCommitter, pending_cancel: tuple[str, float] | None,
    ) -> Output:
        app = self.app_cls()
        ctx = contextvars.copy_context()
        ctx.run(_context.orchestrator.set, orch)
        ctx.run(_context.app_context.set, self._app_context(executor.context, orch))
        complete_ctx = ctx.copy()  # on_complete() may do what run() may not: no guards
        orch.on_complete_context(complete_ctx)
        loop = asyncio.get_running_loop()
        output: Output | None = None
        error: BaseException | None = None
        if pending_cancel is not None:
            self.cancel_reason = pending_cancel[0]
            record.cancel_honoured_at = pending_cancel[1]
            log.warning("run %s: cancellation requested while no driver was alive (%s): "
                        "honouring it before anything runs", record.run_id, pending_cancel[0])
            outcome = "cancelled"
        else:
            self._run_phase_begins(orch, committer)
            outcome, output, error = await self._run_body(app, ctx, record, orch)
            await orch.close_run()  # what run() left running (gathered siblings) stops here
            executor.cancel_all()
            self._run_phase_ends(orch)
        if self._lease_lost(committer, error):
            executor.cancel_all()
            await committer.close(raise_error=False)
            raise self._lost(record)
        try:
            await committer.flush()  # nothing is deleted before what refers to it is durable
            orch.outcome, orch.prefix = outcome, f"on_complete/{record.finish_count}/"
            orch.replaying = False  # on_complete() of this finish runs for the first time
            await loop.create_task(app.on_complete(), context=complete_ctx)
        except Exception as exc:
            if self._lease_lost(committer, exc):
                executor.cancel_all()
                await committer.close(raise_error=False)
                raise self._lost(record) from None
            log.error("run %s: on_complete() failed: %s: %s", record.run_id,
                      type(exc).__name__, exc)
            if outcome == "completed":
                error, outcome, output = exc, "failed", None
        self.phases.mark("on_complete")
        self._journal_phases(committer)
        await committer.close()
        return await self._finish(record, orch, outcome, output, error)

    async def _run_body(self, app: App, ctx: contextvars.Context, record: RunRecord,
                        orch: Orchestrator) -> tuple[str, Output | None, BaseException | None]:
        """Execute run() (or the entry point) under the guards: how it ended."""
        loop = asyncio.get_running_loop()
        guards.activate(ctx, self.app_cls)
        run_task = loop.create_task(getattr(app, self.ep.method)(self.inp), context=ctx)
        watcher = loop.create_task(self._watch(record, run_task))
        outcome, output, error = "failed", None, None
        try:
            output = self._check_output(await run_task)
            self._check_divergence(record, orch)
            outcome = "completed"
        except _context.ContinueAsNew as cont:
            try:
                self.continuation = self._continuation_input(cont.input)
                self._check_divergence(record, orch)
                outcome = "continued"
            except Exception as exc:
                error = exc
        except asyncio.CancelledError:
            self.cancel_reason = self.cancel_reason or "interrupted"
            outcome = "cancelled"
        except Exception as exc:
            error = exc
        finally:
            watcher.cancel()
            guards.deactivate()
        return outcome, output, error

    def _continuation_input(self, value: Any) -> Input:
        """continue_with's input, validated as the entry point's Input."""
        from ._driver import validate_input

        inp = validate_input(self.ep, value)
        stored = objects_in("", inp)
        if stored:
            raise InputValidationError(
                f"continue_with(): the new input refers to stored file(s) of run "
                f"{self.runs.run_id} ({stored[0]['p']}, ...); a continuation reads only its own "
                "objects. Pass values (a cursor, an offset) and let the continuation's tasks "
                "read or write the files")
        return inp

    # -- phases (`_phases`) ------------------------------------------------------------------

    def _journal_phases(self, committer: GroupCommitter) -> None:
        for phase in self.phases.take():
            committer.append(phase)

    def _run_phase_begins(self, orch: Orchestrator, committer: GroupCommitter) -> None:
        self.phases.mark("setup")
        self._run_began = self.phases.begin("run")
        self._journal_phases(committer)
        if self.recorded_at_start:  # a resume: replay lasts until the first dispatch
            orch.steps.on_dispatch = functools.partial(self._replay_ends, committer)

    def _replay_ends(self, committer: GroupCommitter) -> None:
        self.phases.nested("replay", self._run_began)
        self._journal_phases(committer)

    def _run_phase_ends(self, orch: Orchestrator) -> None:
        if orch.steps.on_dispatch is not None:  # nothing dispatched: run() was all replay
            orch.steps.on_dispatch = None
            self.phases.nested("replay", self._run_began)
        self.phases.mark("run")

    def _compact_with_last_phases(self) -> None:
        """After the final record: compact the journal, the last phase (`finish`) riding in
        the compacted segment; a journal too short to compact gets one small segment for it.
        (Compaction comes after the final record so that the record's write is journaled.)"""
        committer, records = self._committer, self.phases.take()
        seq = committer.seq
        committer.written_records.extend(records)
        try:
            committer.compact(self.load)
        except Exception as exc:  # the journal is intact without it, only slower to load
            log.warning("run %s: journal compaction skipped: %s", self.runs.run_id, exc)
        if committer.seq != seq:  # compacted: the phases are in the new segment
            return
        try:
            self.lease.ensure()
            while not self.runs.write_segment(self.lease.epoch, seq, records):
                seq += 1
        except Exception as exc:  # the run's outcome is recorded; only its history is shorter
            log.warning("run %s: the driver's last phases were not journaled: %s",
                        self.runs.run_id, exc)

    def _lease_lost(self, committer: GroupCommitter, error: BaseException | None) -> bool:
        return (self.lease.lost or isinstance(error, LeaseLostError)
                or isinstance(committer.error, LeaseLostError))

    def _lost(self, record: RunRecord) -> LeaseLostError:
        return LeaseLostError(
            f"run {record.run_id}: this driver's lease (epoch {self.lease.epoch}) was lost to "
            "another driver; it stopped without running on_complete() or recording a final "
            "status (the new owner finishes the run)"
        )

    async def _answer_locally(self, run: RunContext, index: JournalIndex, spec: TaskSpec,
                              inp: Input) -> Output | None:
        """The built-in cleanup tasks, answered in the driver (journaled as attempt 0).

        Dispatched as Ray tasks they cost a worker (and an S3 client in it) each, about 1 s of
        a run on moto S3; worse, a cleanup task that Ray places on a node that froze never
        starts, so it never beats, and the run waited for its timeout. In the driver,
        cleanup_storage deletes the run's TRANSIENT prefix (nothing after a failed run(): a
        resume replays outputs that point at it), and cleanup_files deletes this node's
        scratch folder of the run and asks every other alive node for its own, waiting a
        bounded time (`runtime.worker.cleanup_scratch`)."""
        if spec.fn is _BUILTIN_CLEANUP_STORAGE:
            if getattr(inp, "outcome", "") == "failed":
                return CleanupOutput(deleted=0)
            return CleanupOutput(deleted=await asyncio.to_thread(
                cleanup_transient, run, list(index.objects)))  # the journal is in memory
        if spec.fn is _BUILTIN_CLEANUP_FILES:
            return CleanupOutput(deleted=await asyncio.to_thread(cleanup_scratch, run, False))
        return None

    def _check_divergence(self, record: RunRecord, orch: Orchestrator) -> None:
        """A resumed run() that no longer asks for recorded tasks is reported, not ignored."""
        missing = sorted(f"{name} ({key})" for key, name in self.recorded_at_start.items()
                         if key not in orch.requested)
        if not missing:
            return
        new = sorted(k for k in orch.requested if k not in self.recorded_at_start)
        app = self.app_cls.__qualname__
        if self.corrupt_segments:
            # What a corrupt segment held (a recorded value, a completion) was taken again;
            # calls made from the old value have new keys, so the recorded ones go unasked.
            # The run is one consistent execution, not a changed run().
            record.warnings.append(
                f"journal segment(s) {', '.join(self.corrupt_segments[:5])} failed their "
                f"checksum and were ignored: what they recorded was taken again, and "
                f"{len(missing)} recorded call(s) made from it were not asked for again "
                f"({', '.join(missing[:5])}); their results are not used")
            log.warning("%s", record.warnings[-1])
            return
        if version_key(self.app_cls.version) > version_key(self.journal_version):
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
        record.status = {"completed": RunStatus.COMPLETED, "failed": RunStatus.FAILED,
                         "cancelled": RunStatus.CANCELLED,
                         "continued": RunStatus.CONTINUED}[outcome]
        if output is not None:
            output = without_local_paths(output)  # they name scratch that cleanup deleted
        record.output = output.model_dump(mode="json") if output is not None else None
        record.finish_count += 1
        record.finished_at = time.time()
        record.progress = self.progress.snapshot()
        failure = self._failure(orch, error)
        if error is not None:
            record.error = {"type": failure["type"], "message": failure["reason"],
                            **({"task": failure["task"]} if "task" in failure else {}),
                            "non_retryable": failure["non_retryable"]}
        elif outcome == "cancelled":
            record.error = {"type": "Cancelled", "message": self.cancel_reason or "cancelled"}
        if outcome == "continued":
            assert self.continuation is not None
            record.continued_as = await asyncio.to_thread(self._create_continuation, record)
        await self._write_record(record)
        self.phases.mark("finish")
        await asyncio.to_thread(self._compact_with_last_phases)
        if self.on_progress is not None:
            self.on_progress(record.progress)
        if outcome == "completed":
            assert output is not None
            return output
        if outcome == "continued":
            log.warning("run %s continued as %s (continue_with)", record.run_id,
                        record.continued_as)
            raise Continued(record.continued_as or "")
        if outcome == "cancelled":
            raise RunCancelledError(f"run {record.run_id} was cancelled ({self.cancel_reason})")
        raise RunFailedError(f"run {record.run_id} failed: {failure['reason']}",
                             task=failure.get("task"), error_type=failure["type"],
                             non_retryable=failure["non_retryable"]) from error

    def _create_continuation(self, record: RunRecord) -> str:
        """Create the record of the run continue_with() starts (once: a resumed session that
        replays to the same continue_with finds it made); its id."""
        from ._keys import input_digest

        assert self.continuation is not None
        chain = record.chain + 1
        suffix = f".c{record.chain}"
        root = record.run_id[:-len(suffix)] if record.chain and \
            record.run_id.endswith(suffix) else record.run_id
        runs = RunStore(self.runs.store, self.runs.app, f"{root}.c{chain}")
        created = RunRecord(
            app=runs.app, run_id=runs.run_id, app_path=record.app_path,
            entrypoint=record.entrypoint, input=self.continuation.model_dump(mode="json"),
            input_digest=input_digest(self.continuation, KEY_SCHEME),
            app_version=self.app_cls.version, key_scheme=KEY_SCHEME,
            workflow_id=record.workflow_id or record.run_id,
            correlation_id=record.correlation_id or record.run_id,
            continued_from=record.run_id, chain=chain)
        self.lease.ensure()
        if runs.replace_run(created, None) is None:
            found = runs.read_run()
            if found is None or found.continued_from != record.run_id or \
                    found.input_digest != created.input_digest:
                raise RunConflictError(
                    f"run {record.run_id}: continue_with() would continue as run "
                    f"{runs.run_id}, which exists and is not this run's continuation")
        return runs.run_id

    @staticmethod
    def _failure(orch: Orchestrator, error: BaseException | None) -> dict[str, Any]:
        """What failed the run: the task, its error type and the reason, once."""
        if error is None:
            return {}
        for failure in orch.steps.failures:
            if failure.error is error:
                return {"task": failure.task, "type": failure.type_name,
                        "reason": failure.reason, "non_retryable": failure.non_retryable}
        from .._errors import is_non_retryable

        name = getattr(error, "type_name", None) or type(error).__name__
        return {"type": name, "reason": f"run() raised {name}: {error}",
                "non_retryable": is_non_retryable(error)}

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
            request = await asyncio.to_thread(self.runs.cancel_request)
            if request is not None and request[1] > (record.cancel_honoured_at or 0):
                self.cancel_reason = request[0]
                record.cancel_honoured_at = request[1]
                run_task.cancel()
                return
            snap: dict[str, Any] = self.progress.snapshot()
            if self.heartbeats is not None and self.heartbeats.stalled:
                snap["stalled"] = {k: round(v) for k, v in self.heartbeats.stalled.items()}
            if self.on_progress is not None:
                self.on_progress(snap)
            if snap != last_written and time.monotonic() - last_write > _PROGRESS_EVERY:
                record.progress, last_written, last_write = snap, snap, time.monotonic()
                try:
                    await self._write_record(record)
                except LeaseLostError as exc:
                    log.error("%s", exc)
                    run_task.cancel()
                    return
