"""A helper module of an app's own code, imported before the runtime started: the names it took
from `time` and `random` are the originals, never wrapped by anything."""

from __future__ import annotations

from asyncio import sleep as imported_sleep
from time import monotonic, perf_counter


def elapsed_since(start: float) -> float:
    return monotonic() - start


def tick() -> float:
    return perf_counter()


async def nap(seconds: float) -> None:
    await imported_sleep(seconds)  # `from asyncio import sleep`: must be a durable timer too
