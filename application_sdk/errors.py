"""Errors users see and raise. One root, retry semantics carried on the error.

Every error here must survive a pickle round trip: they are raised inside Ray workers and
re-raised in the driver. Subclasses therefore keep a single message argument.
"""

from __future__ import annotations

__all__ = [
    "AppError",
    "ContractError",
    "DefinitionError",
    "HeartbeatTimeoutError",
    "NonRetryableError",
    "NondeterminismError",
    "PayloadSafetyError",
    "PayloadTooLargeError",
    "RunCancelledError",
    "RunFailedError",
    "StorageIntegrityError",
    "TaskBudgetExceededError",
    "TaskTimeoutError",
    "TaskUnschedulableError",
    "WorkerLostError",
]


class AppError(Exception):
    """Root of the framework's errors. `non_retryable` tells the runtime not to retry."""

    non_retryable: bool = False


class NonRetryableError(AppError):
    """Raise from a task to fail it at once, without spending further attempts."""

    non_retryable = True


class DefinitionError(TypeError, AppError):
    """An App, task or contract class is defined wrongly (raised when the class is created)."""

    non_retryable = True


class PayloadSafetyError(DefinitionError):
    """A contract field could carry an unbounded payload (Any, bytes, unbounded list/dict)."""


class PayloadTooLargeError(NonRetryableError):
    """A task input or output serialized over the payload limit."""


class ContractError(NonRetryableError):
    """A recorded value no longer validates against the current contract."""


class NondeterminismError(NonRetryableError):
    """run() did something that would not replay the same way."""


class StorageIntegrityError(NonRetryableError):
    """A stored object does not match the hash recorded for it."""


class TaskBudgetExceededError(NonRetryableError):
    """A run asked for more task executions than its budget allows."""


class TaskTimeoutError(AppError):
    """One attempt of a task ran past its timeout and was cancelled."""


class WorkerLostError(AppError):
    """The worker or node running an attempt died; retried without spending the retry budget."""


class RunFailedError(AppError):
    """A run ended FAILED; the task's error (when there is one) is the `__cause__`."""


class RunCancelledError(AppError):
    """A run ended CANCELLED at a user's request."""


class HeartbeatTimeoutError(AppError):
    """An attempt sent no heartbeat for heartbeat_timeout_seconds (frozen process, lost node),
    or, with `enforce_progress`, reported no new heartbeat details for max_no_progress_seconds."""


class TaskUnschedulableError(NonRetryableError):
    """A task asks for resources (CPUs, memory, custom resources) no node of the cluster has."""
