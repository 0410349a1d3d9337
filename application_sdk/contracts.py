"""Typed contracts: what a run or a task takes (`Input`) and returns (`Output`).

Records that cross the store are `model_dump(mode="json")` of these models, so a contract must be
plain data. `Input` ignores unknown keys (warning once per class and key set) so an older caller
can still start a newer app; `Output` forbids them, so a field removed from an `Output` shows up
as a `ContractError` on replay instead of silently dropping recorded data.
"""

from __future__ import annotations

import enum
import os
import threading
import types
import typing
import warnings
from collections import abc
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, TypeVar

import annotated_types
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Secret,
    SecretBytes,
    SecretStr,
    model_validator,
)
from pydantic.fields import FieldInfo

from .errors import ContractError, ContractValidationError, DefinitionError, PayloadSafetyError

__all__ = [
    "BoundedList",
    "ContractValidationError",
    "FileReference",
    "HeartbeatDetails",
    "Input",
    "MaxItems",
    "Output",
    "OutputStatus",
    "PayloadSafetyError",
    "StorageTier",
    "assert_backwards_compatible",
    "has_default",
    "is_backwards_compatible",
    "validate_payload_safety",
]


@dataclass(frozen=True, init=False)
class MaxItems(annotated_types.GroupedMetadata):
    """Bound of a list, set or dict field: `Annotated[list[str], MaxItems(100)]` (or
    `MaxItems(limit=100)`). `.limit` is the bound.

    Enforced when the model is validated (it stands for pydantic's max_length), so an
    oversized value fails where it is built, not later as a payload-size error.
    """

    limit: int
    """The most items the field may hold."""

    def __init__(self, limit: int | None = None, *, max_items: int | None = None) -> None:
        value = limit if limit is not None else max_items
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise TypeError(f"MaxItems(limit=...) takes a whole number >= 0, got {value!r}")
        object.__setattr__(self, "limit", value)

    def __iter__(self) -> abc.Iterator[annotated_types.MaxLen]:
        yield annotated_types.MaxLen(self.limit)


T = TypeVar("T")
BOUNDED_LIST_ITEMS = 10_000
BoundedList = Annotated[list[T], MaxItems(BOUNDED_LIST_ITEMS)]
"""`BoundedList[str]`: a list of at most 10,000 items."""

_COLLECTIONS = {list, set, frozenset, dict, abc.Sequence, abc.MutableSequence, abc.Set,
                abc.MutableSet, abc.Mapping, abc.MutableMapping, abc.Iterable, abc.Collection}


def _is_bound(meta: Any) -> bool:
    if isinstance(meta, annotated_types.MaxLen | MaxItems):
        return True
    return isinstance(meta, FieldInfo) and any(_is_bound(m) for m in meta.metadata)


