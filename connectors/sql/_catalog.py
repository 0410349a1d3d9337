"""The catalog of a SQL source: which tables there are, and their columns, types and keys.

* ADBC ``adbc_get_objects`` has columns, primary and foreign keys for both drivers. Gaps
  filled from the database: PostgreSQL reports no nullability (pg_attribute), SQLite's
  ``adbc_get_table_schema`` types every column int64 (Arrow types come from a zero-row typed
  read instead, the types a partition read gives) and SQLite lists indexes as tables.
* One catalog call per schema, narrowed to the table when only one is asked for (planning a
  partition should not read the columns of a whole schema).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence

import pyarrow as pa

from connectors.sql._read import open_stream
from connectors.sql._sql import (
    POSTGRESQL,
    SQLITE,
    SourceError,
    _dialect,
    _Param,
    _qualified,
    _query,
    _split_table,
)

__all__ = ["describe_tables", "list_tables", "metadata_table"]

_PG_SYSTEM_SCHEMAS = {"pg_catalog", "information_schema"}


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


# --- describing tables ---------------------------------------------------------------


def _arrow_types(conn, ref: tuple[str, str]) -> dict[str, pa.DataType]:
    with open_stream(conn, ref, {"strategy": "none"}, 1, typed=True) as stream:
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
