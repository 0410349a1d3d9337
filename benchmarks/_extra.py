"""Case 8: SQL extraction and FileReference hand-off, measured by modules other people own.

- `benchmarks/bench_sql.py` (`run(rows)`): the SQL connector app (`connectors/sql/app.py`) on
  Ray with 1 and 2 worker CPUs against `benchmarks/sql_baseline.py`'s single-process
  ADBC-to-Parquet loop (the limit). Until the app exists, only the limit is measured here.
- `benchmarks/bench_startup.py` (`run(demo_rows)`): time to the first task of
  `connector-runtime run` on a running Ray, and the whole demo (issue 17).
- `benchmarks/bench_files.py` (`run(size_mb)`): the FileReference benchmark of issue 5.
- `benchmarks/bench_checkpoint.py` (`run(beats)`): what a durable heartbeat costs, per beat,
  over a task loop that does not beat (file:// and moto S3).
- `benchmarks/bench_jobs.py` (`run(tasks)`): the `ray job submit` path of issue 6. Opt-in
  (`--cases jobs`): it starts a Ray head of its own next to the benchmark's Ray.
- `benchmarks/bench_service.py` (`run(runs)`): the app service of issue 15 (start to first
  task, `/status` under load). Opt-in (`--cases service`) for the same reason.
- `benchmarks/bench_observe.py` (`run(tasks)`): `trace` and the run page of issue 16. Opt-in
  (`--cases observe`): it starts a service and a Chromium.

Whatever is not there yet is reported as "not available" rather than failing the run.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from ._cases import Context
from ._measure import Table, Variant, fmt_s, interleave, median

__all__ = ["case_checkpoint", "case_files", "case_jobs", "case_observe", "case_service",
           "case_sql", "case_startup"]


def _module(name: str) -> tuple[Any, str | None]:
    """(module, None) or (None, why it is not available)."""
    if not _find_spec(name):
        return None, f"{name.replace('.', '/')}.py does not exist yet"
    try:
        return importlib.import_module(name), None
    except Exception as exc:  # someone else's module mid-change: report, do not fail the run
        return None, f"importing {name} failed: {type(exc).__name__}: {exc}"


def _find_spec(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


async def case_sql(ctx: Context) -> Table:
    title = "8a. SQL extraction of the demo SQLite source to Parquet"
    bench, why = _module("benchmarks.bench_sql")
    if bench is not None and _find_spec("connectors.sql.app"):
        return await _dict_case(ctx, "sql", title, bench, "rows", lambda n: f"{n:,} rows")
    t = Table("sql", title, ["rows", "variant", "median", "range", "rows/s"])
    baseline, why_base = _module("benchmarks.sql_baseline")
    if baseline is None:
        t.notes.append(f"not available: {why_base}")
        return t
    t.notes.append("SQL connector app: not available (" + (
        why if bench is None else "connectors/sql/app.py does not exist yet")
        + "); only the limit (single-process loop) is measured.")
    await _sql_baseline_only(ctx, t, baseline)
    return t


async def _sql_baseline_only(ctx: Context, t: Table, baseline: Any) -> None:
    from connectors.sql import generate_demo_sqlite

    sizes = ctx.sizes_for("sql")
    work = tempfile.mkdtemp(prefix="bench-sql-", dir=ctx.env.work_dir)
    sources: dict[int, str] = {}

    async def setup(rows: int) -> None:
        generated = await asyncio.to_thread(
            generate_demo_sqlite, os.path.join(work, f"demo-{rows}.db"), rows)
        sources[rows] = f"sqlite:///{generated['path']}"

    async def measure(rows: int) -> float:
        dest = tempfile.mkdtemp(prefix="out-", dir=work)
        try:
            result = await asyncio.to_thread(baseline.baseline_extract, sources[rows], dest)
        finally:
            shutil.rmtree(dest, ignore_errors=True)
        if result["rows"] != rows:
            raise AssertionError(f"baseline extracted {result['rows']} rows of {rows}")
        return float(result["seconds"])

    name = "single-process ADBC->Parquet (limit)"
    m = await interleave("sql", [Variant(name, measure, setup)], sizes, _repeat(ctx))
    for rows in sizes:
        med = m.median(name, rows)
        if med is not None:
            t.rows.append([f"{rows:,}", name, fmt_s(med), "", f"{rows / med:,.0f}"])
            t.figures[f"{name}@{rows}"] = med
    for variant, why in m.errors.items():
        t.notes.append(f"{variant}: not measured ({why})")
    shutil.rmtree(work, ignore_errors=True)


async def case_startup(ctx: Context) -> Table:
    title = "8d. Start-up: `connector-runtime run` to its first task, and the whole demo"
    bench, why = _module("benchmarks.bench_startup")
    if bench is None:
        t = Table("startup", title, ["demo rows", "figure", "median", "range"])
        t.notes.append(f"not available: {why}")
        return t
    return await _dict_case(ctx, "startup", title, bench, "demo rows", lambda n: f"{n:,} rows")


async def case_files(ctx: Context) -> Table:
    title = "8b. FileReference: passing an Arrow dataset between two tasks"
    bench, why = _module("benchmarks.bench_files")
    if bench is None:
        t = Table("files", title, ["size", "figure", "median", "range"])
        t.notes.append(f"not available: {why}")
        return t
    return await _dict_case(ctx, "files", title, bench, "size", lambda n: f"{n} MB")


async def case_checkpoint(ctx: Context) -> Table:
    title = "8e. Durable heartbeats: ms per beat of one task beating N times (issue 14)"
    bench, why = _module("benchmarks.bench_checkpoint")
    if bench is None:
        t = Table("checkpoint", title, ["beats", "figure", "median", "range"])
        t.notes.append(f"not available: {why}")
        return t
    return await _dict_case(ctx, "checkpoint", title, bench, "beats", lambda n: f"{n} beats")


async def case_jobs(ctx: Context) -> Table:
    title = "8c. `ray job submit` path vs `connector-runtime run` on the same head (opt-in)"
    bench, why = _module("benchmarks.bench_jobs")
    if bench is None:
        t = Table("jobs", title, ["tasks", "figure", "median", "range"])
        t.notes.append(f"not available: {why}")
        return t
    return await _dict_case(ctx, "jobs", title, bench, "tasks", lambda n: f"{n} tasks")


async def case_service(ctx: Context) -> Table:
    title = "8d. The app service: POST start to first task, /status under load (opt-in)"
    bench, why = _module("benchmarks.bench_service")
    if bench is None:
        t = Table("service", title, ["runs", "figure", "median", "range"])
        t.notes.append(f"not available: {why}")
        return t
    return await _dict_case(ctx, "service", title, bench, "runs", lambda n: f"{n} runs")


async def case_observe(ctx: Context) -> Table:
    title = "8e. Seeing a run: trace and run page of an N-task run, history cost (opt-in)"
    bench, why = _module("benchmarks.bench_observe")
    if bench is None:
        t = Table("observe", title, ["tasks", "figure", "median", "range"])
        t.notes.append(f"not available: {why}")
        return t
    return await _dict_case(ctx, "observe", title, bench, "tasks", lambda n: f"{n:,} tasks")


def _repeat(ctx: Context) -> int:
    """These cases take minutes per round at full size: at most 3 rounds."""
    return min(ctx.repeat, 3)


async def _dict_case(ctx: Context, key: str, title: str, bench: Any, unit: str,
                     label: Callable[[int], str]) -> Table:
    """A case measured by someone else's `run(size) -> dict of figures`, repeated."""
    t = Table(key, title, [unit, "figure", "median", "range"])
    if not callable(getattr(bench, "run", None)):
        t.notes.append(f"not available: {bench.__name__} has no run()")
        return t
    sizes = ctx.sizes_for(key)
    results: dict[int, list[dict[str, Any]]] = {}

    async def measure(size: int) -> float:
        # run() is synchronous and may call runtime.run_app (asyncio.run): off this loop
        result = await asyncio.to_thread(bench.run, size)
        if not isinstance(result, dict):
            raise TypeError(f"{bench.__name__}.run returned {type(result).__name__}, not a dict")
        results.setdefault(size, []).append(result)
        return 0.0

    m = await interleave(key, [Variant(f"{bench.__name__}.run", measure)], sizes, _repeat(ctx))
    for size in sizes:
        runs = results.get(size, [])
        for name, value in (runs[0].items() if runs else []):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                t.rows.append([label(size), name, str(value), ""])
                continue
            values = [float(r[name]) for r in runs if isinstance(r.get(name), (int, float))]
            med = median(values)
            t.rows.append([label(size), name, _fmt_number(med), _fmt_range(values)])
            t.figures[f"{name}@{size}"] = med
    for variant, why in m.errors.items():
        t.notes.append(f"{variant}: not measured ({why})")
    t.notes.append(f"Figures as `{bench.__name__}.run({unit})` reports them (median of "
                   f"{_repeat(ctx)} round(s); booleans and text from the first round). See "
                   f"its docstring for what each figure measures.")
    return t


def _fmt_number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"


def _fmt_range(values: list[float]) -> str:
    if len(values) < 2:
        return ""
    return f"{_fmt_number(min(values))}-{_fmt_number(max(values))}"
