"""The benchmark cases. Each returns a Table; `CASES` lists them in the order they run.

Limit: what Ray itself does fastest, on the same Ray instance in the same run: `ray.get` of the
list of refs of N raw no-op remote functions (fan-out) or `ray.get` of each ref in a loop
(sequential), and the same for a warm actor's no-op method (the limit of a pool). The raw
remote functions awaited through asyncio, as the runtime awaits its attempts, are an extra row
(asyncio slows the limit itself), not the limit.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from . import _dbos
from ._env import REPO, Environment
from ._measure import Measured, Table, Variant, fmt_ratio, fmt_s, interleave
from ._probe import WARMUP_TASKS
from .apps import (
    POOL_SIZE,
    Batch,
    BenchApp,
    HeartbeatApp,
    NoHeartbeatApp,
    PoolBenchApp,
    RawActor,
    raw_noop,
    raw_sleep,
)

__all__ = ["CASES", "OPT_IN", "SIZES", "Context"]

RAW, FILE, S3, DBOS = "raw Ray", "runtime file://", "runtime S3 (moto)", "DBOS SQLite"
RAW_ASYNC = "raw Ray, awaited in asyncio"
RAW_ACTOR = "raw Ray actor calls"
POOL = "runtime pool file://"
SLEEP_MS = 50

SIZES: dict[str, tuple[list[int], list[int]]] = {
    # case: (default sizes, --quick sizes)
    "fanout": ([100, 1000, 5000], [20]),
    "sequential": ([100, 300, 1000], [10]),
    "resume": ([1000, 2000, 5000], [20]),
    "sleep": ([100, 400], [8]),
    "memory": ([1000, 5000], [50]),
    "heartbeat": ([100, 1000], [20]),
    "guards": ([100, 300], [10]),
    "sql": ([1_000_000, 5_000_000], [20_000]),
    "startup": ([5_000_000], [20_000]),
    "files": ([128, 1024], [4]),
    "checkpoint": ([200], [20]),
    "jobs": ([100], [10]),
    "service": ([5], [5]),
    "observe": ([5000], [200]),
}
OPT_IN = ("jobs", "service", "observe")
"""Cases run only when named in --cases."""


@dataclass
class Context:
    env: Environment
    repeat: int
    quick: bool
    sizes: dict[str, list[int]] = field(default_factory=dict)
    dbos: _dbos.DbosBench | None = None

    def sizes_for(self, case: str) -> list[int]:
        if case in self.sizes:
            return self.sizes[case]
        default, quick = SIZES[case]
        return quick if self.quick else default

    @property
    def warmup(self) -> int:
        return 5 if self.quick else 20


# -- what one measurement does ---------------------------------------------------------------


async def raw_run(n: int, parallel: bool, sleep_ms: int = 0,
                  awaited: bool = False) -> float:
    """Raw Ray remote functions: `ray.get` of the list (fan-out) or of each ref in turn
    (blocking this loop, as a plain Ray program does); `awaited`: through asyncio instead."""
    import ray

    started = time.perf_counter()
    if awaited:
        if parallel:
            outs = await asyncio.gather(*(raw_noop.remote(i) for i in range(n)))
        else:
            outs = [await raw_noop.remote(i) for i in range(n)]
    elif sleep_ms:
        outs = ray.get([raw_sleep.remote(i, sleep_ms) for i in range(n)])
    elif parallel:
        outs = ray.get([raw_noop.remote(i) for i in range(n)])
    else:
        outs = [ray.get(raw_noop.remote(i)) for i in range(n)]
    elapsed = time.perf_counter() - started
    assert list(outs) == list(range(n))
    return elapsed


_raw_actors: list[Any] = []


def raw_actors() -> list[Any]:
    """POOL_SIZE warm raw actors, made once per benchmark process (warm, like the pool)."""
    import ray

    if not _raw_actors:
        _raw_actors.extend(RawActor.remote() for _ in range(POOL_SIZE))
        ray.get([a.__ray_ready__.remote() for a in _raw_actors])
    return _raw_actors


async def raw_actor_run(n: int, parallel: bool) -> float:
    """Calls of a warm actor's no-op method, spread round-robin over POOL_SIZE actors:
    `ray.get` of the list (fan-out) or of each call in turn (sequential)."""
    import ray

    actors = raw_actors()
    started = time.perf_counter()
    if parallel:
        outs = ray.get([actors[i % len(actors)].noop.remote(i) for i in range(n)])
    else:
        outs = [ray.get(actors[i % len(actors)].noop.remote(i)) for i in range(n)]
    elapsed = time.perf_counter() - started
    assert list(outs) == list(range(n))
    return elapsed


async def runtime_run(
    app: type, store: str, n: int, parallel: bool, sleep_ms: int = 0, run_id: str | None = None
) -> float:
    from runtime import run_app_async

    run_id = run_id or f"b-{uuid.uuid4().hex[:12]}"
    started = time.perf_counter()
    out = await run_app_async(app, Batch(n=n, parallel=parallel, sleep_ms=sleep_ms),
                              run_id=run_id, store=store)
    elapsed = time.perf_counter() - started
    assert out.count == n and out.total == n * (n - 1) // 2, out
    return elapsed


def _dbos_unavailable(ctx: Context) -> str | None:
    return _dbos.available() if ctx.dbos is not None else "DBOS disabled"


def _s3_unavailable(ctx: Context) -> str | None:
    return None if ctx.env.s3_store else "no S3 endpoint"


def _dispatch_variants(ctx: Context, parallel: bool) -> list[Variant]:
    env = ctx.env
    return [
        Variant(RAW, lambda n: raw_run(n, parallel)),
        Variant(RAW_ASYNC, lambda n: raw_run(n, parallel, awaited=True)),
        Variant(RAW_ACTOR, lambda n: raw_actor_run(n, parallel)),
        Variant(FILE, lambda n: runtime_run(BenchApp, env.file_store, n, parallel)),
        Variant(POOL, lambda n: runtime_run(PoolBenchApp, env.file_store, n, parallel)),
        Variant(S3, lambda n: runtime_run(BenchApp, env.s3_store or "", n, parallel),
                unavailable=_s3_unavailable(ctx)),
        Variant(DBOS, lambda n: ctx.dbos.run(n, parallel),  # type: ignore[union-attr]
                unavailable=_dbos_unavailable(ctx)),
    ]


def _range(values: list[float]) -> str:
    if len(values) < 2:
        return ""
    return f"{fmt_s(min(values))}-{fmt_s(max(values))}"


def _overlap_note(m: Measured, a: str, b: str, sizes: list[int], t: Table) -> None:
    """Say so when two variants' min-max ranges overlap: their ratio is within the noise."""
    within = []
    for n in sizes:
        x, y = m.get(a, n), m.get(b, n)
        if len(x) > 1 and len(y) > 1 and min(x) <= max(y) and min(y) <= max(x):
            within.append(str(n))
    if within:
        t.notes.append(f"At N={', '.join(within)} the ranges of '{a}' and '{b}' overlap: their "
                       "ratio is within this machine's run-to-run noise.")


