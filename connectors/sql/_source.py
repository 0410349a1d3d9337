"""SQL source: connect, describe, partition and extract tables to Parquet through ADBC.

Design choices:

* Plain functions whose inputs and outputs are JSON-able values or pyarrow objects, so an
  App Framework task can wrap each one. `extract_partition` takes a URL rather than a
  connection because it runs in another (Ray) process.
* ADBC only (SQLite and PostgreSQL drivers): rows arrive as Arrow record batches and are
  streamed into Parquet with memory bounded by one batch.
* Connections are autocommit: a source is only read, and an open transaction would hold a
  snapshot (PostgreSQL) or a lock (SQLite) between the queries of unrelated tasks.
* SQLite typing: the ADBC driver infers each column's Arrow type from the first batch of
  values and fails when a later value disagrees (a REAL column that is NULL in the first
  batch becomes int64, then "expected INT64 but got DOUBLE"). Reads therefore put one
  "typing row" in front (``SELECT 1, 0 AS a, 0.0 AS b ... UNION ALL SELECT 0, a, b ...``)
  holding a value of each column's declared affinity, and drop it again. Columns with
  NUMERIC/no affinity use the storage class of their first non-NULL value.
* PostgreSQL literals: with bound parameters the driver leaves COPY for a prepared
  statement whose whole result arrives as one batch (unbounded memory), and a text
  parameter cannot be compared with a timestamp column. Filter values are therefore
  rendered as literals (integers via int(), floats via repr, strings as E'' with quotes and
  backslashes doubled, which PostgreSQL types from the compared column). SQLite binds them.
* Identifiers are always double-quoted (quotes doubled) and column names are checked
  against the catalog first: SQLite silently reads an unknown double-quoted name as a
  string literal.
* Partitions: key ranges over a single-column integer primary key (SQLite: over the
  rowid when there is none), equal width between the min and max of the filtered key:
  cheap to plan, uneven for skewed keys. Otherwise LIMIT/OFFSET over a total order (the
  primary key, else all orderable columns), which costs O(offset) per partition.
* Watermarks: partitions carry ``since < wm <= until`` with ``until`` the max seen while
  planning, so rows changed during extraction are picked up by the next run (which starts
  from ``until``) instead of being half-seen. The first run (since None) also takes rows
  whose watermark is NULL.
* Output files appear complete or not at all: a local temp name renamed into place, or
  a local temp file uploaded with ``put_file`` for other fsspec targets (closing an fsspec
  write handle after an error would publish the partial object).
* Checksums (see `_checksum`): an order-independent sum of 64-bit row hashes, computed the
  same way on database batches and on Parquet batches; partition checksums add up to the
  table checksum.
* Metadata: ADBC ``adbc_get_objects`` has columns, primary and foreign keys for both
  drivers. Gaps filled from the database: PostgreSQL reports no nullability
  (pg_attribute), SQLite's ``adbc_get_table_schema`` types every column int64 (Arrow types
  come from a zero-row read instead) and SQLite lists indexes as tables.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import fnmatch
import math
import os
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import adbc_driver_manager
import adbc_driver_postgresql.dbapi as postgresql_dbapi
import adbc_driver_sqlite.dbapi as sqlite_dbapi
import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from connectors.sql._checksum import (
    add_checksums,
    batch_checksum,
    canonical_batch,
    canonical_schema,
)

__all__ = [
    "DEFAULT_BATCH_ROWS",
    "DEFAULT_TARGET_ROWS",
    "SourceError",
    "connect",
    "describe_tables",
    "extract_partition",
    "list_tables",
    "metadata_table",
    "next_watermark",
    "plan_partitions",
    "plan_tables",
    "read_partition_checksum",
    "redact_url",
    "table_checksum",
]

DEFAULT_BATCH_ROWS = 65_536
DEFAULT_TARGET_ROWS = 1_000_000

SQLITE, POSTGRESQL = "sqlite", "postgresql"
_SECRET_PARAMS = {"password", "passwd", "pwd", "sslpassword"}
_PG_SYSTEM_SCHEMAS = {"pg_catalog", "information_schema"}
# PostgreSQL types without a btree ordering; they cannot take part in ORDER BY.
_PG_UNORDERABLE = {"json", "xml", "point", "line", "lseg", "box", "path", "polygon", "circle"}
_TYPING_MARKER = "__connector_typing_row__"
_TYPING_LITERALS = {"integer": "0", "real": "0.0", "text": "''", "blob": "x''", None: "NULL"}
_READ_ERRORS = (adbc_driver_manager.Error, pa.ArrowException, OSError)


class SourceError(RuntimeError):
    """A source database could not be reached, read or understood."""


# --- URLs and connections ------------------------------------------------------------


def redact_url(url: str) -> str:
    """``url`` with any password (userinfo or query parameter) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(key.lower() in _SECRET_PARAMS for key, _ in pairs):
        query = "&".join(
            f"{key}=***" if key.lower() in _SECRET_PARAMS else f"{key}={value}"
            for key, value in pairs
        )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _secrets(url: str) -> list[str]:
    try:
        parts = urlsplit(url)
        found = [parts.password or ""]
    except ValueError:
        return []
    found += [v for k, v in parse_qsl(parts.query) if k.lower() in _SECRET_PARAMS]
    return [s for secret in found if secret for s in {secret, unquote(secret)}]


