"""`GET /metrics`: Prometheus figures derived from the store at scrape time.

Nothing is counted in the service's memory: each scrape lists the app's runs and reads their
journals (through `runtime.views`), so every replica reports the same figures, and a restart
loses none. The journal of a finished run does not change until it is resumed, so it is read
once per version of its run record; a running run's journal is read at every scrape.

- `connector_runtime_runs{app,state}`: runs by state (gauge).
- `connector_runtime_attempts_total{app,task,outcome}`: attempts by outcome, `completed` or the
  failure kind (`error`, `timeout`, `lost`, `heartbeat`).
- `connector_runtime_attempt_duration_seconds{app,task,outcome}`: start to end on the worker,
  for journal records that carry their times ("ts"); `..._attempt_queue_seconds`: dispatch to
  start (driver clock to worker clock).
- `connector_runtime_store_request_errors_total{app,operation}`: store reads of this replica
  that failed (`operation`: `api` routes, `page`s, `metrics` scrapes). The one figure kept in
  the service's memory: a failed store request cannot be recorded in the store. It restarts
  at zero with the process, as Prometheus counters may.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from storage import RunRecord, RunStatus, RunStore, Store, list_runs

from ..views import Attempt, attempts

__all__ = ["BUCKETS", "StoreCollector", "note_store_error", "registry_for"]

BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
           1800.0, 3600.0)


_store_errors: Counter[str] = Counter()
_store_errors_lock = threading.Lock()


def note_store_error(operation: str) -> None:
    """Count a store request of this replica that failed (`api`, `page`, `metrics`)."""
    with _store_errors_lock:
        _store_errors[operation] += 1


class StoreCollector:
    """A prometheus-client collector over one app's runs in a store."""

    def __init__(self, store: Store, app: str) -> None:
        self.store = store
        self.app = app
        self._cache: dict[str, tuple[tuple[Any, ...], list[Attempt]]] = {}
        self._lock = threading.Lock()

    def _attempts_of(self, record: RunRecord) -> list[Attempt]:
        version = (record.updated_at, record.finish_count, record.status.value)
        cached = self._cache.get(record.run_id)
        if cached is not None and cached[0] == version and record.status.finished:
            return cached[1]
        load = RunStore(self.store, record.app, record.run_id).load_journal()
        found = attempts(load.records)
        self._cache[record.run_id] = (version, found)
        return found

    def collect(self) -> Iterator[Metric]:
        yield self._errors_family()
        with self._lock:  # two scrapes at once would read each journal twice
            records = list_runs(self.store, self.app)
            per_run = [self._attempts_of(r) for r in records]
            live = {r.run_id for r in records}
            for run_id in set(self._cache) - live:
                del self._cache[run_id]
        yield self._runs(records)
        every = [a for run in per_run for a in run]
        yield self._outcomes(every)
        yield self._histogram("connector_runtime_attempt_duration_seconds",
                              "Task attempt durations, start to end on the worker",
                              [(a, a.duration) for a in every])
        yield self._histogram("connector_runtime_attempt_queue_seconds",
                              "Task attempt waits, dispatch by the driver to start on a worker",
                              [(a, a.queued) for a in every])

    def _errors_family(self) -> Metric:
        family = CounterMetricFamily("connector_runtime_store_request_errors",
                                     "Store requests of this service replica that failed",
                                     labels=["app", "operation"])
        with _store_errors_lock:
            counts = dict(_store_errors)
        for operation in ("api", "metrics", "page"):
            family.add_metric([self.app, operation], counts.get(operation, 0))
        return family

    def _runs(self, records: list[RunRecord]) -> Metric:
        family = GaugeMetricFamily("connector_runtime_runs", "Runs in the store by state",
                                   labels=["app", "state"])
        counts = Counter(r.status.value for r in records)
        for state in RunStatus:
            family.add_metric([self.app, state.value], counts.get(state.value, 0))
        return family

    def _outcomes(self, every: list[Attempt]) -> Metric:
        family = CounterMetricFamily("connector_runtime_attempts",
                                     "Task attempts by outcome (completed or the failure kind)",
                                     labels=["app", "task", "outcome"])
        for (task, outcome), n in sorted(Counter((a.task, a.outcome) for a in every).items()):
            family.add_metric([self.app, task, outcome], n)
        return family

    def _histogram(self, name: str, doc: str,
                   values: list[tuple[Attempt, float | None]]) -> Metric:
        family = HistogramMetricFamily(name, doc, labels=["app", "task", "outcome"])
        groups: dict[tuple[str, str], list[float]] = {}
        for attempt, value in values:
            if value is not None:
                groups.setdefault((attempt.task, attempt.outcome), []).append(value)
        for (task, outcome), seconds in sorted(groups.items()):
            buckets = [(_le(b), sum(1 for s in seconds if s <= b)) for b in BUCKETS]
            buckets.append(("+Inf", len(seconds)))
            family.add_metric([self.app, task, outcome], buckets, sum(seconds))
        return family


def _le(bound: float) -> str:
    return repr(float(bound))


def registry_for(store: Store, app: str) -> CollectorRegistry:
    """A registry of its own (not the process-global one): only the store's figures."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, app))
    return registry