def _errors_as_notes(m: Measured, table: Table) -> None:
    for name, why in m.errors.items():
        table.notes.append(f"{name}: not measured ({why})")


def _figures(m: Measured, table: Table) -> None:
    for variant, n in m.samples:
        table.figures[f"{variant}@{n}"] = m.median(variant, n)


# -- cases 1 and 2: fan-out and sequential no-op tasks --------------------------------------------


DISPATCH_ROWS = (RAW, RAW_ACTOR, RAW_ASYNC, FILE, S3, POOL, DBOS)


def _dispatch_table(key: str, title: str, m: Measured, sizes: list[int]) -> Table:
    t = Table(key, title, ["N", "variant", "median", "range", "÷ raw Ray", "÷ raw actor calls",
                           "overhead/task vs raw Ray", "DBOS ÷ this"])
    for n in sizes:
        raw, actor, dbos = m.median(RAW, n), m.median(RAW_ACTOR, n), m.median(DBOS, n)
        for name in DISPATCH_ROWS:
            med = m.median(name, n)
            if med is None:
                continue
            ratio = med / raw if raw else None
            over = f"{(med - raw) / n * 1000:+.3f} ms" if raw and name != RAW else ""
            vs_actor = fmt_ratio(med / actor) if actor and name in (POOL, RAW_ACTOR) else ""
            vs_dbos = fmt_ratio(dbos / med) if dbos and name != DBOS else ""
            t.rows.append([str(n), name, fmt_s(med), _range(m.get(name, n)), fmt_ratio(ratio),
                           vs_actor, over, vs_dbos])
    _figures(m, t)
    _errors_as_notes(m, t)
    return t


