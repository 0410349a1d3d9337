"""What a running task reaches through `self.heartbeat()` and the built-in cleanup tasks.

Heartbeats come from one daemon thread per worker process (not the task's thread), so a task
blocked in a synchronous call or a busy loop still beats while its process lives. Attempts
register with it when they start, which costs a dict insert, not a thread start. The first beat
is sent after min(period, 1 s): short tasks never send one, so heartbeats cost nothing on a
fan-out of quick tasks. Beats are fire-and-forget actor calls to the run's heartbeat monitor; no
store writes.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from .._runcontext import NAMESPACE, RunContext
from ._cleanup import cleanup_scratch, cleanup_transient

__all__ = ["WorkerTaskRuntime"]

_TICK = 0.2


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
                if attempt.period and now >= attempt.next_beat:
                    attempt.next_beat = now + attempt.period
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
        self.details = details
        self._changed = False
        self._lock = threading.Lock()
        self.next_beat = 0.0

    # -- heartbeats ------------------------------------------------------------------------

    def heartbeat(self, details: dict[str, Any] | None) -> None:
        with self._lock:
            if details is not None:
                self.details = details
                self._changed = True
        if self.monitor is not None and details is not None:
            self._send()  # progress is worth telling at once: it survives a crash of this attempt

    def _send(self) -> None:
        with self._lock:
            details, changed = self.details, self._changed
            self._changed = False
        try:
            _monitor(self.monitor).beat.remote(self.context.run_id, self.call_key, self.attempt,
                                               details if changed else None, time.time())
        except Exception:  # a beat must never fail the task; the monitor notices the silence
            pass

    def start(self) -> None:
        if self.monitor is None or not self.period:
            return
        self.next_beat = time.monotonic() + min(self.period, 1.0)
        _beater().running[id(self)] = self

    def stop(self) -> None:
        _beater().running.pop(id(self), None)

    # -- cleanup ---------------------------------------------------------------------------

    def cleanup_files(self) -> int:
        return cleanup_scratch(self.context)

    def cleanup_storage(self) -> int:
        return cleanup_transient(self.context)
