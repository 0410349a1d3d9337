"""What went wrong with an attempt, and whether to try again. Pure: no Ray calls, no I/O."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass

from ray import exceptions as rx

from application_sdk.app import RetryPolicy, TaskOptions
from application_sdk.errors import (
    HeartbeatTimeoutError,
    ProgressStalledError,
    TaskTimeoutError,
    WorkerLostError,
)

from .._errors import error_type_names, is_non_retryable

__all__ = ["Decision", "Failure", "FailureKind", "classify", "decide", "error_type_names"]

_LOST = (
    rx.WorkerCrashedError,
    rx.NodeDiedError,
    rx.ObjectLostError,
    rx.OwnerDiedError,
    rx.LocalRayletDiedError,
    rx.RaySystemError,
)


class FailureKind(enum.StrEnum):
    ERROR = "error"
    """The task raised."""
    TIMEOUT = "timeout"
    """The attempt ran past timeout_seconds and was cancelled."""
    LOST = "lost"
    """The worker or node running it died."""
    HEARTBEAT = "heartbeat"
    """No heartbeat for heartbeat_timeout_seconds: a frozen process or a silent node, retried
    like a lost worker."""
    STALLED = "stalled"
    """Heartbeat details unchanged for max_no_progress_seconds, with enforce_progress."""

    @property
    def lost(self) -> bool:
        """Whether the attempt's worker or node is gone or silent (not the task's fault): such
        failures are bounded by max_worker_losses, not the retry policy."""
        return self in (FailureKind.LOST, FailureKind.HEARTBEAT)


@dataclass(frozen=True)
class Failure:
    """One failed attempt."""

    kind: FailureKind
    error: BaseException
    """The error to show the user (the task's own exception where there is one)."""
    type_names: tuple[str, ...]
    """Qualified and plain class names along the error's MRO."""

    @property
    def type_name(self) -> str:
        return getattr(self.error, "type_name", None) or type(self.error).__name__

    @property
    def message(self) -> str:
        return str(self.error)

    def as_record(self) -> dict[str, str]:
        return {"kind": self.kind.value, "type": self.type_name, "message": self.message[:2000]}


def classify(exc: BaseException, timeout: float | None = None) -> Failure:
    """Turn what awaiting a Ray attempt raised into a Failure."""
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) and not isinstance(
        exc, rx.RayTaskError
    ):
        err = TaskTimeoutError(f"attempt ran past its timeout of {timeout}s and was cancelled")
        return Failure(FailureKind.TIMEOUT, err, error_type_names(err))
    if isinstance(exc, rx.RayTaskError):
        cause = exc.cause if isinstance(exc.cause, BaseException) else None
        if cause is not None and not isinstance(cause, _LOST):
            return Failure(FailureKind.ERROR, cause, error_type_names(cause))
        if cause is None:
            return Failure(FailureKind.ERROR, exc, error_type_names(exc))
        exc = cause
    if isinstance(exc, _LOST):
        err = WorkerLostError(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}")
        return Failure(FailureKind.LOST, err, error_type_names(err))
    if isinstance(exc, WorkerLostError):
        return Failure(FailureKind.LOST, exc, error_type_names(exc))
    if isinstance(exc, ProgressStalledError):
        return Failure(FailureKind.STALLED, exc, error_type_names(exc))
    if isinstance(exc, HeartbeatTimeoutError):
        return Failure(FailureKind.HEARTBEAT, exc, error_type_names(exc))
    return Failure(FailureKind.ERROR, exc, error_type_names(exc))


@dataclass(frozen=True)
class Decision:
    retry: bool
    delay: float = 0.0
    reason: str = ""
    non_retryable: bool = False
    """Given up because the error (or its type) is non-retryable, not for lack of attempts."""


def decide(
    options: TaskOptions,
    failure: Failure,
    failed_attempts: int,
    worker_losses: int,
    elapsed: float,
) -> Decision:
    """Retry or give up. `failed_attempts` and `worker_losses` include this failure."""
    policy: RetryPolicy = options.retry_policy
    if failure.kind.lost:
        if worker_losses > options.max_worker_losses:
            return Decision(False, reason=f"lost its worker {worker_losses} times "
                                          f"(max_worker_losses={options.max_worker_losses})")
        return Decision(True, 0.0)
    if is_non_retryable(failure.error):
        return Decision(False, reason="the error is non-retryable", non_retryable=True)
    if policy.is_non_retryable(list(failure.type_names)):
        return Decision(False, reason="the error type is in non_retryable_errors",
                        non_retryable=True)
    if failed_attempts >= policy.max_attempts:
        return Decision(False, reason=f"no attempts left ({failed_attempts} of "
                                      f"{policy.max_attempts} used)")
    delay = policy.delay(failed_attempts)
    deadline = options.schedule_to_close_seconds
    if deadline is not None and elapsed + delay >= deadline:
        return Decision(False, reason=f"schedule_to_close_seconds={deadline} would pass")
    return Decision(True, delay)
