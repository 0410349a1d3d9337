"""Apps whose tasks leave side effects in files, so tests can count what really ran."""

from __future__ import annotations

import asyncio
import os
import random
import time

from application_sdk.app import App, RetryPolicy, task
from application_sdk.contracts import Input, Output


def mark(path: str, line: str) -> None:
    """Append one line atomically (O_APPEND writes of a short line do not interleave)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


class BatchInput(Input):
    count_file: str
    n: int = 10
    parallel: bool = False
    jitter_ms: int = 0
    """Each task sleeps a random 0..jitter_ms, so gathered tasks finish in random order."""
    fail_at: int = -1
    """Task index that raises (to fail a run)..."""
    broken_flag: str = ""
    """...only while this file exists, if set: deleting it is "fixing the credential"."""


class ItemInput(Input):
    count_file: str
    index: int
    jitter_ms: int = 0
    fail: bool = False
    broken_flag: str = ""


class ItemOutput(Output):
    index: int
    square: int


class BatchOutput(Output):
    total: int
    count: int


class CountingApp(App):
    @task(timeout_seconds=60, retry_policy=RetryPolicy(max_attempts=1))
    async def work(self, input: ItemInput) -> ItemOutput:
        if input.jitter_ms:
            time.sleep(random.random() * input.jitter_ms / 1000)
        if input.fail and (not input.broken_flag or os.path.exists(input.broken_flag)):
            raise RuntimeError(f"item {input.index} is broken")
        mark(input.count_file, f"work {input.index}")
        return ItemOutput(index=input.index, square=input.index * input.index)

    async def run(self, input: BatchInput) -> BatchOutput:
        items = [
            ItemInput(
                count_file=input.count_file,
                index=i,
                jitter_ms=input.jitter_ms,
                fail=i == input.fail_at,
                broken_flag=input.broken_flag,
            )
            for i in range(input.n)
        ]
        if input.parallel:
            outs = await asyncio.gather(*(self.work(item) for item in items))
        else:
            outs = [await self.work(item) for item in items]
        assert [o.index for o in outs] == list(range(input.n))
        return BatchOutput(total=sum(o.square for o in outs), count=len(outs))

    async def on_complete(self) -> None:
        await super().on_complete()
