"""Dispatch: attempts to Ray and back, their timeouts, heartbeats and failure classification.

Rooms: `_executor` (one attempt on Ray: dispatch, await, kill), `_heartbeat` (the monitor actor
and the driver's watch over it), `_failures` (what went wrong, and whether to retry; pure).
"""

from ._executor import Attempt, RayExecutor
from ._failures import Decision, Failure, FailureKind, classify, decide, error_type_names
from ._heartbeat import Attempts, HeartbeatMonitor, HeartbeatWatch, shared_monitor

__all__ = [
    "Attempt",
    "Attempts",
    "Decision",
    "Failure",
    "FailureKind",
    "HeartbeatMonitor",
    "HeartbeatWatch",
    "RayExecutor",
    "classify",
    "decide",
    "error_type_names",
    "shared_monitor",
]
