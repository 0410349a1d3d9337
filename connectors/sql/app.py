"""SqlConnector: database metadata and table rows to Parquet, as an App Framework app.

Two entry points share the tasks (the seed's "multiple entry points" pattern):

* ``extract_metadata``: databases, schemas, tables and columns (types, nullability, keys) to
  Parquet plus a JSON description per table.
* ``extract_data``: table rows to Parquet, one task per partition (a key range, else a
  LIMIT/OFFSET slice, of about ``target_rows`` rows), run in parallel with ``asyncio.gather``,
  optionally capped by ``max_parallel`` (so a busy source database is not flooded).

Written against ``application_sdk`` only, as an outside author would: all I/O happens in tasks
through the ``connectors.sql`` library; ``run()`` code only decides what to call.

Layout under ``destination`` (one run never overwrites another's files, so incremental runs
accumulate)::

    data/<schema.table>/<run_id>-part-00000.parquet
    manifests/<run_id>.json                         tables, files, rows, schemas, checksums

The data manifest is also returned as a PERSISTENT ``FileReference`` (``output.manifest``):
the runtime stores it under ``{store}/persistent/SqlConnector/<run_id>/...`` and never deletes
it, so a run's record of what it wrote outlives the destination's housekeeping.
    metadata/<run_id>/columns-00000.parquet         one row per column
    metadata/<run_id>/tables-00000.json             describe_tables() output
    metadata/<run_id>/manifest.json

Incremental mode: give ``watermark_column`` (e.g. ``updated_at``). The output's ``next_since``
(``{"schema.table": last value}``) is passed as the next run's ``since``: that run extracts only
rows with ``since < watermark <= until`` (``until`` = the max seen while planning, so rows
written during the run are picked up next time, not half-seen). The state is carried by the
caller rather than kept in a state file: the run stays a pure function of its input, and a run
id replays the same plan. Tables without the column are extracted in full every run.

Credentials: never in the input (it is stored with the run). PostgreSQL takes its password
from ``PGPASSWORD`` / ``~/.pgpass`` in the workers' environment; S3 destinations from
``AWS_*``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator

from application_sdk.app import App, entrypoint, task
from application_sdk.contracts import FileReference, Input, Output, StorageTier
from connectors import sql as source
from connectors._output import check_destination, join_url, write_json, write_parquet

__all__ = [
    "ExtractDataInput",
    "ExtractDataOutput",
    "ExtractMetadataInput",
    "ExtractMetadataOutput",
    "SqlConnector",
]

WatermarkValue = str | int | float | None
"""A watermark as JSON: timestamps travel as ISO text, numbers as numbers."""

MAX_TABLES = 10_000
MAX_PARTITIONS = 4_000
TablesList = Annotated[list[str], Field(max_length=MAX_TABLES)]
Watermarks = Annotated[dict[str, WatermarkValue], Field(max_length=MAX_TABLES)]
Patterns = Annotated[list[str], Field(max_length=100)]


def _no_password(url: str) -> str:
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password or "password=" in url.lower():
        raise ValueError(
            "source_url must not carry a password (it would be stored with the run): set "
            "PGPASSWORD or ~/.pgpass in the workers' environment instead"
        )
    return url


# --- contracts -----------------------------------------------------------------------


class _Selection(Input):
    source_url: str
    """``sqlite:///path.db`` (relative), ``sqlite:////abs.db`` or ``postgresql://user@host/db``."""
    include: Patterns = []
    """Glob patterns over ``schema.table`` or ``table``; empty = every table."""
    exclude: Patterns = []
    """Glob patterns of tables to leave out (applied after ``include``)."""

    @field_validator("source_url")
    @classmethod
    def _check_source(cls, value: str) -> str:
        return _no_password(value)


class ExtractMetadataInput(_Selection):
    destination: str
    """Folder or fsspec URL the metadata files are written under."""
    tables_per_task: int = Field(100, ge=1)

    _check_destination = field_validator("destination")(check_destination)


class ExtractMetadataOutput(Output):
    run_id: str
    tables: int
    columns: int
    files: Annotated[list[str], Field(max_length=MAX_TABLES)]
    manifest: str
    """Path of ``metadata/<run_id>/manifest.json``."""


