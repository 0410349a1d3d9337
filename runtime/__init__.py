"""connector-runtime: run App Framework apps durably on Ray.

The public surface is small on purpose; the engine lives in private modules.
"""

from application_sdk.errors import RunCancelledError, RunFailedError
from storage import LeaseHeldError, RunRecord, RunStatus

from ._errors import InputValidationError, RunConflictError, UsageError
from .driver import run_app, run_app_async

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
