"""The App Framework API: everything a connector author imports."""

from ._appcontext import AppContext
from .app import NO_RETRY, App, Pool, RetryPolicy, entrypoint, now, random, task, uuid4
from .contracts import (
    FileReference,
    HeartbeatDetails,
    Input,
    Output,
    OutputStatus,
    StorageTier,
)
from .errors import NonRetryableError, RetryableError

__all__ = [
    "NO_RETRY",
    "App",
    "AppContext",
    "FileReference",
    "HeartbeatDetails",
    "Input",
    "NonRetryableError",
    "Output",
    "OutputStatus",
    "Pool",
    "RetryPolicy",
    "RetryableError",
    "StorageTier",
    "entrypoint",
    "now",
    "random",
    "task",
    "uuid4",
]
