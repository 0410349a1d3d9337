"""One app in three versions, as a connector evolves between two runs of the same run id:
V2 adds fields with defaults everywhere (compatible), V3 makes breaking changes."""

from __future__ import annotations

import os

from application_sdk.app import App, RetryPolicy, task
from application_sdk.contracts import Input, Output

from .counting import mark


class JobV1(Input):
    folder: str


class JobV2(JobV1):
    batch_size: int = 100
    """Added in V2, with a default: the run's identity must not change."""


class PageV1(Input):
    folder: str
    page: int


class PageV2(PageV1):
    limit: int = 50
    """Added in V2, with a default: recorded calls keep their identity."""


class GotV1(Output):
    rows: int


class GotV2(GotV1):
    note: str = ""


class GotV3(Output):
    rows: int
    table: str
    """Added in V3 without a default: records of V1 cannot validate (breaking)."""


class SummaryV1(Output):
    rows: int


class SummaryV2(SummaryV1):
    warnings: int = 0


class SummaryV3(Output):
    rows: int
    tables: int


class Finish(Input):
    folder: str


class Finished(Output):
    ok: bool = True


def _fetch(folder: str, page: int, version: str) -> int:
    mark(os.path.join(folder, "fetched"), f"{version} {page}")
    return 10 + page


def _finish(folder: str) -> Finished:
    mark(os.path.join(folder, "finished"), "finish")
    if os.path.exists(os.path.join(folder, "fail-finish")):
        raise RuntimeError("finish fails while the flag file exists")
    return Finished()


class EvolveV1(App, name="Evolve"):
    @task(retry_policy=RetryPolicy(max_attempts=1))
    async def fetch(self, input: PageV1) -> GotV1:
        return GotV1(rows=_fetch(input.folder, input.page, "V1"))

    @task(retry_policy=RetryPolicy(max_attempts=1))
    async def finish(self, input: Finish) -> Finished:
        return _finish(input.folder)

    async def run(self, input: JobV1) -> SummaryV1:
        outs = [await self.fetch(PageV1(folder=input.folder, page=p)) for p in range(3)]
        await self.finish(Finish(folder=input.folder))
        return SummaryV1(rows=sum(o.rows for o in outs))

    async def on_complete(self) -> None:
        pass


class EvolveV2(App, name="Evolve"):
    @task(retry_policy=RetryPolicy(max_attempts=1))
    async def fetch(self, input: PageV2) -> GotV2:
        return GotV2(rows=_fetch(input.folder, input.page, "V2"), note="v2")

    @task(retry_policy=RetryPolicy(max_attempts=1))
    async def finish(self, input: Finish) -> Finished:
        return _finish(input.folder)

    async def run(self, input: JobV2) -> SummaryV2:
        outs = [await self.fetch(PageV2(folder=input.folder, page=p))
                for p in range(3)]
        await self.finish(Finish(folder=input.folder))
        return SummaryV2(rows=sum(o.rows for o in outs),
                         warnings=sum(1 for o in outs if o.note != "v2"))

    async def on_complete(self) -> None:
        pass


class EvolveV3(App, name="Evolve"):
    """Breaking: the task's Output gained a required field, and so did the run's."""

    @task(retry_policy=RetryPolicy(max_attempts=1))
    async def fetch(self, input: PageV1) -> GotV3:
        return GotV3(rows=_fetch(input.folder, input.page, "V3"), table="t")

    @task(retry_policy=RetryPolicy(max_attempts=1))
    async def finish(self, input: Finish) -> Finished:
        return _finish(input.folder)

    async def run(self, input: JobV1) -> SummaryV3:
        outs = [await self.fetch(PageV1(folder=input.folder, page=p)) for p in range(3)]
        await self.finish(Finish(folder=input.folder))
        return SummaryV3(rows=sum(o.rows for o in outs), tables=len(outs))

    async def on_complete(self) -> None:
        pass
