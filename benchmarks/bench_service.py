"""The app service: POST start to the first task running, locally and as a Ray job, and
`/status` latency under load, each side by side with what it wraps.

Set-up (started here, stopped at the end): a Ray head (`ray start --head`, token auth, free
ports: `bench_jobs._Head`), a file store in a temp folder, and two services
(`connector-runtime serve service_app:ServiceApp`, from `tests/apps/serviceapp/`, with a bearer
token): one launching local driver processes attached to the head (`--launcher process`,
RAY_ADDRESS), one submitting Ray jobs (`--ray-address <dashboard>`). The app's `square` task
writes a marker file with `time.time()` first thing; the earliest marker is "the first task
started" (one machine, one clock).

Figures (seconds unless named _ms), medians of `rounds` interleaved rounds after a warm-up:

- `local_service_first_task_s`: POST /workflows/v1/start (local driver) -> first task started.
- `local_cli_first_task_s`: the limit for it: spawning `connector-runtime run ...` (what the
  service launches) -> first task started.
- `job_service_first_task_s`: POST start on the Ray-job service -> first task started.
- `job_direct_first_task_s`: the peer: `JobSubmissionClient.submit_job` of the same
  entrypoint and working dir, without the service -> first task started.
- `status_p50_ms`, `status_p99_ms`: `GET /workflows/v1/status/{id}`, 200 requests, 5 at a
  time, spread over `runs` runs executing at once (their tasks sleep meanwhile).
- `health_p50_ms`, `health_p99_ms`: the floor of any route: `GET /health` the same way, right
  after (HTTP, auth, envelope; no store read).
- `describe_p50_ms`, `describe_p99_ms`: the limit: `runtime.views.describe` (what the route
  calls) in this process on the same runs, 200 times.

`run(runs=5, rounds=3) -> dict`; `python -m benchmarks.bench_service [RUNS]` prints a table.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from .bench_jobs import _free_ports, _Head, _wait

__all__ = ["run"]

REPO = Path(__file__).resolve().parent.parent
APP_DIR = REPO / "tests" / "apps" / "serviceapp"
APP = "service_app:ServiceApp"
REQUESTS = 200
CONCURRENCY = 5


class _Service:
    """`connector-runtime serve` in a process of its own, output to a file."""

    def __init__(self, work: Path, store: str, env: dict[str, str], *args: str) -> None:
        import httpx

        (self.port,) = _free_ports(1)
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.out = open(work / f"service-{self.port}.out", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runtime", "serve", APP, "--port", str(self.port),
             "--store", store, "--log-dir", str(work / "logs"), *args],
            cwd=APP_DIR, env={**env, "PYTHONPATH": str(REPO),
                              "CONNECTOR_RUNTIME_API_TOKEN": self.token},
            stdin=subprocess.DEVNULL, stdout=self.out, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.http = httpx.Client(base_url=self.url, timeout=120,
                                 headers={"Authorization": f"Bearer {self.token}"})

        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited {self.proc.returncode}")
            with contextlib.suppress(Exception):
                return self.http.get("/health").status_code == 200
            return False

        _wait(healthy, 60, f"the service on port {self.port}")

    def start(self, body: dict[str, Any], run_id: str) -> dict[str, Any]:
        res = self.http.post("/workflows/v1/start", params={"run_id": run_id}, json=body)
        if res.status_code != 200:
            raise RuntimeError(f"start {run_id}: HTTP {res.status_code}: {res.text}")
        return res.json()["data"]

    def wait_done(self, run_id: str) -> None:
        res = self.http.get(f"/workflows/v1/result/{run_id}", params={"wait": 300}, timeout=330)
        if res.status_code != 200 or not res.json()["success"]:
            raise RuntimeError(f"run {run_id} did not complete: {res.text}")

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
        if self.proc.poll() is None:
            self.proc.kill()
        self.out.close()


def _first_marker(folder: Path, timeout: float = 300) -> float:
    def found() -> bool:
        return folder.exists() and any(folder.glob("*.json"))

    _wait(found, timeout, f"a task to start (markers in {folder})", interval=0.01)
    time.sleep(0.05)  # a sibling that started at the same moment has written its marker
    return min(json.loads(p.read_text())["t"] for p in folder.glob("*.json"))


class _Bench:
    def __init__(self, work: Path, head: _Head) -> None:
        self.work = work
        self.head = head
        self.store = str(work / "store")
        self.local_env = {**head.env, "RAY_ADDRESS": head.address}
        self.local = _Service(work, self.store, self.local_env, "--launcher", "process")
        self.jobs = _Service(work, self.store, head.env, "--ray-address", head.dashboard_url)
        self.submitter = _Submitter(head)

    def _body(self, tag: str, n: int = 2, sleep_s: float = 0.0) -> tuple[dict[str, Any], Path]:
        folder = self.work / "markers" / tag
        return {"marker_dir": str(folder), "n": n, "sleep_s": sleep_s}, folder

    def via_service(self, service: _Service, tag: str) -> float:
        body, folder = self._body(tag)
        started = time.time()
        service.start(body, tag)
        first = _first_marker(folder) - started
        service.wait_done(tag)
        return first

    def via_cli(self, tag: str) -> float:
        body, folder = self._body(tag)
        started = time.time()
        proc = subprocess.Popen(
            [sys.executable, "-m", "runtime", "run", APP, "--input", json.dumps(body),
             "--run-id", tag, "--store", self.store], cwd=APP_DIR, env=self.local_env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        first = _first_marker(folder) - started
        _, err = proc.communicate(timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"connector-runtime run exited {proc.returncode}: {err[-2000:]}")
        return first

    def via_job_client(self, tag: str) -> float:
        body, folder = self._body(tag)
        args = ["run", APP, "--input", json.dumps(body), "--run-id", tag, "--store", self.store]
        answer = self.submitter.ask({"entrypoint": "connector-runtime " + shlex.join(args),
                                     "runtime_env": {"working_dir": str(APP_DIR)}})
        first = _first_marker(folder) - answer["t"]
        _wait(lambda: self.submitter.ask({"status": answer["sid"]})["status"] in
              ("SUCCEEDED", "FAILED", "STOPPED"), 300, f"job {answer['sid']}", interval=0.2)
        return first

    def status_load(self, runs: int) -> dict[str, float]:
        from runtime.views import describe, read_run
        from storage import open_store

        ids = [f"load-{uuid.uuid4().hex[:6]}-{i}" for i in range(runs)]
        for run_id in ids:
            body, _ = self._body(run_id, n=2, sleep_s=4.0)
            self.local.start(body, run_id)
        for run_id in ids:
            _wait(lambda r=run_id: self.local.http.get(f"/workflows/v1/status/{r}").json()
                  ["data"]["state"] == "RUNNING", 120, f"{run_id} to run", interval=0.1)
        latencies = asyncio.run(_hammer(self.local, [f"/workflows/v1/status/{i}" for i in ids]))
        floor = asyncio.run(_hammer(self.local, ["/health"]))
        store = open_store(self.store)
        direct = []
        for i in range(REQUESTS):
            t0 = time.perf_counter()
            describe(store, read_run(store, "ServiceApp", ids[i % runs]))
            direct.append(time.perf_counter() - t0)
        for run_id in ids:
            self.local.wait_done(run_id)
        return {"status_p50_ms": _pct(latencies, 50), "status_p99_ms": _pct(latencies, 99),
                "health_p50_ms": _pct(floor, 50), "health_p99_ms": _pct(floor, 99),
                "describe_p50_ms": _pct(direct, 50), "describe_p99_ms": _pct(direct, 99)}

    def stop(self) -> None:
        self.local.stop()
        self.jobs.stop()
        self.submitter.stop()


async def _hammer(service: _Service, paths: list[str]) -> list[float]:
    import httpx

    gate = asyncio.Semaphore(CONCURRENCY)
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=service.url, timeout=60, headers={
            "Authorization": f"Bearer {service.token}"}) as client:
        async def one(i: int) -> None:
            async with gate:
                t0 = time.perf_counter()
                res = await client.get(paths[i % len(paths)])
                latencies.append(time.perf_counter() - t0)
                if res.status_code != 200:
                    raise RuntimeError(f"{res.url.path} answered {res.status_code}: {res.text}")

        await asyncio.gather(*(one(i) for i in range(REQUESTS)))
    return latencies


_SUBMITTER = """
import json, sys, time
from ray.job_submission import JobSubmissionClient
client = JobSubmissionClient(sys.argv[1])
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    if "status" in cmd:
        status = client.get_job_status(cmd["status"])
        print(json.dumps({"status": getattr(status, "value", str(status))}), flush=True)
        continue
    t = time.time()
    sid = client.submit_job(entrypoint=cmd["entrypoint"], runtime_env=cmd["runtime_env"])
    print(json.dumps({"t": t, "sid": sid}), flush=True)
