"""A small self-contained connector app shipped as the working dir of `ray job submit`.

Only `application_sdk`, fsspec/s3fs and pyarrow are imported, so the directory works as a
job's `--working-dir` on its own (`connector-runtime run my_app:MyApp ...`).

What it does, so tests can see it from the outside (everything lives in the S3 bucket, so it
survives the death of any process):

- each `work` task execution writes one marker object
  `{bucket}/{prefix}/markers/{index:04d}-{uuid}.json` (`{"index", "t", "pid", "node"}`) before
  doing anything else: the number of markers of an index is the number of times that task ran;
- `work` fails (a plain RuntimeError, no retry) when its index is `fail_at` and the object
  `flag` (an `s3://` URL) exists: deleting the flag is "fixing the input source";
- `write_result` writes the run's result `{bucket}/{prefix}/result.parquet` (columns index,
  square) and the run's Output names it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import uuid

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from application_sdk.app import App, RetryPolicy, task
from application_sdk.contracts import Input, Output


class JobInput(Input):
    bucket: str
    prefix: str
    n: int = 10
    sleep_s: float = 0.0
    """How long each `work` task sleeps (after writing its marker)."""
    parallel: bool = True
    """Gather all tasks at once (else one after the other, in index order)."""
    fail_at: int = -1
    """Index of the task that fails while `flag` exists."""
    flag: str = ""
    """`s3://bucket/key` of the flag object."""
    mark_below: int = -1
    """Only tasks with a smaller index write markers (-1: all of them)."""


class ItemInput(Input):
    bucket: str
    prefix: str
    index: int
    sleep_s: float = 0.0
    fail: bool = False
    flag: str = ""
    mark: bool = True


class ItemOutput(Output):
    index: int
    square: int


class ResultInput(Input):
    bucket: str
    prefix: str
    n: int


class ResultOutput(Output):
    url: str
    rows: int
    total: int


class JobOutput(Output):
    count: int
    total: int
    result: str


def _fs():
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    return fs


class MyApp(App):
    @task(timeout_seconds=120, retry_policy=RetryPolicy(max_attempts=1))
    async def work(self, input: ItemInput) -> ItemOutput:
        fs = _fs()
        if input.mark:
            marker = {"index": input.index, "t": time.time(), "pid": os.getpid(),
                      "node": socket.gethostname()}
            key = f"{input.bucket}/{input.prefix}/markers/{input.index:04d}-{uuid.uuid4().hex}"
            fs.pipe_file(key + ".json", json.dumps(marker).encode())
        if input.sleep_s:
            time.sleep(input.sleep_s)
        if input.fail and input.flag and fs.exists(input.flag):
            raise RuntimeError(f"item {input.index}: input source is broken ({input.flag} exists)")
        return ItemOutput(index=input.index, square=input.index * input.index)

    @task(timeout_seconds=120)
    async def write_result(self, input: ResultInput) -> ResultOutput:
        indexes = list(range(input.n))
        table = pa.table({"index": indexes, "square": [i * i for i in indexes]})
        url = f"s3://{input.bucket}/{input.prefix}/result.parquet"
        with _fs().open(url, "wb") as fh:
            pq.write_table(table, fh)
        return ResultOutput(url=url, rows=table.num_rows, total=sum(i * i for i in indexes))

    async def run(self, input: JobInput) -> JobOutput:
        items = [
            ItemInput(bucket=input.bucket, prefix=input.prefix, index=i, sleep_s=input.sleep_s,
                      fail=i == input.fail_at, flag=input.flag,
                      mark=input.mark_below < 0 or i < input.mark_below)
            for i in range(input.n)
        ]
        if input.parallel:
            outs = await asyncio.gather(*(self.work(item) for item in items))
        else:
            outs = [await self.work(item) for item in items]
        result = await self.write_result(
            ResultInput(bucket=input.bucket, prefix=input.prefix, n=input.n))
        assert result.total == sum(o.square for o in outs)
        return JobOutput(count=len(outs), total=result.total, result=result.url)
