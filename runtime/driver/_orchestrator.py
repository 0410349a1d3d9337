"""The orchestrator: what `await self.some_task(inp)` inside run() talks to.

Recorded values under `asyncio.gather`. `now()`, `uuid4()`, `random()` and durable sleeps are
keyed by the *lineage* of the coroutine that takes them, not by the order they are taken in:
each coroutine context carries a position (a contextvar), the call key of the last task call
or recorded value it completed, and a value's key is `@kind:{digest(position)}:{n}`, `n`
counting values taken at the same position. Two gathered branches that take `uuid4()` after
tasks of different lengths are at different positions, so on replay - where recorded
completions resolve at once, in gather order, not in the order they first finished - each gets
its own value back. Branches at the same position (both take a value before any task of their
own) reach it in the order gather started them, which is the same on every replay. Runs
recorded before lineage (key scheme 1) keep the occurrence order they were recorded with.

Rejected: replaying recorded completions in the order they were recorded (Temporal replays its
history that way). It needs every recorded call to wait for its turn instead of returning at
once - a future and a trip through the event loop per replayed call, where the lineage costs
one contextvar set - and a rule for when the next recorded completion is never asked for (a
compatible code change, a divergence): detecting that the loop has nothing else to run, which
asyncio does not expose. Measured replaying 5,000 recorded gathered calls in-process
(`python -m benchmarks.profiling lineage`, no Ray, no store): 108 ms with occurrence order
alone, 117 ms with the lineage (2 us a call), 167 ms with the calls released in record order.

Calls with identical inputs made concurrently by two branches are one call identity (name +
input digest) numbered in arrival order; a connector that needs them told apart gives them
inputs that differ (a page number, a branch name), as any idempotent task would have.

After run() ends (returned, raised or was cancelled), `close_run()` cancels what it left
running - gathered siblings of a failed task - and refuses new task calls from it: the
cancellations are the driver's own, so they are neither failures nor executions.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any

import msgpack

from application_sdk.app import App, TaskSpec
from application_sdk.contracts import Input, Output
from application_sdk.errors import PayloadTooLargeError

from ._guards import runtime_code, runtime_code_sync
from ._journal import GroupCommitter, JournalIndex
from ._keys import KEY_SCHEME, CallKeys, canonical_json, digest, identity_data
from ._step import StepRunner

__all__ = ["Orchestrator"]

_position: contextvars.ContextVar[str] = contextvars.ContextVar(
    "connector_runtime_position", default="")
"""The call key of the last task call or recorded value this coroutine context completed."""

_on_complete: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "connector_runtime_on_complete", default=False)
"""True in the context on_complete() runs in (run()'s leftovers are refused, it is not)."""


class Orchestrator:
    """Installed (through a contextvar) while run() and on_complete() execute."""

    def __init__(
        self,
        app_cls: type[App],
        steps: StepRunner,
        index: JournalIndex,
        committer: GroupCommitter,
        key_scheme: int = KEY_SCHEME,
    ) -> None:
        self.app_cls = app_cls
        self.steps = steps
        self.index = index
        self.committer = committer
        self.key_scheme = key_scheme
        self.keys = CallKeys()
        self.prefix = ""
        """Key namespace: "" during run(), "on_complete/N/" during the N-th on_complete()."""
        self.outcome = ""
        self.requested: set[str] = set()
        self.replaying = bool(index.values) or any(
            not k.startswith("on_complete/") for k in index.tasks)
        """Whether the last call run() made was answered from the journal: its logger is
        quiet then (run() runs again on every resume; it logged the first time)."""
        self._run_closed = False
        self._in_flight: set[asyncio.Task[Any]] = set()
        """Tasks of run() waiting on a dispatched call (cancelled by close_run)."""

    def on_complete_context(self, ctx: contextvars.Context) -> None:
        """Mark `ctx` as the context on_complete() runs in."""
        ctx.run(_on_complete.set, True)

    async def call_task(self, app: App, spec: TaskSpec, input: Input) -> Output:
        if self._run_closed and not _on_complete.get():
            raise asyncio.CancelledError("run() has ended: no new task calls from it")
        # Up to the first await, guards are turned off with a thread-local flag, which leaves
        # the gathered task's context untouched: a replayed call (a recorded result) finishes
        # there, costing no per-call context copy. Dispatch spans awaits: a contextvar then.
        with runtime_code_sync():
            inp, key, payload, recorded = self._prepare(spec, input)
        if recorded is not None:
            _position.set(key)
            self.replaying = True
            return recorded
        self.replaying = False
        current = asyncio.current_task()
        if current is not None:
            self._in_flight.add(current)
        try:
            with runtime_code():
                output = await self.steps.invoke(spec, key, inp, payload)
        finally:
            self._in_flight.discard(current)  # type: ignore[arg-type]
        _position.set(key)
        return output

    async def close_run(self) -> None:
        """run() has ended: cancel the calls it left waiting, refuse new ones."""
        self._run_closed = True
        current = asyncio.current_task()
        left = [t for t in self._in_flight if t is not current and not t.done()]
        for task in left:
            task.cancel()
        if left:
            await asyncio.gather(*left, return_exceptions=True)

    def _prepare(self, spec: TaskSpec, input: Input) -> tuple[Input, str, bytes, Output | None]:
        inp = self._coerce(spec, input)
        data = identity_data(inp, self.key_scheme)
        payload = msgpack.packb(data, use_bin_type=True)
        limit = self.app_cls.payload_limit_bytes
        if len(payload) > limit:
            raise PayloadTooLargeError(
                f"Input of task {spec.name} is {len(payload) / 2**20:.1f} MiB, over the "
                f"{limit / 2**20:.0f} MiB payload limit: write the data to a file and pass a "
                "FileReference"
            )
        key = self.keys.next(self.prefix, spec.name, digest(canonical_json(data)))
        record = self.index.tasks.get(key)
        if record is not None:
            key = record["k"]  # the journal's string: one copy per key in the driver
        self.requested.add(key)
        return inp, key, payload, self.steps.recorded(spec, key)

    def _coerce(self, spec: TaskSpec, value: Any) -> Input:
        expected = spec.input_type
        if isinstance(value, expected):
            return value
        if isinstance(value, dict):
            return expected.model_validate(value)
        if isinstance(value, Input):  # another Input with compatible fields
            return expected.model_validate(value.model_dump())
        raise TypeError(
            f"task {spec.name} takes a {expected.__qualname__}, got {type(value).__qualname__}"
        )

    def recorded_value(self, kind: str, produce: Callable[[], Any]) -> Any:
        """A value recorded on first execution and the same on every replay (see above)."""
        if self.key_scheme >= 2:
            key = self.keys.next(self.prefix, "@" + kind, digest(_position.get().encode()))
            _position.set(key)
        else:
            key = self.keys.next(self.prefix, "@" + kind, "")
        if key in self.index.values:
            self.replaying = True
            return self.index.values[key]
        self.replaying = False
        with runtime_code():
            value = produce()
        record = {"y": "v", "k": key, "v": value}
        self.index.apply(record)
        self.committer.append(record, urgent=True)
        return value
