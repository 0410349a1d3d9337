"""Batches on the default path: a fan-out wider than the cluster sends several attempts of one
task in one Ray task, which streams their results back one by one.

An attempt on the default path is a Ray remote function call. When more attempts of one task
wait for dispatch in a turn of the driver's loop than the cluster has slots for it (its CPUs,
memory and custom resources, summed over the alive nodes, at the run's feasibility check), one
Ray task per attempt would mostly wait in Ray's queue anyway, and pays a lease and a submission
each (about 0.4 ms on this machine, more than the no-op it runs). The waiting attempts are then
cut into *batches*: each batch is one call of a streaming generator (`num_returns="streaming"`,
`runtime.worker.batch_remote_for`) that runs the batch's attempts one after the other in its
worker, with the task's resources, and yields each result as it finishes.

Only tasks measured short are batched. Until a task has a result in this run, one attempt per
slot goes alone (the cluster is full with them) and the rest wait for the first result, at most
`PROBE_SECONDS`; then a batch holds what the measured attempt time fits in `BATCH_SECONDS` (at
most `MAX_BATCH`), and a task of `BATCH_SECONDS` or more, or one not measured in time, goes one
attempt per Ray task as before: long tasks keep Ray's balancing (and an autoscaler sees their
demand one task each). The number of batches is a multiple of the slots, so uniform tasks finish
in as many waves as one per Ray task. Attempts that fit the slots, a sequential run, an attempt
whose arguments are large, and the next attempt of one that lost its worker go alone.

Because results stream, the driver knows at every moment which attempt of a batch runs: the one
after the last result it received (or the first). Every promise of a lone attempt holds, the
same way:

- **Timeout.** The running attempt has a timer from its own start: the previous result's
  arrival, or for the first one the batch's first item, which says it left Ray's queue (a
  batch waiting there for a slot spends no attempt's timeout, as a pool attempt waiting for an
  actor; a lone attempt sent while a slot is free counts from its dispatch, as before, and one
  beyond the free slots - a wide fan-out of a slow task - goes as a stream of one, whose timer
  starts when it says it started). Past it the batch's Ray
  task is cancelled with force (its worker is killed), the attempt fails with a timeout, and
  the batch's attempts that never started are queued again, unchanged (they were never
  executions).
- **Heartbeats.** Attempts beat from the batch's worker as from any Ray task; only the running
  one can have beaten, and a silent one is stopped as a timeout is.
- **Worker or node loss.** The running attempt gets the error Ray reports (retried as a lost
  worker, without spending the retry budget, and alone the next time); the attempts after it are
  queued again. Ray reports a generator's items asynchronously, so an attempt after it may have
  run before the worker died: at-least-once, as for any lost worker.
- **Cancellation.** A cancelled attempt that has not started is dropped from its batch, which
  cannot skip it: the batch is cancelled, its running attempt is lost (retried alone, without
  spending the budget) and the rest queued again. Cancelling the running attempt stops it alone.

Measured (benchmarks/PROFILE.md section 9): 1,000 no-op Ray tasks gathered take 375 ms with
`ray.get` of the list; the same no-ops as streaming batches of 8 take 237 ms, of 16 163 ms.
Rejected: a batch that returns all its results at its end (61 ms for batches of 8), which loses
every finished sibling when one attempt is killed and cannot tell which attempt ran too long.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import exceptions as rx

from application_sdk.errors import WorkerLostError

from ..worker import FAILED, OK, STAMP_ATTR, STARTED, unpack_result
from ._failures import classify
from ._pool import _call_soon, _settle

__all__ = ["BATCH_SECONDS", "LONE_BYTES", "MAX_BATCH", "PROBE_SECONDS", "TaskBatcher", "slots_of"]

MAX_BATCH = 32
"""Most attempts in one batch."""
PROBE_SECONDS = 5.0
"""Longest wait for a task's first result (its measure) before the attempts waiting for it go
one per Ray task."""
BATCH_SECONDS = 0.1
"""A batch holds about this much of the task's measured attempt time."""
LONE_BYTES = 256 * 1024
"""An attempt whose packed arguments are larger goes alone (a batch's arguments travel as one)."""


@dataclass(eq=False)
class _Item:
    attempt: Any
    """The executor's `Attempt` (its `result` future is what the step awaits)."""
    blob: bytes
    timeout: float
    batch: _Batch | None = None
    index: int = -1
    cancelled: bool = False

    @property
    def open(self) -> bool:
        return not self.attempt.result.done() and not self.cancelled


@dataclass(eq=False)
class _Batch:
    items: list[_Item]
    ref: Any = None
    """An ObjectRef (a lone attempt) or an ObjectRefGenerator (a batch)."""
    current: int = 0
    """Index of the attempt running (the one after the last result received)."""
    started: float = field(default_factory=time.monotonic)
    """When `current` started, as the driver knows it."""
    timer: asyncio.TimerHandle | None = None
    over: bool = False
    """Cancelled by the driver, or its worker gone: nothing more of it is delivered."""

    def mine(self, item: _Item) -> bool:
        return item.batch is self and not item.attempt.result.done()


