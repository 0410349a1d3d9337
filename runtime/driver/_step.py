"""One pipeline per step: look up the recorded result, run, retry, record (errors too).

`StepRunner.invoke` is the whole life of one task call. It talks to the executor and the
journal through small interfaces, so it is unit-tested with an in-process executor, no Ray.
Each attempt's record carries its history (times, worker, files, traceback: `_timing`); an
attempt the driver cancels itself is journaled as "x", neither a failure nor an execution.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack
from pydantic import ValidationError

from application_sdk.app import TaskSpec
from application_sdk.contracts import Input, Output
from application_sdk.errors import ContractError, TaskBudgetExceededError
from storage import LeaseLostError

from ..dispatch import classify, decide
from ..worker import objects_in
from ._journal import GroupCommitter, JournalIndex
from ._timing import WorkerTable, cancelled_record, completed_fields, failed_fields

__all__ = ["Budget", "Executor", "Progress", "StepRunner", "TaskFailure", "log_failed_attempt"]

log = logging.getLogger("connector_runtime")


class Executor(Protocol):
    async def run(
        self, spec: TaskSpec, key: str, payload: bytes, number: int,
        details: dict[str, Any] | None, timeout: float,
    ) -> bytes | tuple[bytes, dict[str, Any]]: ...
    """Output bytes, or (output bytes, the worker's stamp: `runtime.worker._timing`)."""


@dataclass
class Progress:
    """Counters shown by `status` and the progress display."""

    done: int = 0
    replayed: int = 0
    running: int = 0
    retrying: int = 0
    failed: int = 0
    attempts: int = 0

    def snapshot(self) -> dict[str, int]:
        return dict(self.__dict__)


class Budget:
    """The run's task budget: executions (attempts) across the whole run, resumes included."""

    def __init__(self, limit: int, used: int, run_id: str) -> None:
        self.limit = limit
        self.used = used
        self.run_id = run_id

    def spend(self, task: str) -> None:
        if self.used >= self.limit:
            raise TaskBudgetExceededError(
                f"run {self.run_id}: task {task} would be execution {self.used + 1}, over the "
                f"run's budget of {self.limit} task executions. Make tasks larger (a page or a "
                "batch per task, not an item), or raise App.max_task_executions"
            )
        self.used += 1


@dataclass(frozen=True)
class TaskFailure:
    """Why a task call failed for good (kept by the orchestrator for the run's error)."""

    task: str
    key: str
    attempts: int
    reason: str
    error: BaseException
    type_name: str = ""
    """The error's class name (the original's, for a TaskError)."""
    non_retryable: bool = False
    """True when the error itself said retrying cannot help (not: attempts ran out)."""


def decode_output(spec: TaskSpec, data: bytes, replay: bool) -> Output:
    try:
        return spec.output_type.model_validate(msgpack.unpackb(data, raw=False))
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) or "(root)" for e in exc.errors())
        where = "recorded output" if replay else "output"
        raise ContractError(
            f"task {spec.name}: {where} does not match {spec.output_type.__qualname__} "
            f"(field {fields}): {exc.errors()[0]['msg']}. A breaking contract change needs a "
            "new model (e.g. a V2 class) or a new run"
        ) from exc


def log_failed_attempt(spec: TaskSpec, key: str, number: int, failure: Any,
                       decision: Any) -> None:
    """One line on stderr per failed attempt: the task (and its call), the attempt, the
    error's type and message, and what happens next (the retry delay, or why not)."""
    text = failure.message.strip()
    message = f": {text.splitlines()[0][:300]}" if text else ""
    then = (f"retrying in {decision.delay:.1f} s" if decision.retry
            else f"giving up ({decision.reason})")
    log.warning("task %s attempt %d failed: %s%s; %s [call %s]", spec.name, number,
                failure.type_name, message, then, key)


