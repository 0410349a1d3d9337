"""Column type inference, schema unification, casting and a JSON-able schema form.

Design choices:

* Inference works on a small lattice of types so that unification is a true
  *join*: associative and commutative.  That matters because connector apps
  unify in a fan-out (each task unifies its batch of files, ``run()`` unifies
  the task results) and must get the same answer as unifying everything at
  once::

        null  <  int64  <  float64  <  string
        null  <  bool                <  string
        null  <  date32 <  timestamp[us]  <  string
        null  <  timestamp[us, tz=UTC]    <  string

  Any other pair of different types becomes ``string``.  Types outside the
  lattice (e.g. from a hand-written schema) are joined with
  ``pyarrow.unify_schemas(promote_options="permissive")`` and fall back to
  ``string`` when pyarrow refuses.
* ``bool`` joined with a number is ``string``, not a number: CSV values like
  ``"true"`` cannot be cast to int64, so a numeric join would reject rows.
* CSV cells are inferred from text with the ladder int64 -> float64 -> bool ->
  date32 -> timestamp[us] -> timestamp[us, UTC] -> string, trying only types at
  or above what earlier batches needed (the first type every value casts to
  wins).  Empty cells are null in every column; the tokens in ``NULL_TOKENS``
  are null in typed columns but kept verbatim in string columns (a name column
  may legitimately contain "NA").
* All unified fields are nullable: a column missing from one file is null there.
* Columns that are null everywhere keep the ``null`` type (Parquet stores it
  fine); turning them into ``string`` here would break associativity.
* The JSON form of a schema is human-readable (``{"fields": [{"name", "type",
  "nullable"}]}``) so it can be logged, checkpointed and hand-edited; types the
  small parser cannot read back are additionally carried as a base64 Arrow IPC
  blob under ``"arrow"``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "NULL_TOKENS",
    "cast_array",
    "infer_text_type",
    "join_types",
    "schema_from_json",
    "schema_to_json",
    "unify_schemas",
]

NULL_TOKENS: tuple[str, ...] = ("", "NA", "N/A", "n/a", "NULL", "null", "NaN", "nan", "None")
_NULL_TOKEN_SET = pa.array(NULL_TOKENS, pa.string())

# Order matters: the first candidate all values cast to is the inferred type.
# date32 precedes timestamp because "2024-01-01" also parses as a timestamp.
_TEXT_LADDER: tuple[pa.DataType, ...] = (
    pa.int64(),
    pa.float64(),
    pa.bool_(),
    pa.date32(),
    pa.timestamp("us"),
    pa.timestamp("us", tz="UTC"),
    pa.string(),
)

_CAST_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OverflowError)


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def join_types(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    """Least common type of ``a`` and ``b`` (see the lattice in the module docstring)."""
    if a == b:
        return a
    if pa.types.is_null(a):
        return b
    if pa.types.is_null(b):
        return a
    if _is_text(a) or _is_text(b):
        return (
            pa.large_string()
            if pa.types.is_large_string(a) or pa.types.is_large_string(b)
            else pa.string()
        )
    if pa.types.is_boolean(a) or pa.types.is_boolean(b):
        return pa.string()
    if pa.types.is_integer(a) and pa.types.is_integer(b):
        return pa.int64()
    if (pa.types.is_integer(a) or pa.types.is_floating(a)) and (
        pa.types.is_integer(b) or pa.types.is_floating(b)
    ):
        return pa.float64()
    dates = {a, b} - {pa.date32(), pa.date64()}
    if len(dates) == 1:
        (other,) = dates
        if pa.types.is_timestamp(other) and other.tz is None:
            return other
        return pa.string()
    try:
        merged = pa.unify_schemas(
            [pa.schema([pa.field("x", a)]), pa.schema([pa.field("x", b)])],
            promote_options="permissive",
        )
        return merged.field("x").type
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return pa.string()


def unify_schemas(schemas: Iterable[pa.Schema | Mapping[str, Any]]) -> pa.Schema:
    """Merge schemas by column name; first-seen column order; every field nullable.

    Accepts pyarrow schemas or their :func:`schema_to_json` form.
    """
    types: dict[str, pa.DataType] = {}
    for schema in schemas:
        for field in _as_schema(schema):
            types[field.name] = join_types(types.get(field.name, pa.null()), field.type)
    return pa.schema([pa.field(name, t, nullable=True) for name, t in types.items()])


def _null_out_tokens(arr: pa.Array) -> pa.Array:
    mask = pc.is_in(arr, value_set=_NULL_TOKEN_SET)
    return pc.if_else(mask, pa.scalar(None, arr.type), arr)


def infer_text_type(arr: pa.Array, current: pa.DataType) -> pa.DataType:
    """Narrowest type >= ``current`` that every value of the CSV text column casts to."""
    if _is_text(current):
        return current
    values = pc.drop_null(_null_out_tokens(arr))
    if len(values) == 0:
        return current
    for candidate in _TEXT_LADDER:
        if join_types(current, candidate) != candidate:
            continue  # below what earlier batches already needed
        if _is_text(candidate):
            return candidate
        try:
            pc.cast(values, candidate)
        except _CAST_ERRORS:
            continue
        return candidate
    return pa.string()


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cast_array(
    arr: pa.Array, target: pa.DataType, name: str, *, from_text: bool
) -> tuple[pa.Array, dict[int, str]]:
    """Cast ``arr`` to ``target``; values that do not fit become null and are reported.

    Returns ``(array, {row_index: reason})``.  ``from_text`` marks CSV text
    columns, whose null tokens are nulls when the target is not text.
    """
    if from_text and not _is_text(target):
        arr = _null_out_tokens(arr)
    if arr.type == target:
        return arr, {}
    try:
        return pc.cast(arr, target), {}
    except _CAST_ERRORS:
        pass
    # Slow path, only for batches that contain bad values: bisect in chunks so
    # a single bad cell in a large batch costs one chunk of per-value casts.
    failures: dict[int, str] = {}
    step = 1024
    for start in range(0, len(arr), step):
        chunk = arr.slice(start, step)
        try:
            pc.cast(chunk, target)
            continue
        except _CAST_ERRORS:
            pass
        for j in range(len(chunk)):
            item = chunk.slice(j, 1)
            if item.null_count:
                continue
            try:
                pc.cast(item, target)
            except _CAST_ERRORS:
                failures[start + j] = (
                    f"column {name!r}: cannot convert {_short(item[0].as_py())} to {target}"
                )
    bad = pa.array([i in failures for i in range(len(arr))], pa.bool_())
    cleaned = pc.if_else(bad, pa.scalar(None, arr.type), arr)
    return pc.cast(cleaned, target), failures


# --------------------------------------------------------------------------- JSON form

_TS_RE = re.compile(r"^timestamp\[(s|ms|us|ns)(?:, tz=(.+))?\]$")
_DECIMAL_RE = re.compile(r"^decimal(128|256)\((\d+), *(-?\d+)\)$")


def _type_from_str(text: str) -> pa.DataType:
    m = _TS_RE.match(text)
    if m:
        return pa.timestamp(m.group(1), tz=m.group(2))
    m = _DECIMAL_RE.match(text)
    if m:
        factory = pa.decimal128 if m.group(1) == "128" else pa.decimal256
        return factory(int(m.group(2)), int(m.group(3)))
    try:
        return pa.type_for_alias(text)
    except (ValueError, KeyError) as exc:
        raise ValueError(f"unsupported type string {text!r}") from exc


def _type_to_str(t: pa.DataType) -> str | None:
    text = str(t)
    try:
        return text if _type_from_str(text) == t else None
    except ValueError:
        return None


def schema_to_json(schema: pa.Schema) -> dict[str, Any]:
    """JSON-able form: ``{"fields": [{"name", "type", "nullable"[, "arrow"]}, ...]}``."""
    fields = []
    for field in schema:
        entry: dict[str, Any] = {
            "name": field.name,
            "type": str(field.type),
            "nullable": field.nullable,
        }
        if _type_to_str(field.type) is None:
            blob = pa.schema([field]).serialize().to_pybytes()
            entry["arrow"] = base64.b64encode(blob).decode("ascii")
        fields.append(entry)
    return {"fields": fields}


def schema_from_json(data: Mapping[str, Any] | list[Any]) -> pa.Schema:
    """Inverse of :func:`schema_to_json`; also accepts a bare list of field dicts."""
    entries = data["fields"] if isinstance(data, Mapping) else data
    fields = []
    for entry in entries:
        if "arrow" in entry:
            blob = base64.b64decode(entry["arrow"])
            field = pa.ipc.read_schema(pa.py_buffer(blob)).field(0)
            fields.append(field.with_name(entry["name"]))
        else:
            fields.append(
                pa.field(entry["name"], _type_from_str(entry["type"]), entry.get("nullable", True))
            )
    return pa.schema(fields)


def _as_schema(schema: pa.Schema | Mapping[str, Any] | list[Any]) -> pa.Schema:
    if isinstance(schema, pa.Schema):
        return schema
    return schema_from_json(schema)
