"""The code examples of the App Framework page (shared/seed/apps-and-tasks.txt), unchanged.

Where the page shows a fragment (a run() of an app whose tasks it does not show, or a task
body of `...`), the missing classes and task bodies are filled in here, around the page's own
code, which is copied as written.
"""


from __future__ import annotations

import asyncio

from application_sdk.app import App, entrypoint, task
from application_sdk.contracts import Input, Output

# --- "App: Executable" and "Tasks" -------------------------------------------------------------


class ExtractionInput(Input):
    connection_id: str


class ExtractionOutput(Output):
    rows_extracted: int


class MyConnectorFirst(App):
    @task(timeout_seconds=3600, auto_heartbeat_seconds=10)
    async def fetch_data(self, input: ExtractionInput) -> ExtractionOutput:
        # I/O, network calls, database access — all safe here
        return ExtractionOutput(rows_extracted=42)

    async def run(self, input: ExtractionInput) -> ExtractionOutput:
        return await self.fetch_data(input)


# --- "Complete minimal example" ------------------------------------------------------------


class FetchInput(Input):
    connection_id: str


class FetchOutput(Output):
    rows_fetched: int


class TableListInput(Input):
    connection_id: str
    database: str


class TableListOutput(Output):
    table_count: int


class MinimalExtractionOutput(Output):
    total_rows: int
    total_tables: int


class MyConnector(App):
    @task(timeout_seconds=1800, auto_heartbeat_seconds=30)
    async def fetch_rows(self, input: FetchInput) -> FetchOutput:
        # Perform the actual data fetch
        return FetchOutput(rows_fetched=1000)

    @task(timeout_seconds=600)
    async def list_tables(self, input: TableListInput) -> TableListOutput:
        return TableListOutput(table_count=12)

    async def run(self, input: ExtractionInput) -> MinimalExtractionOutput:
        fetch_out = await self.fetch_rows(FetchInput(connection_id=input.connection_id))
        table_out = await self.list_tables(
            TableListInput(connection_id=input.connection_id, database="main")
        )
        return MinimalExtractionOutput(
            total_rows=fetch_out.rows_fetched,
            total_tables=table_out.table_count,
        )


# --- "Conditional" ------------------------------------------------------------------------------


class TransformInput(Input):
    rows: int = 0
    source: str = ""


class TransformOutput(Output):
    rows_processed: int = 0
    count: int = 0


class TotalOutput(Output):
    total_rows: int


class ConditionalConnector(App):
    @task
    async def fetch_rows(self, input: FetchInput) -> FetchOutput:
        return FetchOutput(rows_fetched=0 if input.connection_id == "empty" else 1000)

    @task
    async def transform_data(self, input: TransformInput) -> TransformOutput:
        return TransformOutput(rows_processed=input.rows * 2)

    async def run(self, input: ExtractionInput) -> TotalOutput:
        fetch_out = await self.fetch_rows(FetchInput(connection_id=input.connection_id))

        if fetch_out.rows_fetched > 0:
            transform_out = await self.transform_data(TransformInput(rows=fetch_out.rows_fetched))
            return TotalOutput(total_rows=transform_out.rows_processed)

        return TotalOutput(total_rows=0)


# --- "Sequential" -------------------------------------------------------------------------------


class FetchDbInput(Input):
    connection_id: str


class FetchDbOutput(Output):
    databases: str
    """Comma-separated names: a scalar keeps the example free of unbounded lists."""


class FetchSchemaInput(Input):
    databases: str


class FetchSchemaOutput(Output):
    count: int


class CountOutput(Output):
    count: int


class SequentialConnector(App):
    @task
    async def fetch_databases(self, input: FetchDbInput) -> FetchDbOutput:
        return FetchDbOutput(databases="main,analytics,staging")

    @task
    async def fetch_schemas(self, input: FetchSchemaInput) -> FetchSchemaOutput:
        return FetchSchemaOutput(count=len(input.databases.split(",")) * 4)

    async def run(self, input: ExtractionInput) -> CountOutput:
        db_out = await self.fetch_databases(FetchDbInput(connection_id=input.connection_id))
        schema_out = await self.fetch_schemas(FetchSchemaInput(databases=db_out.databases))
        return CountOutput(count=schema_out.count)


# --- "Parallel" ---------------------------------------------------------------------------------


class ParallelConnector(App):
    @task
    async def fetch_schemas(self, input: FetchSchemaInput) -> FetchSchemaOutput:
        return FetchSchemaOutput(count=len(input.databases.split(",")) * 4)

    @task
    async def transform_data(self, input: TransformInput) -> TransformOutput:
        return TransformOutput(count=len(input.source))

    async def run(self, input: ExtractionInput) -> CountOutput:
        schema_out, transform_out = await asyncio.gather(
            self.fetch_schemas(FetchSchemaInput(databases="main,analytics")),
            self.transform_data(TransformInput(source=input.connection_id)),
        )
        return CountOutput(count=schema_out.count + transform_out.count)


# --- "Multiple entry points" --------------------------------------------------------------------


class MiningInput(Input):
    connection_id: str
    days: int = 7


class MiningOutput(Output):
    queries: int


class SnowflakeApp(App):
    @entrypoint
    async def extract_metadata(self, input: ExtractionInput) -> ExtractionOutput:
        return await self.fetch_tables(input)

    @entrypoint
    async def mine_queries(self, input: MiningInput) -> MiningOutput:
        return await self.fetch_queries(input)

    @task(timeout_seconds=1800)
    async def fetch_tables(self, input: ExtractionInput) -> ExtractionOutput:
        return ExtractionOutput(rows_extracted=7)

    @task(timeout_seconds=3600)
    async def fetch_queries(self, input: MiningInput) -> MiningOutput:
        return MiningOutput(queries=input.days * 100)


# --- "Lifecycle hooks: on_complete" --------------------------------------------------------------


class NotifyInput(Input):
    pass


class NotifyOutput(Output):
    sent: bool


class NotifyingConnector(App):
    @task
    async def fetch_data(self, input: ExtractionInput) -> ExtractionOutput:
        if input.connection_id == "broken":
            raise ValueError("source unreachable")
        return ExtractionOutput(rows_extracted=3)

    @task
    async def notify_downstream(self, input: NotifyInput) -> NotifyOutput:
        return NotifyOutput(sent=True)

    async def run(self, input: ExtractionInput) -> ExtractionOutput:
        return await self.fetch_data(input)

    async def on_complete(self) -> None:
        await self.notify_downstream()
        await super().on_complete()  # always call super—preserves built-in cleanup


# --- "External dependencies in run()" ------------------------------------------------------------


class PassthroughConnector(App, passthrough_modules=["my_connector", "third_party_lib"]):
    @task
    async def fetch_data(self, input: ExtractionInput) -> ExtractionOutput:
        return ExtractionOutput(rows_extracted=1)

    async def run(self, input: ExtractionInput) -> ExtractionOutput:
        return await self.fetch_data(input)
