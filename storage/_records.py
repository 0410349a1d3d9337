"""What a record must look like to be acted on: size limits and schemas, checked where records
leave the store (`storage._runs`, `storage._lease`).

A record whose checksum (or MAC) holds may still be hostile: anyone who can write the store can
write any msgpack with a valid checksum. So every record is validated into its schema where it
is read, and one that does not fit is `InvalidRecordError` naming its key and the field:
readers report it and go on with the others (`list_runs` collects such problems, a journal
segment that does not fit is counted as corrupt), nothing downstream sees a wrong type.

Limits (bytes, checked before decoding):

    run record       $CONNECTOR_RUNTIME_MAX_RECORD_BYTES, default 8 MiB: an input and an
                     output at the default 2 MiB payload limit, with room
    journal segment  32 times that, at least 256 MiB: a group commit of up to 2,000 records,
                     a compaction of a run's whole journal
    lease, cancel    64 KiB

Writers refuse to write a record over its limit (`RecordTooLargeError`), so the runtime never
writes what it would refuse to read. Values inside records nest at most 64 levels: no contract
makes deeper JSON, and pydantic refuses to serialize past about 255 levels, so a deeper one
would break `status` later instead of being reported now.

Journal records: the fields each kind's readers index must be there with their types, the
others they read must have their types when present; unknown kinds and extra fields pass (a
newer runtime may add them, and readers skip what they do not know).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any

from ._errors import InvalidRecordError, StoreError
from ._messages import printable

__all__ = ["RecordProblem", "check_depth", "check_journal_batch", "lease_limit",
           "run_record_limit", "segment_limit"]

LIMIT_VAR = "CONNECTOR_RUNTIME_MAX_RECORD_BYTES"
_DEFAULT_RUN_RECORD = 8 * 2**20
_MIN_RUN_RECORD = 2**20
_MIN_SEGMENT = 256 * 2**20
_SMALL = 64 * 1024
MAX_DEPTH = 64
SEGMENT_NAME = re.compile(r"(\d{10})-(\d{10})\.msgpack")


@dataclass(frozen=True)
class RecordProblem:
    """A record that was skipped: its store key (shown escaped) and why."""

    key: str
    reason: str

    def __str__(self) -> str:
        return f"{printable(self.key)}: {printable(self.reason)}"


def run_record_limit() -> int:
    text = os.environ.get(LIMIT_VAR)
    if not text:
        return _DEFAULT_RUN_RECORD
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < _MIN_RUN_RECORD:
        raise StoreError(f"{LIMIT_VAR}={text!r}: expected a number of bytes, at "
                         f"least {_MIN_RUN_RECORD} (default {_DEFAULT_RUN_RECORD})")
    return value


def segment_limit() -> int:
    return max(_MIN_SEGMENT, 32 * run_record_limit())


def lease_limit() -> int:
    """Leases and cancellation requests: a few names and numbers."""
    return _SMALL


def check_depth(value: Any, what: str, limit: int = MAX_DEPTH, *,
                json_only: bool = False) -> None:
    """InvalidRecordError if `value` nests maps and arrays deeper than `limit`, or, with
    `json_only`, holds a value JSON has no type for (bytes: a field every reader renders as
    JSON, `status --json` and the service among them)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            raise InvalidRecordError(f"{printable(what)}: nested deeper than {limit} levels")
        if json_only and any(isinstance(c, (bytes, bytearray)) for c in children):
            raise InvalidRecordError(f"{printable(what)}: holds bytes, where only JSON values "
                                     "belong")
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, (dict, list)))


_ANY = object()
_KINDS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # kind: (fields readers index, so required; fields that must have a type when present)
    "t": ({"k": str, "o": bytes}, {"n": str, "a": int, "ts": dict}),
    "f": ({"k": str, "n": str, "e": dict}, {"a": int, "r": bool, "ts": dict}),
    "v": ({"k": str, "v": _ANY}, {}),
    "h": ({"k": str, "d": _ANY}, {}),
    "o": ({"p": str}, {"k": str, "t": str}),
    "s": ({"e": int, "seen": dict}, {}),
    "c": ({"covers": list}, {}),
}
_NESTED = ("v", "d", "e", "seen")
"""Fields whose values readers hand on (to a task, to run(), to `status`): nesting bounded.
`ts` is only read for numbers; what is never handed on needs no bound (a compaction that
cannot re-encode a record is skipped)."""
_EMPTY: dict[str, Any] = {}


def check_journal_batch(batch: Any, key: str) -> list[dict[str, Any]]:
    """`batch` (a decoded segment) as a list of journal records; InvalidRecordError naming the
    first record that does not fit its kind's schema."""
    if not isinstance(batch, list):
        raise InvalidRecordError(f"{printable(key)}: a journal segment is a list of records, "
                                 f"not {type(batch).__name__}")
    for i, record in enumerate(batch):
        problem = _journal_problem(record, i)
        if problem:
            raise InvalidRecordError(f"{printable(key)}: record {i}: {problem}")
    return batch


def _journal_problem(record: Any, index: int) -> str | None:
    if type(record) is not dict:
        return f"not a map but {type(record).__name__}"
    kind = record.get("y")
    if kind == "t" and type(record.get("k")) is str and type(record.get("o")) is bytes \
            and type(record.get("n", "")) is str and type(record.get("a", 0)) is int \
            and type(record.get("ts", _EMPTY)) is dict:
        return None  # the common case, checked in one expression (most records are these)
    schema = _KINDS.get(kind) if isinstance(kind, str) else None
    if schema is None:
        return None  # no kind, or one of a newer runtime: readers skip it
    required, optional = schema
    for name in required:
        if name not in record:
            return f"kind {kind!r}: field {name!r} missing"
    for fields in (required, optional):
        for name, expected in fields.items():
            if expected is _ANY or name not in record:
                continue
            value = record[name]
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                return (f"kind {kind!r}: field {name!r} must be {expected.__name__}, not "
                        f"{type(value).__name__}")
    for name in _NESTED:
        value = record.get(name)
        if isinstance(value, (dict, list)):
            try:
                check_depth(value, f"field {name!r}", MAX_DEPTH)
            except InvalidRecordError as exc:
                return f"kind {kind!r}: {exc}"
    return _kind_problem(kind, record, index)


def _kind_problem(kind: str, record: dict[str, Any], index: int) -> str | None:
    """The finer rules of the kinds the loader itself acts on (seals and compactions) and of
    the failure record the driver spreads into a dict."""
    if kind == "f" and not all(isinstance(k, str) for k in record["e"]):
        return "kind 'f': field 'e' must be a map with string keys"
    if kind == "s":
        if record["e"] < 0 or not all(
                isinstance(e, int) and isinstance(n, int) and not isinstance(n, bool)
                and e >= 0 and n >= 0 for e, n in record["seen"].items()):
            return "kind 's': a seal names epochs and sequence numbers (integers, >= 0)"
    if kind == "c":
        if index != 0:
            return "kind 'c': a compaction header comes first in its segment"
        if not all(isinstance(n, str) and SEGMENT_NAME.fullmatch(n) for n in record["covers"]):
            return "kind 'c': field 'covers' must list segment names (EPOCH-SEQ.msgpack)"
    return None


def check_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value)
