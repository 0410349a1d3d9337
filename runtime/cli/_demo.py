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

Start-up (issue 17; what each step bought is in benchmarks/PROFILE.md, "Start-up"): Ray is
started while a thread imports the connector (pyarrow, ADBC); the two runs go concurrently
(the metadata run is a handful of small tasks that would otherwise wait for Ray's first
workers on their own, then hold up the data run); the summary is printed before a Ray the
demo started is shut down, explicitly (Ray's exit hook first sleeps 0.5 s "so log messages
finish printing"). Rejected: keeping a local Ray running between demos to skip its start
(2.2 s of the demo): a command that leaves a cluster behind surprises more than it saves.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import threading
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


def _check_output(output: str) -> None:
    """Refuse a folder with files the demo did not make (before anything starts)."""
    if os.path.isdir(output) and os.listdir(output):
        if not os.path.exists(os.path.join(output, MARKER)):
            raise SystemExit(
                f"error: {output} exists and was not made by the demo; choose --output"
            )


def _prepare_output(output: str) -> None:
    """Clear what an earlier demo wrote in ``output`` (only if a demo made the folder)."""
    _check_output(output)
    if os.path.isdir(output) and os.listdir(output):
        for name in ("data", "manifests", "metadata"):
            shutil.rmtree(os.path.join(output, name), ignore_errors=True)
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, MARKER), "w", encoding="utf-8") as fh:
        fh.write("made by `connector-runtime demo`; it clears data/ manifests/ metadata/\n")


CONNECTOR = "connectors.sql.app"


class _Progress:
    """One progress line for both runs: their counters added up."""

    def __init__(self, display: Any) -> None:
        self.display = display
        self.runs: dict[str, dict[str, Any]] = {}

    def for_run(self, name: str) -> Any:
        def update(counters: dict[str, Any]) -> None:
            self.runs[name] = counters
            keys = {k for c in self.runs.values() for k, v in c.items() if isinstance(v, int)}
            self.display.update({k: sum(int(c.get(k, 0)) for c in self.runs.values())
                                 for k in keys})
        return update


def _import_quietly(module: str) -> None:
    try:
        __import__(module)
    except Exception:  # imported again (and reported) where it is used
        pass


def _start_ray() -> bool:
    """Connect to (or start) Ray while a thread imports the connector; True if we started it."""
    import ray

    from .._ray import ensure_ray

    importer = threading.Thread(target=_import_quietly, args=(CONNECTOR,), name="demo-imports",
                                daemon=True)
    importer.start()
    started = not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")
    ensure_ray()
    importer.join()
    return started


def run_demo(rows: int = DEFAULT_ROWS, output: str = "demo-output", store: str | None = None,
             target_rows: int | None = None, max_parallel: int = 0) -> DemoResult:
    started_ray = _start_ray()
    try:
        return _run_demo(rows, output, store, target_rows, max_parallel)
    finally:
        _stop_ray(started_ray)


def _stop_ray(started: bool) -> None:
    if started:
        import ray

        ray.shutdown()


def _run_demo(rows: int, output: str, store: str | None, target_rows: int | None,
              max_parallel: int) -> DemoResult:
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

    async def both() -> tuple[tuple[Any, float], tuple[Any, float]]:
        from ..driver import run_app_async
        from ._progress import ProgressDisplay

        async def timed(payload: dict[str, Any], run_id: str, entrypoint: str,
                        progress: _Progress) -> tuple[Any, float]:
            t0 = time.perf_counter()
            out = await run_app_async(SqlConnector, payload, run_id=run_id, store=store,
                                      entrypoint=entrypoint,
                                      on_progress=progress.for_run(entrypoint))
            return out, time.perf_counter() - t0

        with ProgressDisplay("demo") as display:
            progress = _Progress(display)
            return await asyncio.gather(
                timed(common, f"demo-metadata-{stamp}", "extract_metadata", progress),
                timed(data_input, f"demo-data-{stamp}", "extract_data", progress),
            )

    (meta, meta_s), (data, data_s) = asyncio.run(both())
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


_IMPORTED_AT = time.time()


def _since_start() -> float:
    """Seconds since this process started (interpreter start and imports included); Linux
    tells it in /proc, elsewhere it is counted from when this module was imported."""
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat", encoding="ascii") as fh:
            boot = next(int(line.split()[1]) for line in fh if line.startswith("btime"))
        return time.time() - (boot + ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time() - _IMPORTED_AT


def demo_main(rows: int, output: str, store: str | None, target_rows: int | None,
              max_parallel: int) -> int:
    from application_sdk.errors import RunFailedError

    _check_output(os.path.abspath(output))
    started_ray = False
    try:
        started_ray = _start_ray()
        result = _run_demo(rows, output, store, target_rows, max_parallel)
        print(summary(result))
        print(f"  total     {_since_start():.1f} s since the command started")
        sys.stdout.flush()
    except KeyboardInterrupt:
        print("demo interrupted", file=sys.stderr)
        return 130
    except RunFailedError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        _stop_ray(started_ray)
    return 0
