"""What a running task reaches through `self.heartbeat()` and the built-in cleanup tasks.

Heartbeats come from one daemon thread per worker process (not the task's thread), so a task
blocked in a synchronous call or a busy loop still beats while its process lives. Attempts
register with it when they start, which costs a dict insert, not a thread start. The first beat
is sent after min(period, 1 s): short tasks never send one, so heartbeats cost nothing on a
fan-out of quick tasks. Beats are fire-and-forget actor calls to the run's heartbeat monitor.

`self.heartbeat(details)` (or with `files=`) is also a checkpoint: written to the store
(`_checkpoint`) before it returns, so the next attempt resumes from it whatever died. That is
one store write per call with details (measured: benchmarks `heartbeat_checkpoint`); a call
without details or files writes nothing. Manual beats are sent to the monitor at once when the
last one is older than `_MIN_GAP`, else by the beat thread on its next tick (a task calling
`heartbeat()` in a tight loop sends ~5 actor calls a second, not thousands).

`auto_heartbeat_seconds=None`: no automatic beats; the task's own `heartbeat()` calls are its
liveness. Such an attempt (when it has a heartbeat timeout) beats once as it starts, so silence
is counted from its start: a task that never calls heartbeat() fails after
`heartbeat_timeout_seconds`, as the option says.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from application_sdk import _context
from application_sdk.contracts import FileReference, HeartbeatDetails

from .._runcontext import NAMESPACE, RunContext
from ._checkpoint import materialize_value, read_checkpoint, reuse_uploaded, write_checkpoint
from ._cleanup import cleanup_scratch, cleanup_transient

__all__ = ["WorkerTaskRuntime"]

_TICK = 0.2
_MIN_GAP = 0.2
"""Seconds between two manual beats sent at once (closer ones wait for the next tick)."""


class _Beater(threading.Thread):
    """The worker process's heartbeat thread: beats for every attempt registered with it."""

    def __init__(self) -> None:
        super().__init__(name="heartbeats", daemon=True)
        self.running: dict[int, WorkerTaskRuntime] = {}

    def run(self) -> None:
        while True:
            time.sleep(_TICK)
            now = time.monotonic()
            for attempt in list(self.running.values()):
                if attempt.pending or (attempt.period and now >= attempt.next_beat):
                    attempt.next_beat = now + (attempt.period or 0)
                    attempt._send()


_monitors: dict[str, Any] = {}


def _monitor(name: str) -> Any:
    """The run's monitor actor, looked up by name once per worker process."""
    handle = _monitors.get(name)
    if handle is None:
        import ray

        handle = _monitors[name] = ray.get_actor(name, namespace=NAMESPACE)
    return handle


_the_beater: _Beater | None = None
_beater_lock = threading.Lock()


def _beater() -> _Beater:
    global _the_beater
    if _the_beater is None:
        with _beater_lock:
            if _the_beater is None:
                beater = _Beater()
                beater.start()
                _the_beater = beater
    return _the_beater


class WorkerTaskRuntime:
    def __init__(
        self,
        run: RunContext,
        call_key: str,
        attempt: int,
        monitor: Any,
        heartbeat: tuple[Any, ...],
        details: dict[str, Any] | None,
    ) -> None:
        self.context = run
        self.call_key = call_key
        self.attempt = attempt
        self.monitor = monitor
        self.period: float | None = heartbeat[0] if heartbeat else None
        self.start_beat = bool(heartbeat[1]) if len(heartbeat) > 1 else False
        """auto heartbeats off: beat once at the start, so silence counts from there."""
        self.details = details
        self.journaled = details
        """Details the driver passed (journals written before checkpoints existed)."""
        self._previous: tuple[dict[str, Any] | None, list[FileReference]] | None = None
        self._uploaded: dict[str, Any] = {}
        self._changed = False
        self._lock = threading.Lock()
        self.next_beat = 0.0
        self.pending = False
        self.last_sent = 0.0

    # -- heartbeats ------------------------------------------------------------------------

    def heartbeat(self, details: HeartbeatDetails | None,
                  files: Sequence[FileReference] = ()) -> None:
        if details is not None or files:
            info = _context.current_task()
            self.last_heartbeat()  # an earlier attempt's checkpoint, read before it is replaced
            payload = write_checkpoint(self.context, info, details, list(files), self._uploaded)
            with self._lock:
                if payload is not None:
                    self.details = payload
                    self._changed = True
        if self.monitor is None:
            return
        if time.monotonic() - self.last_sent >= _MIN_GAP:
            self._send()  # progress is worth telling at once
        else:
            self.pending = True

    def last_heartbeat(self) -> tuple[dict[str, Any] | None, list[FileReference]]:
        """The last checkpoint of an earlier attempt (read once per attempt)."""
        if self._previous is None:
            found = read_checkpoint(self.context, self.call_key)
            self._previous = found if found is not None else (self.journaled, [])
        return self._previous

    def reuse_uploaded(self, value: Any) -> Any:
        """`value` (the task's output) with files this attempt's checkpoints uploaded already
        given as the durable references made then (no second upload)."""
        return reuse_uploaded(value, self._uploaded)

    def materialize(self, value: Any, force: bool = False) -> Any:
        return materialize_value(value, self.context, _context.current_task(), force)

    def _send(self) -> None:
        with self._lock:
            details, changed = self.details, self._changed
            self._changed = False
        self.pending = False
        self.last_sent = time.monotonic()
        try:
            _monitor(self.monitor).beat.remote(self.context.run_id, self.call_key, self.attempt,
                                               details if changed else None, time.time())
        except Exception:  # a beat must never fail the task; the monitor notices the silence
            pass

    def start(self) -> None:
        if self.monitor is None:
            return
        if self.period:
            self.next_beat = time.monotonic() + min(self.period, 1.0)
        if self.start_beat:
            self._send()
        _beater().running[id(self)] = self

    def stop(self) -> None:
        if self.monitor is not None:
            _beater().running.pop(id(self), None)

    # -- cleanup ---------------------------------------------------------------------------

    def cleanup_files(self) -> int:
        return cleanup_scratch(self.context)

    def cleanup_storage(self) -> int:
        return cleanup_transient(self.context)
