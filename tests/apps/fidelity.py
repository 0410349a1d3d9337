"""Apps written against the SDK's documented surface: run context, app state, secrets,
continue_with, heartbeats with files, auto heartbeats off, lazy references."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import pyarrow as pa

from application_sdk.app import NO_RETRY, App, RetryPolicy, task
from application_sdk.contracts import (
    BoundedList,
    FileReference,
    HeartbeatDetails,
    Input,
    Output,
    OutputStatus,
    StorageTier,
)
from application_sdk.errors import NonRetryableError
from storage import arrow

from .counting import mark

# ---- the run context ------------------------------------------------------------------------


class Where(Input):
    folder: str
    """The "fail" flag file there fails the gate task (fix: delete it, resume)."""


class Seen(Output):
    run_id: str
    workflow_id: str
    correlation_id: str
    app_name: str
    app_version: str
    started_at: str
    task_name: str | None = None
    attempt: int | None = None
    same_logger: bool = False


class Report(Output):
    in_run: Seen
    in_task: Seen


class Attempted(Output):
    attempt: int


def _seen(app: App) -> Seen:
    ctx = app.context
    return Seen(run_id=ctx.run_id, workflow_id=ctx.workflow_id,
                correlation_id=ctx.correlation_id, app_name=ctx.app_name,
                app_version=ctx.app_version, started_at=ctx.started_at.isoformat(),
                task_name=ctx.task_name, attempt=ctx.attempt,
                same_logger=app.logger is ctx.logger)


class ContextApp(App):
    version = "1.2.0"

    @task
    async def look(self, input: Where) -> Seen:
        self.logger.info("looking", rows=3)
        return _seen(self)

    @task(retry_policy=NO_RETRY)
    async def gate(self, input: Where) -> Attempted:
        if os.path.exists(os.path.join(input.folder, "fail")):
            raise RuntimeError("the gate is closed while the flag exists")
        return Attempted(attempt=self.task_info.attempt)

    async def run(self, input: Where) -> Report:
        self.logger.info("run() starts")
        seen = await self.look(input)
        self.logger.info("run() got the task's answer")
        await self.gate(input)
        self.logger.info("run() passed the gate")
        return Report(in_run=_seen(self), in_task=seen)


# ---- durable app state ----------------------------------------------------------------------


class Batch(Input):
    rows: int
    where: str = "task"
    """"task" (allowed), "run" (refused)."""


class Watermark(Output):
    before: int
    after: int


class StateApp(App):
    @task(retry_policy=NO_RETRY)
    async def extract(self, input: Batch) -> Watermark:
        state = await self.context.load_state("watermark") or {"rows": 0}
        after = state["rows"] + input.rows
        await self.context.save_state("watermark", {"rows": after, "note": "ok"})
        return Watermark(before=state["rows"], after=after)

    async def run(self, input: Batch) -> Watermark:
        if input.where == "run":
            await self.context.save_state("watermark", {"rows": -1})
        return await self.extract(input)


# ---- secrets --------------------------------------------------------------------------------


class SecretName(Input):
    name: str
    folder: str = ""
    in_run: bool = False


class SecretSeen(Output):
    sha256: str
    length: int


class SecretApp(App):
    @task(retry_policy=NO_RETRY)
    async def use(self, input: SecretName) -> SecretSeen:
        value = await self.context.get_secret(input.name)
        self.logger.warning("connecting with %s", value)  # redacted by the logger
        if input.folder:
            mark(os.path.join(input.folder, "log"), f"used {input.name}")
        return SecretSeen(sha256=hashlib.sha256(value.encode()).hexdigest(),
                          length=len(value))

    async def run(self, input: SecretName) -> SecretSeen:
        if input.in_run:
            await self.context.get_secret(input.name)
        return await self.use(input)


# ---- continue_with --------------------------------------------------------------------------


class Chunk(Input):
    folder: str
    offset: int = 0
    total: int = 12_000
    chunk: int = 3_000
    slow_from: int = -1
    """Items from this index on sleep a little while the folder's "slow" flag exists (so a test
    can kill the driver mid-chunk)."""


class One(Input):
    folder: str
    i: int
    slow: bool = False


class Done(Output):
    i: int


class Total(Output):
    items: int
    runs: int
    correlation_id: str
    workflow_id: str


class ChunkedApp(App):
    """Processes `total` items in chunks of `chunk` tasks, one run per chunk (continue_with)."""

    @task(retry_policy=RetryPolicy(max_attempts=3, initial_interval=0.05))
    async def work(self, input: One) -> Done:
        if input.slow and os.path.exists(os.path.join(input.folder, "slow")):
            time.sleep(0.05)
        mark(os.path.join(input.folder, "items"), str(input.i))
        return Done(i=input.i)

    async def run(self, input: Chunk) -> Total:
        end = min(input.total, input.offset + input.chunk)
        slow = input.slow_from
        done = await asyncio.gather(*(
            self.work(One(folder=input.folder, i=i, slow=0 <= slow <= i))
            for i in range(input.offset, end)))
        assert [d.i for d in done] == list(range(input.offset, end))
        if end < input.total:
            self.continue_with(input.model_copy(update={"offset": end}))
        return Total(items=end, runs=end // input.chunk + (end % input.chunk > 0),
                     correlation_id=self.context.correlation_id,
                     workflow_id=self.context.workflow_id)


class BadContinue(App):
    @task
    async def inner(self, input: Chunk) -> Done:
        self.continue_with(input)
        return Done(i=0)

    async def run(self, input: Chunk) -> Done:
        if input.offset == 0:
            return await self.inner(input)
        self.continue_with({"folder": input.folder, "offset": "not a number"})
        return Done(i=1)


# ---- heartbeats -----------------------------------------------------------------------------


class Pages(Input):
    folder: str
    pages: int = 6
    crash_at: int = 3
    """Attempt 1 dies (os._exit) after checkpointing this many pages."""


class Progress(HeartbeatDetails):
    page: int = 0
    """Pages done."""
    parts: BoundedList[FileReference] = []
    """The pages written so far (persisted with each checkpoint)."""


class Extracted(Output):
    parts: BoundedList[FileReference]
    rows: int
    resumed_at: int
    files_back: int


class CheckpointApp(App):
    """A paginated extraction writing each page to its scratch dir; a retry gets the pages its
    predecessor wrote back from the checkpoint (files=, and FileReferences in the details)."""

    @task(heartbeat_timeout_seconds=30, retry_policy=RetryPolicy(max_attempts=2,
                                                                 initial_interval=0.05))
    async def extract(self, input: Pages) -> Extracted:
        last = self.get_heartbeat_details(Progress) or Progress()
        files = self.get_heartbeat_files()
        for ref in [*last.parts, *files]:  # materialized on this node, hash-checked
            assert ref.local_path and os.path.exists(ref.local_path), ref
        parts = list(last.parts)
        for page in range(last.page, input.pages):
            mark(os.path.join(input.folder, "fetched"), f"{page} {self.task_info.attempt}")
            table = pa.table({"page": [page] * 10, "row": list(range(10))})
            parts.append(arrow.write_table(table, name=f"page-{page}"))
            self.heartbeat(Progress(page=page + 1, parts=parts), files=[parts[-1]])
            if self.task_info.attempt == 1 and page + 1 == input.crash_at:
                os._exit(1)
        rows = sum(arrow.read_table(p).num_rows for p in parts)
        return Extracted(parts=parts, rows=rows, resumed_at=last.page, files_back=len(files))

    async def run(self, input: Pages) -> Extracted:
        return await self.extract(input)


class Quiet(Input):
    folder: str
    mode: str = "stall"
    """"stall": beats, then goes silent while alive; "never": never beats; "beats": beats
    every 0.3 s for longer than the heartbeat timeout."""


class ManualBeatsApp(App):
    @task(auto_heartbeat_seconds=None, heartbeat_timeout_seconds=2,
          retry_policy=RetryPolicy(max_attempts=2, initial_interval=0.05))
    async def beat(self, input: Quiet) -> Attempted:
        attempt = self.task_info.attempt
        mark(os.path.join(input.folder, "attempts"), f"{attempt} {os.getpid()}")
        if input.mode == "beats" or attempt > 1:
            for i in range(12):
                self.heartbeat(Progress(page=i))
                time.sleep(0.3)
            return Attempted(attempt=attempt)
        if input.mode == "stall":
            self.heartbeat(Progress(page=1))
        time.sleep(120)  # alive, silent: only heartbeat_timeout_seconds can catch it
        return Attempted(attempt=attempt)

    async def run(self, input: Quiet) -> Attempted:
        return await self.beat(input)


# ---- lazy references, output files ----------------------------------------------------------


class Rows(Input):
    n: int = 100


class Table(Output):
    data: FileReference
    status: OutputStatus = OutputStatus.PARTIAL_SUCCESS


class Lazy(Input):
    data: FileReference


class LazySeen(Output):
    local_at_start: bool
    rows: int


class FilesApp(App):
    @task
    async def make(self, input: Rows) -> Table:
        table = pa.table({"i": list(range(input.n))})
        return Table(data=arrow.write_table(table, name="rows", tier=StorageTier.RETAINED))

    @task
    async def read_lazily(self, input: Lazy) -> LazySeen:
        at_start = input.data.local_path is not None
        return LazySeen(local_at_start=at_start, rows=arrow.read_table(input.data).num_rows)

    async def run(self, input: Rows) -> Table:
        out = await self.make(input)
        lazy = out.data.model_copy(update={"auto_materialize": False, "local_path": None})
        seen = await self.read_lazily(Lazy(data=lazy))
        if seen.local_at_start or seen.rows != input.n:
            raise NonRetryableError(f"lazy reference was not lazy: {seen}")
        return out


class Handover(Input):
    data: FileReference | None = None


class HandoverApp(App):
    """continue_with an input holding a file of this run: refused (its TRANSIENT objects go
    when it ends, and a continuation reads only its own)."""

    @task
    async def make(self, input: Rows) -> Table:
        return Table(data=arrow.write_table(pa.table({"i": [1, 2]}), name="handover"))

    async def run(self, input: Handover) -> Table:
        out = await self.make(Rows(n=2))
        self.continue_with(Handover(data=out.data))
        return out