def _scrub(text: str, url: str) -> str:
    for secret in _secrets(url):
        text = text.replace(secret, "***")
    return text


def connect(url: str):
    """ADBC DB-API connection (autocommit) for ``sqlite:///path`` or ``postgresql://...``.

    SQLite paths follow the SQLAlchemy convention: ``sqlite:///rel.db`` is relative to the
    working directory, ``sqlite:////abs/path.db`` is absolute, ``sqlite://`` is in memory.
    """
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in (SQLITE, POSTGRESQL, "postgres"):
        raise SourceError(
            f"unsupported source URL {redact_url(url)}: expected sqlite:///path "
            "or postgresql://user@host:port/db"
        )
    try:
        if scheme == SQLITE:
            return sqlite_dbapi.connect(_sqlite_path(url), autocommit=True)
        return postgresql_dbapi.connect(url, autocommit=True)
    except SourceError:
        raise
    except Exception as exc:
        # `from None`: the driver's exception (and its traceback) may echo the password.
        message = f"cannot connect to {redact_url(url)}: {_scrub(str(exc), url)}"
        raise SourceError(message) from None


def _sqlite_path(url: str) -> str:
    rest = url[len("sqlite:") :]
    if rest in ("", "//", "//:memory:", "///:memory:"):
        return ":memory:"
    if not rest.startswith("///"):
        raise SourceError(f"bad SQLite URL {url!r}: expected sqlite:///relative/path.db")
    path = rest[3:]
    if not os.path.isfile(path):
        raise SourceError(
            f"cannot connect to {url}: no SQLite file at {os.path.abspath(path)} "
            "(sqlite:///rel.db is relative; use sqlite:////abs/path.db for absolute paths)"
        )
    return path


_DIALECTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _dialect(conn) -> str:
    # Asked before nearly every query; adbc_get_info is a driver round trip each time.
    dialect = _DIALECTS.get(conn)
    if dialect is not None:
        return dialect
    vendor = str(conn.adbc_get_info().get("vendor_name", "")).lower()
    if "sqlite" in vendor:
        dialect = SQLITE
    elif "postgres" in vendor:
        dialect = POSTGRESQL
    else:
        raise SourceError(f"unsupported database vendor {vendor!r}")
    _DIALECTS[conn] = dialect
    return dialect


# --- SQL text ------------------------------------------------------------------------


def quote_ident(name: str) -> str:
    if not isinstance(name, str) or not name or "\x00" in name:
        raise SourceError(f"invalid SQL identifier {name!r}")
    return '"' + name.replace('"', '""') + '"'


def _qualified(ref: tuple[str, str]) -> str:
    return f"{quote_ident(ref[0])}.{quote_ident(ref[1])}"


@dataclass(frozen=True)
class _Param:
    value: object


def _check_value(value: object) -> object:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise SourceError(f"unsupported SQL value {value!r}")


