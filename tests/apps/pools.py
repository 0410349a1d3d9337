"""Apps whose tasks run on pools of warm executor actors (`@task(pool=...)`).

Tasks leave markers in a folder the test gives them: `attempts` (index, attempt, pid),
`concurrency` (how many attempts of the pool were running, this one included, when it
started: counted from one marker file per running process whose process is alive), `pid` (the
process of an attempt a test will freeze or kill).
"""

from __future__ import annotations

import asyncio
import os
import time

from application_sdk.app import App, Pool, RetryPolicy, task
from application_sdk.contracts import BoundedList, HeartbeatDetails, Input, Output

from .counting import mark


class Work(Input):
    folder: str
    index: int = 0
    sleep: float = 0.0
    crash: bool = False
    """os._exit on the first attempt, as an OOM kill would end it."""
    hang: bool = False
    """Sleep an hour on the first attempt (past its timeout)."""
    fail: bool = False
    """Raise a non-retryable error."""
    poison: bool = False
    """os._exit on every attempt."""


class Done(Output):
    index: int
    attempt: int
    pid: int
    leaked: int = 0
    """Attempts this process ran before this one (state a leaking connector keeps)."""


class Many(Input):
    folder: str
    n: int = 10
    sleep: float = 0.0
    parallel: bool = True
    crash_at: BoundedList[int] = []
    hang_at: BoundedList[int] = []
    fail_at: int = -1
    poison_at: int = -1


class Summary(Output):
    count: int
    pids: BoundedList[int] = []
    attempts: BoundedList[int] = []
    leaked: BoundedList[int] = []


_LEAK: list[int] = []
"""Grows with every attempt a process runs: what a fresh actor starts without."""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def enter(folder: str) -> None:
    """Count the attempts running now (markers of live processes, this one included)."""
    running = os.path.join(folder, "running")
    os.makedirs(running, exist_ok=True)
    open(os.path.join(running, str(os.getpid())), "w").close()
    live = sum(1 for name in os.listdir(running) if _alive(int(name)))
    mark(os.path.join(folder, "concurrency"), str(live))


def leave(folder: str) -> None:
    os.unlink(os.path.join(folder, "running", str(os.getpid())))


async def behave(app: App, input: Work) -> Done:
    pid, attempt = os.getpid(), app.task_info.attempt
    enter(input.folder)
    mark(os.path.join(input.folder, "attempts"), f"{input.index} {attempt} {pid}")
    if (attempt == 1 and input.crash) or input.poison:
        leave(input.folder)
        os._exit(1)
    if attempt == 1 and input.hang:
        mark(os.path.join(input.folder, "pid"), str(pid))
        time.sleep(3600)
    if input.fail:
        leave(input.folder)
        raise PermissionError(f"item {input.index}: access denied")
    time.sleep(input.sleep)
    leave(input.folder)
    _LEAK.append(input.index)
    return Done(index=input.index, attempt=attempt, pid=pid, leaked=len(_LEAK) - 1)


async def orchestrate(call, input: Many) -> Summary:  # type: ignore[no-untyped-def]
    items = [Work(folder=input.folder, index=i, sleep=input.sleep, crash=i in input.crash_at,
                  hang=i in input.hang_at, fail=i == input.fail_at,
                  poison=i == input.poison_at) for i in range(input.n)]
    if input.parallel:
        outs = await asyncio.gather(*(call(item) for item in items))
    else:
        outs = [await call(item) for item in items]
    return Summary(count=len(outs), pids=[o.pid for o in outs],
                   attempts=[o.attempt for o in outs], leaked=[o.leaked for o in outs])


class PoolApp(App):
    """A pool of 2: timeouts of 3 s, three attempts, PermissionError is non-retryable."""

    pools = {"source": Pool(size=2, keep_warm_seconds=2)}

    @task(pool="source", timeout_seconds=3, heartbeat_timeout_seconds=30,
          retry_policy=RetryPolicy(max_attempts=3, initial_interval=0.05,
                                   non_retryable_errors=("PermissionError",)))
    async def work(self, input: Work) -> Done:
        return await behave(self, input)

    async def run(self, input: Many) -> Summary:
        return await orchestrate(self.work, input)


class LossApp(App):
    """One attempt allowed: only a retry that spends no budget (a lost worker) can succeed.
    A silent attempt (frozen process) is caught after 3 s of no heartbeat."""

    pools = {"source": 2}

    @task(pool="source", heartbeat_timeout_seconds=3, retry_policy=RetryPolicy(max_attempts=1))
    async def work(self, input: Work) -> Done:
        return await behave(self, input)

    async def run(self, input: Many) -> Summary:
        return await orchestrate(self.work, input)


class RecycleApp(App):
    """A pool of one actor replaced after every 3 attempts."""

    pools = {"leaky": Pool(size=1, max_attempts_per_actor=3, keep_warm_seconds=0)}

    @task(pool="leaky")
    async def work(self, input: Work) -> Done:
        return await behave(self, input)

    async def run(self, input: Many) -> Summary:
        return await orchestrate(self.work, input)


