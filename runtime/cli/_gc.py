"""`connector-runtime gc`: delete stored objects past their retention.

What goes, per run folder:

- RETAINED `retained/{app}/{run_id}/`: when the run finished (COMPLETED, FAILED or CANCELLED)
  before the cutoff, by the run record's `finished_at`. A run still RUNNING keeps its objects.
  Without a run record (deleted, or objects written by hand) the newest object's mtime decides.
- TRANSIENT `runs/{app}/{run_id}/files/`: when the run finished before the cutoff. Normally
  `cleanup_storage` removed them already; what is left belongs to FAILED runs (kept so a
  resume can replay outputs that point at them) or to runs whose on_complete never ran. Once
  past the retention a failed run is not expected to resume: resuming it afterwards fails its
  first task that reads a deleted object with a clear StorageIntegrityError.
- PERSISTENT leftovers `persistent/{app}/{run_id}/{call}/a{attempt}-{token}/`: an attempt
  that uploaded its output and then died (or failed) before its completion was journaled
  leaves objects no record points at, under its own token folder. Such a folder goes when the
  run finished before the cutoff, its newest object is older than the cutoff too, and no record
  of the run names anything in it: neither an object record ("o"), nor a completed task's
  output ("t"), nor the run's output. A run whose journal has a corrupt segment, or that has no
  run record, keeps everything (the lost record might have named it). Referenced PERSISTENT
  objects are never deleted.
- A run whose record is there but cannot be trusted (corrupt, unauthenticated, not fitting its
  schema: `storage.list_runs` reports it) keeps everything in every tier, with a note.

A file:// store is listed without following symbolic links (`storage.LocalStore`): a folder
replaced by a link is skipped with a warning, never entered, so gc cannot delete outside the
store. Everything is decided from the store alone (run records, journals and listings), so gc
runs anywhere, any time, with no driver alive. Dry run by default: it lists what would go.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack

from storage import (
    RecordProblem,
    RunStatus,
    RunStore,
    Store,
    StoreError,
    UnsafeEntryError,
    delete_store_prefix,
    list_runs,
)

__all__ = ["GcItem", "collect", "parse_age", "plan"]

log = logging.getLogger("connector_runtime.gc")

_ATTEMPT = re.compile(r"a\d+-[0-9a-f]{8}")
"""An attempt's token folder, as `runtime.worker._files.after_task` names it."""

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_age(text: str) -> float:
    """Seconds in `30d`, `12h`, `90m`, `45s`, `2w`; ValueError with the accepted forms."""
    match = _AGE.match(text or "")
    if not match:
        raise ValueError(
            f"--older-than {text!r}: expected a number and a unit, e.g. 30d, 12h, 90m, 2w "
            "(units: s, m, h, d, w)"
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class GcItem:
    """One folder of objects past retention."""

    prefix: str
    """Store prefix deleted as a whole."""
    tier: str
    app: str
    run_id: str
    objects: int
    size_bytes: int
    age_seconds: float
    why: str
    """Which timestamp made it old: the run's finished_at, or the newest object's mtime."""

    def describe(self) -> str:
        return (f"{self.tier:<9} {self.prefix}/  {self.objects} object(s), "
                f"{_human(self.size_bytes)}, {self.why} {self.age_seconds / 86400:.1f} d ago")


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _contents(store: Store, prefix: str) -> tuple[int, int, float]:
    """(objects, bytes, newest mtime) under a prefix."""
    if store.protocol == "s3":
        store.fs.invalidate_cache()
    infos = [(k, size, mtime) for k, size, mtime in store.list_info(prefix)
             if not k.rsplit("/", 1)[-1].startswith(".tmp-")]
    if not infos:
        return 0, 0, 0.0
    return len(infos), sum(size for _, size, _ in infos), max(m for _, _, m in infos)


def _note(notes: list[str], message: str) -> None:
    log.info("%s", message)
    notes.append(message)


def _dirs(store: Store, prefix: str, notes: list[str]) -> list[str]:
    """Sub-folders of `prefix`; none (with a note) when it is a link out of the store."""
    try:
        return store.list_dirs(prefix)
    except UnsafeEntryError as exc:
        _note(notes, f"skipped {prefix}/: {exc}")
        return []


def plan(store: Store, older_than: float, now: float | None = None,
         notes: list[str] | None = None) -> list[GcItem]:
    """What gc would delete: RETAINED and TRANSIENT folders of runs past the retention, and
    unreferenced PERSISTENT leftovers of finished runs. `notes` receives what was skipped and
    why (a link in the store, a run whose journal cannot prove a leftover unreferenced)."""
    notes = [] if notes is None else notes
    now = time.time() if now is None else now
    cutoff = now - older_than
    bad: list[RecordProblem] = []
    records = {(r.app, r.run_id): r for r in list_runs(store, problems=bad)}
    kept = _untrusted(bad, notes)
    items: list[GcItem] = []
    for app in _dirs(store, "retained", notes):
        for run_id in _dirs(store, f"retained/{app}", notes):
            if {(app, run_id), (app, "")} & kept:
                continue
            item = _candidate(store, f"retained/{app}/{run_id}", "retained", app, run_id,
                              records.get((app, run_id)), cutoff, now)
            if item is not None:
                items.append(item)
    for app in _dirs(store, "runs", notes):
        for run_id in _dirs(store, f"runs/{app}", notes):
            if {(app, run_id), (app, "")} & kept:
                continue
            if "files" not in _dirs(store, f"runs/{app}/{run_id}", notes):
                continue
            item = _candidate(store, f"runs/{app}/{run_id}/files", "transient", app, run_id,
                              records.get((app, run_id)), cutoff, now)
            if item is not None:
                items.append(item)
    for app in _dirs(store, "persistent", notes):
        for run_id in _dirs(store, f"persistent/{app}", notes):
            if {(app, run_id), (app, "")} & kept:
                continue
            items += _leftovers(store, app, run_id, records.get((app, run_id)), cutoff, now,
                                notes)
    return items


def _untrusted(bad: list[RecordProblem], notes: list[str]) -> set[tuple[str, str]]:
    """(app, run id) of the runs whose record cannot be trusted ((app, "") for a whole app
    folder): gc keeps all their objects, as for a running run."""
    kept = set()
    for problem in bad:
        parts = problem.key.split("/")
        if len(parts) >= 3 and parts[0] == "runs":
            kept.add((parts[1], parts[2] if len(parts) > 3 else ""))
        _note(notes, f"skipped {problem}: the run's objects are kept")
    return kept


def _candidate(store: Store, prefix: str, tier: str, app: str, run_id: str, record: Any,
               cutoff: float, now: float) -> GcItem | None:
    if record is not None and record.status is RunStatus.RUNNING:
        return None  # a live or resumable run keeps everything
    objects, size, newest = _contents(store, prefix)
    if objects == 0:
        return None
    if record is not None and record.finished_at is not None:
        stamp, why = record.finished_at, f"run {record.status.value} finished"
    else:
        stamp, why = newest, "last written"
    if stamp >= cutoff:
        return None
    return GcItem(prefix, tier, app, run_id, objects, size, now - stamp, why)


def _finished_before(record: Any, cutoff: float) -> bool:
    return (record is not None and record.status is not RunStatus.RUNNING
            and record.finished_at is not None and record.finished_at < cutoff)


def _leftovers(store: Store, app: str, run_id: str, record: Any, cutoff: float,
               now: float, notes: list[str]) -> list[GcItem]:
    """Attempt folders of a finished run's PERSISTENT objects that no record points at."""
    if not _finished_before(record, cutoff):
        return []  # running, resumable, recent, or unknown: everything stays
    prefix = f"persistent/{app}/{run_id}"
    folders: dict[str, list[tuple[int, float]]] = {}
    for key, size, mtime in store.list_info(prefix):
        parts = key[len(prefix) + 1:].split("/")
        if len(parts) >= 3 and _ATTEMPT.fullmatch(parts[1]):  # {call}/a{n}-{token}/...
            folders.setdefault(f"{prefix}/{parts[0]}/{parts[1]}", []).append((size, mtime))
    if not folders:
        return []
    referenced = _referenced(store, app, run_id, record, notes)
    if referenced is None:
        return []
    items = []
    for folder, objects in sorted(folders.items()):
        newest = max(m for _, m in objects)
        if newest >= cutoff or any(p == folder or p.startswith(folder + "/")
                                   for p in referenced):
            continue
        items.append(GcItem(folder, "persistent", app, run_id, len(objects),
                            sum(s for s, _ in objects), now - record.finished_at,
                            f"unreferenced (no record points at it); run "
                            f"{record.status.value} finished"))
    return items


def _referenced(store: Store, app: str, run_id: str, record: Any,
                notes: list[str]) -> set[str] | None:
    """Every storage path the run's records name; None when a record may have been lost."""
    try:
        load = RunStore(store, app, run_id).load_journal()
    except Exception as exc:  # unreadable: keep everything of this run
        _note(notes, f"run {app}/{run_id}: journal not readable, its PERSISTENT objects are "
              f"kept: {exc}")
        return None
    if load.corrupt:
        _note(notes, f"run {app}/{run_id}: {len(load.corrupt)} corrupt journal segment(s), "
              "its PERSISTENT objects are kept")
        return None
    found = set(_paths(record.output))
    for r in load.records:
        if r.get("y") == "o" and isinstance(r.get("p"), str):
            found.add(r["p"])
        elif r.get("y") == "t" and isinstance(r.get("o"), bytes):
            try:
                found.update(_paths(msgpack.unpackb(r["o"], raw=False)))
            except Exception:  # an output we cannot read might name anything
                _note(notes, f"run {app}/{run_id}: a recorded output is unreadable, its "
                      "PERSISTENT objects are kept")
                return None
    return found


def _paths(value: Any) -> Iterator[str]:
    """Every `storage_path` in a dumped output (references sit anywhere in a contract)."""
    if isinstance(value, dict):
        path = value.get("storage_path")
        if isinstance(path, str):
            yield path.rstrip("/")
        for v in value.values():
            yield from _paths(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _paths(v)


def collect(store: Store, items: list[GcItem]) -> int:
    """Delete the planned folders; how many objects went."""
    deleted = 0
    records: dict[tuple[str, str], Any] = {}
    for item in items:
        if item.tier == "retained":
            allowed = f"retained/{item.app}/{item.run_id}"
        elif item.tier == "transient":
            allowed = f"runs/{item.app}/{item.run_id}/files"
        else:  # a leftover: only if the run did not start again since the plan was made
            key = (item.app, item.run_id)
            if key not in records:
                try:
                    records[key] = RunStore(store, item.app, item.run_id).read_run()
                except StoreError:  # a record that cannot be trusted now: keep its objects
                    records[key] = None
            record = records[key]
            if record is None or record.status is RunStatus.RUNNING:
                continue
            allowed = item.prefix
        deleted += delete_store_prefix(store, item.prefix, [allowed])
    return deleted
