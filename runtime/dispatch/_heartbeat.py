"""Liveness: one heartbeat monitor actor per run, and the driver's watch over it.

Workers beat fire-and-forget (`monitor.beat.remote(...)`) from a thread of their own; the
monitor keeps the last beat and the last heartbeat details of each attempt. The driver asks
for a snapshot once a second (one actor call, whatever the number of tasks) and:

- fails an attempt whose last beat is older than its `heartbeat_timeout_seconds` (a frozen
  process, a partitioned or lost node): the attempt is cancelled on Ray and retried; with
  `auto_heartbeat_seconds=None` the beats are the task's own, so silence means the task stopped
  making progress: it fails with ProgressStalledError (spending the retry budget);
- (heartbeat details are not the watch's business: a worker makes them durable in the store
  before `self.heartbeat()` returns, `runtime/worker/_checkpoint.py`; the watch only tells
  whether they changed, for the progress watchdog);
- with `max_no_progress_seconds`, reports attempts whose details stopped changing (shown by
  `status`), and with `enforce_progress` fails them.

Ages are measured on the monitor's clock, so clock skew between nodes does not matter. An
attempt is watched from its first beat: a task waiting in Ray's queue is not "silent".

The monitor lives on the driver's node (node affinity, not soft): placed anywhere, it could sit
on a node that freezes, and the watch - which asked it for snapshots without a deadline - went
blind exactly when it was needed. The watch bounds each snapshot request (`SNAPSHOT_TIMEOUT`);
a monitor silent for `REPLACE_AFTER` requests in a row is replaced by a new actor under a new
name, which attempts dispatched from then on beat to.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from application_sdk.errors import HeartbeatTimeoutError, ProgressStalledError

from .._runcontext import NAMESPACE

__all__ = ["Attempts", "HeartbeatMonitor", "HeartbeatWatch", "shared_monitor"]

log = logging.getLogger("connector_runtime")


class HeartbeatMonitor:
    """Ray actor: the last beat of each running attempt, per run. Holds no durable state."""

    def __init__(self) -> None:
        # run id -> key -> [attempt, last beat, details, details changed at, details version]
        self.runs: dict[str, dict[str, list[Any]]] = {}

    def beat(self, run_id: str, key: str, attempt: int, details: Any, sent_at: float) -> None:
        now = time.time()
        beats = self.runs.setdefault(run_id, {})
        entry = beats.get(key)
        if entry is None or entry[0] != attempt:
            if entry is not None and entry[0] > attempt:
                return  # a late beat of an older attempt
            entry = beats[key] = [attempt, now, None, now, 0]
        entry[1] = now
        if details is not None and details != entry[2]:
            entry[2], entry[3], entry[4] = details, now, entry[4] + 1

    def snapshot(self, run_id: str) -> tuple[float, dict[str, list[Any]]]:
        return time.time(), self.runs.get(run_id, {})

    def details(self, run_id: str, key: str) -> Any:
        entry = self.runs.get(run_id, {}).get(key)
        return None if entry is None else entry[2]

    def forget(self, run_id: str, keys: list[str] | None = None) -> None:
        if keys is None:
            self.runs.pop(run_id, None)
            return
        beats = self.runs.get(run_id, {})
        for key in keys:
            beats.pop(key, None)


_monitors: dict[str, tuple[Any, str]] = {}
_generation = itertools.count()


class Attempts(Protocol):
    """What the watch needs of the dispatcher: the attempts in flight, and a kill switch."""

    @property
    def running(self) -> Mapping[str, Any]:
        """Call key -> attempt in flight (with `number`, `task` and `options`)."""
        ...

    def kill(self, key: str, error: BaseException) -> None: ...


SNAPSHOT_TIMEOUT = 5.0
"""Seconds the watch waits for one snapshot from the monitor."""
REPLACE_AFTER = 6
"""Snapshot requests in a row the monitor may leave unanswered before it is replaced."""


async def shared_monitor(replace: bool = False) -> tuple[Any, str]:
    """The driver process's monitor actor, started once and shared by its runs.

    Not waited for before dispatching (issue 17, start-up): starting it takes 0.5-1 s here (a
    process of its own), and waiting for it was most of the time from `connector-runtime run`
    to the first task once Ray is up (1.22 s, 0.85 s without the wait). A worker beats first
    min(period, 1 s) after its attempt starts, by when the actor is normally up; a beat sent
    before waits in that worker until it is, and is lost only if the worker dies meanwhile
    (then its retry starts without those heartbeat details, as a first attempt does). The
    driver's snapshots wait for the actor like any actor call.
    `replace=True` kills the current one and starts another under a new name.
    """
    job = ray.get_runtime_context().get_job_id()
    if replace and job in _monitors:
        old, _ = _monitors.pop(job)
        with contextlib.suppress(Exception):
            ray.kill(old, no_restart=True)
    if job not in _monitors:
        # Attempts carry the actor's name, not its handle: a string costs nothing to send,
        # and a worker looks the actor up only when it first has a beat to send.
        name = f"heartbeats-{job}-{os.getpid()}-{next(_generation)}"
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                              soft=False)
        actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(HeartbeatMonitor)
        _monitors[job] = (actor.options(name=name, namespace=NAMESPACE,
                                        scheduling_strategy=here).remote(), name)
    return _monitors[job]


class HeartbeatWatch:
    def __init__(
        self,
        monitor: Any,
        run_id: str,
        executor: Attempts,
        on_details: Callable[[str, Any], None] | None = None,
        period: float = 1.0,
        on_replaced: Callable[[str], None] | None = None,
    ) -> None:
        self.monitor = monitor
        self.on_replaced = on_replaced
        """Called with the new monitor's name when a silent monitor was replaced."""
        self._silent = 0
        self.run_id = run_id
        self.executor = executor
        self.on_details = on_details
        """Called with (call key, details) when an attempt's heartbeat details changed (None:
        nobody needs them; workers checkpoint details themselves)."""
        self.period = period
        self.stalled: dict[str, float] = {}
        """Call keys whose heartbeat details have not changed for max_no_progress_seconds."""
        self._versions: dict[str, int] = {}

    def close(self) -> None:
        try:
            self.monitor.forget.remote(self.run_id)
        except Exception:  # the monitor went with its node
            pass

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                now, beats = await asyncio.wait_for(
                    asyncio.wrap_future(self.monitor.snapshot.remote(self.run_id).future()),
                    SNAPSHOT_TIMEOUT)
            except Exception as exc:  # restarting, or silent: attempts keep their timeouts
                self._silent += 1
                log.warning("heartbeat monitor did not answer (%d in a row): %s",
                            self._silent, type(exc).__name__)
                if self._silent >= REPLACE_AFTER:
                    await self._replace()
                continue
            self._silent = 0
            self.check(now, beats)

    async def _replace(self) -> None:
        try:
            self.monitor, name = await shared_monitor(replace=True)
        except Exception as exc:
            log.error("heartbeat monitor could not be replaced: %s", exc)
            return
        self._silent = 0
        log.warning("heartbeat monitor replaced by %s", name)
        if self.on_replaced is not None:
            self.on_replaced(name)

    def check(self, now: float, beats: dict[str, list[Any]]) -> None:
        running = self.executor.running
        gone = [key for key in beats if key not in running]
        for key, (attempt, last, details, changed_at, version) in beats.items():
            if details is not None and self._versions.get(key) != version:
                if self.on_details is not None:
                    self.on_details(key, details)
                self._versions[key] = version
            current = running.get(key)
            if current is None or current.number != attempt:
                continue
            self._judge(key, current, now - last, now - changed_at)
        if gone:
            self.monitor.forget.remote(self.run_id, gone)
            for key in gone:
                self.stalled.pop(key, None)
                self._versions.pop(key, None)

    def _judge(self, key: str, attempt: Any, silence: float, no_progress: float) -> None:
        opts = attempt.options
        if opts.heartbeat_timeout_seconds and silence > opts.heartbeat_timeout_seconds \
                and opts.auto_heartbeat_seconds is None:
            self.executor.kill(key, ProgressStalledError(
                f"task {attempt.task}: no heartbeat for {silence:.0f}s (heartbeat_timeout_"
                f"seconds={opts.heartbeat_timeout_seconds}, auto_heartbeat_seconds=None: its "
                "own heartbeat() calls are its liveness, and they stopped)"))
            return
        if opts.heartbeat_timeout_seconds and silence > opts.heartbeat_timeout_seconds:
            self.executor.kill(key, HeartbeatTimeoutError(
                f"task {attempt.task}: no heartbeat for {silence:.0f}s (heartbeat_timeout_"
                f"seconds={opts.heartbeat_timeout_seconds}); its process is frozen or its "
                "node is lost"))
            return
        limit = opts.max_no_progress_seconds
        if limit and no_progress > limit:
            self.stalled[key] = no_progress
            if opts.enforce_progress:
                self.executor.kill(key, ProgressStalledError(
                    f"task {attempt.task}: heartbeat details unchanged for {no_progress:.0f}s "
                    f"(max_no_progress_seconds={limit}, enforced)"))
        else:
            self.stalled.pop(key, None)
