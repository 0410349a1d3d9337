"""RestConnector: a paginated JSON API (cursor or page-number style) to Parquet.

The stream is read by a chain of tasks, each taking up to ``pages_per_task`` pages from where
the previous one stopped (``run()`` loops until the API says there is nothing left), so a long
stream is split into bounded checkpoints. Inside a task, every ``pages_per_file`` pages are
written to one Parquet file and only then is the position after them recorded with
``self.heartbeat(FetchProgress(...))``. A retried attempt reads it back with
``self.get_heartbeat_details(FetchProgress)`` and resumes from the first page not yet written:
pages already in files are not fetched again, and a page fetched but not yet written is
fetched again into the same file name, so nothing is lost or duplicated.

Rate limits: a 429 is retried inside the fetch after ``Retry-After`` (or exponential backoff),
up to ``max_wait`` seconds per sleep; beyond that the attempt fails and the task's retry policy
takes over, resuming from the heartbeat position. 5xx and connection errors fail the attempt
the same way.

Credentials: ``token_env`` names the environment variable holding the bearer token in the
workers' environment (Ray ``runtime_env`` or the cluster's). The value is read at request time
and never appears in inputs, outputs, checkpoints or errors.

Layout under ``destination``: ``<run_id>/part-<task>-<file>.parquet`` and
``<run_id>/manifest.json``.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from pydantic import Field, field_validator

from application_sdk.app import App, task
from application_sdk.contracts import HeartbeatDetails, Input, Output
from connectors import rest as lib
from connectors._output import check_destination, join_url, write_json

__all__ = ["FetchProgress", "RestConnector", "RestInput", "RestOutput"]

Position = str | int | None
"""Next cursor (cursor style) or next page number (page style); None = from the start/done."""
MAX_CHUNKS = 4_000


class RestInput(Input):
    base_url: str
    """``https://api.example.com/v1`` (no credentials in it)."""
    path: str
    """Resource path, e.g. ``/items``."""
    style: Literal["cursor", "page"] = "cursor"
    page_size: int = Field(100, ge=1)
    token_env: str | None = None
    """Name of the environment variable with the bearer token (never the token itself)."""
    params: Annotated[dict[str, str], Field(max_length=50)] = {}
    """Extra query parameters (filters)."""
    destination: str
    pages_per_task: int = Field(100, ge=1)
    pages_per_file: int = Field(10, ge=1)
    max_wait: float = Field(30.0, ge=0)
    """Longest single wait on a 429 before the attempt fails (and is retried)."""

    _check_destination = field_validator("destination")(check_destination)


class RestOutput(Output):
    run_id: str
    rows: int
    pages: int
    files: Annotated[list[str], Field(max_length=MAX_CHUNKS * 10)]
    bytes: int
    manifest: str


class FetchProgress(HeartbeatDetails):
    """Heartbeat details of a fetch task: where a retry resumes."""

    position: Position = None
    pages: int = 0
    """Pages of this task already written to files."""
    files: Annotated[list[str], Field(max_length=10_000)] = []
    rows: int = 0
    bytes: int = 0


class StartInput(Input):
    pass


class StartOutput(Output):
    run_id: str


class FetchInput(Input):
    base_url: str
    path: str
    style: Literal["cursor", "page"]
    page_size: int
    token_env: str | None
    params: Annotated[dict[str, str], Field(max_length=50)]
    start: Position
    """Where this chunk starts (None: the first page of the stream)."""
    chunk: int
    pages: int
    pages_per_file: int
    max_wait: float
    prefix: str
    """Folder of this run's files."""


class FetchOutput(Output):
    next: Position
    """Where the next chunk starts; None when the stream is exhausted."""
    done: bool
    pages: int
    rows: int
    bytes: int
    files: Annotated[list[str], Field(max_length=10_000)]


class ManifestInput(Input):
    path: str
    run_id: str
    base_url: str
    resource: str
    chunks: Annotated[list[FetchOutput], Field(max_length=MAX_CHUNKS)]


class ManifestOutput(Output):
    path: str


