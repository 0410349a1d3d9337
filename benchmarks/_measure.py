"""Interleaved, repeated measurements and the tables they fill.

Each case has variants (raw Ray, the runtime on file://, on S3, DBOS...). For every size, every
repetition runs each variant once, in an order rotated per repetition, so a slow minute on a
shared machine (other engineers run tests here) lands on every variant alike rather than on
whichever ran last. Figures are medians over the repetitions.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Measured", "Table", "Variant", "fmt_ratio", "fmt_s", "interleave", "log", "median"]

Measure = Callable[[int], Awaitable[float]]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Variant:
    """One contender in a case."""

    name: str
    measure: Measure
    """Runs once at size n; returns the figure (seconds, unless the case says otherwise)."""
    setup: Callable[[int], Awaitable[None]] | None = None
    """Untimed preparation at size n (e.g. complete a run that the measure then resumes)."""
    unavailable: str | None = None
    """Why this variant cannot run here (shown instead of figures)."""


@dataclass
class Measured:
    samples: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def get(self, variant: str, n: int) -> list[float]:
        return self.samples.get((variant, n), [])

    def median(self, variant: str, n: int) -> float | None:
        values = self.get(variant, n)
        return statistics.median(values) if values else None


@dataclass
class Table:
    """One case's results: what is printed and written to RESULTS.md."""

    key: str
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    """Machine-readable medians, keyed "variant@n", for the targets summary and JSON."""
    seconds: float = 0.0
    """Wall time the case took (all sizes, repetitions and setup)."""


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 10:
        return f"{value:.1f} s"
    if value >= 1:
        return f"{value:.2f} s"
    return f"{value * 1000:.0f} ms" if value >= 0.1 else f"{value * 1000:.1f} ms"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


async def interleave(
    case: str,
    variants: list[Variant],
    sizes: list[int],
    repeat: int,
    warmup: int | None = None,
) -> Measured:
    """Measure every available variant at every size, `repeat` times, interleaved."""
    out = Measured()
    live = [v for v in variants if v.unavailable is None]
    for v in variants:
        if v.unavailable is not None:
            out.errors[v.name] = v.unavailable
    if warmup:
        for v in list(live):
            await _guarded(out, live, v, case, "warm-up", _call(v.measure, warmup))
    for n in sizes:
        # a failure drops the variant for this size only: the next size tries it again
        at_size = list(live)
        for v in list(at_size):
            if v.setup is not None:
                await _guarded(out, at_size, v, case, f"setup N={n}", _call(v.setup, n))
        for rep in range(repeat):
            shift = rep % len(at_size) if at_size else 0
            for v in at_size[shift:] + at_size[:shift]:
                if v not in at_size:  # failed earlier in this repetition
                    continue
                gc.collect()
                started = time.perf_counter()
                value = await _guarded(out, at_size, v, case, f"N={n}", v.measure(n))
                if value is None:
                    continue
                out.samples.setdefault((v.name, n), []).append(value)
                log(f"  {case:<10} N={n:<6} rep {rep + 1}/{repeat}  {v.name:<22} "
                    f"{value:10.4f}   ({time.perf_counter() - started:.1f} s)")
    return out


async def _call(fn: Callable[[int], Awaitable[Any]], n: int) -> Any:
    return await fn(n)


async def _guarded(
    out: Measured, live: list[Variant], v: Variant, case: str, what: str, coro: Awaitable[Any]
) -> Any:
    """Await `coro`; a failure drops the variant from `live` (reported), never the run."""
    try:
        return await coro
    except Exception as exc:
        previous = out.errors.get(v.name)
        error = f"{what}: {type(exc).__name__}: {str(exc)[:300]}"
        out.errors[v.name] = f"{previous}; {error}" if previous else error
        log(f"  {case}: {v.name} failed at {what}: {type(exc).__name__}: {exc}")
        if v in live:
            live.remove(v)
        return None
