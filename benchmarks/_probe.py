"""A driver in a process of its own, attached to the benchmark's Ray through RAY_ADDRESS.

Used where the parent process would blur the figure: driver memory (a fresh heap, so the growth
is this run's and not what earlier cases left in the allocator) and switches read from the
environment at import (determinism guards on/off).

    RAY_ADDRESS=... python -m benchmarks._probe VARIANT N [--store URL] [--run-id ID]

Prints one JSON object: seconds, baseline/peak/after RSS in bytes. The peak is the kernel's
high-water mark (VmHWM) reset just before the measured run (`/proc/self/clear_refs`), else
the maximum seen by a 2 ms sampler thread.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import sys
import threading
import time
import uuid
from typing import Any

__all__ = ["VARIANTS", "main"]

VARIANTS = ("raw-fanout", "raw-seq", "runtime-fanout", "runtime-seq", "runtime-resume",
            "app-alone")
WARMUP_TASKS = 20


def _status_kb(name: str) -> int:
    with open("/proc/self/status") as fh:
        match = re.search(rf"^{name}:\s+(\d+) kB", fh.read(), re.M)
    return int(match.group(1)) if match else 0


class PeakRss:
    """Peak RSS of this process from `start()` on."""

    def __init__(self) -> None:
        self._kernel = False
        self._max = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # resets VmHWM to the current RSS
            self._kernel = True
        except OSError:
            self._max = _status_kb("VmRSS")
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._max = max(self._max, _status_kb("VmRSS"))

    def stop(self) -> int:
        """Peak RSS in bytes."""
        if self._kernel:
            return _status_kb("VmHWM") * 1024
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self._max * 1024


async def _raw(n: int, parallel: bool) -> list[int]:
    from benchmarks.apps import raw_noop

    if parallel:
        return list(await asyncio.gather(*(raw_noop.remote(i) for i in range(n))))
    return [await raw_noop.remote(i) for i in range(n)]


async def _runtime(n: int, parallel: bool, store: str, run_id: str | None = None) -> Any:
    from benchmarks.apps import Batch, BenchApp
    from runtime import run_app_async

    run_id = run_id or f"probe-{uuid.uuid4().hex[:12]}"
    out = await run_app_async(BenchApp, Batch(n=n, parallel=parallel), run_id=run_id,
                              store=store)
    assert out.count == n, out
    return out


LEASES_LEFT_HELD: list[str] = []
"""Runs whose lease this process found still held by its own finished driver (see below)."""


def mark_failed(store: str, run_id: str, app_name: str = "BenchApp") -> None:
    """Put a completed run back to FAILED, so run_app replays it instead of returning its
    stored output (the replay path is the one a crashed or failed run takes).

    Also releases the run's lease if a driver of this very process, already returned, left it
    held: the runtime's lease-renewal thread is not joined before `Lease.release()`, and a
    renewal that lands after the release's read makes the release's compare-and-swap fail
    silently (seen on S3). A real user would wait for the expiry (30 s); the harness records
    the occurrence instead (reported in RESULTS.md) and goes on.
    """
    from storage import RunStatus, RunStore, open_store
    from storage._lease import HOST, LeaseInfo

    runs = RunStore(open_store(store), app_name, run_id)
    record = runs.read_run()
    if record is None:
        raise RuntimeError(f"no run {run_id} in {store}")
    record.status = RunStatus.FAILED
    runs.write_run(record)
    key = runs.key("lease.msgpack")
    current = runs.store.read_versioned(key)
    if current is None:
        return
    info = LeaseInfo.decode(current[0])
    if info.owner and info.host == HOST and info.pid == os.getpid() and \
            info.expires_at > time.time():
        LEASES_LEFT_HELD.append(run_id)
        released = LeaseInfo("", HOST, 0, info.epoch, 0.0).encode()
        runs.store.replace_if(key, released, current[1])


async def _once(variant: str, n: int, store: str, run_id: str | None) -> Any:
    if variant == "raw-fanout":
        return await _raw(n, True)
    if variant == "raw-seq":
        return await _raw(n, False)
    if variant == "runtime-fanout":
        return await _runtime(n, True, store)
    if variant == "runtime-seq":
        return await _runtime(n, False, store)
    if variant == "runtime-resume":
        assert run_id, "runtime-resume needs --run-id of a completed run"
        mark_failed(store, run_id)
        return await _runtime(n, True, store, run_id)
    if variant == "app-alone":
        # BenchApp.run() outside the runtime: its tasks are plain method calls in this process.
        # What the app's own run() holds (its inputs, gathered coroutines, outputs), which
        # every driver of it holds, whatever runs the tasks.
        from benchmarks.apps import Batch, BenchApp

        out = await BenchApp().run(Batch(n=n, parallel=True))
        assert out.count == n, out
        return out
    raise SystemExit(f"unknown variant {variant!r}; one of {VARIANTS}")


async def probe(variant: str, n: int, store: str, run_id: str | None) -> dict[str, Any]:
    # warm-up: imports, function export, worker processes, pydantic schemas, thread pools
    warm = variant if variant != "runtime-resume" else "runtime-fanout"
    await _once(warm, WARMUP_TASKS, store, None)
    gc.collect()
    baseline = _status_kb("VmRSS") * 1024
    peak = PeakRss()
    peak.start()
    started = time.perf_counter()
    kept = await _once(variant, n, store, run_id)
    seconds = time.perf_counter() - started
    peak_bytes = peak.stop()
    del kept
    gc.collect()
    return {
        "variant": variant, "n": n, "seconds": seconds, "baseline": baseline,
        "peak": peak_bytes, "after": _status_kb("VmRSS") * 1024,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._probe")
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("n", type=int)
    parser.add_argument("--store", default="")
    parser.add_argument("--run-id")
    args = parser.parse_args(argv)
    import logging

    import ray

    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False,
             logging_level=logging.WARNING)
    try:
        result = asyncio.run(probe(args.variant, args.n, args.store, args.run_id))
    finally:
        ray.shutdown()
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
