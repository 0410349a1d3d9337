"""The Ray side of a pool: a warm executor actor that runs batches of attempts, one at a time.

An attempt on a pool is the same msgpack blob a Ray task attempt gets (`pack_attempt`), run by
the same `run_attempt`: the task context, FileReferences, heartbeats and the App instance cached
per process are those of `_attempt`. What the actor adds is the batch: the driver hands it the
attempts waiting for it in one call, and it runs them one after the other, so a pool of `size`
actors never runs more than `size` attempts at once, and a fan-out of small tasks pays one Ray
call per batch instead of one per attempt.

The actor has two concurrency groups. `run` (the default group, one thread) executes attempts;
`status` and `drain` (the `control` group, its own thread) answer while an attempt runs, unless
that attempt holds the GIL or the process is frozen:

- `node()`: the node it runs on (asked when it starts, and of its siblings on a node that went
  silent);
- `status(batch)`: which attempt of the batch runs and for how long (the driver's per-attempt
  timeout is measured from the attempt's start, not from the batch's);
- `drain(batch)`: start nothing more of the batch and hand back what it finished, so killing
  the actor for one attempt (its timeout, its silence, its cancellation) loses no sibling that
  completed before it, and the driver knows which attempts never started (it sends them again).

Each result is `(OK, output bytes)` or `(FAILED, exception)` (made portable as `run_attempt`
does).

Rejected: a streaming generator yielding each attempt's output as it finishes (the driver would
see completions and starts without asking). Measured here, an item of a stream costs about what a
whole actor call does (0.2 ms in a fan-out, more than a plain call when sequential), which is
the cost batching removes.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import ray

from application_sdk.app import App

from .._runcontext import RunContext
from ._attempt import FAILED, OK, portable_error, run_attempt

__all__ = ["PoolWorker", "pool_actor_class"]


class PoolWorker:
    """Ray actor (threaded, a `control` concurrency group): runs batches of an App's attempts."""

    def __init__(self, app_cls: type[App], pool: str) -> None:
        self.app_cls = app_cls
        self.pool = pool
        self._lock = threading.Lock()
        self._batch: int | None = None
        """Id of the batch being run (None between batches)."""
        self._index = -1
        """Index, in that batch, of the attempt running (or last run)."""
        self._started = 0.0
        self._done: list[tuple[int, Any]] = []
        self._stop: int | None = None
        self._finished: int | None = None
        """Id of the last batch run to its end."""

    def run(self, batch: int, items: list[tuple[bytes, RunContext | None]],
            budget: float = float("inf")) -> list[Any]:
        """Run the batch's attempts in order; return after the first that ends past `budget`
        seconds from the batch's start (the driver sends the rest again): a batch reports
        often, so a crash takes little finished work with it."""
        with self._lock:
            self._batch, self._index, self._done = batch, -1, []
        done = self._done
        began = time.monotonic()
        for index, (blob, run) in enumerate(items):
            with self._lock:
                if self._stop == batch or (done and time.monotonic() - began > budget):
                    break
                self._index, self._started = index, time.monotonic()
            try:
                result: tuple[int, Any] = (OK, run_attempt(self.app_cls, blob, run))
            except Exception as exc:  # run_attempt made it portable already; be sure
                result = (FAILED, portable_error(exc))
            with self._lock:
                done.append(result)
        with self._lock:
            self._batch, self._finished = None, batch
            return list(done)

    @ray.method(concurrency_group="control")
    def node(self) -> str:
        """The id of the node this actor runs on (its answer is also the actor's liveness)."""
        return ray.get_runtime_context().get_node_id()

    @ray.method(concurrency_group="control")
    def status(self, batch: int) -> tuple[bool, int, float, int]:
        """(running this batch, index of its current attempt, seconds it has run, finished)."""
        with self._lock:
            if self._batch != batch:
                return False, -1, 0.0, 0
            return True, self._index, time.monotonic() - self._started, len(self._done)

    @ray.method(concurrency_group="control")
    def drain(self, batch: int) -> tuple[str, list[Any]]:
        """Start nothing more of `batch`. ("running", the results it finished so far),
        ("finished", []) when its own reply is on its way, or ("waiting", []) before it began."""
        with self._lock:
            self._stop = batch
            if self._batch == batch:
                return "running", list(self._done)
            return ("finished" if self._finished == batch else "waiting"), []


_actor_class: Any = None


def pool_actor_class() -> Any:
    """`PoolWorker` as a Ray actor class (made once per process)."""
    global _actor_class
    if _actor_class is None:
        _actor_class = ray.remote(concurrency_groups={"control": 1}, max_restarts=0,
                                  max_task_retries=0)(PoolWorker)
    return _actor_class
