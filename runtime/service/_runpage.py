"""What the run pages show, computed from the store: the run list, one run, its live updates.

Everything here is plain data for the templates (`templates/`) and for `live.json`, built from
`runtime.views` (the same history `trace` and `status --tasks` read), so a page shows what the
CLI shows, from any replica.

The timeline is laid out here, not in the browser: one lane per driver session (its phases),
one per worker process (its attempts), one for attempts no worker reported on; bars are
placed in a fixed viewBox (`WIDTH` wide), so the page draws with no JavaScript at all. The
page's script only adds hover details and, for a live run, new bars: each bar carries its
begin and end in seconds from the page's origin (`data-b`, `data-e`), from which the script
places bars that arrive later and re-scales when the run outlasts the drawn extent.

Bars and task rows, thousands of them, are rendered to markup here (`_bars_markup`,
`_rows_markup`: f-strings, every value escaped with markupsafe) rather than by a Jinja loop:
5,000 of each took 0.35 s through the template's attribute lookups, a fraction of that here,
and the page of a 5,000-task run must be on screen within 2 s. The template places them.

Pages cap what could grow without bound: the last `MAX_ERRORS` failures (with tracebacks),
`MAX_DETAILS` heartbeat details, `MAX_FILES` files; the page says how many it left out.
Attempts and task rows are never capped (a run is bounded by its task budget, ~5,000).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
from markupsafe import Markup, escape

from storage import Lease, RunRecord, RunStatus, RunStore, Store, find_runs, list_runs

from ..views import Span, Timeline, load_timeline, task_rows

__all__ = ["LANE_H", "MAX_ERRORS", "WIDTH", "find_run", "live_update", "run_list", "run_page"]

LABEL_W = 190.0
PLOT_W = 1000.0
WIDTH = LABEL_W + PLOT_W + 10.0
LANE_H = 16.0
LANE_GAP = 4.0
AXIS_H = 20.0
MAX_ERRORS = 50
MAX_DETAILS = 100
MAX_FILES = 500
MAX_JSON = 20_000


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1e3:.0f} ms"
    if value < 120:
        return f"{value:.2f} s"
    minutes, secs = divmod(int(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def fmt_time(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def _json_text(value: Any) -> str:
    text = json.dumps(value, indent=2, sort_keys=True, default=str)
    return text if len(text) <= MAX_JSON else text[:MAX_JSON] + "\n... (cut)"


# ---- state -----------------------------------------------------------------------------------


def shown_state(store: Store, record: RunRecord) -> tuple[str, bool]:
    """(state as `status` shows it, live): RUNNING without a live driver is INTERRUPTED."""
    if record.status.finished:
        return record.status.value, False
    lease = Lease(RunStore(store, record.app, record.run_id)).read()
    live = lease is not None and lease.live(time.time())
    return ("RUNNING" if live else "INTERRUPTED"), live


def find_run(store: Store, run_id: str, app: str | None) -> RunRecord | None:
    """The run `run_id` (of `app` when given or when several apps have one); None if none."""
    found = [RunStore(store, app, run_id)] if app else find_runs(store, run_id)
    records = [r for r in (rs.read_run() for rs in found) if r is not None]
    return records[0] if len(records) == 1 else None


# ---- the run list ----------------------------------------------------------------------------


def run_list(store: Store, state: str | None, app: str | None) -> dict[str, Any]:
    """Rows of `GET /`: every run in the store, newest first, filtered by state and app."""
    records = list_runs(store)
    apps = sorted({r.app for r in records})
    rows = []
    now = time.time()
    for record in reversed(records):
        if app and record.app != app:
            continue
        shown, _live = shown_state(store, record) if not record.status.finished \
            else (record.status.value, False)
        if state and shown != state.upper():
            continue
        end = record.finished_at or (now if shown == "RUNNING" else record.updated_at)
        progress = record.progress or {}
        rows.append({"run_id": record.run_id, "app": record.app, "state": shown,
                     "entrypoint": record.entrypoint, "started": fmt_time(record.created_at),
                     "duration": fmt_seconds(max(0.0, end - record.created_at)),
                     "done": progress.get("done", 0), "failed": progress.get("failed", 0)})
    states = [s.value for s in RunStatus] + ["INTERRUPTED"]
    return {"rows": rows, "apps": apps, "states": states, "state": (state or "").upper(),
            "app": app or ""}


# ---- the timeline ----------------------------------------------------------------------------


@dataclass
class _Layout:
    origin: float
    extent: float
    lanes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def lane(self, lane_id: str, label: str, kind: str) -> dict[str, Any]:
        lane = self.lanes.get(lane_id)
        if lane is None:
            y = AXIS_H + len(self.lanes) * (LANE_H + LANE_GAP)
            lane = self.lanes[lane_id] = {"id": lane_id, "label": label, "kind": kind, "y": y}
        return lane

    def x(self, seconds: float) -> float:
        return LABEL_W + PLOT_W * min(1.0, max(0.0, seconds / self.extent))

    def width(self, b: float, e: float) -> float:
        return max(1.5, self.x(e) - self.x(b))  # a 1 ms failure stays visible


def _origin(tl: Timeline, record: RunRecord) -> float:
    times = [p.begin for p in tl.phases]
    times += [s.begin for s in tl.spans if s.begin is not None and s.duration is not None]
    return min(times) if times else record.created_at


def _extent(tl: Timeline, origin: float, live: bool) -> float:
    ends = [p.end for p in tl.phases if p.end is not None]
    ends += [s.end for s in tl.spans if s.end is not None]
    last = max(ends, default=origin)
    if live:
        last = max(last, time.time())
    return max(0.001, last - origin)


def worker_lane(span: Span, node_of_ip: dict[str, str]) -> tuple[str, str]:
    """(lane id, label) of the worker that ran `span`."""
    if span.pid is None:
        return "u", "no worker report"
    node = span.node or node_of_ip.get(span.ip or "", "") or span.ip or "?"
    return f"w:{node}:{span.pid}", f"{span.ip or node[:12]} pid {span.pid}"


def _bar(span: Span, index: int, lane: dict[str, Any], origin: float) -> dict[str, Any]:
    assert span.begin is not None and span.end is not None
    return {"i": index, "lane": lane["id"], "lane_label": lane["label"], "y": lane["y"],
            "task": span.task, "key": span.key, "attempt": span.number,
            "outcome": span.outcome, "failed": span.failed,
            "b": round(span.begin - origin, 4), "e": round(max(span.begin, span.end) - origin, 4),
            "error": span.error_text or "",
            "queued": round(span.queued * 1e3, 1) if span.queued is not None else None}


def _phase_bar(phase: Any, lane: dict[str, Any], origin: float, extent: float) -> dict[str, Any]:
    end = phase.end if phase.end is not None else origin + extent
    return {"lane": lane["id"], "y": lane["y"], "name": phase.name, "open": phase.end is None,
            "b": round(phase.begin - origin, 4), "e": round(max(phase.begin, end) - origin, 4)}


def _timeline_view(tl: Timeline, origin: float, extent: float,
                   since: int = 0) -> tuple[_Layout, list[dict[str, Any]], list[dict[str, Any]]]:
    layout = _Layout(origin, extent)
    sessions = tl.sessions()
    for epoch, who in sorted(sessions.items()):
        where = f" {who['host']} pid {who['pid']}" if who["host"] else ""
        layout.lane(f"d{epoch}", f"driver {epoch}{where}", "driver")
    phases = [_phase_bar(p, layout.lanes[f"d{p.epoch}"], origin, extent) for p in tl.phases]
    node_of_ip = {s.ip: s.node for s in tl.spans if s.ip and s.node}
    bars = []
    for index, span in enumerate(tl.spans):
        if span.begin is None or span.end is None:
            continue
        lane = layout.lane(*worker_lane(span, node_of_ip), "worker")
        if index >= since:
            bars.append(_bar(span, index, lane, origin))
    return layout, phases, bars


def _ticks(extent: float) -> list[dict[str, Any]]:
    raw = extent / 6
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    ticks, t = [], 0.0
    while t <= extent + 1e-9:
        ticks.append({"x": round(LABEL_W + PLOT_W * t / extent, 2), "label": fmt_seconds(t)
                      if t else "0"})
        t += step
    return ticks


# ---- one run ---------------------------------------------------------------------------------


def _task_row(row: Any) -> dict[str, Any]:
    return {"key": row.key, "task": row.task, "state": row.state, "attempts": row.attempts,
            "time": fmt_seconds(row.seconds), "error": row.last_error or "",
            "files": f"{row.files.get('n', 0)} file(s), {fmt_bytes(row.files.get('b'))}"
                     + (f", {row.files['r']:,} rows" if row.files.get("r") is not None else "")
            if row.files else ""}


def _files(tl: Timeline) -> list[dict[str, Any]]:
    """The stored objects, with the size their FileReference recorded."""
    refs: dict[str, dict[str, Any]] = {}

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("storage_path"), str):
                refs[value["storage_path"]] = value
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    keys = {str(o.get("k")) for o in tl.objects[:MAX_FILES]}
    for key in keys:
        data = tl.outputs.get(key)
        if data is not None:
            try:
                walk(msgpack.unpackb(data, raw=False))
            except Exception:  # a record we cannot read: its files show without sizes
                continue
    files = []
    for obj in tl.objects[:MAX_FILES]:
        ref = refs.get(obj["p"], {})
        size = ref.get("size_bytes")
        files.append({"key": str(obj.get("k")), "path": obj["p"], "tier": obj.get("t"),
                      "size": fmt_bytes(size if isinstance(size, int) else None),
                      "count": ref.get("file_count"), "format": ref.get("format")})
    return files


def _bars_markup(bars: list[dict[str, Any]], layout: _Layout) -> Markup:
    # lean on purpose (thousands of them): the height and the colour (by data-o) come from
    # pages.css, numbers have one decimal, the element closes itself
    parts = []
    for b in bars:
        extra = f' data-q="{b["queued"]}"' if b["queued"] is not None else ""
        if b["error"]:
            extra += f' data-err="{escape(b["error"])}"'
        parts.append(
            f'<rect class="bar{" failed" if b["failed"] else ""}" x="{layout.x(b["b"]):.1f}" '
            f'y="{b["y"]:g}" width="{layout.width(b["b"], b["e"]):.1f}" data-b="{b["b"]}" '
            f'data-e="{b["e"]}" data-t="{escape(b["task"])}" data-k="{escape(b["key"])}" '
            f'data-a="{b["attempt"]}" data-o="{escape(b["outcome"])}"{extra}/>')
    return Markup("\n".join(parts))


TASK_CHUNK = 250
"""Task rows per chunk of the table (each laid out by the browser only when scrolled to)."""


def _rows_markup(rows: list[dict[str, Any]]) -> list[Markup]:
    """The task rows in chunks of TASK_CHUNK."""
    return [_chunk(rows[i:i + TASK_CHUNK]) for i in range(0, len(rows), TASK_CHUNK)]


def _chunk(rows: list[dict[str, Any]]) -> Markup:
    # the columns are styled by position (pages.css): no attribute a row can do without
    parts = []
    for t in rows:
        state = escape(t["state"])
        parts.append(
            f'<tr><td>{escape(t["task"])}</td><td><span class="state t-{state}">{state}'
            f'</span></td><td>{t["attempts"]}</td><td>{escape(t["time"])}</td>'
            f'<td>{escape(t["key"])}</td><td>{escape(t["files"])}</td>'
            f'<td>{escape(t["error"])}</td></tr>')
    return Markup("\n".join(parts))


def _counts(tl: Timeline) -> dict[str, int]:
    """What `status` counts, from the timeline (one journal read for the whole page)."""
    done = {s.key for s in tl.spans if s.outcome == "completed"}
    return {"tasks_done": len(done),
            "tasks_failed": len({s.key for s in tl.spans
                                 if s.failed and not s.retried and s.key not in done}),
            "attempts": sum(1 for s in tl.spans if s.outcome != "cancelled"),
            "failed_attempts": sum(1 for s in tl.spans if s.failed),
            "journal_segments": tl.segments}


def run_page(store: Store, record: RunRecord) -> dict[str, Any]:
    """Everything `GET /runs/{run_id}` shows."""
    state, live = shown_state(store, record)
    tl = load_timeline(store, record)
    origin = _origin(tl, record)
    extent = _extent(tl, origin, live)
    layout, phases, bars = _timeline_view(tl, origin, extent)
    failures = [s for s in tl.spans if s.failed]
    rows = task_rows(tl, live)
    driver = "finished" if record.status.finished else "running" if live else "gone"
    info = {**_counts(tl), "driver": driver}
    end = record.finished_at or (time.time() if live else record.updated_at)
    return {
        "record": record, "state": state, "live": live, "info": info,
        "started": fmt_time(record.created_at), "finished": fmt_time(record.finished_at),
        "duration": fmt_seconds(max(0.0, end - record.created_at)),
        "input": _json_text(record.input),
        "output": _json_text(record.output) if record.output is not None else None,
        "error": record.error,
        "svg": {"width": WIDTH, "height": AXIS_H + max(1, len(layout.lanes))
                * (LANE_H + LANE_GAP) + 4, "label_w": LABEL_W, "plot_w": PLOT_W,
                "lane_h": LANE_H, "origin": origin, "extent": extent,
                "lanes": list(layout.lanes.values()), "ticks": _ticks(extent)},
        "phases": [dict(p, x=layout.x(p["b"]), w=layout.width(p["b"], p["e"])) for p in phases],
        "bars": _bars_markup(bars, layout), "bar_count": len(bars),
        "count": len(tl.spans),
        "untimed": tl.untimed,
        "tasks": _rows_markup([_task_row(r) for r in rows]), "task_count": len(rows),
        "failures": [{"task": s.task, "key": s.key, "attempt": s.number, "outcome": s.outcome,
                      "error": s.error_text or s.outcome, "traceback": s.traceback,
                      "when": fmt_time(s.end), "retried": s.retried}
                     for s in failures[-MAX_ERRORS:]],
        "failures_left_out": max(0, len(failures) - MAX_ERRORS),
        "details": [{"key": k, "json": _json_text(v)}
                    for k, v in list(tl.details.items())[-MAX_DETAILS:]],
        "details_left_out": max(0, len(tl.details) - MAX_DETAILS),
        "files": _files(tl),
        "files_left_out": max(0, len(tl.objects) - MAX_FILES),
    }


def live_update(store: Store, record: RunRecord, since: int, origin: float) -> dict[str, Any]:
    """`GET /runs/{run_id}/live.json`: what changed since the page drew `since` attempts,
    placed against the page's own `origin`."""
    state, live = shown_state(store, record)
    tl = load_timeline(store, record)
    extent = _extent(tl, origin, live)
    if since > len(tl.spans):  # the journal was rewritten under the page: start again
        since = 0
    _layout, phases, bars = _timeline_view(tl, origin, extent, since)
    keys = {s.key for s in tl.spans[since:]}  # timed or not (the driver's cleanups are not)
    progress = record.progress or {}
    rows = task_rows(tl, live)
    return {
        "state": state, "live": live, "finished": record.status.finished,
        "count": len(tl.spans), "since": since, "extent": extent,
        "bars": bars, "phases": phases,
        "rows": [_task_row(r) for r in rows if r.key in keys], "calls": len(rows),
        "driver": "finished" if record.status.finished else "running" if live else "gone",
        "counters": {**_counts(tl), "running": progress.get("running", 0) if live else 0},
    }
