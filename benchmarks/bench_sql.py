"""SQL -> Parquet: the SQL connector on Ray against the limit and the tools users pick instead.

    .venv/bin/pip install -e '.[bench]'            # dlt and connectorx
    .venv/bin/python -m benchmarks.bench_sql [rows] [sqlite,postgresql] [rounds]

`run(rows)` (called by the harness, ``--cases sql``) returns a dict of figures for one round.
Two sources of the same shape: the demo's SQLite file (5 tables, ``rows`` rows in all) and
the same rows loaded into a private PostgreSQL 15 (`benchmarks/_pg.py`, on this machine, so it
shares the two cores with everything else: a fact of the setup, reported, not hidden). For
each source, in an order rotated every round:

* ``limit``: `benchmarks.sql_baseline.baseline_extract`, one process reading each whole table
  through ADBC into a pyarrow ``ParquetWriter`` with its defaults (the per-core limit issue 17
  names). ``connector_1proc`` is the connector's own `extract_partition` in one process, no
  Ray: its per-core work, the honest base for how well the runtime scales.
* ``runtime_1cpu``: `SqlConnector.extract_data` on Ray, one partition at a time
  (``max_parallel=1``); ``runtime_2cpu``: partitions in parallel on 2 CPUs; both without
  checksums, like every peer. ``runtime_2cpu_checksums``: the connector's default (an
  order-independent checksum per file and table).
* ``dlt``, ``connectorx_2``, ``connectorx_1`` (`benchmarks.sql_peers`): dlt's
  ``sql_database`` + pyarrow backend + filesystem/Parquet, and connectorx into Arrow in 2
  partitions per table (and unpartitioned), written with ``pq.write_table``.

Every variant's files are read back after its timing and checked against the source: the rows
per table and the order-independent checksum (`connectors.sql.table_checksum`, dlt's own two
columns left out) must be the source's, else the variant is reported as wrong. MB/s is the
uncompressed Arrow size of the source's rows per second (the same bytes for every variant, so
it reads like rows/s in another unit); ``parquet_mb`` is what each variant wrote.

Fairness: one untimed warm-up round of every variant on a 20,000-row source first (process
starts, imports and Ray workers are a one-off cost, for every tool alike). The runtime's time
includes its whole run (lease, journal, listing and planning tasks, manifest, cleanup).
Partitions are ``rows // 20`` rows (21 tasks for 5 M rows).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import itertools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pyarrow.parquet as pq

from benchmarks import sql_baseline, sql_peers

__all__ = ["SOURCES", "VARIANTS", "run"]

SOURCES = ("sqlite", "postgresql")
VARIANTS = ("limit", "connector_1proc", "runtime_1cpu", "runtime_2cpu", "runtime_2cpu_checksums",
            "dlt", "connectorx_2", "connectorx_1")
PEERS = {"dlt": "dlt", "connectorx_2": "connectorx", "connectorx_1": "connectorx"}
WARMUP_ROWS = 20_000

_rounds = itertools.count()


class _Sources:
    """Sources built once per process (generating 5 M rows takes 10-20 s), removed at exit."""

    def __init__(self) -> None:
        self.work = tempfile.mkdtemp(prefix="bench-sql-")
        self._stack = contextlib.ExitStack()
        self._pg: Any = False  # False: not started yet; None: not installed
        self._urls: dict[tuple[str, int], str] = {}
        self.expected: dict[str, dict[str, tuple[int, int]]] = {}
        self.arrow_bytes: dict[str, int] = {}
        atexit.register(self.close)

    def close(self) -> None:
        self._stack.close()
        shutil.rmtree(self.work, ignore_errors=True)

    def url(self, kind: str, rows: int) -> str | None:
        """URL of the ``kind`` source with ``rows`` rows, or None when it cannot be had."""
        from connectors.sql import generate_demo_postgres, generate_demo_sqlite

        key = (kind, rows)
        if key not in self._urls:
            if kind == "sqlite":
                path = generate_demo_sqlite(os.path.join(self.work, f"demo-{rows}.db"),
                                            rows)["path"]
                self._urls[key] = f"sqlite:///{path}"
            else:
                if self._pg is False:
                    from benchmarks._pg import postgres_server

                    self._pg = self._stack.enter_context(postgres_server())
                if self._pg is None:
                    return None
                url = self._pg.create_database(f"demo_{rows}")
                generate_demo_postgres(url, rows)
                self._urls[key] = url
            self._measure(self._urls[key])
        return self._urls[key]

    def _measure(self, url: str) -> None:
        """Per table ``(rows, checksum)`` and the Arrow bytes of all rows, from the source."""
        from connectors.sql import connect, list_tables
        from connectors.sql._read import read_partition

        conn = connect(url)
        expected, size = {}, 0

        def count(stream) -> tuple[int, int, int]:
            from connectors.sql._checksum import add_checksums, batch_checksum

            rows, total, nbytes = 0, 0, 0
            for batch in stream:
                rows, nbytes = rows + batch.num_rows, nbytes + batch.nbytes
                total = add_checksums(total, batch_checksum(batch))
            return rows, total, nbytes

        try:
            for table in list_tables(conn):
                rows, total, nbytes = read_partition(conn, table, {"strategy": "all"}, 65_536,
                                                     count)
                expected[table.split(".", 1)[1]] = (rows, total)
                size += nbytes
        finally:
            conn.close()
        self.expected[url], self.arrow_bytes[url] = expected, size


_sources: _Sources | None = None


def _ensure_ray() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)


def _runtime(rows: int, **options: Any) -> Callable[[str, str], dict]:
    def extract(url: str, dest: str) -> dict:
        import runtime
        from connectors.sql.app import SqlConnector

        target = max(2_000, rows // 20)
        started = time.perf_counter()
        out = runtime.run_app(
            SqlConnector,
            {"source_url": url, "destination": dest, "target_rows": target, **options},
            store=os.path.join(_sources.work, "store"),
            run_id=f"bench-{os.urandom(4).hex()}", entrypoint="extract_data",
        )
        seconds = time.perf_counter() - started
        files = {t.table.split(".", 1)[1]: sorted(glob.glob(os.path.join(
            dest, "data", t.table, "*.parquet"))) for t in out.tables}
        per_table = {t.table.split(".", 1)[1]: t.rows for t in out.tables}
        return sql_baseline._result(per_table, files, out.bytes, seconds)

    return extract


def _variant(name: str, work: str, rows: int) -> Callable[[str, str], dict]:
    return {
        "limit": sql_baseline.baseline_extract,
        "connector_1proc": sql_baseline.connector_extract,
        "runtime_1cpu": _runtime(rows, max_parallel=1, checksums=False),
        "runtime_2cpu": _runtime(rows, checksums=False),
        "runtime_2cpu_checksums": _runtime(rows, checksums=True),
        "dlt": lambda url, dest: sql_peers.dlt_extract(url, dest, work),
        "connectorx_2": lambda url, dest: sql_peers.connectorx_extract(url, dest, 2),
        "connectorx_1": lambda url, dest: sql_peers.connectorx_extract(url, dest, 1),
    }[name]


def _files_checksum(paths: list[str]) -> tuple[int, int]:
    from connectors.sql._checksum import add_checksums, batch_checksum, canonical_batch

    rows, total = 0, 0
    for path in paths:
        handle = pq.ParquetFile(path)
        columns = [n for n in handle.schema_arrow.names if n not in sql_peers.DLT_COLUMNS]
        for batch in handle.iter_batches(batch_size=65_536, columns=columns):
            batch = canonical_batch(batch)
            rows += batch.num_rows
            total = add_checksums(total, batch_checksum(batch))
    return rows, total


def _check(result: dict, expected: dict[str, tuple[int, int]]) -> str | None:
    """None when the files hold exactly the source's rows, else what differs."""
    if set(result["files"]) != set(expected):
        return f"tables {sorted(result['files'])} != {sorted(expected)}"
    for table, (rows, checksum) in expected.items():
        got = _files_checksum(result["files"][table])
        if got != (rows, checksum):
            return f"{table}: {got[0]} rows, checksum {got[1]:x} != {rows} rows, {checksum:x}"
    return None


