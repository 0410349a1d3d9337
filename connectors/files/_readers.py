"""Streaming readers that turn CSV / JSON Lines / JSON files into column batches.

Design choices:

* Every reader yields :class:`Batch` objects (column name -> Arrow array plus,
  when known, the physical line number of each row) and reports structurally
  bad rows to a :class:`Rejects` sink.  Conversion and inference share them, so
  the types inferred for a file are exactly the types its rows cast to.
* CSV has two paths.  The *fast* path is pyarrow's streaming CSV reader with
  every column read as text (~10x faster than the ``csv`` module).  pyarrow
  does not report line numbers for bad rows (``InvalidRow.number`` is None),
  so whenever a line number is needed -- a row with the wrong number of
  fields, a cell that does not cast, or a decode error -- the caller raises
  :class:`NeedExactLines` and reruns the file through the *exact* path (the
  ``csv`` module fed one decoded physical line at a time, so multi-line quoted
  values and blank lines are counted correctly).  Clean files never pay for it.
* JSON Lines are parsed one line at a time with the ``json`` module so one bad
  line is rejected instead of failing the whole file (pyarrow.json stops at
  the first bad line).  Nested objects/arrays are stored as compact JSON text,
  and a column mixing kinds (e.g. numbers and strings) becomes text; JSON
  strings are never re-interpreted as numbers or dates (they were quoted on
  purpose).
* ``.json`` files holding one array of objects (or one pretty-printed object)
  are loaded whole -- JSON documents cannot be streamed with the standard
  library; use JSON Lines for large files.
* Text must be UTF-8 (a BOM is allowed).  Anything that cannot be decoded is a
  :class:`MalformedFileError`, as is a file where rows were rejected but none
  were accepted (garbage, truncated single-document JSON).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

BATCH_ROWS = 16_384
CSV_BLOCK_SIZE = 4 << 20
# csv.field_size_limit defaults to 128 KiB; large text cells are legitimate.
_CSV_FIELD_LIMIT = 64 << 20


class MalformedFileError(ValueError):
    """The file cannot be read at all (not retryable: the bytes will not change)."""

    retryable = False

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(source, reason)
        self.source = source
        self.reason = reason
        # Filled when rows were rejected but none accepted.
        self.rejected: list[dict[str, Any]] = []
        self.rejected_count = 0

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


class NeedExactLines(Exception):
    """Internal: the fast CSV path hit something that needs exact line numbers."""


@dataclass
class Batch:
    columns: dict[str, pa.Array]
    num_rows: int
    lines: list[int] | None  # physical 1-based line of each row, None = unknown (fast path)
    from_text: bool  # CSV text columns (null tokens apply)


class Rejects:
    """Collects rejected rows; keeps at most ``cap`` details but counts all."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.count = 0
        self.items: list[dict[str, Any]] = []

    def add(self, line: int | None, reason: str) -> None:
        self.count += 1
        if len(self.items) < self.cap:
            self.items.append({"line": line, "reason": reason})

    def sorted_items(self) -> list[dict[str, Any]]:
        return sorted(self.items, key=lambda r: (r["line"] is None, r["line"] or 0))

    def first_reason(self) -> str:
        if not self.items:
            return "no rows"
        first = self.sorted_items()[0]
        where = f"line {first['line']}: " if first["line"] is not None else ""
        return where + first["reason"]


_COMPRESSION_EXTS = {".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip", ".snappy", ".lzma"}


def detect_format(url: str) -> str:
    """'csv', 'jsonl' or 'json' from the file name (a compression suffix is ignored)."""
    name = url.rstrip("/").rsplit("/", 1)[-1].lower()
    for ext in _COMPRESSION_EXTS:
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if name.endswith(".json"):
        return "json"
    raise MalformedFileError(url, "unsupported file type (expected .csv, .jsonl, .ndjson or .json)")


def open_source(url: str) -> IO[bytes]:
    # compression="infer" transparently reads e.g. data.csv.gz.
    return fsspec.open(url, "rb", compression="infer").open()


def read_batches(
    url: str, fmt: str, f: IO[bytes], rejects: Rejects, *, exact: bool
) -> Iterator[Batch]:
    if fmt == "csv":
        yield from _csv_batches(url, f, rejects, exact=exact)
    elif fmt == "jsonl":
        yield from _jsonl_batches(url, f, rejects)
    else:
        yield from _json_batches(url, f, rejects)


