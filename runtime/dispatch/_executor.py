"""Dispatching attempts to Ray and waiting for them, with per-attempt timeouts and kill switches.

Each attempt's result is an asyncio future settled from Ray's completion callback. Anything
that ends an attempt early (its timeout, a lost heartbeat, cancellation of run()) settles that
future with an error and cancels the Ray task with force, which kills the worker process: a task
blocked in C code or `time.sleep` cannot ignore it. An attempt of a task that names a pool goes
to the pool's warm actors instead (`_pool`), which keep the same promises their own way.

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
from ..worker import pack_attempt, remote_for, unpack_result
from ._pool import PoolDispatcher, dispatcher_for

__all__ = ["Attempt", "RayExecutor"]


@dataclass
class Attempt:
    """An attempt in flight."""

    key: str
    task: str
    number: int
    ref: Any
    result: asyncio.Future[bytes]
    options: Any
    dispatched_at: float = field(default_factory=time.time)
    stop: Callable[[BaseException | None], None] | None = None
    """A pool attempt's kill switch (error, or None to cancel); None on the Ray-task path."""


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
        self._by_task: dict[str, Any] = {}
        self._heartbeats: dict[str, tuple[Any, ...]] = {}
        self._feasible: dict[str, asyncio.Future[None]] = {}
        self._pools: dict[str, PoolDispatcher] = {}

    def _remote_for(self, spec: TaskSpec) -> Any:
        remote = self._by_task.get(spec.name)
        if remote is None:
            opts = spec.options.ray_options()
            remote = self._remote.options(**opts) if opts else self._remote
            self._by_task[spec.name] = remote
        return remote

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
        ref = self._remote_for(spec).remote(blob, *self._extra)
        result: asyncio.Future[bytes] = loop.create_future()
        ref.future().add_done_callback(lambda cf: _call_soon(loop, result, cf))
        attempt = Attempt(key, spec.name, number, ref, result, spec.options)
        self.running[key] = attempt
        timer = loop.call_later(timeout, self.kill, key, TimeoutError())
        try:
            return unpack_result(await result)
        except asyncio.CancelledError:
            _cancel(ref)
            raise
        finally:
            timer.cancel()
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
        """The run is over: its pools may park their idle actors."""
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    async def _wait_until_feasible(self, spec: TaskSpec) -> None:
        """Ray keeps a task no node can ever run pending forever: wait a bounded time for
        such a node (an autoscaler may add one), then fail with a clear error."""
        wanted = _requested(spec, self.app_cls._pools.get(spec.options.pool or ""))
        deadline = time.monotonic() + float(
            os.environ.get("CONNECTOR_RUNTIME_UNSCHEDULABLE_WAIT", "120"))
        while True:
            nodes = await asyncio.to_thread(ray.nodes)
            totals = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
            if any(all(t.get(k, 0) >= v for k, v in wanted.items()) for t in totals):
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
            return
        attempt.result.set_exception(error)
        _cancel(attempt.ref)

    def cancel_all(self) -> None:
        for attempt in list(self.running.values()):
            if attempt.stop is not None:
                attempt.stop(None)
            else:
                _cancel(attempt.ref)


def _requested(spec: TaskSpec, pool: Pool | None = None) -> dict[str, float]:
    opts: Any = pool if pool is not None else spec.options
    wanted: dict[str, float] = {"CPU": 1.0 if opts.num_cpus is None else float(opts.num_cpus)}
    if opts.memory:
        wanted["memory"] = float(opts.memory)
    wanted.update({k: float(v) for k, v in (opts.resources or {}).items()})
    return {k: v for k, v in wanted.items() if v > 0}


def _call_soon(loop: asyncio.AbstractEventLoop, result: asyncio.Future[bytes], cf: Any) -> None:
    try:
        loop.call_soon_threadsafe(_settle_from, result, cf)
    except RuntimeError:  # the loop closed: nobody waits for this attempt any more
        pass


def _settle_from(result: asyncio.Future[bytes], cf: Any) -> None:
    if result.done():
        return
    exc = cf.exception()
    if exc is not None:
        result.set_exception(exc)
    else:
        result.set_result(cf.result())


def _cancel(ref: Any) -> None:
    try:
        ray.cancel(ref, force=True)
    except Exception:  # already finished or its worker already gone
        pass
