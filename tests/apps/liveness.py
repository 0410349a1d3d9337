"""Apps for liveness tests: frozen processes, paginated extraction, cancellation."""

from __future__ import annotations

import os
import time

from application_sdk.app import App, RetryPolicy, task
from application_sdk.contracts import HeartbeatDetails, Input, Output

from .counting import mark


class Files(Input):
    folder: str
    """Where tasks leave markers (pids, pages fetched) and where tests put flag files."""
    n: int = 1


class Attempt(Output):
    attempt: int


class FreezableApp(App):
    @task(heartbeat_timeout_seconds=3, retry_policy=RetryPolicy(max_attempts=3,
                                                                initial_interval=0.1))
    async def hang(self, input: Files) -> Attempt:
        if self.task_info.attempt == 1:
            mark(os.path.join(input.folder, "pid"), str(os.getpid()))
            time.sleep(3600)
        return Attempt(attempt=self.task_info.attempt)

    async def run(self, input: Files) -> Attempt:
        return await self.hang(input)


class Page(HeartbeatDetails):
    page: int
    """The next page to fetch."""


class Pages(Output):
    pages: int
    first_page_of_last_attempt: int


class PagingApp(App):
    """Fetches pages 1..10; attempt 1 dies on page 7 ("crash" flag) or hangs there ("hang")."""

    @task(heartbeat_timeout_seconds=30, retry_policy=RetryPolicy(max_attempts=2,
                                                                 initial_interval=0.1))
    async def fetch_all(self, input: Files) -> Pages:
        resume = self.get_heartbeat_details(Page)
        start = resume.page if resume else 1
        log = os.path.join(input.folder, "pages")
        for page in range(start, 11):
            self.heartbeat(Page(page=page))
            mark(log, f"page {page} attempt {self.task_info.attempt}")
            if page == 7 and self.task_info.attempt == 1:
                time.sleep(0.5)  # mid-request
                if os.path.exists(os.path.join(input.folder, "crash")):
                    os._exit(1)
                while os.path.exists(os.path.join(input.folder, "hang")):
                    time.sleep(0.1)
        return Pages(pages=10, first_page_of_last_attempt=start)

    async def run(self, input: Files) -> Pages:
        return await self.fetch_all(input)


class Item(Input):
    folder: str
    index: int


class ItemDone(Output):
    index: int


class Summary(Output):
    done: int


class SlowItemsApp(App):
    """n sequential tasks of ~0.2 s that mark their start (with pid) and end."""

    @task
    async def item(self, input: Item) -> ItemDone:
        path = os.path.join(input.folder, "items")
        mark(path, f"start {input.index} {os.getpid()}")
        time.sleep(0.2)
        mark(path, f"end {input.index}")
        return ItemDone(index=input.index)

    async def run(self, input: Files) -> Summary:
        for i in range(input.n):
            await self.item(Item(folder=input.folder, index=i))
        return Summary(done=input.n)


class StuckApp(App):
    """Beats the same details over and over on attempt 1 (busy but not progressing)."""

    @task(heartbeat_timeout_seconds=30, max_no_progress_seconds=2, enforce_progress=True,
          retry_policy=RetryPolicy(max_attempts=2, initial_interval=0.1))
    async def spin(self, input: Files) -> Attempt:
        if self.task_info.attempt == 1:
            for _ in range(300):
                self.heartbeat(Page(page=1))
                time.sleep(0.1)
        return Attempt(attempt=self.task_info.attempt)

    @task(heartbeat_timeout_seconds=30, max_no_progress_seconds=1)
    async def observe(self, input: Files) -> Attempt:
        for _ in range(40):
            self.heartbeat(Page(page=1))
            time.sleep(0.1)
        return Attempt(attempt=self.task_info.attempt)

    async def run(self, input: Files) -> Attempt:
        if input.n == 1:
            return await self.spin(input)
        return await self.observe(input)