async def case_fanout(ctx: Context) -> Table:
    sizes = ctx.sizes_for("fanout")
    m = await interleave("fanout", _dispatch_variants(ctx, True), sizes, ctx.repeat, ctx.warmup)
    t = _dispatch_table("fanout", "1. Fan-out: N no-op tasks with asyncio.gather", m, sizes)
    t.notes += [
        *_DISPATCH_NOTES,
        "Raw Ray: `ray.get([raw_noop.remote(i) for i in range(N)])`; raw actor calls: "
        f"`ray.get([actors[i % {POOL_SIZE}].noop.remote(i) ...])` on {POOL_SIZE} warm actors.",
    ]
    return t


_DISPATCH_NOTES = [
    "Runtime figures are whole runs as `run_app_async` does them: validate input, take the "
    "lease, write the run record, load the journal, run(), on_complete() (its two cleanup "
    "tasks are answered in the driver), final record, release the lease.",
    f"'{POOL}' is the same app with `@task(pool=...)` on a `Pool(size={POOL_SIZE})` of warm "
    "executor actors (started by the warm-up run and kept warm, as the raw actors are); "
    f"'{RAW_ACTOR}' is its limit.",
    f"'{RAW_ASYNC}' is the raw remote functions awaited through asyncio, the way the runtime "
    "awaits its attempts: an extra row, not the limit.",
    "DBOS steps run in the driver process, not on Ray: every DBOS figure is in-process async "
    "steps with a SQLite checkpoint per step.",
]


async def case_sequential(ctx: Context) -> Table:
    sizes = ctx.sizes_for("sequential")
    m = await interleave("sequential", _dispatch_variants(ctx, False), sizes, ctx.repeat,
                         ctx.warmup)
    t = _dispatch_table("sequential", "2. Sequential: N no-op tasks awaited one after the other",
                        m, sizes)
    t.notes += [
        *_DISPATCH_NOTES,
        "Raw Ray: `ray.get(raw_noop.remote(i))` in a loop (one round trip each); raw actor "
        f"calls: `ray.get(actors[i % {POOL_SIZE}].noop.remote(i))` in a loop."]
    ties = [str(n) for n in sizes
            if (d := m.median(DBOS, n)) is not None and (r := m.median(RAW, n)) is not None
            and d <= r * 1.1]
    if ties:
        t.notes.append(
            f"At N={', '.join(ties)} a DBOS step (an in-process SQLite commit) costs no more "
            "than 1.1x a raw Ray round trip: the limit itself is level with DBOS here, so no "
            "runtime that dispatches every task as a Ray task can be well ahead of it on "
            f"sequential tasks; a pool ('{POOL}', no Ray task per attempt) can.")
    return t


# -- case 3: resume of a run whose N tasks are all recorded ----------------------------------------


def _runtime_resume_variant(name: str, store: str | None, unavailable: str | None) -> Variant:
    recorded: dict[int, str] = {}

    async def setup(n: int) -> None:
        run_id = f"resume-{n}-{uuid.uuid4().hex[:8]}"
        await runtime_run(BenchApp, store or "", n, True, run_id=run_id)
        recorded[n] = run_id

    async def measure(n: int) -> float:
        from storage import RunStore, open_store

        from ._probe import mark_failed

        run_id = recorded[n]
        await asyncio.to_thread(mark_failed, store or "", run_id)
        elapsed = await runtime_run(BenchApp, store or "", n, True, run_id=run_id)
        record = RunStore(open_store(store), BenchApp.name, run_id).read_run()
        replayed = (record.progress or {}).get("replayed") if record else None
        if replayed is not None and replayed < n:
            raise AssertionError(f"resume replayed {replayed} of {n} recorded tasks")
        return elapsed

    return Variant(name, measure, setup, unavailable)


