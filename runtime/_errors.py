"""Errors of the runtime's own (the app-facing ones live in application_sdk.errors)."""

from __future__ import annotations

from application_sdk.errors import AppError, TaskError

__all__ = ["InputValidationError", "RunConflictError", "UsageError", "error_type_names",
           "is_non_retryable"]


class UsageError(AppError, ValueError):
    """The runtime was called wrongly (CLI exit code 2)."""

    non_retryable = True


class InputValidationError(UsageError):
    """The run's input does not match the entry point's Input type. Nothing was written."""


class RunConflictError(UsageError):
    """A run id that exists was started again with a different input or entry point."""


def error_type_names(error: BaseException) -> tuple[str, ...]:
    """Qualified and plain class names along the error's MRO (what `non_retryable_errors`
    matches); a `TaskError` answers with the names of the exception it stands for."""
    if isinstance(error, TaskError) and error.type_names:
        return error.type_names
    names: list[str] = []
    for klass in type(error).__mro__:
        names += [f"{klass.__module__}.{klass.__qualname__}", klass.__qualname__]
    return tuple(names)


def is_non_retryable(error: BaseException) -> bool:
    """The error says retrying cannot help: `non_retryable = True` (the framework's errors),
    or `retryable = False` (the convention of connector libraries, e.g. an HTTP 401)."""
    return bool(getattr(error, "non_retryable", False)) or \
        getattr(error, "retryable", True) is False
