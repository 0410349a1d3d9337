"""Files-to-Parquet building blocks for connector tasks: list, batch, infer, unify, convert.

Meant to be called from inside App Framework ``@task`` methods (Ray remote
functions with retries), so:

* Inputs and outputs are JSON-able (URLs, ints, lists, dicts) or pyarrow
  objects; schemas have a JSON form (:func:`schema_to_json`).  No Ray, no
  runtime imports.
* Bad *data* never raises.  A row that cannot be parsed or cast is rejected
  with its 1-based physical line number and a reason; a file that cannot be
  read at all comes back with ``error`` set and no output.  Only
  infrastructure failures raise (network, permissions, a vanished bucket), so
  a task retry is only ever spent on something a retry can fix.
  :func:`infer_schema` is the exception: it returns a schema, so it raises
  :class:`MalformedFileError` (``retryable = False``); use
  :func:`infer_files_schema` for the collect-errors-and-continue form.
* Output is all-or-nothing: Parquet is written to a hidden temporary file
  next to the destination and renamed into place (local), or uploaded with
  ``autocommit=False`` and committed at the end (object stores).  A crashed or
  retried task never leaves a half-written file, and re-running it simply
  overwrites the same destination, so conversion is idempotent.
* Memory is bounded by the batch size (16k rows / 4 MiB CSV blocks), except
  for ``.json`` files holding a single document, which are loaded whole.
* URLs are anything fsspec opens; S3 credentials and endpoint come from the
  environment (``AWS_*``, including ``AWS_ENDPOINT_URL_S3``), never from the URL.
"""

from __future__ import annotations

import fnmatch
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from ._readers import (
    Batch,
    MalformedFileError,
    NeedExactLines,
    Rejects,
    detect_format,
    open_source,
    read_batches,
)
from ._schema import (
    _as_schema,
    cast_array,
    infer_text_type,
    join_types,
    schema_to_json,
    unify_schemas,
)

__all__ = [
    "DEFAULT_PATTERNS",
    "MalformedFileError",
    "batch_files",
    "convert_file",
    "infer_files_schema",
    "infer_schema",
    "list_files",
    "output_url",
]

DEFAULT_PATTERNS: tuple[str, ...] = ("*.csv", "*.jsonl", "*.json")
DEFAULT_MAX_REJECTED = 1000


def _check_url(url: str) -> None:
    # Secrets in URLs end up in logs, checkpoints and task arguments.  The
    # message deliberately does not repeat the URL.
    if "@" in urlsplit(url).netloc:
        raise ValueError("credentials in URLs are not supported; configure them in the environment")


# --------------------------------------------------------------------------- listing


def list_files(url: str, patterns: Sequence[str] = DEFAULT_PATTERNS) -> list[str]:
    """Sorted URLs of the files under ``url`` (recursive) whose name matches a pattern.

    ``url`` is a local directory or an fsspec URL such as ``s3://bucket/prefix``
    (or a single file).  Matching is on the file name, case-insensitive;
    hidden files (name starting with ".") are skipped.  Local inputs give
    absolute paths, URLs with a protocol give URLs with that protocol.
    """
    _check_url(url)
    fs, root = fsspec.core.url_to_fs(url)
    # Instances are cached per process; a listing cached by an earlier call
    # in the same worker would hide files that arrived since.
    fs.invalidate_cache(root)
    paths = [root] if fs.isfile(root) else fs.find(root)
    lowered = [p.lower() for p in patterns]
    keep = []
    for path in paths:
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("."):
            continue
        if any(fnmatch.fnmatchcase(name.lower(), pat) for pat in lowered):
            keep.append(path)
    if "://" in url:
        keep = [fs.unstrip_protocol(p) for p in keep]
    return sorted(keep)


