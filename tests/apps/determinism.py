"""Apps for determinism and contract tests."""

from __future__ import annotations

import asyncio
import datetime
import gc
import logging
import os
import random
import socket
import subprocess
import threading
import time
import uuid
from datetime import datetime as imported_datetime
from time import time as imported_time
from uuid import uuid4 as imported_uuid4

from application_sdk.app import App, RetryPolicy, now, task, uuid4
from application_sdk.contracts import Input, Output

from . import guard_helper
from .counting import mark


def _local_datetime_now() -> object:
    import datetime as local  # a function-local import: the real module, never patched

    return local.datetime.now()


def forbidden_call(name: str, folder: str) -> object:
    calls = {
        "local import datetime": _local_datetime_now,
        "helper module clock": lambda: guard_helper.elapsed_since(0.0),
        "helper module perf_counter": guard_helper.tick,
        "time.monotonic": lambda: time.monotonic(),
        "time.perf_counter": lambda: time.perf_counter(),
        "random.Random()": lambda: random.Random().random(),
        "random.SystemRandom()": lambda: random.SystemRandom().random(),
        "date.today": lambda: datetime.date.today(),
        "datetime.now": lambda: imported_datetime.now(),
        "datetime.utcnow": lambda: datetime.datetime.utcnow(),
        "module datetime.now": lambda: datetime.datetime.now(),
        "time.time": lambda: time.time(),
        "imported time": lambda: imported_time(),
        "uuid.uuid4": lambda: uuid.uuid4(),
        "imported uuid4": lambda: imported_uuid4(),
        "uuid.uuid1": lambda: uuid.uuid1(),
        "random.random": lambda: random.random(),
        "random.choice": lambda: random.choice([1, 2]),
        "os.urandom": lambda: os.urandom(4),
        "open": lambda: open(os.path.join(folder, "written"), "w"),
        "socket": lambda: socket.socket(),
        "subprocess": lambda: subprocess.run(["true"]),
        "thread": lambda: threading.Thread(target=print).start(),
        "import": lambda: __import__("msgpack"),
    }
    return calls[name]()


class Call(Input):
    name: str
    folder: str


class Done(Output):
    ok: bool


class GuardedApp(App):
    @task
    async def probe(self, input: Call) -> Done:
        mark(os.path.join(input.folder, "probe"), "ran")
        return Done(ok=True)

    @task
    async def do_call(self, input: Call) -> Done:
        forbidden_call(input.name, input.folder)  # fine inside a task
        return Done(ok=True)

    async def run(self, input: Call) -> Done:
        if input.name.startswith("task:"):
            return await self.do_call(Call(name=input.name[5:], folder=input.folder))
        if input.name.startswith("after-tasks:"):  # guards hold after (replayed) task calls
            name = input.name.removeprefix("after-tasks:")
            await asyncio.gather(*(self.probe(Call(name=f"p{i}", folder=input.folder))
                                   for i in range(3)))
            forbidden_call(name, input.folder)
            return Done(ok=True)
        if input.name == "import msgpack":
            import msgpack  # noqa: F401

            return await self.probe(input)
        forbidden_call(input.name, input.folder)
        return await self.probe(input)


def allowed_call(name: str) -> object:
    """Deterministic (or the runtime's own) calls that run() may make."""
    calls = {
        "seeded random.Random": lambda: random.Random(42).random(),
        "logging": lambda: logging.getLogger("tests.guarded").warning("from run()"),
        "datetime arithmetic": lambda: datetime.datetime(2026, 1, 1) + datetime.timedelta(1),
        "a gc callback's clock": _collect_with_a_timing_callback,
    }
    return calls[name]()


def _collect_with_a_timing_callback() -> None:
    """A library's gc callback (Hypothesis installs one) reads the clock when a collection
    runs inside run(): not run()'s call, so not refused."""
    seen = []

    def timing(phase: str, info: dict) -> None:
        seen.append(time.perf_counter())

    gc.callbacks.append(timing)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(timing)
    assert len(seen) == 2, seen


class AllowedApp(App):
    @task
    async def probe(self, input: Call) -> Done:
        return Done(ok=True)

    async def run(self, input: Call) -> Done:
        allowed_call(input.name)
        await asyncio.wait_for(self.probe(input), timeout=60)  # the loop's own clock
        return await self.probe(input)


class PassthroughApp(App, passthrough_modules=["msgpack"]):
    @task
    async def probe(self, input: Call) -> Done:
        return Done(ok=True)

    async def run(self, input: Call) -> Done:
        import msgpack

        assert msgpack.unpackb(msgpack.packb(1)) == 1
        return await self.probe(input)


class Stamp(Output):
    at: str
    id: str
    slept: bool = False


class Folder(Input):
    folder: str
    sleep: float = 0.0