def _pg_literal(value: object) -> str:
    value = _check_value(value)
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    if "\x00" in value:
        raise SourceError("PostgreSQL text cannot contain NUL characters")
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _render(parts: Sequence[str | _Param], dialect: str) -> tuple[str, list | None]:
    sql, params = [], []
    for part in parts:
        if not isinstance(part, _Param):
            sql.append(part)
        elif dialect == SQLITE:
            sql.append("?")
            params.append(_check_value(part.value))
        else:
            sql.append(_pg_literal(part.value))
    return "".join(sql), params or None


def _query(conn, parts: Sequence[str | _Param]) -> list[tuple]:
    sql, params = _render(parts, _dialect(conn))
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def _jsonable(value: object) -> object:
    """Watermark values as JSON scalars that `_render` can turn back into SQL."""
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    return value


# --- tables and the catalog ----------------------------------------------------------


def _split_table(conn, dialect: str, table: str | Sequence[str]) -> tuple[str, str]:
    """``(schema, table)`` from ``"schema.table"``, ``"table"`` or ``[schema, table]``."""
    if not isinstance(table, str):
        schema, name = table
        return str(schema), str(name)
    if "." in table:
        schema, name = table.split(".", 1)
        return schema, name
    if dialect == SQLITE:
        return "main", table
    rows = _query(
        conn,
        [
            "SELECT n.nspname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n"
            " ON n.oid = c.relnamespace WHERE c.oid = to_regclass(",
            _Param(quote_ident(table)),
            ")",
        ],
    )
    if not rows:
        raise SourceError(f"table not found: {table}")
    return rows[0][0], table


def _is_system(dialect: str, schema: str, table: str) -> bool:
    if dialect == SQLITE:
        return table.startswith("sqlite_")
    return schema in _PG_SYSTEM_SCHEMAS or schema.startswith(("pg_toast", "pg_temp"))


def _catalog(
    conn, dialect: str, depth: str, schema: str | None = None, table: str | None = None
) -> list[dict]:
    """``adbc_get_objects`` flattened to one dict per table (SQLite: catalog = schema)."""
    # The filters are LIKE patterns: "_" and "%" only widen the match (names are compared
    # exactly below), but a backslash is PostgreSQL's escape character, so no filter then.
    table = table if table and "\\" not in table else None
    database = None
    if dialect == SQLITE:
        reader = conn.adbc_get_objects(depth=depth, catalog_filter=schema, table_name_filter=table)
    else:
        database = _query(conn, ["SELECT current_database()"])[0][0]
        reader = conn.adbc_get_objects(
            depth=depth, catalog_filter=database, db_schema_filter=schema, table_name_filter=table
        )
    tables = []
    for catalog in reader.read_all().to_pylist():
        if database is not None and catalog["catalog_name"] != database:
            continue
        for db_schema in catalog["catalog_db_schemas"] or []:
            owner = catalog["catalog_name"] if dialect == SQLITE else db_schema["db_schema_name"]
            for entry in db_schema["db_schema_tables"] or []:
                if schema is None or owner == schema:
                    tables.append({"schema": owner, **entry})
    return tables


def _as_patterns(patterns: str | Sequence[str] | None) -> list[str] | None:
    if patterns is None:
        return None
    return [patterns] if isinstance(patterns, str) else list(patterns)


def _matches(qualified: str, patterns: list[str]) -> bool:
    bare = qualified.split(".", 1)[1]
    return any(fnmatch.fnmatchcase(qualified, p) or fnmatch.fnmatchcase(bare, p) for p in patterns)


def list_tables(
    conn,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    table_types: Sequence[str] = ("table",),
) -> list[str]:
    """Sorted ``"schema.table"`` names; glob patterns match ``schema.table`` or ``table``.

    SQLite's schema is ``main``. System tables/schemas are never listed.
    """
    dialect = _dialect(conn)
    include, exclude = _as_patterns(include), _as_patterns(exclude)
    names = [
        f"{entry['schema']}.{entry['table_name']}"
        for entry in _catalog(conn, dialect, "tables")
        if entry["table_type"] in table_types
        and not _is_system(dialect, entry["schema"], entry["table_name"])
    ]
    return sorted(
        name
        for name in names
        if (include is None or _matches(name, include))
        and not (exclude and _matches(name, exclude))
    )


# --- reading: one SELECT per partition -------------------------------------------------