class RestConnector(App):
    """Paginated JSON API to Parquet, resumable from the last written page."""

    async def run(self, input: RestInput) -> RestOutput:
        started = await self.start_run(StartInput())
        prefix = join_url(input.destination, started.run_id)
        chunks: list[FetchOutput] = []
        position: Position = None
        while True:
            out = await self.fetch_chunk(
                FetchInput(
                    base_url=input.base_url, path=input.path, style=input.style,
                    page_size=input.page_size, token_env=input.token_env, params=input.params,
                    start=position, chunk=len(chunks), pages=input.pages_per_task,
                    pages_per_file=input.pages_per_file, max_wait=input.max_wait, prefix=prefix,
                )
            )
            chunks.append(out)
            if out.done:
                break
            position = out.next
        manifest = await self.write_manifest(
            ManifestInput(path=join_url(prefix, "manifest.json"), run_id=started.run_id,
                          base_url=input.base_url, resource=input.path, chunks=chunks)
        )
        return RestOutput(
            run_id=started.run_id,
            rows=sum(c.rows for c in chunks),
            pages=sum(c.pages for c in chunks),
            files=[f for c in chunks for f in c.files],
            bytes=sum(c.bytes for c in chunks),
            manifest=manifest.path,
        )

    @task(timeout_seconds=60)
    async def start_run(self, input: StartInput) -> StartOutput:
        """The run's id (names the output folder; run() itself does no I/O)."""
        return StartOutput(run_id=self.task_info.run_id)

    @task(timeout_seconds=3600, heartbeat_timeout_seconds=120, retry_max_attempts=5)
    async def fetch_chunk(self, input: FetchInput) -> FetchOutput:
        """Up to ``input.pages`` pages, written ``pages_per_file`` pages per Parquet file."""
        progress = self.get_heartbeat_details(FetchProgress)
        if progress is None or (progress.pages == 0 and not progress.files):
            progress = FetchProgress(position=input.start)
        return await asyncio.to_thread(self._fetch, input, progress)

    def _fetch(self, input: FetchInput, progress: FetchProgress) -> FetchOutput:
        resumed = progress.pages > 0
        done = resumed and progress.position is None  # an earlier attempt reached the end
        if not done and progress.pages < input.pages:
            start = progress.position
            pages = lib.iter_pages(
                input.base_url, input.path, style=input.style, page_size=input.page_size,
                token_env=input.token_env,
                start_cursor=start if input.style == "cursor" else None,
                start_page=start if input.style == "page" else None,
                max_pages=input.pages - progress.pages,
                params=input.params, max_wait=input.max_wait,
            )
            buffered: list[dict] = []
            count = 0
            for records, nxt in pages:
                buffered.extend(records)
                count += 1
                done = nxt is None
                if count == input.pages_per_file or done:
                    progress = self._flush(input, progress, buffered, count, nxt)
                    buffered, count = [], 0
                else:
                    last = nxt
            if count:  # max_pages reached mid-file
                progress = self._flush(input, progress, buffered, count, last)
        return FetchOutput(next=progress.position, done=done, pages=progress.pages,
                           rows=progress.rows, bytes=progress.bytes, files=progress.files)

    def _flush(self, input: FetchInput, progress: FetchProgress, records: list[dict],
               pages: int, nxt: Position) -> FetchProgress:
        files, rows, size = list(progress.files), progress.rows, progress.bytes
        if records:
            name = f"part-{input.chunk:05d}-{progress.pages:05d}.parquet"
            written = lib.records_to_parquet([records], join_url(input.prefix, name))
            files.append(written["path"])
            rows, size = rows + written["rows"], size + written["bytes"]
        progress = FetchProgress(position=nxt, pages=progress.pages + pages, files=files,
                                 rows=rows, bytes=size)
        self.heartbeat(progress)
        return progress

    @task(timeout_seconds=600)
    async def write_manifest(self, input: ManifestInput) -> ManifestOutput:
        manifest = {
            "kind": "rest",
            "run_id": input.run_id,
            "base_url": input.base_url,
            "resource": input.resource,
            "rows": sum(c.rows for c in input.chunks),
            "pages": sum(c.pages for c in input.chunks),
            "files": [f for c in input.chunks for f in c.files],
        }
        await asyncio.to_thread(write_json, input.path, manifest)
        return ManifestOutput(path=input.path)

