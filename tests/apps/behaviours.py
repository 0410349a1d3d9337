"""Apps whose tasks fail, hang or crash in the ways the runtime must handle."""

from __future__ import annotations

import os
import time

from application_sdk.app import App, RetryPolicy, task
from application_sdk.contracts import Input, Output
from application_sdk.errors import NonRetryableError

from .counting import mark


class Job(Input):
    count_file: str
    seconds: float = 0.0


class Done(Output):
    attempt: int


class FlakyApp(App):
    """Fails twice, then succeeds."""

    @task(retry_policy=RetryPolicy(max_attempts=5, initial_interval=0.05))
    async def flaky(self, input: Job) -> Done:
        mark(input.count_file, f"attempt {self.task_info.attempt}")
        if self.task_info.attempt < 3:
            raise ConnectionError(f"transient failure on attempt {self.task_info.attempt}")
        return Done(attempt=self.task_info.attempt)

    async def run(self, input: Job) -> Done:
        return await self.flaky(input)


class BadCredentials(Exception):
    pass


class NonRetryableApp(App):
    @task(
        retry_policy=RetryPolicy(
            max_attempts=5, initial_interval=0.05, non_retryable_errors=("BadCredentials",)
        )
    )
    async def typed(self, input: Job) -> Done:
        mark(input.count_file, "typed")
        raise BadCredentials("password rejected for user etl")

    @task(retry_policy=RetryPolicy(max_attempts=5, initial_interval=0.05))
    async def explicit(self, input: Job) -> Done:
        mark(input.count_file, "explicit")
        raise NonRetryableError("table does not exist")

    async def run(self, input: Job) -> Done:
        if input.seconds:
            return await self.explicit(input)
        return await self.typed(input)


class SleepyApp(App):
    """Sleeps past its timeout on the first attempt; the retry is quick."""

    @task(timeout_seconds=2, retry_policy=RetryPolicy(max_attempts=2, initial_interval=0.05))
    async def sleepy(self, input: Job) -> Done:
        mark(input.count_file, f"start {self.task_info.attempt}")
        if self.task_info.attempt == 1:
            time.sleep(input.seconds)
        return Done(attempt=self.task_info.attempt)

    async def run(self, input: Job) -> Done:
        return await self.sleepy(input)


class AlwaysSleepyApp(App):
    @task(timeout_seconds=1, retry_policy=RetryPolicy(max_attempts=1))
    async def sleepy(self, input: Job) -> Done:
        time.sleep(input.seconds)
        return Done(attempt=self.task_info.attempt)

    async def run(self, input: Job) -> Done:
        return await self.sleepy(input)


class CrashingApp(App):
    """The worker process dies on the first attempt (os._exit), as when it is OOM-killed."""

    @task(retry_policy=RetryPolicy(max_attempts=1))
    async def crash_once(self, input: Job) -> Done:
        mark(input.count_file, f"attempt {self.task_info.attempt}")
        if self.task_info.attempt == 1:
            os._exit(1)
        return Done(attempt=self.task_info.attempt)

    async def run(self, input: Job) -> Done:
        return await self.crash_once(input)


class Budget(Input):
    n: int


class Count(Output):
    count: int


class Tiny(Input):
    i: int


class TinyOut(Output):
    i: int


class BudgetApp(App):
    max_task_executions = 5

    @task
    async def tiny(self, input: Tiny) -> TinyOut:
        return TinyOut(i=input.i)

    async def run(self, input: Budget) -> Count:
        for i in range(input.n):
            await self.tiny(Tiny(i=i))
        return Count(count=input.n)

    async def on_complete(self) -> None:
        pass  # keep the budget for the tasks under test
