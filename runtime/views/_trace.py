"""`connector-runtime trace RUN_ID`: a run's history as Chrome Trace Event JSON, which Perfetto
(ui.perfetto.dev) and chrome://tracing open.

- One complete event ("X") per attempt, named after its task; `pid` is its node, `tid` its
  worker process (both named by metadata events); `cat` is its outcome; args: outcome,
  attempt, call key, error, queue time, files, and which clock timed it. An attempt the worker
  reported on is timed start to end on the worker's clock; one it could not report on (lost
  worker, timeout, lost heartbeat, cancel) is timed dispatch to receive on the driver's,
  on a track of its own ("no report from a worker"), its node unknown.
- The driver's phases on a process of their own (pid 0), one thread per driver session (its
  lease epoch); a phase that never ended (the driver died in it) is a begin event ("B")
  without an end, which both viewers show as "did not end".
- Instant events ("i"): a retry after a failed attempt, a heartbeat loss, a cancelled attempt,
  and the run's cancellation.

Timestamps are microseconds from the earliest time in the journal (`otherData.origin_unix_s`
gives that instant). Attempts journaled without times (before times were recorded, or
answered in the driver) cannot be placed: `otherData.untimed_attempts` counts them. A live
run's trace is what its journal holds so far.
"""

from __future__ import annotations

import json
from typing import Any

from storage import RunRecord

from ._timeline import Span, Timeline

__all__ = ["DRIVER_PID", "trace_events", "trace_json"]

DRIVER_PID = 0
_UNREPORTED_TID = 0


def _us(seconds: float, origin: float) -> float:
    return round((seconds - origin) * 1e6, 1)


def _origin(tl: Timeline) -> float | None:
    times = [p.begin for p in tl.phases]
    times += [s.begin for s in tl.spans if s.begin is not None and s.duration is not None]
    return min(times) if times else None


class _Tracks:
    """pid per node and tid per worker, with the metadata events that name them."""

    def __init__(self, tl: Timeline) -> None:
        self.events: list[dict[str, Any]] = []
        self._nodes: dict[str, int] = {}
        self._threads: set[tuple[int, int]] = set()
        self._node_of_ip = {s.ip: s.node for s in tl.spans if s.ip and s.node}
        self._meta(DRIVER_PID, None, "process_name", "driver")
        self._meta(DRIVER_PID, None, "process_sort_index", 0, key="sort_index")

    def _meta(self, pid: int, tid: int | None, name: str, value: Any,
              key: str = "name") -> None:
        event: dict[str, Any] = {"ph": "M", "name": name, "pid": pid, "args": {key: value}}
        if tid is not None:
            event["tid"] = tid
        self.events.append(event)

    def session(self, epoch: int, host: str | None, pid: int | None) -> int:
        where = f" on {host} pid {pid}" if host else ""
        self._meta(DRIVER_PID, epoch, "thread_name", f"driver session {epoch}{where}")
        self._meta(DRIVER_PID, epoch, "thread_sort_index", epoch, key="sort_index")
        return epoch

    def _node_pid(self, node: str | None, ip: str | None) -> int:
        label = node or (self._node_of_ip.get(ip) if ip else None) or (f"ip {ip}" if ip else "")
        label = label or "unknown node"
        pid = self._nodes.get(label)
        if pid is None:
            pid = self._nodes[label] = len(self._nodes) + 1
            if label == "unknown node":
                name = "node unknown (attempts no worker reported on)"
            else:
                name = f"node {ip or '?'} ({label[:12]})" if not label.startswith("ip ") \
                    else f"node {ip}"
            self._meta(pid, None, "process_name", name)
            self._meta(pid, None, "process_sort_index", pid, key="sort_index")
        return pid

    def of(self, span: Span) -> tuple[int, int]:
        pid = self._node_pid(span.node, span.ip)
        tid = span.pid if span.pid is not None else _UNREPORTED_TID
        if (pid, tid) not in self._threads:
            self._threads.add((pid, tid))
            self._meta(pid, tid, "thread_name", f"worker pid {tid}" if tid else
                       "no report from a worker (lost, timed out, cancelled)")
        return pid, tid


def _attempt_event(span: Span, pid: int, tid: int, origin: float) -> dict[str, Any]:
    assert span.begin is not None and span.duration is not None
    args: dict[str, Any] = {"outcome": span.outcome, "attempt": span.number,
                            "call_key": span.key,
                            "clock": "worker" if span.started is not None else "driver"}
    if span.error_text:
        args["error"] = span.error_text
    if span.queued is not None:
        args["queued_ms"] = round(span.queued * 1e3, 3)
    if span.files:
        args["files"] = span.files
    return {"name": span.task, "cat": span.outcome, "ph": "X", "ts": _us(span.begin, origin),
            "dur": round(span.duration * 1e6, 1), "pid": pid, "tid": tid, "args": args}


def _instants(span: Span, pid: int, tid: int, origin: float) -> list[dict[str, Any]]:
    at = span.end
    if at is None:
        return []
    events = []

    def instant(name: str, **args: Any) -> None:
        events.append({"name": name, "cat": span.outcome, "ph": "i", "s": "t",
                       "ts": _us(at, origin), "pid": pid, "tid": tid,
                       "args": {"call_key": span.key, "attempt": span.number, **args}})

    if span.outcome in ("heartbeat", "stalled"):
        instant("heartbeat lost" if span.outcome == "heartbeat" else "progress stalled",
                error=span.error_text)
    if span.outcome == "cancelled":
        instant("cancelled")
    if span.failed and span.retried:
        instant(f"retry {span.task}", next_attempt=span.number + 1, error=span.error_text)
    return events


def trace_events(tl: Timeline, record: RunRecord | None = None) -> dict[str, Any]:
    """The trace of timeline `tl` (of run `record`) as a JSON-ready object."""
    origin = _origin(tl) or 0.0
    tracks = _Tracks(tl)
    events: list[dict[str, Any]] = []
    for epoch, who in sorted(tl.sessions().items()):
        tracks.session(epoch, who["host"], who["pid"])
    for phase in tl.phases:
        base = {"name": phase.name, "cat": "driver", "pid": DRIVER_PID, "tid": phase.epoch,
                "ts": _us(phase.begin, origin)}
        if phase.end is None:
            events.append({**base, "ph": "B", "args": {
                "ended": "never: the driver stopped during this phase (killed, or lost the "
                         "run to another driver)"}})
        else:
            events.append({**base, "ph": "X", "dur": round(max(0.0, phase.end - phase.begin)
                                                            * 1e6, 1)})
    for span in tl.spans:
        if span.duration is None:
            continue
        pid, tid = tracks.of(span)
        events.append(_attempt_event(span, pid, tid, origin))
        events.extend(_instants(span, pid, tid, origin))
    if record is not None and record.status.value == "CANCELLED" and record.finished_at:
        last = max((p.epoch for p in tl.phases), default=0)
        events.append({"name": "run cancelled", "cat": "cancelled", "ph": "i", "s": "g",
                       "ts": _us(record.finished_at, origin), "pid": DRIVER_PID, "tid": last,
                       "args": {"reason": (record.error or {}).get("message")}})
    other: dict[str, Any] = {"origin_unix_s": origin, "untimed_attempts": tl.untimed}
    if record is not None:
        other.update(run_id=record.run_id, app=record.app, state=record.status.value,
                     entrypoint=record.entrypoint)
    return {"traceEvents": tracks.events + events, "displayTimeUnit": "ms",
            "otherData": other}


def trace_json(tl: Timeline, record: RunRecord | None = None) -> str:
    return json.dumps(trace_events(tl, record), separators=(",", ":"))
