"""Splitting a table into partitions of about ``target_rows`` rows, as JSON-able dicts.

* Key ranges over a single-column integer primary key (SQLite: over the rowid when there is
  none; else over the leading column of a key that starts with an integer), equal width
  between the min and max of the filtered key: cheap to plan, uneven for skewed keys.
  Otherwise LIMIT/OFFSET over a total order (the primary key, else all orderable columns),
  which costs O(offset) per partition.
* Watermarks: partitions carry ``since < wm <= until`` with ``until`` the max seen while
  planning, so rows changed during extraction are picked up by the next run (which starts
  from ``until``) instead of being half-seen. The first run (since None) also takes rows
  whose watermark is NULL.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import adbc_driver_manager
import pyarrow as pa

from connectors.sql._catalog import _describe, _row_count_estimate
from connectors.sql._sql import (
    DEFAULT_TARGET_ROWS,
    POSTGRESQL,
    SQLITE,
    SourceError,
    _dialect,
    _jsonable,
    _Param,
    _qualified,
    _query,
    quote_ident,
)

__all__ = ["next_watermark", "plan_partitions", "plan_tables"]

# PostgreSQL types without a btree ordering; they cannot take part in ORDER BY.
_PG_UNORDERABLE = {"json", "xml", "point", "line", "lseg", "box", "path", "polygon", "circle"}


def _has_rowid(conn, ref: tuple[str, str], columns: list[str]) -> bool:
    # A column named rowid hides the real one; views and WITHOUT ROWID tables have none.
    if "rowid" in {c.lower() for c in columns}:
        return False
    try:
        _query(conn, [f"SELECT rowid FROM {_qualified(ref)} LIMIT 0"])
    except adbc_driver_manager.Error:
        return False
    return True


def _order_columns(info: dict, dialect: str) -> list[str]:
    if info["primary_key"]:
        return list(info["primary_key"])
    columns = [
        c["name"]
        for c in info["columns"]
        if dialect == SQLITE or (c["type"] or "").lower() not in _PG_UNORDERABLE
    ]
    if not columns:
        raise SourceError(f"cannot order {info['schema']}.{info['table']} for partitioning")
    return columns


def _choose_key(conn, dialect: str, info: dict) -> tuple[str, str | None]:
    """``(strategy, key column)`` for `plan_partitions`."""
    key = info["primary_key"]
    arrow = info["_arrow"]
    if len(key) == 1 and pa.types.is_integer(arrow.get(key[0], pa.null())):
        return "key_range", key[0]
    names = [c["name"] for c in info["columns"]]
    if dialect == SQLITE and _has_rowid(conn, (info["schema"], info["table"]), names):
        return "rowid_range", "rowid"
    # A composite key led by an integer column: ranges over that column still put every row in
    # exactly one partition (key columns are NOT NULL: PostgreSQL and WITHOUT ROWID tables
    # enforce it), without LIMIT/OFFSET's O(offset) scans.
    if key and pa.types.is_integer(arrow.get(key[0], pa.null())):
        return "key_range", key[0]
    return "offset", None


def _one(conn, parts: Sequence[str | _Param]) -> object:
    return _query(conn, parts)[0][0]


def _stats(conn, dialect: str, ref, strategy: str, key: str | None, watermark: str | None,
           since) -> tuple:
    """``(rows, min key, max key, max watermark)`` of the rows newer than ``since``.

    One aggregate per query: SQLite answers a lone ``count(*)`` from its smallest b-tree and a
    lone ``min``/``max`` of a key with one seek, but scans the table for ``count(*), min(k),
    max(k)`` together (80 ms instead of 5 ms for 2.2 M rows). PostgreSQL key ranges take the
    row count from the planner's statistics when it has them: for a key range the count only
    decides how many partitions there are, and counting is a scan there.
    """
    table = f" FROM {_qualified(ref)}"
    where: list[str | _Param] = []
    if since is not None:
        where = [f" WHERE {quote_ident(watermark)} > ", _Param(since)]
    rows = None
    if dialect == POSTGRESQL and since is None and strategy != "offset":
        rows = _row_count_estimate(conn, dialect, ref)
    if rows is None:
        rows = _one(conn, ["SELECT count(*)", table, *where])
    low = high = None
    if strategy != "offset":
        key_sql = "rowid" if strategy == "rowid_range" else quote_ident(key)
        low = _one(conn, [f"SELECT min({key_sql})", table, *where])
        high = _one(conn, [f"SELECT max({key_sql})", table, *where])
        if low is None:  # no rows (a statistic can be stale)
            rows = 0
    until = None
    if watermark:
        until = _one(conn, [f"SELECT max({quote_ident(watermark)})", table, *where])
    return rows, low, high, until


def _ranges(low: int, high: int, rows: int, target_rows: int) -> list[dict]:
    span = high - low + 1
    count = max(1, min(span, math.ceil(rows / target_rows)))
    width = math.ceil(span / count)
    ranges = []
    for start in range(low, high + 1, width):
        end = min(start + width - 1, high)
        estimate = round(rows * (end - start + 1) / span)
        ranges.append({"lo": start, "hi": end, "estimated_rows": estimate})
    return ranges


def _offsets(rows: int, target_rows: int, order_by: list[str]) -> list[dict]:
    count = math.ceil(rows / target_rows)
    size = math.ceil(rows / count)
    return [
        {
            "order_by": order_by,
            "offset": start,
            "limit": min(size, rows - start),
            "estimated_rows": min(size, rows - start),
        }
        for start in range(0, rows, size)
    ]


def _check_plan(target_rows: int, watermark_column: str | None, since: object) -> None:
    if target_rows < 1:
        raise ValueError("target_rows must be positive")
    if since is not None and watermark_column is None:
        raise ValueError("since needs a watermark_column")


def plan_partitions(
    conn,
    table: str,
    target_rows: int = DEFAULT_TARGET_ROWS,
    watermark_column: str | None = None,
    since: object = None,
) -> list[dict]:
    """Split ``table`` into partitions of about ``target_rows`` rows (JSON-able dicts).

    Each partition has ``table, index, of, strategy, estimated_rows``, the watermark
    filter ``watermark_column, since, until`` and, per strategy, ``column, lo, hi``
    (inclusive; ``key_range`` / SQLite ``rowid_range``), ``order_by, offset, limit``
    (``offset``) or nothing (``all``). With a watermark only rows with
    ``since < watermark <= until`` are covered, ``until`` being the max watermark seen
    now: pass `next_watermark` of the result as the next run's ``since``. No rows -> [].
    """
    _check_plan(target_rows, watermark_column, since)
    info = _describe(conn, [table], with_counts=False)[0]
    return _plan(conn, info, target_rows, watermark_column, since)


def plan_tables(
    conn,
    tables: Sequence[str],
    target_rows: int = DEFAULT_TARGET_ROWS,
    watermark_column: str | None = None,
    since: dict[str, object] | None = None,
) -> list[dict]:
    """Describe a batch of tables once and plan each (what an extraction run needs).

    One dict per table: ``{table: "schema.table", columns: [{name, type, arrow_type, ...}],
    primary_key, incremental, since, partitions}``. ``watermark_column`` applies to the tables
    that have it (``incremental: true``); the others are planned in full. ``since`` maps
    ``schema.table`` to the previous run's watermark.
    """
    since = since or {}
    planned = []
    for info in _describe(conn, tables, with_counts=False):
        name = f"{info['schema']}.{info['table']}"
        incremental = bool(watermark_column) and watermark_column in {
            c["name"] for c in info["columns"]
        }
        start = since.get(name) if incremental else None
        column = watermark_column if incremental else None
        _check_plan(target_rows, column, start)
        partitions = _plan(conn, info, target_rows, column, start)
        planned.append({
            "table": name,
            "columns": info["columns"],
            "primary_key": info["primary_key"],
            "incremental": incremental,
            "since": start,
            "partitions": partitions,
        })
    return planned


def _plan(conn, info: dict, target_rows: int, watermark_column: str | None,
          since: object) -> list[dict]:
    dialect = _dialect(conn)
    names = {c["name"] for c in info["columns"]}
    table = f"{info['schema']}.{info['table']}"
    if watermark_column is not None and watermark_column not in names:
        raise SourceError(f"unknown watermark column {watermark_column!r} in {table}")
    strategy, key = _choose_key(conn, dialect, info)
    ref = (info["schema"], info["table"])
    rows, low, high, until = _stats(conn, dialect, ref, strategy, key, watermark_column, since)
    if not rows:
        return []
    if strategy == "offset":
        pieces = _offsets(rows, target_rows, _order_columns(info, dialect))
        if len(pieces) == 1:
            strategy, pieces = "all", [{"estimated_rows": rows}]
    else:
        pieces = [{"column": key, **r} for r in _ranges(low, high, rows, target_rows)]
    common = {
        "table": table,
        "strategy": strategy,
        "watermark_column": watermark_column,
        "since": since,
        "until": _jsonable(until),
    }
    return [{**common, "index": i, "of": len(pieces), **p} for i, p in enumerate(pieces)]


def next_watermark(partitions: Sequence[dict], since: object = None) -> object:
    """Where the next incremental run starts: the planned ``until``, else ``since``."""
    if partitions and partitions[0].get("until") is not None:
        return partitions[0]["until"]
    return since