class ExtractDataInput(_Selection):
    destination: str
    """Folder or fsspec URL the Parquet files and the manifest are written under."""
    watermark_column: str | None = None
    """Column for incremental extraction (e.g. ``updated_at``); None = full extraction."""
    since: Watermarks = {}
    """Per ``schema.table``, the ``next_since`` of the previous run (missing = from the start)."""
    target_rows: int = Field(500_000, ge=1)
    """Rows per partition (one task each)."""
    max_parallel: int = Field(0, ge=0)
    """Most partitions extracted at once; 0 = as many as the cluster's CPUs allow."""
    checksums: bool = True
    """Compute an order-independent checksum per file and table (costs ~20% CPU)."""
    tables_per_plan_task: int = Field(50, ge=1)

    _check_destination = field_validator("destination")(check_destination)


class Partition(BaseModel):
    """A slice of one table (see ``connectors.sql.plan_partitions``)."""

    table: str
    index: int = 0
    of: int = 1
    strategy: str = "all"
    estimated_rows: int | None = None
    watermark_column: str | None = None
    since: WatermarkValue = None
    until: WatermarkValue = None
    column: str | None = None
    lo: int | None = None
    hi: int | None = None
    order_by: Annotated[list[str], Field(max_length=1000)] | None = None
    offset: int | None = None
    limit: int | None = None


class TablePlan(BaseModel):
    table: str
    incremental: bool
    columns: Annotated[list[tuple[str, str]], Field(max_length=2000)]
    """(name, Arrow type) per column."""
    primary_key: Annotated[list[str], Field(max_length=100)] = []
    since: WatermarkValue = None
    next_since: WatermarkValue = None


class TableSummary(BaseModel):
    table: str
    rows: int
    files: int
    bytes: int
    checksum: int | None
    incremental: bool


class ExtractDataOutput(Output):
    run_id: str
    table_count: int
    rows: int
    files: int
    bytes: int
    manifest: FileReference
    """The manifest as a PERSISTENT object in the run's store (never deleted by the runtime)."""
    manifest_path: str
    """The same manifest under the destination: ``manifests/<run_id>.json``."""
    next_since: Watermarks = {}
    """Pass as the next run's ``since`` (incremental mode)."""
    tables: Annotated[list[TableSummary], Field(max_length=MAX_TABLES)] = []


class ListTablesInput(_Selection):
    pass


class ListTablesOutput(Output):
    run_id: str
    """The run's id, read inside a task (run() has no I/O) and used to name output files."""
    tables: TablesList


class DescribeInput(Input):
    source_url: str
    destination: str
    run_id: str
    batch: int
    tables: TablesList


class DescribeOutput(Output):
    tables: int
    columns: int
    files: Annotated[list[str], Field(max_length=10)]


class MetadataManifestInput(Input):
    destination: str
    run_id: str
    source: str
    tables: TablesList
    files: Annotated[list[str], Field(max_length=MAX_TABLES)]
    columns: int


class PathOutput(Output):
    path: str


class PlanInput(Input):
    source_url: str
    tables: TablesList
    watermark_column: str | None = None
    since: Watermarks = {}
    target_rows: int


class PlanOutput(Output):
    tables: Annotated[list[TablePlan], Field(max_length=MAX_TABLES)]
    partitions: Annotated[list[Partition], Field(max_length=MAX_PARTITIONS)]


class PartitionInput(Input):
    source_url: str
    partition: Partition
    path: str
    """Where the Parquet file goes (computed in run(), so a retry rewrites the same file)."""
    checksums: bool = True


class PartitionOutput(Output):
    table: str
    index: int
    rows: int
    bytes: int
    path: str
    checksum: int | None
    seconds: float


class DataManifestInput(Input):
    destination: str
    run_id: str
    source: str
    watermark_column: str | None
    tables: Annotated[list[TablePlan], Field(max_length=MAX_TABLES)]
    results: Annotated[list[PartitionOutput], Field(max_length=MAX_PARTITIONS)]


class DataManifestOutput(Output):
    path: str
    manifest: FileReference
    tables: Annotated[list[TableSummary], Field(max_length=MAX_TABLES)]


# --- the app -------------------------------------------------------------------------


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def partition_path(destination: str, run_id: str, part: Partition) -> str:
    return join_url(destination, "data", part.table, f"{run_id}-part-{part.index:05d}.parquet")


