"""A chain of runs made by `continue_with`: each run's record names the one before
(`continued_from`) and the one after (`continued_as`). `status` of any of them shows the whole
chain, first to last, with each run's state and where the chain stands."""

from __future__ import annotations

from typing import Any

from storage import RunRecord, RunStore, Store

__all__ = ["chain_end", "chain_of", "describe_chain"]

_MAX = 10_000
"""Longest chain walked (a loop in hand-edited records must not hang `status`)."""


def _read(store: Store, app: str, run_id: str) -> RunRecord | None:
    try:
        return RunStore(store, app, run_id).read_run()
    except Exception:  # a bad id or a corrupt record: the chain is shown up to it
        return None


def chain_of(store: Store, record: RunRecord) -> list[RunRecord]:
    """Every run of `record`'s chain, first to last (just `record` when it has none)."""
    first, seen = record, {record.run_id}
    while first.continued_from and len(seen) < _MAX:
        before = _read(store, record.app, first.continued_from)
        if before is None or before.run_id in seen:
            break
        first = before
        seen.add(first.run_id)
    runs, seen = [first], {first.run_id}
    while runs[-1].continued_as and len(runs) < _MAX:
        after = _read(store, record.app, runs[-1].continued_as)
        if after is None or after.run_id in seen:
            break
        runs.append(after)
        seen.add(after.run_id)
    return runs


def chain_end(store: Store, record: RunRecord) -> RunRecord:
    """The last run of `record`'s chain (the one running, or the one that finished it)."""
    return chain_of(store, record)[-1]


def describe_chain(store: Store, record: RunRecord) -> dict[str, Any] | None:
    """What `status` adds for a run in a chain (None for a run that has none)."""
    if not (record.continued_from or record.continued_as):
        return None
    runs = chain_of(store, record)
    return {"runs": [{"run_id": r.run_id, "state": r.status.value} for r in runs],
            "position": next((i for i, r in enumerate(runs) if r.run_id == record.run_id), 0),
            "last": runs[-1].run_id, "last_state": runs[-1].status.value}
