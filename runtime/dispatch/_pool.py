"""Pools: the attempts of `@task(pool=...)` on warm executor actors, at most `size` at once.

A `Pool(size=N)` declared on an App is N actors (`runtime.worker.PoolWorker`), each running one
attempt at a time, so N is the most attempts of the pool's tasks that run at once anywhere in
the cluster - the N connections a source allows - and an attempt skips the per-task lease and
worker start of a Ray task. The driver (one `PoolDispatcher` per pool and event loop) queues
attempts and hands each free actor a *batch*: the attempts waiting, up to what the pool's
measured attempt time fits in about `BATCH_SECONDS` (at most `MAX_BATCH`), shared out among the
free actors and those still starting. A fan-out of small tasks pays one actor call per batch;
a sequential run, or a slow task, a batch of one.

Every promise of a Ray-task attempt holds on a pool; how:

- **Timeout with a force stop.** A timer per batch asks the actor (`status`, answered from its
  control thread) which attempt runs and for how long, so `timeout_seconds` counts from the
  attempt's own start, not from the batch's. Past it: `drain` (nothing more of the batch
  starts; what finished comes back), `ray.kill` of the actor, and a new actor in its place.
  The attempts of the batch that had not started are queued again, unchanged (they were never
  executions); the one that ran too long fails with a timeout and is retried by the step.
- **Heartbeats.** Attempts beat to the run's monitor from the actor as from a Ray worker; a
  silent one is killed the same way (drain, kill, replace). The driver learns only when the
  batch returns that an attempt finished, so a silence is checked with `drain` first: an
  attempt that finished long ago is delivered, not killed.
- **Worker and node loss.** An actor that dies (`os._exit` in a task, a node removed) fails
  every attempt of its batch that it had not reported with `WorkerLostError`: lost, retried
  without spending the retry budget (`max_worker_losses` bounds it). They may have run (the
  batch reports at its end), which is what at-least-once allows; their next attempts go in
  batches of one, so a task that keeps killing its actor is found out without taking its
  batch-mates' losses with it.
- **A frozen node.** Ray thinks a frozen node alive until its health checks fail (about a
  minute by default). An actor that does not answer makes its node suspect: the idle actors
  there get work again only once they answer a ping (else they are replaced), and new actors
  go to other nodes while another can take them (a label selector on the node id, falling
  back to any node), so the retry of the silent attempt does not wait on the same node.
- **Cancellation.** A cancelled attempt still queued is dropped; one in a batch is stopped as
  a timeout is (its unfinished batch-mates are queued again).
- **Concurrency.** An actor runs one attempt at a time; a replacement takes work only once
  the actor it replaces has gone (its batch's reply came back, at most `DEATH_WAIT` after the
  kill), so even while one is replaced, no more than `size` attempts run.
- **Replacement.** After a crash, a timeout, a lost heartbeat, and after
  `max_attempts_per_actor` attempts (a leaking connector does not poison the tasks after it).
  An actor that cannot start `START_TRIES` times in a row fails what waits for it as lost.

Warmth: when the last run on a loop ends, the pool's idle actors are parked for the process
(per Ray job, App class and pool name) for `keep_warm_seconds`; the next run of that App in the
process - on any event loop - takes them, after a liveness ping.

Rejected designs:
- One actor call per attempt, pipelined (several calls queued at each actor): measured 0.24-0.37
  ms an attempt in a fan-out of 1,000 no-ops, the cost of Ray's call itself, which a batch pays
  once (0.01-0.02 ms an attempt for batches of 64); and an attempt's start is unknown to the
  driver, so its timeout could not count from it.
- A streaming generator per batch (completions as they happen): an item costs about what a call
  does (see `runtime/worker/_pool_actor.py`).
- Dispatching a lone attempt at once instead of on the next turn of the loop (a sequential run
  would skip one turn): no gain measured on 300 sequential tasks, and a gather's first attempts
  then go in batches of one (benchmarks/PROFILE.md section 8).
- One pool for the whole cluster (named actors shared by every driver): a driver's timeout would
  be measured in another driver's queue, and one driver's kill would end another's attempt.
  A pool belongs to a driver process: two drivers running at once have a pool each.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import ray
from ray import exceptions as rx

from application_sdk.app import App, Pool
from application_sdk.errors import WorkerLostError

from ..worker import FAILED, OK, pool_actor_class

__all__ = ["BATCH_SECONDS", "MAX_BATCH", "PoolDispatcher", "dispatcher_for"]

log = logging.getLogger("connector_runtime")

MAX_BATCH = 64
"""Most attempts in one batch (one actor call)."""
BATCH_SECONDS = 0.02
"""A batch is sized to take about this long, from the pool's measured time per attempt: short
enough to balance the actors and bound what a crash can take with it."""
FIRST_BATCH = 8
"""Batch size before the first batch of a pool has been timed."""
STATUS_TIMEOUT = 5.0
"""Seconds an actor's control thread has to answer `status` (else the actor is stopped)."""
DRAIN_TIMEOUT = 2.0
DEATH_WAIT = 5.0
"""Longest wait for a killed actor's end before its replacement takes work."""
START_TRIES = 3
SUSPECT_SECONDS = 120.0
"""How long new actors avoid a node where an actor stopped answering (a frozen node stays
alive to Ray until its health checks fail: about a minute by default)."""