class SqlConnector(App):
    """Extract metadata and rows of a SQL database (SQLite, PostgreSQL) to Parquet."""

    # --- entry points ------------------------------------------------------------------

    @entrypoint
    async def extract_metadata(self, input: ExtractMetadataInput) -> ExtractMetadataOutput:
        listing = await self.list_source_tables(ListTablesInput(**_selection(input)))
        described = await asyncio.gather(
            *(
                self.describe_tables(
                    DescribeInput(
                        source_url=input.source_url, destination=input.destination,
                        run_id=listing.run_id, batch=i, tables=chunk,
                    )
                )
                for i, chunk in enumerate(_chunks(listing.tables, input.tables_per_task))
            )
        )
        files = [f for d in described for f in d.files]
        columns = sum(d.columns for d in described)
        manifest = await self.write_metadata_manifest(
            MetadataManifestInput(
                destination=input.destination, run_id=listing.run_id,
                source=input.source_url, tables=listing.tables, files=files, columns=columns,
            )
        )
        return ExtractMetadataOutput(
            run_id=listing.run_id, tables=len(listing.tables), columns=columns, files=files,
            manifest=manifest.path,
        )

    @entrypoint
    async def extract_data(self, input: ExtractDataInput) -> ExtractDataOutput:
        listing = await self.list_source_tables(ListTablesInput(**_selection(input)))
        plans = await asyncio.gather(
            *(
                self.plan_tables(
                    PlanInput(
                        source_url=input.source_url, tables=chunk,
                        watermark_column=input.watermark_column,
                        since={t: input.since[t] for t in chunk if t in input.since},
                        target_rows=input.target_rows,
                    )
                )
                for chunk in _chunks(listing.tables, input.tables_per_plan_task)
            )
        )
        tables = [t for plan in plans for t in plan.tables]
        partitions = [p for plan in plans for p in plan.partitions]
        limit = asyncio.Semaphore(input.max_parallel or len(partitions) or 1)

        async def extract(part: Partition) -> PartitionOutput:
            async with limit:
                return await self.extract_partition(
                    PartitionInput(
                        source_url=input.source_url, partition=part,
                        path=partition_path(input.destination, listing.run_id, part),
                        checksums=input.checksums,
                    )
                )

        results = await asyncio.gather(*(extract(p) for p in partitions))
        manifest = await self.write_data_manifest(
            DataManifestInput(
                destination=input.destination, run_id=listing.run_id, source=input.source_url,
                watermark_column=input.watermark_column, tables=tables, results=list(results),
            )
        )
        return ExtractDataOutput(
            run_id=listing.run_id,
            table_count=len(tables),
            rows=sum(r.rows for r in results),
            files=len(results),
            bytes=sum(r.bytes for r in results),
            manifest=manifest.manifest,
            manifest_path=manifest.path,
            next_since={t.table: t.next_since for t in tables if t.incremental},
            tables=manifest.tables,
        )

    # --- tasks -------------------------------------------------------------------------

    @task(timeout_seconds=600)
    async def list_source_tables(self, input: ListTablesInput) -> ListTablesOutput:
        """The tables of the source that pass the include/exclude filters."""
        def work() -> list[str]:
            conn = source.connect(input.source_url)
            try:
                return source.list_tables(conn, input.include or None, input.exclude or None)
            finally:
                conn.close()

        tables = await asyncio.to_thread(work)
        return ListTablesOutput(run_id=self.task_info.run_id, tables=tables)

    @task(timeout_seconds=1800)
    async def describe_tables(self, input: DescribeInput) -> DescribeOutput:
        """Columns, types and keys of a batch of tables to Parquet and JSON."""
        def work() -> DescribeOutput:
            conn = source.connect(input.source_url)
            try:
                described = source.describe_tables(conn, input.tables)
            finally:
                conn.close()
            base = join_url(input.destination, "metadata", input.run_id)
            columns_path = join_url(base, f"columns-{input.batch:05d}.parquet")
            tables_path = join_url(base, f"tables-{input.batch:05d}.json")
            table = source.metadata_table(described)
            write_parquet(table, columns_path)
            write_json(tables_path, described)
            return DescribeOutput(
                tables=len(described), columns=table.num_rows, files=[columns_path, tables_path]
            )

        return await asyncio.to_thread(work)

    @task(timeout_seconds=600)
    async def write_metadata_manifest(self, input: MetadataManifestInput) -> PathOutput:
        path = join_url(input.destination, "metadata", input.run_id, "manifest.json")
        manifest = {
            "kind": "sql-metadata",
            "run_id": input.run_id,
            "source": source.redact_url(input.source),
            "tables": input.tables,
            "columns": input.columns,
            "files": input.files,
        }
        await asyncio.to_thread(write_json, path, manifest)
        return PathOutput(path=path)

    @task(timeout_seconds=1800)
    async def plan_tables(self, input: PlanInput) -> PlanOutput:
        """Describe a batch of tables and split each into partitions."""
        def work() -> PlanOutput:
            conn = source.connect(input.source_url)
            try:
                planned = source.plan_tables(
                    conn, input.tables, input.target_rows,
                    watermark_column=input.watermark_column, since=input.since,
                )
            finally:
                conn.close()
            return PlanOutput(
                tables=[_table_plan(table) for table in planned],
                partitions=[
                    Partition.model_validate(p) for table in planned for p in table["partitions"]
                ],
            )

        return await asyncio.to_thread(work)

    @task(timeout_seconds=3600, num_cpus=1)
    async def extract_partition(self, input: PartitionInput) -> PartitionOutput:
        """One partition to one Parquet file (a retry rewrites the same file, atomically)."""
        part = input.partition
        result = await asyncio.to_thread(
            source.extract_partition,
            input.source_url,
            part.table,
            part.model_dump(exclude_none=True),
            input.path,
            checksum=input.checksums,
        )
        return PartitionOutput(
            table=part.table, index=part.index, rows=result["rows"], bytes=result["bytes"],
            path=input.path, checksum=result["checksum"], seconds=result["seconds"],
        )

    @task(timeout_seconds=600)
    async def write_data_manifest(self, input: DataManifestInput) -> DataManifestOutput:
        """The run's manifest: per table its files, rows, schema and checksum."""
        summaries, tables = summarize(input.tables, input.results)
        manifest = {
            "kind": "sql-data",
            "run_id": input.run_id,
            "source": source.redact_url(input.source),
            "watermark_column": input.watermark_column,
            "tables": tables,
            "rows": sum(s.rows for s in summaries),
            "files": sum(s.files for s in summaries),
            "bytes": sum(s.bytes for s in summaries),
        }
        path = join_url(input.destination, "manifests", f"{input.run_id}.json")
        local = os.path.join(self.scratch_dir, "manifest.json")
        size = await asyncio.to_thread(write_json, local, manifest)
        await asyncio.to_thread(write_json, path, manifest)
        ref = FileReference(local_path=local, tier=StorageTier.PERSISTENT, format="other",
                            size_bytes=size)
        return DataManifestOutput(path=path, manifest=ref, tables=summaries)


