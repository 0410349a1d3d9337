"""Start-up: how long a user waits before work begins (issue 17).

    .venv/bin/python -m benchmarks.bench_startup [demo_rows] [repeats]

`run(demo_rows)` (harness: ``--cases startup``) returns figures of two measurements, each
repeated `REPEATS` times (once for a smoke run of fewer than 100,000 demo rows):

* ``first_task``: ``connector-runtime run benchmarks.bench_startup:FirstTaskApp`` as a
  subprocess attached to a Ray that is already up (``RAY_ADDRESS``, as with ``ray job submit``
  or a ``ray start`` cluster): seconds from launching the command to the first task's body
  starting (the task reports ``time.time()``; same machine, same clock). The app imports the
  SQL connector's module, so workers carry a real connector's imports (pyarrow, ADBC,
  fsspec). Each launch is a new driver, hence a new Ray job: its workers are new processes.
* ``demo``: ``connector-runtime demo --rows N`` end to end with its source cached (the first,
  generating run is not timed): wall time of the whole command (interpreter start, local Ray
  start, both runs, summary), and the phases the demo prints. It starts a Ray of its own
  (``RAY_ADDRESS`` removed), as a user's first command does.

Medians of the launches; min and max are reported too (the machine is shared).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import connectors.sql.app  # noqa: F401  (a connector's imports, in the driver and workers)
from application_sdk.app import App, task
from application_sdk.contracts import Input, Output
from benchmarks._env import REPO

__all__ = ["FirstTaskApp", "run"]

DEMO_ROWS = 5_000_000
REPEATS = 5
CLI = [sys.executable, "-m", "runtime"]


class FirstTaskInput(Input):
    label: str


class FirstTaskOutput(Output):
    started_at: float


class FirstTaskApp(App):
    """One task that says when it started."""

    @task(timeout_seconds=120)
    async def first(self, input: FirstTaskInput) -> FirstTaskOutput:
        return FirstTaskOutput(started_at=time.time())

    async def run(self, input: FirstTaskInput) -> FirstTaskOutput:
        return await self.first(input)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(":")
    env.update(extra)
    return env


def first_task(address: str, work: str) -> float:
    """Seconds from launching `connector-runtime run` to its first task's start."""
    launched = time.time()
    proc = subprocess.run(
        [*CLI, "run", "benchmarks.bench_startup:FirstTaskApp", "--input",
         json.dumps({"label": os.urandom(4).hex()}), "--store", os.path.join(work, "store")],
        capture_output=True, text=True, timeout=300, env=_env(RAY_ADDRESS=address),
        cwd=str(REPO),  # the app module is imported from the current directory, as users do
    )
    if proc.returncode != 0:
        raise RuntimeError(f"connector-runtime run failed ({proc.returncode}): "
                           f"{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["started_at"] - launched


_PHASES = {
    "metadata": r"metadata .* in ([0-9.]+) s",
    "data": r"data .* in ([0-9.]+) s =",
    "summary": r"total +([0-9.]+) s since the command started",
}


def demo(rows: int, work: str) -> dict[str, float]:
    """Wall time of one `connector-runtime demo` in ``work`` and the phases it prints."""
    started = time.perf_counter()
    proc = subprocess.run([*CLI, "demo", "--rows", str(rows)], capture_output=True, text=True,
                          timeout=600, env=_env(), cwd=work)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"connector-runtime demo failed ({proc.returncode}): "
                           f"{proc.stderr[-2000:]}")
    phases = {"wall": wall}
    for name, pattern in _PHASES.items():
        found = re.search(pattern, proc.stdout)
        if found:
            phases[name] = float(found.group(1))
    return phases


def _ray_address() -> str:
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    return ray.get_runtime_context().gcs_address


def run(rows: int = DEMO_ROWS, repeats: int | None = None) -> dict[str, Any]:
    """Figures of ``repeats`` launches of each measurement (see the module docstring)."""
    if repeats is None:
        repeats = REPEATS if rows >= 100_000 else 1
    address = _ray_address()
    work = tempfile.mkdtemp(prefix="bench-startup-")
    try:
        firsts, demos = [], []
        if rows >= 100_000 or repeats > 1:  # --quick only proves the case runs: no warm-up
            first_task(address, work)  # untimed: the first driver on a cluster starts its monitor
            demo(rows, work)  # untimed: generates and caches the source
        for _ in range(repeats):
            firsts.append(first_task(address, work))
            demos.append(demo(rows, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out: dict[str, Any] = {
        "repeats": repeats,
        "first_task_s": round(statistics.median(firsts), 3),
        "first_task_min_s": round(min(firsts), 3),
        "first_task_max_s": round(max(firsts), 3),
        "first_task_target_met": statistics.median(firsts) < 1.0,
        "demo_rows": rows,
    }
    for phase in ("wall", "summary", "metadata", "data"):
        values = [d[phase] for d in demos if phase in d]
        if values:
            out[f"demo_{phase}_s"] = round(statistics.median(values), 3)
    walls = [d["wall"] for d in demos]
    out["demo_wall_min_s"], out["demo_wall_max_s"] = round(min(walls), 3), round(max(walls), 3)
    out["demo_target_met"] = statistics.median(walls) < 5.0
    return out


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else DEMO_ROWS
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else None
    for key, value in run(rows, repeats).items():
        print(f"{key:>24}: {value}")


if __name__ == "__main__":
    main()
