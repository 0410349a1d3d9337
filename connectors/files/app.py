"""FilesConnector: CSV / JSON Lines / JSON files under an fsspec URL to Parquet.

The plan (``run()``): list the files (a task), infer each batch's schema in parallel, unify
them into one schema, convert the batches in parallel with that schema, and write a report.
Bad data is reported, never fatal: a row that does not parse or cast is rejected with its line
number and reason; a file that cannot be read at all (malformed, unsupported, vanished) is
listed with its reason while the other files are converted. Only infrastructure errors
(network, permissions) fail a task, and those are retried.

Layout under ``destination``::

    data/<path of the source file relative to source>.parquet   e.g. data/2024/a.csv.parquet
    reports/<run_id>.json                                      rows, rejects, malformed files

The output name keeps the source's relative path and its extension, so ``a.csv`` and
``a.jsonl`` in one folder do not overwrite each other. S3 credentials and endpoint come from
the environment (``AWS_*``), never from the URLs.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import fsspec
from pydantic import BaseModel, Field, field_validator

from application_sdk.app import App, task
from application_sdk.contracts import Input, Output
from connectors import files as lib
from connectors._output import check_destination, join_url, write_json

__all__ = ["FilesConnector", "FilesInput", "FilesOutput"]

MAX_FILES = 10_000
MAX_REPORTED_REJECTS = 20
"""Rejected rows listed (with line and reason) per file; all of them are counted."""


class FilesInput(Input):
    source: str
    """Folder, file or fsspec URL (``s3://bucket/prefix``) of the input files."""
    destination: str
    """Folder or fsspec URL the Parquet files and the report are written under."""
    patterns: Annotated[list[str], Field(max_length=50)] = list(lib.DEFAULT_PATTERNS)
    """File name globs (case-insensitive)."""
    files_per_task: int = Field(20, ge=1)

    _check_source = field_validator("source")(check_destination)
    _check_destination = field_validator("destination")(check_destination)


class FileItem(BaseModel):
    source: str
    output: str


class SchemaField(BaseModel):
    name: str
    type: str
    nullable: bool = True
    arrow: str | None = None
    """Serialized Arrow field for types without a text form."""


Schema = Annotated[list[SchemaField], Field(max_length=5_000)]


class FileProblem(BaseModel):
    source: str
    error: str


class Reject(BaseModel):
    line: int | None
    reason: str


class FileResult(BaseModel):
    source: str
    output: str | None
    rows: int
    bytes: int
    rejected_count: int
    rejected: Annotated[list[Reject], Field(max_length=MAX_REPORTED_REJECTS)] = []
    dropped_columns: Annotated[list[str], Field(max_length=1000)] = []
    error: str | None = None


class FilesOutput(Output):
    run_id: str
    files: int
    """Files found."""
    converted: int
    rows: int
    bytes: int
    rejected_rows: int
    malformed: Annotated[list[FileProblem], Field(max_length=MAX_FILES)] = []
    """Files that could not be read, with the reason; the others were converted."""
    schema_fields: Schema = []
    report: str
    """Path of ``reports/<run_id>.json`` (every file's rows, rejects and errors)."""


class ListInput(Input):
    source: str
    destination: str
    patterns: Annotated[list[str], Field(max_length=50)]


class ListOutput(Output):
    run_id: str
    files: Annotated[list[FileItem], Field(max_length=MAX_FILES)]


class BatchInput(Input):
    files: Annotated[list[FileItem], Field(max_length=1000)]


class InferOutput(Output):
    schema_fields: Schema
    errors: Annotated[list[FileProblem], Field(max_length=1000)]


class UnifyInput(Input):
    schemas: Annotated[list[Schema], Field(max_length=MAX_FILES)]


class UnifyOutput(Output):
    schema_fields: Schema


class ConvertInput(Input):
    files: Annotated[list[FileItem], Field(max_length=1000)]
    schema_fields: Schema


class ConvertOutput(Output):
    results: Annotated[list[FileResult], Field(max_length=1000)]


class ReportInput(Input):
    destination: str
    run_id: str
    source: str
    schema_fields: Schema
    results: Annotated[list[FileResult], Field(max_length=MAX_FILES)]


class ReportOutput(Output):
    path: str


def _batches(items: list[FileItem], size: int) -> list[list[FileItem]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _schema_json(fields: list[SchemaField]) -> dict:
    return {"fields": [f.model_dump(exclude_none=True) for f in fields]}


def _relative(path: str, root: str) -> str:
    """``path`` relative to the listing ``root`` (just the name when ``root`` is the file)."""
    path = fsspec.core.url_to_fs(path)[1]
    root = root.rstrip("/")
    return path[len(root) + 1 :] if path.startswith(root + "/") else path.rsplit("/", 1)[-1]


class FilesConnector(App):
    """CSV and JSON Lines files to Parquet with one unified schema and a rejects report."""

    async def run(self, input: FilesInput) -> FilesOutput:
        listing = await self.list_input_files(
            ListInput(source=input.source, destination=input.destination,
                      patterns=input.patterns)
        )
        batches = _batches(listing.files, input.files_per_task)
        inferred = await asyncio.gather(
            *(self.infer_batch_schema(BatchInput(files=batch)) for batch in batches)
        )
        unified = await self.unify(UnifyInput(schemas=[i.schema_fields for i in inferred]))
        converted = await asyncio.gather(
            *(
                self.convert_batch(
                    ConvertInput(files=batch, schema_fields=unified.schema_fields)
                )
                for batch in batches
            )
        )
        results = [r for c in converted for r in c.results]
        report = await self.write_report(
            ReportInput(destination=input.destination, run_id=listing.run_id,
                        source=input.source, schema_fields=unified.schema_fields,
                        results=results)
        )
        ok = [r for r in results if r.error is None]
        return FilesOutput(
            run_id=listing.run_id,
            files=len(listing.files),
            converted=len(ok),
            rows=sum(r.rows for r in ok),
            bytes=sum(r.bytes for r in ok),
            rejected_rows=sum(r.rejected_count for r in results),
            malformed=[FileProblem(source=r.source, error=r.error) for r in results if r.error],
            schema_fields=unified.schema_fields,
            report=report.path,
        )

    @task(timeout_seconds=600)
    async def list_input_files(self, input: ListInput) -> ListOutput:
        """Files under the source matching the patterns, with their output paths."""
        found = await asyncio.to_thread(lib.list_files, input.source, input.patterns)
        root = fsspec.core.url_to_fs(input.source)[1]
        files = [
            FileItem(
                source=path,
                output=join_url(input.destination, "data", _relative(path, root) + ".parquet"),
            )
            for path in found
        ]
        return ListOutput(run_id=self.task_info.run_id, files=files)

    @task(timeout_seconds=1800)
    async def infer_batch_schema(self, input: BatchInput) -> InferOutput:
        """Schema of a batch of files (unreadable files are listed, not raised)."""
        result = await asyncio.to_thread(lib.infer_files_schema, [f.source for f in input.files])
        return InferOutput(
            schema_fields=[SchemaField.model_validate(f) for f in result["schema"]["fields"]],
            errors=[FileProblem.model_validate(e) for e in result["errors"]],
        )

    @task(timeout_seconds=300)
    async def unify(self, input: UnifyInput) -> UnifyOutput:
        """One schema every batch's schema fits (widest compatible type per column)."""
        schema = lib.unify_schemas([_schema_json(s) for s in input.schemas])
        fields = lib.schema_to_json(schema)["fields"]
        return UnifyOutput(schema_fields=[SchemaField.model_validate(f) for f in fields])

    @task(timeout_seconds=3600)
    async def convert_batch(self, input: ConvertInput) -> ConvertOutput:
        """Convert each file of a batch to Parquet with the unified schema."""
        schema = _schema_json(input.schema_fields)

        def convert(item: FileItem) -> FileResult:
            result = lib.convert_file(item.source, schema, item.output,
                                      max_rejected=MAX_REPORTED_REJECTS)
            return FileResult(
                source=item.source,
                output=result["output"],
                rows=result["rows"],
                bytes=result["bytes"],
                rejected_count=result["rejected_count"],
                rejected=[Reject.model_validate(r) for r in result["rejected"]],
                dropped_columns=result["dropped_columns"],
                error=result["error"],
            )

        results = [await asyncio.to_thread(convert, item) for item in input.files]
        return ConvertOutput(results=results)

    @task(timeout_seconds=600)
    async def write_report(self, input: ReportInput) -> ReportOutput:
        path = join_url(input.destination, "reports", f"{input.run_id}.json")
        report = {
            "kind": "files",
            "run_id": input.run_id,
            "source": input.source,
            "schema": [f.model_dump(exclude_none=True) for f in input.schema_fields],
            "files": [r.model_dump() for r in input.results],
            "malformed": [{"source": r.source, "error": r.error}
                          for r in input.results if r.error],
            "rows": sum(r.rows for r in input.results),
            "rejected_rows": sum(r.rejected_count for r in input.results),
        }
        await asyncio.to_thread(write_json, path, report)
        return ReportOutput(path=path)