class BudgetPoolApp(App):
    max_task_executions = 5
    pools = {"source": Pool(size=2, keep_warm_seconds=0)}

    @task(pool="source")
    async def work(self, input: Work) -> Done:
        return await behave(self, input)

    async def run(self, input: Many) -> Summary:
        return await orchestrate(self.work, input)


class Page(HeartbeatDetails):
    page: int


class Pages(Output):
    first_page_of_last_attempt: int


class PagingPoolApp(App):
    """Fetches pages 1..10 on a pool; attempt 1 dies (os._exit) on page 7."""

    pools = {"api": Pool(size=1, keep_warm_seconds=0)}

    @task(pool="api", heartbeat_timeout_seconds=30, retry_policy=RetryPolicy(max_attempts=1))
    async def fetch_all(self, input: Work) -> Pages:
        resume = self.get_heartbeat_details(Page)
        start = resume.page if resume else 1
        for page in range(start, 11):
            self.heartbeat(Page(page=page))
            mark(os.path.join(input.folder, "pages"), f"{page} {self.task_info.attempt}")
            if page == 7 and self.task_info.attempt == 1:
                time.sleep(0.5)  # the beat with page 7 reaches the monitor
                os._exit(1)
        return Pages(first_page_of_last_attempt=start)

    async def run(self, input: Work) -> Pages:
        return await self.fetch_all(input)


class SlowPoolApp(App):
    """n sequential tasks of 0.2 s on a pool of 2 (for cancellation)."""

    pools = {"source": Pool(size=2, keep_warm_seconds=0)}

    @task(pool="source")
    async def work(self, input: Work) -> Done:
        mark(os.path.join(input.folder, "items"), f"start {input.index} {os.getpid()}")
        time.sleep(0.2)
        mark(os.path.join(input.folder, "items"), f"end {input.index}")
        return Done(index=input.index, attempt=self.task_info.attempt, pid=os.getpid())

    async def run(self, input: Many) -> Summary:
        return await orchestrate(self.work, input)


class BusyPoolApp(App):
    """Attempts that block 4 s in `time.sleep` on a pool of 2 whose silence limit is 2 s: only
    the actor process's own heartbeat thread keeps them alive."""

    pools = {"source": Pool(size=2, keep_warm_seconds=0)}

    @task(pool="source", heartbeat_timeout_seconds=2, retry_policy=RetryPolicy(max_attempts=1))
    async def work(self, input: Work) -> Done:
        return await behave(self, input)

    async def run(self, input: Many) -> Summary:
        return await orchestrate(self.work, input)


class StuckPoolApp(App):
    """Attempt 1 beats the same details for 30 s on a pool (busy, not progressing): the
    progress watchdog stops it after 2 s; attempt 2 returns at once."""

    pools = {"source": Pool(size=1, keep_warm_seconds=0)}

    @task(pool="source", heartbeat_timeout_seconds=30, max_no_progress_seconds=2,
          enforce_progress=True, retry_policy=RetryPolicy(max_attempts=2, initial_interval=0.1))
    async def spin(self, input: Work) -> Done:
        pid, attempt = os.getpid(), self.task_info.attempt
        mark(os.path.join(input.folder, "attempts"), f"{input.index} {attempt} {pid}")
        if attempt == 1:
            for _ in range(300):
                self.heartbeat(Page(page=1))
                time.sleep(0.1)
        return Done(index=input.index, attempt=attempt, pid=pid)

    async def run(self, input: Work) -> Done:
        return await self.spin(input)


class CrashPoolApp(App):
    """n sequential tasks of 0.05 s on a pool of 2 (a driver is SIGKILLed among them)."""

    pools = {"source": Pool(size=2, keep_warm_seconds=0)}

    @task(pool="source")
    async def work(self, input: Work) -> Done:
        mark(os.path.join(input.folder, "attempts"),
             f"{input.index} {self.task_info.attempt} {os.getpid()}")
        time.sleep(input.sleep)
        return Done(index=input.index, attempt=self.task_info.attempt, pid=os.getpid())

    async def run(self, input: Many) -> Summary:
        return await orchestrate(self.work, input)


class Resources(Output):
    resources: str
    """JSON of the resources Ray assigned the process that ran the attempt."""


class PlacedPoolApp(App):
    """A pool whose actors hold half a CPU and 50 MiB each."""

    pools = {"half": Pool(size=1, num_cpus=0.5, memory=50 * 2**20, keep_warm_seconds=0)}

    @task(pool="half")
    async def where(self, input: Work) -> Resources:
        import json

        import ray

        return Resources(resources=json.dumps(
            ray.get_runtime_context().get_assigned_resources()))

    async def run(self, input: Work) -> Resources:
        return await self.where(input)


class UnplaceablePoolApp(App):
    """A pool whose actors need a resource no node has."""

    pools = {"pod": Pool(size=1, resources={"tpu_pod": 1}, keep_warm_seconds=0)}

    @task(pool="pod")
    async def train(self, input: Work) -> Done:
        return Done(index=0, attempt=self.task_info.attempt, pid=os.getpid())

    async def run(self, input: Work) -> Done:
        return await self.train(input)
