"""The app the observability tests run (`observe_app:ObserveApp`): known sleeps, a retried task,
files with rows, a run that can be made to wait.

Self-contained (only `application_sdk`, pyarrow and the standard library), so the folder works
as the service's working directory and on Ray workers by reference.

- `sleeps` are `nap` tasks awaited one after another (sequential), then `parallel` naps of
  `parallel_s` seconds gathered;
- `flaky`: one `flaky` task that fails its first attempt (`ConnectionError`, with
  `flaky_message` when given) and succeeds on its second;
- `fail`: a last `breaks` task fails for good (NonRetryableError): the run ends FAILED;
- `parquet_rows`: one `write_rows` task returning a Parquet FileReference of that many rows;
- `gate`: each `nap` first waits (up to 60 s) until the file `gate` exists, so a test sees the
  run live before it lets tasks finish; `gate_after` naps pass without waiting.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Annotated

from application_sdk.app import App, RetryPolicy, task
from application_sdk.contracts import FileReference, Input, MaxItems, Output
from application_sdk.errors import NonRetryableError


class ObserveInput(Input):
    sleeps: Annotated[list[float], MaxItems(100)] = []
    parallel: int = 0
    parallel_s: float = 0.0
    flaky: bool = False
    flaky_message: str = "the source hung up on attempt 1"
    fail: bool = False
    parquet_rows: int = 0
    gate: str = ""
    gate_after: int = 0


class NapInput(Input):
    index: int
    seconds: float
    gate: str = ""


class NapOutput(Output):
    index: int
    pid: int


class FlakyInput(Input):
    message: str = "the source hung up on attempt 1"


class RowsInput(Input):
    rows: int


class RowsOutput(Output):
    file: FileReference


class ObserveOutput(Output):
    naps: int
    rows: int = 0


class ObserveApp(App):
    @task(timeout_seconds=120)
    async def nap(self, input: NapInput) -> NapOutput:
        if input.gate:
            deadline = time.monotonic() + 60
            while not os.path.exists(input.gate) and time.monotonic() < deadline:
                time.sleep(0.05)
        time.sleep(input.seconds)
        return NapOutput(index=input.index, pid=os.getpid())

    @task(retry_policy=RetryPolicy(max_attempts=3, initial_interval=0.2))
    async def flaky(self, input: FlakyInput) -> NapOutput:
        if self.task_info.attempt == 1:
            raise ConnectionError(input.message)
        return NapOutput(index=-1, pid=os.getpid())

    @task()
    async def breaks(self, input: FlakyInput) -> NapOutput:
        raise NonRetryableError("the source is gone for good")

    @task()
    async def write_rows(self, input: RowsInput) -> RowsOutput:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = os.path.join(self.scratch_dir, "rows.parquet")
        pq.write_table(pa.table({"i": list(range(input.rows))}), path)
        return RowsOutput(file=FileReference(local_path=path, format="parquet"))

    async def run(self, input: ObserveInput) -> ObserveOutput:
        naps = 0
        for i, seconds in enumerate(input.sleeps):
            gate = input.gate if i >= input.gate_after else ""
            await self.nap(NapInput(index=i, seconds=seconds, gate=gate))
            naps += 1
        if input.parallel:
            await asyncio.gather(*(self.nap(NapInput(index=1000 + i, seconds=input.parallel_s))
                                   for i in range(input.parallel)))
            naps += input.parallel
        if input.flaky:
            await self.flaky(FlakyInput(message=input.flaky_message))
        rows = 0
        if input.parquet_rows:
            out = await self.write_rows(RowsInput(rows=input.parquet_rows))
            rows = input.parquet_rows if out.file.is_durable else 0
        if input.fail:
            await self.breaks(FlakyInput(message="gone"))
        return ObserveOutput(naps=naps, rows=rows)