def _dbos_resume_variant(ctx: Context) -> Variant:
    recorded: dict[int, str] = {}

    async def setup(n: int) -> None:
        recorded[n] = await ctx.dbos.prepare_recorded(n)  # type: ignore[union-attr]

    async def measure(n: int) -> float:
        return await ctx.dbos.recover(recorded[n], n)  # type: ignore[union-attr]

    return Variant(DBOS, measure, setup, _dbos_unavailable(ctx))


async def case_resume(ctx: Context) -> Table:
    sizes = ctx.sizes_for("resume")
    env = ctx.env
    variants = [
        _runtime_resume_variant(FILE, env.file_store, None),
        _runtime_resume_variant(S3, env.s3_store, _s3_unavailable(ctx)),
        _dbos_resume_variant(ctx),
    ]
    from ._probe import LEASES_LEFT_HELD

    held_before = len(LEASES_LEFT_HELD)
    m = await interleave("resume", variants, sizes, ctx.repeat)
    held = len(LEASES_LEFT_HELD) - held_before
    targets = {FILE: 1.0, S3: 3.0}
    t = Table("resume", "3. Resume of a run whose N tasks are all recorded",
              ["N", "variant", "median", "range", "per recorded task", "target (N=5000)",
               "DBOS ÷ this"])
    for n in sizes:
        dbos = m.median(DBOS, n)
        for name in (FILE, S3, DBOS):
            med = m.median(name, n)
            if med is None:
                continue
            target = f"< {targets[name]:.0f} s" if name in targets else ""
            vs_dbos = fmt_ratio(dbos / med) if dbos and name != DBOS else ""
            t.rows.append([str(n), name, fmt_s(med), _range(m.get(name, n)),
                           f"{med / n * 1e6:.0f} µs", target, vs_dbos])
    _figures(m, t)
    _errors_as_notes(m, t)
    t.notes += [
        "Runtime: a run of N gathered tasks is completed once (untimed), then before each timed "
        "resume its run record is set back to FAILED, so `run_app_async` replays run() from the "
        "journal instead of returning the stored output. The replay path is the same one a "
        "crashed (RUNNING, lease expired) or failed run takes. Each resume is checked to have "
        "replayed all N tasks; it dispatches only on_complete()'s two cleanup tasks, which "
        "are journaled under a new on_complete/<finish_count>/ key on every finish.",
        "DBOS: a completed workflow of N gathered steps is set back to PENDING (its output row "
        "deleted), then `DBOS._recover_pending_workflows()` is timed until the result is back; "
        "checked that no step body ran again. Includes DBOS's internal-queue dequeue.",
        f"Runtime bug met {held} time(s) in this case: a finished driver of this process left "
        "its run's lease held (the lease-renewal thread is not joined before "
        "`Lease.release()`, whose compare-and-swap then fails silently), so the next resume "
        "would get LeaseHeldError until the 30 s expiry; the harness releases such a lease "
        "before the next timed resume (untimed). See PROFILE.md.",
    ]
    t.figures["leases_left_held"] = held
    return t


# -- case 4: N tasks that each sleep 50 ms --------------------------------------------------------


async def case_sleep(ctx: Context) -> Table:
    import ray

    sizes = ctx.sizes_for("sleep")
    env = ctx.env
    cpus = int(ray.cluster_resources().get("CPU", 1))
    variants = [
        Variant(RAW, lambda n: raw_run(n, True, SLEEP_MS)),
        Variant(FILE, lambda n: runtime_run(BenchApp, env.file_store, n, True, SLEEP_MS)),
        Variant(S3, lambda n: runtime_run(BenchApp, env.s3_store or "", n, True, SLEEP_MS),
                unavailable=_s3_unavailable(ctx)),
    ]
    m = await interleave("sleep", variants, sizes, ctx.repeat, warmup=4)
    t = Table("sleep", f"4. N tasks that each sleep {SLEEP_MS} ms, gathered "
                       f"(ideal = N x {SLEEP_MS} ms / {cpus} CPUs)",
              ["N", "variant", "median", "range", "ideal", "÷ ideal", "÷ raw Ray"])
    for n in sizes:
        ideal = n * SLEEP_MS / 1000 / cpus
        raw = m.median(RAW, n)
        for name in (RAW, FILE, S3):
            med = m.median(name, n)
            if med is None:
                continue
            t.rows.append([str(n), name, fmt_s(med), _range(m.get(name, n)), fmt_s(ideal),
                           fmt_ratio(med / ideal), fmt_ratio(med / raw if raw else None)])
    _figures(m, t)
    _errors_as_notes(m, t)
    t.notes.append(
        f"Tasks sleep with time.sleep, holding their Ray worker (1 CPU each) like real work; the "
        f"driver shares the {os.cpu_count()} cores with the workers. DBOS is not in this case: "
        "its steps are not scheduled on CPU slots, so the ideal does not apply to it."
    )
    return t


