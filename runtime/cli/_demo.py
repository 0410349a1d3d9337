"""`connector-runtime demo`: the main job, end to end, on this machine.

1. Generate a deterministic SQLite source (5 tables, ``--rows`` rows in all, 5 million by
   default) once, cached under ``.connector-runtime/demo/`` in the working directory, so a
   second demo starts extracting at once.
2. Run `connectors.sql.app:SqlConnector`'s ``extract_metadata`` and then ``extract_data`` on
   local Ray (or the cluster in ``RAY_ADDRESS``) with the local store, writing Parquet under
   ``--output`` (``./demo-output``).
3. Print a summary: tables, rows, files, time, rows/s, where the output is.

This is the only place the runtime imports `connectors` (DESIGN.md "Layout"). Progress goes
to stderr; the summary to stdout.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["DemoResult", "demo_main", "run_demo"]

DEFAULT_ROWS = 5_000_000
MARKER = ".connector-runtime-demo"
"""Written in the output folder: a later demo may clear the folders it made there."""


@dataclass(frozen=True)
class DemoResult:
    source: str
    generated: bool
    generate_seconds: float
    metadata_seconds: float
    extract_seconds: float
    tables: int
    columns: int
    rows: int
    files: int
    bytes: int
    output: str
    manifest: str
    store: str
    run_ids: tuple[str, str]


def _source(rows: int, cache_dir: str) -> tuple[str, bool, float]:
    from connectors.sql import generate_demo_sqlite

    path = os.path.join(cache_dir, f"source-{rows}.db")
    if os.path.isfile(path):
        return path, False, 0.0
    print(f"generating the demo source: {rows:,} rows in 5 tables -> {path}", file=sys.stderr)
    info = generate_demo_sqlite(path, rows)
    return path, True, float(info["seconds"])


def _prepare_output(output: str) -> None:
    """Clear what an earlier demo wrote in ``output`` (only if a demo made the folder)."""
    if os.path.isdir(output) and os.listdir(output):
        if not os.path.exists(os.path.join(output, MARKER)):
            raise SystemExit(
                f"error: {output} exists and was not made by the demo; choose --output"
            )
        for name in ("data", "manifests", "metadata"):
            shutil.rmtree(os.path.join(output, name), ignore_errors=True)
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, MARKER), "w", encoding="utf-8") as fh:
        fh.write("made by `connector-runtime demo`; it clears data/ manifests/ metadata/\n")


async def _run(app_cls: type, payload: dict[str, Any], run_id: str, store: str,
               entrypoint: str) -> Any:
    from ..driver import run_app_async
    from ._progress import ProgressDisplay

    with ProgressDisplay(entrypoint) as progress:
        return await run_app_async(app_cls, payload, run_id=run_id, store=store,
                                   entrypoint=entrypoint, on_progress=progress.update)


def run_demo(rows: int = DEFAULT_ROWS, output: str = "demo-output", store: str | None = None,
             target_rows: int | None = None, max_parallel: int = 0) -> DemoResult:
    from connectors.sql.app import SqlConnector
    from storage import DEFAULT_STORE_DIR

    store = store or os.environ.get("CONNECTOR_RUNTIME_STORE") or DEFAULT_STORE_DIR
    output = os.path.abspath(output)
    cache = os.path.abspath(os.path.join(DEFAULT_STORE_DIR, "demo"))
    source, generated, gen_seconds = _source(rows, cache)
    _prepare_output(output)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{os.urandom(2).hex()}"
    common = {"source_url": f"sqlite:///{source}", "destination": output}
    data_input = {**common, "target_rows": target_rows or max(10_000, rows // 20),
                  "max_parallel": max_parallel}

    async def both() -> tuple[Any, float, Any, float]:
        t0 = time.perf_counter()
        meta = await _run(SqlConnector, common, f"demo-metadata-{stamp}", store,
                          "extract_metadata")
        t1 = time.perf_counter()
        data = await _run(SqlConnector, data_input, f"demo-data-{stamp}", store,
                          "extract_data")
        return meta, t1 - t0, data, time.perf_counter() - t1

    meta, meta_s, data, data_s = asyncio.run(both())
    return DemoResult(
        source=source, generated=generated, generate_seconds=gen_seconds,
        metadata_seconds=meta_s, extract_seconds=data_s, tables=data.table_count,
        columns=meta.columns, rows=data.rows, files=data.files, bytes=data.bytes,
        output=output, manifest=data.manifest_path, store=store,
        run_ids=(meta.run_id, data.run_id),
    )


def summary(r: DemoResult) -> str:
    rate = r.rows / r.extract_seconds if r.extract_seconds else 0.0
    source = "generated" if r.generated else "cached"
    lines = [
        "connector-runtime demo: SQLite -> Parquet with SqlConnector on Ray",
        f"  source    {r.source} ({source}"
        + (f" in {r.generate_seconds:.1f} s)" if r.generated else ")"),
        f"  metadata  {r.tables} tables, {r.columns} columns in {r.metadata_seconds:.1f} s",
        f"  data      {r.rows:,} rows in {r.files} Parquet files ({r.bytes / 1e6:.1f} MB) "
        f"in {r.extract_seconds:.1f} s = {rate:,.0f} rows/s",
        f"  output    {r.output}/data/<table>/",
        f"  manifest  {r.manifest}",
        f"  runs      {r.run_ids[0]}, {r.run_ids[1]} in store {r.store}",
        f"            (connector-runtime status {r.run_ids[1]})",
    ]
    return "\n".join(lines)


def demo_main(rows: int, output: str, store: str | None, target_rows: int | None,
              max_parallel: int) -> int:
    from application_sdk.errors import RunFailedError

    started = time.perf_counter()
    try:
        result = run_demo(rows, output, store, target_rows, max_parallel)
    except KeyboardInterrupt:
        print("demo interrupted", file=sys.stderr)
        return 130
    except RunFailedError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    print(summary(result))
    print(f"  total     {time.perf_counter() - started:.1f} s wall time")
    sys.stdout.flush()
    return 0
