"""The App Framework API: everything a connector author imports."""

from .app import App, RetryPolicy, entrypoint, now, random, task, uuid4
from .contracts import FileReference, HeartbeatDetails, Input, Output, StorageTier
from .errors import NonRetryableError

__all__ = [
    "App",
    "FileReference",
    "HeartbeatDetails",
    "Input",
    "NonRetryableError",
    "Output",
    "RetryPolicy",
    "StorageTier",
    "entrypoint",
    "now",
    "random",
    "task",
    "uuid4",
]