@dataclass(eq=False)
class _Item:
    """One attempt waiting for, or in, a batch."""

    attempt: Any
    """The executor's `Attempt` (key, task, number, options, result future)."""
    blob: bytes
    run: Any
    timeout: float
    batch: _Batch | None = None
    index: int = -1
    cancelled: bool = False
    error: BaseException | None = None
    """Why the driver stops it (its timeout, its silence), or None."""
    isolate: bool = False

    @property
    def open(self) -> bool:
        return not self.attempt.result.done() and not self.cancelled


@dataclass(eq=False)
class _Slot:
    """One actor of the pool."""

    actor: Any
    ready: bool = False
    attempts: int = 0
    batch: _Batch | None = None
    retiring: bool = False
    """Its last batch is out (max_attempts_per_actor): killed when the batch returns."""
    node: str | None = None
    """Id of the node it runs on (learnt when it answers its first call)."""
    pinging: bool = False
    """Ready before its node became suspect, asked to answer again: it still counts against
    size (a new actor does not take its place until it is replaced)."""


@dataclass(eq=False)
class _Batch:
    id: int
    slot: _Slot
    items: list[_Item]
    sent_at: float
    ref: Any = None
    timer: asyncio.TimerHandle | None = None
    stopping: bool = False
    finished: bool = False
    drained_at: int | None = None
    """After a drain that let the running attempt finish: its index (nothing after it starts)."""

    def mine(self, item: _Item) -> bool:
        return item.batch is self and not item.attempt.result.done()


