"""Calling a handler method for one request: its own thread and event loop, a timeout, and
errors with the request's credentials scrubbed out.

Each call gets a fresh handler instance (no state shared between requests, as the service
keeps none) and runs with `asyncio.run` in a worker thread: a handler that blocks (a
synchronous database driver in `test_auth` is common) cannot freeze the service's event loop,
so `/health`, `/status` and other requests keep answering, and the timeout still answers the
client on time. Inside the thread `asyncio.wait_for` cancels a cooperative handler at its
`timeout_seconds`; a blocked one is abandoned (its thread finishes on its own) and the client
gets the timeout answer all the same.

Rejected: awaiting the handler on the service's loop (one blocking handler stops every
request, and its timeout cannot fire); a process per call (isolation we do not need for short
read-only calls, at ~100x the cost).
"""

from __future__ import annotations

import asyncio
import logging
import re
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import BaseModel, ValidationError

from application_sdk.handler import Handler, bind_context

__all__ = ["HandlerFailed", "HandlerRunner", "HandlerTimeout", "Scrubber"]

log = logging.getLogger("connector_runtime.service")

_MIN_SCRUB = 4


class Scrubber:
    """Removes a request's credential values from text bound for logs or clients."""

    def __init__(self, values: list[str]) -> None:
        self.long = sorted({v for v in values if len(v) >= _MIN_SCRUB}, key=len, reverse=True)
        # A short value is replaced where it stands alone, not inside longer words.
        self.short = [re.compile(rf"(?<![A-Za-z0-9]){re.escape(v)}(?![A-Za-z0-9])")
                      for v in {v for v in values if 0 < len(v) < _MIN_SCRUB}]

    def __call__(self, text: str) -> str:
        for value in self.long:
            text = text.replace(value, "***")
        for pattern in self.short:
            text = pattern.sub("***", text)
        return text


class HandlerTimeout(Exception):
    """The handler method did not answer within the request's timeout_seconds."""


class HandlerFailed(Exception):
    """The handler method raised or returned the wrong type; the message is scrubbed."""


class HandlerRunner:
    """Runs handler methods of one Handler class, each call in a worker thread."""

    def __init__(self, handler_cls: type[Handler], max_workers: int = 8) -> None:
        self.handler_cls = handler_cls
        self.pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="handler")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def call(self, method: str, inp: Any) -> BaseModel:
        """The validated output of `method(inp)`; HandlerTimeout or HandlerFailed otherwise."""
        timeout = float(inp.timeout_seconds)
        scrub = Scrubber([c.value for c in inp.credentials])
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.pool, self._in_thread, method, inp, timeout)
        try:
            # A little past the handler's own deadline: a cooperative handler is cancelled by
            # wait_for inside its thread first; this catches one that blocks its loop.
            raw = await asyncio.wait_for(future, timeout + 0.5)
        except (TimeoutError, HandlerTimeout):
            raise HandlerTimeout(f"{method} did not answer within {timeout:g} s "
                                 "(timeout_seconds)") from None
        except Exception as exc:
            self._log_failure(method, exc, scrub)
            raise HandlerFailed(f"{method} failed: {type(exc).__name__}: "
                                f"{scrub(str(exc))}") from None
        return self._checked(method, raw, scrub)

    def _in_thread(self, method: str, inp: Any, timeout: float) -> Any:
        handler = self.handler_cls()

        async def bounded() -> Any:
            with bind_context(method, inp):
                try:
                    return await asyncio.wait_for(getattr(handler, method)(inp), timeout)
                except TimeoutError:
                    raise HandlerTimeout(method) from None

        return asyncio.run(bounded())

    def _checked(self, method: str, raw: Any, scrub: Scrubber) -> BaseModel:
        out_t = self.handler_cls.contracts[method][1]
        if isinstance(raw, out_t):
            return raw
        try:
            if isinstance(raw, BaseModel):
                raw = raw.model_dump()
            if isinstance(raw, dict):
                return out_t.model_validate(raw)
        except ValidationError as exc:
            fields = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                               for e in exc.errors())
            raise HandlerFailed(scrub(f"{method} returned an invalid {out_t.__name__}: "
                                      f"{fields}")) from None
        raise HandlerFailed(f"{self.handler_cls.__qualname__}.{method} returned "
                            f"{type(raw).__qualname__}, expected {out_t.__name__}")

    def _log_failure(self, method: str, exc: BaseException, scrub: Scrubber) -> None:
        text = "".join(traceback.format_exception(exc))
        log.error("handler %s.%s raised:\n%s", self.handler_cls.__qualname__, method,
                  scrub(text))
