"""Single-process ADBC -> Parquet baseline for the SQL connector.

This is the "limit" a distributed extraction is compared with: one process, one
connection per table, one whole-table stream per table, no checksums, no orchestration.
It uses the same `extract_partition` as the connector so both sides pay for the same
type handling and Parquet encoding; only the partitioning and the runtime differ.

    .venv/bin/python -m benchmarks.sql_baseline [total_rows]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from connectors.sql import connect, extract_partition, generate_demo_sqlite, list_tables


def baseline_extract(source_url: str, dest_dir: str, batch_rows: int = 65_536) -> dict:
    """Extract every table of ``source_url`` to ``dest_dir/<table>.parquet`` serially.

    Returns ``{rows, seconds, rows_per_s, bytes, tables: {table: rows}}``.
    """
    conn = connect(source_url)
    try:
        tables = list_tables(conn)
    finally:
        conn.close()
    started = time.perf_counter()
    per_table, size = {}, 0
    for table in tables:
        dest = os.path.join(dest_dir, f"{table}.parquet")
        result = extract_partition(
            source_url, table, {"strategy": "all"}, dest, batch_rows, checksum=False
        )
        per_table[table] = result["rows"]
        size += result["bytes"]
    seconds = time.perf_counter() - started
    rows = sum(per_table.values())
    return {
        "rows": rows,
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds) if seconds else None,
        "bytes": size,
        "tables": per_table,
    }


def main(total_rows: int = 5_000_000) -> None:
    with tempfile.TemporaryDirectory(prefix="sql-baseline-") as work:
        generated = generate_demo_sqlite(os.path.join(work, "demo.db"), total_rows)
        print(f"generated {generated['rows']:,} rows in {generated['seconds']:.1f} s")
        result = baseline_extract(f"sqlite:///{generated['path']}", os.path.join(work, "out"))
        print(
            f"extracted {result['rows']:,} rows in {result['seconds']:.1f} s: "
            f"{result['rows_per_s']:,} rows/s, {result['bytes'] / 1e6:.0f} MB Parquet"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5_000_000)