def _affinity(declared: str | None) -> str | None:
    """SQLite column affinity (datatype3.html 3.1); None = decided by the data."""
    declared = (declared or "").upper()
    if "INT" in declared:
        return "integer"
    if any(word in declared for word in ("CHAR", "CLOB", "TEXT")):
        return "text"
    if "BLOB" in declared or not declared:
        return None
    if any(word in declared for word in ("REAL", "FLOA", "DOUB")):
        return "real"
    return None


def _sqlite_columns(conn, ref: tuple[str, str]) -> list[tuple[str, str]]:
    """``[(column, typing literal)]`` in SELECT * order."""
    rows = _query(
        conn,
        [
            "SELECT name, type, hidden FROM pragma_table_xinfo(",
            _Param(ref[1]),
            ", ",
            _Param(ref[0]),
            ") ORDER BY cid",
        ],
    )
    if not rows:
        raise SourceError(f"table not found: {ref[0]}.{ref[1]}")
    columns = []
    for name, declared, hidden in rows:
        if hidden == 1:  # hidden virtual-table columns are not part of SELECT *
            continue
        storage = _affinity(declared) or _first_storage_class(conn, ref, name)
        columns.append((name, _TYPING_LITERALS[storage]))
    return columns


def _first_storage_class(conn, ref: tuple[str, str], column: str) -> str | None:
    name = quote_ident(column)
    rows = _query(
        conn, [f"SELECT typeof({name}) FROM {_qualified(ref)} WHERE {name} IS NOT NULL LIMIT 1"]
    )
    return rows[0][0] if rows else None


def _filter_parts(partition: dict, known: set[str] | None) -> list[str | _Param]:
    """WHERE / ORDER BY / LIMIT for a partition dict (see `plan_partitions`)."""

    def column(name: str) -> str:
        if known is not None and name not in known:
            raise SourceError(f"unknown column {name!r}")
        return quote_ident(name)

    conditions: list[list[str | _Param]] = []
    watermark, since, until = (partition.get(k) for k in ("watermark_column", "since", "until"))
    if watermark:
        mark = column(watermark)
        if since is not None:
            conditions.append([mark, " > ", _Param(since)])
        if until is not None and since is None:
            conditions.append(["(", mark, " <= ", _Param(until), " OR ", mark, " IS NULL)"])
        elif until is not None:
            conditions.append([mark, " <= ", _Param(until)])
    strategy = partition.get("strategy", "all")
    if strategy in ("key_range", "rowid_range"):
        key = "rowid" if strategy == "rowid_range" else column(partition["column"])
        low, high = _Param(int(partition["lo"])), _Param(int(partition["hi"]))
        conditions.append([key, " BETWEEN ", low, " AND ", high])
    elif strategy not in ("all", "offset", "none"):
        raise SourceError(f"unknown partition strategy {strategy!r}")
    parts: list[str | _Param] = []
    for index, condition in enumerate(conditions):
        parts += [" WHERE " if index == 0 else " AND ", *condition]
    if strategy == "offset":
        order = ", ".join(column(name) for name in partition["order_by"])
        limit, offset = _Param(int(partition["limit"])), _Param(int(partition["offset"]))
        parts += [f" ORDER BY {order} LIMIT ", limit, " OFFSET ", offset]
    elif strategy == "none":
        parts.append(" LIMIT 0")
    return parts


def _select_parts(conn, dialect: str, ref: tuple[str, str], partition: dict):
    """SELECT for a partition; SQLite gets the typing row (see module docstring)."""
    if dialect != SQLITE:
        return [f"SELECT * FROM {_qualified(ref)}", *_filter_parts(partition, None)]
    columns = _sqlite_columns(conn, ref)
    typing = ", ".join(f"{literal} AS {quote_ident(name)}" for name, literal in columns)
    names = ", ".join(quote_ident(name) for name, _ in columns)
    filters = _filter_parts(partition, {name for name, _ in columns})
    return [
        f"SELECT 1 AS {quote_ident(_TYPING_MARKER)}, {typing} UNION ALL SELECT * FROM ",
        f"(SELECT 0, {names} FROM {_qualified(ref)}",
        *filters,
        ")",
    ]


