"""SQL -> Parquet: the runtime (SqlConnector.extract_data on Ray) vs a single-process loop.

    .venv/bin/python -m benchmarks.bench_sql [rows]

`run(rows)` returns a dict of figures for the benchmark harness. Measured, on the demo source
(5 tables, `rows` rows in all):

* ``baseline``: `benchmarks.sql_baseline.baseline_extract`, one process streaming each whole
  table through ADBC into Parquet, no checksums: the limit of one core.
* ``runtime_1cpu``: the runtime with one partition task at a time (``max_parallel=1``, a
  semaphore in run()). Chosen over ``@task(num_cpus=2)`` because it measures the same task
  code and partitions, only the concurrency differs. Honest caveat: the machine still has a
  second core, which the driver, raylet and GCS use; the baseline gets that core too (the OS
  runs its other processes there), so both sides have one core for the extraction itself.
* ``runtime_2cpu``: partitions in parallel on a 2-CPU Ray (tasks ``num_cpus=1``).
* ``runtime_2cpu_checksums``: the connector's default, with an order-independent checksum
  per file and table (the baseline has none).

Partitions are ``rows // 20`` rows (21 tasks for 5 M rows) so two workers stay busy to the
end. Workers are warmed up first with a small extraction (process start and imports are a
one-off cost per worker, not per run). The store is local; output goes to a temp dir.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any

from benchmarks.sql_baseline import baseline_extract

__all__ = ["run"]


def _ensure_ray() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)


def _extract(source: str, work: str, name: str, **options: Any) -> dict:
    import runtime
    from connectors.sql.app import SqlConnector

    dest = os.path.join(work, name)
    started = time.perf_counter()
    out = runtime.run_app(
        SqlConnector, {"source_url": source, "destination": dest, **options},
        store=os.path.join(work, "store"), run_id=f"bench-{name}-{os.urandom(3).hex()}",
        entrypoint="extract_data",
    )
    seconds = time.perf_counter() - started
    return {"rows": out.rows, "files": out.files, "seconds": round(seconds, 3),
            "rows_per_s": round(out.rows / seconds)}


def run(rows: int = 5_000_000) -> dict:
    """Figures of one benchmark round (see the module docstring)."""
    from connectors.sql import generate_demo_sqlite

    _ensure_ray()
    target = max(10_000, rows // 20)
    with tempfile.TemporaryDirectory(prefix="bench-sql-") as work:
        db = os.path.join(work, "demo.db")
        generated = generate_demo_sqlite(db, rows)
        warm = os.path.join(work, "warm.db")
        generate_demo_sqlite(warm, 20_000)
        _extract(f"sqlite:///{warm}", work, "warmup", target_rows=2_000)
        source = f"sqlite:///{db}"
        baseline = baseline_extract(source, os.path.join(work, "baseline"))
        one = _extract(source, work, "1cpu", target_rows=target, max_parallel=1,
                       checksums=False)
        two = _extract(source, work, "2cpu", target_rows=target, checksums=False)
        two_ck = _extract(source, work, "2cpu-ck", target_rows=target, checksums=True)
    return {
        "name": "sql_to_parquet",
        "rows": rows,
        "tables": len(generated["tables"]),
        "target_rows_per_partition": target,
        "baseline_rows_per_s": baseline["rows_per_s"],
        "baseline_seconds": baseline["seconds"],
        "runtime_1cpu_rows_per_s": one["rows_per_s"],
        "runtime_1cpu_seconds": one["seconds"],
        "runtime_2cpu_rows_per_s": two["rows_per_s"],
        "runtime_2cpu_seconds": two["seconds"],
        "runtime_2cpu_checksums_rows_per_s": two_ck["rows_per_s"],
        "runtime_2cpu_checksums_seconds": two_ck["seconds"],
        "partitions": two["files"],
        "speedup_2cpu_vs_baseline": round(two["rows_per_s"] / baseline["rows_per_s"], 2),
        "target_met": two["rows_per_s"] > baseline["rows_per_s"],
    }


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 5_000_000
    for key, value in run(rows).items():
        print(f"{key:>36}: {value}")


if __name__ == "__main__":
    main()
