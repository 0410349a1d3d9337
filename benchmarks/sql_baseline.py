"""The per-core limit of SQL -> Parquet: one process, ADBC reading, pyarrow writing.

What a user writes without a framework: for each table, ``SELECT *`` through the ADBC driver,
record batches streamed into one ``pyarrow.parquet.ParquetWriter`` with its defaults. No
partitioning, no checksums, no typing fixes (the demo's columns hold values in every first
batch, so the driver's own inference is right). SQLite gets 65,536-row batches (the
connector's size; the driver's default of 1,024 is slower), PostgreSQL the driver's
byte-sized batches.

`connector_extract` is the same loop through the connector's own `extract_partition` (its
typing rules and Parquet settings): the connector's work per core, with no runtime around it.

    .venv/bin/python -m benchmarks.sql_baseline [total_rows]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import pyarrow.parquet as pq

from connectors.sql import connect, extract_partition, generate_demo_sqlite, list_tables

__all__ = ["baseline_extract", "connector_extract"]

BATCH_ROWS = 65_536


def quote_table(table: str) -> str:
    """``"schema"."table"`` for a ``schema.table`` name."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in table.split(".", 1))


def _tables(source_url: str) -> list[str]:
    conn = connect(source_url)
    try:
        return list_tables(conn)
    finally:
        conn.close()


def baseline_extract(source_url: str, dest_dir: str) -> dict:
    """Every table of ``source_url`` to ``dest_dir/<table>.parquet``, one after another.

    Returns ``{rows, seconds, rows_per_s, bytes, tables: {table: rows}, files: {table:
    [path]}}`` (tables by name without their schema); the time covers connecting, reading and
    writing (not listing the tables).
    """
    tables = _tables(source_url)
    os.makedirs(dest_dir, exist_ok=True)
    started = time.perf_counter()
    per_table, files, size = {}, {}, 0
    conn = connect(source_url)
    try:
        for table in tables:
            path = os.path.join(dest_dir, f"{table}.parquet")
            with conn.cursor() as cur:
                if source_url.startswith("sqlite:"):
                    cur.adbc_statement.set_options(
                        **{"adbc.sqlite.query.batch_rows": str(BATCH_ROWS)})
                cur.execute(f"SELECT * FROM {quote_table(table)}")
                reader = cur.fetch_record_batch()
                rows = 0
                with pq.ParquetWriter(path, reader.schema) as writer:
                    for batch in reader:
                        writer.write_batch(batch)
                        rows += batch.num_rows
            name = table.split(".", 1)[1]
            per_table[name], files[name] = rows, [path]
            size += os.path.getsize(path)
    finally:
        conn.close()
    return _result(per_table, files, size, time.perf_counter() - started)


def connector_extract(source_url: str, dest_dir: str) -> dict:
    """The same, through `connectors.sql.extract_partition` (one whole-table partition each)."""
    tables = _tables(source_url)
    started = time.perf_counter()
    per_table, files, size = {}, {}, 0
    for table in tables:
        dest = os.path.join(dest_dir, f"{table}.parquet")
        result = extract_partition(source_url, table, {"strategy": "all"}, dest, BATCH_ROWS,
                                   checksum=False)
        name = table.split(".", 1)[1]
        per_table[name], files[name] = result["rows"], [dest]
        size += result["bytes"]
    return _result(per_table, files, size, time.perf_counter() - started)


def _result(per_table: dict, files: dict, size: int, seconds: float) -> dict:
    rows = sum(per_table.values())
    return {
        "rows": rows,
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds) if seconds else None,
        "bytes": size,
        "tables": per_table,
        "files": files,
    }


def main(total_rows: int = 5_000_000) -> None:
    with tempfile.TemporaryDirectory(prefix="sql-baseline-") as work:
        generated = generate_demo_sqlite(os.path.join(work, "demo.db"), total_rows)
        print(f"generated {generated['rows']:,} rows in {generated['seconds']:.1f} s")
        source = f"sqlite:///{generated['path']}"
        for name, extract in (("ADBC -> Parquet", baseline_extract),
                              ("connector, one process", connector_extract)):
            result = extract(source, os.path.join(work, name.split()[0]))
            print(f"{name}: {result['rows']:,} rows in {result['seconds']:.2f} s = "
                  f"{result['rows_per_s']:,} rows/s, {result['bytes'] / 1e6:.0f} MB Parquet")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5_000_000)