class _Stream:
    """Canonical record batches of one partition, typing row removed."""

    def __init__(self, reader: pa.RecordBatchReader, typed: bool):
        self._reader, self._typed = reader, typed
        schema = reader.schema
        if typed:
            schema = pa.schema(list(schema)[1:], schema.metadata)
        self.schema = canonical_schema(schema)

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        for batch in self._reader:
            if self._typed:
                marker = batch.column(0)
                if pc.max(marker).as_py() == 1:
                    batch = batch.filter(pc.equal(marker, 0))
                batch = batch.select(range(1, batch.num_columns))
            yield canonical_batch(batch)


@contextlib.contextmanager
def _open_stream(conn, table, partition: dict, batch_rows: int) -> Iterator[_Stream]:
    dialect = _dialect(conn)
    ref = _split_table(conn, dialect, table)
    sql, params = _render(_select_parts(conn, dialect, ref, partition), dialect)
    with conn.cursor() as cur:
        if dialect == SQLITE:
            options = {"adbc.sqlite.query.batch_rows": str(batch_rows)}
            cur.adbc_statement.set_options(**options)
        cur.execute(sql, params)
        yield _Stream(cur.fetch_record_batch(), typed=dialect == SQLITE)


# --- describing tables ---------------------------------------------------------------


def _arrow_types(conn, ref: tuple[str, str]) -> dict[str, pa.DataType]:
    with _open_stream(conn, ref, {"strategy": "none"}, 1) as stream:
        for _ in stream:
            pass
        return {field.name: field.type for field in stream.schema}


def _pg_not_null(conn, ref: tuple[str, str]) -> dict[str, bool]:
    rows = _query(
        conn,
        [
            "SELECT attname, attnotnull FROM pg_catalog.pg_attribute WHERE attrelid = to_regclass(",
            _Param(_qualified(ref)),
            ") AND attnum > 0 AND NOT attisdropped",
        ],
    )
    return dict(rows)


def _nullable(conn, dialect: str, ref, entry: dict, primary_key: list[str]) -> dict[str, bool]:
    columns = entry["table_columns"] or []
    if dialect == POSTGRESQL:
        not_null = _pg_not_null(conn, ref)
        return {c["column_name"]: not not_null.get(c["column_name"], False) for c in columns}
    nullable = {c["column_name"]: c["xdbc_nullable"] != 0 for c in columns}
    # An INTEGER PRIMARY KEY is the rowid: never NULL though not declared NOT NULL.
    if len(primary_key) == 1:
        declared = next(c["xdbc_type_name"] for c in columns if c["column_name"] == primary_key[0])
        if (declared or "").upper() == "INTEGER":
            nullable[primary_key[0]] = False
    return nullable


def _foreign_keys(entry: dict, dialect: str) -> list[dict]:
    keys = []
    for constraint in entry["table_constraints"] or []:
        if constraint["constraint_type"] != "FOREIGN KEY":
            continue
        usage = constraint["constraint_column_usage"] or []
        first = usage[0] if usage else {}
        keys.append(
            {
                "name": constraint["constraint_name"],
                "columns": list(constraint["constraint_column_names"]),
                "ref_schema": first.get("fk_catalog" if dialect == SQLITE else "fk_db_schema"),
                "ref_table": first.get("fk_table"),
                "ref_columns": [u["fk_column_name"] for u in usage],
            }
        )
    return keys


def _database_name(conn, dialect: str, schema: str) -> str:
    if dialect == POSTGRESQL:
        return _query(conn, ["SELECT current_database()"])[0][0]
    rows = _query(conn, ["SELECT file FROM pragma_database_list WHERE name = ", _Param(schema)])
    return os.path.basename(rows[0][0]) if rows and rows[0][0] else schema


def _row_count_estimate(conn, dialect: str, ref: tuple[str, str]) -> int | None:
    if dialect == SQLITE:
        # SQLite keeps no row statistics without ANALYZE; counting walks the smallest
        # b-tree and is fast enough (~30 ms per million rows).
        return _query(conn, [f"SELECT count(*) FROM {_qualified(ref)}"])[0][0]
    rows = _query(
        conn,
        [
            "SELECT reltuples FROM pg_catalog.pg_class WHERE oid = to_regclass(",
            _Param(_qualified(ref)),
            ")",
        ],
    )
    # reltuples is -1 (PostgreSQL 14+) or 0 before the first VACUUM/ANALYZE: unknown.
    return int(rows[0][0]) if rows and rows[0][0] is not None and rows[0][0] > 0 else None


