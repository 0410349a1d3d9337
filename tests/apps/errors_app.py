"""Apps whose tasks raise the exceptions real libraries raise: unpicklable ones, and ones that
say `retryable = False` the way connector libraries (HTTP clients) do."""

from __future__ import annotations

import threading

from application_sdk.app import App, RetryPolicy, task
from application_sdk.contracts import Input, Output

from .counting import mark


class ResponseError(Exception):
    """Like aiohttp's ClientResponseError: required keyword arguments and a lock inside, so
    it neither pickles nor unpickles."""

    def __init__(self, request_info: object, *, status: int) -> None:
        super().__init__(f"{status}, message='Unauthorized', url='https://api.example/items'")
        self.status = status
        self._lock = threading.Lock()


class RefusedToken(Exception):
    retryable = False  # the convention of connector libraries (connectors/rest/_client.py)


class Call(Input):
    count_file: str
    kind: str = "unpicklable"


class Done(Output):
    ok: bool = True


class ErrorsApp(App):
    @task(retry_policy=RetryPolicy(max_attempts=3, initial_interval=0.01))
    async def unpicklable(self, input: Call) -> Done:
        mark(input.count_file, f"unpicklable {self.task_info.attempt}")
        raise ResponseError(object(), status=401)

    @task(retry_policy=RetryPolicy(max_attempts=3, initial_interval=0.01,
                                   non_retryable_errors=("ResponseError",)))
    async def unpicklable_by_name(self, input: Call) -> Done:
        mark(input.count_file, f"by_name {self.task_info.attempt}")
        raise ResponseError(object(), status=403)

    @task(retry_policy=RetryPolicy(max_attempts=5, initial_interval=0.01))
    async def refused(self, input: Call) -> Done:
        mark(input.count_file, f"refused {self.task_info.attempt}")
        raise RefusedToken("the API refused the token (HTTP 401)")

    async def run(self, input: Call) -> Done:
        return await getattr(self, input.kind)(input)

    async def on_complete(self) -> None:
        pass
