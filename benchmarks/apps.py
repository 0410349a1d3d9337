"""The apps and raw Ray functions the benchmarks run.

Module-level on purpose: Ray workers import them by reference (`benchmarks.apps.FanApp`), as
they would a user's app, instead of receiving pickled class bodies.

Every app here uses the task defaults users get (retry policy, timeouts, heartbeat settings)
unless the case is about one of them. Contracts hold only ints and bools, so they pass the
payload-safety checks at definition.
"""

from __future__ import annotations

import asyncio
import time

import ray

from application_sdk.app import App, Pool, task
from application_sdk.contracts import Input, Output

__all__ = [
    "POOL_SIZE",
    "Batch",
    "BatchOut",
    "BenchApp",
    "HeartbeatApp",
    "Item",
    "ItemOut",
    "NoHeartbeatApp",
    "PoolBenchApp",
    "RawActor",
    "raw_noop",
    "raw_sleep",
]

BUDGET = 1_000_000
"""Task budget of the bench apps: a resume repeated R times spends 2 cleanup tasks each."""


class Item(Input):
    index: int = 0
    sleep_ms: int = 0


class ItemOut(Output):
    index: int


class Batch(Input):
    n: int
    parallel: bool = True
    """True: asyncio.gather of n calls; False: n awaits one after the other."""
    sleep_ms: int = 0
    """Each task sleeps this long (time.sleep: it holds its worker like real work)."""


class BatchOut(Output):
    count: int
    total: int


async def _orchestrate(call, input: Batch) -> BatchOut:  # type: ignore[no-untyped-def]
    items = [Item(index=i, sleep_ms=input.sleep_ms) for i in range(input.n)]
    if input.parallel:
        outs = await asyncio.gather(*(call(item) for item in items))
    else:
        outs = [await call(item) for item in items]
    return BatchOut(count=len(outs), total=sum(o.index for o in outs))


def _work(input: Item) -> ItemOut:
    if input.sleep_ms:
        time.sleep(input.sleep_ms / 1000)
    return ItemOut(index=input.index)


class BenchApp(App):
    """N no-op (or sleeping) tasks, gathered or sequential, with the default task options."""

    max_task_executions = BUDGET

    @task
    async def work(self, input: Item) -> ItemOut:
        return _work(input)

    async def run(self, input: Batch) -> BatchOut:
        return await _orchestrate(self.work, input)


class HeartbeatApp(App):
    """BenchApp with an automatic heartbeat every second on every task (issue 3)."""

    max_task_executions = BUDGET

    @task(auto_heartbeat_seconds=1)
    async def work(self, input: Item) -> ItemOut:
        return _work(input)

    async def run(self, input: Batch) -> BatchOut:
        return await _orchestrate(self.work, input)


class NoHeartbeatApp(App):
    """BenchApp with heartbeats and the heartbeat timeout turned off."""

    max_task_executions = BUDGET

    @task(auto_heartbeat_seconds=None, heartbeat_timeout_seconds=None)
    async def work(self, input: Item) -> ItemOut:
        return _work(input)

    async def run(self, input: Batch) -> BatchOut:
        return await _orchestrate(self.work, input)


POOL_SIZE = 2
"""Actors of the pool benchmarks (and of the raw actor-call limit): one per core here."""


class PoolBenchApp(App):
    """BenchApp's tasks on a pool of warm executor actors, kept warm across the benchmark's
    runs (its processes exist before the timed run, as the raw actors do)."""

    max_task_executions = BUDGET
    pools = {"bench": Pool(size=POOL_SIZE, keep_warm_seconds=3600)}

    @task(pool="bench")
    async def work(self, input: Item) -> ItemOut:
        return _work(input)

    async def run(self, input: Batch) -> BatchOut:
        return await _orchestrate(self.work, input)


# -- the limit: plain Ray remote functions, same retry options as the runtime's --------------


@ray.remote(max_retries=0, retry_exceptions=False)
def raw_noop(i: int) -> int:
    return i


@ray.remote(max_retries=0, retry_exceptions=False)
def raw_sleep(i: int, sleep_ms: int) -> int:
    time.sleep(sleep_ms / 1000)
    return i


@ray.remote(max_restarts=0, max_task_retries=0)
class RawActor:
    """The limit of a pool: a warm actor's no-op method (Ray's actor defaults, as the pool's)."""

    def noop(self, i: int) -> int:
        return i
