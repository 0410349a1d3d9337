"""`trace RUN_ID` and `status RUN_ID --tasks`: a run's history, read from its journal.

Both read the store only (`runtime.views`), so they work for a finished run, a live one (what
is recorded so far), and a run whose driver died, from any machine that reaches the store.

`trace` writes Chrome Trace Event JSON (Perfetto, chrome://tracing) to `--output` (default
`{run_id}.trace.json`; `-` for stdout) and says on stderr what it wrote. `status --tasks`
prints one row per task call: a rich table on a terminal, tab-separated lines otherwise (a
header line first), a JSON list with `--json`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import IO, Any

from storage import Lease, RunRecord, RunStore, Store

from ..views import TaskRow, load_timeline, task_rows, trace_json

__all__ = ["print_tasks", "write_trace"]

_COLUMNS = ("task", "state", "attempts", "time", "key", "last_error")


def _live(store: Store, record: RunRecord) -> bool:
    if record.status.finished:
        return False
    lease = Lease(RunStore(store, record.app, record.run_id)).read()
    return lease is not None and lease.live(time.time())


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1e3:.0f} ms" if value < 1 else f"{value:.2f} s"


def _cells(row: TaskRow) -> tuple[str, ...]:
    return (row.task, row.state, str(row.attempts), _seconds(row.seconds), row.key,
            row.last_error or "")


def print_tasks(store: Store, record: RunRecord, as_json: bool, out: IO[str] | None = None,
                terminal: bool | None = None) -> int:
    """Print the task table of run `record`; returns the number of rows."""
    out = out or sys.stdout
    rows = task_rows(load_timeline(store, record), _live(store, record))
    if as_json:
        out.write(json.dumps([r.as_dict() for r in rows], indent=2) + "\n")
        return len(rows)
    if terminal if terminal is not None else out.isatty():
        _rich_table(rows, record, out)
        return len(rows)
    out.write("\t".join(_COLUMNS) + "\n")
    for row in rows:
        out.write("\t".join(c.replace("\t", " ").replace("\n", " ") for c in _cells(row))
                  + "\n")
    return len(rows)


def _rich_table(rows: list[TaskRow], record: RunRecord, out: IO[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    styles = {"completed": "green", "failed": "bold red", "retrying": "yellow",
              "interrupted": "magenta", "cancelled": "dim"}
    table = Table(title=f"run {record.run_id} ({record.app}): {len(rows)} task call(s), "
                  f"{record.status.value}", title_justify="left")
    widths = {"state": 11, "attempts": 3, "time": 8}
    for column in _COLUMNS:
        table.add_column(column.replace("_", " "),
                         justify="right" if column in ("attempts", "time") else "left",
                         overflow="fold", no_wrap=column in widths,
                         min_width=widths.get(column))
    for row in rows:
        cells: list[Any] = list(_cells(row))
        cells[1] = f"[{styles.get(row.state, '')}]{row.state}[/]"
        table.add_row(*cells)
    Console(file=out, soft_wrap=False).print(table)


def write_trace(store: Store, record: RunRecord, output: str | None) -> str:
    """Write the trace of run `record` to `output` (a path, `-` for stdout); returns where."""
    timeline = load_timeline(store, record)
    text = trace_json(timeline, record)
    timed = len(timeline.spans) - timeline.untimed
    where = output or f"{record.run_id}.trace.json"
    if where == "-":
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    else:
        tmp = f"{where}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, where)
    untimed = f", {timeline.untimed} without times" if timeline.untimed else ""
    print(f"trace of run {record.run_id} ({record.status.value}): {timed} attempt(s){untimed}, "
          f"{len(timeline.phases)} driver phase(s) -> {where} (open it in ui.perfetto.dev or "
          "chrome://tracing)", file=sys.stderr)
    return where
