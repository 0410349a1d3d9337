"""The app the service tests and the service benchmark serve (`service_app:ServiceApp`).

Self-contained (only `application_sdk` and the standard library), so the folder works as a Ray
job's working dir and as the service's working directory alike.

What it does, so tests can see it from the outside:

- each `square` attempt writes a marker file `{marker_dir}/{index:04d}-{uuid}.json`
  (`{"index", "t", "pid"}`) first thing: the markers of an index are the times that task ran,
  and the earliest `t` is when the first task began;
- `square` sleeps `sleep_s`, then fails for good at index `fail_at` (while the file `flag`
  exists, when one is named);
- two entry points: `extract_squares` (the default, a gathered fan-out) and `mine_queries`
  (served at `?entrypoint=mine-queries` too).

`ServiceAppHandler` is found by name. Its password is `$SERVICE_APP_PASSWORD` (default
`open-sesame`); the credential `mode` makes it misbehave: `raise` (an error whose message holds
the password), `block` (a blocking `time.sleep` past its timeout), `bad-output` (returns a
wrong type).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid

from pydantic import Field

from application_sdk.app import App, RetryPolicy, entrypoint, task
from application_sdk.contracts import Input, Output
from application_sdk.errors import NonRetryableError
from application_sdk.handler import (
    AuthInput,
    AuthOutput,
    AuthStatus,
    Handler,
    MetadataInput,
    PreflightCheck,
    PreflightInput,
    PreflightOutput,
    PreflightStatus,
    SqlMetadataObject,
    SqlMetadataOutput,
)


class SquaresInput(Input):
    marker_dir: str
    n: int = Field(4, ge=0, le=500)
    sleep_s: float = 0.0
    fail_at: int = -1
    flag: str = ""
    """With fail_at: fail only while this file exists (deleting it "fixes the source")."""
    chunk: int = 0
    """Over 0: this many squares per run, the rest in continuations (continue_with)."""
    offset: int = 0
    carried: int = 0
    """The squares' total of the chain's earlier runs."""


class SquareInput(Input):
    marker_dir: str
    index: int
    sleep_s: float = 0.0
    fail: bool = False
    flag: str = ""


class SquareOutput(Output):
    index: int
    square: int


class SquaresOutput(Output):
    count: int
    total: int


class QueriesInput(Input):
    days: int = Field(1, ge=1)


class QueriesOutput(Output):
    queries: int


class ServiceApp(App):
    @task(timeout_seconds=300, retry_policy=RetryPolicy(max_attempts=1))
    async def square(self, input: SquareInput) -> SquareOutput:
        os.makedirs(input.marker_dir, exist_ok=True)
        marker = {"index": input.index, "t": time.time(), "pid": os.getpid()}
        path = os.path.join(input.marker_dir, f"{input.index:04d}-{uuid.uuid4().hex}.json")
        with open(path, "w") as fh:
            json.dump(marker, fh)
        if input.sleep_s:
            time.sleep(input.sleep_s)
        if input.fail and (not input.flag or os.path.exists(input.flag)):
            raise NonRetryableError(f"square {input.index}: the source refused it")
        return SquareOutput(index=input.index, square=input.index * input.index)

    @task(timeout_seconds=60)
    async def count_queries(self, input: QueriesInput) -> QueriesOutput:
        return QueriesOutput(queries=10 * input.days)

    @entrypoint(default=True)
    async def extract_squares(self, input: SquaresInput) -> SquaresOutput:
        end = min(input.n, input.offset + input.chunk) if input.chunk else input.n
        outs = await asyncio.gather(*(
            self.square(SquareInput(marker_dir=input.marker_dir, index=i, sleep_s=input.sleep_s,
                                    fail=i == input.fail_at, flag=input.flag))
            for i in range(input.offset, end)))
        total = input.carried + sum(o.square for o in outs)
        if end < input.n:
            self.continue_with(input.model_copy(update={"offset": end, "carried": total}))
        return SquaresOutput(count=end, total=total)

    @entrypoint
    async def mine_queries(self, input: QueriesInput) -> QueriesOutput:
        return await self.count_queries(input)


SCHEMAS = ("public", "sales", "hr")


def _password() -> str:
    return os.environ.get("SERVICE_APP_PASSWORD", "open-sesame")


class ServiceAppHandler(Handler):
    async def test_auth(self, input: AuthInput) -> AuthOutput:
        user = self.context.get_credential("username", "")
        password = self.context.get_credential("password", "")
        mode = self.context.get_credential("mode", "")
        if mode == "raise":
            raise ConnectionError(f"login of {user} with password {password} refused")
        if mode == "block":
            time.sleep(input.timeout_seconds + 3)  # blocks its event loop on purpose
        if mode == "bad-output":
            return {"status": "maybe"}  # type: ignore[return-value]
        if password != _password():
            return AuthOutput(status=AuthStatus.INVALID_CREDENTIALS,
                              message=f"user {user}: wrong password")
        return AuthOutput(status=AuthStatus.SUCCESS, identities=[user], scopes=["read"])

    async def preflight_check(self, input: PreflightInput) -> PreflightOutput:
        started = self.context.elapsed_ms
        schema = str(input.connection_config.get("schema", ""))
        checks = [
            PreflightCheck(name="connect", passed=self.context.get_credential("password") ==
                           _password(), message="logged in" if self.context.get_credential(
                               "password") == _password() else "login refused"),
            PreflightCheck(name="schema_exists", passed=schema in SCHEMAS,
                           message=f"schema {schema!r}"),
        ]
        wanted = [c for c in checks if not input.checks_to_run or c.name in input.checks_to_run]
        ready = all(c.passed for c in wanted)
        return PreflightOutput(status=PreflightStatus.READY if ready else PreflightStatus.NOT_READY,
                               checks=wanted, total_duration_ms=self.context.elapsed_ms - started)

    async def fetch_metadata(self, input: MetadataInput) -> SqlMetadataOutput:
        names = [s for s in SCHEMAS if s.startswith(input.object_filter)]
        return SqlMetadataOutput(objects=[
            SqlMetadataObject(TABLE_CATALOG="demo", TABLE_SCHEMA=s) for s in names])