# -- case 5: driver memory ------------------------------------------------------------------------


def run_probe(env: Environment, variant: str, n: int, run_id: str | None = None,
              extra_env: dict[str, str] | None = None, timeout: float = 900) -> dict[str, Any]:
    """Run `python -m benchmarks._probe` attached to this run's Ray; its JSON result."""
    penv = {**os.environ, "RAY_ADDRESS": env.ray_address, **(extra_env or {})}
    path = penv.get("PYTHONPATH", "")
    penv["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), path) if p)
    cmd = [sys.executable, "-m", "benchmarks._probe", variant, str(n), "--store",
           env.file_store]
    if run_id:
        cmd += ["--run-id", run_id]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=penv,
                          cwd=str(REPO))
    if proc.returncode != 0:
        raise RuntimeError(f"probe {variant} N={n} exited {proc.returncode}: "
                           f"{proc.stderr.strip()[-800:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


MEMORY_VARIANTS = {
    "raw Ray fan-out": "raw-fanout",
    "runtime fan-out": "runtime-fanout",
    "raw Ray sequential": "raw-seq",
    "runtime sequential": "runtime-seq",
    "runtime resume (replay N)": "runtime-resume",
    "run() alone (tasks as method calls)": "app-alone",
}
APP_ALONE = "run() alone (tasks as method calls)"


async def case_memory(ctx: Context) -> Table:
    sizes = ctx.sizes_for("memory")
    env = ctx.env
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    recorded: dict[int, str] = {}

    def variant(name: str, probe: str) -> Variant:
        async def measure(n: int) -> float:
            run_id = recorded.get(n) if probe == "runtime-resume" else None
            r = await asyncio.to_thread(run_probe, env, probe, n, run_id)
            results.setdefault((name, n), []).append(r)
            return (r["peak"] - r["baseline"]) / n

        async def setup(n: int) -> None:
            run_id = f"mem-{n}-{uuid.uuid4().hex[:8]}"
            await runtime_run(BenchApp, env.file_store, n, True, run_id=run_id)
            recorded[n] = run_id

        return Variant(name, measure, setup if probe == "runtime-resume" else None)

    variants = [variant(name, probe) for name, probe in MEMORY_VARIANTS.items()]
    m = await interleave("memory", variants, sizes, ctx.repeat)
    t = Table("memory", "5. Driver memory (RSS) growth per task, in a fresh driver process",
              ["N", "variant", "baseline RSS", "peak growth", "peak growth/task",
               "retained/task", "run time"])
    for n in sizes:
        for name in MEMORY_VARIANTS:
            rs = results.get((name, n))
            if not rs:
                continue
            per_task = m.median(name, n) or 0.0
            growth = _median([r["peak"] - r["baseline"] for r in rs])
            retained = _median([(r["after"] - r["baseline"]) / n for r in rs])
            t.rows.append([str(n), name, f"{_median([r['baseline'] for r in rs]) / 2**20:.0f} MB",
                           f"{growth / 2**20:.1f} MB", f"{per_task:,.0f} B",
                           f"{retained:,.0f} B", fmt_s(_median([r["seconds"] for r in rs]))])
    _figures(m, t)
    for n in sizes:  # what the runtime adds per recorded task over the app's own run()
        resume, alone = m.median("runtime resume (replay N)", n), m.median(APP_ALONE, n)
        if resume is not None and alone is not None:
            t.figures[f"runtime resume over run() alone@{n}"] = resume - alone
            t.notes.append(f"N={n}: a resume's peak growth over run() alone: "
                           f"{resume - alone:,.0f} B per recorded task.")
    _slopes(m, sizes, t)
    _errors_as_notes(m, t)
    t.notes += [
        f"'{APP_ALONE}' is BenchApp.run() called outside the runtime, its tasks plain method "
        "calls in the driver: the memory of the app's own inputs, gathered coroutines and "
        "outputs, which any driver of this run() holds. The runtime's own cost per recorded "
        "task is the resume row minus this row.",
        "Each figure is its own driver process (`python -m benchmarks._probe`) attached to this "
        f"run's Ray: a {WARMUP_TASKS}-task warm-up run, then baseline RSS, then the peak RSS "
        "(kernel VmHWM reset before the run) during one run of N tasks. peak growth/task = "
        "(peak - baseline) / N; retained/task = (RSS after the run and gc - baseline) / N.",
        "The runtime's 'per recorded task' figure is the resume row: the journal index of N "
        "recorded tasks is all the driver holds. Fan-out rows also hold N in-flight coroutines, "
        "asyncio futures and ObjectRefs at once (raw Ray pays those too).",
        "What a recorded task holds in the driver, by allocation site (the app's own inputs "
        "and asyncio.gather included): PROFILE.md, from `python -m benchmarks.profiling "
        "memory`.",
    ]
    return t


def _median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _slopes(m: Measured, sizes: list[int], t: Table) -> None:
    """Marginal bytes per task between the smallest and largest size (fixed costs cancel)."""
    if len(sizes) < 2:
        return
    lo, hi = sizes[0], sizes[-1]
    parts = []
    for name in MEMORY_VARIANTS:
        a, b = m.median(name, lo), m.median(name, hi)
        if a is None or b is None:
            continue
        slope = (b * hi - a * lo) / (hi - lo)
        t.figures[f"{name}@slope"] = slope
        parts.append(f"{name} {slope:,.0f} B")
    if parts:
        t.notes.append(f"Marginal peak growth per task between N={lo} and N={hi}: "
                       + "; ".join(parts) + ".")


# -- case 6: heartbeats ---------------------------------------------------------------------------


def _runtime_source() -> str:
    texts = []
    for folder in ("runtime", "application_sdk"):
        for path in sorted((REPO / folder).rglob("*.py")):
            texts.append(path.read_text(errors="replace"))
    return "\n".join(texts)


def heartbeat_monitor_present() -> bool:
    """Whether the runtime has a heartbeat monitor actor (issue 3): a class with `beat()`."""
    return bool(re.search(r"def beat\(self", _runtime_source()))


async def case_heartbeat(ctx: Context) -> Table:
    sizes = ctx.sizes_for("heartbeat")
    env = ctx.env
    off, on = "no heartbeat", "auto_heartbeat_seconds=1"
    variants = [
        Variant(RAW, lambda n: raw_run(n, True)),
        Variant(off, lambda n: runtime_run(NoHeartbeatApp, env.file_store, n, True)),
        Variant(on, lambda n: runtime_run(HeartbeatApp, env.file_store, n, True)),
    ]
    m = await interleave("heartbeat", variants, sizes, ctx.repeat, ctx.warmup)
    t = Table("heartbeat", "6. Heartbeat overhead: fan-out of N no-op tasks on file://",
              ["N", "variant", "median", "range", "÷ no heartbeat", "÷ raw Ray"])
    for n in sizes:
        base, raw = m.median(off, n), m.median(RAW, n)
        for name in (RAW, off, on):
            med = m.median(name, n)
            if med is None:
                continue
            t.rows.append([str(n), name, fmt_s(med), _range(m.get(name, n)),
                           fmt_ratio(med / base) if base and name != RAW else "",
                           fmt_ratio(med / raw if raw else None)])
    _figures(m, t)
    _errors_as_notes(m, t)
    _overlap_note(m, off, on, sizes, t)
    present = heartbeat_monitor_present()
    t.figures["monitor_present"] = present
    t.notes.append(
        "Heartbeat monitor in the runtime: "
        + ("present (the driver starts one per run)." if present else
           "NOT YET (runtime/_driver.py builds RayExecutor without a monitor, so tasks never "
           "beat); both rows measure the same code path until it lands.")
    )
    t.notes.append("No-op tasks finish before their first beat (sent after min(period, 1 s)): "
                   "the figure is the cost of heartbeat plumbing per task and per run. 'no "
                   "heartbeat' is @task(auto_heartbeat_seconds=None, heartbeat_timeout_seconds="
                   "None); the default task (case 1) beats every 10 s.")
    return t


# -- case 7: determinism guards -------------------------------------------------------------------


def guard_switch() -> tuple[str | None, bool]:
    """(name of the env var that turns the guards off, whether guards exist at all)."""
    src = _runtime_source().replace("class NondeterminismError(", "")
    names = sorted(set(re.findall(r"CONNECTOR_RUNTIME_[A-Z_]*GUARD[A-Z_]*", src)))
    return (names[0] if names else None), "NondeterminismError(" in src


async def case_guards(ctx: Context) -> Table:
    sizes = ctx.sizes_for("guards")
    t = Table("guards", "7. Determinism-guard overhead: N no-op tasks, sequential and gathered",
              ["N", "shape", "variant", "median", "range", "÷ guards off"])
    switch, exist = guard_switch()
    t.figures["switch"] = switch
    if switch is None:
        t.notes.append(
            "N/A: " + ("guards found but no environment switch to turn them off"
                       if exist else "the runtime has no determinism guards yet (issue 4)")
            + "; nothing to compare. Looked for CONNECTOR_RUNTIME_*GUARD* in runtime/ and "
            "application_sdk/."
        )
        return t
    off, on = f"{switch}=0", f"{switch}=1"
    fanout = [max(sizes) * 10 // 3] if not ctx.quick else sizes  # 300 -> 1,000 gathered

    def variant(name: str, value: str, probe: str) -> Variant:
        async def measure(n: int) -> float:
            r = await asyncio.to_thread(run_probe, ctx.env, probe, n, None, {switch: value})
            return float(r["seconds"])

        return Variant(name, measure)

    for shape, probe, shape_sizes in (("sequential", "runtime-seq", sizes),
                                      ("gathered", "runtime-fanout", fanout)):
        m = await interleave(f"guards {shape}", [variant(off, "0", probe),
                                                 variant(on, "1", probe)],
                             shape_sizes, ctx.repeat)
        for n in shape_sizes:
            base = m.median(off, n)
            for name in (off, on):
                med = m.median(name, n)
                if med is None:
                    continue
                t.rows.append([str(n), shape, name, fmt_s(med), _range(m.get(name, n)),
                               fmt_ratio(med / base if base else None)])
        if shape == "sequential":
            _figures(m, t)
        else:
            for n in shape_sizes:
                for name in (off, on):
                    med = m.median(name, n)
                    if med is not None:
                        t.figures[f"gathered {name} {n}"] = med
        _errors_as_notes(m, t)
        _overlap_note(m, off, on, shape_sizes, t)
    t.notes.append(f"Each figure is a fresh driver process with {switch} set (a switch read at "
                   "import works too), after a 20-task warm-up run. With the switch off no "
                   "profile hook is installed, so the gathered rows measure the hook's cost on "
                   "the driver's dispatch of a fan-out.")
    return t


# -- the list -------------------------------------------------------------------------------------

CaseFn = Callable[[Context], Awaitable[Table]]


def _extra(name: str) -> CaseFn:
    async def run(ctx: Context) -> Table:
        from . import _extra as extra

        return await getattr(extra, f"case_{name}")(ctx)

    return run


CASES: dict[str, CaseFn] = {
    "fanout": case_fanout,
    "sequential": case_sequential,
    "resume": case_resume,
    "sleep": case_sleep,
    "memory": case_memory,
    "heartbeat": case_heartbeat,
    "guards": case_guards,
    "sql": _extra("sql"),
    "startup": _extra("startup"),
    "files": _extra("files"),
    "checkpoint": _extra("checkpoint"),
    "jobs": _extra("jobs"),
    "service": _extra("service"),
    "observe": _extra("observe"),
}
