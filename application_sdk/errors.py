"""Errors users see and raise. One root, retry semantics carried on the error.

Every error here must survive a pickle round trip: they are raised inside Ray workers and
re-raised in the driver. Subclasses therefore keep a single message argument.
"""

from __future__ import annotations

__all__ = [
    "AppContextError",
    "AppError",
    "ContractError",
    "ContractValidationError",
    "DefinitionError",
    "HeartbeatTimeoutError",
    "NonRetryableError",
    "NondeterminismError",
    "PayloadSafetyError",
    "PayloadTooLargeError",
    "ProgressStalledError",
    "RetryableError",
    "RunCancelledError",
    "RunFailedError",
    "SecretNotFoundError",
    "StateError",
    "StorageIntegrityError",
    "TaskBudgetExceededError",
    "TaskError",
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


class RetryableError(AppError):
    """Raise from a task for a transient failure: retried per the task's RetryPolicy, as any
    error that is not non-retryable is; the class says so where it is raised."""

    non_retryable = False


class AppContextError(AppError, RuntimeError):
    """`self.context`, `self.logger`, a heartbeat or `continue_with` was used where it does not
    exist (outside a run, outside a task, or in the wrong part of one)."""

    non_retryable = True


class DefinitionError(TypeError, AppError):
    """An App, task or contract class is defined wrongly (raised when the class is created)."""

    non_retryable = True


class ContractValidationError(DefinitionError):
    """Something that is not a contract class (`Input`, `Output`, `HeartbeatDetails`) was
    passed to a contract helper (`is_backwards_compatible`, `has_default`,
    `validate_payload_safety`)."""


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
    """A run ended FAILED; the task's error (when there is one) is the `__cause__`.

    `task` is the task that failed the run (None when run() itself raised), `error_type` the
    class name of the error that did, and `non_retryable` whether that error said retrying
    cannot help (a NonRetryableError, a type in non_retryable_errors): resuming the run would
    fail the same way until something changes. The same facts are in the run record's
    `error` (what `status` shows)."""

    def __init__(self, message: str, *, task: str | None = None, error_type: str = "",
                 non_retryable: bool = False) -> None:
        super().__init__(message)
        self.task = task
        self.error_type = error_type
        self.non_retryable = non_retryable

    def __reduce__(self):  # keep pickling working with the keyword-only facts
        return (_run_failed, (self.args[0] if self.args else "", self.task, self.error_type,
                              self.non_retryable))


def _run_failed(message: str, task: str | None, error_type: str,
                non_retryable: bool) -> RunFailedError:
    return RunFailedError(message, task=task, error_type=error_type, non_retryable=non_retryable)


class SecretNotFoundError(NonRetryableError):
    """`get_secret(name)` found no such secret in the run's secret folder or the environment.
    The message names the secret and where it looked, never a value."""


class StateError(NonRetryableError):
    """`save_state`/`load_state` was given a bad key or value (not JSON, too large), or called
    where state cannot be written (in run(): it is I/O)."""


class RunCancelledError(AppError):
    """A run ended CANCELLED at a user's request."""


class HeartbeatTimeoutError(AppError):
    """An attempt sent no heartbeat for heartbeat_timeout_seconds (frozen process, lost node),
    or, with `enforce_progress`, reported no new heartbeat details for max_no_progress_seconds.

    Silence is retried like a lost worker (the retry budget is not spent, `max_worker_losses`
    bounds it); stalled progress (`ProgressStalledError`) spends the retry budget."""


class ProgressStalledError(HeartbeatTimeoutError):
    """With `enforce_progress`: the attempt beats but its heartbeat details stopped changing
    for max_no_progress_seconds (its process lives; the task itself is stuck). With
    `auto_heartbeat_seconds=None`: the task's own heartbeat() calls stopped for
    heartbeat_timeout_seconds. Spends the retry budget (the task's fault, not the node's)."""


class TaskUnschedulableError(NonRetryableError):
    """A task asks for resources (CPUs, memory, custom resources) no node of the cluster has."""


class TaskError(AppError):
    """A task's exception that could not cross from the worker to the driver as itself (it
    does not pickle, like aiohttp's `ClientResponseError`), carried as data instead.

    `type_names` lists the original's classes along its MRO, qualified and plain, so
    `non_retryable_errors` still matches it by name; `remote_traceback` is the worker's
    traceback as text; `non_retryable` is the original's (its `non_retryable` attribute, or
    a `retryable = False` attribute as connector libraries set it).
    """

    def __init__(self, message: str, type_names: tuple[str, ...] = (),
                 remote_traceback: str = "", non_retryable: bool = False) -> None:
        super().__init__(message)
        self.type_names = tuple(type_names)
        self.remote_traceback = remote_traceback
        self.non_retryable = non_retryable

    @property
    def type_name(self) -> str:
        """The original's class name (what a user recognises)."""
        return self.type_names[1] if len(self.type_names) > 1 else type(self).__name__

    def __reduce__(self):  # keep pickling (Ray) working with the extra arguments
        return (type(self), (self.args[0] if self.args else "", self.type_names,
                             self.remote_traceback, self.non_retryable))