class PoolDispatcher:
    """The driver's side of one pool on one event loop (shared by the runs on that loop)."""

    def __init__(self, app_cls: type[App], name: str, pool: Pool,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.app_cls = app_cls
        self.name = name
        self.pool = pool
        self.loop = loop
        self.queue: collections.deque[_Item] = collections.deque()
        self.slots: list[_Slot] = []
        """Actors that take work (ready) or will (starting)."""
        self._dying: set[_Slot] = set()
        """Actors killed or retiring that may still run an attempt: they count against size."""
        self._room = asyncio.Event()
        self.users = 0
        self.per_attempt: float | None = None
        """Measured seconds per attempt (moving average over batches)."""
        self._isolate: set[str] = set()
        self._ids = itertools.count(1)
        self._scheduled = False
        self._start_failures = 0
        self._suspect: dict[str, float] = {}
        """Nodes where an actor stopped answering (node id -> when): new actors avoid them for
        SUSPECT_SECONDS, and the idle actors there answer a ping before they get work."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._adopt(_take_parked(app_cls, name))

    # -- the executor's side -----------------------------------------------------------------

    async def run(self, attempt: Any, blob: bytes, run: Any, timeout: float) -> bytes:
        """Queue one attempt; its output bytes (or its error) once an actor has run it."""
        item = _Item(attempt, blob, run, timeout, isolate=attempt.key in self._isolate)
        attempt.stop = lambda error: self.stop(item, error)
        self.queue.append(item)
        self._wake()
        try:
            return await attempt.result
        except asyncio.CancelledError:
            self.stop(item, None)
            raise

    def stop(self, item: _Item, error: BaseException | None) -> None:
        """End `item` with `error` (its silence, from the heartbeat watch), or cancel it
        (None). Queued: dropped. In a batch: the batch is drained and, if it is the one
        running, its actor killed."""
        if item.attempt.result.done() and error is not None:
            return
        if error is None:
            item.cancelled = True
        elif item.error is None:
            item.error = error
        batch = item.batch
        if batch is None:  # still queued: skipped when its turn comes
            _settle(item, error=error)
            return
        if batch.drained_at is not None and item.index == batch.drained_at:
            self._kill(batch, "its running attempt was stopped")
        elif not batch.stopping and not batch.finished:
            self._spawn(self._stop_batch(batch))

    def close(self) -> None:
        """One run on this loop is over; the last one parks the idle actors."""
        self.users -= 1
        if self.users > 0:
            return
        _dispatchers.pop((self.loop, self.app_cls, self.name), None)
        idle = [s for s in self.slots if s.ready and s.batch is None]
        for slot in [*self.slots, *self._dying]:
            if slot not in idle:
                _kill_actor(slot.actor)
        self.slots, self._dying = [], set()
        self._room.set()  # actors waiting for room see the dispatcher closed
        _park(self.app_cls, self.name, self.pool, [(s.actor, s.attempts) for s in idle])

    # -- batches ---------------------------------------------------------------------------

    def _wake(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            # on the next turn of the loop: every attempt a gather starts in this turn joins
            self.loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._scheduled = False
        while self.queue and not self.queue[0].open:
            self.queue.popleft()
        if not self.queue:
            return
        self._grow()
        idle = [s for s in self.slots if s.ready and s.batch is None]
        # actors still starting get their share too: the first one up must not take them all
        starting = sum(1 for s in self.slots if not s.ready)
        while self.queue and idle:
            items = self._take(self._batch_size(len(idle) + starting, idle[0]))
            if items:
                self._send(idle.pop(0), items)

    def _batch_size(self, free: int, slot: _Slot) -> int:
        open_items = sum(1 for i in self.queue if i.open)
        cap = FIRST_BATCH if self.per_attempt is None else \
            max(1, min(MAX_BATCH, int(BATCH_SECONDS / max(self.per_attempt, 1e-6))))
        size = min(cap, max(1, math.ceil(open_items / free)))
        limit = self.pool.max_attempts_per_actor
        return size if limit is None else max(1, min(size, limit - slot.attempts))

    def _take(self, size: int) -> list[_Item]:
        items: list[_Item] = []
        while self.queue and len(items) < size:
            item = self.queue[0]
            if not item.open:
                self.queue.popleft()
                continue
            if item.isolate and items:
                break  # it goes alone, in the next batch
            items.append(self.queue.popleft())
            if item.isolate:
                break
        return items

    def _send(self, slot: _Slot, items: list[_Item]) -> None:
        batch = _Batch(next(self._ids), slot, items, time.monotonic())
        for index, item in enumerate(items):
            item.batch, item.index = batch, index
        slot.batch = batch
        slot.attempts += len(items)
        batch.ref = slot.actor.run.remote(batch.id, [(i.blob, i.run) for i in items],
                                          BATCH_SECONDS * 2)
        loop = self.loop
        batch.ref.future().add_done_callback(
            lambda cf: _call_soon(loop, self._returned, batch, cf))
        batch.timer = loop.call_later(min(i.timeout for i in items), self._check, batch)
        limit = self.pool.max_attempts_per_actor
        if limit is not None and slot.attempts >= limit:
            slot.retiring = True  # its replacement starts now, and works once this one is done
            self.slots.remove(slot)
            self._dying.add(slot)
            self._grow()

    def _returned(self, batch: _Batch, cf: Any) -> None:
        """A batch's reply: its results, or its actor's death."""
        batch.finished = True
        if batch.timer is not None:
            batch.timer.cancel()
        slot = batch.slot
        if slot.batch is batch:
            slot.batch = None
        exc = cf.exception()
        if exc is None:
            results = cf.result()
            if results:
                took = (time.monotonic() - batch.sent_at) / len(results)
                self.per_attempt = took if self.per_attempt is None else \
                    0.7 * self.per_attempt + 0.3 * took
            if slot.retiring:
                _kill_actor(slot.actor)
                self._gone(slot)
            self._dispatch()  # the next batch first: the actor works while the driver digests
            for index, item in enumerate(batch.items):
                if not batch.mine(item):
                    continue
                if index < len(results):
                    _deliver(item, results[index])
                else:
                    self._requeue(item)
            self._wake()
            return
        if slot in self.slots:  # died on its own (crash, node loss): not killed by us
            self.slots.remove(slot)
        self._gone(slot)
        for item in batch.items:
            if batch.mine(item):
                self._lose(item, f"its pool actor died before reporting it "
                                 f"({type(exc).__name__}: {_first_line(exc)})")
        self._wake()

    def _requeue(self, item: _Item) -> None:
        """An attempt of a stopped batch that never started: queued again, at the front."""
        item.batch, item.index = None, -1
        if item.open:
            self.queue.appendleft(item)

    def _lose(self, item: _Item, why: str) -> None:
        self._isolate.add(item.attempt.key)
        _settle(item, error=item.error or WorkerLostError(f"pool {self.name!r}: {why}; it may "
                                                          "have run"))

    # -- timeouts and stops ------------------------------------------------------------------

    def _check(self, batch: _Batch) -> None:
        if not batch.finished and not batch.stopping:
            self._spawn(self._check_batch(batch))

    async def _check_batch(self, batch: _Batch) -> None:
        """The batch timer fired: is the running attempt past its timeout?"""
        status = await _ask(batch.slot.actor.status.remote(batch.id), STATUS_TIMEOUT)
        if batch.finished or batch.stopping:
            return
        if status is None:  # the control thread did not answer: frozen, or the GIL held
            if len(batch.items) == 1:
                batch.items[0].error = batch.items[0].error or TimeoutError()
            await self._stop_batch(batch, responsive=False)
            return
        running, index, elapsed, _ = status
        if not running:  # finished: its reply is on the way
            return
        current = batch.items[index]
        if elapsed >= current.timeout:
            current.error = current.error or TimeoutError()
            await self._stop_batch(batch)
            return
        later = [i.timeout for i in batch.items[index + 1:]]
        wait = min([current.timeout - elapsed, *later])
        batch.timer = self.loop.call_later(max(wait, 0.001), self._check, batch)

    async def _stop_batch(self, batch: _Batch, responsive: bool = True) -> None:
        """Drain the batch: deliver what finished, queue again what never started, and kill
        the actor if the attempt running is one being stopped (or the actor does not answer)."""
        if batch.stopping or batch.finished:
            return
        batch.stopping = True
        answer = await _ask(batch.slot.actor.drain.remote(batch.id), DRAIN_TIMEOUT) \
            if responsive else None
        if batch.finished:
            return  # its reply came first and settled everything
        if answer is None:
            self._kill(batch, "its actor did not answer", unresponsive=True)
            return
        state, done = answer
        if state != "running":
            return  # "finished": the reply is on its way; "waiting": it will run nothing
        for index, result in enumerate(done):
            if batch.mine(batch.items[index]):
                _deliver(batch.items[index], result)
        current = len(done)
        for item in batch.items[current + 1:]:
            if batch.mine(item):
                self._requeue(item)
        self._wake()
        if current < len(batch.items):
            item = batch.items[current]
            if item.cancelled or item.error is not None:
                self._kill(batch, "its running attempt was stopped")
            else:
                batch.drained_at = current  # it finishes; nothing after it starts

    def _kill(self, batch: _Batch, why: str, unresponsive: bool = False) -> None:
        """Kill the batch's actor; every attempt of the batch still open is settled now. An
        actor that did not answer makes its node suspect (`_suspected`)."""
        slot = batch.slot
        if unresponsive:
            self._suspected(slot.node)
        if batch.timer is not None:
            batch.timer.cancel()
        culprit = next((i.index for i in batch.items if batch.mine(i) and i.error is not None),
                       None)
        for item in batch.items:
            if not batch.mine(item):
                continue
            if item.error is not None or item.cancelled:
                _settle(item, error=item.error)
            elif culprit is not None and item.index > culprit:
                self._requeue(item)  # after the one that ran too long: never started
            else:
                self._lose(item, f"its pool actor was stopped ({why})")
        if slot in self.slots:
            self.slots.remove(slot)
            self._dying.add(slot)
        _kill_actor(slot.actor)
        # its replacement works once it has gone: its batch's reply (the death) says so, or
        # DEATH_WAIT passes (a frozen node may never answer, and runs nothing meanwhile)
        batch.ref.future().add_done_callback(lambda cf: _call_soon(self.loop, self._gone, slot))
        self.loop.call_later(DEATH_WAIT, self._gone, slot)
        self._wake()

    def _suspected(self, node: str | None) -> None:
        """An actor on `node` did not answer: the node may be frozen (Ray still thinks it alive
        until its health checks fail). Its idle siblings there get work again only once they
        answer a ping (else they are replaced), and new actors go to other nodes while any
        other will do: an attempt retried on a frozen node's actor would wait for Ray to declare
        the node dead."""
        if node is None:
            return
        self._suspect[node] = time.monotonic()
        for slot in self.slots:
            if slot.node == node and slot.ready and slot.batch is None:
                slot.ready, slot.pinging = False, True
                self._spawn(self._ping(slot))

    def _avoided(self) -> list[str]:
        now = time.monotonic()
        for node, since in list(self._suspect.items()):
            if now - since > SUSPECT_SECONDS:
                del self._suspect[node]
        return sorted(self._suspect)

    # -- actors ------------------------------------------------------------------------------

    def _grow(self) -> None:
        """Start actors up to the pool's size while attempts wait."""
        if not self.queue:
            return
        for _ in range(self.pool.size - len(self.slots)):
            # spread over the nodes: a node lost takes as few of the pool's actors as it can
            actor = _new_actor(self.pool, self._avoided()).remote(self.app_cls, self.name)
            slot = _Slot(actor)
            self.slots.append(slot)
            self._spawn(self._until_ready(slot))

    def _gone(self, slot: _Slot) -> None:
        """A killed or retired actor runs nothing any more."""
        if slot in self._dying:
            self._dying.discard(slot)
            self._room.set()
            self._wake()

    async def _until_ready(self, slot: _Slot) -> None:
        try:
            slot.node = await asyncio.wrap_future(slot.actor.node.remote().future())
        except Exception as exc:
            if slot in self.slots:  # else: killed on purpose while it started (run over)
                self._start_failed(slot, exc)
            return
        # an actor killed or retiring may still be running an attempt: wait for it to go
        while slot in self.slots and \
                sum(s.ready or s.pinging for s in self.slots) + len(self._dying) \
                >= self.pool.size:
            self._room.clear()
            await self._room.wait()
        if slot not in self.slots:  # the dispatcher closed meanwhile
            _kill_actor(slot.actor)
            return
        self._start_failures = 0
        slot.ready = True
        self._wake()

    def _start_failed(self, slot: _Slot, exc: BaseException) -> None:
        if slot in self.slots:
            self.slots.remove(slot)
        self._start_failures += 1
        log.warning("pool %r of %s: an actor failed to start (%d in a row): %s", self.name,
                    self.app_cls.__qualname__, self._start_failures, _first_line(exc))
        if self._start_failures < START_TRIES:
            self.loop.call_later(0.2 * self._start_failures, self._wake)
            return
        self._start_failures = 0
        error = WorkerLostError(f"pool {self.name!r} of {self.app_cls.__qualname__}: its "
                                f"actor could not start ({type(exc).__name__}: "
                                f"{_first_line(exc)})")
        while self.queue:
            item = self.queue.popleft()
            if item.open:
                _settle(item, error=error)

    def _adopt(self, parked: list[tuple[Any, int]]) -> None:
        """Take actors parked by an earlier loop; each answers a ping before it gets work."""
        for actor, attempts in parked:
            slot = _Slot(actor, attempts=attempts)
            self.slots.append(slot)
            self._spawn(self._ping(slot))

    async def _ping(self, slot: _Slot) -> None:
        """An adopted actor, or an idle one on a suspect node: work once it answers, else it
        is replaced. An answer from a suspect node clears it (the silence was one process's)."""
        node = await _ask(slot.actor.node.remote(), STATUS_TIMEOUT)
        slot.pinging = False
        if slot not in self.slots:  # the dispatcher closed meanwhile
            return
        if node is None:  # idle: it runs nothing, so its replacement need not wait for it
            self.slots.remove(slot)
            _kill_actor(slot.actor)
            self._room.set()
            self._wake()
            return
        self._suspect.pop(node, None)
        slot.node, slot.ready = node, True
        self._wake()

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


# -- settling attempts -------------------------------------------------------------------------


def _deliver(item: _Item, result: tuple[int, Any]) -> None:
    code, value = result
    if code == OK:
        _settle(item, value=value)
    elif code == FAILED:
        _settle(item, error=value)


def _settle(item: _Item, value: Any = None, error: BaseException | None = None) -> None:
    future = item.attempt.result
    item.batch = None
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    elif not item.cancelled:
        future.set_result(value)
    else:
        future.cancel()


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Any, *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop closed: nobody waits for this batch any more
        pass


async def _ask(ref: Any, timeout: float) -> Any:
    """An actor call's answer within `timeout`, else None (a death is None too)."""
    try:
        return await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout)
    except (TimeoutError, rx.RayError):
        return None