def _unsafe(tp: Any, bounded: bool, seen: set[int]) -> str | None:
    """Why `tp` could carry an unbounded payload, or None if it cannot."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *meta = typing.get_args(tp)
        return _unsafe(base, bounded or any(_is_bound(m) for m in meta), seen)
    if tp is Any:
        return "is typed Any"
    if tp in (bytes, bytearray, memoryview):
        return "is typed bytes"
    if origin in (typing.Union, types.UnionType):
        return next((w for a in typing.get_args(tp) if (w := _unsafe(a, bounded, seen))), None)
    if tp is tuple or origin is tuple:
        args = typing.get_args(tp)
        if (not args or args[-1] is Ellipsis) and not bounded:
            return "is a tuple of any length without a bound"
        return next((w for a in args if a is not Ellipsis and (w := _unsafe(a, False, seen))),
                    None)
    if tp in _COLLECTIONS or origin in _COLLECTIONS:
        if not bounded:
            kind = "dict" if (tp in (dict, abc.Mapping) or origin in (dict, abc.Mapping,
                                                                      abc.MutableMapping)) \
                else "list"
            return f"is a {kind} without a bound"
        return next((w for a in typing.get_args(tp) if (w := _unsafe(a, False, seen))), None)
    if isinstance(tp, type) and issubclass(tp, BaseModel) and id(tp) not in seen:
        seen.add(id(tp))
        for name, field in tp.model_fields.items():
            why = _unsafe(field.annotation, any(_is_bound(m) for m in field.metadata), seen)
            if why:
                return f"holds {tp.__qualname__}.{name}, which {why}"
    return None


def check_payload_safety(cls: type[BaseModel], skip_fields: abc.Iterable[str] = ()) -> None:
    """Refuse fields that could carry unbounded payloads (PayloadSafetyError)."""
    skip = set(skip_fields)
    for name, field in cls.model_fields.items():
        if name in skip:
            continue
        bounded = any(_is_bound(m) for m in field.metadata)
        why = _unsafe(field.annotation, bounded, {id(cls)})
        if why:
            raise PayloadSafetyError(
                f"{cls.__qualname__}.{name} {why}, so it could carry an unbounded payload: "
                f"bound it (Annotated[list[str], MaxItems(1000)] or BoundedList[str]), pass "
                f"large data as a FileReference, or opt out with "
                f"`class {cls.__name__}(..., allow_unbounded_fields=True)`"
            )


class _Contract(BaseModel):
    """Contract base: payload safety is checked when a subclass is defined."""

    def __init_subclass__(cls, allow_unbounded_fields: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)

    @classmethod
    def __pydantic_init_subclass__(cls, allow_unbounded_fields: bool = False,
                                   **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if not allow_unbounded_fields:
            check_payload_safety(cls)


def _require_contract(cls: Any, what: str) -> type[BaseModel]:
    if not (isinstance(cls, type) and issubclass(cls, _Contract | FileReference)):
        shown = getattr(cls, "__qualname__", None) or type(cls).__qualname__
        raise ContractValidationError(
            f"{what} must be a contract class (an Input, Output or HeartbeatDetails "
            f"subclass), got {shown}")
    return cls


def validate_payload_safety(cls: type[BaseModel], *,
                            skip_fields: abc.Iterable[str] | None = None) -> None:
    """Raise PayloadSafetyError if a field of `cls` (other than `skip_fields`) could carry an
    unbounded payload; the check every contract class gets when it is defined."""
    check_payload_safety(_require_contract(cls, "validate_payload_safety: cls"),
                         skip_fields or ())


def has_default(cls: type[BaseModel], field_name: str) -> bool:
    """Whether `cls` has a field `field_name` with a default (False when it has no such
    field)."""
    field = _require_contract(cls, "has_default: cls").model_fields.get(field_name)
    return field is not None and not field.is_required()


def is_backwards_compatible(old: type[BaseModel],
                            new: type[BaseModel]) -> tuple[bool, list[str]]:
    """(True, []) if records written with `old` validate as `new`, else (False, reasons).

    Allowed: adding a field with a default. Breaking: adding a required field, removing or
    renaming a field, changing a field's type (make a V2 model instead).
    """
    _require_contract(old, "is_backwards_compatible: old")
    _require_contract(new, "is_backwards_compatible: new")
    problems = []
    for name, field in old.model_fields.items():
        if name not in new.model_fields:
            problems.append(f"field {name!r} was removed or renamed")
        elif new.model_fields[name].annotation != field.annotation:
            problems.append(f"field {name!r} changed type from {field.annotation!r} to "
                            f"{new.model_fields[name].annotation!r}")
    for name, field in new.model_fields.items():
        if name not in old.model_fields and field.is_required():
            problems.append(f"field {name!r} was added without a default")
    return not problems, problems


def assert_backwards_compatible(old: type[BaseModel], new: type[BaseModel]) -> None:
    """Raise ContractError if records written with `old` may not validate as `new`
    (`is_backwards_compatible`, as an assertion for a unit test)."""
    ok, problems = is_backwards_compatible(old, new)
    if not ok:
        raise ContractError(
            f"{new.__qualname__} is not backwards compatible with {old.__qualname__}: "
            + "; ".join(problems) + ". Add fields with defaults only, or make a new (V2) model"
        )

_warned: set[tuple[type, frozenset[str]]] = set()
_warned_lock = threading.Lock()
_known_keys: dict[type[BaseModel], frozenset[str]] = {}


def _warn_unknown_keys(cls: type[BaseModel], data: Any) -> None:
    if not isinstance(data, dict):
        return
    known = _known_keys.get(cls)
    if known is None:
        fields = cls.model_fields
        known = _known_keys[cls] = frozenset(
            [*fields, *(f.alias for f in fields.values() if f.alias)])
    if known.issuperset(data):  # one C call: this runs for every contract validated
        return
    unknown = frozenset(data).difference(known)
    with _warned_lock:
        if (cls, unknown) in _warned:
            return
        _warned.add((cls, unknown))
    warnings.warn(
        f"{cls.__name__} ignores unknown field(s) {sorted(unknown)}",
        stacklevel=4,
    )


def _secret_field(tp: Any, seen: set[int]) -> str | None:
    """How `tp` holds a pydantic secret type (SecretStr, SecretBytes, Secret[...]), or None."""
    base = typing.get_origin(tp) or tp  # Secret[str] is a generic alias of Secret
    if isinstance(base, type) and issubclass(base, (SecretStr, SecretBytes, Secret)):
        return f"is typed {getattr(tp, '__name__', None) or base.__name__}"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        if id(tp) in seen:
            return None
        seen.add(id(tp))
        for name, field in tp.model_fields.items():
            why = _secret_field(field.annotation, seen)
            if why:
                return f"holds {tp.__qualname__}.{name}, which {why}"
        return None
    return next((w for a in typing.get_args(tp) if (w := _secret_field(a, seen))), None)


def check_no_secrets(cls: type[BaseModel]) -> None:
    """Refuse Input fields typed as secrets (DefinitionError): a run's Input is stored in its
    run record, readable by whoever reads the store, so a secret goes by reference."""
    for name, field in cls.model_fields.items():
        why = _secret_field(field.annotation, {id(cls)})
        if why:
            raise DefinitionError(
                f"{cls.__qualname__}.{name} {why}: an Input is stored in the run record, "
                f"readable by whoever reads the store, so secrets go by reference. Pass the name "
                f"of an environment variable or of a secret instead (e.g. `{name}_env: str = "
                f"\"PG_PASSWORD\"`) and resolve it inside a @task (`os.environ[input.{name}_env]`)"
            )


class Input(_Contract):
    """Base class of everything a run or a task takes. A field typed `SecretStr` is refused
    when the class is defined: Inputs are stored, secrets go by reference."""

    model_config = ConfigDict(extra="ignore")

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        check_no_secrets(cls)  # first: `list[SecretStr]` is a secret before it is unbounded
        super().__pydantic_init_subclass__(**kwargs)

    @model_validator(mode="before")
    @classmethod
    def _note_unknown_keys(cls, data: Any) -> Any:
        _warn_unknown_keys(cls, data)
        return data


class OutputStatus(enum.StrEnum):
    """The coarse outcome an Output reports (`Output.status`)."""

    SUCCESS = "success"
    """The work was done."""
    PARTIAL_SUCCESS = "partial_success"
    """Usable output, with some non-fatal problems (entities skipped, say)."""
    FAILURE = "failure"
    """No usable output (the run itself may still have completed)."""


def _is_success(value: Any) -> bool:
    return value == OutputStatus.SUCCESS


class Output(_Contract):
    """Base class of everything a run or a task returns.

    Every Output has `status` (an `OutputStatus`, default SUCCESS). It is written out only
    when it is not SUCCESS, so outputs recorded before the field existed, and outputs that
    leave it alone, serialize exactly as they did (journals, printed JSON, call keys)."""

    model_config = ConfigDict(extra="forbid")

    status: OutputStatus = Field(default=OutputStatus.SUCCESS, exclude_if=_is_success)
    """The coarse outcome: SUCCESS (default), PARTIAL_SUCCESS or FAILURE."""


class HeartbeatDetails(_Contract):
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


def _is_true(value: Any) -> bool:
    return value is True


class FileReference(BaseModel):
    """A file or a directory of files handed from one task to another instead of its bytes.
    Frozen and hashable (a new reference is made with `model_copy(update=...)`)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

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
    auto_materialize: bool = Field(default=True, exclude_if=_is_true)
    """True: the runtime uploads a local reference a task returns and downloads a durable one
    before a task that takes it runs. False: the task does it when it wants
    (`storage.arrow.read_table(ref)` / `local_path(ref)` inside a task fetch it then). Written
    out only when False, so references serialize as they did before the field existed."""

    @staticmethod
    def from_local(path: str | os.PathLike[str], *,
                   tier: StorageTier = StorageTier.TRANSIENT) -> FileReference:
        """A local (not yet durable) reference to a file or a directory; `file_count` counts
        a directory's files (1 when the path does not exist yet)."""
        path = os.fspath(path)
        count = 1
        if os.path.isdir(path):
            count = sum(len(files) for _, _, files in os.walk(path))
        return FileReference(local_path=path, file_count=count, tier=StorageTier(tier))
