"""Apps for the FileReference integrity tests on Ray (tests/test_files_ray.py).

- `CheckedSumApp`: `produce` writes a PERSISTENT Arrow file (uncompressed, so a flipped byte
  changes a value and nothing else notices); `consume` waits at a gate, then sums the values.
  A wrong sum is a silent wrong result.
- `LeftoverApp`: its task uploads a PERSISTENT file and then fails (output over the payload
  limit), as an attempt killed after its upload does: an object no record points at.
"""

from __future__ import annotations

import os
import time

import pyarrow as pa
import pyarrow.compute as pc

from application_sdk.app import App, task
from application_sdk.contracts import FileReference, Input, Output, StorageTier
from storage import arrow

from .counting import mark


class ProduceIn(Input):
    rows: int = 200_000
    count_file: str = ""
    gate: str = ""
    """If set, `consume` waits (up to 120 s) until this file exists, after its input is
    materialized, and writes its pid to `{gate}.pid` first."""


class Produced(Output):
    data: FileReference


class ConsumeIn(Input):
    data: FileReference
    count_file: str = ""
    gate: str = ""


class Sum(Output):
    total: int
    rows: int


def values(rows: int) -> pa.Table:
    return pa.table({"v": pa.array(range(rows), pa.int64())})


def expected_sum(rows: int) -> int:
    return rows * (rows - 1) // 2


class CheckedSumApp(App):
    @task(timeout_seconds=120)
    async def produce(self, input: ProduceIn) -> Produced:
        if input.count_file:
            mark(input.count_file, "produce")
        ref = arrow.write_table(values(input.rows), format="arrow", name="values",
                                tier=StorageTier.PERSISTENT)
        return Produced(data=ref)

    @task(timeout_seconds=300)
    async def consume(self, input: ConsumeIn) -> Sum:
        if input.count_file:
            mark(input.count_file, "consume")
        if input.gate:
            mark(input.gate + ".pid", str(os.getpid()))
            deadline = time.monotonic() + 120
            while not os.path.exists(input.gate) and time.monotonic() < deadline:
                time.sleep(0.05)
        table = arrow.read_table(input.data)
        return Sum(total=pc.sum(table["v"]).as_py() or 0, rows=table.num_rows)

    async def run(self, input: ProduceIn) -> Sum:
        made = await self.produce(input)
        return await self.consume(ConsumeIn(data=made.data, count_file=input.count_file,
                                            gate=input.gate))


class LeftoverIn(Input):
    blob_bytes: int = 8000


class TooBig(Output):
    data: FileReference
    blob: str


class LeftoverApp(App):
    payload_limit_bytes = 4096

    @task(timeout_seconds=60)
    async def upload_then_fail(self, input: LeftoverIn) -> TooBig:
        ref = arrow.write_table(values(1000), format="arrow", name="kept",
                                tier=StorageTier.PERSISTENT)
        return TooBig(data=ref, blob="x" * input.blob_bytes)

    async def run(self, input: LeftoverIn) -> TooBig:
        return await self.upload_then_fail(input)
