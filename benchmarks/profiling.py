"""Where the runtime's time goes: the measurements behind benchmarks/PROFILE.md.

    python -m benchmarks.profiling spy fanout 1000 file     # py-spy of the driver, one run
    python -m benchmarks.profiling breakdown                # per-task cost, layer by layer
    python -m benchmarks.profiling whatif fanout 1000 file  # candidate fixes, monkeypatched
    python -m benchmarks.profiling requests 1000            # S3 requests per run (moto log)
    python -m benchmarks.profiling memory 5000              # what a recorded task holds

Needs py-spy for `spy` (`.venv/bin/pip install py-spy`; not a project dependency). Every
command starts its own local Ray (2 CPUs) and, for S3, its own moto server, like the
benchmarks do. `whatif` patches the driver process only (never the code on disk): each patch
stands for a change proposed in PROFILE.md, so the gain is measured before anyone makes it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["main"]

IDLE_LEAVES = ("EpollSelector.select", "Condition.wait", "Event.wait", "_worker (concurrent",
               "Semaphore.acquire", "Thread.join")


# -- shared set-up --------------------------------------------------------------------------------


@contextlib.contextmanager
def _stores(kind: str, moto_log: str | None = None) -> Iterator[str]:
    """A Ray for this process and a store URL of `kind` (file or s3)."""
    from ._env import moto_server, new_bucket, ray_for_benchmarks

    with contextlib.ExitStack() as stack:
        endpoint = stack.enter_context(moto_server(log_path=moto_log)) if kind == "s3" else None
        stack.enter_context(ray_for_benchmarks())
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-profile-"))
        yield f"s3://{new_bucket(endpoint)}/store" if endpoint else os.path.join(folder, "s")


async def _one_run(case: str, n: int, store: str, app: Any = None,
                   run_id: str | None = None) -> float:
    from ._cases import raw_run, runtime_run
    from .apps import BenchApp

    if case.startswith("raw-actor"):
        from ._cases import raw_actor_run

        return await raw_actor_run(n, case == "raw-actor-fanout")
    if case.startswith("raw"):
        return await raw_run(n, case == "raw-fanout")
    return await runtime_run(app or BenchApp, store, n, case != "sequential", run_id=run_id)


# -- spy: py-spy on a driver process during one measured run --------------------------------------


def _driver(case: str, n: int, kind: str, app_name: str, patch_names: list[str]) -> None:
    """The profiled process: warm up, say READY, wait for GO on stdin, run once, say DONE."""
    from . import apps

    app = getattr(apps, app_name)
    patches = _patches()
    for name in patch_names:
        patches[name]()
    with _stores(kind) as store:
        async def go() -> None:
            await _one_run("fanout", 20, store, app=app)
            await _one_run("sequential", 20, store, app=app)
            run_id = None
            if case == "resume":
                run_id = f"spy-{uuid.uuid4().hex[:8]}"
                await _one_run("fanout", n, store, app=app, run_id=run_id)
                _mark_failed_app(store, app, run_id)
            print(f"READY {os.getpid()}", flush=True)
            await asyncio.to_thread(sys.stdin.readline)
            seconds = await _one_run("fanout" if case == "resume" else case, n, store,
                                     app=app, run_id=run_id)
            print(f"DONE {seconds:.4f}", flush=True)

        asyncio.run(go())


def spy(case: str, n: int, kind: str, rate: int, out: str, app: str = "BenchApp",
        patches: list[str] | None = None, gil: bool = False) -> dict[str, Any]:
    """py-spy (all threads) of the driver during one run; returns the parsed profile."""
    cmd = [sys.executable, "-m", "benchmarks.profiling", "_driver", case, str(n), kind,
           "--app", app, *[f"--patch={p}" for p in patches or ()]]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            stderr=subprocess.DEVNULL, cwd=os.path.dirname(os.path.dirname(
                                os.path.abspath(__file__))))
    assert proc.stdout is not None and proc.stdin is not None
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.kill()
        raise RuntimeError(f"profiled driver did not start: {line!r}")
    pid = int(line.split()[1])
    pyspy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    spy_proc = subprocess.Popen([pyspy, "record", "--pid", str(pid), "--threads", "--rate",
                                 str(rate), "--format", "raw", "--output", out,
                                 "--nonblocking", *(["--gil"] if gil else [])],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)  # py-spy attached
    proc.stdin.write("GO\n")
    proc.stdin.flush()
    done = proc.stdout.readline()
    spy_proc.send_signal(signal.SIGINT)
    spy_proc.wait(timeout=60)
    proc.wait(timeout=120)
    seconds = float(done.split()[1]) if done.startswith("DONE") else float("nan")
    return {"seconds": seconds, **parse_raw(out)}


def _frame(name: str) -> str:
    return re.sub(r" \(([^)]*?):\d+\)$", r" (\1)", name)


def parse_raw(path: str) -> dict[str, Any]:
    """Busy samples per thread; inclusive and self counts of the main thread and of all."""
    threads: collections.Counter[str] = collections.Counter()
    incl: dict[str, collections.Counter[str]] = {"main": collections.Counter(),
                                                 "all": collections.Counter()}
    self_: dict[str, collections.Counter[str]] = {"main": collections.Counter(),
                                                  "all": collections.Counter()}
    busy = {"main": 0, "all": 0}
    with open(path) as fh:
        for line in fh:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack:
                continue
            frames = stack.split(";")
            if frames[-1].startswith(IDLE_LEAVES):
                continue
            weight = int(count)
            thread = re.sub(r"thread \(\d+\):? ?", "", frames[0]) or "(unnamed)"
            thread = re.sub(r"_\d+$", "_N", thread)  # asyncio_0..5 are one pool
            threads[thread] += weight
            scopes = ("all", "main") if thread == "MainThread" else ("all",)
            names = [_frame(f) for f in frames[1:]]
            for scope in scopes:
                busy[scope] += weight
                for name in set(names):
                    incl[scope][name] += weight
                if names:
                    self_[scope][names[-1]] += weight
    return {"threads": threads, "incl": incl, "self": self_, "busy": busy}


def report_spy(p: dict[str, Any], rate: int, top: int = 25) -> str:
    lines = [f"run: {p['seconds']:.3f} s; busy samples at {rate} Hz: "
             f"{p['busy']['all']} all threads ({p['busy']['all'] / rate:.2f} s), "
             f"{p['busy']['main']} main thread ({p['busy']['main'] / rate:.2f} s)",
             "busy by thread: " + ", ".join(
                 f"{t} {100 * c / max(1, p['busy']['all']):.0f}%"
                 for t, c in p["threads"].most_common(6))]
    for scope, label in (("main", "main thread"), ("all", "all threads")):
        total = max(1, p["busy"][scope])
        lines.append(f"-- {label}: inclusive % of busy samples")
        lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in p["incl"][scope].most_common(top)
                  if _interesting(f)]
        lines.append(f"-- {label}: self %")
        lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in p["self"][scope].most_common(12)]
    return "\n".join(lines)


def _interesting(frame: str) -> bool:
    boring = ("<module>", "run (asyncio/runners.py)", "Runner.run", "run_until_complete",
              "run_forever", "_run_once", "Handle._run", "Thread._bootstrap", "Thread.run",
              "go (benchmarks/profiling.py)", "_one_run", "_driver (", "main (benchmarks",
              "<lambda>", "_WorkItem.run", "_run_module", "_run_code", "_stores")
    return not any(b in frame for b in boring)


# -- breakdown: per-task cost, layer by layer ----------------------------------------------------


async def _breakdown(n: int, repeat: int) -> dict[str, dict[str, float]]:
    import msgpack
    import ray

    from runtime._runcontext import RunContext
    from runtime.dispatch import shared_monitor
    from runtime.worker import pack_attempt, remote_for

    from .apps import BenchApp, Item, raw_noop

    @ray.remote(max_retries=0, retry_exceptions=False)
    def four_args(task_name: str, payload: bytes, run: Any, info: Any) -> bytes:
        return payload

    @ray.remote(max_retries=0, retry_exceptions=False)
    def one_blob(blob: bytes) -> bytes:
        return blob[:16]

    _, name = await shared_monitor()
    ctx = RunContext("run-x", "BenchApp", "file:///tmp/unused", None)
    ctx_args = (ctx.run_id, ctx.app_name, ctx.store_url, ctx.store_options)
    packed = ctx.packed()
    attempt = remote_for(BenchApp)
    payloads = [msgpack.packb(Item(index=i).model_dump(mode="json")) for i in range(n)]

    def info(i: int, mon: Any, hb: tuple[Any, ...]) -> tuple[Any, ...]:
        return (f"work:0123456789abcdef0123:{i}", 1, None, mon, hb)

    layers: dict[str, Callable[[int], Any]] = {
        "A. raw Ray: noop(i)": lambda i: raw_noop.remote(i),
        "B. no-op taking the four arguments sent before 2026-11-28 (name, input, context, info)":
            lambda i: four_args.remote("work", payloads[i], ctx_args, info(i, name, (10,))),
        "C. no-op taking the one msgpack blob sent today (`_worker.pack_attempt`)":
            lambda i: one_blob.remote(pack_attempt("work", payloads[i], packed,
                                                   info(i, name, (10,)))),
        "D. the runtime's task wrapper (`_worker.execute`), heartbeats off":
            lambda i: attempt.remote(pack_attempt("work", payloads[i], packed, info(i, None, ()))),
        "E. the runtime's task wrapper with the default auto_heartbeat, as dispatched today":
            lambda i: attempt.remote(pack_attempt("work", payloads[i], packed,
                                                  info(i, name, (10,)))),
    }
    for call in layers.values():  # warm-up
        await asyncio.gather(*(call(i) for i in range(min(n, 20))))
    out: dict[str, dict[str, list[float]]] = {k: {"seq": [], "fan": []} for k in layers}
    for rep in range(repeat):
        names = list(layers)
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            call = layers[name]
            started = time.perf_counter()
            for i in range(n):
                await call(i)
            out[name]["seq"].append((time.perf_counter() - started) / n * 1000)
            started = time.perf_counter()
            await asyncio.gather(*(call(i) for i in range(n)))
            out[name]["fan"].append((time.perf_counter() - started) / n * 1000)
    return {k: {m: statistics.median(v) for m, v in d.items()} for k, d in out.items()}


def breakdown(n: int, repeat: int) -> str:
    with _stores("file"):
        res = asyncio.run(_breakdown(n, repeat))
    lines = [f"| remote call (N={n}, median of {repeat}) | sequential ms/task | fan-out ms/task |",
             "|---|---|---|"]
    lines += [f"| {k} | {v['seq']:.3f} | {v['fan']:.3f} |" for k, v in res.items()]
    return "\n".join(lines)


# -- whatif: candidate fixes, simulated by patching the driver ------------------------------------


def _patches() -> dict[str, Callable[[], Callable[[], None]]]:
    """name -> install(); install returns undo(). Each stands for a proposed change."""
    import runtime.driver._journal as jr
    from storage import _store

    def bulk_delete() -> Callable[[], None]:
        original = _store.Store.delete

        def delete(self: Any, keys: list[str]) -> None:
            if self.protocol != "s3" or len(keys) < 2:
                return original(self, keys)
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm([self.path(k) for k in keys])  # DeleteObjects, 1,000 keys a call

        _store.Store.delete = delete  # type: ignore[method-assign]
        return lambda: setattr(_store.Store, "delete", original)

    def no_journal_io() -> Callable[[], None]:
        original = jr.GroupCommitter._write
        jr.GroupCommitter._write = lambda self, batch: None  # type: ignore[method-assign]
        return lambda: setattr(jr.GroupCommitter, "_write", original)

    def s3_get_only() -> Callable[[], None]:
        original = _store.Store.read_many

        def read_many(self: Any, keys: list[str]) -> dict[str, bytes]:
            if self.protocol != "s3" or not keys:
                return original(self, keys)
            got = self.fs.cat([self.path(k) for k in keys], on_error="omit", max_concurrency=1)
            found = {self._key(p): d for p, d in got.items() if isinstance(d, bytes)}
            return {k: v for k, v in found.items() if k in set(keys)}

        _store.Store.read_many = read_many  # type: ignore[method-assign]
        return lambda: setattr(_store.Store, "read_many", original)

    def no_cleanup_storage() -> Callable[[], None]:
        from application_sdk.app import App

        original = App.on_complete

        async def on_complete(self: Any) -> None:  # cleanup_files only
            await self.cleanup_files()

        App.on_complete = on_complete  # type: ignore[method-assign]
        return lambda: setattr(App, "on_complete", original)

    def batch_wait(seconds: float) -> Callable[[], Callable[[], None]]:
        def install() -> Callable[[], None]:
            original = jr.GroupCommitter.__init__

            def init(self: Any, *args: Any, **kwargs: Any) -> None:
                original(self, *args, **kwargs)
                self.interval = seconds

            jr.GroupCommitter.__init__ = init  # type: ignore[method-assign]
            return lambda: setattr(jr.GroupCommitter, "__init__", original)

        return install

    def pool_at_once() -> Callable[[], None]:
        from runtime.dispatch import _pool

        original = _pool.PoolDispatcher._wake

        def wake(self: Any) -> None:  # a lone attempt and an idle actor: no loop turn first
            if len(self.queue) == 1 and any(s.ready and s.batch is None for s in self.slots):
                self._dispatch()
                return
            original(self)

        _pool.PoolDispatcher._wake = wake  # type: ignore[method-assign]
        return lambda: setattr(_pool.PoolDispatcher, "_wake", original)

    return {"bulk delete": bulk_delete,
            "pool dispatches a lone attempt at once": pool_at_once,
            "no journal writes (upper bound)": no_journal_io,
            "S3 reads without HEAD": s3_get_only,
            "no cleanup_storage task": no_cleanup_storage,
            "group commit waits 50 ms": batch_wait(0.05),
            "group commit waits 20 ms": batch_wait(0.02)}


WHATIF: dict[str, tuple[str, tuple[str, ...]]] = {
    # variant: (app of benchmarks/apps.py, patches applied in this process)
    "raw Ray": ("raw", ()),
    "as is": ("BenchApp", ()),
    "heartbeats off (NoHeartbeatApp)": ("NoHeartbeatApp", ()),
    "group commit waits 20 ms": ("BenchApp", ("group commit waits 20 ms",)),
    "no journal writes (upper bound)": ("BenchApp", ("no journal writes (upper bound)",)),
    "raw actor calls": ("raw-actor", ()),
    "on a pool (PoolBenchApp)": ("PoolBenchApp", ()),
    "on a pool, no journal writes (upper bound)": ("PoolBenchApp",
                                                   ("no journal writes (upper bound)",)),
    "on a pool, a lone attempt dispatched at once": ("PoolBenchApp",
                                                     ("pool dispatches a lone attempt at once",)),
}
_S3_FIXES = ("S3 reads without HEAD", "no cleanup_storage task", "bulk delete",
             "group commit waits 50 ms")
WHATIF_S3: dict[str, tuple[str, tuple[str, ...]]] = {
    "raw Ray": ("raw", ()),
    "as is": ("BenchApp", ()),
    "S3 reads without HEAD (driver)": ("BenchApp", _S3_FIXES[:1]),
    "+ no cleanup_storage task": ("BenchApp", _S3_FIXES[:2]),
    "+ bulk delete of compacted segments": ("BenchApp", _S3_FIXES[:3]),
    "+ group commit waits 50 ms": ("BenchApp", _S3_FIXES),
}


async def _whatif(case: str, n: int, store: str, repeat: int,
                  variants: dict[str, tuple[str, tuple[str, ...]]]) -> dict[str, float]:
    from . import apps

    patches = _patches()

    async def one(name: str, size: int) -> float:
        app_name, names = variants[name]
        undo = [patches[p]() for p in names]
        try:
            raw = "raw-fanout" if case != "sequential" else "raw-seq"
            if app_name == "raw":
                return await _one_run(raw, size, store)
            if app_name == "raw-actor":
                return await _one_run(f"raw-actor-{raw[4:]}", size, store)
            app = getattr(apps, app_name)
            if case == "resume":
                run_id = f"w-{uuid.uuid4().hex[:8]}"
                await _one_run("fanout", size, store, app=app, run_id=run_id)
                _mark_failed_app(store, app, run_id)
                started = time.perf_counter()
                await _one_run("fanout", size, store, app=app, run_id=run_id)
                return time.perf_counter() - started
            return await _one_run(case, size, store, app=app)
        finally:
            for u in reversed(undo):
                u()

    names = [v for v in variants
             if not (case == "resume" and variants[v][0] in ("raw", "raw-actor"))]
    for name in names:
        await one(name, 20)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(repeat):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            samples[name].append(await one(name, n))
    return {name: statistics.median(v) for name, v in samples.items()}


def _mark_failed_app(store: str, app: Any, run_id: str) -> None:
    from ._probe import mark_failed

    mark_failed(store, run_id, app.name)


def whatif(case: str, n: int, kind: str, repeat: int) -> str:
    variants = WHATIF_S3 if kind == "s3" else WHATIF
    with _stores(kind) as store:
        res = asyncio.run(_whatif(case, n, store, repeat, variants))
    raw = res.get("raw Ray")
    lines = [f"| {case} N={n} on {kind} (median of {repeat}) | seconds | ÷ raw Ray | "
             "ms/task over raw |", "|---|---|---|---|"]
    for name, sec in res.items():
        ratio = f"{sec / raw:.2f}x" if raw else "-"
        over = f"{(sec - raw) / n * 1000:+.3f}" if raw else "-"
        lines.append(f"| {name} | {sec:.3f} | {ratio} | {over} |")
    return "\n".join(lines)


# -- requests: S3 requests per run ----------------------------------------------------------------


def _classify(line: str) -> str | None:
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)  # werkzeug colours 4xx and DELETE lines
    match = re.search(r'"(GET|PUT|POST|DELETE|HEAD) (\S+)', line)
    if not match:
        return None
    method, path = match.groups()
    if "?" in path and "list-type" in path:
        return f"{method} list"
    if "?delete" in path:
        return f"{method} delete-objects"
    name = path.split("?")[0].rsplit("/", 1)[-1]
    name = re.sub(r"^\d+-\d+\.msgpack$", "journal segment", name)
    return f"{method} {name}"


def requests(n: int) -> str:
    from ._probe import mark_failed

    log_path = tempfile.mktemp(prefix="bench-moto-", suffix=".log")

    def count(since: int) -> tuple[int, collections.Counter[str]]:
        time.sleep(0.5)  # the server logs a request after answering it
        with open(log_path, errors="replace") as fh:
            lines = fh.read().splitlines()
        kinds = collections.Counter(k for k in map(_classify, lines[since:]) if k)
        return len(lines), kinds

    rows = []
    try:
        with _stores("s3", moto_log=log_path) as store:
            async def go() -> None:
                await _one_run("fanout", 20, store)
                for label, case, size in (("empty run (N=0)", "fanout", 0),
                                          (f"fan-out N={n}", "fanout", n),
                                          ("sequential N=100", "sequential", 100)):
                    before, _ = count(0)
                    run_id = f"r-{uuid.uuid4().hex[:8]}"
                    started = time.perf_counter()
                    await _one_run(case, size, store, run_id=run_id)
                    seconds = time.perf_counter() - started
                    _, kinds = count(before)
                    rows.append((label, seconds, kinds))
                    if case == "fanout" and size:
                        mark_failed(store, run_id)
                        before, _ = count(0)
                        started = time.perf_counter()
                        await _one_run("fanout", size, store, run_id=run_id)
                        seconds = time.perf_counter() - started
                        _, kinds = count(before)
                        rows.append((f"resume of that run (N={n} recorded)", seconds, kinds))

            asyncio.run(go())
    finally:
        with contextlib.suppress(OSError):
            os.unlink(log_path)
    lines = ["| run on moto S3 | seconds | requests | by kind |", "|---|---|---|---|"]
    for label, seconds, kinds in rows:
        by = ", ".join(f"{v} {k}" for k, v in kinds.most_common())
        lines.append(f"| {label} | {seconds:.2f} | {sum(kinds.values())} | {by} |")
    return "\n".join(lines)


# -- memory: what the driver holds per recorded task (tracemalloc) --------------------------------


def memory(n: int, top: int = 15) -> str:
    """tracemalloc of a resume of n recorded tasks: peak per task, and the allocation sites
    alive when the last recorded task is replayed (all n gathered calls exist then)."""
    import tracemalloc

    import runtime.driver._step as step

    from ._probe import mark_failed
    from .apps import BenchApp

    snaps: dict[str, Any] = {}
    with _stores("file") as store:
        async def go() -> tuple[int, int]:
            run_id = f"m-{uuid.uuid4().hex[:8]}"
            await _one_run("fanout", n, store, run_id=run_id)
            await _one_run("fanout", 20, store)  # warm-up of the replay path's imports
            mark_failed(store, run_id)
            original = step.StepRunner.recorded
            calls = 0

            def recorded(self: Any, spec: Any, key: str) -> Any:
                nonlocal calls
                calls += 1
                if calls == n:
                    snaps["last"] = tracemalloc.take_snapshot()
                return original(self, spec, key)

            step.StepRunner.recorded = recorded  # type: ignore[method-assign]
            tracemalloc.start(6)
            base, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            try:
                await _one_run("fanout", n, store, app=BenchApp, run_id=run_id)
            finally:
                step.StepRunner.recorded = original  # type: ignore[method-assign]
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            return base, peak

        base, peak = asyncio.run(go())
    lines = [f"resume of {n} recorded tasks: traced peak {(peak - base) / n:,.0f} B/task "
             f"({(peak - base) / 2**20:.1f} MiB over the start of the run)",
             f"| allocation site alive at the last replayed call (top {top}) | KiB | B/task |",
             "|---|---|---|"]
    snapshot = snaps.get("last")
    if snapshot is not None:
        stats = snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        by_site: collections.Counter[str] = collections.Counter()
        for stat in stats.statistics("traceback"):
            by_site[_site(stat.traceback)] += stat.size
        for where, size in by_site.most_common(top):
            lines.append(f"| {where} | {size / 1024:,.0f} | {size / n:,.0f} |")
    return "\n".join(lines)


def _site(traceback: Any) -> str:
    """The allocating line, and the first caller of ours (runtime, storage, app) above it."""
    frames = list(traceback)  # most recent call last
    alloc = frames[-1]
    where = f"{_short(alloc.filename)}:{alloc.lineno}"
    for frame in reversed(frames[:-1]):
        name = _short(frame.filename)
        if name.startswith(("runtime/", "storage/", "application_sdk/", "benchmarks/")):
            if name != _short(alloc.filename):
                where += f" <- {name}:{frame.lineno}"
            break
    return where


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


# -- command line ---------------------------------------------------------------------------------


def lineage(n: int, repeat: int) -> str:
    """Replaying n recorded gathered calls in-process (no Ray, no store): the orchestrator as
    it is (a coroutine's lineage set per call), without the lineage, and the rejected
    alternative: every recorded call waiting for its turn (a future per call, released in
    record order by the event loop)."""
    import asyncio
    import contextvars
    import statistics

    import msgpack

    from application_sdk import _context
    from benchmarks.apps import BenchApp, Item
    from runtime.driver import JournalIndex, StepRunner
    from runtime.driver import _orchestrator as orch_mod
    from runtime.driver._keys import canonical_json, digest, identity_data

    class _Null:
        has_urgent = False

        def append(self, record: Any, urgent: bool = False) -> None:
            pass

    spec = BenchApp.tasks()["work"]
    records = []
    for i in range(n):
        data = identity_data(Item(index=i))
        key = f"work:{digest(canonical_json(data))}:0"
        records.append({"y": "t", "k": key, "n": "work",
                        "o": msgpack.packb({"index": i}), "a": 1})

    def build() -> Any:
        index = JournalIndex()
        for r in records:
            index.apply(r)
        steps = StepRunner(index, _Null(), None, None)  # type: ignore[arg-type]
        return orch_mod.Orchestrator(BenchApp, steps, index, _Null())  # type: ignore[arg-type]

    async def replay(ordered: bool) -> float:
        orch = build()
        app = BenchApp()
        loop = asyncio.get_running_loop()
        waiting: dict[str, asyncio.Future[Any]] = {}
        order = [r["k"] for r in records]
        position = [0]

        def release() -> None:  # the rejected design: the next recorded key, in record order
            if position[0] >= len(order):
                return
            future = waiting.pop(order[position[0]], None)
            if future is not None:
                future.set_result(None)
                position[0] += 1
            loop.call_soon(release)

        async def call(item: Item) -> Any:
            out = await orch.call_task(app, spec, item)
            if ordered:
                key = f"work:{digest(canonical_json(identity_data(item)))}:0"
                await waiting.setdefault(key, loop.create_future())
            return out

        ctx = contextvars.copy_context()
        ctx.run(_context.orchestrator.set, orch)
        started = time.perf_counter()
        if ordered:
            loop.call_soon(release)
        async def run() -> None:
            await asyncio.gather(*(call(Item(index=i)) for i in range(n)))

        await loop.create_task(run(), context=ctx)
        return time.perf_counter() - started

    class _NoLineage:
        def get(self) -> str:
            return ""

        def set(self, value: str) -> None:
            pass

    def measure(ordered: bool, lineage_on: bool) -> float:
        real = orch_mod._position
        if not lineage_on:
            orch_mod._position = _NoLineage()  # type: ignore[assignment]
        try:
            return statistics.median(asyncio.run(replay(ordered)) for _ in range(repeat))
        finally:
            orch_mod._position = real

    rows = [("lineage (as shipped)", measure(False, True)),
            ("no lineage (occurrence order only)", measure(False, False)),
            ("ordered release (rejected)", measure(True, True))]
    base = rows[1][1]
    lines = [f"replay of {n} recorded gathered calls, median of {repeat}, in-process"]
    lines += [f"  {name:<36} {seconds * 1000:8.1f} ms  {seconds / base:5.2f}x"
              for name, seconds in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profiling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("spy", help="py-spy of the driver during one run")
    s.add_argument("case", choices=("fanout", "sequential", "resume", "raw-fanout", "raw-seq"))
    s.add_argument("n", type=int)
    s.add_argument("store", choices=("file", "s3"))
    s.add_argument("--rate", type=int, default=250)
    s.add_argument("--out", default=None, help="keep the raw py-spy samples here")
    s.add_argument("--app", default="BenchApp", help="an app of benchmarks/apps.py")
    s.add_argument("--gil", action="store_true",
                   help="only samples of the thread holding the GIL (where the CPU goes; "
                        "without it a thread waiting for the GIL shows where it waits)")
    s.add_argument("--patch", action="append", default=[],
                   help="apply a whatif patch in the profiled driver (repeatable)")
    b = sub.add_parser("breakdown", help="per-task cost, layer by layer (raw Ray to runtime)")
    b.add_argument("--n", type=int, default=300)
    b.add_argument("--repeat", type=int, default=5)
    w = sub.add_parser("whatif", help="candidate fixes, simulated by patching the driver")
    w.add_argument("case", choices=("fanout", "sequential", "resume"))
    w.add_argument("n", type=int)
    w.add_argument("store", choices=("file", "s3"))
    w.add_argument("--repeat", type=int, default=5)
    r = sub.add_parser("requests", help="S3 requests of one run, by kind (moto's log)")
    r.add_argument("n", type=int, nargs="?", default=1000)
    mem = sub.add_parser("memory", help="tracemalloc of a resume: what each recorded task holds")
    mem.add_argument("n", type=int, nargs="?", default=5000)
    lin = sub.add_parser("lineage", help="recorded values under gather: lineage vs ordered "
                         "replay, replaying N recorded gathered calls in-process")
    lin.add_argument("n", type=int, nargs="?", default=5000)
    lin.add_argument("--repeat", type=int, default=5)
    d = sub.add_parser("_driver")  # internal: the process `spy` profiles
    d.add_argument("case")
    d.add_argument("n", type=int)
    d.add_argument("store")
    d.add_argument("--app", default="BenchApp")
    d.add_argument("--patch", action="append", default=[])
    args = p.parse_args(argv)
    if args.cmd == "_driver":
        _driver(args.case, args.n, args.store, args.app, args.patch)
    elif args.cmd == "spy":
        out = args.out or tempfile.mktemp(prefix="bench-spy-", suffix=".raw")
        print("$ python -m benchmarks.profiling " + " ".join(sys.argv[1:] if argv is None
                                                              else argv))
        print(report_spy(spy(args.case, args.n, args.store, args.rate, out, args.app,
                             args.patch, args.gil), args.rate))
    elif args.cmd == "breakdown":
        print(breakdown(args.n, args.repeat))
    elif args.cmd == "whatif":
        print(whatif(args.case, args.n, args.store, args.repeat))
    elif args.cmd == "requests":
        print(requests(args.n))
    elif args.cmd == "memory":
        print(memory(args.n))
    elif args.cmd == "lineage":
        print(lineage(args.n, args.repeat))


if __name__ == "__main__":
    main()
