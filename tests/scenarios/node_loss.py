"""Multi-node scenarios on `ray.cluster_utils.Cluster`, run as a subprocess by the tests.

A Cluster cannot share a process with the test session's own `ray.init()`, so each scenario
builds its cluster here, runs an app, removes a node mid-flight, and prints a JSON report.

    python -m tests.scenarios.node_loss STORE_URL WORKDIR [--nodes N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

import ray
from ray.cluster_utils import Cluster

from runtime import run_app
from storage import RunStore, open_store
from tests.apps.multinode import SpreadApp

FAST_FAILURE_DETECTION = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_failure_threshold": 3,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("workdir")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=1)
    args = parser.parse_args()

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "_system_config": FAST_FAILURE_DETECTION,
        "env_vars": {"PYTHONPATH": os.getcwd()},
    })
    workers = [cluster.add_node(num_cpus=1) for _ in range(args.nodes)]
    ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}})
    cluster.wait_for_nodes()

    try:  # a folder store is refused on a multi-node cluster
        run_app(SpreadApp, {"folder": args.workdir, "n": 1}, run_id="local",
                store=os.path.join(args.workdir, "local-store"))
        local_store_error = None
    except Exception as exc:
        local_store_error = f"{type(exc).__name__}: {exc}"

    marker = os.path.join(args.workdir, "started")
    result: dict = {}

    def drive() -> None:
        try:
            out = run_app(SpreadApp, {"folder": args.workdir, "n": args.tasks},
                          run_id="spread", store=args.store)
            result["output"] = out.model_dump()
        except BaseException as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=drive)
    thread.start()
    deadline = time.monotonic() + 120
    victim_id = None
    while time.monotonic() < deadline and victim_id is None:
        if os.path.exists(marker):
            victim_id = open(marker).read().split()[0]
        time.sleep(0.1)
    victim = next(w for w in workers if w.node_id == victim_id)
    cluster.remove_node(victim, allow_graceful=False)
    result["removed"] = victim_id
    result["local_store_error"] = local_store_error
    thread.join(timeout=240)
    records = RunStore(open_store(args.store), "SpreadApp", "spread").load_journal().records
    result["failures"] = [r["e"] for r in records if r["y"] == "f"]
    result["task_nodes"] = sorted({line.split()[1] for line in
                                   open(os.path.join(args.workdir, "done")).read().split("\n")
                                   if line})
    print("RESULT " + json.dumps(result))
    sys.stdout.flush()
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main()
