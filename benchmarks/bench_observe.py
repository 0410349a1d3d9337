"""Seeing a run: `trace` of a 5,000-task run, its run page in a real Chromium, and what
recording attempt history costs, each side by side with its limit.

Set-up (once per size): a real run of N gathered no-op tasks (`benchmarks.apps.BenchApp`) on
a file store in a temp folder, on the benchmark's Ray; then `connector-runtime serve` on that
store (no token, 127.0.0.1) and a headless Chromium (`tests/browser.py`).

Figures, medians of `ROUNDS` rounds:

- `trace_cli_s`: `connector-runtime trace RUN_ID -o FILE` as a user runs it (a subprocess:
  Python start, store read, JSON written). Goal: under 2 s at 5,000 tasks.
  `status_cli_s`: the floor of any verb that reads the journal, `connector-runtime status
  RUN_ID --json`, the same way. `trace_in_process_s`: journal load + timeline + JSON in
  this process; `load_journal_s`: the journal load alone (its limit).
- `page_browser_s`: Chromium's navigation to the run page until its load event and the next
  painted frame, with every bar in the DOM (checked). Goal: under 2 s at 5,000 tasks.
  `page_server_s`: the same page over HTTP with httpx (server render and transfer only);
  `list_browser_s`: the run list page in the browser (a small page: the floor of a page
  load); `page_kib`: its HTML size.
- `history_us_per_attempt`: what recording history adds to one attempt, measured in this
  process: the worker's `pack_result` and the driver's `unpack_result` + `completed_fields`
  (against journaling the bare output bytes). `journal_bytes_per_task_with_history` and
  `..._without`: the journal's size per task with and without the history fields.

`run(tasks=5000) -> dict`; `python -m benchmarks.bench_observe [TASKS]` prints them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import msgpack

__all__ = ["run"]

REPO = Path(__file__).resolve().parent.parent
ROUNDS = 3
_PAINTED = "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(1))))"
"""Resolves after the browser produced a frame following the load: the page is on screen."""


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _cli(*args: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "runtime", *args], cwd=REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def _make_run(store: str, tasks: int) -> str:
    from benchmarks.apps import Batch, BenchApp
    from runtime import run_app

    run_id = f"observe-{uuid.uuid4().hex[:8]}"
    out = run_app(BenchApp, Batch(n=tasks, parallel=True), run_id=run_id, store=store)
    assert out.count == tasks, out
    return run_id


def _trace_figures(store: str, run_id: str, work: str) -> dict[str, float]:
    from runtime.views import load_timeline, trace_json
    from storage import RunStore, find_runs, open_store

    st = open_store(store)
    record = find_runs(st, run_id)[0].read_run()
    assert record is not None
    cli, status, inproc, load = [], [], [], []
    for _ in range(ROUNDS):
        out = os.path.join(work, "t.json")
        cli.append(_cli("trace", run_id, "--store", store, "--output", out))
        status.append(_cli("status", run_id, "--json", "--store", store))
        started = time.perf_counter()
        trace_json(load_timeline(st, record), record)
        inproc.append(time.perf_counter() - started)
        started = time.perf_counter()
        RunStore(st, record.app, run_id).load_journal()
        load.append(time.perf_counter() - started)
    events = json.loads(Path(out).read_text())["traceEvents"]
    return {"trace_cli_s": _median(cli), "status_cli_s": _median(status),
            "trace_in_process_s": _median(inproc), "load_journal_s": _median(load),
            "trace_events": float(len(events))}


def _serve(store: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("CONNECTOR_RUNTIME_API_TOKEN", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime", "serve", "benchmarks.apps:BenchApp", "--port",
         str(port), "--store", store, "--launcher", "process"], cwd=REPO, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the service did not start")


async def _browser_figures(url: str, run_id: str, attempts: int) -> dict[str, float]:
    from tests.browser import Browser

    page_s, list_s = [], []
    async with Browser() as browser, browser.page() as page:
        await page.goto(f"{url}/")  # warm: the first navigation starts the renderer
        for _ in range(ROUNDS):
            started = time.perf_counter()
            await page.goto(f"{url}/runs/{run_id}")
            await page.eval(_PAINTED)
            page_s.append(time.perf_counter() - started)
            bars = await page.eval("document.querySelectorAll('rect.bar').length")
            if bars < attempts:
                raise AssertionError(f"the page drew {bars} bars of {attempts}")
            started = time.perf_counter()
            await page.goto(f"{url}/")
            await page.eval(_PAINTED)
            list_s.append(time.perf_counter() - started)
        errors = list(page.console_errors)
    if errors:
        raise AssertionError(f"console errors on the run page: {errors}")
    return {"page_browser_s": _median(page_s), "list_browser_s": _median(list_s)}


def _page_figures(store: str, run_id: str, attempts: int) -> dict[str, float]:
    from tests.services import free_port

    port = free_port()
    proc = _serve(store, port)
    url = f"http://127.0.0.1:{port}"
    try:
        server, size = [], 0
        for _ in range(ROUNDS):
            started = time.perf_counter()
            res = httpx.get(f"{url}/runs/{run_id}", timeout=60)
            server.append(time.perf_counter() - started)
            res.raise_for_status()
            size = len(res.content)
        figures = asyncio.run(_browser_figures(url, run_id, attempts))
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {**figures, "page_server_s": _median(server), "page_kib": size / 1024}


def _history_cost(store: str, run_id: str) -> dict[str, float]:
    from runtime.driver._timing import completed_fields
    from runtime.worker._timing import pack_result, unpack_result
    from storage import find_runs, open_store

    data = msgpack.packb({"index": 1234}, use_bin_type=True)
    n = 20_000
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(n):
            blob = pack_result(data, 1.0)
            completed_fields(unpack_result(blob), 1.0, 2.0)
        with_history = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(n):
            completed_fields(data, 1.0, 2.0)
        best = min(best, (with_history - (time.perf_counter() - started)) / n)
    records = [r for r in find_runs(open_store(store), run_id)[0].load_journal().records
               if r.get("y") == "t"]
    plain = [{k: v for k, v in r.items() if k not in ("ts", "w", "fs")} for r in records]
    per = len(records) or 1
    return {"history_us_per_attempt": best * 1e6,
            "journal_bytes_per_task_with_history": len(msgpack.packb(records)) / per,
            "journal_bytes_per_task_without": len(msgpack.packb(plain)) / per}


def run(tasks: int = 5000) -> dict[str, Any]:
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    work = tempfile.mkdtemp(prefix="bench-observe-")
    store = os.path.join(work, "store")
    try:
        run_id = _make_run(store, tasks)
        figures: dict[str, Any] = {"tasks": tasks}
        figures.update(_trace_figures(store, run_id, work))
        figures.update(_page_figures(store, run_id, tasks))
        figures.update(_history_cost(store, run_id))
        figures["trace_under_2s"] = figures["trace_cli_s"] < 2.0
        figures["page_under_2s"] = figures["page_browser_s"] < 2.0
        return figures
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    tasks = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    figures = run(tasks)
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    print(f"trace vs status (same Python start and store read): "
          f"{figures['trace_cli_s'] / figures['status_cli_s']:.2f}x; run page vs list page in "
          f"the browser: {figures['page_browser_s'] / figures['list_browser_s']:.2f}x")


if __name__ == "__main__":
    main()
