"""Dispatching attempts to Ray and waiting for them, with per-attempt timeouts and kill switches.

Each attempt's result is an asyncio future settled from Ray's completion callback. Anything
that ends an attempt early (its timeout, a lost heartbeat, cancellation of run()) settles that
future with an error and cancels the Ray task with force, which kills the worker process: a task
blocked in C code or `time.sleep` cannot ignore it. A fan-out wider than the cluster sends its
attempts in streaming batches (`_batch`), which keep every promise per attempt. An attempt of a
task that names a pool goes to the pool's warm actors instead (`_pool`), which keep the same
promises their own way.

A completed attempt is answered as (output bytes, the worker's stamp: start and end on its
clock, node, pid, files; `runtime.worker._timing`). The dispatch and receive times are taken by
the step runner around `run()`, on the driver's clock, for failures as much as completions.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray

from application_sdk.app import App, Pool, TaskSpec
from application_sdk.errors import TaskUnschedulableError

from .._runcontext import RunContext
from ..worker import batch_remote_for, pack_attempt, remote_for, unpack_result
from ._batch import TaskBatcher, slots_of
from ._pool import PoolDispatcher, dispatcher_for

__all__ = ["Attempt", "RayExecutor"]


@dataclass
class Attempt:
    """An attempt in flight."""

    key: str
    task: str
    number: int
    ref: Any
    """Unused (None): the attempt's Ray call belongs to its batcher or its pool."""
    result: asyncio.Future[bytes]
    options: Any
    dispatched_at: float = field(default_factory=time.time)
    stop: Callable[[BaseException | None], None] | None = None
    """The attempt's kill switch (error, or None to cancel), set by its batcher or pool."""