def _table_plan(planned: dict) -> TablePlan:
    since = planned["since"]
    incremental = planned["incremental"]
    return TablePlan(
        table=planned["table"],
        incremental=incremental,
        columns=[(c["name"], c["arrow_type"] or "null") for c in planned["columns"]],
        primary_key=planned["primary_key"],
        since=since,
        next_since=source.next_watermark(planned["partitions"], since) if incremental else None,
    )


def _selection(input: _Selection) -> dict:
    return {"source_url": input.source_url, "include": input.include, "exclude": input.exclude}


def summarize(
    tables: list[TablePlan], results: list[PartitionOutput]
) -> tuple[list[TableSummary], dict[str, dict]]:
    """Per table: a summary for the run's output and the manifest entry."""
    by_table: dict[str, list[PartitionOutput]] = {t.table: [] for t in tables}
    for result in results:
        by_table[result.table].append(result)
    summaries, entries = [], {}
    for plan in tables:
        parts = sorted(by_table[plan.table], key=lambda r: r.index)
        checksum: int | None = 0
        for part in parts:
            checksum = None if checksum is None or part.checksum is None else (
                (checksum + part.checksum) & 0xFFFF_FFFF_FFFF_FFFF
            )
        summary = TableSummary(
            table=plan.table, rows=sum(p.rows for p in parts), files=len(parts),
            bytes=sum(p.bytes for p in parts), checksum=checksum, incremental=plan.incremental,
        )
        summaries.append(summary)
        entries[plan.table] = {
            **summary.model_dump(),
            "schema": [{"name": n, "type": t} for n, t in plan.columns],
            "primary_key": plan.primary_key,
            "since": plan.since,
            "next_since": plan.next_since,
            "files": [
                {"path": p.path, "rows": p.rows, "bytes": p.bytes, "checksum": p.checksum}
                for p in parts
            ],
        }
    return summaries, entries