"""


class _Submitter:
    """A process holding a JobSubmissionClient (the peer): Ray reads its auth mode once per
    process, so the client lives where the head's environment is set from the start. Times
    are taken there, just before `submit_job`."""

    def __init__(self, head: _Head) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _SUBMITTER, head.dashboard_url],
                                     env=head.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self._read()

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the job submitter exited {self.proc.wait()}")
        return json.loads(line)

    def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)


def _pct(values: list[float], pct: int) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return round(ordered[index] * 1000, 2)


def run(runs: int = 5, rounds: int = 3) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-service-"))
    head = _Head({})
    bench = None
    try:
        bench = _Bench(work, head)
        bench.via_service(bench.local, "warm-local")  # workers, imports
        bench.via_service(bench.jobs, "warm-job")  # the working dir's first upload
        figures: dict[str, list[float]] = {k: [] for k in ("local_service", "local_cli",
                                                           "job_service", "job_direct")}
        for i in range(rounds):
            ways = [("local_service", lambda t: bench.via_service(bench.local, t)),
                    ("local_cli", bench.via_cli),
                    ("job_service", lambda t: bench.via_service(bench.jobs, t)),
                    ("job_direct", bench.via_job_client)]
            for name, way in ways[i % 4:] + ways[:i % 4]:  # rotate the order each round
                figures[name].append(way(f"{name.replace('_', '-')}-{i}"))
        load = bench.status_load(runs)
    finally:
        if bench is not None:
            bench.stop()
        head.stop()
        shutil.rmtree(work, ignore_errors=True)

    def med(name: str) -> float:
        return round(statistics.median(figures[name]), 3)

    result: dict[str, Any] = {"runs": runs, "rounds": rounds}
    for name in figures:
        result[f"{name}_first_task_s"] = med(name)
    result["local_ratio"] = round(med("local_service") / med("local_cli"), 2)
    result["job_ratio"] = round(med("job_service") / med("job_direct"), 2)
    result.update(load)
    result["status_vs_health_p50"] = round(load["status_p50_ms"] / load["health_p50_ms"], 2)
    result["load_avg_1m"] = round(os.getloadavg()[0], 1)
    return result


def print_table(r: dict[str, Any]) -> None:
    print(f"service benchmark: median of {r['rounds']} round(s), load average "
          f"{r['load_avg_1m']}, file store, one Ray head (2 CPUs)")
    print(f"{'start -> first task started':44} {'seconds':>8} {'vs':>6}")
    print(f"{'  POST start, local driver process':44} {r['local_service_first_task_s']:>8.2f}"
          f" {r['local_ratio']:>5.2f}x")
    print(f"{'  connector-runtime run (the limit)':44} {r['local_cli_first_task_s']:>8.2f}")
    print(f"{'  POST start, Ray job':44} {r['job_service_first_task_s']:>8.2f}"
          f" {r['job_ratio']:>5.2f}x")
    print(f"{'  JobSubmissionClient.submit_job (peer)':44} {r['job_direct_first_task_s']:>8.2f}")
    print(f"/status, {REQUESTS} requests, {CONCURRENCY} at a time, over {r['runs']} running runs:"
          f" p50 {r['status_p50_ms']:.1f} ms, p99 {r['status_p99_ms']:.1f} ms")
    print(f"  /health the same way: p50 {r['health_p50_ms']:.1f} ms, p99 "
          f"{r['health_p99_ms']:.1f} ms ({r['status_vs_health_p50']:.2f}x at p50)")
    print(f"  describe() in-process: p50 {r['describe_p50_ms']:.2f} ms, p99 "
          f"{r['describe_p99_ms']:.2f} ms")


if __name__ == "__main__":
    print_table(run(int(sys.argv[1]) if len(sys.argv) > 1 else 5))