class RayExecutor:
    def __init__(self, app_cls: type[App], run: RunContext, monitor: str | None = None,
                 admit: Callable[[], None] | None = None) -> None:
        self.app_cls = app_cls
        self.admit = admit
        """Called before each dispatch; raises to refuse it (the driver's lease check)."""
        self.context = run
        self._packed = run.packed()
        self._extra = () if self._packed is not None else (run,)
        self.monitor = monitor
        self.running: dict[str, Attempt] = {}
        self._remote = remote_for(app_cls)
        self._heartbeats: dict[str, tuple[Any, ...]] = {}
        self._feasible: dict[str, asyncio.Future[None]] = {}
        self._pools: dict[str, PoolDispatcher] = {}
        self._slots: dict[str, float] = {}
        self._batchers: dict[str, TaskBatcher] = {}

    def _batcher(self, spec: TaskSpec) -> TaskBatcher:
        batcher = self._batchers.get(spec.name)
        if batcher is None:
            opts = spec.options.ray_options()
            lone, streamed = self._remote, batch_remote_for(self.app_cls)
            if opts:
                lone, streamed = lone.options(**opts), streamed.options(**opts)
            batcher = self._batchers[spec.name] = TaskBatcher(
                spec.name, lone, streamed, self._extra, self._slots.get(spec.name, 1.0),
                asyncio.get_running_loop())
        return batcher

    def _heartbeat_settings(self, spec: TaskSpec) -> tuple[Any, ...]:
        settings = self._heartbeats.get(spec.name)
        if settings is None:
            settings = self._heartbeats[spec.name] = self._compute_heartbeat_settings(spec)
        return settings

    def _compute_heartbeat_settings(self, spec: TaskSpec) -> tuple[Any, ...]:
        """(auto beat period or None, beat once at the start)."""
        if self.monitor is None:
            return ()
        opts = spec.options
        period = opts.auto_heartbeat_seconds
        if period is None:  # the task's own heartbeat() calls are its liveness
            return (None, bool(opts.heartbeat_timeout_seconds))
        if opts.heartbeat_timeout_seconds:
            # a beat period longer than the timeout would fail every healthy attempt
            period = min(period, opts.heartbeat_timeout_seconds / 3)
        return (period,) if period else ()

    async def run(
        self,
        spec: TaskSpec,
        key: str,
        payload: bytes,
        number: int,
        details: dict[str, Any] | None,
        timeout: float,
    ) -> tuple[bytes, dict[str, Any]]:
        if spec.name not in self._slots and not self._known_feasible(spec):
            checked = self._feasible.get(spec.name)
            if checked is None:  # one check per task name, shared by every call waiting on it
                checked = self._feasible[spec.name] = asyncio.ensure_future(
                    self._wait_until_feasible(spec))
            if not checked.done():
                await asyncio.shield(checked)
            elif checked.exception() is not None:
                raise checked.exception()  # type: ignore[misc]
        if self.admit is not None:
            self.admit()
        loop = asyncio.get_running_loop()
        info = (key, number, details, self.monitor, self._heartbeat_settings(spec))
        blob = pack_attempt(spec.name, payload, self._packed, info)
        if spec.options.pool is not None:
            return unpack_result(await self._on_pool(spec, key, number, blob, timeout))
        attempt = Attempt(key, spec.name, number, None, loop.create_future(), spec.options)
        self.running[key] = attempt
        try:  # alone or in a batch (`_batch`), with its timeout and its kill switch
            return unpack_result(await self._batcher(spec).run(attempt, blob, timeout))
        finally:
            if self.running.get(key) is attempt:
                del self.running[key]

    async def _on_pool(self, spec: TaskSpec, key: str, number: int, blob: bytes,
                       timeout: float) -> bytes:
        """The attempt on its pool's warm actors (`_pool`): queued, batched, run there."""
        name = spec.options.pool
        assert name is not None
        pool = self._pools.get(name)
        if pool is None:
            pool = self._pools[name] = dispatcher_for(self.app_cls, name)
        attempt = Attempt(key, spec.name, number, None,
                          asyncio.get_running_loop().create_future(), spec.options)
        self.running[key] = attempt
        try:
            return await pool.run(attempt, blob, self._extra[0] if self._extra else None,
                                  timeout)
        finally:
            if self.running.get(key) is attempt:
                del self.running[key]

    def close(self) -> None:
        """The run is over: its pools may park their idle actors; no batch outlives it."""
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        for batcher in self._batchers.values():
            batcher.close()
        self._batchers.clear()

    def _known_feasible(self, spec: TaskSpec) -> bool:
        """Whether this process found the task's demand feasible on this cluster less than
        `FEASIBLE_TTL` seconds ago (its slots are then taken from that check)."""
        found = _feasible.get(_demand(spec, self.app_cls))
        if found is None or time.monotonic() - found[1] > FEASIBLE_TTL:
            return False
        self._slots[spec.name] = found[0]
        return True

    async def _wait_until_feasible(self, spec: TaskSpec) -> None:
        """Ray keeps a task no node can ever run pending forever: wait a bounded time for
        such a node (an autoscaler may add one), then fail with a clear error."""
        wanted = _requested(spec, self.app_cls._pools.get(spec.options.pool or ""))
        deadline = time.monotonic() + float(
            os.environ.get("CONNECTOR_RUNTIME_UNSCHEDULABLE_WAIT", "120"))
        while True:
            nodes = await asyncio.to_thread(ray.nodes)
            alive = [n for n in nodes if n.get("Alive")]
            totals = [n.get("Resources", {}) for n in alive]
            if any(all(t.get(k, 0) >= v for k, v in wanted.items()) for t in totals):
                slots = self._slots[spec.name] = slots_of(wanted, alive)
                _feasible[_demand(spec, self.app_cls)] = (slots, time.monotonic())
                return
            if time.monotonic() >= deadline:
                have = "; ".join(", ".join(f"{k}={v:g}" for k, v in sorted(t.items())
                                           if not k.startswith("node:")) for t in totals)
                raise TaskUnschedulableError(
                    f"task {spec.name} asks for {wanted}, which no node of the cluster has "
                    f"(nodes: {have or 'none'}); lower @task(num_cpus=, memory=, resources=) "
                    "or add a node type that has them"
                )
            await asyncio.sleep(2.0)

    def kill(self, key: str, error: BaseException) -> None:
        """End the attempt running under `key` with `error` and stop it on Ray."""
        attempt = self.running.get(key)
        if attempt is None or attempt.result.done():
            return
        if attempt.stop is not None:
            attempt.stop(error)

    def cancel_all(self) -> None:
        for attempt in list(self.running.values()):
            if attempt.stop is not None:
                attempt.stop(None)


FEASIBLE_TTL = 60.0
"""Seconds a feasibility check of a demand serves the runs after it in the same process: a
run's attempts then dispatch without waiting for a `ray.nodes()` round trip."""

_feasible: dict[tuple[Any, ...], tuple[float, float]] = {}
"""(cluster, demand) -> (slots, when checked)."""


def _demand(spec: TaskSpec, app_cls: type[App]) -> tuple[Any, ...]:
    wanted = _requested(spec, app_cls._pools.get(spec.options.pool or ""))
    return (ray.get_runtime_context().gcs_address, *sorted(wanted.items()))


def _requested(spec: TaskSpec, pool: Pool | None = None) -> dict[str, float]:
    opts: Any = pool if pool is not None else spec.options
    wanted: dict[str, float] = {"CPU": 1.0 if opts.num_cpus is None else float(opts.num_cpus)}
    if opts.memory:
        wanted["memory"] = float(opts.memory)
    wanted.update({k: float(v) for k, v in (opts.resources or {}).items()})
    return {k: v for k, v in wanted.items() if v > 0}


