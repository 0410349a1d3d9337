"""connector-runtime: run App Framework apps durably on Ray.

The public surface is small on purpose; the engine lives in private modules.
"""

from application_sdk.errors import RunCancelledError, RunFailedError
from storage import LeaseHeldError, RunRecord, RunStatus

from ._errors import InputValidationError, RunConflictError, UsageError

_LAZY = ("run_app", "run_app_async")
"""Imported on first use: the driver pulls in Ray (0.35 s), which the CLI's store-only verbs
(`status`, `list`, `cancel`, `trace`, `tasks`, `files`, `gc`) do without."""


def __getattr__(name: str) -> object:
    if name in _LAZY:
        from . import driver

        return getattr(driver, name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")

__all__ = [
    "InputValidationError",
    "LeaseHeldError",
    "RunCancelledError",
    "RunConflictError",
    "RunFailedError",
    "RunRecord",
    "RunStatus",
    "UsageError",
    "run_app",
    "run_app_async",
]
