"""Errors of the runtime's own (the app-facing ones live in application_sdk.errors)."""

from __future__ import annotations

from application_sdk.errors import AppError

__all__ = ["InputValidationError", "RunConflictError", "UsageError"]


class UsageError(AppError, ValueError):
    """The runtime was called wrongly (CLI exit code 2)."""

    non_retryable = True


class InputValidationError(UsageError):
    """The run's input does not match the entry point's Input type. Nothing was written."""


class RunConflictError(UsageError):
    """A run id that exists was started again with a different input or entry point."""
