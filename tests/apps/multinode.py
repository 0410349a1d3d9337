"""An app whose tasks report the node they ran on; the first to start lingers, to be cut off."""

from __future__ import annotations

import asyncio
import os
import time

import ray

from application_sdk.app import App, Pool, RetryPolicy, task
from application_sdk.contracts import Input, Output

from .counting import mark


class Spread(Input):
    folder: str
    n: int = 1


class Part(Input):
    folder: str
    index: int


class PartDone(Output):
    index: int
    node: str


class SpreadDone(Output):
    parts: int
    nodes: int


class SpreadApp(App):
    @task(retry_policy=RetryPolicy(max_attempts=1), heartbeat_timeout_seconds=10)
    async def part(self, input: Part) -> PartDone:
        node = ray.get_runtime_context().get_node_id()
        if input.index == 0 and self.task_info.attempt == 1:
            mark(os.path.join(input.folder, "started"), f"{node} {os.getpid()}")
            time.sleep(60)  # the node goes away meanwhile
        time.sleep(0.3)
        mark(os.path.join(input.folder, "done"), f"{input.index} {node}")
        return PartDone(index=input.index, node=node)

    async def run(self, input: Spread) -> SpreadDone:
        parts = await asyncio.gather(*(self.part(Part(folder=input.folder, index=i))
                                       for i in range(input.n)))
        return SpreadDone(parts=len(parts), nodes=len({p.node for p in parts}))


class FreezeApp(SpreadApp):
    """SpreadApp with a short heartbeat timeout: a frozen node is noticed by its silence."""

    @task(name="part", retry_policy=RetryPolicy(max_attempts=1), heartbeat_timeout_seconds=3)
    async def part(self, input: Part) -> PartDone:
        return await SpreadApp.part.__wrapped__(self, input)


class PoolSpreadApp(SpreadApp):
    """SpreadApp's parts on a pool of 2 warm actors: a removed node takes its actor along."""

    pools = {"nodes": Pool(size=2, keep_warm_seconds=0)}

    @task(name="part", pool="nodes", retry_policy=RetryPolicy(max_attempts=1),
          heartbeat_timeout_seconds=10)
    async def part(self, input: Part) -> PartDone:
        return await SpreadApp.part.__wrapped__(self, input)


class FreezePoolApp(SpreadApp):
    """PoolSpreadApp with FreezeApp's short heartbeat timeout: a pool actor on a frozen node is
    noticed by its silence. Its actors need a `pool` resource, which only the node that
    freezes has at first (tests/scenarios/node_loss.py): the silent actor's idle sibling is
    there, and must not take the retry."""

    pools = {"nodes": Pool(size=2, keep_warm_seconds=0, resources={"pool": 1})}

    @task(name="part", pool="nodes", retry_policy=RetryPolicy(max_attempts=1),
          heartbeat_timeout_seconds=3)
    async def part(self, input: Part) -> PartDone:
        return await SpreadApp.part.__wrapped__(self, input)