class StampApp(App):
    @task(retry_policy=RetryPolicy(max_attempts=1))
    async def slow(self, input: Folder) -> Done:
        mark(os.path.join(input.folder, "slow"), "started")
        while os.path.exists(os.path.join(input.folder, "hold")):
            time.sleep(0.05)
        if os.path.exists(os.path.join(input.folder, "fail")):
            raise RuntimeError("failing while the flag is there")
        return Done(ok=True)

    async def run(self, input: Folder) -> Stamp:
        at, ident = now(), uuid4()
        if input.sleep:
            await asyncio.sleep(input.sleep)  # a durable timer
        await self.slow(input)
        return Stamp(at=at.isoformat(), id=str(ident), slept=bool(input.sleep))


class Big(Output):
    blob: str


class BigApp(App):
    @task(retry_policy=RetryPolicy(max_attempts=3, initial_interval=0.05))
    async def big(self, input: Folder) -> Big:
        mark(os.path.join(input.folder, "big"), "attempt")
        return Big(blob="x" * (5 * 2**20))

    async def run(self, input: Folder) -> Big:
        return await self.big(input)


# -- divergence: three versions of one app (same name in the store) ---------------------------


class Step(Input):
    folder: str
    name: str


class Stepped(Output):
    name: str


class Steps(Output):
    done: str


async def _step(folder: str, name: str) -> Stepped:
    mark(os.path.join(folder, "steps"), name)
    if os.path.exists(os.path.join(folder, f"fail-{name}")):
        raise RuntimeError(f"step {name} fails while its flag is there")
    return Stepped(name=name)


class DivergeV1(App, name="Diverge"):
    @task(retry_policy=RetryPolicy(max_attempts=1))
    async def extract(self, input: Step) -> Stepped:
        return await _step(input.folder, input.name)

    @task(retry_policy=RetryPolicy(max_attempts=1))
    async def load(self, input: Step) -> Stepped:
        return await _step(input.folder, input.name)

    async def run(self, input: Folder) -> Steps:
        a = await self.extract(Step(folder=input.folder, name="extract"))
        b = await self.load(Step(folder=input.folder, name="load"))
        return Steps(done=f"{a.name}+{b.name}")


class DivergeV2(App, name="Diverge"):
    """run() edited: extract is skipped, without bumping the version."""

    @task(retry_policy=RetryPolicy(max_attempts=1))
    async def load(self, input: Step) -> Stepped:
        return await _step(input.folder, input.name)

    async def run(self, input: Folder) -> Steps:
        b = await self.load(Step(folder=input.folder, name="load"))
        return Steps(done=b.name)


class DivergeV3(DivergeV2, name="Diverge"):
    version = 2


# -- contract evolution --------------------------------------------------------------------------


class RowsV1(Output):
    rows: int


class RowsV2(Output):
    rows: int
    unit: str = "rows"


class RowsV3(Output):
    rows: int
    table: str


class _EvolvingBase(App, name="Evolving"):
    @task(retry_policy=RetryPolicy(max_attempts=1))
    async def finish(self, input: Step) -> Stepped:
        return await _step(input.folder, input.name)

    async def run(self, input: Folder) -> Steps:
        counted = await self.count(input)
        await self.finish(Step(folder=input.folder, name="finish"))
        return Steps(done=f"{counted.rows}")


class EvolvingV1(_EvolvingBase, name="Evolving"):
    @task(retry_policy=RetryPolicy(max_attempts=1))
    async def count(self, input: Folder) -> RowsV1:
        mark(os.path.join(input.folder, "count"), "V1")
        return RowsV1(rows=7)


class EvolvingV2(_EvolvingBase, name="Evolving"):
    """Adds a field with a default to the task's Output: old journals stay readable."""

    @task(retry_policy=RetryPolicy(max_attempts=1))
    async def count(self, input: Folder) -> RowsV2:
        mark(os.path.join(input.folder, "count"), "V2")
        return RowsV2(rows=7)


class EvolvingV3(_EvolvingBase, name="Evolving"):
    """Adds a required field: a breaking change."""

    @task(retry_policy=RetryPolicy(max_attempts=1))
    async def count(self, input: Folder) -> RowsV3:
        mark(os.path.join(input.folder, "count"), "V3")
        return RowsV3(rows=7, table="t")


class NapApp(App):
    """Sleeps through a helper module's `from asyncio import sleep`, then fails once."""

    @task(retry_policy=RetryPolicy(max_attempts=1))
    async def after(self, input: Folder) -> Done:
        if os.path.exists(os.path.join(input.folder, "fail")):
            raise RuntimeError("failing while the flag is there")
        return Done(ok=True)

    async def run(self, input: Folder) -> Done:
        await guard_helper.nap(input.sleep)
        return await self.after(input)
