"""Generated app shapes: a program (a tree of steps) that one interpreter App runs.

A program is JSON: `{"t": "task", "id", "ms", "flaky"}` (a task that sleeps `ms` and fails its
first `flaky` attempts), `{"t": "seq", "c": [...]}`, `{"t": "gather", "c": [...]}` (branches
in `asyncio.gather`), `{"t": "if", "id", "then", "else"}` (a task, then a branch chosen by its
output), `{"t": "value", "id", "kind"}` (`uuid4()`/`now()`/`random()` taken in the branch, then
fed to a task that echoes it back: the branch must get its own value), `{"t": "sleep", "ms"}`
(a durable timer), `{"t": "file", "id", "kb"}` (a FileReference handed from a producer to a
consumer that checksums it), `{"t": "fatal", "id"}` (a non-retryable failure run() catches).

What run() returns is a list of lines that depends only on the program: two executions of the
same program, however disturbed, must return the same lines. Every task attempt appends
`"{id} {attempt}"` to the execution log, so the harness counts what ran.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from typing import Any

from hypothesis import strategies as st

from application_sdk.app import App, RetryPolicy, entrypoint, now, random, task, uuid4
from application_sdk.contracts import BoundedList, FileReference, Input, Output, StorageTier
from application_sdk.errors import NonRetryableError

__all__ = ["Program", "ShapeApp", "ShapeAppV2", "programs", "random_program"]


class Program(Input):
    program: str
    """The program, as JSON text."""
    log: str
    """File every task attempt appends a line to."""


class Lines(Output):
    lines: BoundedList[str]


class Step(Input):
    log: str
    id: str
    ms: int = 0
    flaky: int = 0
    echo: str = ""


class StepOut(Output):
    id: str
    value: int
    echo: str = ""


class Made(Output):
    data: FileReference


class Use(Input):
    log: str
    id: str
    data: FileReference


def _mark(log: str, line: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _value(ident: str) -> int:
    return int.from_bytes(hashlib.blake2b(ident.encode(), digest_size=4).digest(), "big")


def _content(ident: str, kb: int) -> bytes:
    seed = hashlib.sha256(ident.encode()).digest()
    return (seed * (kb * 1024 // len(seed) + 1))[: kb * 1024]


_POLICY = RetryPolicy(max_attempts=4, initial_interval=0.05, backoff_coefficient=1.0)


class _Interpreter:
    """The tasks and the interpreter, shared by the app's versions."""

    @task(retry_policy=_POLICY, timeout_seconds=120)
    async def step(self, input: Step) -> StepOut:
        attempt = self.task_info.attempt
        _mark(input.log, f"{input.id} {attempt}")
        if input.ms:
            await asyncio.sleep(input.ms / 1000)
        if attempt <= input.flaky:
            raise ConnectionError(f"{input.id}: transient failure on attempt {attempt}")
        return StepOut(id=input.id, value=_value(input.id), echo=input.echo)

    @task(retry_policy=_POLICY, timeout_seconds=120)
    async def make(self, input: Step) -> Made:
        _mark(input.log, f"{input.id} {self.task_info.attempt}")
        path = os.path.join(self.scratch_dir, f"{input.id}.bin")
        with open(path, "wb") as fh:
            fh.write(_content(input.id, input.ms))
        return Made(data=FileReference(local_path=path, tier=StorageTier.TRANSIENT))

    @task(retry_policy=_POLICY, timeout_seconds=120)
    async def use(self, input: Use) -> StepOut:
        _mark(input.log, f"{input.id}-use {self.task_info.attempt}")
        with open(input.data.local_path, "rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()[:16]
        return StepOut(id=input.id, value=_value(input.id), echo=digest)

    @task(retry_policy=_POLICY, timeout_seconds=120)
    async def fatal(self, input: Step) -> StepOut:
        _mark(input.log, f"{input.id} {self.task_info.attempt}")
        raise NonRetryableError(f"{input.id}: the source refuses this for good")

    async def interpret(self, input: Program) -> Lines:
        return Lines(lines=await self._node(json.loads(input.program), input.log))

    async def _node(self, node: dict[str, Any], log: str) -> list[str]:
        kind = node["t"]
        if kind == "seq":
            out: list[str] = []
            for child in node["c"]:
                out += await self._node(child, log)
            return out
        if kind == "gather":
            parts = await asyncio.gather(*(self._node(child, log) for child in node["c"]))
            return [line for part in parts for line in part]
        if kind == "task":
            done = await self.step(Step(log=log, id=node["id"], ms=node["ms"],
                                        flaky=node["flaky"]))
            return [f"{done.id}={done.value % 1000}"]
        if kind == "if":
            done = await self.step(Step(log=log, id=node["id"]))
            branch = node["then"] if done.value % 2 else node["else"]
            return [f"{done.id}?{done.value % 2}", *await self._node(branch, log)]
        if kind == "value":
            taken = {"uuid4": lambda: str(uuid4()), "now": lambda: now().isoformat(),
                     "random": lambda: repr(random())}[node["kind"]]()
            done = await self.step(Step(log=log, id=node["id"], echo=taken))
            return [f"{node['id']}:{'own' if done.echo == taken else 'SWAPPED'}"]
        if kind == "sleep":
            await asyncio.sleep(node["ms"] / 1000)
            return []
        if kind == "file":
            made = await self.make(Step(log=log, id=node["id"], ms=node["kb"]))
            used = await self.use(Use(log=log, id=node["id"], data=made.data))
            expected = hashlib.sha256(_content(node["id"], node["kb"])).hexdigest()[:16]
            return [f"{node['id']}#{'intact' if used.echo == expected else 'WRONG'}"]
        if kind == "fatal":
            try:
                await self.fatal(Step(log=log, id=node["id"]))
            except NonRetryableError:
                return [f"{node['id']}!caught"]
            return [f"{node['id']}!NOT-RAISED"]
        raise ValueError(f"unknown node {kind!r}")


class ShapeApp(_Interpreter, App):
    @entrypoint(default=True)
    async def shape(self, input: Program) -> Lines:
        return await self.interpret(input)

    @entrypoint
    async def shape_again(self, input: Program) -> Lines:
        return await self.interpret(input)


# -- the compatible edit: every contract gains a field with a default --------------------------

class ProgramV2(Program):
    label: str = ""


class StepV2(Step):
    note: str = ""


class StepOutV2(StepOut):
    extra: int = 0


class ShapeAppV2(App, name="ShapeApp"):
    """ShapeApp after a compatible change: recorded journals must replay against it."""

    step = _Interpreter.step
    make = _Interpreter.make
    use = _Interpreter.use
    fatal = _Interpreter.fatal
    interpret = _Interpreter.interpret
    _node = _Interpreter._node

    @entrypoint(default=True)
    async def shape(self, input: ProgramV2) -> Lines:
        return await self.interpret(input)

    @entrypoint
    async def shape_again(self, input: ProgramV2) -> Lines:
        return await self.interpret(input)


# -- programs ----------------------------------------------------------------------------------

def _leaf() -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.builds(lambda ms, flaky: {"t": "task", "ms": ms, "flaky": flaky},
                  st.sampled_from([0, 20, 150, 400]), st.sampled_from([0, 0, 0, 1, 2])),
        st.builds(lambda kind: {"t": "value", "kind": kind},
                  st.sampled_from(["uuid4", "now", "random"])),
        st.builds(lambda ms: {"t": "sleep", "ms": ms}, st.sampled_from([100, 600])),
        st.builds(lambda kb: {"t": "file", "kb": kb}, st.sampled_from([4, 256])),
        st.just({"t": "fatal"}),
    )


