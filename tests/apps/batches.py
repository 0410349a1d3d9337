"""Apps whose tasks run on the default path (Ray tasks), gathered wider than the cluster, so
their attempts go in streaming batches (`runtime.dispatch._batch`).

The tasks are those of `pools.py` (markers in the test's folder: `attempts`, `concurrency`,
`pid`), and each output also names the Ray task that ran the attempt: attempts of one batch
share it.
"""

from __future__ import annotations

import asyncio

import ray

from application_sdk.app import App, RetryPolicy, task
from application_sdk.contracts import BoundedList, Input, Output

from .pools import Done, Many, Work, behave


class RayDone(Done):
    ray_task: str


class Wide(Many):
    slow_from: int = 2
    """Calls before this index take no time (the task's first results measure it short, so
    the rest go in batches), the rest sleep `sleep`."""


class Outcome(Output):
    count: int
    attempts: BoundedList[int] = []
    ray_tasks: BoundedList[str] = []
    cancelled: BoundedList[int] = []


async def _gather(app: App, call, input: Wide, cancel_at: int = -1,  # type: ignore[no-untyped-def]
                  wait: float = 0.5, after: int = 0) -> Outcome:
    items = [Work(folder=input.folder, index=i, sleep=input.sleep if i >= input.slow_from else 0,
                  crash=i in input.crash_at, hang=i in input.hang_at, fail=i == input.fail_at)
             for i in range(input.n)]

    calls = [asyncio.ensure_future(call(item)) for item in items]
    if 0 <= cancel_at < len(calls):
        if after:  # the first `after` calls (the probes) are done: the batches are out
            await asyncio.wait(calls[:after])
        await asyncio.sleep(wait)
        calls[cancel_at].cancel()  # run() gives up on this one call
    outs = [None if isinstance(o, asyncio.CancelledError) else o
            for o in await asyncio.gather(*calls, return_exceptions=True)]
    done = [o for o in outs if o is not None]
    return Outcome(count=len(done), attempts=[o.attempt if o else 0 for o in outs],
                   ray_tasks=[o.ray_task if o else "" for o in outs],
                   cancelled=[i for i, o in enumerate(outs) if o is None])


async def _work(app: App, input: Work) -> RayDone:
    done = await behave(app, input)
    return RayDone(**done.model_dump(), ray_task=ray.get_runtime_context().get_task_id())


class BatchApp(App):
    """Timeouts of 3 s, three attempts, PermissionError non-retryable (as `PoolApp`)."""

    @task(timeout_seconds=3, heartbeat_timeout_seconds=30,
          retry_policy=RetryPolicy(max_attempts=3, initial_interval=0.05,
                                   non_retryable_errors=("PermissionError",)))
    async def work(self, input: Work) -> RayDone:
        return await _work(self, input)

    async def run(self, input: Wide) -> Outcome:
        return await _gather(self, self.work, input)


class LossBatchApp(App):
    """One attempt allowed: only a retry that spends no budget (a lost worker, a silent
    attempt) can succeed. Silent for 3 s: caught."""

    @task(heartbeat_timeout_seconds=3, retry_policy=RetryPolicy(max_attempts=1))
    async def work(self, input: Work) -> RayDone:
        return await _work(self, input)

    async def run(self, input: Wide) -> Outcome:
        return await _gather(self, self.work, input)


class CancelBatchApp(LossBatchApp):
    """run() starts every call and, 0.2 s after the two quick calls that measure the task have
    returned (the batches of the others are then out), gives up on call 9 (cancels it)."""

    async def run(self, input: Wide) -> Outcome:
        return await _gather(self, self.work, input, cancel_at=9, wait=0.2, after=2)


class Seconds(Input):
    seconds: float


class Slept(Output):
    seconds: float


class BlockedBatchApp(BatchApp):
    """One slot of two is held by another task (4 s) while the calls' batches wait for it."""

    @task(timeout_seconds=60)
    async def block(self, input: Seconds) -> Slept:
        import time

        time.sleep(input.seconds)
        return Slept(seconds=input.seconds)

    async def run(self, input: Wide) -> Outcome:
        blocker = asyncio.ensure_future(self.block(Seconds(seconds=4.0)))
        await asyncio.sleep(0.3)  # it holds its slot before the calls come
        out = await _gather(self, self.work, input)
        await blocker
        return out
