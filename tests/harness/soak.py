"""The long soak: random programs, killed drivers, store faults and flipped bytes, for a time
budget; prints what it did and every broken promise (with the program, to keep as a
regression in tests/test_harness.py).

    scripts/soak --minutes 30                    # file:// and moto S3 with faults, alternating
    scripts/soak --minutes 10 --variant file     # one variant: file, s3, flip, cluster

It starts its own local Ray (2 CPUs) and, for S3, its own moto server on 127.0.0.1. The
`cluster` variant runs programs on a `ray.cluster_utils.Cluster` of three nodes and removes or
freezes (SIGSTOP) a worker node while the driver runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .drive import Disturbance, check, repeats_per_kill, run_program
from .shapes import random_program

VARIANTS = ("file", "s3", "flip", "cluster")


def _draw(rng: random.Random) -> dict[str, Any]:
    """One program, drawn from `rng` (so a seed reproduces a soak)."""
    return random_program(rng)


def _moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            break
        time.sleep(0.1)
    os.environ.update(AWS_ACCESS_KEY_ID="soak", AWS_SECRET_ACCESS_KEY="soak",
                      AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint,
                      AWS_ENDPOINT_URL_S3=endpoint)
    return proc, endpoint


class Stats:
    def __init__(self) -> None:
        self.shapes = Counter[str]()
        self.kills = 0
        self.extra = 0
        self.faults = Counter[str]()
        self.flips = 0
        self.detected = 0
        self.wrong = 0
        self.failures: list[dict[str, Any]] = []

    def line(self) -> str:
        per_kill = self.extra / self.kills if self.kills else 0.0
        return (f"shapes {sum(self.shapes.values())} ({dict(self.shapes)}) | kills {self.kills}"
                f" | repeated executions per kill {per_kill:.2f} | faults injected "
                f"{sum(self.faults.values())} {dict(self.faults)} | bytes flipped {self.flips} "
                f"(failed as integrity errors: {self.detected}) | wrong results {self.wrong} "
                f"| broken promises {len(self.failures)}")


def _one(variant: str, rng: random.Random, stats: Stats, workdir: Path, ray_address: str,
         s3_endpoint: str | None, scratch_root: str) -> None:
    from tests.faultproxy import FaultProxy

    program = _draw(rng)
    run = f"soak{rng.randrange(10**9)}"
    kills = [round(rng.uniform(0.45, 0.95), 2) for _ in range(rng.randint(1, 4))]
    entrypoint = rng.choice(["shape", "shape_again"])
    proxy = None
    options: dict[str, str] = {}
    if variant == "s3":
        import boto3

        bucket = f"soak-{run}"
        boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
        store = f"s3://{bucket}/store"
        proxy = FaultProxy(s3_endpoint, {"slowdown": 0.08, "reset_before": 0.02,
                                         "reset_after": 0.03, "delay": 0.03},
                           seed=rng.randrange(2**16)).__enter__()
        options = {"endpoint_url": proxy.url}
    else:
        store = str(workdir / run / "store")
    try:
        calm = run_program(program, f"{run}-calm", store if variant != "s3" else
                           f"{store}-calm", workdir, ray_address, entrypoint=entrypoint)
        shaken = run_program(program, run, store, workdir, ray_address,
                             Disturbance(kills=kills, flip=variant == "flip",
                                         store_options=options, seed=rng.randrange(2**16),
                                         scale=calm.seconds),
                             entrypoint=entrypoint)
        problems = check(program, calm, shaken, store, run, scratch_root, options)
    finally:
        if proxy is not None:
            stats.faults.update(proxy.injected)
            proxy.__exit__(None, None, None)
    stats.shapes[variant] += 1
    stats.kills += shaken.kills
    stats.extra += round(repeats_per_kill(calm, shaken) * shaken.kills)
    if shaken.flipped:
        stats.flips += 1
        stats.detected += shaken.code == 1
    if shaken.code == 0 and shaken.output != calm.output:
        stats.wrong += 1
    if problems:
        stats.failures.append({"variant": variant, "program": program, "kills": kills,
                               "entrypoint": entrypoint, "problems": problems})
        print(f"BROKEN: {json.dumps(stats.failures[-1])[:4000]}", flush=True)


def _cluster_round(rng: random.Random, stats: Stats, workdir: Path, s3_url: str) -> None:
    """One program on a three-node Cluster, a worker node removed or frozen mid-run."""
    mode = rng.choice(["remove", "freeze"])
    proc = subprocess.run(
        [sys.executable, "-m", "tests.scenarios.node_loss", s3_url,
         str(workdir / f"c{rng.randrange(10**9)}"), "--nodes", "2", "--tasks",
         str(rng.randint(1, 4)), *(["--freeze"] if mode == "freeze" else [])],
        capture_output=True, text=True, timeout=400,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    stats.shapes[f"cluster-{mode}"] += 1
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    report = json.loads(line[len("RESULT "):]) if line else {"error": proc.stderr[-2000:]}
    if "error" in report:
        stats.failures.append({"variant": f"cluster-{mode}", "problems": [report["error"]]})
        print(f"BROKEN: {json.dumps(stats.failures[-1])[:4000]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--variant", choices=[*VARIANTS, "all"], default="all")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args(argv)
    import ray

    from runtime._runcontext import scratch_root

    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    moto, endpoint = _moto()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}})
    address = ray.get_runtime_context().gcs_address
    variants = [v for v in VARIANTS if v != "cluster"] if args.variant == "all" else \
        [args.variant]
    stats = Stats()
    deadline = time.monotonic() + args.minutes * 60
    print(f"soak: seed {args.seed}, variants {variants}, {args.minutes:g} min, in {workdir}",
          flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        while time.monotonic() < deadline and not stop.is_set():
            variant = rng.choice(variants)
            try:
                if variant == "cluster":
                    import boto3

                    bucket = f"soak-cluster-{rng.randrange(10**9)}"
                    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
                    _cluster_round(rng, stats, workdir, f"s3://{bucket}/store")
                else:
                    _one(variant, rng, stats, workdir, address, endpoint, scratch_root())
            except Exception as exc:  # the harness itself: report, go on
                stats.failures.append({"variant": variant, "problems": [repr(exc)]})
                print(f"BROKEN (harness): {exc!r}", flush=True)
            print(stats.line(), flush=True)
    finally:
        ray.shutdown()
        moto.terminate()
        shutil.rmtree(workdir, ignore_errors=True)
    print("SOAK " + stats.line(), flush=True)
    return 1 if stats.failures or stats.wrong else 0


if __name__ == "__main__":
    sys.exit(main())
