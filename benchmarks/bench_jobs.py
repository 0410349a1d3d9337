"""Overhead of the `ray job submit` path, against `connector-runtime run` on the same head node.

Set-up (started here, stopped at the end): a moto S3 server and a real Ray head node
(`ray start --head --block`, 2 CPUs, token auth, free ports, its own --temp-dir; the same
approach as `tests/services.py`'s `ray_head`, copied minimally). The app is
`tests/apps/jobapp/my_app.py:MyApp` with `n` no-op `work` tasks gathered at once and one
`write_result` task (a small Parquet file to S3); the store is `s3://bench-jobs/store`.

Two ways to run the same app on that head, interleaved, `repeats` rounds after one unmeasured
warm-up round each:

- **job**: `ray job submit --address <dashboard> --working-dir tests/apps/jobapp --
  connector-runtime run my_app:MyApp --input ... --run-id ... --store s3://...`, the blocking
  command users type. Measured from just before the `ray job submit` process starts.
- **cli**: `connector-runtime run my_app:MyApp ...` in the app's directory with
  `RAY_ADDRESS=<gcs address>` (a driver outside the cluster's job system).

Figures (seconds):

- `driver_ready`: start -> the driver created the run record in S3 (it runs, is connected to
  Ray and has opened the store; its `created_at`).
- `first_task`: start -> the first `work` task running. Tasks 0 and 1 (the first wave on the
  head's 2 CPUs) write a marker object with their start time `time.time()` (same machine, same
  clock); the earliest one counts. No other task writes anything.
- `wall`: start -> the run is over: for the job, the Jobs API's `end_time` (the entrypoint has
  exited); for cli, the process exited.
- `submit_returns` (job only): start -> the blocking `ray job submit` returns (it tails the logs
  over a websocket and notices the end a few seconds late).

`run(tasks=100, repeats=2) -> dict` returns the medians; `python -m benchmarks.bench_jobs
[TASKS]` prints a table.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["run"]

REPO = Path(__file__).resolve().parent.parent
APP_DIR = REPO / "tests" / "apps" / "jobapp"
APP = "my_app:MyApp"
BUCKET = "bench-jobs"
STORE = f"s3://{BUCKET}/store"
LOOPBACK = "127.0.0.1"
MARKER_VAR = "CONNECTOR_RUNTIME_BENCH_RAY_HEAD"
BIN = Path(sys.executable).parent


# ------------------------------------------------------------------ services


def _free_ports(count: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind((LOOPBACK, 0))
            ports.append(sock.getsockname()[1])
        return ports


def _wait(predicate, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def _moto() -> Iterator[dict[str, str]]:
    """A moto S3 server; yields the AWS_* environment that points a bare s3fs at it."""
    (port,) = _free_ports(1)
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://{LOOPBACK}:{port}"

    def up() -> bool:
        try:
            socket.create_connection((LOOPBACK, port), timeout=0.2).close()
            return True
        except OSError:
            return server.poll() is not None  # let the next step fail with a clear error

    try:
        _wait(up, 30, "moto server")
        yield {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": endpoint,
               "AWS_ENDPOINT_URL": endpoint}
    finally:
        server.terminate()
        server.wait(10)


class _Head:
    """`ray start --head --block` on free ports, like tests/services.py's ray_head."""

    def __init__(self, aws_env: dict[str, str]) -> None:
        names = ("gcs", "dashboard", "client_server", "node_manager", "object_manager",
                 "agent_listen", "agent_grpc", "runtime_env_agent", "metrics_export",
                 "autoscaler_metrics", "dashboard_metrics")
        self.ports = dict(zip(names, _free_ports(len(names)), strict=True))
        self.temp_dir = Path(tempfile.mkdtemp(prefix="raybench-", dir="/tmp"))
        self.token = secrets.token_hex(16)
        self.address = f"{LOOPBACK}:{self.ports['gcs']}"
        self.dashboard_url = f"http://{LOOPBACK}:{self.ports['dashboard']}"
        env = {k: v for k, v in os.environ.items()
               if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_API_SERVER_ADDRESS")
               and not k.startswith("AWS_")}
        # The entrypoint runs through /bin/sh with the head's PATH: the venv's bin comes first,
        # so `connector-runtime` is this package's console script.
        env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", os.defpath)])
        env.update(aws_env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token,
                   RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
        self.env = env  # for clients: `ray job ...`, `connector-runtime ...`
        head_env = {**env, MARKER_VAR: self.temp_dir.name,
                    "AUTOSCALER_METRIC_PORT": str(self.ports["autoscaler_metrics"]),
                    "DASHBOARD_METRIC_PORT": str(self.ports["dashboard_metrics"])}
        p = self.ports
        cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", LOOPBACK,
               "--port", str(p["gcs"]), "--dashboard-host", LOOPBACK,
               "--dashboard-port", str(p["dashboard"]),
               "--ray-client-server-port", str(p["client_server"]),
               "--node-manager-port", str(p["node_manager"]),
               "--object-manager-port", str(p["object_manager"]),
               "--dashboard-agent-listen-port", str(p["agent_listen"]),
               "--dashboard-agent-grpc-port", str(p["agent_grpc"]),
               "--runtime-env-agent-port", str(p["runtime_env_agent"]),
               "--metrics-export-port", str(p["metrics_export"]),
               "--min-worker-port", "0", "--max-worker-port", "0", "--num-cpus", "2",
               "--temp-dir", str(self.temp_dir), "--disable-usage-stats"]
        self.log = open(self.temp_dir / "ray_start.log", "wb")
        self.proc = subprocess.Popen(cmd, env=head_env, cwd=self.temp_dir,
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait(self._ready, 120, f"Ray head jobs API at {self.dashboard_url}", 0.5)
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            log = (self.temp_dir / "ray_start.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"ray start --head exited with {self.proc.returncode}\n{log}")
        try:
            self.api("/api/jobs/")
        except (OSError, ValueError):
            return False
        with socket.socket() as sock:
            sock.settimeout(1)
            return sock.connect_ex((LOOPBACK, self.ports["agent_listen"])) == 0

    def api(self, path: str) -> Any:
        request = urllib.request.Request(self.dashboard_url + path,
                                         headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    def _leftovers(self) -> list[int]:
        needle = f"{MARKER_VAR}={self.temp_dir.name}".encode()
        pids = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            pid = int(entry.name)
            try:
                if os.getsid(pid) == self.proc.pid:
                    pids.append(pid)
                    continue
                with open(f"/proc/{pid}/environ", "rb") as fh:
                    if needle in fh.read().split(b"\0"):
                        pids.append(pid)
            except OSError:
                continue
        alive = []
        for pid in pids:
            with contextlib.suppress(OSError, IndexError), open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.append(pid)
        return alive

    def stop(self) -> None:
        """SIGTERM the `ray start --block` process, then SIGKILL what is left of this head
        (never `ray stop`: it would kill every Ray on the machine)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            _wait(lambda: self.proc.poll() is not None and not self._leftovers(), 30,
                  "Ray head to stop")
        for pid in self._leftovers():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


# ------------------------------------------------------------------ one run each way


def _payload(prefix: str, tasks: int) -> str:
    return json.dumps({"bucket": BUCKET, "prefix": prefix, "n": tasks, "mark_below": 2})


def _first_marker(fs: Any, prefix: str) -> float:
    fs.invalidate_cache()
    paths = fs.glob(f"{BUCKET}/{prefix}/markers/*.json")
    if not paths:
        raise RuntimeError(f"no task wrote a marker under {BUCKET}/{prefix}")
    return min(json.loads(blob)["t"] for blob in fs.cat(paths).values())


def _run_created(fs: Any, run_id: str) -> float:
    """When the driver created the run record (it is up, connected to Ray, has the store)."""
    from storage import RunStore, Store

    record = RunStore(Store(STORE, fs, f"{BUCKET}/store", {}), "MyApp", run_id).read_run()
    if record is None:
        raise RuntimeError(f"no run record for {run_id} in {STORE}")
    return record.created_at


def _via_job(head: _Head, fs: Any, tasks: int, tag: str) -> dict[str, float]:
    sid = f"bench-{tag}-{uuid.uuid4().hex[:8]}"
    prefix = f"job-{tag}-{uuid.uuid4().hex[:8]}"
    started = time.time()
    proc = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", head.dashboard_url,
         "--working-dir", str(APP_DIR), "--submission-id", sid, "--",
         "connector-runtime", "run", APP, "--input", _payload(prefix, tasks),
         "--run-id", prefix, "--store", STORE],
        env=head.env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    returned = time.time()
    info = head.api(f"/api/jobs/{sid}")
    if proc.returncode != 0 or info.get("status") != "SUCCEEDED":
        raise RuntimeError(f"job {sid} did not succeed: {info}\n{proc.stdout[-2000:]}"
                           f"\n{proc.stderr[-2000:]}")
    return {"driver_ready": _run_created(fs, prefix) - started,
            "first_task": _first_marker(fs, prefix) - started,
            "wall": info["end_time"] / 1000 - started,
            "submit_returns": returned - started}


def _via_cli(head: _Head, fs: Any, tasks: int, tag: str) -> dict[str, float]:
    prefix = f"cli-{tag}-{uuid.uuid4().hex[:8]}"
    env = {**head.env, "RAY_ADDRESS": head.address}
    started = time.time()
    proc = subprocess.run(
        [str(BIN / "connector-runtime"), "run", APP, "--input", _payload(prefix, tasks),
         "--run-id", prefix, "--store", STORE],
        env=env, cwd=APP_DIR, capture_output=True, text=True, timeout=600,
        stdin=subprocess.DEVNULL)
    ended = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"connector-runtime run exited {proc.returncode}\n"
                           f"{proc.stderr[-3000:]}")
    return {"driver_ready": _run_created(fs, prefix) - started,
            "first_task": _first_marker(fs, prefix) - started, "wall": ended - started}


def run(tasks: int = 100, repeats: int = 2) -> dict[str, Any]:
    """Medians (s) of `repeats` interleaved rounds of each way, after one warm-up round each."""
    import fsspec

    with _moto() as aws_env:
        fs = fsspec.filesystem(
            "s3", key=aws_env["AWS_ACCESS_KEY_ID"], secret=aws_env["AWS_SECRET_ACCESS_KEY"],
            client_kwargs={"endpoint_url": aws_env["AWS_ENDPOINT_URL_S3"]},
            skip_instance_cache=True)
        fs.mkdir(BUCKET)
        head = _Head(aws_env)
        try:
            _via_job(head, fs, 2, "warmup")  # first use of the working dir, runtime env agent
            _via_cli(head, fs, 2, "warmup")
            jobs, clis = [], []
            for i in range(repeats):
                jobs.append(_via_job(head, fs, tasks, str(i)))
                clis.append(_via_cli(head, fs, tasks, str(i)))
        finally:
            head.stop()

    def med(rows: list[dict[str, float]], key: str) -> float:
        return round(statistics.median(r[key] for r in rows), 3)

    result: dict[str, Any] = {
        "tasks": tasks,
        "rounds": repeats,
        "job_driver_ready_s": med(jobs, "driver_ready"),
        "cli_driver_ready_s": med(clis, "driver_ready"),
        "job_first_task_s": med(jobs, "first_task"),
        "cli_first_task_s": med(clis, "first_task"),
        "job_wall_s": med(jobs, "wall"),
        "cli_wall_s": med(clis, "wall"),
        "job_submit_returns_s": med(jobs, "submit_returns"),
    }
    result["first_task_overhead_s"] = round(
        result["job_first_task_s"] - result["cli_first_task_s"], 3)
    result["wall_overhead_s"] = round(result["job_wall_s"] - result["cli_wall_s"], 3)
    result["load_avg_1m"] = round(os.getloadavg()[0], 1)
    return result


def print_table(r: dict[str, Any]) -> None:
    print(f"{r['tasks']} no-op tasks on one head node (2 CPUs), S3 store on moto; "
          f"median of {r['rounds']} round(s), load average {r['load_avg_1m']}")
    rows = [
        ("ray job submit (job entrypoint)", "job", r["job_submit_returns_s"]),
        ("connector-runtime run (RAY_ADDRESS)", "cli", r["cli_wall_s"]),
    ]
    print(f"{'from the start of the command':36} {'-> driver ready':>16} {'-> first task':>14}"
          f" {'-> run over':>12} {'-> command returns':>19}")
    for label, key, returns in rows:
        print(f"{label:36} {r[key + '_driver_ready_s']:>15.2f}s {r[key + '_first_task_s']:>13.2f}s"
              f" {r[key + '_wall_s']:>11.2f}s {returns:>18.2f}s")
    ready = r["job_driver_ready_s"] - r["cli_driver_ready_s"]
    print(f"{'overhead of the job path':36} {ready:>+15.2f}s {r['first_task_overhead_s']:>+13.2f}s"
          f" {r['wall_overhead_s']:>+11.2f}s")


if __name__ == "__main__":
    print_table(run(int(sys.argv[1]) if len(sys.argv) > 1 else 100))
