"""Typed contracts: what a run or a task takes (`Input`) and returns (`Output`).

Records that cross the store are `model_dump(mode="json")` of these models, so a contract must be
plain data. `Input` ignores unknown keys (warning once per class and key set) so an older caller
can still start a newer app; `Output` forbids them, so a field removed from an `Output` shows up
as a `ContractError` on replay instead of silently dropping recorded data.
"""

from __future__ import annotations

import enum
import threading
import warnings
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator

__all__ = [
    "FileReference",
    "HeartbeatDetails",
    "Input",
    "Output",
    "StorageTier",
]

_warned: set[tuple[type, frozenset[str]]] = set()
_warned_lock = threading.Lock()


def _warn_unknown_keys(cls: type[BaseModel], data: Any) -> None:
    if not isinstance(data, dict):
        return
    known = set(cls.model_fields)
    known.update(f.alias for f in cls.model_fields.values() if f.alias)
    unknown = frozenset(k for k in data if k not in known)
    if not unknown:
        return
    with _warned_lock:
        if (cls, unknown) in _warned:
            return
        _warned.add((cls, unknown))
    warnings.warn(
        f"{cls.__name__} ignores unknown field(s) {sorted(unknown)}",
        stacklevel=4,
    )


class Input(BaseModel):
    """Base class of everything a run or a task takes."""

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _note_unknown_keys(cls, data: Any) -> Any:
        _warn_unknown_keys(cls, data)
        return data


class Output(BaseModel):
    """Base class of everything a run or a task returns."""

    model_config = ConfigDict(extra="forbid")


class HeartbeatDetails(BaseModel):
    """Typed progress a task records with `self.heartbeat(details)`; unknown keys are ignored."""

    model_config = ConfigDict(extra="ignore")


class StorageTier(enum.StrEnum):
    """How long the runtime keeps a stored file."""

    TRANSIENT = "transient"
    """Deleted by `cleanup_storage` when the run completes or is cancelled."""
    RETAINED = "retained"
    """Kept until `connector-runtime gc` finds it older than the retention."""
    PERSISTENT = "persistent"
    """Never deleted by the runtime."""


class FileReference(BaseModel):
    """A file or a directory of files handed from one task to another instead of its bytes."""

    model_config = ConfigDict(extra="ignore")

    FORMATS: ClassVar[frozenset[str]] = frozenset({"arrow", "parquet", "jsonl", "csv", "other"})

    local_path: str | None = None
    """Where the file is on the worker that produced or materialized it."""
    storage_path: str | None = None
    """Key of the object (or directory prefix) in the run's store, once persisted."""
    is_durable: bool = False
    """True once the file is in the store; only durable references cross nodes."""
    file_count: int = 1
    """Number of files: 1 for a file, more for a directory reference."""
    tier: StorageTier = StorageTier.TRANSIENT
    size_bytes: int | None = None
    sha256: str | None = None
    format: str = "other"