class TaskBatcher:
    """The attempts of one task on one run's executor: queued for a turn of the loop, then sent
    alone or in batches."""

    def __init__(self, name: str, lone: Any, streamed: Any, extra: tuple[Any, ...],
                 slots: float, loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self._extra = extra
        """What follows the blob in each call (the run's context, when it is not packed)."""
        self.lone = lone
        """The task's Ray remote function (one attempt per call)."""
        self.streamed = streamed
        """The task's streaming generator remote function (a batch per call)."""
        self.slots = slots
        """How many of the task's attempts the cluster runs at once (inf: no limit)."""
        self.loop = loop
        self.queue: collections.deque[_Item] = collections.deque()
        self.per_attempt: float | None = None
        self.isolate: set[str] = set()
        self.batches: set[_Batch] = set()
        self._scheduled = False
        self._probing: asyncio.TimerHandle | None = None
        """While the task's first attempts (one per slot) measure it: the rest wait, until a
        result comes or `PROBE_SECONDS` pass."""

    async def run(self, attempt: Any, blob: bytes, timeout: float) -> bytes:
        """Queue one attempt; its result bytes (or its error) once a worker has run it."""
        item = _Item(attempt, blob, timeout)
        attempt.stop = lambda error: self.stop(item, error)
        self.queue.append(item)
        self._schedule()  # on the next turn: every attempt a gather starts now joins the queue
        try:
            return await attempt.result
        except asyncio.CancelledError:
            self.stop(item, None)
            raise

    # -- dispatch --------------------------------------------------------------------------

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._scheduled = False
        batchable: list[_Item] = []
        alone: list[_Item] = []
        for item in self.queue:
            if item.open:
                (batchable if len(item.blob) <= LONE_BYTES and
                 item.attempt.key not in self.isolate else alone).append(item)
        self.queue.clear()
        if self.per_attempt is None and (self._probing is not None or
                                         len(batchable) > self.slots):
            # not measured yet: one attempt per slot goes now (the cluster is full with them),
            # the rest wait for the first result to size their batches
            probes = 0 if self._probing is not None else max(1, int(self.slots))
            alone += batchable[:probes]
            self.queue.extend(batchable[probes:])
            if self._probing is None:
                self._probing = self.loop.call_later(PROBE_SECONDS, self._probed_too_long)
            batchable = []
        size = self._batch_size(len(batchable))
        if size <= 1:
            alone, batchable = alone + batchable, []
        # attempts beyond the free slots would wait in Ray's queue: each goes as a stream of
        # one, whose first item says it started, so that wait spends none of its timeout
        free = len(alone) if math.isinf(self.slots) else max(0, int(self.slots) - len(self.batches))
        for n, item in enumerate(alone):
            self._send([item], streamed=n >= free)
        for start in range(0, len(batchable), size):
            self._send(batchable[start:start + size])

    def _probed_too_long(self) -> None:
        """No first result within PROBE_SECONDS: a slow task (or a slow start), sent as one
        Ray task per attempt; its results may still measure it short for later calls."""
        if self.per_attempt is None:
            self.per_attempt = PROBE_SECONDS
        self._schedule()

    def _batch_size(self, n: int) -> int:
        if n <= self.slots or self.per_attempt is None:
            return 1
        cap = max(1, min(MAX_BATCH, int(BATCH_SECONDS / max(self.per_attempt, 1e-6))))
        slots = max(1, int(self.slots))
        batches = slots * math.ceil(math.ceil(n / cap) / slots)
        return math.ceil(n / batches)

    def _send(self, items: list[_Item], streamed: bool = False) -> None:
        batch = _Batch(items)
        for index, item in enumerate(items):
            item.batch, item.index = batch, index
        self.batches.add(batch)
        if len(items) == 1 and not streamed:
            batch.ref = self.lone.remote(items[0].blob, *self._extra)
            loop = self.loop
            batch.ref.future().add_done_callback(
                lambda cf: _call_soon(loop, self._lone_done, batch, cf))
        else:
            batch.ref = self.streamed.remote([i.blob for i in items], *self._extra)
            self.loop.create_task(self._consume(batch))
            return  # its first attempt's timer starts when the batch says it started
        self._arm(batch)

    def _arm(self, batch: _Batch) -> None:
        if batch.timer is not None:
            batch.timer.cancel()
        batch.started = time.monotonic()
        item = batch.items[batch.current]
        batch.timer = self.loop.call_later(item.timeout, self.stop, item, TimeoutError())

    # -- results ---------------------------------------------------------------------------

    def _lone_done(self, batch: _Batch, cf: Any) -> None:
        self._end(batch)
        if batch.over:
            return
        item = batch.items[0]
        exc = cf.exception()
        if exc is not None:
            if _lost(exc):
                self.isolate.add(item.attempt.key)
            else:  # an attempt that failed took its time too
                self._measure(_ran(exc), batch)
            _settle(item, error=exc)
        else:
            self._measure(_ran(cf.result()), batch)
            _settle(item, value=cf.result())

    async def _consume(self, batch: _Batch) -> None:
        try:
            async for ref in batch.ref:
                try:  # the stream reports an item once it is there: no second trip
                    code, value = ray.get(ref, timeout=0)
                except rx.GetTimeoutError:  # a large result stored on another node
                    code, value = await ref
                if batch.over:
                    return
                if code == STARTED:  # the batch left Ray's queue: its first attempt starts
                    self._arm(batch)
                    continue
                self._measure(_ran(value), batch)
                item = batch.items[batch.current]
                if batch.mine(item):
                    _settle(item, value=value) if code == OK else \
                        _settle(item, error=value if code == FAILED else
                                RuntimeError(f"unknown result code {code!r}"))
                batch.current += 1
                if batch.current < len(batch.items):
                    self._arm(batch)
        except Exception as exc:  # its worker died, its node was lost
            if batch.over:
                return
            self._broken(batch, exc)
            return
        finally:
            self._end(batch)
        if not batch.over and batch.current < len(batch.items):
            # the stream ended early (it should not): what did not run is queued again
            self._requeue(batch, batch.current)

    def _broken(self, batch: _Batch, exc: BaseException) -> None:
        batch.over = True
        running = batch.items[batch.current]
        if batch.mine(running):
            self.isolate.add(running.attempt.key)
            _settle(running, error=exc)
        self._requeue(batch, batch.current + 1)

    def _measure(self, took: float | None, batch: _Batch) -> None:
        """Learn the task's attempt time: the worker's own (its start to its end), else what
        the driver saw (which counts a worker's start-up too)."""
        if took is None:
            took = time.monotonic() - batch.started
        if self.per_attempt is None:
            self.per_attempt = took
            if self._probing is not None:
                self._probing.cancel()
            if self.queue:  # what waited for the first result goes now
                self._schedule()
        else:
            self.per_attempt = 0.7 * self.per_attempt + 0.3 * took

    def _end(self, batch: _Batch) -> None:
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
        self.batches.discard(batch)

    def _requeue(self, batch: _Batch, start: int) -> None:
        """The batch's attempts from `start` never started: queued again, unchanged."""
        again = [i for i in batch.items[start:] if batch.mine(i) and not i.cancelled]
        for item in again:
            item.batch, item.index = None, -1
        if not again:
            return
        self.queue.extendleft(reversed(again))
        self._schedule()

    # -- stops -----------------------------------------------------------------------------

    def stop(self, item: _Item, error: BaseException | None) -> None:
        """End `item` with `error` (its timeout, its silence) or cancel it (None; its future
        may be cancelled already, by the cancellation of the task awaiting it)."""
        if error is not None and item.attempt.result.done():
            return
        if error is None:
            item.cancelled = True
        batch = item.batch
        if batch is None or batch.over:  # still queued: dropped at dispatch
            _settle(item, error=error)
            return
        batch.over = True
        self._end(batch)
        _cancel(batch.ref)
        _settle(item, error=error)
        if item.index > batch.current:  # it never started; the one running is lost with it
            running = batch.items[batch.current]
            if batch.mine(running):
                self.isolate.add(running.attempt.key)
                _settle(running, error=WorkerLostError(
                    f"task {self.name}: its batch was cancelled to drop a cancelled attempt "
                    "queued behind it; it may have run"))
        self._requeue(batch, batch.current + 1)

    def close(self) -> None:
        """The run is over: nothing queued is sent, every batch still running is cancelled."""
        self.queue.clear()
        if self._probing is not None:
            self._probing.cancel()
        for batch in list(self.batches):
            batch.over = True
            self._end(batch)
            _cancel(batch.ref)


def slots_of(wanted: dict[str, float], nodes: list[dict[str, Any]]) -> float:
    """How many attempts asking for `wanted` the alive `nodes` run at once (inf: no limit)."""
    if not wanted:
        return math.inf
    total = 0
    for node in nodes:
        have = node.get("Resources", {})
        total += min(int(have.get(k, 0) // v) for k, v in wanted.items())
    return float(total)


def _ran(result: Any) -> float | None:
    """Seconds the attempt ran on its worker, from its stamp (a result blob, or the error it
    failed with), or None when it carries none."""
    try:
        if isinstance(result, bytes):
            stamp = unpack_result(result)[1]
        else:
            stamp = getattr(result, STAMP_ATTR, None) or \
                getattr(getattr(result, "cause", None), STAMP_ATTR, None)
        return max(0.0, float(stamp["e"]) - float(stamp["s"]))
    except Exception:  # no stamp, or not one the worker made
        return None


def _lost(exc: BaseException) -> bool:
    return classify(exc).kind.lost


def _cancel(ref: Any) -> None:
    try:
        ray.cancel(ref, force=True)
    except Exception:  # already finished or its worker already gone
        pass