# --------------------------------------------------------------------------- CSV


def _decoded_lines(url: str, f: IO[bytes], counter: list[int]) -> Iterator[str]:
    """Yield decoded physical lines, failing with the line number on bad UTF-8."""
    for raw in f:
        counter[0] += 1
        if counter[0] == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedFileError(
                url, f"line {counter[0]}: not valid UTF-8 (byte {exc.start} of the line)"
            ) from None
        yield text


def _column_names(header: list[str]) -> list[str]:
    """Blank header cells get positional names, duplicates get a numeric suffix."""
    names: list[str] = []
    seen: set[str] = set()
    for i, raw in enumerate(header):
        base = raw.strip() or f"column_{i + 1}"
        name, k = base, 1
        while name in seen:
            k += 1
            name = f"{base}_{k}"
        seen.add(name)
        names.append(name)
    return names


def _read_header(url: str, f: IO[bytes]) -> tuple[list[str], int] | None:
    """(column names, physical lines used by the header) or None for an empty file."""
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    counter = [0]
    reader = csv.reader(_decoded_lines(url, f, counter), strict=False)
    try:
        for row in reader:
            if row:
                return _column_names(row), counter[0]
    except csv.Error as exc:
        raise MalformedFileError(url, f"line {counter[0]}: unreadable CSV header ({exc})") from None
    return None


def _text_columns(names: list[str], arrays: list[pa.Array]) -> dict[str, pa.Array]:
    # An empty cell is "no value" in every column type, including text.
    out = {}
    for name, arr in zip(names, arrays, strict=True):
        out[name] = pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)
    return out


def _csv_batches(url: str, f: IO[bytes], rejects: Rejects, *, exact: bool) -> Iterator[Batch]:
    header = _read_header(url, f)
    if header is None:
        return
    names, header_lines = header
    f.seek(0)
    batches = (
        _csv_exact(url, f, names, rejects)
        if exact
        else _csv_fast(url, f, names, header_lines, rejects)
    )
    empty = True
    for batch in batches:
        empty = False
        yield batch
    if empty:
        # Header-only file: still report its columns (typed null) to inference.
        yield Batch({name: pa.nulls(0, pa.string()) for name in names}, 0, [], True)


