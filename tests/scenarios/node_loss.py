"""Multi-node scenarios on `ray.cluster_utils.Cluster`, run as a subprocess by the tests.

A Cluster cannot share a process with the test session's own `ray.init()`, so each scenario
builds its cluster here, runs an app, removes a node mid-flight, and prints a JSON report.

    python -m tests.scenarios.node_loss STORE_URL WORKDIR [--nodes N] [--freeze] [--pool]

With `--freeze` the node is not removed but frozen (SIGSTOP of its raylet and every process
under it) with Ray's default failure detection, so Ray still thinks it alive: only the
heartbeat watchdog can notice. The report then says where the heartbeat monitor lived.
With `--pool` the tasks run on a pool of warm actors (`PoolSpreadApp`, `FreezePoolApp` with
`--freeze`) instead of Ray tasks; with both, the pool's actors can run only on the node that
freezes until a third node joins after the freeze.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time

import ray
from ray.cluster_utils import Cluster

from runtime import run_app
from storage import RunStore, open_store
from tests.apps.multinode import FreezeApp, FreezePoolApp, PoolSpreadApp, SpreadApp

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
    parser.add_argument("--freeze", action="store_true")
    parser.add_argument("--pool", action="store_true")
    args = parser.parse_args()
    app = {(False, False): SpreadApp, (True, False): FreezeApp, (False, True): PoolSpreadApp,
           (True, True): FreezePoolApp}[(args.freeze, args.pool)]

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "env_vars": {"PYTHONPATH": os.getcwd()},
        **({} if args.freeze else {"_system_config": FAST_FAILURE_DETECTION}),
    })
    # a frozen pool: both actors on the node that will freeze (the only one with `pool` at
    # first); a node that can take their replacements joins once it froze
    frozen_pool = args.freeze and args.pool
    workers = [cluster.add_node(num_cpus=1) for _ in range(args.nodes - frozen_pool)]
    if frozen_pool:  # an actor takes a CPU to be placed: room for both
        workers.append(cluster.add_node(num_cpus=2, resources={"pool": 2}))
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
            out = run_app(app, {"folder": args.workdir, "n": args.tasks},
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
    frozen: list[int] = []
    if args.freeze:
        time.sleep(2.0)  # an attempt is watched from its first beat, sent after 1 s
        frozen = _freeze(victim)
        result["monitor_nodes"] = _monitor_nodes()
        if frozen_pool:
            result["pool_actors_on_frozen"] = _actors_on("PoolWorker", victim_id)
            cluster.add_node(num_cpus=2, resources={"pool": 2})
        result["head"] = cluster.head_node.node_id
    else:
        cluster.remove_node(victim, allow_graceful=False)
    result["removed"] = victim_id
    result["local_store_error"] = local_store_error
    started = time.monotonic()
    thread.join(timeout=240)
    result["seconds_after_the_cut"] = round(time.monotonic() - started, 1)
    for pid in frozen:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGCONT)
    records = RunStore(open_store(args.store), app.name, "spread").load_journal().records
    result["failures"] = [r["e"] for r in records if r["y"] == "f"]
    result["task_nodes"] = sorted({line.split()[1] for line in
                                   open(os.path.join(args.workdir, "done")).read().split("\n")
                                   if line})
    print("RESULT " + json.dumps(result))
    sys.stdout.flush()
    ray.shutdown()
    cluster.shutdown()


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{entry.name}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def _freeze(node) -> list[int]:
    """SIGSTOP the node's raylet and every process under it (its workers)."""
    pids = _descendants(node.all_processes["raylet"][0].process.pid)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGSTOP)
    return pids


def _actors_on(class_name: str, node_id: str) -> int:
    from ray.util.state import list_actors

    return sum(a.node_id == node_id for a in list_actors(filters=[("class_name", "=",
                                                                   class_name)])
               if a.state == "ALIVE")


def _monitor_nodes() -> list[str]:
    from ray.util.state import list_actors

    return sorted({a.node_id for a in list_actors(filters=[("class_name", "=",
                                                             "HeartbeatMonitor")])
                   if a.state == "ALIVE"})


if __name__ == "__main__":
    main()
