"""Store faults: what a faulty S3 costs a run, per client retry configuration.

A run of N sequential no-op tasks on moto S3, through `tests.faultproxy.FaultProxy`: once with
no faults, once with 10% of requests answered `503 SlowDown` and 2% of connections reset (half
before the request reaches the server, half after it was applied). The ratio of the two is
what the faults cost; it is measured for each retry configuration of the store's client, so
the default can be chosen by measurement.

    python -m benchmarks.bench_faults            # prints a table
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

FAULTS = {"slowdown": 0.10, "reset_before": 0.01, "reset_after": 0.01}

CONFIGS: dict[str, dict[str, Any]] = {
    "default (the store's own retry, 10 ms doubling)": {},
    "botocore legacy, 5 attempts (before)": {
        "config_kwargs": {"retries": {"mode": "legacy", "max_attempts": 5}}},
    "botocore standard, 10 attempts": {
        "config_kwargs": {"retries": {"mode": "standard", "max_attempts": 10}}},
    "botocore adaptive, 10 attempts": {
        "config_kwargs": {"retries": {"mode": "adaptive", "max_attempts": 10}}},
}


def _one(endpoint: str, n: int, rates: dict[str, float], options: dict[str, Any],
         seed: int) -> float:
    from benchmarks._env import new_bucket
    from benchmarks.apps import Batch, BenchApp
    from runtime import run_app
    from tests.faultproxy import FaultProxy

    bucket = new_bucket(endpoint)
    with FaultProxy(endpoint, rates, seed=seed) as proxy:
        opts = {**options, "client_kwargs": {"endpoint_url": proxy.url}}
        started = time.perf_counter()
        out = run_app(BenchApp, Batch(n=n, parallel=False), run_id=f"faults-{seed}",
                      store=f"s3://{bucket}/store", store_options=opts)
        elapsed = time.perf_counter() - started
    assert out.count == n
    return elapsed


def run(n: int = 100, repeat: int = 3, configs: list[str] | None = None) -> list[dict[str, Any]]:
    from benchmarks._env import moto_server, ray_for_benchmarks

    rows = []
    with ray_for_benchmarks(), moto_server() as endpoint:
        _one(endpoint, 5, {}, {}, 0)  # warm-up: workers, clients, the monitor actor
        for name in configs or list(CONFIGS):
            options = CONFIGS[name]
            calm, faulty = [], []
            for r in range(repeat):
                calm.append(_one(endpoint, n, {}, options, 1000 + r))
                faulty.append(_one(endpoint, n, FAULTS, options, 2000 + r))
            row = {"config": name, "calm_s": statistics.median(calm),
                   "faulty_s": statistics.median(faulty)}
            row["ratio"] = row["faulty_s"] / row["calm_s"]
            rows.append(row)
            print(f"{name:<40} no faults {row['calm_s']:.2f} s  faults {row['faulty_s']:.2f} s"
                  f"  {row['ratio']:.2f}x", flush=True)
    return rows


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