def _csv_fast(
    url: str, f: IO[bytes], names: list[str], header_lines: int, rejects: Rejects
) -> Iterator[Batch]:
    internal = [f"c{i}" for i in range(len(names))]
    invalid: list[str] = []

    def on_invalid(row: Any) -> str:
        invalid.append(f"expected {row.expected_columns} fields, got {row.actual_columns}")
        return "skip"

    try:
        reader = pacsv.open_csv(
            f,
            read_options=pacsv.ReadOptions(
                column_names=internal, skip_rows=header_lines, block_size=CSV_BLOCK_SIZE
            ),
            parse_options=pacsv.ParseOptions(
                newlines_in_values=True, invalid_row_handler=on_invalid
            ),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(internal, pa.string()),
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
        for rb in reader:
            # Count fast-path rejects so inference (which needs no line numbers)
            # can keep going; conversion asks for the exact path instead.
            for reason in invalid:
                rejects.add(None, reason)
            invalid.clear()
            yield Batch(_text_columns(names, rb.columns), rb.num_rows, None, True)
        for reason in invalid:
            rejects.add(None, reason)
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        # Decode/parse failure: rerun exactly to name the line in the error.
        raise NeedExactLines(str(exc)) from None


def _csv_exact(url: str, f: IO[bytes], names: list[str], rejects: Rejects) -> Iterator[Batch]:
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    counter = [0]
    # strict=False mirrors pyarrow's lenient quoting so both paths accept the
    # same rows.
    reader = csv.reader(_decoded_lines(url, f, counter), strict=False)
    ncols = len(names)
    rows: list[list[str]] = []
    lines: list[int] = []
    header_seen = False
    while True:
        start = counter[0] + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            # E.g. a cell over the field size limit; parsing resumes on the
            # next line.
            rejects.add(start, f"CSV syntax error: {exc}")
            continue
        if not row:
            continue  # blank line
        if not header_seen:
            header_seen = True
            continue
        if len(row) != ncols:
            rejects.add(start, f"expected {ncols} fields, got {len(row)}")
            continue
        rows.append(row)
        lines.append(start)
        if len(rows) >= BATCH_ROWS:
            yield _rows_to_batch(names, rows, lines)
            rows, lines = [], []
    if rows:
        yield _rows_to_batch(names, rows, lines)


def _rows_to_batch(names: list[str], rows: list[list[str]], lines: list[int]) -> Batch:
    arrays = [pa.array(col, pa.string()) for col in zip(*rows, strict=True)]
    return Batch(_text_columns(names, arrays), len(rows), lines, True)


# --------------------------------------------------------------------------- JSON


def _json_array(values: list[Any]) -> pa.Array:
    kinds: set[str] = set()
    for v in values:
        if v is None:
            continue
        t = type(v)
        if t is bool:
            kinds.add("bool")
        elif t is int:
            kinds.add("int" if -(2**63) <= v < 2**63 else "bigint")
        elif t is float:
            kinds.add("float")
        elif t is str:
            kinds.add("str")
        else:
            kinds.add("json")
    if not kinds:
        return pa.nulls(len(values))
    if kinds == {"int"}:
        return pa.array(values, pa.int64())
    if kinds <= {"int", "float"}:
        return pa.array(values, pa.float64())
    if kinds == {"bool"}:
        return pa.array(values, pa.bool_())
    if kinds == {"str"}:
        return pa.array(values, pa.string())
    # Mixed kinds, nested values or integers beyond int64: keep them as JSON
    # text so nothing is lost.
    return pa.array(
        [
            v
            if v is None or type(v) is str
            else json.dumps(v, ensure_ascii=False, separators=(",", ":"))
            for v in values
        ],
        pa.string(),
    )


def _records_to_batch(keys: dict[str, None], records: list[dict], lines: list[int | None]) -> Batch:
    columns = {k: _json_array([r.get(k) for r in records]) for k in keys}
    return Batch(columns, len(records), list(lines), False)


def _jsonl_batches(url: str, f: IO[bytes], rejects: Rejects) -> Iterator[Batch]:
    keys: dict[str, None] = {}  # first-seen column order
    records: list[dict] = []
    lines: list[int | None] = []
    for lineno, raw in enumerate(f, 1):
        if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedFileError(
                url, f"line {lineno}: not valid UTF-8 (byte {exc.start} of the line)"
            ) from None
        text = text.strip()
        if not text:
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            rejects.add(lineno, f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        if not isinstance(obj, dict):
            rejects.add(lineno, f"not a JSON object (got {type(obj).__name__})")
            continue
        keys.update(dict.fromkeys(obj))
        records.append(obj)
        lines.append(lineno)
        if len(records) >= BATCH_ROWS:
            yield _records_to_batch(keys, records, lines)
            records, lines = [], []
    if records:
        yield _records_to_batch(keys, records, lines)


def _json_batches(url: str, f: IO[bytes], rejects: Rejects) -> Iterator[Batch]:
    data = f.read()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise MalformedFileError(url, f"line {line}: not valid UTF-8") from None
    stripped = text.lstrip()
    if not stripped:
        return
    if not stripped.startswith("["):
        # Most ".json" exports are really JSON Lines; try that first so a bad
        # line is one rejected row.  Only if no line parsed at all, read the
        # file as one (pretty-printed) document.
        probe = Rejects(rejects.cap)
        batches = list(_jsonl_batches(url, io.BytesIO(data), probe))
        if batches or probe.count == 0:
            for item in probe.items:
                rejects.add(item["line"], item["reason"])
            rejects.count += probe.count - len(probe.items)
            yield from batches
            return
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedFileError(
            url, f"invalid JSON document: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    items = doc if isinstance(doc, list) else [doc]
    keys: dict[str, None] = {}
    records: list[dict] = []
    for i, obj in enumerate(items):
        if not isinstance(obj, dict):
            # Line numbers of array elements are not known; name the index.
            rejects.add(None, f"array element {i} is not a JSON object (got {type(obj).__name__})")
            continue
        keys.update(dict.fromkeys(obj))
        records.append(obj)
    for start in range(0, len(records), BATCH_ROWS):
        chunk = records[start : start + BATCH_ROWS]
        yield _records_to_batch(keys, chunk, [None] * len(chunk))