def _table_info(conn, dialect: str, ref: tuple[str, str], entry: dict) -> dict:
    constraints = entry["table_constraints"] or []
    primary_key = next(
        (
            list(c["constraint_column_names"])
            for c in constraints
            if c["constraint_type"] == "PRIMARY KEY"
        ),
        [],
    )
    arrow = _arrow_types(conn, ref)
    nullable = _nullable(conn, dialect, ref, entry, primary_key)
    columns = [
        {
            "name": c["column_name"],
            "type": c["xdbc_type_name"],
            "arrow_type": str(arrow[c["column_name"]]) if c["column_name"] in arrow else None,
            "nullable": nullable[c["column_name"]],
            "ordinal": c["ordinal_position"],
        }
        for c in sorted(entry["table_columns"] or [], key=lambda c: c["ordinal_position"])
    ]
    return {
        "database": _database_name(conn, dialect, ref[0]),
        "schema": ref[0],
        "table": ref[1],
        "columns": columns,
        "primary_key": primary_key,
        "foreign_keys": _foreign_keys(entry, dialect),
        "_arrow": arrow,
    }


def _describe(conn, tables: Sequence, with_counts: bool) -> list[dict]:
    dialect = _dialect(conn)
    refs = [_split_table(conn, dialect, table) for table in tables]
    # One catalog call per schema; narrowed to the table when only one is asked for
    # (planning a partition should not read the columns of a whole schema).
    only = refs[0][1] if len(refs) == 1 else None
    entries = {}
    for schema in dict.fromkeys(schema for schema, _ in refs):
        for entry in _catalog(conn, dialect, "all", schema, only):
            entries[(entry["schema"], entry["table_name"])] = entry
    described = []
    for ref in refs:
        if ref not in entries:
            raise SourceError(f"table not found: {ref[0]}.{ref[1]}")
        info = _table_info(conn, dialect, ref, entries[ref])
        if with_counts:
            info["row_count_estimate"] = _row_count_estimate(conn, dialect, ref)
        described.append(info)
    return described


def describe_tables(conn, tables: Sequence) -> list[dict]:
    """One dict per table (JSON-able)::

    {database, schema, table,
     columns: [{name, type (source type), arrow_type, nullable, ordinal}],
     primary_key: [column, ...],
     foreign_keys: [{name, columns, ref_schema, ref_table, ref_columns}],
     row_count_estimate: int | None}
    """
    described = _describe(conn, tables, with_counts=True)
    for info in described:
        del info["_arrow"]
    return described


_METADATA_SCHEMA = pa.schema(
    [
        ("database", pa.string()),
        ("schema", pa.string()),
        ("table", pa.string()),
        ("column", pa.string()),
        ("ordinal", pa.int32()),
        ("source_type", pa.string()),
        ("arrow_type", pa.string()),
        ("nullable", pa.bool_()),
        ("primary_key_position", pa.int32()),
        ("references", pa.string()),
        ("row_count_estimate", pa.int64()),
    ]
)


def _references(info: dict) -> dict[str, str]:
    refs = {}
    for key in info["foreign_keys"]:
        for column, target in zip(key["columns"], key["ref_columns"], strict=False):
            refs[column] = f"{key['ref_schema']}.{key['ref_table']}.{target}"
    return refs


def metadata_table(described: Sequence[dict]) -> pa.Table:
    """One row per column of `describe_tables` output, with a fixed schema for Parquet."""
    rows = []
    for info in described:
        references = _references(info)
        for column in info["columns"]:
            name = column["name"]
            in_key = name in info["primary_key"]
            rows.append(
                {
                    "database": info["database"],
                    "schema": info["schema"],
                    "table": info["table"],
                    "column": name,
                    "ordinal": column["ordinal"],
                    "source_type": column["type"],
                    "arrow_type": column["arrow_type"],
                    "nullable": column["nullable"],
                    "primary_key_position": info["primary_key"].index(name) + 1 if in_key else None,
                    "references": references.get(name),
                    "row_count_estimate": info.get("row_count_estimate"),
                }
            )
    return pa.Table.from_pylist(rows, schema=_METADATA_SCHEMA)