class StepRunner:
    def __init__(
        self,
        index: JournalIndex,
        committer: GroupCommitter,
        executor: Executor,
        budget: Budget,
        progress: Progress | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        before_retry: Callable[[str], Awaitable[None]] | None = None,
        local: Callable[[TaskSpec, Input], Awaitable[Output | None]] | None = None,
    ) -> None:
        self.index = index
        self.committer = committer
        self.executor = executor
        self.budget = budget
        self.progress = progress or Progress()
        self.sleep = sleep
        self.before_retry = before_retry
        """Called after a failed attempt, e.g. to fetch its last heartbeat details."""
        self.local = local
        """Answers a call in the driver when it can (None: dispatch it); recorded as attempt 0."""
        self.failures: list[TaskFailure] = []
        self.on_dispatch: Callable[[], None] | None = None
        """Called (once, then cleared) before the first attempt is dispatched: the end of
        replay, for the driver's phases."""
        self.workers = WorkerTable()
        """The run's workers by number (attempt records name theirs: `_timing`)."""

    def recorded(self, spec: TaskSpec, key: str) -> Output | None:
        record = self.index.tasks.get(key)
        if record is None:
            return None
        self.progress.replayed += 1
        return decode_output(spec, record["o"], replay=True)

    async def invoke(self, spec: TaskSpec, key: str, inp: Input, payload: bytes) -> Output:
        """The whole life of one call: recorded, answered in the driver, or attempted."""
        recorded = self.recorded(spec, key)
        if recorded is not None:
            return recorded
        answer = await self._answer_locally(spec, key, inp)
        if answer is not None:
            return answer
        if self.on_dispatch is not None:
            self.on_dispatch, first = None, self.on_dispatch
            first()
        return await self._attempts(spec, key, payload)

    async def _answer_locally(self, spec: TaskSpec, key: str, inp: Input) -> Output | None:
        """A call the driver can answer itself, journaled as attempt 0 (or None)."""
        if self.local is None:
            return None
        answer = await self.local(spec, inp)
        if answer is None:
            return None
        data = msgpack.packb(answer.model_dump(mode="json"), use_bin_type=True)
        record = {"y": "t", "k": key, "n": spec.name, "o": data, "a": 0}
        self.index.apply(record)
        self.committer.append(record)
        self.progress.done += 1
        return answer

    async def _attempts(self, spec: TaskSpec, key: str, payload: bytes) -> Output:
        """Attempt the call on the executor until it succeeds or the retry policy gives up."""
        opts = spec.options
        number = self.index.failures.get(key, 0)
        failed = losses = 0
        started = time.monotonic()
        while True:
            number += 1
            self.budget.spend(spec.name)
            if self.committer.has_urgent:
                await self.committer.flush()
            timeout = opts.timeout_seconds
            if opts.schedule_to_close_seconds is not None:
                left = opts.schedule_to_close_seconds - (time.monotonic() - started)
                timeout = max(0.001, min(timeout, left))
            self.progress.running += 1
            self.progress.attempts += 1
            dispatched = time.time()
            try:
                result = await self.executor.run(
                    spec, key, payload, number, self.index.details.get(key), timeout
                )
            except asyncio.CancelledError:  # the driver's own cancellation: not a failure
                self._journal_cancelled(spec, key, number, dispatched)
                raise
            except LeaseLostError:
                raise  # the driver's fencing: not a task failure
            except Exception as exc:
                failure = classify(exc, timeout)
                history = failed_fields(exc, dispatched, time.time(), self._worker)
            else:
                data, history = completed_fields(result, dispatched, time.time(), self._worker)
                output = decode_output(spec, data, replay=False)
                record = {"y": "t", "k": key, "n": spec.name, "o": data, "a": number, **history}
                self.index.apply(record)
                self.committer.append(record)
                for obj in objects_in(key, output):
                    self.index.apply(obj)
                    self.committer.append(obj)
                self.progress.done += 1
                return output
            finally:
                self.progress.running -= 1
            if failure.kind.lost:
                losses += 1
            else:
                failed += 1
            decision = decide(opts, failure, failed, losses, time.monotonic() - started)
            log_failed_attempt(spec, key, number, failure, decision)
            record = {"y": "f", "k": key, "n": spec.name, "a": number,
                      "e": failure.as_record(), "r": decision.retry, **history}
            self.index.apply(record)
            self.committer.append(record)
            if not decision.retry:
                self.progress.failed += 1
                reason = (f"task {spec.name} failed after {number} attempt(s) "
                          f"({decision.reason}): {failure.type_name}: {failure.message}")
                self.failures.append(TaskFailure(
                    spec.name, key, number, reason, failure.error, failure.type_name,
                    decision.non_retryable))
                raise failure.error  # the run's error says which task and why, once
            self.progress.retrying += 1
            try:
                if self.before_retry is not None:
                    await self.before_retry(key)
                await self.sleep(decision.delay)
            finally:
                self.progress.retrying -= 1

    def _worker(self, w: list[Any]) -> int:
        return self.workers.number(w, self.committer.append)

    def _journal_cancelled(self, spec: TaskSpec, key: str, number: int,
                           dispatched: float) -> None:
        """Journal an attempt the driver cancelled, if the journal still takes records (the
        cancellation must propagate whatever happens here)."""
        if self.committer.error is not None:
            return
        try:
            self.committer.append(cancelled_record(key, spec.name, number, dispatched,
                                                   time.time()))
        except Exception:
            pass
