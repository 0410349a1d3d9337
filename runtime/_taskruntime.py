"""What a running task reaches through `self.heartbeat()` and the built-in cleanup tasks.

Heartbeats come from a daemon thread of the attempt's own, so a task blocked in a synchronous
call or a busy loop still beats while its process lives. The first beat is sent after
min(period, 1 s): short tasks never send one, so heartbeats cost nothing on a fan-out of quick
tasks. Beats are fire-and-forget actor calls to the run's heartbeat monitor; no store writes.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._worker import RunContext

__all__ = ["WorkerTaskRuntime"]


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
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

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
            self.monitor.beat.remote(self.context.run_id, self.call_key, self.attempt,
                                     details if changed else None, time.time())
        except Exception:  # a beat must never fail the task; the monitor notices the silence
            pass

    def _beat_loop(self) -> None:
        assert self.period is not None
        wait = min(self.period, 1.0)
        while not self._stop.wait(wait):
            self._send()
            wait = self.period

    def start(self) -> None:
        if self.monitor is None or not self.period:
            return
        self._thread = threading.Thread(target=self._beat_loop, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    # -- cleanup ---------------------------------------------------------------------------

    def cleanup_files(self) -> int:
        from ._cleanup import cleanup_scratch

        return cleanup_scratch(self.context)

    def cleanup_storage(self) -> int:
        from ._cleanup import cleanup_transient

        return cleanup_transient(self.context)