# --- partition planning --------------------------------------------------------------


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


# --- extraction and checksums ------------------------------------------------------


def _write_local(stream: _Stream, path: str, batch_rows: int, checksum: bool) -> tuple:
    rows, total = 0, 0
    with pq.ParquetWriter(path, stream.schema) as writer:
        for batch in stream:
            writer.write_batch(batch, row_group_size=batch_rows)
            rows += batch.num_rows
            if checksum:
                total = add_checksums(total, batch_checksum(batch))
    return rows, (total if checksum else None)


def _write_parquet(stream: _Stream, dest_path: str, batch_rows: int, checksum: bool) -> tuple:
    """``(rows, checksum, bytes)``; the file appears at ``dest_path`` complete or not at all.

    Local destinations are written under a temporary name and renamed. Other fsspec
    destinations are written to a local temporary file and uploaded with ``put_file``:
    an object store publishes an object only when its upload completes, whereas closing
    an fsspec write handle after an error would publish whatever was written so far.
    """
    fs, path = fsspec.core.url_to_fs(dest_path)
    local = isinstance(fs, LocalFileSystem)
    if local:
        fs.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        temp = f"{path}.partial-{uuid.uuid4().hex}"
    else:
        temp = os.path.join(tempfile.gettempdir(), f"extract-{uuid.uuid4().hex}.parquet")
    try:
        rows, total = _write_local(stream, temp, batch_rows, checksum)
        size = os.path.getsize(temp)
        if local:
            os.replace(temp, path)
        else:
            fs.put_file(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)
    return rows, total, size


def extract_partition(
    conn_url: str,
    table: str,
    partition: dict,
    dest_path: str,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    *,
    checksum: bool = True,
) -> dict:
    """Stream one partition into a single Parquet file (local path or fsspec URL).

    Returns ``{table, index, rows, bytes, path, schema: [[name, arrow type]], checksum,
    seconds}``; ``checksum`` equals `table_checksum` over the same rows (None when
    ``checksum=False``). ``batch_rows`` bounds the rows fetched per batch (SQLite; the
    PostgreSQL driver batches by bytes) and per Parquet row group.
    """
    started = time.perf_counter()
    conn = connect(conn_url)
    try:
        with _open_stream(conn, table, partition, batch_rows) as stream:
            rows, total, size = _write_parquet(stream, dest_path, batch_rows, checksum)
            schema = [[field.name, str(field.type)] for field in stream.schema]
    except _READ_ERRORS as exc:
        where = f"{table} partition {partition.get('index', 0)} from {redact_url(conn_url)}"
        raise SourceError(f"extracting {where} to {dest_path}: {exc}") from exc
    finally:
        conn.close()
    return {
        "table": table,
        "index": partition.get("index", 0),
        "rows": rows,
        "bytes": size,
        "path": dest_path,
        "schema": schema,
        "checksum": total,
        "seconds": round(time.perf_counter() - started, 3),
    }


def table_checksum(
    conn,
    table: str,
    *,
    watermark_column: str | None = None,
    since: object = None,
    partition: dict | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> tuple[int, int]:
    """``(rows, checksum)`` computed from the source, for the whole table, the rows
    newer than ``since``, or one planned ``partition``."""
    if partition is None:
        partition = {"strategy": "all", "watermark_column": watermark_column, "since": since}
    rows, total = 0, 0
    try:
        with _open_stream(conn, table, partition, batch_rows) as stream:
            for batch in stream:
                rows += batch.num_rows
                total = add_checksums(total, batch_checksum(batch))
    except _READ_ERRORS as exc:
        raise SourceError(f"reading {table}: {exc}") from exc
    return rows, total


def read_partition_checksum(
    paths: str | Sequence[str], batch_rows: int = DEFAULT_BATCH_ROWS
) -> tuple[int, int]:
    """``(rows, checksum)`` over Parquet files (local paths or fsspec URLs)."""
    rows, total = 0, 0
    for path in [paths] if isinstance(paths, str) else paths:
        with fsspec.open(path, "rb") as handle:
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=batch_rows):
                batch = canonical_batch(batch)
                rows += batch.num_rows
                total = add_checksums(total, batch_checksum(batch))
    return rows, total
