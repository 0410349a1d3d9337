"""The orchestrator: what `await self.some_task(inp)` inside run() talks to."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from application_sdk.app import App, TaskSpec
from application_sdk.contracts import Input, Output
from application_sdk.errors import PayloadTooLargeError

from ._guards import runtime_code, runtime_code_sync
from ._journal import GroupCommitter, JournalIndex
from ._keys import CallKeys, canonical_json, digest
from ._step import StepRunner

__all__ = ["Orchestrator"]


class Orchestrator:
    """Installed (through a contextvar) while run() and on_complete() execute."""

    def __init__(
        self,
        app_cls: type[App],
        steps: StepRunner,
        index: JournalIndex,
        committer: GroupCommitter,
    ) -> None:
        self.app_cls = app_cls
        self.steps = steps
        self.index = index
        self.committer = committer
        self.keys = CallKeys()
        self.prefix = ""
        """Key namespace: "" during run(), "on_complete/N/" during the N-th on_complete()."""
        self.outcome = ""
        self.requested: set[str] = set()

    async def call_task(self, app: App, spec: TaskSpec, input: Input) -> Output:
        # Up to the first await, guards are turned off with a thread-local flag, which leaves
        # the gathered task's context untouched: a replayed call (a recorded result) finishes
        # there, costing no per-call context copy. Dispatch spans awaits: a contextvar then.
        with runtime_code_sync():
            inp, key, payload, recorded = self._prepare(spec, input)
        if recorded is not None:
            return recorded
        with runtime_code():
            return await self.steps.invoke(spec, key, inp, payload)

    def _prepare(self, spec: TaskSpec, input: Input) -> tuple[Input, str, bytes, Output | None]:
        inp = self._coerce(spec, input)
        data = inp.model_dump(mode="json")
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
        key = self.keys.next(self.prefix, "@" + kind, "")
        if key in self.index.values:
            return self.index.values[key]
        with runtime_code():
            value = produce()
        record = {"y": "v", "k": key, "v": value}
        self.index.apply(record)
        self.committer.append(record, urgent=True)
        return value