def batch_files(files: Sequence[str], batch_size: int) -> list[list[str]]:
    """Split ``files`` into consecutive lists of at most ``batch_size`` (order kept)."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    files = list(files)
    return [files[i : i + batch_size] for i in range(0, len(files), batch_size)]


# --------------------------------------------------------------------------- inference


def _csv_passes(fmt: str) -> tuple[bool, ...]:
    # CSV tries the fast pyarrow path first; JSON readers always know lines.
    return (False, True) if fmt == "csv" else (True,)


def infer_schema(url: str) -> pa.Schema:
    """Schema of one CSV / JSON Lines / JSON file, read in full (streamed).

    Rows that would be rejected do not contribute.  Columns without any value
    get type ``null``.  Raises :class:`MalformedFileError` for unreadable files.
    """
    _check_url(url)
    fmt = detect_format(url)
    for exact in _csv_passes(fmt):
        try:
            return _infer_once(url, fmt, exact=exact)
        except NeedExactLines:
            continue
    raise AssertionError("unreachable: the exact pass never asks for itself")


def _infer_once(url: str, fmt: str, *, exact: bool) -> pa.Schema:
    rejects = Rejects(cap=10)
    types: dict[str, pa.DataType] = {}
    rows = 0
    with open_source(url) as f:
        for batch in read_batches(url, fmt, f, rejects, exact=exact):
            rows += batch.num_rows
            for name, arr in batch.columns.items():
                current = types.get(name, pa.null())
                if batch.from_text:
                    types[name] = infer_text_type(arr, current)
                else:
                    types[name] = join_types(current, arr.type)
    if rows == 0 and rejects.count:
        raise MalformedFileError(url, f"no readable rows; {rejects.first_reason()}")
    return pa.schema([pa.field(name, t, nullable=True) for name, t in types.items()])


def infer_files_schema(files: Iterable[str]) -> dict[str, Any]:
    """Infer and unify the schemas of several files, collecting per-file errors.

    Returns ``{"schema": <schema_to_json form>, "errors": [{"source", "error"}],
    "files": <number inferred>}``.  The schema form can be fed straight back
    into :func:`unify_schemas` (e.g. in ``run()`` over per-batch task results)
    and :func:`convert_file`.
    """
    schemas, errors = [], []
    for url in files:
        try:
            schemas.append(infer_schema(url))
        except MalformedFileError as exc:
            errors.append({"source": url, "error": exc.reason})
        except FileNotFoundError:
            errors.append({"source": url, "error": "file not found"})
    return {
        "schema": schema_to_json(unify_schemas(schemas)),
        "errors": errors,
        "files": len(schemas),
    }


# --------------------------------------------------------------------------- output


_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".csv", ".jsonl", ".ndjson", ".json")


def output_url(source: str, dest_dir: str) -> str:
    """``dest_dir/<source file name without data/compression suffixes>.parquet``.

    Note that ``a.csv`` and ``a.jsonl`` map to the same name; pass explicit
    destinations to :func:`convert_file` when names can collide.
    """
    name = source.rstrip("/").rsplit("/", 1)[-1]
    changed = True
    while changed:
        changed = False
        for suffix in _SUFFIXES:
            if name.lower().endswith(suffix) and len(name) > len(suffix):
                name, changed = name[: -len(suffix)], True
    return dest_dir.rstrip("/") + "/" + name + ".parquet"


class _AtomicOutput:
    """A writable file that only appears at its destination on :meth:`commit`."""

    def __init__(self, url: str) -> None:
        self.fs, self.path = fsspec.core.url_to_fs(url)
        self.local = isinstance(self.fs, LocalFileSystem)
        if self.local:
            parent, base = os.path.split(self.path)
            os.makedirs(parent or ".", exist_ok=True)
            # Same directory so os.replace is an atomic rename; hidden so
            # list_files and most tools ignore leftovers of a killed worker.
            self.tmp = os.path.join(parent, f".{base}.tmp-{uuid.uuid4().hex}")
            self.file: Any = open(self.tmp, "wb")  # closed in commit()/discard()
        else:
            self.file = self.fs.open(self.path, "wb", autocommit=False)

    def commit(self) -> int:
        size = self.file.tell()
        self.file.close()
        if self.local:
            os.replace(self.tmp, self.path)
        else:
            self.file.commit()
        return size

    def discard(self) -> None:
        if self.local:
            self.file.close()
            if os.path.exists(self.tmp):
                os.remove(self.tmp)
        else:
            self.file.discard()  # aborts the multipart upload, if any
            self.file.closed = True  # so garbage collection does not flush it


# --------------------------------------------------------------------------- conversion


def convert_file(
    url: str,
    schema: pa.Schema | Mapping[str, Any],
    dest_url: str,
    *,
    max_rejected: int = DEFAULT_MAX_REJECTED,
) -> dict[str, Any]:
    """Convert one CSV / JSON Lines / JSON file to Parquet with the given schema.

    ``schema`` is a pyarrow schema or its :func:`schema_to_json` form (usually
    the unified schema); every output field is nullable, columns the file
    lacks are null, columns the schema lacks are dropped (listed in
    ``dropped_columns``).  ``dest_url`` is the output file (local path or
    fsspec URL); if it ends with "/" the name comes from :func:`output_url`.

    Returns ``{"source", "rows", "rejected": [{"line", "reason"}],
    "rejected_count", "dropped_columns", "output", "bytes", "error"}``.
    ``rejected`` holds at most ``max_rejected`` entries sorted by line
    (``rejected_count`` counts all; ``line`` is None only for elements of a
    JSON array document).  On ``error`` (unreadable file) ``output`` is None
    and nothing was written.
    """
    _check_url(url)
    _check_url(dest_url)
    result: dict[str, Any] = {
        "source": url,
        "rows": 0,
        "rejected": [],
        "rejected_count": 0,
        "dropped_columns": [],
        "output": None,
        "bytes": 0,
        "error": None,
    }
    target = pa.schema([f.with_nullable(True) for f in _as_schema(schema)])
    dest = output_url(url, dest_url) if dest_url.endswith("/") else dest_url
    try:
        fmt = detect_format(url)
        for exact in _csv_passes(fmt):
            try:
                result.update(_convert_once(url, fmt, target, dest, exact=exact, cap=max_rejected))
                break
            except NeedExactLines:
                continue
    except MalformedFileError as exc:
        result["error"] = exc.reason
        result["rejected"] = exc.rejected
        result["rejected_count"] = exc.rejected_count
    except FileNotFoundError:
        result["error"] = "file not found"
    return result


def _convert_once(
    url: str, fmt: str, target: pa.Schema, dest: str, *, exact: bool, cap: int
) -> dict[str, Any]:
    rejects = Rejects(cap)
    dropped: set[str] = set()
    rows = 0
    with open_source(url) as f:
        out = _AtomicOutput(dest)
        try:
            writer = pq.ParquetWriter(out.file, target)
            try:
                for batch in read_batches(url, fmt, f, rejects, exact=exact):
                    if not exact and rejects.count:
                        raise NeedExactLines("rows with the wrong number of fields")
                    table = _conform(batch, target, rejects, dropped, exact=exact)
                    if table.num_rows:
                        writer.write_table(table)
                        rows += table.num_rows
                if not exact and rejects.count:
                    raise NeedExactLines("rows with the wrong number of fields")
            finally:
                writer.close()
            if rows == 0 and rejects.count:
                exc = MalformedFileError(url, f"no readable rows; {rejects.first_reason()}")
                exc.rejected = rejects.sorted_items()
                exc.rejected_count = rejects.count
                raise exc
            size = out.commit()
        except BaseException:
            out.discard()
            raise
    return {
        "rows": rows,
        "rejected": rejects.sorted_items(),
        "rejected_count": rejects.count,
        "dropped_columns": sorted(dropped),
        "output": dest,
        "bytes": size,
        "error": None,
    }


def _conform(
    batch: Batch, target: pa.Schema, rejects: Rejects, dropped: set[str], *, exact: bool
) -> pa.Table:
    """Cast a batch to ``target``; rows with any uncastable cell are rejected."""
    n = batch.num_rows
    dropped.update(name for name in batch.columns if name not in target.names)
    arrays: list[pa.Array] = []
    failures: dict[int, list[str]] = {}
    for field in target:
        src = batch.columns.get(field.name)
        if src is None:
            arrays.append(pa.nulls(n, field.type))
            continue
        arr, bad = cast_array(src, field.type, field.name, from_text=batch.from_text)
        arrays.append(arr)
        for i, reason in bad.items():
            failures.setdefault(i, []).append(reason)
    table = pa.Table.from_arrays(arrays, schema=target)
    if not failures:
        return table
    if not exact:
        raise NeedExactLines("cells that do not cast")
    lines = batch.lines or [None] * n
    for i in sorted(failures):
        rejects.add(lines[i], "; ".join(failures[i]))
    keep = pa.array([i not in failures for i in range(n)], pa.bool_())
    return table.filter(keep)
