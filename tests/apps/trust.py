"""Apps for the trust tests: hand-offs through TRANSIENT files, slow sequences to freeze a
driver in, gathers that fail, and branches that take recorded values."""

from __future__ import annotations

import asyncio
import os
import time

from application_sdk.app import App, RetryPolicy, task, uuid4
from application_sdk.contracts import BoundedList, FileReference, Input, Output, StorageTier
from application_sdk.errors import NonRetryableError

from .counting import mark


class Folder(Input):
    folder: str
    n: int = 3
    seconds: float = 0.0


class Item(Input):
    folder: str
    index: int
    seconds: float = 0.0
    tag: str = ""


class ItemDone(Output):
    index: int
    tag: str = ""


class Total(Output):
    total: int
    tags: BoundedList[str] = []


def _item(folder: str, index: int, seconds: float, what: str = "item") -> None:
    mark(os.path.join(folder, "executions"), f"{what} {index} start")
    if seconds:
        time.sleep(seconds)


# -- a hand-off through a TRANSIENT file ------------------------------------------------------

class Made(Output):
    data: FileReference


class Use(Input):
    folder: str
    data: FileReference


class Used(Output):
    size: int


class HandOffApp(App):
    @task(retry_policy=RetryPolicy(max_attempts=1))
    async def make(self, input: Folder) -> Made:
        path = os.path.join(self.scratch_dir, "made.bin")
        with open(path, "wb") as fh:
            fh.write(b"x" * 4096)
        mark(os.path.join(input.folder, "executions"), "make")
        return Made(data=FileReference(local_path=path, tier=StorageTier.TRANSIENT))

    @task(retry_policy=RetryPolicy(max_attempts=1))
    async def use(self, input: Use) -> Used:
        mark(os.path.join(input.folder, "executions"), "use")
        with open(input.data.local_path, "rb") as fh:
            return Used(size=len(fh.read()))

    async def run(self, input: Folder) -> Used:
        made = await self.make(input)
        return await self.use(Use(folder=input.folder, data=made.data))


# -- a sequence of slow tasks (a driver to freeze or kill mid-run) ----------------------------

class SequenceApp(App):
    @task(retry_policy=RetryPolicy(max_attempts=1))
    async def step(self, input: Item) -> ItemDone:
        _item(input.folder, input.index, input.seconds)
        mark(os.path.join(input.folder, "executions"), f"item {input.index} end")
        return ItemDone(index=input.index)

    async def run(self, input: Folder) -> Total:
        total = 0
        for i in range(input.n):
            total += (await self.step(Item(folder=input.folder, index=i,
                                           seconds=input.seconds))).index
        return Total(total=total)


# -- a gather in which one task fails while its siblings are slow ----------------------------

class FailingGatherApp(App):
    @task(retry_policy=RetryPolicy(max_attempts=3, initial_interval=0.01))
    async def slow(self, input: Item) -> ItemDone:
        mark(os.path.join(input.folder, "starts"), f"{input.index} {time.time()}")
        _item(input.folder, input.index, input.seconds, "slow")
        return ItemDone(index=input.index)

    @task(retry_policy=RetryPolicy(max_attempts=3, initial_interval=0.01))
    async def broken(self, input: Item) -> ItemDone:
        _item(input.folder, input.index, 0.2, "broken")
        raise NonRetryableError("the source table does not exist")

    async def run(self, input: Folder) -> Total:
        outs = await asyncio.gather(
            self.broken(Item(folder=input.folder, index=-1)),
            *(self.slow(Item(folder=input.folder, index=i, seconds=input.seconds))
              for i in range(input.n)),
        )
        return Total(total=len(outs))


# -- recorded values taken in gathered branches ------------------------------------------------

class Branch(Input):
    folder: str
    name: str
    seconds: float


class BranchesApp(App):
    """Two branches take uuid4() after tasks of different lengths: on the first run the short
    branch takes its value first; on a replay the recorded tasks resolve at once in gather
    order, so the long branch would reach uuid4() first. Each must get its own value back."""

    @task(retry_policy=RetryPolicy(max_attempts=1))
    async def wait(self, input: Branch) -> ItemDone:
        _item(input.folder, 0, input.seconds, f"wait-{input.name}")
        return ItemDone(index=0, tag=input.name)

    @task(retry_policy=RetryPolicy(max_attempts=1))
    async def use(self, input: Item) -> ItemDone:
        mark(os.path.join(input.folder, "executions"), f"use {input.tag}")
        return ItemDone(index=input.index, tag=input.tag)

    @task(retry_policy=RetryPolicy(max_attempts=1))
    async def last(self, input: Folder) -> ItemDone:
        mark(os.path.join(input.folder, "executions"), "last")
        if os.path.exists(os.path.join(input.folder, "fail-last")):
            raise RuntimeError("last fails while the flag file exists")
        return ItemDone(index=0)

    async def branch(self, folder: str, name: str, seconds: float) -> str:
        await self.wait(Branch(folder=folder, name=name, seconds=seconds))
        value = uuid4()
        done = await self.use(Item(folder=folder, index=0, tag=f"{name}={value}"))
        return done.tag

    async def run(self, input: Folder) -> Total:
        tags = await asyncio.gather(self.branch(input.folder, "long", 1.5),
                                    self.branch(input.folder, "short", 0.0))
        await self.last(input)
        return Total(total=len(tags), tags=list(tags))


# -- a recorded value whose journal segment is corrupted -------------------------------------

class Echo(Input):
    folder: str
    text: str


class Echoed(Output):
    text: str


class Own(Output):
    own: bool


class ValueThenGate(App):
    """Takes a uuid4() (journaled in a segment of its own before the task that uses it), echoes
    it through a task, then fails at a gate while the folder's "closed" flag exists."""

    @task
    async def echo(self, input: Echo) -> Echoed:
        mark(os.path.join(input.folder, "executions"), "echo")
        return Echoed(text=input.text)

    @task(retry_policy=RetryPolicy(max_attempts=1))
    async def gate(self, input: Folder) -> ItemDone:
        if os.path.exists(os.path.join(input.folder, "closed")):
            raise NonRetryableError("the gate is closed")
        return ItemDone(index=0)

    async def run(self, input: Folder) -> Own:
        taken = str(uuid4())
        echoed = await self.echo(Echo(folder=input.folder, text=taken))
        await self.gate(input)
        return Own(own=echoed.text == taken)
