"""Apps whose tasks run on pools of warm executor actors (`@task(pool=...)`)."""

from __future__ import annotations

import asyncio
import os
import time

from application_sdk.app import App, Pool, RetryPolicy, task
from application_sdk.contracts import BoundedList, Input, Output

from .counting import mark


class Work(Input):
    folder: str
    index: int = 0
    sleep: float = 0.0
    crash: bool = False
    """os._exit on the first attempt."""
    hang: bool = False
    """Sleep an hour on the first attempt."""


class Done(Output):
    index: int
    attempt: int
    pid: int


class Many(Input):
    folder: str
    n: int = 10
    sleep: float = 0.0
    parallel: bool = True
    crash_at: int = -1
    hang_at: int = -1


class Summary(Output):
    count: int
    pids: BoundedList[int] = []
    attempts: BoundedList[int] = []


def _running(folder: str, pid: int, what: str) -> None:
    mark(os.path.join(folder, "events"), f"{what} {pid} {time.monotonic():.6f}")


class PoolApp(App):
    """A pool of 2; tasks mark when they start and end (with their pid)."""

    pools = {"source": Pool(size=2, keep_warm_seconds=5)}

    @task(pool="source", timeout_seconds=3, retry_policy=RetryPolicy(max_attempts=3,
                                                                     initial_interval=0.05))
    async def work(self, input: Work) -> Done:
        pid, attempt = os.getpid(), self.task_info.attempt
        _running(input.folder, pid, "start")
        mark(os.path.join(input.folder, "attempts"), f"{input.index} {attempt} {pid}")
        if attempt == 1 and input.crash:
            _running(input.folder, pid, "end")
            os._exit(1)
        if attempt == 1 and input.hang:
            time.sleep(3600)
        time.sleep(input.sleep)
        _running(input.folder, pid, "end")
        return Done(index=input.index, attempt=attempt, pid=pid)

    async def run(self, input: Many) -> Summary:
        items = [Work(folder=input.folder, index=i, sleep=input.sleep, crash=i == input.crash_at,
                      hang=i == input.hang_at) for i in range(input.n)]
        if input.parallel:
            outs = await asyncio.gather(*(self.work(item) for item in items))
        else:
            outs = [await self.work(item) for item in items]
        return Summary(count=len(outs), pids=[o.pid for o in outs],
                       attempts=[o.attempt for o in outs])