def _new_actor(pool: Pool, avoid: list[str]) -> Any:
    """The pool's actor class with its placement: spread, and off the `avoid` nodes while
    another node can take it (Ray's label selector, with a fallback to any node)."""
    options: dict[str, Any] = {"scheduling_strategy": "SPREAD", **pool.ray_options()}
    if avoid:
        try:
            return pool_actor_class().options(
                **options, label_selector={"ray.io/node-id": f"!in({','.join(avoid)})"},
                fallback_strategy=[{"label_selector": {}}])
        except (TypeError, ValueError):  # a Ray without label selectors: spread only
            pass
    return pool_actor_class().options(**options)


def _kill_actor(actor: Any) -> None:
    if not ray.is_initialized():  # Ray was shut down: so were its actors (and no auto-init)
        return
    with contextlib.suppress(Exception):
        ray.kill(actor, no_restart=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


# -- one dispatcher per loop, parked actors per process ---------------------------------------

_dispatchers: dict[tuple[Any, type[App], str], PoolDispatcher] = {}
_parked: dict[tuple[str, type[App], str], tuple[list[tuple[Any, int]], threading.Timer]] = {}
_parked_lock = threading.Lock()


def dispatcher_for(app_cls: type[App], name: str) -> PoolDispatcher:
    """The pool's dispatcher on the running loop (one more user of it: `close()` when done)."""
    loop = asyncio.get_running_loop()
    key = (loop, app_cls, name)
    dispatcher = _dispatchers.get(key)
    if dispatcher is None:
        dispatcher = _dispatchers[key] = PoolDispatcher(app_cls, name, app_cls._pools[name],
                                                        loop)
    dispatcher.users += 1
    return dispatcher


def _job() -> str:
    return ray.get_runtime_context().get_job_id()


def _take_parked(app_cls: type[App], name: str) -> list[tuple[Any, int]]:
    with _parked_lock:
        entry = _parked.pop((_job(), app_cls, name), None)
    if entry is None:
        return []
    actors, timer = entry
    timer.cancel()
    return actors


def _park(app_cls: type[App], name: str, pool: Pool, actors: list[tuple[Any, int]]) -> None:
    if not actors:
        return
    key = (_job(), app_cls, name)

    def expire() -> None:
        with _parked_lock:
            entry = _parked.get(key)
            if entry is None or entry[0] is not actors:
                return
            del _parked[key]
        for actor, _ in actors:
            _kill_actor(actor)

    timer = threading.Timer(pool.keep_warm_seconds, expire)
    timer.daemon = True
    with _parked_lock:
        previous = _parked.pop(key, None)
        _parked[key] = (actors, timer)
    if previous is not None:  # two loops parked at once: keep one pool's worth
        previous[1].cancel()
        for actor, _ in previous[0]:
            _kill_actor(actor)
    timer.start()

