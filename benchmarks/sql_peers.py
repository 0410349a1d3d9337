"""What users would pick instead of the SQL connector, each as its documentation shows it.

* `dlt_extract`: dlt's ``sql_database`` source with the ``pyarrow`` backend into the
  ``filesystem`` destination as Parquet: one ``pipeline.run`` (extract, normalize, load), dlt's
  defaults otherwise (50,000-row chunks, its own worker pools). Its telemetry is switched off
  (no network here). Its files carry two columns of its own (``_dlt_load_id``, ``_dlt_id``),
  left out when checksums are compared.
* `connectorx_extract`: ``connectorx.read_sql(..., return_type="arrow")`` per table, with
  ``partition_on`` the table's leading integer key and ``partition_num`` partitions read on
  connectorx's threads (its documented way to use several cores), then ``pq.write_table``.
  ``partitions=1`` is the unpartitioned read.

Both need the ``bench`` extra (``pip install -e '.[bench]'``); `available()` says what is
missing. Each returns what `benchmarks.sql_baseline` returns: ``{rows, seconds, rows_per_s,
bytes, tables: {table: rows}, files: {table: [paths]}}``, timed from the call to the last file.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import time

import pyarrow.parquet as pq

from benchmarks.sql_baseline import _result, _tables, quote_table

__all__ = ["DLT_COLUMNS", "available", "connectorx_extract", "dlt_extract"]

DLT_COLUMNS = ("_dlt_load_id", "_dlt_id")
"""Columns dlt adds to every row."""

# The demo's tables and the integer column connectorx splits each on (its leading key).
PARTITION_COLUMNS = {"order_items": "order_id"}


def available() -> dict[str, str | None]:
    """``{peer: None if installed else why not}``."""
    def why(module: str) -> str | None:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[bench]')"
        return None

    return {"dlt": why("dlt"), "connectorx": why("connectorx")}


def _sqlite_file(source_url: str) -> str:
    # sqlite:///rel.db and sqlite:////abs.db (the connector's convention) to an absolute path
    return os.path.abspath(source_url[len("sqlite:///"):])


def _sqlalchemy_url(source_url: str) -> str:
    if source_url.startswith("sqlite:"):
        return f"sqlite:///{_sqlite_file(source_url)}"
    return "postgresql+psycopg://" + source_url.split("://", 1)[1]


def dlt_extract(source_url: str, dest_dir: str, work_dir: str) -> dict:
    """All tables through one dlt pipeline; ``work_dir`` holds dlt's pipeline state."""
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "ERROR")  # its REAL-type warnings, per column
    os.environ.setdefault("DLT_DATA_DIR", os.path.join(work_dir, "dlt-data"))
    import dlt
    from dlt.sources.sql_database import sql_database

    names = [t.split(".", 1)[1] for t in _tables(source_url)]
    schema = None if source_url.startswith("sqlite:") else "public"
    started = time.perf_counter()
    source = sql_database(credentials=_sqlalchemy_url(source_url), schema=schema,
                          table_names=names, backend="pyarrow")
    pipeline = dlt.pipeline(
        pipeline_name=f"bench_{os.getpid()}_{time.monotonic_ns()}",
        pipelines_dir=os.path.join(work_dir, "dlt-pipelines"),
        destination=dlt.destinations.filesystem(bucket_url=dest_dir), dataset_name="demo",
    )
    pipeline.run(source, loader_file_format="parquet")
    seconds = time.perf_counter() - started
    per_table, files, size = {}, {}, 0
    for name in names:
        paths = sorted(glob.glob(os.path.join(dest_dir, "demo", name, "*.parquet")))
        files[name] = paths
        per_table[name] = sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
        size += sum(os.path.getsize(p) for p in paths)
    return _result(per_table, files, size, seconds)


def connectorx_extract(source_url: str, dest_dir: str, partitions: int = 2) -> dict:
    """Each table read by connectorx (in ``partitions`` pieces) and written as one file."""
    import connectorx as cx

    tables = _tables(source_url)
    url = f"sqlite://{_sqlite_file(source_url)}" if source_url.startswith("sqlite:") else \
        source_url
    os.makedirs(dest_dir, exist_ok=True)
    started = time.perf_counter()
    per_table, files, size = {}, {}, 0
    for table in tables:
        name = table.split(".", 1)[1]
        split = {}
        if partitions > 1:
            split = {"partition_on": PARTITION_COLUMNS.get(name, "id"),
                     "partition_num": partitions}
        arrow = cx.read_sql(url, f"SELECT * FROM {quote_table(table)}", return_type="arrow",
                            **split)
        path = os.path.join(dest_dir, f"{name}.parquet")
        pq.write_table(arrow, path)
        per_table[name], files[name] = arrow.num_rows, [path]
        size += os.path.getsize(path)
    return _result(per_table, files, size, time.perf_counter() - started)