def _measure_source(kind: str, url: str, rows: int, variants: list[str],
                    work: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    missing = sql_peers.available()
    expected, mb = _sources.expected[url], _sources.arrow_bytes[url] / 1e6
    for name in variants:
        key = f"{kind}_{name}"
        why = missing.get(PEERS.get(name, ""))
        if why:
            out[f"{key}_rows_per_s"] = f"not available: {why}"
            continue
        dest = tempfile.mkdtemp(prefix=f"{name}-", dir=work)
        try:
            result = _variant(name, work, rows)(url, dest)
            wrong = _check(result, expected)
        finally:
            shutil.rmtree(dest, ignore_errors=True)
        seconds = result["seconds"]
        out[f"{key}_rows_per_s"] = round(result["rows"] / seconds)
        out[f"{key}_mb_per_s"] = round(mb / seconds, 1)
        out[f"{key}_parquet_mb"] = round(result["bytes"] / 1e6, 1)
        out[f"{key}_same_rows"] = True if wrong is None else f"no: {wrong}"
    return out


def _ratios(kind: str, figures: dict[str, Any]) -> dict[str, Any]:
    def rate(name: str) -> float | None:
        value = figures.get(f"{kind}_{name}_rows_per_s")
        return value if isinstance(value, int) else None

    out: dict[str, Any] = {}
    two = rate("runtime_2cpu")
    for base in ("limit", "connector_1proc", "runtime_1cpu", "dlt", "connectorx_2",
                 "connectorx_1"):
        if two and rate(base):
            out[f"{kind}_runtime_2cpu_vs_{base}"] = round(two / rate(base), 2)
    if two and rate("limit"):
        out[f"{kind}_target_1_8x_limit_met"] = two >= 1.8 * rate("limit")
    if two and rate("connectorx_2"):
        out[f"{kind}_target_ahead_of_connectorx_met"] = two > rate("connectorx_2")
    return out


def run(rows: int = 5_000_000, sources: tuple[str, ...] = SOURCES) -> dict[str, Any]:
    """Figures of one round (see the module docstring)."""
    global _sources
    _ensure_ray()
    first = _sources is None
    if first:
        _sources = _Sources()
    work = tempfile.mkdtemp(prefix="round-", dir=_sources.work)
    shift = next(_rounds)
    order = list(VARIANTS[shift % len(VARIANTS):] + VARIANTS[:shift % len(VARIANTS)])
    figures: dict[str, Any] = {"rows": rows, "partition_rows": max(2_000, rows // 20)}
    try:
        for kind in sources:
            if first and rows > WARMUP_ROWS:  # untimed warm-up of every variant on a small
                # source of this kind (a run as small as the warm-up, --quick, skips it)
                warm = _sources.url(kind, WARMUP_ROWS)
                if warm is not None:
                    _measure_source(kind, warm, WARMUP_ROWS, list(VARIANTS), work)
            url = _sources.url(kind, rows)
            if url is None:
                figures[f"{kind}_rows_per_s"] = "not available: PostgreSQL is not installed"
                continue
            figures[f"{kind}_arrow_mb"] = round(_sources.arrow_bytes[url] / 1e6, 1)
            measured = _measure_source(kind, url, rows, order, work)
            figures.update(measured)
            figures.update(_ratios(kind, measured))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return figures


def _print(rounds: list[dict[str, Any]]) -> None:
    """Median of the rounds, one line per source and variant."""
    import statistics

    kinds = [k for k in SOURCES if any(f"{k}_arrow_mb" in r for r in rounds)]
    for kind in kinds:
        print(f"\n{kind}: {rounds[0]['rows']:,} rows, {rounds[0][f'{kind}_arrow_mb']} MB Arrow")
        print(f"{'variant':<24}{'rows/s':>12}{'MB/s':>9}{'Parquet MB':>12}  same rows")
        for name in VARIANTS:
            values = [r.get(f"{kind}_{name}_rows_per_s") for r in rounds]
            if not all(isinstance(v, int) for v in values):
                print(f"{name:<24}{values[0]}")
                continue
            mbs = statistics.median(r[f"{kind}_{name}_mb_per_s"] for r in rounds)
            same = all(r[f"{kind}_{name}_same_rows"] is True for r in rounds)
            print(f"{name:<24}{statistics.median(values):>12,.0f}{mbs:>9.1f}"
                  f"{rounds[0][f'{kind}_{name}_parquet_mb']:>12.1f}  {'yes' if same else 'NO'}")
        for key in sorted(rounds[0]):
            if key.startswith(f"{kind}_runtime_2cpu_vs_") or key.startswith(f"{kind}_target"):
                values = [r[key] for r in rounds]
                shown = statistics.median(values) if not isinstance(values[0], bool) else values
                print(f"  {key[len(kind) + 1:]}: {shown}")


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 5_000_000
    sources = tuple(sys.argv[2].split(",")) if len(sys.argv) > 2 else SOURCES
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    _print([run(rows, sources) for _ in range(count)])


if __name__ == "__main__":
    main()
