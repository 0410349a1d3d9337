"""Built-in cleanup, run inside the cleanup tasks on a worker.

Both work from shared state, not from the memory of the process that created the files:

- `cleanup_transient` deletes the run's TRANSIENT prefix in the store
  (`runs/{app}/{run_id}/files/`), where every TRANSIENT object of the run lives whichever node
  wrote it. The journal's "o" records are cross-checked: a TRANSIENT record whose path lies
  outside the run's own TRANSIENT prefix is reported (logged), never deleted.
- `cleanup_scratch` deletes the run's scratch folder (`{scratch_root}/{app}/{run_id}`: attempt
  scratch dirs and the object cache) on every alive Ray node, through a small task pinned to
  each node. Only paths strictly inside the scratch root are deleted. A node that does not
  answer (frozen, and still alive to Ray) keeps its files: it is waited for at most
  `_NODE_TIMEOUT`, and less once the other half answered (`_STRAGGLER_WAIT`).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from storage import PathRefusedError, RunStore, delete_local, delete_store_prefix, tier_prefix

from .._runcontext import RunContext, scratch_root

__all__ = ["cleanup_scratch", "cleanup_transient", "delete_run_scratch"]

log = logging.getLogger("connector_runtime")

_NODE_TIMEOUT = 10.0
"""Most seconds cleanup waits for other nodes: one that froze (Ray still thinks it alive)
keeps its temp files, and the run is not held up by it."""
_STRAGGLER_WAIT = 3.0
"""Once half the nodes have answered, the others get max(this, twice the time the half took)
more: a healthy node answers about when its peers do, a frozen one never (a run on a cluster
with a frozen node finished its on_complete in 10.1 s; now 3.9 s on a quiet machine)."""


def delete_run_scratch(app_name: str, run_id: str) -> int:
    """Delete this node's scratch folder of one run; how many files went."""
    root = scratch_root()
    folder = os.path.join(root, app_name, run_id)
    if not os.path.isdir(folder):
        return 0
    return delete_local(folder, [root])


def cleanup_scratch(run: RunContext, here: bool = True) -> int:
    """Delete this run's scratch folders on every alive node; returns how many files went.

    `here=False` (the driver): this process's own scratch root is not the workers' (a node's
    raylet may set CONNECTOR_RUNTIME_SCRATCH), so every node, its own included, is asked
    through a task pinned to it."""
    count = delete_run_scratch(run.app_name, run.run_id) if here else 0
    return count + _on_nodes(run, include_this_one=not here)


def _on_nodes(run: RunContext, include_this_one: bool) -> int:
    try:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    except ImportError:
        return 0
    if not ray.is_initialized():
        return 0
    here = None if include_this_one else ray.get_runtime_context().get_node_id()
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n["NodeID"] != here]
    if not nodes:
        return 0
    remote = _node_remote()
    refs = [
        remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
        .remote(run.app_name, run.run_id)
        for node in nodes
    ]
    began = time.monotonic()
    ready, pending = answers(refs)
    total = 0
    for ref in ready:
        try:
            total += ray.get(ref)
        except Exception as exc:  # a node that went away meanwhile keeps its (temp) files
            log.warning("scratch cleanup on a node failed: %s", exc)
    if pending:
        log.warning("scratch cleanup: %d of %d node(s) did not answer in %.1f s: they keep "
                    "this run's scratch files", len(pending), len(refs),
                    time.monotonic() - began)
    return total


def answers(refs: list[Any]) -> tuple[list[Any], list[Any]]:
    """(ready, pending) of the per-node tasks: all of them within `_NODE_TIMEOUT`, and once half
    have answered, the rest within max(`_STRAGGLER_WAIT`, twice what that half took)."""
    import ray

    began = time.monotonic()
    ready, pending = ray.wait(refs, num_returns=(len(refs) + 1) // 2, timeout=_NODE_TIMEOUT)
    if pending and ready:
        half = time.monotonic() - began
        more, pending = ray.wait(pending, num_returns=len(pending), timeout=min(
            _NODE_TIMEOUT - half, max(_STRAGGLER_WAIT, 2 * half)))
        ready += more
    return ready, pending


_remote: Any = None


def _node_remote() -> Any:
    """The per-node deletion as a Ray remote function, made (and exported) once per process."""
    global _remote
    if _remote is None:
        import ray

        _remote = ray.remote(num_cpus=0, max_retries=1)(delete_run_scratch)
    return _remote


def cleanup_transient(run: RunContext, recorded: list[dict] | None = None) -> int:
    """Delete the run's TRANSIENT objects from the store; returns how many objects went.

    `recorded`: the journal's "o" records when the caller holds them (the driver's index), so
    the cross-check does not read the whole journal again (300 segments: about 0.1 s)."""
    store = run.store()
    prefix = tier_prefix("transient", run.app_name, run.run_id)
    count = delete_store_prefix(store, prefix, [prefix])
    paths = _recorded_transient(store, run) if recorded is None else _transient_paths(recorded)
    for path in paths:
        if path == prefix or path.startswith(prefix + "/"):
            continue  # already gone with the prefix
        try:
            count += delete_store_prefix(store, path, [prefix])
        except PathRefusedError as exc:
            log.warning("%s", exc)
    return count


def _recorded_transient(store, run: RunContext) -> list[str]:
    try:
        load = RunStore(store, run.app_name, run.run_id).load_journal()
    except Exception as exc:  # the prefix is gone already; the cross-check is a bonus
        log.warning("run %s: journal not readable for the cleanup cross-check: %s",
                    run.run_id, exc)
        return []
    return _transient_paths(load.records)


def _transient_paths(records: list[dict]) -> list[str]:
    return sorted({r["p"] for r in records
                   if r.get("y") == "o" and r.get("t") == "transient" and r.get("p")})