def _tree(max_leaves: int) -> st.SearchStrategy[dict[str, Any]]:
    return st.recursive(
        _leaf(),
        lambda children: st.one_of(
            st.builds(lambda c: {"t": "seq", "c": c}, st.lists(children, min_size=1,
                                                                max_size=4)),
            st.builds(lambda c: {"t": "gather", "c": c}, st.lists(children, min_size=2,
                                                                   max_size=4)),
            st.builds(lambda a, b: {"t": "if", "then": a, "else": b}, children, children),
        ),
        max_leaves=max_leaves,
    )


def _number(node: dict[str, Any], counter: list[int]) -> dict[str, Any]:
    """The same tree with a unique id on every node that has a task (in document order)."""
    node = dict(node)
    if node["t"] in ("task", "value", "file", "fatal", "if"):
        counter[0] += 1
        node["id"] = f"{node['t'][0]}{counter[0]}"
    for key in ("c",):
        if key in node:
            node[key] = [_number(child, counter) for child in node[key]]
    for key in ("then", "else"):
        if key in node:
            node[key] = _number(node[key], counter)
    return node


def random_program(rng: Any) -> dict[str, Any]:
    """The soak's programs: the same node kinds as `programs()`, drawn from a seeded RNG."""

    def leaf() -> dict[str, Any]:
        kind = rng.choice(["task", "task", "value", "sleep", "file", "fatal"])
        if kind == "task":
            return {"t": "task", "ms": rng.choice([0, 20, 150, 400]),
                    "flaky": rng.choice([0, 0, 0, 1, 2])}
        if kind == "value":
            return {"t": "value", "kind": rng.choice(["uuid4", "now", "random"])}
        if kind == "sleep":
            return {"t": "sleep", "ms": rng.choice([100, 600])}
        if kind == "file":
            return {"t": "file", "kb": rng.choice([4, 256])}
        return {"t": "fatal"}

    def tree(depth: int) -> dict[str, Any]:
        if depth >= 3 or rng.random() < 0.4:
            return leaf()
        shape = rng.choice(["seq", "gather", "gather", "if"])
        if shape == "if":
            return {"t": "if", "then": tree(depth + 1), "else": tree(depth + 1)}
        low = 1 if shape == "seq" else 2
        return {"t": shape, "c": [tree(depth + 1) for _ in range(rng.randint(low, 4))]}

    return _number({"t": "seq", "c": [{"t": "task", "ms": 300, "flaky": 0}, tree(0)]}, [0])


def programs(max_leaves: int = 10) -> st.SearchStrategy[dict[str, Any]]:
    """Programs with unique task ids (at least one task, so a run has something to kill)."""
    return _tree(max_leaves).map(lambda tree: _number({"t": "seq", "c": [
        {"t": "task", "ms": 300, "flaky": 0}, tree]}, [0]))
